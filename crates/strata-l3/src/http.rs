//! An embedder that calls an HTTP embedding API (OpenAI-compatible or Ollama) over HTTP/1.1 or HTTPS.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[cfg(feature = "https")]
use crate::tls::TlsClient;
use crate::{Embedder, Error, ErrorKind};

/// The most bytes read from one response; a larger answer is an error, not an allocation.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Which embedding API the endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmbeddingApi {
    /// `POST /v1/embeddings` with `{"model", "input": [..]}`, answering `{"data": [{"index", "embedding"}]}`.
    OpenAi,
    /// Ollama's `POST /api/embed` with `{"model", "input": [..]}`, answering `{"embeddings": [[..]]}`.
    Ollama,
}

/// Builds an [`HttpEmbedder`]; every setter documents its default.
pub struct HttpEmbedderBuilder {
    url: String,
    api: EmbeddingApi,
    model: String,
    dimension: usize,
    timeout: Duration,
    batch_size: usize,
    cache_entries: usize,
    api_key: Option<String>,
    #[cfg(feature = "https")]
    root_certificates_pem: Vec<Vec<u8>>,
}

impl fmt::Debug for HttpEmbedderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpEmbedderBuilder");
        d.field("url", &self.url)
            .field("api", &self.api)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
            .field("cache_entries", &self.cache_entries)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"));
        #[cfg(feature = "https")]
        d.field("root_certificates_pem", &self.root_certificates_pem.len());
        d.finish()
    }
}

impl HttpEmbedderBuilder {
    /// Timeout of one HTTP request, connect to last byte. Default: 2 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Most texts sent in one request. Default: 32.
    #[must_use]
    pub fn with_batch_size(mut self, texts: usize) -> Self {
        self.batch_size = texts;
        self
    }

    /// Embeddings kept by text (first in, first out), so a repeated question costs no request.
    /// `0` disables the cache. Default: 4096.
    #[must_use]
    pub fn with_cache_entries(mut self, entries: usize) -> Self {
        self.cache_entries = entries;
        self
    }

