//! Authentication the proxy terminates itself for transaction pooling (as PgBouncer does): the
//! user list (`auth_file`), the server side of SCRAM-SHA-256 and MD5 towards clients, and the
//! proxy's own login to PostgreSQL with a password, an MD5 hash or, for a SCRAM verifier, the
//! ClientKey the client's proof revealed ("SCRAM pass-through").

use std::{collections::HashMap, fmt, num::NonZeroU32, path::Path, str::FromStr, sync::OnceLock};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ring::{
    digest, hmac, pbkdf2,
    rand::{SecureRandom, SystemRandom},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::{
    protocol::{error_fields, error_message, frame, Reader},
    transport::send,
};

/// SQLSTATE invalid_password: a wrong password or an unknown user.
const INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE invalid_authorization_specification: an authentication the proxy cannot do.
const INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE protocol_violation: a malformed or unexpected message.
const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE feature_not_supported: a SCRAM option the proxy does not implement.
const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE connection_failure: the upstream went away during login.
const CONNECTION_FAILURE: &str = "08006";
/// SQLSTATE internal_error: the system's random generator failed.
const INTERNAL_ERROR: &str = "XX000";

/// The longest message a client may send during authentication (PostgreSQL's own limit for
/// password packets).
const MAX_CLIENT_MESSAGE: usize = 10_000;
/// The longest message the proxy reads from PostgreSQL during login.
const MAX_SERVER_MESSAGE: usize = 1 << 20;

/// AuthenticationOk.
const AUTH_OK: i32 = 0;
/// AuthenticationCleartextPassword.
const AUTH_CLEARTEXT: i32 = 3;
/// AuthenticationMD5Password.
const AUTH_MD5: i32 = 5;
/// AuthenticationSASL.
const AUTH_SASL: i32 = 10;
/// AuthenticationSASLContinue.
const AUTH_SASL_CONTINUE: i32 = 11;
/// AuthenticationSASLFinal.
const AUTH_SASL_FINAL: i32 = 12;

/// The only SASL mechanism the proxy speaks (never `-PLUS`: no channel binding).
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Iterations of a verifier derived from a plain password (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;
/// Salt length of a derived verifier (PostgreSQL's).
const SCRAM_SALT_LEN: usize = 16;
/// Random bytes in a SCRAM nonce (PostgreSQL's).
const SCRAM_NONCE_LEN: usize = 18;

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

/// A SCRAM-SHA-256 verifier, as PostgreSQL stores it in `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ScramVerifier {
    /// The PBKDF2 iteration count.
    iterations: u32,
    /// The PBKDF2 salt.
    salt: Vec<u8>,
    /// SHA-256(ClientKey).
    stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    /// An error never quotes the text (it is a secret).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let layout =
            || "not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)";
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(layout)?;
        let (params, keys) = rest.split_once('$').ok_or_else(layout)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(layout)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or_else(layout)?;
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .filter(|&i| i > 0)
            .ok_or("invalid SCRAM-SHA-256 verifier: bad iteration count")?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or("invalid SCRAM-SHA-256 verifier: bad salt")?;
        let key = |s: &str, what: &str| {
            B64.decode(s)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| format!("invalid SCRAM-SHA-256 verifier: bad {what}"))
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored_key, "StoredKey")?,
            server_key: key(server_key, "ServerKey")?,
        })
    }

    /// The verifier of a password with this salt and iteration count.
    fn from_password(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let keys = ScramKeys::from_password(password, &salt, iterations);
        Self { iterations, salt, stored_key: keys.stored_key, server_key: keys.server_key }
    }

    /// A verifier no proof matches, for a user without a usable one. Its salt is the same for
    /// every attempt at the same user name (PostgreSQL's "mock" salt), so that a client cannot
    /// tell unknown users from known ones by watching the salt change.
    fn mock(user: &str) -> Result<Self, NoRandomness> {
        static MOCK_KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = match MOCK_KEY.get() {
            Some(k) => k,
            None => {
                let fresh = random::<32>()?;
                MOCK_KEY.get_or_init(|| fresh)
            }
        };
        let salt = hmac_sha256(key, user.as_bytes())[..SCRAM_SALT_LEN].to_vec();
        Ok(Self { iterations: SCRAM_ITERATIONS, salt, stored_key: random()?, server_key: random()? })
    }
}

/// The three keys of a SCRAM login.
struct ScramKeys {
    /// HMAC(SaltedPassword, "Client Key").
    client_key: [u8; 32],
    /// SHA-256(ClientKey).
    stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    server_key: [u8; 32],
}

impl ScramKeys {
    /// The keys of a password (SASLprep'd when it can be, as PostgreSQL and libpq do).
    fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let prepared = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.as_bytes().to_vec(),
        };
        let mut salted = [0u8; 32];
        let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, &prepared, &mut salted);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self { client_key, stored_key: sha256(&client_key), server_key: hmac_sha256(&salted, b"Server Key") }
    }
}

/// A user's secret from the user list.
#[derive(Clone)]
pub(crate) enum Secret {
    /// A plain-text password, and its SCRAM verifier, derived on first use with a random salt.
    Plain(String, OnceLock<ScramVerifier>),
    /// Lowercase hex of md5(password || user name), what `md5…` in pg_authid holds.
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
    /// Reads a secret as an auth_file or pg_authid holds it: a SCRAM-SHA-256 verifier, `md5`
    /// and 32 hex digits, or else a plain password. An error never quotes the text.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(text).map(Self::Scram);
        }
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Self::Md5(hex.to_ascii_lowercase()));
            }
        }
        Ok(Self::Plain(text.to_owned(), OnceLock::new()))
    }

    /// The verifier SCRAM checks against, or `None` for an MD5 hash.
    fn scram_verifier(&self) -> Result<Option<&ScramVerifier>, NoRandomness> {
        match self {
            Self::Plain(password, derived) => {
                if let Some(v) = derived.get() {
                    return Ok(Some(v));
                }
                let v = ScramVerifier::from_password(
                    password,
                    random::<SCRAM_SALT_LEN>()?.to_vec(),
                    SCRAM_ITERATIONS,
                );
                // Two first logins may race; both then use the one verifier kept.
                Ok(Some(derived.get_or_init(|| v)))
            }
            Self::Scram(v) => Ok(Some(v)),
            Self::Md5(_) => Ok(None),
        }
    }
}

/// Users and their secrets, from a PgBouncer-style `userlist.txt`.
#[derive(Debug, Default)]
pub(crate) struct UserList {
    /// Secrets by user name.
    users: HashMap<String, Secret>,
}

impl UserList {
    /// Reads and parses the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(&text)
    }

    /// Each line `"user" "secret"` (a `""` inside quotes is one quote); blank lines and lines
    /// starting with `;` or `#` are skipped; fields after the second are ignored. A later line
    /// for the same user replaces an earlier one. An error names the line and never quotes it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let at = |e: String| format!("line {number}: {e}");
            let (user, rest) = quoted(line).map_err(at)?;
            let (secret, _ignored) = quoted(rest.trim_start()).map_err(at)?;
            if user.is_empty() {
                return Err(at("empty user name".to_owned()));
            }
            if secret.is_empty() {
                return Err(at(format!("empty secret for user {user:?}")));
            }
            users.insert(user, Secret::parse(&secret).map_err(at)?);
        }
        Ok(Self { users })
    }

    /// The secret of `user`, if the list has the user.
    pub(crate) fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }
}

/// A double-quoted field at the start of `s` (`""` standing for a quote) and the text after it.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let body = s.strip_prefix('"').ok_or("expected \"user\" \"secret\"")?;
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '"' {
            value.push(c);
        } else if chars.next_if(|&(_, n)| n == '"').is_some() {
            value.push('"');
        } else {
            return Ok((value, &body[at + 1..]));
        }
    }
    Err("unterminated quoted field".to_owned())
}

/// What a client's authentication yielded.
#[derive(Default)]
pub(crate) struct ClientAuth {
    /// The ClientKey recovered from a SCRAM proof: with the verifier, it logs in upstream.
    pub(crate) client_key: Option<[u8; 32]>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.client_key.is_some() { "Some(<hidden>)" } else { "None" };
        write!(f, "ClientAuth {{ client_key: {key} }}")
    }
}

