//! TLS on both legs and Unix sockets: psql (libpq, OpenSSL) and tokio-postgres (rustls, through
//! the connector below) with `sslmode=require` and `verify-full`, every upstream `sslmode`
//! against the harness PostgreSQL (`ssl = on`, its own CA), wrong and expired certificates,
//! PostgreSQL 17's direct TLS, plaintext injected after `S`, SCRAM with and without channel
//! binding, client certificates, a certificate reloaded by SIGHUP, and Unix sockets on both legs.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use strata_proxy::{ProxyBuilder, SslMode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::rustls::{crypto::ring, pki_types::ServerName, ClientConfig, RootCertStore};

use crate::sessions::password_roles;
use crate::support::{pg, start_proxy, startup_packet, TestProxy};

/// A certificate authority made for one test, and the files it signs into a scratch directory.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("strata-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ca = Self { issuer, dir };
        std::fs::write(ca.root(), ca.issuer.pem()).unwrap_or_else(|e| panic!("{e}"));
        ca
    }

    /// The CA's certificate file.
    fn root(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// A leaf for `names` (server, or client when `client`), written as `<file>.crt` and
    /// `<file>.key` (0600, as libpq demands of a client key); `expired` puts it in the past.
    fn leaf(&self, file: &str, names: &[&str], client: bool, expired: bool) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(if client { vec![] } else { names.clone() })
            .unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params.signed_by(&key, &self.issuer).unwrap_or_else(|e| panic!("{e}"));
        let (crt, pem_key) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&crt, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&pem_key, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pem_key, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        (crt, pem_key)
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The harness PostgreSQL's TLS files (`root.crt`, `server.crt`, `server.key`).
fn pg_tls(file: &str) -> PathBuf {
    let dir = std::env::var("STRATA_TEST_PG_TLS_DIR")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PG_TLS_DIR is unset: run `cargo xtask test`"));
    Path::new(&dir).join(file)
}

fn psql_bin() -> PathBuf {
    let bindir = std::env::var("STRATA_TEST_PG_BINDIR")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PG_BINDIR is unset: run `cargo xtask test`"));
    Path::new(&bindir).join("psql")
}

/// Runs `sql` with psql on a libpq connection string; stdout, or stderr as the error.
async fn psql(conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(psql_bin());
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]);
    cmd.env_remove("PGSSLMODE").env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("psql timed out on {conninfo}"))
        .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// What the upstream session's own server says about its connection's TLS.
const UPSTREAM_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

