//! Authentication the proxy terminates (transaction pooling): the user list, the server side of
//! SCRAM-SHA-256 and MD5 towards clients, and the proxy's own login to PostgreSQL, with a
//! password or, for a SCRAM verifier, with the ClientKey the client's proof revealed (PgBouncer's
//! "SCRAM pass-through").

use std::{fmt, path::Path, str::FromStr, sync::OnceLock};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ring::{
    digest, hmac, pbkdf2,
    rand::{SecureRandom, SystemRandom},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::{
    protocol::{error_fields, frame, Reader},
    transport::send,
};

/// How the proxy authenticates clients in transaction pooling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// No password (for local use only).
    Trust,
    /// PostgreSQL's MD5 challenge.
    Md5,
    /// SCRAM-SHA-256 (without channel binding).
    ScramSha256,
}

impl FromStr for AuthType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "trust" => Ok(Self::Trust),
            "md5" => Ok(Self::Md5),
            "scram-sha-256" => Ok(Self::ScramSha256),
            other => Err(format!("auth type must be scram-sha-256, md5 or trust, not {other:?}")),
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trust => "trust",
            Self::Md5 => "md5",
            Self::ScramSha256 => "scram-sha-256",
        })
    }
}

/// A SCRAM-SHA-256 verifier, as PostgreSQL stores it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || "not a SCRAM-SHA-256 verifier".to_owned();
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let key = |s: &str| -> Result<[u8; 32], String> {
            B64.decode(s).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or_else(bad)
        };
        let iterations: u32 = iterations.parse().map_err(|_| bad())?;
        if iterations == 0 {
            return Err(bad());
        }
        Ok(Self {
            iterations,
            salt: B64.decode(salt).map_err(|_| bad())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// The verifier of a password with this salt and iteration count.
    fn derive(password: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }
}

/// A user's secret from the user list.
pub(crate) enum Secret {
    /// A plain-text password (its SCRAM verifier is derived once, on first use).
    Plain(String, OnceLock<ScramVerifier>),
    /// `md5` + hex of md5(password || user).
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain(..) => "Secret::Plain(<hidden>)",
            Self::Md5(_) => "Secret::Md5(<hidden>)",
            Self::Scram(_) => "Secret::Scram(<hidden>)",
        })
    }
}

impl Secret {
    fn parse(text: &str) -> Self {
        if text.starts_with("SCRAM-SHA-256$") {
            if let Ok(v) = ScramVerifier::parse(text) {
                return Self::Scram(v);
            }
        }
        if text.len() == 35 && text.starts_with("md5") && text[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Self::Md5(text[3..].to_ascii_lowercase());
        }
        Self::Plain(text.to_owned(), OnceLock::new())
    }

    fn verifier(&self) -> Option<&ScramVerifier> {
        match self {
            Self::Plain(p, v) => {
                Some(v.get_or_init(|| ScramVerifier::derive(p.as_bytes(), random_bytes(16), 4096)))
            }
            Self::Scram(v) => Some(v),
            Self::Md5(_) => None,
        }
    }

    /// hex(md5(password || user)), what MD5 authentication builds on.
    fn md5_of(&self, user: &str) -> Option<String> {
        match self {
            Self::Plain(p, _) => Some(md5_hex(&[p.as_bytes(), user.as_bytes()].concat())),
            Self::Md5(h) => Some(h.clone()),
            Self::Scram(_) => None,
        }
    }
}

/// Users and their secrets, from a PgBouncer-style `userlist.txt`.
#[derive(Debug, Default)]
pub(crate) struct UserList {
    users: std::collections::HashMap<String, Secret>,
}

impl UserList {
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(&text)
    }

    /// Each line `"user" "secret"` (a `""` inside quotes is one quote); lines starting with `;`
    /// or `#` and blank lines are skipped; fields after the second are ignored.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut users = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let mut rest = line;
            let mut fields = Vec::new();
            while fields.len() < 2 {
                rest = rest.trim_start();
                let Some(body) = rest.strip_prefix('"') else {
                    return Err(format!("line {}: expected \"user\" \"password\"", i + 1));
                };
                let mut value = String::new();
                let mut chars = body.char_indices().peekable();
                let mut end = None;
                while let Some((at, c)) = chars.next() {
                    if c == '"' {
                        if chars.peek().is_some_and(|(_, n)| *n == '"') {
                            chars.next();
                            value.push('"');
                        } else {
                            end = Some(at + 1);
                            break;
                        }
                    } else {
                        value.push(c);
                    }
                }
                let Some(end) = end else { return Err(format!("line {}: unterminated quote", i + 1)) };
                rest = &body[end..];
                fields.push(value);
            }
            let secret = fields.pop().unwrap_or_default();
            let user = fields.pop().unwrap_or_default();
            users.insert(user, Secret::parse(&secret));
        }
        Ok(Self { users })
    }

    pub(crate) fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }
}