/// Why a client was not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// The client went away (closed, or sent Terminate): nothing to tell it.
    Gone,
    /// Refused: the SQLSTATE and message of the FATAL the caller sends the client.
    Refused(&'static str, String),
}

impl AuthFailure {
    /// The SQLSTATE and message of the FATAL a client gets, if it is still there.
    pub(crate) fn to_client(&self) -> Option<(&'static str, String)> {
        match self {
            Self::Gone => None,
            Self::Refused(code, message) => Some((code, message.clone())),
        }
    }
}

/// The system's random generator failed (an OS fault): no salt or nonce can be made.
#[derive(Debug)]
struct NoRandomness;

impl From<NoRandomness> for AuthFailure {
    fn from(_: NoRandomness) -> Self {
        Self::Refused(INTERNAL_ERROR, "could not generate random bytes for authentication".to_owned())
    }
}

impl From<NoRandomness> for LoginError {
    fn from(_: NoRandomness) -> Self {
        LoginError::new(INTERNAL_ERROR, "strata-proxy: upstream login: could not generate a random nonce")
    }
}

/// How the proxy logs in to PostgreSQL as a user.
#[derive(Clone)]
pub(crate) enum Credential {
    /// No password (the server must not ask for one).
    None,
    /// A plain password: answers cleartext, MD5 and SCRAM-SHA-256.
    Password(String),
    /// Lowercase hex of md5(password || user): answers MD5 only.
    Md5(String),
    /// SCRAM pass-through: a client's ClientKey and the verifier it matches; answers
    /// SCRAM-SHA-256 from a server holding the same verifier.
    ScramKeys {
        /// The ClientKey a client's proof revealed.
        client_key: [u8; 32],
        /// The verifier from the user list.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoginError {
    /// The SQLSTATE: the server's, or the proxy's own.
    code: String,
    /// The server's message, or the proxy's own.
    message: String,
}

impl LoginError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }

    /// A login failure of the proxy's own making (not the server's ErrorResponse).
    fn own(code: &str, what: impl fmt::Display) -> Self {
        Self::new(code, format!("strata-proxy: upstream login: {what}"))
    }

    /// The SQLSTATE.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UpstreamLogin {
    /// ParameterStatus name and value pairs, in the order sent.
    pub(crate) parameters: Vec<(String, String)>,
    /// BackendKeyData (process id, secret key), or (0, 0) if the server sent none.
    pub(crate) backend_key: (u32, u32),
}

/// A fresh random array from the system's generator.
fn random<const N: usize>() -> Result<[u8; N], NoRandomness> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| NoRandomness)?;
    Ok(out)
}

/// SHA-256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// HMAC-SHA-256 of `data` under `key`.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref());
    out
}

/// Lowercase hex of MD5 of the concatenated parts.
fn md5_hex(parts: &[&[u8]]) -> String {
    use md5::Digest as _;
    let mut hasher = md5::Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer to an MD5 challenge: `md5` + hex(md5(hex(md5(password || user)) || salt)), from
/// the inner hex.
fn md5_answer(inner_hex: &str, salt: &[u8]) -> String {
    format!("md5{}", md5_hex(&[inner_hex.as_bytes(), salt]))
}

/// Equality that takes the same time wherever the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Byte-wise XOR.
fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// A message type byte as an error message shows it.
fn describe(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("{tag}")
    }
}

/// Why no whole message was read.
enum ReadError {
    /// The peer closed the connection (or the read failed).
    Closed,
    /// The length field was below 4 or over the limit.
    Length(u32),
}

/// Reads one tagged message of at most `max` bytes: (tag, body).
async fn read_message<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> Result<(u8, Vec<u8>), ReadError> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.map_err(|_| ReadError::Closed)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let body_len = usize::try_from(len)
        .ok()
        .filter(|l| (4..=max).contains(l))
        .map(|l| l - 4)
        .ok_or(ReadError::Length(len))?;
    let mut body = vec![0u8; body_len];
    s.read_exact(&mut body).await.map_err(|_| ReadError::Closed)?;
    Ok((head[0], body))
}

/// An Authentication request ('R') with this code and data.
fn auth_request(code: i32, data: &[u8]) -> bytes::Bytes {
    let mut body = Vec::with_capacity(4 + data.len());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(data);
    frame(b'R', &body)
}

/// The refusal of a wrong password or an unknown user (the two look the same).
fn wrong_password(user: &str) -> AuthFailure {
    AuthFailure::Refused(INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
}

/// A protocol violation by the client.
fn violation(message: impl Into<String>) -> AuthFailure {
    AuthFailure::Refused(PROTOCOL_VIOLATION, message.into())
}

/// A malformed SCRAM message from the client.
fn malformed_scram(detail: &str) -> AuthFailure {
    violation(format!("malformed SCRAM message ({detail})"))
}

/// Sends a message to the client; a failed write means the client is gone.
async fn send_client<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), AuthFailure> {
    send(stream, bytes).await.map_err(|_| AuthFailure::Gone)
}

/// Reads the client's password-type message ('p'): PasswordMessage, SASLInitialResponse or
/// SASLResponse (`what` names it in errors).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, what: &str) -> Result<Vec<u8>, AuthFailure> {
    match read_message(stream, MAX_CLIENT_MESSAGE).await {
        Ok((b'p', body)) => Ok(body),
        Ok((b'X', _)) | Err(ReadError::Closed) => Err(AuthFailure::Gone),
        Ok((tag, _)) => {
            Err(violation(format!("expected {what} response, got message type {}", describe(tag))))
        }
        Err(ReadError::Length(len)) => Err(violation(format!("invalid {what} message length {len}"))),
    }
}

/// Runs the server side of PostgreSQL's authentication exchange on a client connection whose
/// StartupMessage was read, up to but not including AuthenticationOk, which the caller sends.
/// On failure the caller sends the FATAL (or nothing, if the client is [`AuthFailure::Gone`]).
pub(crate) async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    auth: AuthType,
    user: &str,
    secret: Option<&Secret>,
) -> Result<ClientAuth, AuthFailure> {
    match auth {
        AuthType::Trust => Ok(ClientAuth::default()),
        AuthType::Md5 => md5_exchange(stream, user, secret).await,
        AuthType::ScramSha256 => {
            let verifier = match secret {
                Some(s) => s.scram_verifier()?,
                None => None,
            };
            match (verifier, secret) {
                (Some(v), _) => scram_exchange(stream, user, v, None).await,
                // No usable verifier: a plausible exchange that fails at the end.
                (None, secret) => {
                    let refusal = match secret {
                        Some(_) => AuthFailure::Refused(
                            INVALID_PASSWORD,
                            format!(
                                "password authentication failed for user \"{user}\": its secret in the auth_file is an md5 hash, which cannot verify SCRAM-SHA-256 (use auth_type md5, or a plain password or SCRAM verifier)"
                            ),
                        ),
                        None => wrong_password(user),
                    };
                    scram_exchange(stream, user, &ScramVerifier::mock(user)?, Some(refusal)).await
                }
            }
        }
    }
}

/// The MD5 challenge: a random salt, then the client's `md5…` answer.
async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    secret: Option<&Secret>,
) -> Result<ClientAuth, AuthFailure> {
    let salt = random::<4>()?;
    send_client(stream, &auth_request(AUTH_MD5, &salt)).await?;
    let body = read_response(stream, "password").await?;
    let mut r = Reader::new(&body, "password");
    let sent = r.cbytes().map_err(|m| violation(m.0))?;
    if !r.is_empty() {
        return Err(violation("invalid password packet size"));
    }
    let inner = match secret {
        Some(Secret::Plain(password, _)) => md5_hex(&[password.as_bytes(), user.as_bytes()]),
        Some(Secret::Md5(hex)) => hex.clone(),
        Some(Secret::Scram(_)) => {
            return Err(AuthFailure::Refused(
                INVALID_PASSWORD,
                format!(
                    "password authentication failed for user \"{user}\": its secret in the auth_file is a SCRAM-SHA-256 verifier, which cannot verify md5 (use auth_type scram-sha-256)"
                ),
            ))
        }
        None => return Err(wrong_password(user)),
    };
    if same_bytes(sent, md5_answer(&inner, &salt).as_bytes()) {
        Ok(ClientAuth::default())
    } else {
        Err(wrong_password(user))
    }
}

