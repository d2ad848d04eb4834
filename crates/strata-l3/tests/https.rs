//! The HTTP embedder over real TLS on 127.0.0.1: a test CA and server certificates made with
//! rcgen, a tokio-rustls server answering the OpenAI and Ollama request shapes, and the client's
//! certificate and hostname verification, as an embedder and inside a tier.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use strata_core::{
    CacheKey, CachedResult, Clock, KeyScope, ManualClock, PutOutcome, Rejection, SettingsDigest,
};
use strata_l3::{
    Embedder, EmbeddingApi, ErrorKind, HttpEmbedder, HttpEmbedderBuilder, Indexing, LocalEmbedder,
    SemanticRequest, SemanticTier,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

const DIM: usize = 128;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"))
}

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        Self { issuer: CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("{e}")) }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server configuration presenting a certificate for `names` (DNS names or IP addresses)
    /// signed by this CA.
    fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params.signed_by(&key, &self.issuer).unwrap_or_else(|e| panic!("{e}"));
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert.der().clone()], key))
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(config)
    }
}

/// What a test https server saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted (handshake or not).
    connections: AtomicUsize,
    /// Requests answered after a completed handshake.
    requests: AtomicUsize,
    /// Handshakes that failed (the client refused the certificate).
    refused: AtomicUsize,
    /// The SNI name of each completed handshake.
    sni: Mutex<Vec<Option<String>>>,
}

struct TlsServer {
    port: u16,
    seen: Arc<Seen>,
}

impl TlsServer {
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }
}

/// An https server on 127.0.0.1 on its own thread. `plan(n)` gives the certificate for
/// connection `n`, or `None` to accept the TCP connection and never answer the handshake.
/// `/v1/embeddings` answers as OpenAI (sized body, then close_notify); `/api/embed` answers as
/// Ollama with a chunked body and closes *without* close_notify, so the client has to rely on
/// the answer's framing. Vectors are [`LocalEmbedder`]'s of [`DIM`] dimensions.
fn serve(plan: impl Fn(usize) -> Option<Arc<ServerConfig>> + Send + 'static) -> TlsServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let seen = Arc::new(Seen::default());
    let server_seen = seen.clone();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
            let mut parked = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let n = server_seen.connections.fetch_add(1, Ordering::SeqCst);
                let Some(config) = plan(n) else {
                    parked.push(tcp);
                    continue;
                };
                let seen = server_seen.clone();
                tokio::spawn(async move {
                    match TlsAcceptor::from(config).accept(tcp).await {
                        Ok(tls) => answer(tls, &seen).await,
                        Err(_) => {
                            seen.refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
    });
    TlsServer { port, seen }
}

async fn answer(mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, seen: &Seen) {
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    seen.sni.lock().unwrap_or_else(|e| e.into_inner()).push(sni);
    let Some((head, body)) = read_request(&mut tls).await else { return };
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let texts: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("input").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let local = LocalEmbedder::new(DIM).unwrap_or_else(|e| panic!("{e}"));
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| local.embed_one(t)).collect();
    if head.starts_with("POST /v1/embeddings ") {
        let data: Vec<_> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        let json = serde_json::json!({"object": "list", "data": data}).to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        let _ = tls.write_all(reply.as_bytes()).await;
        let _ = tls.shutdown().await;
    } else if head.starts_with("POST /api/embed ") {
        let json = serde_json::json!({"model": "m", "embeddings": vectors}).to_string();
        let (a, b) = json.split_at(json.len() / 2);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let _ = tls.write_all(reply.as_bytes()).await;
        let _ = tls.flush().await;
        // Keep the connection open: the client must stop at the last chunk, not wait for a close.
        tokio::time::sleep(Duration::from_secs(30)).await;
    } else {
        let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        let _ = tls.shutdown().await;
    }
}

/// Reads one request: its head (as text) and its body (by `Content-Length`).
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}

fn build(builder: HttpEmbedderBuilder) -> HttpEmbedder {
    builder.build().unwrap_or_else(|e| panic!("{e}"))
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("orders placed in week {i} by region")).collect()
}

fn scope() -> KeyScope {
    KeyScope::new("shop", "analyst", SettingsDigest::default())
}

fn result(clock: &ManualClock) -> CachedResult {
    CachedResult::builder(Bytes::from_static(b"42"))
        .with_created_at(clock.now())
        .with_ttl(Duration::from_secs(60))
        .build()
}