/// What a client's authentication yielded.
#[derive(Debug, Default)]
pub(crate) struct ClientAuth {
    /// The ClientKey recovered from a SCRAM proof.
    client_key: Option<[u8; 32]>,
}

/// Why a client was not authenticated.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    /// The client went away: nothing to tell it.
    Gone,
    /// Tell the client: SQLSTATE and message.
    Refused(&'static str, String),
}

impl AuthFailure {
    /// The FATAL a client gets, if it is still there.
    pub(crate) fn to_client(&self) -> Option<(&'static str, String)> {
        match self {
            Self::Gone => None,
            Self::Refused(code, message) => Some((code, message.clone())),
        }
    }
}

/// How the proxy logs in to PostgreSQL as a user.
#[derive(Clone)]
pub(crate) enum Credential {
    /// No password (the server trusts the proxy).
    None,
    Password(String),
    /// hex(md5(password || user)).
    Md5(String),
    /// SCRAM pass-through: the ClientKey and the verifier it matches.
    ScramKeys {
        client_key: [u8; 32],
        verifier: ScramVerifier,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "Credential::None",
            Self::Password(_) => "Credential::Password(<hidden>)",
            Self::Md5(_) => "Credential::Md5(<hidden>)",
            Self::ScramKeys { .. } => "Credential::ScramKeys(<hidden>)",
        })
    }
}

impl Credential {
    /// The login a client's secret and authentication give the pool.
    pub(crate) fn from_auth(secret: Option<&Secret>, auth: &ClientAuth) -> Self {
        match secret {
            Some(Secret::Plain(p, _)) => Self::Password(p.clone()),
            Some(Secret::Md5(h)) => Self::Md5(h.clone()),
            Some(Secret::Scram(v)) => match auth.client_key {
                Some(client_key) => Self::ScramKeys { client_key, verifier: v.clone() },
                None => Self::None,
            },
            None => Self::None,
        }
    }
}

/// The proxy's login to PostgreSQL failed.
#[derive(Debug)]
pub(crate) struct LoginError {
    code: String,
    message: String,
}

impl LoginError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }

    pub(crate) fn code(&self) -> &str {
        &self.code
    }
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What PostgreSQL said at login.
#[derive(Debug)]
pub(crate) struct UpstreamLogin {
    pub(crate) parameters: Vec<(String, String)>,
    pub(crate) backend_key: (u32, u32),
}

const MAX_AUTH_MESSAGE: usize = 10_000;
const ITERATIONS: u32 = 4096;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    if SystemRandom::new().fill(&mut v).is_err() {
        // ring's generator failing is an OS fault; a time-derived fallback keeps the nonce unique.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        for (i, b) in v.iter_mut().enumerate() {
            *b = (t.as_nanos() >> ((i % 16) * 8)) as u8;
        }
    }
    v
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, salt, password, &mut out);
    out
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    let d = md5::Md5::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// Reads one tagged message, at most `MAX_AUTH_MESSAGE` bytes: (tag, body).
async fn read_message<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> Result<Option<(u8, Vec<u8>)>, String> {
    let mut head = [0u8; 5];
    if s.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=max).contains(&len) {
        return Err(format!("invalid message length {len}"));
    }
    let mut body = vec![0u8; len - 4];
    if s.read_exact(&mut body).await.is_err() {
        return Ok(None);
    }
    Ok(Some((head[0], body)))
}

fn auth_request(code: i32, data: &[u8]) -> bytes::Bytes {
    let mut body = Vec::with_capacity(4 + data.len());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(data);
    frame(b'R', &body)
}

fn wrong(user: &str) -> AuthFailure {
    AuthFailure::Refused("28P01", format!("password authentication failed for user \"{user}\""))
}

fn violation(message: &str) -> AuthFailure {
    AuthFailure::Refused("08P01", message.to_owned())
}