fn proxy_conninfo(proxy: &TestProxy, host: &str, extra: &str) -> String {
    format!("host={host} port={} user=postgres dbname=postgres connect_timeout=10 {extra}", proxy.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_require_and_verify_full_and_bad_certificates() {
    let ca = Ca::new("psql");
    let (crt, key) = ca.leaf("proxy", &["localhost", "127.0.0.1"], false, false);
    let (old_crt, old_key) = ca.leaf("expired", &["localhost", "127.0.0.1"], false, true);
    let other = Ca::new("psql-other");
    let proxy = start_proxy(|b| b.with_tls(&crt, &key)).await;
    let root = ca.root().display().to_string();

    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for mode in [
        "require",
        format!("verify-full sslrootcert={root}").as_str(),
        format!("verify-ca sslrootcert={root}").as_str(),
    ] {
        let info = proxy_conninfo(&proxy, "localhost", &format!("sslmode={mode}"));
        // The proxy terminates the client's TLS; what the server reports is the upstream leg
        // (prefer by default, and the harness server offers TLS).
        assert_eq!(psql(&info, None, ssl).await.as_deref(), Ok("t"), "{mode}");
        // \conninfo reports the client leg.
        let shown = psql(&info, None, "\\conninfo").await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(shown.contains("SSL connection"), "{mode}: {shown}");
    }
    // A client that verifies and trusts another CA is refused.
    let wrong = proxy_conninfo(
        &proxy,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", other.root().display()),
    );
    let err = psql(&wrong, None, "SELECT 1").await.expect_err("wrong CA must be refused");
    assert!(err.contains("certificate verify failed"), "{err}");
    // A name the certificate does not hold is refused by verify-full, accepted by verify-ca.
    let renamed = ca.leaf("renamed", &["db.example"], false, false);
    let named = start_proxy(|b| b.with_tls(&renamed.0, &renamed.1)).await;
    let err = psql(
        &proxy_conninfo(&named, "127.0.0.1", &format!("sslmode=verify-full sslrootcert={root}")),
        None,
        "SELECT 1",
    )
    .await
    .expect_err("wrong name must be refused");
    assert!(err.contains("does not match host name") || err.contains("server certificate"), "{err}");
    assert_eq!(
        psql(
            &proxy_conninfo(&named, "127.0.0.1", &format!("sslmode=verify-ca sslrootcert={root}")),
            None,
            "SELECT 1"
        )
        .await
        .as_deref(),
        Ok("1")
    );
    // An expired certificate is refused by a verifying client.
    let expired = start_proxy(|b| b.with_tls(&old_crt, &old_key)).await;
    let err = psql(
        &proxy_conninfo(&expired, "localhost", &format!("sslmode=verify-full sslrootcert={root}")),
        None,
        "SELECT 1",
    )
    .await
    .expect_err("expired certificate must be refused");
    // libpq names OpenSSL's error, not the reason; the leaf is from the trusted CA with the right
    // name, so its dates are what failed.
    assert!(err.contains("certificate verify failed"), "{err}");
    // Without TLS asked for, plain text still works (TLS not required).
    assert_eq!(
        psql(&proxy_conninfo(&proxy, "127.0.0.1", "sslmode=disable"), None, "SELECT 2").await.as_deref(),
        Ok("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_sslmode_against_a_tls_server() {
    let wrong = Ca::new("upstream-wrong");
    let pg_root = pg_tls("root.crt");
    let cases: Vec<(SslMode, Option<PathBuf>, Result<&str, &str>)> = vec![
        (SslMode::Disable, None, Ok("f")),
        (SslMode::Prefer, None, Ok("t")),
        (SslMode::Require, None, Ok("t")),
        (SslMode::VerifyCa, Some(pg_root.clone()), Ok("t")),
        (SslMode::VerifyFull, Some(pg_root.clone()), Ok("t")),
        (SslMode::VerifyCa, Some(wrong.root()), Err("UnknownIssuer")),
        (SslMode::VerifyFull, Some(wrong.root()), Err("UnknownIssuer")),
    ];
    for (mode, root, expected) in cases {
        let proxy = start_proxy(|b| {
            let b = b.with_upstream_sslmode(mode);
            match &root {
                Some(r) => b.with_upstream_sslrootcert(r),
                None => b,
            }
        })
        .await;
        let got = psql(&proxy_conninfo(&proxy, "127.0.0.1", "sslmode=disable"), None, UPSTREAM_SSL).await;
        match (expected, got) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{mode}"),
            (Err(why), Err(got)) => {
                assert!(got.contains("could not connect to upstream") && got.contains(why), "{mode}: {got}")
            }
            (want, got) => panic!("{mode}: expected {want:?}, got {got:?}"),
        }
        // Cancels take the same way (a TLS-only server refuses a plain one).
        if expected.is_ok() {
            let (client, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.port()),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
            tokio::spawn(conn);
            let token = client.cancel_token();
            let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
            let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
                .await
                .unwrap_or_else(|_| panic!("{mode}: the cancel did not reach the server"))
                .unwrap_or_else(|e| panic!("{e}"))
                .expect_err("cancelled");
            assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{mode}: {err}");
        }
    }
    // verify-ca checks the chain but not the name; verify-full both. The upstream here is another
    // proxy presenting a certificate from our CA for a name that is not the host dialled.
    let ca = Ca::new("upstream-name");
    let (crt, key) = ca.leaf("elsewhere", &["db.example"], false, false);
    let front = start_proxy(|b| b.with_tls(&crt, &key)).await;
    for (mode, works) in [(SslMode::VerifyCa, true), (SslMode::VerifyFull, false)] {
        let proxy = start_proxy(|b| {
            b.with_upstream(format!("postgres://127.0.0.1:{}", front.port()))
                .with_upstream_sslmode(mode)
                .with_upstream_sslrootcert(ca.root())
        })
        .await;
        let got = psql(&proxy_conninfo(&proxy, "127.0.0.1", "sslmode=disable"), None, "SELECT 5").await;
        if works {
            assert_eq!(got.as_deref(), Ok("5"), "{mode}");
        } else {
            let err = got.expect_err("verify-full must refuse another name");
            assert!(err.contains("certificate not valid for name"), "{mode}: {err}");
        }
    }
    // The verifying modes need a root to verify against.
    let err = ProxyBuilder::default()
        .with_upstream(format!("postgres://{}:{}", pg().host(), pg().port()))
        .with_upstream_sslmode(SslMode::VerifyFull)
        .build()
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("--upstream-sslrootcert")), "{err:?}");
}

/// tokio-postgres over rustls (strata's connector, which reports SCRAM's tls-server-end-point),
/// trusting the roots in one PEM file.
fn verifying(root: &Path) -> strata::MakeRustls {
    let pem = std::fs::read(root).unwrap_or_else(|e| panic!("{e}"));
    let mut roots = RootCertStore::empty();
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    strata::MakeRustls(Arc::new(config))
}

async fn tokio_pg(
    conninfo: &str,
    tls: strata::MakeRustls,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_with_require_and_verify_full() {
    let ca = Ca::new("tokio-pg");
    let (crt, key) = ca.leaf("proxy", &["localhost", "127.0.0.1"], false, false);
    let (old_crt, old_key) = ca.leaf("expired", &["localhost"], false, true);
    let other = Ca::new("tokio-pg-other");
    let proxy = start_proxy(|b| b.with_tls(&crt, &key).with_tls_required(true)).await;
    let info = |port: u16, mode: &str| {
        format!("host=localhost port={port} user=postgres dbname=postgres sslmode={mode}")
    };
    for mode in ["require", "prefer"] {
        let c = tokio_pg(&info(proxy.port(), mode), verifying(&ca.root()))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let n: i32 = c.query_one("SELECT $1::int + 1", &[&41]).await.unwrap_or_else(|e| panic!("{e}")).get(0);
        assert_eq!(n, 42);
    }
    // A cancel over TLS (SSLRequest, handshake, then the CancelRequest) reaches the backend.
    let c = tokio_pg(&info(proxy.port(), "require"), verifying(&ca.root()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(verifying(&ca.root())).await.unwrap_or_else(|e| panic!("cancel over TLS: {e}"));
    let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap_or_else(|_| panic!("the cancel sent over TLS did not reach the server"))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // A client trusting another CA fails the handshake.
    let err = tokio_pg(&info(proxy.port(), "require"), verifying(&other.root()))
        .await
        .err()
        .map(|e| format!("{e:?}"));
    assert!(err.as_deref().is_some_and(|e| e.contains("UnknownIssuer")), "{err:?}");
    // An expired certificate fails it too.
    let expired = start_proxy(|b| b.with_tls(&old_crt, &old_key)).await;
    let err = tokio_pg(&info(expired.port(), "require"), verifying(&ca.root()))
        .await
        .err()
        .map(|e| format!("{e:?}"));
    assert!(err.as_deref().is_some_and(|e| e.contains("Expired")), "{err:?}");
    // TLS required: a plain client is refused with PostgreSQL's own SQLSTATE for it.
    let err = tokio_postgres::connect(&info(proxy.port(), "disable"), tokio_postgres::NoTls).await.err();
    let code = err.as_ref().and_then(|e| e.code()).map(|c| c.code().to_owned());
    assert_eq!(code.as_deref(), Some("28000"), "{err:?}");
}

/// Reads what the server sends until it closes (bounded), as raw bytes.
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the proxy kept the connection open: {all:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_and_plaintext_after_s_is_never_read_as_protocol() {
    let ca = Ca::new("direct");
    let (crt, key) = ca.leaf("proxy", &["localhost"], false, false);
    let proxy = start_proxy(|b| b.with_tls(&crt, &key)).await;
    let client = |alpn: Option<&[u8]>| {
        let mut roots = RootCertStore::empty();
        use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
        let pem = std::fs::read(ca.root()).unwrap_or_else(|e| panic!("{e}"));
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };

    // PostgreSQL 17's direct TLS: a ClientHello first, ALPN postgresql, then the startup packet.
    let tcp = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap_or_else(|e| panic!("{e}"));
    let mut tls = client(Some(b"postgresql"))
        .connect(ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}")), tcp)
        .await
        .unwrap_or_else(|e| panic!("direct TLS handshake: {e}"));
    tls.write_all(&startup_packet("postgres", "postgres")).await.unwrap_or_else(|e| panic!("{e}"));
    tls.write_all(&[b'Q', 0, 0, 0, 14]).await.unwrap_or_else(|e| panic!("{e}"));
    tls.write_all(b"SELECT 42\0").await.unwrap_or_else(|e| panic!("{e}"));
    tls.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap_or_else(|e| panic!("{e}"));
    tls.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let answer = read_to_close(&mut tls).await;
    assert!(answer.windows(2).any(|w| w == b"42"), "no row in {answer:?}");
    assert!(answer.windows(9).any(|w| w == b"SELECT 1\0"), "no command tag in {answer:?}");

    // Direct TLS without ALPN: refused, as PostgreSQL refuses it.
    let tcp = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap_or_else(|e| panic!("{e}"));
    if let Ok(mut tls) =
        client(None).connect(ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}")), tcp).await
    {
        let _ = tls.write_all(&startup_packet("postgres", "postgres")).await;
        let _ = tls.flush().await;
        let answer = read_to_close(&mut tls).await;
        assert!(answer.is_empty(), "a direct connection without ALPN was served: {answer:?}");
    }

    // SSLRequest with a startup packet right behind it, in plain text: the proxy answers S and
    // hands the following bytes to the TLS handshake, which fails; no protocol answer follows.
    let mut raw = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend_from_slice(&startup_packet("postgres", "postgres"));
    raw.write_all(&bytes).await.unwrap_or_else(|e| panic!("{e}"));
    let answer = read_to_close(&mut raw).await;
    assert_eq!(answer.first(), Some(&b'S'), "{answer:?}");
    // What may follow is a TLS alert record (0x15), never an authentication message.
    assert!(answer.len() == 1 || answer[1] == 0x15, "plaintext after S was answered: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_works_end_to_end_or_is_refused_clearly() {
    password_roles().await;
    let user = "user=strata_scram dbname=postgres";
    let pw = Some("scram-secret");
    let pg_root = pg_tls("root.crt").display().to_string();

    // The proxy presents PostgreSQL's own certificate: tls-server-end-point is the same on both
    // legs, so channel binding holds end to end (libpq checks it with require).
    let same = start_proxy(|b| {
        b.with_tls(pg_tls("server.crt"), pg_tls("server.key")).with_upstream_sslmode(SslMode::Require)
    })
    .await;
    for cb in ["require", "prefer", "disable"] {
        let info = proxy_conninfo(
            &same,
            "localhost",
            &format!("{user} sslmode=verify-full sslrootcert={pg_root} channel_binding={cb}"),
        )
        .replace("user=postgres dbname=postgres ", "");
        assert_eq!(
            psql(&info, pw, "SELECT current_user").await.as_deref(),
            Ok("strata_scram"),
            "same certificate, channel_binding={cb}"
        );
    }
    // tokio-postgres binds too (it uses SCRAM-SHA-256-PLUS when the server offers it).
    let c = tokio_pg(
        &format!(
            "host=localhost port={} {user} password=scram-secret sslmode=require channel_binding=require",
            same.port()
        ),
        verifying(&pg_tls("root.crt")),
    )
    .await
    .unwrap_or_else(|e| panic!("tokio-postgres with channel binding: {e}"));
    let n: i64 = c.query_one("SELECT 7::int8", &[]).await.unwrap_or_else(|e| panic!("{e}")).get(0);
    assert_eq!(n, 7);

    // Another certificate, TLS upstream: a client asking for binding is refused with a message
    // saying what to change; without binding it passes.
    let ca = Ca::new("scram");
    let (crt, key) = ca.leaf("proxy", &["localhost"], false, false);
    let other = start_proxy(|b| b.with_tls(&crt, &key).with_upstream_sslmode(SslMode::Require)).await;
    for cb in ["require", "prefer"] {
        let info =
            format!("host=localhost port={} {user} sslmode=require channel_binding={cb}", other.port());
        let err = psql(&info, pw, "SELECT 1").await.expect_err("binding cannot hold: refused");
        assert!(err.contains("cannot relay SCRAM channel binding"), "channel_binding={cb}: {err}");
    }
    let info = format!("host=localhost port={} {user} sslmode=require channel_binding=disable", other.port());
    assert_eq!(psql(&info, pw, "SELECT current_user").await.as_deref(), Ok("strata_scram"));
    // Plain text from the client, TLS upstream: no binding asked, it works.
    let info = format!("host=127.0.0.1 port={} {user} sslmode=disable", other.port());
    assert_eq!(psql(&info, pw, "SELECT current_user").await.as_deref(), Ok("strata_scram"));

    // Plain upstream: PostgreSQL offers no binding, so a TLS client's prefer goes without it and
    // require is refused by libpq itself; never a silent downgrade.
    let plain = start_proxy(|b| b.with_tls(&crt, &key).with_upstream_sslmode(SslMode::Disable)).await;
    let info = |cb: &str| {
        format!("host=localhost port={} {user} sslmode=require channel_binding={cb}", plain.port())
    };
    assert_eq!(psql(&info("prefer"), pw, "SELECT current_user").await.as_deref(), Ok("strata_scram"));
    let err = psql(&info("require"), pw, "SELECT 1").await.expect_err("require without binding must fail");
    assert!(err.contains("channel binding"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_when_a_client_ca_is_set() {
    let ca = Ca::new("mtls");
    let (crt, key) = ca.leaf("proxy", &["localhost"], false, false);
    let (client_crt, client_key) = ca.leaf("client", &["postgres"], true, false);
    let stranger = Ca::new("mtls-stranger");
    let (bad_crt, bad_key) = stranger.leaf("client", &["postgres"], true, false);
    let proxy = start_proxy(|b| b.with_tls(&crt, &key).with_tls_client_ca(ca.root())).await;
    let base = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        proxy.port(),
        ca.root().display()
    );
    let with = format!("{base} sslcert={} sslkey={}", client_crt.display(), client_key.display());
    assert_eq!(psql(&with, None, "SELECT 3").await.as_deref(), Ok("3"));
    let none = format!("{base} sslcert=/nonexistent sslkey=/nonexistent");
    assert!(psql(&none, None, "SELECT 3").await.is_err(), "no client certificate must be refused");
    let bad = format!("{base} sslcert={} sslkey={}", bad_crt.display(), bad_key.display());
    assert!(psql(&bad, None, "SELECT 3").await.is_err(), "a certificate from another CA must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_on_both_legs() {
    let pg_dir = std::env::var("STRATA_TEST_PG_SOCKET_DIR")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PG_SOCKET_DIR is unset: run `cargo xtask test`"));
    let listen_dir = std::env::temp_dir().join(format!("strata-unix-{}", std::process::id()));
    std::fs::create_dir_all(&listen_dir).unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::new("unix");
    let (crt, key) = ca.leaf("proxy", &["localhost"], false, false);
    let proxy = start_proxy(|b| {
        b.with_upstream(format!("postgresql:///postgres?host={pg_dir}&port={}", pg().port()))
            .with_unix_socket_dir(&listen_dir)
            .with_tls(&crt, &key)
            .with_tls_required(true)
    })
    .await;
    let socket = listen_dir.join(format!(".s.PGSQL.{}", proxy.port()));
    assert!(socket.exists(), "no socket at {}", socket.display());
    // psql -h DIR -p PORT: a Unix socket client need not use TLS even when TCP clients must.
    let info = format!("host={} port={} user=postgres dbname=postgres", listen_dir.display(), proxy.port());
    // inet_server_addr() is NULL on a Unix socket connection: the upstream leg is one too.
    let got = psql(&info, None, "SELECT coalesce(inet_server_addr()::text, 'unix') || ' ' || 6 * 7").await;
    assert_eq!(got.as_deref(), Ok("unix 42"));
    // The same proxy over TCP (TLS required here) reaches the same server.
    let tcp = proxy_conninfo(&proxy, "localhost", "sslmode=require");
    assert_eq!(
        psql(&tcp, None, "SELECT coalesce(inet_server_addr()::text, 'unix')").await.as_deref(),
        Ok("unix")
    );
    let refused = psql(&proxy_conninfo(&proxy, "127.0.0.1", "sslmode=disable"), None, "SELECT 1").await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("requires TLS")), "{refused:?}");
    proxy.shutdown.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), proxy.task).await;
    assert!(!socket.exists(), "the socket file outlived the proxy");
    let _ = std::fs::remove_dir_all(&listen_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_a_restart() {
    let ca = Ca::new("reload");
    let (crt, key) = ca.leaf("first", &["localhost"], false, false);
    let binary = env!("CARGO_BIN_EXE_strata-proxy");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
    };
    let mut child = tokio::process::Command::new(binary)
        .args(["--upstream", &format!("postgres://{}:{}", pg().host(), pg().port())])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--http", "off", "--cache", "off"])
        .arg("--tls-cert")
        .arg(&crt)
        .arg("--tls-key")
        .arg(&key)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let verified_query = || async {
        let info = format!(
            "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.root().display()
        );
        psql(&info, None, "SELECT 1").await.map(|_| ())
    };
    let leaf_der = || async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut tcp = tcp;
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.ok()?;
        let mut s = [0u8; 1];
        tcp.read_exact(&mut s).await.ok()?;
        let tls = verifying(&ca.root());
        let name = ServerName::try_from("localhost").ok()?;
        let stream = tokio_rustls::TlsConnector::from(tls.0).connect(name, tcp).await.ok()?;
        stream.get_ref().1.peer_certificates()?.first().map(|c| c.as_ref().to_vec())
    };
    let mut first = None;
    for _ in 0..100 {
        if let Some(der) = leaf_der().await {
            first = Some(der);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.unwrap_or_else(|| panic!("the proxy binary did not come up with TLS"));
    verified_query().await.unwrap_or_else(|e| panic!("{e}"));
    // New files in place, then SIGHUP: new handshakes get the new certificate.
    let (next_crt, next_key) = ca.leaf("second", &["localhost"], false, false);
    std::fs::copy(&next_crt, &crt).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&next_key, &key).unwrap_or_else(|e| panic!("{e}"));
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let mut reloaded = false;
    for _ in 0..100 {
        if leaf_der().await.is_some_and(|der| der != first) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the certificate");
    verified_query().await.unwrap_or_else(|e| panic!("after reload: {e}"));
    // A broken file on reload keeps the certificate in force.
    std::fs::write(&crt, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    verified_query().await.unwrap_or_else(|e| panic!("after a failed reload: {e}"));
    assert!(child.try_wait().unwrap_or_else(|e| panic!("{e}")).is_none(), "SIGHUP ended the proxy");
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_reader_follows_the_upstream_sslmode_to_a_server_that_requires_tls() {
    // `strata_tls_only` may log in over TLS only (the harness's pg_hba), as on a managed server.
    crate::support::admin("postgres")
        .await
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_tls_only') THEN
                 CREATE ROLE strata_tls_only LOGIN;
               END IF;
             END $$;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let read = |mode: &'static str| {
        let args = strata_proxy::Args {
            upstream: Some(format!("postgres://{}:{}", pg().host(), pg().port())),
            catalog_user: Some("strata_tls_only".to_owned()),
            catalog_databases: Some(vec!["postgres".to_owned()]),
            upstream_sslmode: Some(mode.to_owned()),
            upstream_sslrootcert: Some(pg_tls("root.crt")),
            ..strata_proxy::Args::default()
        };
        async move {
            let invalidation = args.invalidation().unwrap_or_else(|e| panic!("{mode}: {e}"));
            let settings = strata_proxy::CacheSettings::default();
            let query_cache =
                strata_proxy::build_query_cache(&settings).await.unwrap_or_else(|e| panic!("{e}"));
            let cache = strata_proxy::StrataCache::builder(query_cache)
                .with_invalidation(invalidation)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            cache.wait_for_catalog(Duration::from_secs(5)).await
        }
    };
    for mode in ["prefer", "require", "verify-full"] {
        assert!(read(mode).await, "the catalog was not read over TLS with upstream sslmode {mode}");
    }
    assert!(!read("disable").await, "a plain catalog connection got past a TLS-only rule");

    // SCRAM over TLS: the server offers SCRAM-SHA-256-PLUS, and the catalog connection binds to
    // the server's certificate (a wrong or missing tls-server-end-point fails the login).
    password_roles().await;
    let config = strata_proxy::CatalogConfig::builder()
        .with_upstream(pg().host(), pg().port())
        .with_user("strata_scram")
        .with_password("scram-secret")
        .with_database("postgres")
        .with_tls(strata::PgTls::new(verifying(&pg_tls("root.crt")).0, true))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let query_cache = strata_proxy::build_query_cache(&strata_proxy::CacheSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = strata_proxy::StrataCache::builder(query_cache)
        .with_invalidation(strata_proxy::Invalidation::Catalog(config))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cache.wait_for_catalog(Duration::from_secs(5)).await,
        "the catalog was not read with SCRAM and channel binding over TLS"
    );
}