#[test]
fn with_the_ca_as_a_root_both_apis_work_over_https_with_batching_and_the_cache() {
    let ca = Ca::new("Strata test CA");
    let config = ca.server(&["localhost", "127.0.0.1"]);
    let server = serve(move |_| Some(config.clone()));
    let local = LocalEmbedder::new(DIM).unwrap_or_else(|e| panic!("{e}"));
    let openai = build(
        HttpEmbedder::builder(&server.url("localhost", "/v1/embeddings"), EmbeddingApi::OpenAi, "m", DIM)
            .with_root_certificate_pem(ca.pem())
            .with_batch_size(32),
    );
    let texts = texts(70);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    rt().block_on(async {
        let vectors = openai.embed(&refs).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vectors.len(), 70);
        for i in [0, 31, 32, 69] {
            assert_eq!(vectors[i], local.embed_one(&texts[i]), "text {i} came back in input order");
        }
        assert_eq!(server.seen.requests.load(Ordering::SeqCst), 3, "70 texts in batches of 32");
        let again = openai.embed(&refs[..10]).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again[3], vectors[3]);
        assert_eq!(server.seen.requests.load(Ordering::SeqCst), 3, "cached texts cost no request");
    });
    // The certificate names 127.0.0.1 too: an IP-address URL verifies against the IP SAN.
    let ollama = build(
        HttpEmbedder::builder(&server.url("127.0.0.1", "/api/embed"), EmbeddingApi::Ollama, "m", DIM)
            .with_root_certificate_pem(ca.pem()),
    );
    rt().block_on(async {
        let started = Instant::now();
        let vectors = ollama.embed(&["a", "b"]).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vectors, vec![local.embed_one("a"), local.embed_one("b")]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the chunked answer ended the read; the open connection was not waited on"
        );
    });
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 4);
    assert_eq!(server.seen.refused.load(Ordering::SeqCst), 0);
    let sni = server.seen.sni.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        sni,
        vec![Some("localhost".to_owned()), Some("localhost".to_owned()), Some("localhost".to_owned()), None],
        "SNI is the URL's host name (and never an IP address)"
    );

    // The same embedder behind a tier: a reworded question hits over https.
    let clock = Arc::new(ManualClock::fixed());
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(Arc::new(openai))
        .with_embed_deadline(Duration::from_secs(5))
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let s = scope();
    rt().block_on(async {
        let asked = SemanticRequest::new(&s, "How many orders did Alice place?");
        let key = CacheKey::builder(&s, b"SELECT count(*) FROM orders WHERE customer = 'Alice'").build();
        assert_eq!(tier.insert(&asked, key.clone(), result(&clock)).await, PutOutcome::Stored);
        let again = SemanticRequest::new(&s, "number of orders placed by Alice");
        let hit = tier.lookup(&again).await.unwrap_or_else(|| panic!("a reworded question hits over https"));
        assert_eq!(hit.key(), &key);
        assert_eq!(tier.semantic_stats().embedder_failures, 0);
    });
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 6);
}

#[test]
fn without_the_root_the_certificate_is_refused_and_the_tier_misses_within_its_deadline() {
    let ca = Ca::new("Strata private CA");
    let config = ca.server(&["localhost"]);
    let server = serve(move |_| Some(config.clone()));
    let url = server.url("localhost", "/v1/embeddings");
    // Only the Mozilla roots: the private CA is unknown.
    let embedder = build(HttpEmbedder::builder(&url, EmbeddingApi::OpenAi, "m", DIM));
    rt().block_on(async {
        let err = embedder.embed(&["orders per region"]).await.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
        assert!(err.message().contains("did not verify") && err.message().contains("UnknownIssuer"), "{err}");
    });
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 0, "no request went out");

    // In a tier: the insert is refused and the lookup is a miss, long before the deadline.
    let clock = Arc::new(ManualClock::fixed());
    let deadline = Duration::from_millis(1500);
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(Arc::new(embedder))
        .with_embed_deadline(deadline)
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let s = scope();
    rt().block_on(async {
        let asked = SemanticRequest::new(&s, "orders per day");
        let key = CacheKey::builder(&s, b"q").build();
        assert_eq!(tier.insert(&asked, key, result(&clock)).await, PutOutcome::Rejected(Rejection::Degraded));
    });

    // A server whose certificate is replaced by one from a CA the client does not trust: the
    // first connection (the insert) verifies, the next (the lookup) does not.
    let trusted = ca.server(&["localhost"]);
    let rogue = Ca::new("Unknown CA").server(&["localhost"]);
    let server = serve(move |n| Some(if n == 0 { trusted.clone() } else { rogue.clone() }));
    let embedder = build(
        HttpEmbedder::builder(&server.url("localhost", "/v1/embeddings"), EmbeddingApi::OpenAi, "m", DIM)
            .with_root_certificate_pem(ca.pem())
            .with_timeout(Duration::from_secs(30)),
    );
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(Arc::new(embedder))
        .with_embed_deadline(deadline)
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        let asked = SemanticRequest::new(&s, "How many orders did Alice place?");
        let key = CacheKey::builder(&s, b"q").build();
        assert_eq!(tier.insert(&asked, key, result(&clock)).await, PutOutcome::Stored);
        let started = Instant::now();
        let again = SemanticRequest::new(&s, "number of orders placed by Alice");
        assert!(tier.lookup(&again).await.is_none(), "a certificate that does not verify is a miss");
        let took = started.elapsed();
        assert!(took < deadline, "{took:?}");
        let stats = tier.semantic_stats();
        assert_eq!((stats.embedder_failures, stats.embedder_timeouts), (1, 0));
    });
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 1, "only the insert was answered");

    // A server that takes the connection and never finishes the handshake: the tier's deadline
    // ends the wait (the embedder's own timeout is 30 s).
    let server = serve(|_| None);
    let embedder = build(
        HttpEmbedder::builder(&server.url("localhost", "/v1/embeddings"), EmbeddingApi::OpenAi, "m", DIM)
            .with_root_certificate_pem(ca.pem())
            .with_timeout(Duration::from_secs(30)),
    );
    let deadline = Duration::from_millis(300);
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(Arc::new(embedder))
        .with_embed_deadline(deadline)
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        let started = Instant::now();
        let asked = SemanticRequest::new(&s, "orders per day");
        let key = CacheKey::builder(&s, b"q").build();
        assert_eq!(tier.insert(&asked, key, result(&clock)).await, PutOutcome::Rejected(Rejection::Degraded));
        let took = started.elapsed();
        assert!(took >= deadline && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(tier.semantic_stats().embedder_timeouts, 1);
    });
}

