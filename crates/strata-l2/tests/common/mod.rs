//! Shared test helpers: service discovery from the test harness, throwaway redis-server processes, keys and results.
#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use strata_core::{CacheKey, CachedResult, KeyScope, SettingsDigest, TableName};

/// A variable the test harness (`cargo xtask test`) sets; a test that needs it fails without it.
pub fn service(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{var} is not set: run `cargo xtask test`, which starts the test services"),
    }
}

/// A key prefix no other test (or run) uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("strata-test:l2:{test}:{}:{nanos}:{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn key(n: u64) -> CacheKey {
    let scope = KeyScope::new("shop", "app", SettingsDigest::default());
    CacheKey::builder(&scope, b"SELECT * FROM users WHERE id = $1")
        .param(strata_core::TypeOid::INT8, strata_core::Format::Text, n.to_string().as_bytes())
        .build()
}

pub fn result_at(payload: impl Into<Bytes>, created_at: SystemTime, ttl: Duration) -> CachedResult {
    CachedResult::builder(payload.into())
        .with_row_count(1)
        .with_dependency(TableName::new("public.users"), 3)
        .with_created_at(created_at)
        .with_ttl(ttl)
        .with_fill_cost(Duration::from_millis(2))
        .build()
}

pub fn result(payload: impl Into<Bytes>) -> CachedResult {
    result_at(payload, SystemTime::now(), Duration::from_secs(60))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A redis-server process of our own, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(free_port(), Vec::new())
    }

    /// A server with extra command-line settings (`["--maxmemory", "4mb"]`).
    pub fn start_with_args(args: &[&str]) -> Self {
        Self::start_with(free_port(), args.iter().map(|s| s.to_string()).collect())
    }

    pub fn start_cluster_node() -> Self {
        let port = free_port();
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
            "--cluster-allow-reads-when-down",
            "yes",
        ];
        Self::start_with(port, extra.iter().map(|s| s.to_string()).collect())
    }

    fn start_with(port: u16, extra: Vec<String>) -> Self {
        let dir = std::env::temp_dir().join(format!("strata-l2-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self { port, dir, extra, child: None };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the process (again, on the same port) and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new(service("STRATA_TEST_REDIS_SERVER"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", self.dir.to_str().expect("utf-8 temp dir")])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let start = Instant::now();
        while !ping(self.port) {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Runs redis-cli with `args`, failing the test if it fails.
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new(service("STRATA_TEST_REDIS_CLI")).args(args).output().expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain multiplexed connection for checking what the tier wrote.
pub async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw redis connection")
}

/// Bytes that do not compress, so stored sizes are predictable.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