    /// A key sent as `Authorization: Bearer ...`. Default: none.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Also trusts the root certificate(s) in `pem` (one or more `-----BEGIN CERTIFICATE-----`
    /// blocks) for `https://` URLs, on top of the Mozilla roots (webpki-roots), so an endpoint
    /// behind a private CA verifies. May be called more than once. Checked in
    /// [`build`](Self::build): PEM without a certificate, or one that is not a usable trust
    /// anchor, is a [`Config`](ErrorKind::Config) error. Default: the Mozilla roots only.
    #[cfg(feature = "https")]
    #[must_use]
    pub fn with_root_certificate_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_certificates_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Checks the settings and builds the embedder.
    pub fn build(self) -> Result<HttpEmbedder, Error> {
        let target = Target::parse(&self.url)?;
        #[cfg(feature = "https")]
        let tls = match target.scheme {
            Scheme::Https => Some(TlsClient::new(target.connect_host(), &self.root_certificates_pem)?),
            Scheme::Http => {
                // Check the roots even when unused, so a bad file is found at startup.
                if !self.root_certificates_pem.is_empty() {
                    TlsClient::new("localhost", &self.root_certificates_pem)?;
                }
                None
            }
        };
        if self.timeout.is_zero() {
            return Err(Error::config("embedder timeout must be above zero"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("embedder batch size must be at least 1"));
        }
        if self.dimension == 0 {
            return Err(Error::config("embedder dimension must be at least 1"));
        }
        Ok(HttpEmbedder {
            target,
            #[cfg(feature = "https")]
            tls,
            api: self.api,
            model: self.model,
            dimension: self.dimension,
            timeout: self.timeout,
            batch_size: self.batch_size,
            api_key: self.api_key,
            cache: Mutex::new(TextCache::new(self.cache_entries)),
        })
    }
}

/// The scheme of the embedder URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// Where requests go: scheme, host, port and path of an `http://` or `https://` URL.
#[derive(Clone, Debug)]
struct Target {
    scheme: Scheme,
    /// As written in the URL: an IPv6 address keeps its brackets.
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            if cfg!(not(feature = "https")) {
                return Err(Error::config(
                    "https embedder urls need strata-l3's `https` feature, which this build does not have; use http:// (for example a local proxy)",
                ));
            }
            (Scheme::Https, rest)
        } else {
            return Err(Error::config(format!(
                "embedder url must start with http:// or https://, got {url:?}"
            )));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        // `[v6 address]:port`, `[v6 address]`, `host:port` or `host`.
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..]
                    .parse()
                    .map_err(|_| Error::config(format!("invalid port in embedder url {url:?}")))?;
                (&authority[..i], port)
            }
            _ => (authority, default_port),
        };
        if host.is_empty() || host == "[]" {
            return Err(Error::config(format!("embedder url has no host: {url:?}")));
        }
        if host.contains(['@', '[', ']']) && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(Error::config(format!("embedder url has an unsupported host: {url:?}")));
        }
        Ok(Self { scheme, host: host.to_owned(), port, path: path.to_owned() })
    }

    /// The host to connect to and to verify the certificate against: without IPv6 brackets.
    fn connect_host(&self) -> &str {
        self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&self.host)
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    fn host_header(&self) -> String {
        match (self.scheme, self.port) {
            (Scheme::Http, 80) | (Scheme::Https, 443) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A bounded first-in-first-out cache of embeddings by text.
struct TextCache {
    capacity: usize,
    map: HashMap<Arc<str>, Arc<[f32]>>,
    order: VecDeque<Arc<str>>,
}

impl TextCache {
    fn new(capacity: usize) -> Self {
        Self { capacity, map: HashMap::new(), order: VecDeque::new() }
    }

    fn get(&self, text: &str) -> Option<Arc<[f32]>> {
        self.map.get(text).cloned()
    }

    fn put(&mut self, text: &str, v: Arc<[f32]>) {
        if self.capacity == 0 || self.map.contains_key(text) {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        let key: Arc<str> = text.into();
        self.order.push_back(key.clone());
        self.map.insert(key, v);
    }
}

/// An embedder behind an HTTP API: OpenAI-compatible `/v1/embeddings` or Ollama `/api/embed`.
///
/// Requests are batched ([`HttpEmbedderBuilder::with_batch_size`]), bounded by a timeout
/// (connect, TLS handshake and answer together), and answered from a bounded cache of
/// embeddings by text when the same text comes again. `Debug` never prints the API key.
///
/// `https://` URLs (the `https` feature, on by default) use rustls with the ring provider: the
/// server's certificate must chain to a Mozilla root (webpki-roots, built in: no system files
/// are read) or to a root added with `HttpEmbedderBuilder::with_root_certificate_pem`, and
/// must be valid for the URL's host, which is also sent as SNI. A certificate that does not
/// verify is an error of kind [`ErrorKind::Tls`]; in a [`SemanticTier`](crate::SemanticTier)
/// that is a miss, like any embedder failure. Each request uses a new connection
/// (`Connection: close`); TLS 1.3 sessions are resumed across requests.
pub struct HttpEmbedder {
    target: Target,
    #[cfg(feature = "https")]
    tls: Option<TlsClient>,
    api: EmbeddingApi,
    model: String,
    dimension: usize,
    timeout: Duration,
    batch_size: usize,
    api_key: Option<String>,
    cache: Mutex<TextCache>,
}

impl fmt::Debug for HttpEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpEmbedder");
        d.field("scheme", &self.target.scheme)
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .field("path", &self.target.path)
            .field("api", &self.api)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"));
        #[cfg(feature = "https")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

impl HttpEmbedder {
    /// Starts a builder for `url` (e.g. `http://127.0.0.1:11434/api/embed` or
    /// `https://api.openai.com/v1/embeddings`), speaking `api`, asking for `model`, whose vectors
    /// have `dimension` numbers.
    pub fn builder(url: &str, api: EmbeddingApi, model: &str, dimension: usize) -> HttpEmbedderBuilder {
        HttpEmbedderBuilder {
            url: url.to_owned(),
            api,
            model: model.to_owned(),
            dimension,
            timeout: Duration::from_secs(2),
            batch_size: 32,
            cache_entries: 4096,
            api_key: None,
            #[cfg(feature = "https")]
            root_certificates_pem: Vec::new(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TextCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        let body = json!({ "model": self.model, "input": texts }).to_string();
        let call = self.post(body);
        let response = tokio::time::timeout(self.timeout, call).await.map_err(|_| {
            Error::new(ErrorKind::Timeout, format!("embedder did not answer within {:?}", self.timeout))
        })??;
        let value: Value = serde_json::from_slice(&response)
            .map_err(|e| Error::embedder("embedder answered invalid json").with_source(e))?;
        let vectors = match self.api {
            EmbeddingApi::OpenAi => parse_openai(&value, texts.len())?,
            EmbeddingApi::Ollama => parse_ollama(&value)?,
        };
        if vectors.len() != texts.len() {
            return Err(Error::embedder(format!(
                "embedder answered {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        if let Some(bad) = vectors.iter().find(|v| v.len() != self.dimension) {
            return Err(Error::embedder(format!(
                "embedder answered a vector of {} dimensions, expected {}",
                bad.len(),
                self.dimension
            )));
        }
        Ok(vectors)
    }

    /// One `POST` with `Connection: close`; returns the body of a 2xx answer.
    async fn post(&self, body: String) -> Result<Vec<u8>, Error> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.connect_host(), t.port))
            .await
            .map_err(|e| Error::embedder("embedder connection failed").with_source(e))?;
        // Head and body go out in one write (one segment, one TLS record when they fit).
        let _ = tcp.set_nodelay(true);
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            t.path,
            t.host_header(),
            body.len()
        );
        if let Some(key) = &self.api_key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        #[cfg(feature = "https")]
        if let Some(tls) = &self.tls {
            let mut stream = tls.connect(tcp).await?;
            return exchange(&mut stream, request.as_bytes()).await;
        }
        let mut tcp = tcp;
        exchange(&mut tcp, request.as_bytes()).await
    }
}

/// Sends `request` and reads the answer until it is complete by its own framing
/// (`Content-Length` or a final chunk) or the server closes; returns the body of a 2xx answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<Vec<u8>, Error> {
    let io = |e: std::io::Error| Error::embedder("embedder connection failed").with_source(e);
    stream.write_all(request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() > MAX_RESPONSE_BYTES {
                    return Err(Error::embedder("embedder answer is too large"));
                }
                if response_complete(&raw) {
                    break;
                }
            }
            // A TLS peer that closes without close_notify: only a self-delimited answer is
            // trusted, since the end of an unframed body could have been cut off.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Error::embedder(
                    "embedder closed the connection without close_notify before its answer was complete",
                )
                .with_source(e));
            }
            Err(e) => return Err(io(e)),
        }
    }
    parse_http_response(&raw)
}