#[test]
fn a_certificate_for_another_name_fails_hostname_verification() {
    let ca = Ca::new("Strata test CA");
    let other = ca.server(&["other.example"]);
    let server = serve(move |_| Some(other.clone()));
    let right = ca.server(&["localhost"]);
    let control = serve(move |_| Some(right.clone()));
    rt().block_on(async {
        for host in ["localhost", "127.0.0.1"] {
            let embedder = build(
                HttpEmbedder::builder(&server.url(host, "/api/embed"), EmbeddingApi::Ollama, "m", DIM)
                    .with_root_certificate_pem(ca.pem()),
            );
            let err = embedder.embed(&["a"]).await.err().unwrap_or_else(|| panic!("{host}: must fail"));
            assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
            assert!(
                err.message().contains("not valid for name") && err.message().contains("other.example"),
                "{err}"
            );
        }
        // Same CA, same roots, the right name: it verifies.
        let embedder = build(
            HttpEmbedder::builder(&control.url("localhost", "/api/embed"), EmbeddingApi::Ollama, "m", DIM)
                .with_root_certificate_pem(ca.pem()),
        );
        assert!(embedder.embed(&["a"]).await.is_ok());
    });
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(control.seen.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn root_certificates_and_hosts_are_checked_when_building() {
    let url = "https://localhost:1/v1/embeddings";
    let builder = || HttpEmbedder::builder(url, EmbeddingApi::OpenAi, "m", DIM);
    let config_error = |b: HttpEmbedderBuilder| b.build().err().map(|e| (e.kind(), e.message().to_owned()));

    let err = config_error(builder().with_root_certificate_pem("not a certificate"));
    assert!(matches!(&err, Some((ErrorKind::Config, m)) if m.contains("no CERTIFICATE")), "{err:?}");
    let key_only = KeyPair::generate().unwrap_or_else(|e| panic!("{e}")).serialize_pem();
    let err = config_error(builder().with_root_certificate_pem(key_only));
    assert!(matches!(&err, Some((ErrorKind::Config, m)) if m.contains("no CERTIFICATE")), "{err:?}");
    let broken = "-----BEGIN CERTIFICATE-----\nMIIB!!!\n-----END CERTIFICATE-----\n";
    let err = config_error(builder().with_root_certificate_pem(broken));
    assert!(matches!(err, Some((ErrorKind::Config, _))), "{err:?}");
    let garbage_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = config_error(builder().with_root_certificate_pem(garbage_der));
    assert!(matches!(&err, Some((ErrorKind::Config, m)) if m.contains("trust anchor")), "{err:?}");
    // A bad root is found at startup even for an http:// URL.
    let err = config_error(
        HttpEmbedder::builder("http://127.0.0.1:1/", EmbeddingApi::Ollama, "m", DIM)
            .with_root_certificate_pem("nope"),
    );
    assert!(matches!(err, Some((ErrorKind::Config, _))), "{err:?}");
    let err = config_error(HttpEmbedder::builder("https://bad host/", EmbeddingApi::OpenAi, "m", DIM));
    assert!(matches!(&err, Some((ErrorKind::Config, m)) if m.contains("tls server name")), "{err:?}");

    // Two CAs in one PEM text, or added one by one: both are accepted.
    let (a, b) = (Ca::new("A"), Ca::new("B"));
    assert!(builder().with_root_certificate_pem(format!("{}{}", a.pem(), b.pem())).build().is_ok());
    let both = builder().with_root_certificate_pem(a.pem()).with_root_certificate_pem(b.pem());
    let shown = format!("{both:?}");
    assert!(shown.contains("root_certificates_pem: 2") && !shown.contains("BEGIN"), "{shown}");
    let built = both.build().unwrap_or_else(|e| panic!("{e}"));
    assert!(format!("{built:?}").contains("extra_roots: 2"), "{built:?}");
}
