//! An embedder that calls an HTTP embedding API (OpenAI-compatible or Ollama) over plain HTTP/1.1.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
}

impl fmt::Debug for HttpEmbedderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmbedderBuilder")
            .field("url", &self.url)
            .field("api", &self.api)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
            .field("cache_entries", &self.cache_entries)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
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

    /// Checks the settings and builds the embedder.
    pub fn build(self) -> Result<HttpEmbedder, Error> {
        let target = Target::parse(&self.url)?;
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

/// Where requests go: host, port and path of an `http://` URL.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        if url.starts_with("https://") {
            return Err(Error::config(
                "https embedder urls are not supported by this build; use http:// (for example a local proxy)",
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| Error::config(format!("embedder url must start with http://, got {url:?}")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port =
                    p.parse().map_err(|_| Error::config(format!("invalid port in embedder url {url:?}")))?;
                (h, port)
            }
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(Error::config(format!("embedder url has no host: {url:?}")));
        }
        Ok(Self { host: host.to_owned(), port, path: path.to_owned() })
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
/// Requests are batched ([`HttpEmbedderBuilder::with_batch_size`]), bounded by a timeout, and
/// answered from a bounded cache of embeddings by text when the same text comes again. Only
/// plain `http://` is supported (no TLS dependency in this crate); for a remote `https` API,
/// put a local proxy in front. `Debug` never prints the API key.
pub struct HttpEmbedder {
    target: Target,
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
        f.debug_struct("HttpEmbedder")
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .field("path", &self.target.path)
            .field("api", &self.api)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HttpEmbedder {
    /// Starts a builder for `url` (e.g. `http://127.0.0.1:11434/api/embed`), speaking `api`,
    /// asking for `model`, whose vectors have `dimension` numbers.
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
        let mut stream = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| Error::embedder("embedder connection failed").with_source(e))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            t.path,
            t.host,
            t.port,
            body.len()
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        let io = |e: std::io::Error| Error::embedder("embedder connection failed").with_source(e);
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1);
        limited.read_to_end(&mut raw).await.map_err(io)?;
        if raw.len() > MAX_RESPONSE_BYTES {
            return Err(Error::embedder("embedder answer is too large"));
        }
        parse_http_response(&raw)
    }
}

fn parse_http_response(raw: &[u8]) -> Result<Vec<u8>, Error> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::embedder("embedder answer has no http header end"))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| Error::embedder("embedder http header is not utf-8"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::embedder("embedder answer has no http status"))?;
    if !(200..300).contains(&status) {
        return Err(Error::embedder(format!("embedder answered http status {status}")));
    }
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
    if chunked {
        return dechunk(body);
    }
    match length {
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

    #[test]
    fn urls_are_parsed_and_https_is_refused_clearly() {
        let t = Target::parse("http://127.0.0.1:11434/api/embed").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 11434, "/api/embed"));
        let t = Target::parse("http://embed.local").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let err = Target::parse("https://api.openai.com/v1/embeddings").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("https")));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://x:notaport/").is_err());
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