/// The client's first SCRAM message, split.
struct ClientFirst<'a> {
    /// `n,,` or `y,,`.
    gs2_header: &'a str,
    /// client-first-message-bare: `n=<user>,r=<nonce>[,extensions]`.
    bare: &'a str,
    /// The client's nonce.
    nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    /// Parses client-first-message (RFC 5802) the way PostgreSQL does.
    fn parse(text: &'a str) -> Result<Self, AuthFailure> {
        if text.is_empty() {
            return Err(malformed_scram("the message is empty"));
        }
        if text.starts_with("p=") {
            return Err(violation("channel binding is not supported (SCRAM-SHA-256-PLUS was not offered)"));
        }
        let rest = text
            .strip_prefix("n,")
            .or_else(|| text.strip_prefix("y,"))
            .ok_or_else(|| malformed_scram("unexpected channel-binding flag"))?;
        let bare = match rest.strip_prefix(',') {
            Some(bare) => bare,
            None if rest.starts_with("a=") => {
                return Err(AuthFailure::Refused(
                    FEATURE_NOT_SUPPORTED,
                    "client uses authorization identity, but it is not supported".to_owned(),
                ))
            }
            None => return Err(malformed_scram("comma expected after the channel-binding flag")),
        };
        let gs2_header = &text[..3];
        let mut attributes = bare.split(',');
        match attributes.next() {
            Some(a) if a.starts_with("m=") => {
                return Err(AuthFailure::Refused(
                    FEATURE_NOT_SUPPORTED,
                    "client requires an unsupported SCRAM extension".to_owned(),
                ))
            }
            // The user name is ignored: PostgreSQL uses the startup message's.
            Some(a) if a.starts_with("n=") => {}
            _ => return Err(malformed_scram("attribute \"n\" expected")),
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| malformed_scram("attribute \"r\" expected"))?;
        if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed_scram("invalid nonce"));
        }
        Ok(Self { gs2_header, bare, nonce })
    }
}

/// SCRAM-SHA-256 against `verifier`. With a `refusal` (no usable verifier) the exchange runs
/// to the end and then fails with it.
async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    verifier: &ScramVerifier,
    refusal: Option<AuthFailure>,
) -> Result<ClientAuth, AuthFailure> {
    send_client(stream, &auth_request(AUTH_SASL, b"SCRAM-SHA-256\0\0")).await?;

    let body = read_response(stream, "SASL").await?;
    let mut r = Reader::new(&body, "SASLInitialResponse");
    let mechanism = r.cstr().map_err(|m| violation(m.0))?;
    if mechanism != SCRAM_SHA_256 {
        return Err(violation("client selected an invalid SASL authentication mechanism"));
    }
    let len = r.i32().map_err(|m| violation(m.0))?;
    let data = match usize::try_from(len) {
        Ok(n) => r.take(n).map_err(|m| violation(m.0))?,
        Err(_) => &[][..],
    };
    if !r.is_empty() {
        return Err(violation("invalid SASLInitialResponse message: trailing bytes"));
    }
    let first = std::str::from_utf8(data).map_err(|_| malformed_scram("not valid UTF-8"))?;
    let first = ClientFirst::parse(first)?;

    let nonce = format!("{}{}", first.nonce, B64.encode(random::<SCRAM_NONCE_LEN>()?));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
    send_client(stream, &auth_request(AUTH_SASL_CONTINUE, server_first.as_bytes())).await?;

    let body = read_response(stream, "SASL").await?;
    let last = std::str::from_utf8(&body).map_err(|_| malformed_scram("not valid UTF-8"))?;
    let (without_proof, proof) =
        last.rsplit_once(",p=").ok_or_else(|| malformed_scram("could not find proof"))?;
    let mut attributes = without_proof.split(',');
    let binding = attributes
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or_else(|| malformed_scram("attribute \"c\" expected"))?;
    let binding = B64.decode(binding).map_err(|_| malformed_scram("invalid channel-binding data"))?;
    if binding != first.gs2_header.as_bytes() {
        return Err(violation("SCRAM channel binding check failed"));
    }
    let final_nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed_scram("attribute \"r\" expected"))?;
    if final_nonce != nonce {
        return Err(malformed_scram("nonce does not match"));
    }
    let proof: [u8; 32] = B64
        .decode(proof)
        .ok()
        .and_then(|p| <[u8; 32]>::try_from(p).ok())
        .ok_or_else(|| malformed_scram("invalid proof"))?;

    let auth_message = format!("{},{server_first},{without_proof}", first.bare);
    let client_signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
    let client_key = xor(&proof, &client_signature);
    let valid = same_bytes(&sha256(&client_key), &verifier.stored_key);
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    if !valid {
        return Err(wrong_password(user));
    }
    let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", B64.encode(server_signature));
    send_client(stream, &auth_request(AUTH_SASL_FINAL, server_final.as_bytes())).await?;
    Ok(ClientAuth { client_key: Some(client_key) })
}

/// Logs in to PostgreSQL on a fresh connection (TLS, if any, already negotiated): sends
/// `startup_packet` (a complete StartupMessage) as it is, answers the server's authentication
/// requests with `credential`, and reads the ParameterStatus and BackendKeyData messages up to
/// ReadyForQuery.
pub(crate) async fn login_upstream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    startup_packet: &[u8],
    user: &str,
    credential: &Credential,
) -> Result<UpstreamLogin, LoginError> {
    let lost = |e: std::io::Error| LoginError::own(CONNECTION_FAILURE, e);
    send(stream, startup_packet).await.map_err(lost)?;
    let mut login = UpstreamLogin::default();
    let mut scram: Option<ScramClient<'_>> = None;
    let mut authenticated = false;
    loop {
        let (tag, body) = match read_message(stream, MAX_SERVER_MESSAGE).await {
            Ok(message) => message,
            Err(ReadError::Closed) => {
                return Err(LoginError::own(CONNECTION_FAILURE, "the upstream closed the connection"))
            }
            Err(ReadError::Length(len)) => {
                return Err(LoginError::own(PROTOCOL_VIOLATION, format!("invalid message length {len}")))
            }
        };
        let malformed = |m: crate::protocol::Malformed| LoginError::own(PROTOCOL_VIOLATION, m.0);
        match tag {
            b'E' => return Err(server_error(&body)),
            b'N' | b'v' => {} // NoticeResponse, NegotiateProtocolVersion: nothing to do
            b'R' if !authenticated => {
                let mut r = Reader::new(&body, "authentication request");
                let code = r.i32().map_err(malformed)?;
                let data = r.take(r.remaining()).map_err(malformed)?;
                match code {
                    AUTH_OK => {
                        if scram.as_ref().is_some_and(|s| !s.finished) {
                            return Err(LoginError::own(
                                PROTOCOL_VIOLATION,
                                "the upstream ended the SCRAM exchange without proving it knows the verifier",
                            ));
                        }
                        authenticated = true;
                    }
                    AUTH_CLEARTEXT => {
                        let Credential::Password(password) = credential else {
                            return Err(no_password(user, "a cleartext password"));
                        };
                        send(stream, &password_message(password.as_bytes())).await.map_err(lost)?;
                    }
                    AUTH_MD5 => {
                        let salt: [u8; 4] = data
                            .try_into()
                            .map_err(|_| LoginError::own(PROTOCOL_VIOLATION, "invalid MD5 request"))?;
                        let inner = match credential {
                            Credential::Password(p) => md5_hex(&[p.as_bytes(), user.as_bytes()]),
                            Credential::Md5(hex) => hex.clone(),
                            _ => return Err(no_password(user, "an md5 password")),
                        };
                        send(stream, &password_message(md5_answer(&inner, &salt).as_bytes())).await.map_err(lost)?;
                    }
                    AUTH_SASL => {
                        if scram.is_some() {
                            return Err(LoginError::own(PROTOCOL_VIOLATION, "a second SASL request"));
                        }
                        let offers_scram =
                            data.split(|&b| b == 0).any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                        if !offers_scram {
                            return Err(LoginError::own(
                                INVALID_AUTHORIZATION,
                                "the upstream offers no SASL mechanism strata-proxy supports (SCRAM-SHA-256)",
                            ));
                        }
                        let nonce = B64.encode(random::<SCRAM_NONCE_LEN>()?);
                        let client = ScramClient::new(credential, "", nonce)
                            .ok_or_else(|| no_password(user, "a SCRAM-SHA-256 password"))?;
                        send(stream, &client.initial_response()).await.map_err(lost)?;
                        scram = Some(client);
                    }
                    AUTH_SASL_CONTINUE => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| LoginError::own(PROTOCOL_VIOLATION, "a SASL continuation without a start"))?;
                        let response = client.respond(data, user)?;
                        send(stream, &frame(b'p', response.as_bytes())).await.map_err(lost)?;
                    }
                    AUTH_SASL_FINAL => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| LoginError::own(PROTOCOL_VIOLATION, "a SASL final message without a start"))?;
                        client.verify(data)?;
                    }
                    other => {
                        return Err(LoginError::own(
                            INVALID_AUTHORIZATION,
                            format!("the upstream asks for an authentication method strata-proxy does not support (request {other})"),
                        ))
                    }
                }
            }
            b'S' if authenticated => {
                let mut r = Reader::new(&body, "ParameterStatus");
                let name = r.cstr().map_err(malformed)?;
                let value = r.cstr().map_err(malformed)?;
                login.parameters.push((name, value));
            }
            b'K' if authenticated => {
                if body.len() != 8 {
                    return Err(LoginError::own(
                        PROTOCOL_VIOLATION,
                        format!("unsupported BackendKeyData length {} (protocol 3.0 expected)", body.len()),
                    ));
                }
                let mut r = Reader::new(&body, "BackendKeyData");
                login.backend_key = (r.u32().map_err(malformed)?, r.u32().map_err(malformed)?);
            }
            b'Z' if authenticated => return Ok(login),
            other => {
                return Err(LoginError::own(
                    PROTOCOL_VIOLATION,
                    format!("unexpected message type {} during login", describe(other)),
                ))
            }
        }
    }
}