/// The parts of an HTTP response head the embedder needs.
struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    body_start: usize,
}

/// Parses the head of `raw`; `None` while the head is incomplete.
fn parse_head(raw: &[u8]) -> Result<Option<Head>, Error> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| Error::embedder("embedder http header is not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::embedder("embedder answer has no http status"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            }
        }
    }
    Ok(Some(Head { status, chunked, length, body_start: split + 4 }))
}

/// Whether `raw` holds a whole answer by its framing (or an unparseable head: stop and report).
fn response_complete(raw: &[u8]) -> bool {
    match parse_head(raw) {
        Ok(None) => false,
        Err(_) => true,
        Ok(Some(head)) => {
            let body = &raw[head.body_start..];
            if head.chunked {
                // Only then can the last chunk be there; trailers make it wait for the close.
                body.ends_with(b"0\r\n\r\n") && dechunk(body).is_ok()
            } else {
                head.length.is_some_and(|n| body.len() >= n)
            }
        }
    }
}

fn parse_http_response(raw: &[u8]) -> Result<Vec<u8>, Error> {
    let head = parse_head(raw)?.ok_or_else(|| Error::embedder("embedder answer has no http header end"))?;
    if !(200..300).contains(&head.status) {
        return Err(Error::embedder(format!("embedder answered http status {}", head.status)));
    }
    let body = &raw[head.body_start..];
    if head.chunked {
        return dechunk(body);
    }
    match head.length {
        Some(n) if n <= body.len() => Ok(body[..n].to_vec()),
        Some(_) => Err(Error::embedder("embedder answer is shorter than its content-length")),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = || Error::embedder("embedder sent a malformed chunked body");
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn to_vector(value: &Value) -> Option<Vec<f32>> {
    value.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
}

fn parse_openai(value: &Value, expected: usize) -> Result<Vec<Vec<f32>>, Error> {
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::embedder("embedder answer has no data array"))?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected.max(data.len())];
    for (position, item) in data.iter().enumerate() {
        let index = item.get("index").and_then(Value::as_u64).map_or(position, |i| i as usize);
        let vector = item
            .get("embedding")
            .and_then(to_vector)
            .ok_or_else(|| Error::embedder("embedder answer has an entry without a numeric embedding"))?;
        match out.get_mut(index) {
            Some(slot) => *slot = Some(vector),
            None => return Err(Error::embedder("embedder answer has an index out of range")),
        }
    }
    out.into_iter().map(|v| v.ok_or_else(|| Error::embedder("embedder answer misses an index"))).collect()
}