/// Reads the client's password-type message ('p').
async fn read_password<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, AuthFailure> {
    match read_message(s, MAX_AUTH_MESSAGE).await {
        Ok(Some((b'p', body))) => Ok(body),
        Ok(Some((tag, _))) => {
            Err(violation(&format!("expected a password response, got message type {:?}", char::from(tag))))
        }
        Ok(None) => Err(AuthFailure::Gone),
        Err(e) => Err(violation(&e)),
    }
}

/// Authenticates a client that sent its startup message, up to (not including)
/// AuthenticationOk, which the caller sends.
pub(crate) async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    auth: AuthType,
    user: &str,
    secret: Option<&Secret>,
) -> Result<ClientAuth, AuthFailure> {
    match auth {
        AuthType::Trust => Ok(ClientAuth::default()),
        AuthType::Md5 => {
            let salt = random_bytes(4);
            send(stream, &auth_request(5, &salt)).await.map_err(|_| AuthFailure::Gone)?;
            let body = read_password(stream).await?;
            let sent = body.split(|b| *b == 0).next().unwrap_or_default();
            let Some(inner) = secret.and_then(|s| s.md5_of(user)) else {
                return Err(match secret {
                    Some(Secret::Scram(_)) => AuthFailure::Refused(
                        "28P01",
                        format!("password authentication failed for user \"{user}\": md5 cannot check a SCRAM verifier; use auth_type scram-sha-256 or a plain password"),
                    ),
                    _ => wrong(user),
                });
            };
            let expected = format!("md5{}", md5_hex(&[inner.as_bytes(), &salt].concat()));
            if same_bytes(sent, expected.as_bytes()) {
                Ok(ClientAuth::default())
            } else {
                Err(wrong(user))
            }
        }
        AuthType::ScramSha256 => {
            let fake;
            let verifier = match secret.map(|s| (s, s.verifier())) {
                Some((_, Some(v))) => v,
                Some((Secret::Md5(_), None)) => {
                    return Err(AuthFailure::Refused(
                        "28P01",
                        format!("password authentication failed for user \"{user}\": SCRAM cannot be checked against an md5 secret"),
                    ))
                }
                _ => {
                    // Unknown user: a plausible exchange that fails at the end.
                    fake = ScramVerifier::derive(&random_bytes(16), random_bytes(16), ITERATIONS);
                    &fake
                }
            };
            let known = secret.is_some();
            scram_server(stream, user, verifier, known).await
        }
    }
}

async fn scram_server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    verifier: &ScramVerifier,
    known: bool,
) -> Result<ClientAuth, AuthFailure> {
    let mut offer = b"SCRAM-SHA-256\0".to_vec();
    offer.push(0);
    send(stream, &auth_request(10, &offer)).await.map_err(|_| AuthFailure::Gone)?;
    let body = read_password(stream).await?;
    let mut r = Reader::new(&body, "SASLInitialResponse");
    let mechanism = r.cstr().map_err(|m| violation(&m.0))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(violation("client selected an invalid SASL authentication mechanism"));
    }
    let len = r.i32().map_err(|m| violation(&m.0))?;
    let first = r.take(usize::try_from(len).unwrap_or(0)).map_err(|m| violation(&m.0))?;
    let first = std::str::from_utf8(first).map_err(|_| violation("malformed SCRAM message"))?;
    // gs2 header: "n,," or "y,," (no channel binding); "p=" asks for binding we never offer.
    let (gs2, bare) = if let Some(b) = first.strip_prefix("n,,") {
        ("n,,", b)
    } else if let Some(b) = first.strip_prefix("y,,") {
        ("y,,", b)
    } else if first.starts_with("p=") {
        return Err(violation("channel binding is not supported by this server"));
    } else {
        return Err(violation("malformed SCRAM message (unexpected GS2 header)"));
    };
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| violation("malformed SCRAM message (missing nonce)"))?;
    let nonce = format!("{client_nonce}{}", B64.encode(random_bytes(18)));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
    send(stream, &auth_request(11, server_first.as_bytes())).await.map_err(|_| AuthFailure::Gone)?;
    let body = read_password(stream).await?;
    let last = std::str::from_utf8(&body).map_err(|_| violation("malformed SCRAM message"))?;
    let (without_proof, proof) =
        last.rsplit_once(",p=").ok_or_else(|| violation("malformed SCRAM message (missing proof)"))?;
    let mut binding = None;
    let mut final_nonce = None;
    for attr in without_proof.split(',') {
        if let Some(c) = attr.strip_prefix("c=") {
            binding = Some(c);
        } else if let Some(n) = attr.strip_prefix("r=") {
            final_nonce = Some(n);
        }
    }
    if binding != Some(B64.encode(gs2.as_bytes()).as_str()) {
        return Err(violation("SCRAM channel binding check failed"));
    }
    if final_nonce != Some(nonce.as_str()) {
        return Err(violation("SCRAM nonce mismatch"));
    }
    let proof: [u8; 32] = B64
        .decode(proof)
        .ok()
        .and_then(|p| <[u8; 32]>::try_from(p).ok())
        .ok_or_else(|| violation("malformed SCRAM message (invalid proof)"))?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
    let client_key = xor(&proof, &client_signature);
    let ok = same_bytes(&sha256(&client_key), &verifier.stored_key);
    if !ok || !known {
        return Err(wrong(user));
    }
    let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
    let final_message = format!("v={}", B64.encode(server_signature));
    send(stream, &auth_request(12, final_message.as_bytes())).await.map_err(|_| AuthFailure::Gone)?;
    Ok(ClientAuth { client_key: Some(client_key) })
}