/// A PasswordMessage ('p') holding `password` as a C string.
fn password_message(password: &[u8]) -> bytes::Bytes {
    let mut body = Vec::with_capacity(password.len() + 1);
    body.extend_from_slice(password);
    body.push(0);
    frame(b'p', &body)
}

/// The server's ErrorResponse as a login error: its SQLSTATE and message.
fn server_error(body: &[u8]) -> LoginError {
    let (code, _severity) = error_fields(body);
    let message = error_message(body);
    LoginError::new(
        code.as_deref().unwrap_or(CONNECTION_FAILURE),
        message.unwrap_or_else(|| "the upstream refused the login".to_owned()),
    )
}

/// The error of an upstream asking for a password the proxy does not have.
fn no_password(user: &str, what: &str) -> LoginError {
    LoginError::own(
        INVALID_PASSWORD,
        format!("the upstream asks for {what} for user \"{user}\", which the auth_file's secret cannot give"),
    )
}

/// What the client side of SCRAM logs in with.
enum ScramSecret<'a> {
    /// A plain password.
    Password(&'a str),
    /// A ClientKey and the verifier it matches (pass-through).
    Keys(&'a [u8; 32], &'a ScramVerifier),
}

/// The client side of SCRAM-SHA-256 without channel binding (gs2 header `n,,`).
struct ScramClient<'a> {
    /// What the proof is computed from.
    secret: ScramSecret<'a>,
    /// The client's nonce.
    nonce: String,
    /// client-first-message-bare.
    first_bare: String,
    /// AuthMessage and ServerKey, once the server's first message is answered.
    expected: Option<(String, [u8; 32])>,
    /// Whether the server's signature checked out.
    finished: bool,
}

impl<'a> ScramClient<'a> {
    /// A client for `credential` (`None` if it cannot do SCRAM), with `user` in its first
    /// message (PostgreSQL ignores it; libpq sends it empty) and this nonce.
    fn new(credential: &'a Credential, user: &str, nonce: String) -> Option<Self> {
        let secret = match credential {
            Credential::Password(p) => ScramSecret::Password(p),
            Credential::ScramKeys { client_key, verifier } => ScramSecret::Keys(client_key, verifier),
            Credential::None | Credential::Md5(_) => return None,
        };
        let user = user.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={user},r={nonce}");
        Some(Self { secret, nonce, first_bare, expected: None, finished: false })
    }

    /// The SASLInitialResponse choosing SCRAM-SHA-256.
    fn initial_response(&self) -> bytes::Bytes {
        let first = format!("n,,{}", self.first_bare);
        let mut body = Vec::with_capacity(SCRAM_SHA_256.len() + 5 + first.len());
        body.extend_from_slice(SCRAM_SHA_256.as_bytes());
        body.push(0);
        body.extend_from_slice(&i32::try_from(first.len()).unwrap_or(i32::MAX).to_be_bytes());
        body.extend_from_slice(first.as_bytes());
        frame(b'p', &body)
    }