fn parse_ollama(value: &Value) -> Result<Vec<Vec<f32>>, Error> {
    value
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::embedder("embedder answer has no embeddings array"))?
        .iter()
        .map(|v| to_vector(v).ok_or_else(|| Error::embedder("embedder answer has a non-numeric embedding")))
        .collect()
}

#[async_trait]
impl Embedder for HttpEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        let mut found: Vec<Option<Arc<[f32]>>> = {
            let cache = self.cache();
            texts.iter().map(|t| cache.get(t)).collect()
        };
        let mut missing: Vec<&str> =
            texts.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(t, _)| *t).collect();
        missing.sort_unstable();
        missing.dedup();
        let mut fetched: HashMap<&str, Arc<[f32]>> = HashMap::with_capacity(missing.len());
        for batch in missing.chunks(self.batch_size) {
            let vectors = self.request(batch).await?;
            let mut cache = self.cache();
            for (text, v) in batch.iter().zip(vectors) {
                let v: Arc<[f32]> = v.into();
                cache.put(text, v.clone());
                fetched.insert(text, v);
            }
        }
        texts
            .iter()
            .zip(found.iter_mut())
            .map(|(t, f)| {
                f.take()
                    .or_else(|| fetched.get(t).cloned())
                    .map(|v| v.to_vec())
                    .ok_or_else(|| Error::embedder("embedder lost a text"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn urls_are_parsed_with_their_default_ports_and_host_headers() {
        let t = target("http://127.0.0.1:11434/api/embed");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 11434, "/api/embed"));
        assert_eq!((t.scheme, t.host_header().as_str()), (Scheme::Http, "127.0.0.1:11434"));
        let t = target("http://embed.local");
        assert_eq!((t.port, t.path.as_str(), t.host_header().as_str()), (80, "/", "embed.local"));
        let t = target("http://[::1]:8080/api/embed");
        assert_eq!((t.connect_host(), t.port, t.host_header().as_str()), ("::1", 8080, "[::1]:8080"));
        let t = target("http://[::1]/x");
        assert_eq!((t.connect_host(), t.port), ("::1", 80));
        for bad in ["ftp://x", "http://x:notaport/", "http:///x", "http://[]:80/", "http://u@h/", "h:80"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "https")]
    #[test]
    fn https_urls_default_to_port_443() {
        let t = target("https://api.openai.com/v1/embeddings");
        assert_eq!((t.scheme, t.port, t.path.as_str()), (Scheme::Https, 443, "/v1/embeddings"));
        assert_eq!(t.host_header(), "api.openai.com");
        assert_eq!(target("https://h:8443/").host_header(), "h:8443");
    }

    #[cfg(not(feature = "https"))]
    #[test]
    fn https_urls_are_refused_clearly_without_the_feature() {
        let err = Target::parse("https://api.openai.com/v1/embeddings").err();
        assert!(err.is_some_and(|e| e.kind() == ErrorKind::Config && e.message().contains("`https` feature")));
    }

    #[test]
    fn answers_are_complete_by_their_framing() {
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxy"));
        assert!(response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\n\r\nxyz"), "unframed: read to the close");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n";
        assert!(!response_complete(chunked));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n0\r\n\r\n"));
        let done = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
        assert!(response_complete(done));
        assert!(response_complete(b"HTTP/1.1 \xff\r\n\r\n"), "an unparseable head stops the read");
    }

    #[test]
    fn chunked_and_sized_bodies_are_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(raw).ok().as_deref(), Some(&b"abcdef"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyzzz";
        assert_eq!(parse_http_response(raw).ok().as_deref(), Some(&b"xyz"[..]));
        let raw = b"HTTP/1.1 500 Internal\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_http_response(raw).is_err());
    }

    #[test]
    fn debug_hides_the_api_key() {
        let e = HttpEmbedder::builder("http://127.0.0.1:1/v1/embeddings", EmbeddingApi::OpenAi, "m", 8)
            .with_api_key("sk-secret")
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{e:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