/// Logs in to PostgreSQL on a fresh connection: sends the startup message, answers the
/// server's authentication request, reads until ReadyForQuery.
pub(crate) async fn login_upstream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    startup: &[u8],
    user: &str,
    credential: &Credential,
) -> Result<UpstreamLogin, LoginError> {
    let lost = |e: std::io::Error| LoginError::new("08006", format!("strata-proxy: upstream login: {e}"));
    send(stream, startup).await.map_err(lost)?;
    let mut parameters = Vec::new();
    let mut backend_key = (0, 0);
    let mut scram: Option<ScramClient> = None;
    loop {
        let message = read_message(stream, 1 << 20)
            .await
            .map_err(|e| LoginError::new("08P01", format!("strata-proxy: upstream login: {e}")))?;
        let Some((tag, body)) = message else {
            return Err(LoginError::new(
                "08006",
                "strata-proxy: the upstream closed the connection during login",
            ));
        };
        match tag {
            b'R' => {
                let mut r = Reader::new(&body, "Authentication");
                let code = r.i32().map_err(|m| LoginError::new("08P01", m.0))?;
                let rest = &body[4..];
                match code {
                    0 => {}
                    3 => {
                        let Some(password) = plain(credential) else { return Err(no_password(user)) };
                        let mut b = password.into_bytes();
                        b.push(0);
                        send(stream, &frame(b'p', &b)).await.map_err(lost)?;
                    }
                    5 => {
                        let inner = match credential {
                            Credential::Password(p) => md5_hex(&[p.as_bytes(), user.as_bytes()].concat()),
                            Credential::Md5(h) => h.clone(),
                            _ => return Err(no_password(user)),
                        };
                        let salt = rest.get(..4).ok_or_else(|| LoginError::new("08P01", "short MD5 request"))?;
                        let mut b = format!("md5{}", md5_hex(&[inner.as_bytes(), salt].concat())).into_bytes();
                        b.push(0);
                        send(stream, &frame(b'p', &b)).await.map_err(lost)?;
                    }
                    10 => {
                        let mechanisms: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
                        if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                            return Err(LoginError::new("28000", "strata-proxy: the upstream offers no SCRAM-SHA-256"));
                        }
                        let client = ScramClient::new(credential.clone()).ok_or_else(|| no_password(user))?;
                        let first = client.first();
                        let mut b = b"SCRAM-SHA-256\0".to_vec();
                        b.extend_from_slice(&i32::try_from(first.len()).unwrap_or(0).to_be_bytes());
                        b.extend_from_slice(first.as_bytes());
                        send(stream, &frame(b'p', &b)).await.map_err(lost)?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| LoginError::new("08P01", "SASL continue without a start"))?;
                        let answer = client.answer(rest)?;
                        send(stream, &frame(b'p', answer.as_bytes())).await.map_err(lost)?;
                    }
                    12 => {
                        let client = scram.as_ref().ok_or_else(|| LoginError::new("08P01", "SASL final without a start"))?;
                        client.check_final(rest)?;
                    }
                    other => {
                        return Err(LoginError::new(
                            "28000",
                            format!("strata-proxy: the upstream asks for an authentication method it cannot do ({other})"),
                        ))
                    }
                }
            }
            b'S' => {
                let mut r = Reader::new(&body, "ParameterStatus");
                if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
                    parameters.push((k, v));
                }
            }
            b'K' => {
                let mut r = Reader::new(&body, "BackendKeyData");
                if let (Ok(pid), Ok(secret)) = (r.u32(), r.u32()) {
                    backend_key = (pid, secret);
                }
            }
            b'E' => {
                let (code, message) = error_fields(&body);
                return Err(LoginError::new(
                    code.as_deref().unwrap_or("08006"),
                    message.unwrap_or_else(|| "login refused by the upstream".to_owned()),
                ));
            }
            b'Z' => return Ok(UpstreamLogin { parameters, backend_key }),
            _ => {}
        }
    }
}