    /// The client-final-message answering the server-first-message.
    fn respond(&mut self, server_first: &[u8], user: &str) -> Result<String, LoginError> {
        let bad =
            |detail: &str| LoginError::own(PROTOCOL_VIOLATION, format!("malformed SCRAM message ({detail})"));
        if self.expected.is_some() {
            return Err(bad("a second server-first-message"));
        }
        let text = std::str::from_utf8(server_first).map_err(|_| bad("not valid UTF-8"))?;
        let mut attributes = text.split(',');
        let mut attribute = |name: &str| attributes.next().and_then(|a| a.strip_prefix(name));
        let nonce = attribute("r=").ok_or_else(|| bad("attribute \"r\" expected"))?;
        let salt = attribute("s=").ok_or_else(|| bad("attribute \"s\" expected"))?;
        let iterations = attribute("i=").ok_or_else(|| bad("attribute \"i\" expected"))?;
        if nonce.len() <= self.nonce.len()
            || !nonce.starts_with(&self.nonce)
            || !nonce.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad("invalid nonce"));
        }
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty()).ok_or_else(|| bad("invalid salt"))?;
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| bad("invalid iteration count"))?;
        let keys = match self.secret {
            ScramSecret::Password(password) => ScramKeys::from_password(password, &salt, iterations),
            ScramSecret::Keys(client_key, verifier) => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(LoginError::own(
                        INVALID_PASSWORD,
                        format!("the upstream's SCRAM-SHA-256 verifier for user \"{user}\" differs from the auth_file's (salt or iteration count); SCRAM pass-through needs the same verifier on both"),
                    ));
                }
                ScramKeys {
                    client_key: *client_key,
                    stored_key: verifier.stored_key,
                    server_key: verifier.server_key,
                }
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let proof = xor(&keys.client_key, &hmac_sha256(&keys.stored_key, auth_message.as_bytes()));
        self.expected = Some((auth_message, keys.server_key));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message's signature.
    fn verify(&mut self, server_final: &[u8]) -> Result<(), LoginError> {
        let Some((auth_message, server_key)) = self.expected.as_ref().filter(|_| !self.finished) else {
            return Err(LoginError::own(PROTOCOL_VIOLATION, "an unexpected SASL final message"));
        };
        let text = std::str::from_utf8(server_final).unwrap_or_default();
        if let Some(error) = text.strip_prefix("e=") {
            return Err(LoginError::own(
                INVALID_PASSWORD,
                format!("the upstream's SCRAM exchange failed: {error}"),
            ));
        }
        let signature = text.strip_prefix("v=").and_then(|v| B64.decode(v.split(',').next()?).ok());
        let expected = hmac_sha256(server_key, auth_message.as_bytes());
        match signature {
            Some(signature) if same_bytes(&signature, &expected) => {
                self.finished = true;
                Ok(())
            }
            _ => {
                Err(LoginError::own(INVALID_AUTHORIZATION, "the upstream's SCRAM server signature is wrong"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::protocol::{error_response, Severity, PROTOCOL_3_0};

    type Outcome = Result<ClientAuth, AuthFailure>;

    fn users(text: &str) -> UserList {
        UserList::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn plain(password: &str) -> Secret {
        Secret::Plain(password.to_owned(), OnceLock::new())
    }

    /// Reads one message the test's peer sent, failing the test on anything else.
    async fn next(s: &mut DuplexStream) -> (u8, Vec<u8>) {
        match read_message(s, MAX_SERVER_MESSAGE).await {
            Ok(m) => m,
            Err(_) => panic!("no message"),
        }
    }

    /// The code of an Authentication request and its data.
    fn auth_code(message: &(u8, Vec<u8>)) -> (i32, Vec<u8>) {
        assert_eq!(message.0, b'R');
        let code = i32::from_be_bytes([message.1[0], message.1[1], message.1[2], message.1[3]]);
        (code, message.1[4..].to_vec())
    }

    #[test]
    fn auth_types_parse_and_print() {
        for (text, auth) in
            [("trust", AuthType::Trust), ("md5", AuthType::Md5), ("scram-sha-256", AuthType::ScramSha256)]
        {
            assert_eq!(text.parse::<AuthType>(), Ok(auth));
            assert_eq!(auth.to_string(), text);
        }
        assert_eq!("SCRAM-SHA-256".parse::<AuthType>(), Ok(AuthType::ScramSha256));
        assert!("password".parse::<AuthType>().is_err());
    }

    #[test]
    fn user_lists_parse_quotes_comments_and_secret_kinds() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let text = format!(
            "; comment\n# another\n\n  \"alice\" \"pa\"\"ss\"\n\"bob\" \"md5ABCDEFabcdefabcdefabcdefabcdefab\" extra \"x\"\n\"carol\" \"{verifier}\"\n\"d\"\"ave\"   \"md5short\"\r\n\"eve\" \"first\"\n\"eve\" \"second\"\n"
        );
        let list = users(&text);
        assert!(matches!(list.get("alice"), Some(Secret::Plain(p, _)) if p == "pa\"ss"));
        assert!(matches!(list.get("bob"), Some(Secret::Md5(h)) if h == "abcdefabcdefabcdefabcdefabcdefab"));
        assert!(
            matches!(list.get("carol"), Some(Secret::Scram(v)) if v.iterations == 4096 && v.salt.len() == 16)
        );
        assert!(matches!(list.get("d\"ave"), Some(Secret::Plain(p, _)) if p == "md5short"));
        assert!(matches!(list.get("eve"), Some(Secret::Plain(p, _)) if p == "second"));
        assert!(list.get("mallory").is_none());
        assert!(list.get("x").is_none());
    }

    #[test]
    fn user_list_errors_name_the_line_and_not_the_secret() {
        for (text, line, what) in [
            ("alice pass", 1, "expected"),
            ("\n\"alice\" \"pass", 2, "unterminated"),
            ("# c\n\"a\" \"b\"\n\"alice\"", 3, "expected"),
            ("\"alice\"x\"pass\"", 1, "expected"),
            ("\"\" \"pass\"", 1, "empty user name"),
            ("\"alice\" \"\"", 1, "empty secret"),
            ("\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$sekrit\"", 1, "SCRAM-SHA-256 verifier"),
            ("\"alice\" \"SCRAM-SHA-256$0:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"", 1, "iteration"),
        ] {
            let e = UserList::parse(text).map(|_| ()).unwrap_err();
            assert!(e.starts_with(&format!("line {line}: ")), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
            assert!(!e.contains("pass\"") && !e.contains("sekrit"), "{e}");
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let verifier = postgres_protocol::password::scram_sha_256(b"hunter2");
        let list = users(&format!(
            "\"a\" \"hunter2\"\n\"b\" \"md5{}\"\n\"c\" \"{verifier}\"",
            md5_hex(&[b"hunter2", b"b"])
        ));
        let mut shown = format!("{list:?}");
        for user in ["a", "b", "c"] {
            let secret = list.get(user);
            if let Some(s) = secret {
                let _ = s.scram_verifier(); // caches a derived verifier for "a"
            }
            let auth = ClientAuth { client_key: Some([7; 32]) };
            shown += &format!("{secret:?} {auth:?} {:?}", Credential::from_auth(secret, &auth));
        }
        shown += &format!("{list:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&md5_hex(&[b"hunter2", b"b"])), "{shown}");
        if let Some(Secret::Scram(v)) = list.get("c") {
            assert!(
                !shown.contains(&B64.encode(v.stored_key)) && !shown.contains(&B64.encode(&v.salt)),
                "{shown}"
            );
        }
        assert!(!shown.contains("7, 7"), "{shown}");
    }

    #[test]
    fn verifiers_match_postgres_and_its_format() {
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        let v = ScramVerifier::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ScramVerifier::from_password("pw", v.salt.clone(), v.iterations), v);
        assert_ne!(ScramVerifier::from_password("pW", v.salt.clone(), v.iterations), v);
        // SASLprep: a no-break space is a space to SCRAM (PostgreSQL and libpq agree).
        let v = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256("a\u{a0}b".as_bytes()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ScramVerifier::from_password("a b", v.salt.clone(), v.iterations), v);
        for bad in
            ["", "SCRAM-SHA-256$", "SCRAM-SHA-256$x:c2FsdA==$a:b", "md5abc", "SCRAM-SHA-256$4096:$AA==:AA=="]
        {
            assert!(ScramVerifier::parse(bad).is_err(), "{bad}");
        }
    }

    /// A PostgreSQL client (postgres-protocol's SCRAM) logging in: what the server's final
    /// message was, or why the client stopped.
    async fn scram_client(
        password: String,
        binding: ChannelBinding,
        mut s: DuplexStream,
    ) -> Result<(), String> {
        let mut scram = ScramSha256::new(password.as_bytes(), binding);
        let (code, offer) = auth_code(&next(&mut s).await);
        assert_eq!((code, offer.as_slice()), (AUTH_SASL, &b"SCRAM-SHA-256\0\0"[..]));
        let first = scram.message().to_vec();
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&i32::try_from(first.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&first);
        send(&mut s, &frame(b'p', &body)).await.map_err(|e| e.to_string())?;
        let (code, server_first) = auth_code(&next(&mut s).await);
        assert_eq!(code, AUTH_SASL_CONTINUE);
        scram.update(&server_first).map_err(|e| e.to_string())?;
        send(&mut s, &frame(b'p', scram.message())).await.map_err(|e| e.to_string())?;
        match read_message(&mut s, MAX_SERVER_MESSAGE).await {
            Ok(m) => {
                let (code, server_final) = auth_code(&m);
                assert_eq!(code, AUTH_SASL_FINAL);
                scram.finish(&server_final).map_err(|e| e.to_string())
            }
            Err(_) => Err("no final message".to_owned()),
        }
    }

    /// `authenticate_client` against postgres-protocol's SCRAM client.
    async fn scram_login(
        secret: Option<&Secret>,
        password: &str,
        binding: ChannelBinding,
    ) -> (Outcome, Result<(), String>) {
        let (mut server, client) = tokio::io::duplex(4096);
        let client = tokio::spawn(scram_client(password.to_owned(), binding, client));
        let outcome = authenticate_client(&mut server, AuthType::ScramSha256, "u", secret).await;
        drop(server);
        let client = client.await.unwrap_or_else(|e| Err(e.to_string()));
        (outcome, client)
    }

    #[tokio::test]
    async fn scram_server_accepts_the_right_password_only() {
        let secret = plain("secret");
        for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            let (outcome, client) = scram_login(Some(&secret), "secret", binding).await;
            let auth = outcome.unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(client, Ok(()), "the client checks the server's signature");
            // The ClientKey recovered is the password's.
            let Ok(Some(v)) = secret.scram_verifier() else { panic!("no verifier") };
            let keys = ScramKeys::from_password("secret", &v.salt, v.iterations);
            assert_eq!(auth.client_key, Some(keys.client_key));
        }
        let (outcome, client) = scram_login(Some(&secret), "wrong", ChannelBinding::unsupported()).await;
        assert_eq!(
            outcome.map(|_| ()),
            Err(AuthFailure::Refused("28P01", "password authentication failed for user \"u\"".into()))
        );
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn a_postgres_verifier_verifies() {
        let list = users(&format!("\"u\" \"{}\"", postgres_protocol::password::scram_sha_256(b"pw")));
        let (outcome, client) = scram_login(list.get("u"), "pw", ChannelBinding::unsupported()).await;
        let auth = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(client, Ok(()));
        let Some(Secret::Scram(v)) = list.get("u") else { panic!("not a verifier") };
        assert_eq!(auth.client_key.map(|k| sha256(&k)), Some(v.stored_key));
        let (outcome, _) = scram_login(list.get("u"), "pW", ChannelBinding::unsupported()).await;
        assert!(matches!(outcome, Err(AuthFailure::Refused("28P01", _))));
    }

    #[tokio::test]
    async fn unknown_users_and_md5_secrets_fail_only_at_the_end_of_scram() {
        // The whole exchange runs (the client gets to send its proof), then the same refusal as
        // a wrong password; the salt offered is the same on every attempt.
        let mut salts = Vec::new();
        for _ in 0..2 {
            let (mut server, mut client) = tokio::io::duplex(4096);
            let driver = tokio::spawn(async move {
                let mut scram = ScramSha256::new(b"pw", ChannelBinding::unsupported());
                let _ = next(&mut client).await;
                let mut body = b"SCRAM-SHA-256\0".to_vec();
                body.extend_from_slice(&i32::try_from(scram.message().len()).unwrap_or(0).to_be_bytes());
                body.extend_from_slice(scram.message());
                let _ = send(&mut client, &frame(b'p', &body)).await;
                let (_, server_first) = auth_code(&next(&mut client).await);
                let _ = scram.update(&server_first);
                let _ = send(&mut client, &frame(b'p', scram.message())).await;
                String::from_utf8_lossy(&server_first).split(",s=").nth(1).unwrap_or_default().to_owned()
            });
            let outcome = authenticate_client(&mut server, AuthType::ScramSha256, "nobody", None).await;
            assert_eq!(
                outcome.map(|_| ()),
                Err(AuthFailure::Refused(
                    "28P01",
                    "password authentication failed for user \"nobody\"".into()
                ))
            );
            salts.push(driver.await.unwrap_or_default());
        }
        assert_eq!(salts[0], salts[1]);
        assert!(!salts[0].is_empty());

        let md5 = Secret::Md5(md5_hex(&[b"pw", b"u"]));
        let (outcome, client) = scram_login(Some(&md5), "pw", ChannelBinding::unsupported()).await;
        match outcome {
            Err(AuthFailure::Refused("28P01", m)) => assert!(m.contains("md5"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(client.is_err());
    }

    /// `authenticate_client` with md5 against postgres-protocol's md5 answer for `password`.
    async fn md5_login(secret: Option<&Secret>, password: &'static str) -> Outcome {
        let (mut server, mut client) = tokio::io::duplex(4096);
        let driver = tokio::spawn(async move {
            let (code, salt) = auth_code(&next(&mut client).await);
            assert_eq!(code, AUTH_MD5);
            let salt: [u8; 4] = salt.try_into().unwrap_or_default();
            let answer = postgres_protocol::authentication::md5_hash(b"u", password.as_bytes(), salt);
            let _ = send(&mut client, &password_message(answer.as_bytes())).await;
            client
        });
        let outcome = authenticate_client(&mut server, AuthType::Md5, "u", secret).await;
        let _ = driver.await;
        outcome
    }

    #[tokio::test]
    async fn md5_server_accepts_the_right_password_only() {
        let stored = postgres_protocol::password::md5(b"secret", "u");
        let list = users(&format!("\"u\" \"secret\"\n\"v\" \"{stored}\""));
        let as_md5 = list.get("v");
        assert!(matches!(as_md5, Some(Secret::Md5(_))));
        for secret in [list.get("u"), as_md5] {
            let auth = md5_login(secret, "secret").await.unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(auth.client_key, None);
            assert_eq!(
                md5_login(secret, "wrong").await.map(|_| ()),
                Err(AuthFailure::Refused("28P01", "password authentication failed for user \"u\"".into()))
            );
        }
        assert_eq!(
            md5_login(None, "secret").await.map(|_| ()),
            Err(AuthFailure::Refused("28P01", "password authentication failed for user \"u\"".into()))
        );
        let scram = users(&format!("\"u\" \"{}\"", postgres_protocol::password::scram_sha_256(b"secret")));
        match md5_login(scram.get("u"), "secret").await {
            Err(AuthFailure::Refused("28P01", m)) => assert!(m.contains("SCRAM-SHA-256 verifier"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn trust_sends_nothing() {
        let (mut server, mut client) = tokio::io::duplex(64);
        let auth = authenticate_client(&mut server, AuthType::Trust, "u", None).await;
        assert!(matches!(auth, Ok(ClientAuth { client_key: None })));
        drop(server);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }

    /// `authenticate_client` reading `script` (written at once), the client end still open for
    /// the server's writes after the script ends.
    async fn scripted(auth: AuthType, script: &[u8]) -> Outcome {
        let (mut server, mut client) = tokio::io::duplex(64 * 1024);
        let _ = client.write_all(script).await;
        let _ = client.shutdown().await;
        let secret = plain("pw");
        authenticate_client(&mut server, auth, "u", Some(&secret)).await
    }

    fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&i32::try_from(data.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(data);
        frame(b'p', &body).to_vec()
    }

    fn refused(outcome: &Outcome) -> (&'static str, String) {
        match outcome {
            Err(AuthFailure::Refused(code, message)) => (code, message.clone()),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_clients_are_refused_without_panics() {
        use AuthType::{Md5, ScramSha256};
        let cases: Vec<(AuthType, Vec<u8>, &str)> = vec![
            (ScramSha256, b"Q\0\0\0\x05x".to_vec(), "expected SASL response, got message type 'Q'"),
            (ScramSha256, b"p\x7f\xff\xff\xff".to_vec(), "invalid SASL message length"),
            (ScramSha256, b"p\0\0\0\x03".to_vec(), "invalid SASL message length 3"),
            (
                Md5,
                [b"p\0\0\x27\x15".to_vec(), vec![b'a'; 10_000]].concat(),
                "invalid password message length 10005",
            ),
            (Md5, b"p\0\0\0\x07md5".to_vec(), "unterminated string"),
            (Md5, b"p\0\0\0\x09md5\0x".to_vec(), "invalid password packet size"),
            (ScramSha256, frame(b'p', b"SCRAM-SHA-256\0").to_vec(), "truncated"),
            (ScramSha256, frame(b'p', b"SCRAM-SHA-256\0\0\0\0\x09n,,").to_vec(), "truncated"),
            (
                ScramSha256,
                sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
                "invalid SASL authentication mechanism",
            ),
            (
                ScramSha256,
                sasl_initial("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
                "channel binding is not supported",
            ),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b""), "the message is empty"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"x,,n=,r=abc"), "channel-binding flag"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"n,a=bob,n=,r=abc"), "authorization identity"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc"), "unsupported SCRAM extension"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"n,,r=abc"), "attribute \"n\" expected"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"n,,n="), "attribute \"r\" expected"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"n,,n=,r="), "invalid nonce"),
            (ScramSha256, sasl_initial("SCRAM-SHA-256", b"n,,n=,r=\xff"), "not valid UTF-8"),
            (
                ScramSha256,
                [sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"), frame(b'p', b"c=biws,r=abc,p=AAAA").to_vec()]
                    .concat(),
                "nonce does not match",
            ),
            (
                ScramSha256,
                [sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"), frame(b'p', b"c=eSws,r=abc,p=AAAA").to_vec()]
                    .concat(),
                "channel binding check failed",
            ),
            (
                ScramSha256,
                [sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"), frame(b'p', b"c=biws,r=abc").to_vec()]
                    .concat(),
                "could not find proof",
            ),
            (
                ScramSha256,
                [sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"), frame(b'p', b"r=abc,p=AAAA").to_vec()]
                    .concat(),
                "attribute \"c\" expected",
            ),
            (
                ScramSha256,
                [sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"), frame(b'p', b"c=!!,r=abc,p=AAAA").to_vec()]
                    .concat(),
                "invalid channel-binding data",
            ),
        ];
        for (auth, script, expected) in cases {
            let outcome = scripted(auth, &script).await;
            let (code, message) = refused(&outcome);
            assert!(code == "08P01" || code == "0A000", "{script:?}: {code} {message}");
            assert!(message.contains(expected), "{script:?}: {message}");
        }
        // Closing mid-exchange (or Terminate): gone, nothing to send.
        for script in [&b""[..], &b"p\0\0"[..], &b"p\0\0\0\x10SCRAM"[..], &b"X\0\0\0\x04"[..]] {
            assert_eq!(scripted(ScramSha256, script).await.map(|_| ()), Err(AuthFailure::Gone), "{script:?}");
            assert_eq!(scripted(Md5, script).await.map(|_| ()), Err(AuthFailure::Gone), "{script:?}");
        }
        let (mut server, client) = tokio::io::duplex(64);
        drop(client);
        let secret = plain("pw");
        let outcome = authenticate_client(&mut server, ScramSha256, "u", Some(&secret)).await;
        assert_eq!(outcome.map(|_| ()), Err(AuthFailure::Gone));
    }

    #[tokio::test]
    async fn a_wrong_proof_with_the_right_nonce_is_a_wrong_password() {
        let (mut server, mut client) = tokio::io::duplex(4096);
        let driver = tokio::spawn(async move {
            let _ = next(&mut client).await;
            let _ = send(&mut client, &sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc")).await;
            let (_, server_first) = auth_code(&next(&mut client).await);
            let server_first = String::from_utf8_lossy(&server_first).into_owned();
            let nonce = server_first.split(',').next().unwrap_or_default();
            let last = format!("c=biws,{nonce},p={}", B64.encode([0u8; 32]));
            let _ = send(&mut client, &frame(b'p', last.as_bytes())).await;
        });
        let secret = plain("pw");
        let outcome = authenticate_client(&mut server, AuthType::ScramSha256, "u", Some(&secret)).await;
        assert_eq!(refused(&outcome).0, "28P01");
        let _ = driver.await;
    }

    fn startup(user: &str) -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0");
        body.extend_from_slice(user.as_bytes());
        body.extend_from_slice(b"\0\0");
        [u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes().to_vec(), body].concat()
    }

    /// Reads a startup message (checking it is the one sent) and returns the stream.
    async fn read_startup(s: &mut DuplexStream, expected: &[u8]) {
        let mut packet = vec![0u8; expected.len()];
        let _ = s.read_exact(&mut packet).await;
        assert_eq!(packet, expected);
    }

    /// What a PostgreSQL server sends after AuthenticationOk.
    async fn after_ok(s: &mut DuplexStream) {
        let mut out = auth_request(AUTH_OK, &[]).to_vec();
        out.extend_from_slice(&frame(b'S', b"server_version\x0016.4\0"));
        out.extend_from_slice(&frame(b'N', b"SNOTICE\0C00000\0Mhello\0\0"));
        out.extend_from_slice(&frame(b'S', b"client_encoding\0UTF8\0"));
        out.extend_from_slice(&frame(b'K', &[0, 0, 0, 42, 0, 0, 1, 0]));
        out.extend_from_slice(&frame(b'Z', b"I"));
        let _ = send(s, &out).await;
    }

    fn expected_login() -> UpstreamLogin {
        UpstreamLogin {
            parameters: vec![
                ("server_version".into(), "16.4".into()),
                ("client_encoding".into(), "UTF8".into()),
            ],
            backend_key: (42, 256),
        }
    }

    /// A fake PostgreSQL server whose authentication is `authenticate_client`.
    async fn fake_server(mut s: DuplexStream, auth: AuthType, secret: Option<Secret>) -> Outcome {
        read_startup(&mut s, &startup("u")).await;
        let outcome = authenticate_client(&mut s, auth, "u", secret.as_ref()).await;
        match &outcome {
            Ok(_) => after_ok(&mut s).await,
            Err(failure) => {
                if let Some((code, message)) = failure.to_client() {
                    let _ = send(&mut s, &error_response(Severity::Fatal, code, &message)).await;
                }
            }
        }
        outcome
    }

    /// `login_upstream` with `credential` against [`fake_server`].
    async fn login_against(
        auth: AuthType,
        secret: Option<Secret>,
        credential: &Credential,
    ) -> (Result<UpstreamLogin, LoginError>, Outcome) {
        let (mut proxy, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(fake_server(server, auth, secret));
        let login = login_upstream(&mut proxy, &startup("u"), "u", credential).await;
        drop(proxy);
        let outcome = server.await.unwrap_or(Err(AuthFailure::Gone));
        (login, outcome)
    }

    #[tokio::test]
    async fn login_upstream_with_a_password_md5_hash_or_nothing() {
        let password = Credential::Password("pw".into());
        let md5 = Credential::Md5(md5_hex(&[b"pw", b"u"]));
        for (auth, credential) in [
            (AuthType::Md5, &password),
            (AuthType::Md5, &md5),
            (AuthType::ScramSha256, &password),
            (AuthType::Trust, &password),
            (AuthType::Trust, &Credential::None),
        ] {
            let (login, server) = login_against(auth, Some(plain("pw")), credential).await;
            assert_eq!(login, Ok(expected_login()), "{auth} {credential:?}");
            assert!(server.is_ok(), "{auth} {credential:?}");
        }
        // The server refuses a wrong password: its SQLSTATE and message.
        for auth in [AuthType::Md5, AuthType::ScramSha256] {
            let (login, _) = login_against(auth, Some(plain("other")), &password).await;
            let e = login.map(|_| ()).unwrap_err();
            assert_eq!(
                (e.code(), e.to_string().as_str()),
                ("28P01", "password authentication failed for user \"u\"")
            );
        }
        // Credentials that cannot answer: refused before anything is sent.
        for (auth, credential) in [(AuthType::ScramSha256, &md5), (AuthType::Md5, &Credential::None)] {
            let (login, _) = login_against(auth, Some(plain("pw")), credential).await;
            let e = login.map(|_| ()).unwrap_err();
            assert_eq!(e.code(), "28P01");
            assert!(e.to_string().contains("auth_file"), "{e}");
        }
    }

    #[tokio::test]
    async fn login_upstream_with_a_cleartext_password() {
        let (mut proxy, mut server) = tokio::io::duplex(4096);
        let fake = tokio::spawn(async move {
            read_startup(&mut server, &startup("u")).await;
            let _ = send(&mut server, &auth_request(AUTH_CLEARTEXT, &[])).await;
            let (tag, body) = next(&mut server).await;
            assert_eq!((tag, body.as_slice()), (b'p', &b"pw\0"[..]));
            after_ok(&mut server).await;
        });
        let login = login_upstream(&mut proxy, &startup("u"), "u", &Credential::Password("pw".into())).await;
        assert_eq!(login, Ok(expected_login()));
        let _ = fake.await;
    }

    #[tokio::test]
    async fn scram_pass_through_needs_the_same_verifier() {
        let list = users(&format!("\"u\" \"{}\"", postgres_protocol::password::scram_sha_256(b"pw")));
        let (outcome, _) = scram_login(list.get("u"), "pw", ChannelBinding::unsupported()).await;
        let auth = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        let credential = Credential::from_auth(list.get("u"), &auth);
        assert!(matches!(credential, Credential::ScramKeys { .. }));

        let same = list.get("u").cloned();
        let (login, server) = login_against(AuthType::ScramSha256, same, &credential).await;
        assert_eq!(login, Ok(expected_login()));
        let server = server.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(server.client_key, auth.client_key);

        // The same password under another salt: the verifiers differ.
        let other = users(&format!("\"u\" \"{}\"", postgres_protocol::password::scram_sha_256(b"pw")));
        let (login, _) = login_against(AuthType::ScramSha256, other.get("u").cloned(), &credential).await;
        let e = login.map(|_| ()).unwrap_err();
        assert_eq!(e.code(), "28P01");
        assert!(e.to_string().contains("differs"), "{e}");

        // A pass-through credential cannot answer md5 or cleartext.
        let (login, _) = login_against(AuthType::Md5, Some(plain("pw")), &credential).await;
        assert!(login.is_err());
    }

    /// `login_upstream` against a server that sends `script` after reading the startup message
    /// (and whatever the proxy answers).
    async fn login_scripted(script: Vec<u8>, credential: &Credential) -> Result<UpstreamLogin, LoginError> {
        let (mut proxy, mut server) = tokio::io::duplex(64 * 1024);
        let fake = tokio::spawn(async move {
            read_startup(&mut server, &startup("u")).await;
            let _ = server.write_all(&script).await;
            let _ = server.shutdown().await;
            // Keep reading what the proxy answers until it gives up.
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let login = login_upstream(&mut proxy, &startup("u"), "u", credential).await;
        drop(proxy);
        let _ = fake.await;
        login
    }

    #[tokio::test]
    async fn login_upstream_reports_errors_and_never_panics() {
        let password = Credential::Password("pw".into());
        let ok = auth_request(AUTH_OK, &[]).to_vec();
        let error = error_response(Severity::Fatal, "3D000", "database \"x\" does not exist").to_vec();
        let login = login_scripted(error.clone(), &password).await;
        assert_eq!(login, Err(LoginError::new("3D000", "database \"x\" does not exist")));
        let login = login_scripted([ok.clone(), error].concat(), &password).await;
        assert_eq!(login.map(|_| ()).unwrap_err().code(), "3D000");
        // No BackendKeyData: (0, 0).
        let login = login_scripted([ok.clone(), frame(b'Z', b"I").to_vec()].concat(), &password).await;
        assert_eq!(login, Ok(UpstreamLogin::default()));

        let scram_offer = auth_request(AUTH_SASL, b"SCRAM-SHA-256\0\0").to_vec();
        for (script, code, expected) in [
            (Vec::new(), "08006", "closed"),
            (ok[..3].to_vec(), "08006", "closed"),
            (b"R\x7f\xff\xff\xff".to_vec(), "08P01", "invalid message length"),
            (b"R\0\0\0\x02".to_vec(), "08P01", "invalid message length"),
            (frame(b'R', b"\0\0").to_vec(), "08P01", "truncated"),
            (frame(b'Z', b"I").to_vec(), "08P01", "unexpected message type 'Z'"),
            ([ok.clone(), ok.clone()].concat(), "08P01", "unexpected message type 'R'"),
            ([ok.clone(), frame(b'S', b"a\0").to_vec()].concat(), "08P01", "unterminated"),
            ([ok.clone(), frame(b'K', b"\0\0\0\x01").to_vec()].concat(), "08P01", "BackendKeyData"),
            (auth_request(AUTH_MD5, b"ab").to_vec(), "08P01", "invalid MD5 request"),
            (auth_request(7, b"").to_vec(), "28000", "does not support"),
            (auth_request(AUTH_SASL, b"SCRAM-SHA-256-PLUS\0\0").to_vec(), "28000", "no SASL mechanism"),
            (auth_request(AUTH_SASL_CONTINUE, b"r=x").to_vec(), "08P01", "without a start"),
            (auth_request(AUTH_SASL_FINAL, b"v=x").to_vec(), "08P01", "without a start"),
            ([scram_offer.clone(), ok.clone()].concat(), "08P01", "without proving"),
            (
                [scram_offer.clone(), auth_request(AUTH_SASL_CONTINUE, b"r=zz,s=c2FsdA==,i=1").to_vec()]
                    .concat(),
                "08P01",
                "invalid nonce",
            ),
            (
                [scram_offer.clone(), auth_request(AUTH_SASL_CONTINUE, b"m=x").to_vec()].concat(),
                "08P01",
                "attribute \"r\"",
            ),
            (
                [scram_offer.clone(), auth_request(AUTH_SASL_FINAL, b"v=x").to_vec()].concat(),
                "08P01",
                "unexpected SASL final",
            ),
            ([scram_offer.clone(), scram_offer].concat(), "08P01", "second SASL request"),
        ] {
            let e = login_scripted(script.clone(), &password).await.map(|_| ()).unwrap_err();
            assert_eq!(e.code(), code, "{script:?}: {e}");
            assert!(e.to_string().contains(expected), "{script:?}: {e}");
        }
    }

    /// A scripted SCRAM server: it answers the proxy's first message with a server-first-message
    /// on the proxy's nonce (+ `xyz`, salt `salt`, 16 iterations), then its final message with
    /// `last` whatever the proof.
    async fn scram_against(credential: &Credential, last: Vec<u8>) -> Result<UpstreamLogin, LoginError> {
        let (mut proxy, mut server) = tokio::io::duplex(64 * 1024);
        let fake = tokio::spawn(async move {
            read_startup(&mut server, &startup("u")).await;
            let _ = send(&mut server, &auth_request(AUTH_SASL, b"SCRAM-SHA-256\0\0")).await;
            let (_, body) = next(&mut server).await;
            let first = String::from_utf8_lossy(&body[18..]).into_owned();
            let nonce = first.split("r=").nth(1).unwrap_or_default().to_owned();
            let server_first = format!("r={nonce}xyz,s=c2FsdA==,i=16");
            let _ = send(&mut server, &auth_request(AUTH_SASL_CONTINUE, server_first.as_bytes())).await;
            let _ = next(&mut server).await;
            let _ = send(&mut server, &last).await;
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let login = login_upstream(&mut proxy, &startup("u"), "u", credential).await;
        drop(proxy);
        let _ = fake.await;
        login
    }

    #[tokio::test]
    async fn login_upstream_checks_the_server_signature() {
        let password = Credential::Password("pw".into());
        let forged = [
            auth_request(AUTH_SASL_FINAL, format!("v={}", B64.encode([1u8; 32])).as_bytes()).to_vec(),
            auth_request(AUTH_OK, &[]).to_vec(),
        ]
        .concat();
        let e = scram_against(&password, forged).await.map(|_| ()).unwrap_err();
        assert_eq!(e.code(), "28000");
        assert!(e.to_string().contains("signature is wrong"), "{e}");

        let refusal = auth_request(AUTH_SASL_FINAL, b"e=invalid-proof").to_vec();
        let e = scram_against(&password, refusal).await.map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("invalid-proof"), "{e}");
    }

    #[test]
    fn scram_client_matches_rfc_7677() {
        // RFC 7677 section 3: user "user", password "pencil".
        let credential = Credential::Password("pencil".into());
        let client = ScramClient::new(&credential, "user", "rOprNGfwEbeRWgbNEkqO".into());
        let Some(mut client) = client else { panic!("no client") };
        let initial = client.initial_response();
        assert_eq!(&initial[5..], &b"SCRAM-SHA-256\0\0\0\0\x20n,,n=user,r=rOprNGfwEbeRWgbNEkqO"[..]);
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = client.respond(server_first, "user").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_ok());
        assert!(client.finished);
        assert!(client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_err(), "only once");
        // Names are escaped in the first message.
        let Some(client) = ScramClient::new(&credential, "a=b,c", "n".into()) else { panic!("no client") };
        assert_eq!(client.first_bare, "n=a=3Db=2Cc,r=n");
        assert!(ScramClient::new(&Credential::None, "", "n".into()).is_none());
        assert!(ScramClient::new(&Credential::Md5(String::new()), "", "n".into()).is_none());
    }
}
