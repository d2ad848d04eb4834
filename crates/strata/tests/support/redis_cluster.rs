//! A throwaway Redis Cluster for tests (used by `strata` and, through `#[path]`, by the proxy's
//! tests): three cluster-enabled redis-server processes on free ports, from the binaries the test
//! harness names (`cargo xtask test` sets `STRATA_TEST_REDIS_SERVER` and `STRATA_TEST_REDIS_CLI`).
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node or the cluster may take to come up.
const START: Duration = Duration::from_secs(30);

pub fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is unset: run `cargo xtask test`"))
}

/// One cluster-enabled redis-server, killed when dropped.
pub struct Node {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let dir = std::env::temp_dir().join(format!("strata-versions-cluster-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
        let child = Command::new(service("STRATA_TEST_REDIS_SERVER"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"])
            .args(["--dir", dir.to_str().unwrap_or_else(|| panic!("utf-8 temp dir"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let node = Self { port, dir, child: Some(child) };
        let start = Instant::now();
        while cli(&["-p", &port.to_string(), "ping"]).trim() != "PONG" {
            assert!(start.elapsed() < START, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-cli's output; an empty string when it cannot run or fails.
pub fn cli(args: &[&str]) -> String {
    Command::new(service("STRATA_TEST_REDIS_CLI"))
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Three primaries, no replicas: the first serves slots 0-5460, the second 5461-10922, the third
/// the rest (`redis-cli --cluster create` splits them in the order given).
pub async fn cluster() -> Vec<Node> {
    let nodes: Vec<Node> = (0..3).map(|_| Node::start()).collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = Command::new(service("STRATA_TEST_REDIS_CLI"))
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    for node in &nodes {
        while !cli(&["-p", &node.port.to_string(), "cluster", "info"]).contains("cluster_state:ok") {
            assert!(start.elapsed() < START, "the cluster did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes
}