fn plain(credential: &Credential) -> Option<String> {
    match credential {
        Credential::Password(p) => Some(p.clone()),
        _ => None,
    }
}

fn no_password(user: &str) -> LoginError {
    LoginError::new(
        "28P01",
        format!("strata-proxy has no password usable for the upstream's authentication of user \"{user}\" (give it in auth_file)"),
    )
}

/// The client side of SCRAM-SHA-256 (no channel binding).
struct ScramClient {
    credential: Credential,
    nonce: String,
    auth_message: String,
    server_key: Option<[u8; 32]>,
}

impl ScramClient {
    fn new(credential: Credential) -> Option<Self> {
        if !matches!(credential, Credential::Password(_) | Credential::ScramKeys { .. }) {
            return None;
        }
        Some(Self {
            credential,
            nonce: B64.encode(random_bytes(18)),
            auth_message: String::new(),
            server_key: None,
        })
    }

    fn first(&self) -> String {
        format!("n,,n=,r={}", self.nonce)
    }

    fn answer(&mut self, server_first: &[u8]) -> Result<String, LoginError> {
        let bad = || LoginError::new("08P01", "strata-proxy: malformed SCRAM message from the upstream");
        let text = std::str::from_utf8(server_first).map_err(|_| bad())?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(bad());
        };
        if !nonce.starts_with(&self.nonce) || iterations == 0 {
            return Err(bad());
        }
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("n=,r={},{text},{without_proof}", self.nonce);
        let (client_key, stored_key, server_key) = match &self.credential {
            Credential::Password(p) => {
                let salted = salted_password(p.as_bytes(), &salt, iterations);
                let ck = hmac_sha256(&salted, b"Client Key");
                (ck, sha256(&ck), hmac_sha256(&salted, b"Server Key"))
            }
            Credential::ScramKeys { client_key, verifier } => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(LoginError::new(
                        "28P01",
                        "strata-proxy: the upstream's SCRAM verifier differs from the auth_file's (salt or iterations); they must be the same verifier",
                    ));
                }
                (*client_key, verifier.stored_key, verifier.server_key)
            }
            _ => return Err(bad()),
        };
        let signature = hmac_sha256(&stored_key, self.auth_message.as_bytes());
        self.server_key = Some(server_key);
        Ok(format!("{without_proof},p={}", B64.encode(xor(&client_key, &signature))))
    }

    fn check_final(&self, server_final: &[u8]) -> Result<(), LoginError> {
        let bad = || LoginError::new("08P01", "strata-proxy: the upstream's SCRAM signature is wrong");
        let text = std::str::from_utf8(server_final).map_err(|_| bad())?;
        let v = text.strip_prefix("v=").and_then(|v| B64.decode(v).ok()).ok_or_else(bad)?;
        let key = self.server_key.ok_or_else(bad)?;
        let expected = hmac_sha256(&key, self.auth_message.as_bytes());
        if same_bytes(&v, &expected) {
            Ok(())
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_lists_parse_quotes_comments_and_secret_kinds() {
        let text = "; comment\n# another\n\n\"alice\" \"pa\"\"ss\"\n\"bob\" \"md5abcdefabcdefabcdefabcdefabcdefab\" extra\n\"carol\" \"SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
        let list = UserList::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(list.get("alice"), Some(Secret::Plain(p, _)) if p == "pa\"ss"));
        assert!(matches!(list.get("bob"), Some(Secret::Md5(_))));
        assert!(matches!(list.get("carol"), Some(Secret::Scram(v)) if v.iterations == 4096));
        assert!(!format!("{:?}", list.get("alice")).contains("pa"));
        assert!(UserList::parse("alice pass").unwrap_err().contains("line 1"));
        assert!(UserList::parse("\n\"alice\" \"pass").unwrap_err().contains("line 2"));
    }

    async fn client_scram(password: &str, mut s: tokio::io::DuplexStream) -> Result<(), String> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (tag, _) = read_message(&mut s, 1 << 20).await?.ok_or("closed")?;
        assert_eq!(tag, b'R');
        let first = scram.message().to_vec();
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&(first.len() as i32).to_be_bytes());
        b.extend_from_slice(&first);
        send(&mut s, &frame(b'p', &b)).await.map_err(|e| e.to_string())?;
        let (_, body) = read_message(&mut s, 1 << 20).await?.ok_or("closed")?;
        scram.update(&body[4..]).map_err(|e| e.to_string())?;
        send(&mut s, &frame(b'p', scram.message())).await.map_err(|e| e.to_string())?;
        let Some((_, body)) = read_message(&mut s, 1 << 20).await? else { return Err("refused".into()) };
        scram.finish(&body[4..]).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn scram_server_accepts_the_right_password_only() {
        let list = UserList::parse("\"u\" \"secret\"").unwrap_or_else(|e| panic!("{e}"));
        for (password, ok) in [("secret", true), ("wrong", false)] {
            let (mut a, b) = tokio::io::duplex(4096);
            let client = tokio::spawn(client_scram(password, b));
            let result = authenticate_client(&mut a, AuthType::ScramSha256, "u", list.get("u")).await;
            drop(a);
            assert_eq!(result.is_ok(), ok, "{password}: {result:?}");
            if !ok {
                assert!(matches!(result, Err(AuthFailure::Refused("28P01", _))));
            }
            let _ = client.await;
        }
    }

    #[tokio::test]
    async fn a_postgres_verifier_checks_and_passes_through() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let list = UserList::parse(&format!("\"u\" \"{verifier}\"")).unwrap_or_else(|e| panic!("{e}"));
        let (mut a, b) = tokio::io::duplex(4096);
        let client = tokio::spawn(client_scram("pw", b));
        let auth = authenticate_client(&mut a, AuthType::ScramSha256, "u", list.get("u")).await;
        let auth = auth.unwrap_or_else(|e| panic!("{e:?}"));
        let _ = client.await;
        // The recovered ClientKey logs in to a server holding the same verifier.
        let credential = Credential::from_auth(list.get("u"), &auth);
        assert!(matches!(credential, Credential::ScramKeys { .. }));
        let (mut server, mut proxy) = tokio::io::duplex(4096);
        let secret = list.get("u").map(|s| match s {
            Secret::Scram(v) => Secret::Scram(v.clone()),
            _ => unreachable!(),
        });
        let fake_server = tokio::spawn(async move {
            let mut head = [0u8; 8];
            let _ = server.read_exact(&mut head).await;
            let r = authenticate_client(&mut server, AuthType::ScramSha256, "u", secret.as_ref()).await;
            if r.is_ok() {
                let _ = send(&mut server, &auth_request(0, &[])).await;
                let _ = send(&mut server, &frame(b'Z', b"I")).await;
            }
            r.is_ok()
        });
        let startup = [0u8, 0, 0, 8, 0, 3, 0, 0];
        let login = login_upstream(&mut proxy, &startup, "u", &credential).await;
        assert!(login.is_ok(), "{login:?}");
        assert!(fake_server.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn md5_and_malformed_clients() {
        let list = UserList::parse("\"u\" \"secret\"").unwrap_or_else(|e| panic!("{e}"));
        let (mut a, mut b) = tokio::io::duplex(4096);
        let client = tokio::spawn(async move {
            let (_, body) = read_message(&mut b, 100).await.ok().flatten().unwrap_or_default();
            let salt: [u8; 4] = body[4..8].try_into().unwrap_or_default();
            let hash = postgres_protocol::authentication::md5_hash(b"u", b"secret", salt);
            let mut m = hash.into_bytes();
            m.push(0);
            let _ = send(&mut b, &frame(b'p', &m)).await;
        });
        assert!(authenticate_client(&mut a, AuthType::Md5, "u", list.get("u")).await.is_ok());
        let _ = client.await;
        // Truncated, wrong type, huge length: refused, never a panic.
        for junk in [&b"p\0\0"[..], &b"Q\0\0\0\x05x"[..], &b"p\x7f\xff\xff\xff"[..]] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let _ = send(&mut b, junk).await;
            drop(b);
            assert!(authenticate_client(&mut a, AuthType::ScramSha256, "u", list.get("u")).await.is_err());
        }
    }
}
