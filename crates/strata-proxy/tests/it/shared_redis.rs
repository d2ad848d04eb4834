//! Proxies sharing a Redis or a Redis Cluster (`--redis`, `--redis-cluster`, or an L2 the config
//! file puts there): the table versions live next to L2, so one proxy answers from what another
//! filled, and a write through either invalidates both.

#[path = "../../../strata/tests/support/redis_cluster.rs"]
mod redis_cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use strata_proxy::{build_query_cache, Args, StrataCache};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::*;

fn hits(cache: &StrataCache) -> u64 {
    cache.query_cache().tier_stats().iter().filter(|(name, _)| name == "l2").map(|(_, s)| s.hits).sum()
}

async fn value(c: &Client, sql: &str) -> String {
    for message in c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = message {
            return row.get(0).unwrap_or("<null>").to_owned();
        }
    }
    panic!("no row for {sql}")
}

/// Reads `read(k)` through `reader` until it returns `want` (a bump travels through pub/sub:
/// the reader may bypass meanwhile); a bounded wait, liveness only.
async fn sees(reader: &Client, sql: &str, want: &str, what: &str) {
    let start = Instant::now();
    while value(reader, sql).await != want {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new database `db` with one row, `kv (1, 'v0')`; an admin connection to it.
async fn kv_database(db: &str) -> Client {
    fresh_database(db).await;
    let direct = admin(db).await;
    direct
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')")
        .await
        .unwrap();
    direct
}

/// A proxy whose cache the binary's arguments configure.
async fn proxy(args: &[&str]) -> (TestProxy, Arc<StrataCache>) {
    let mut argv = vec!["strata-proxy"];
    argv.extend_from_slice(args);
    let settings = Args::try_parse_from(argv).unwrap().cache_settings().unwrap();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    (proxy, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_sharing_a_redis_cluster_share_results_and_invalidations() {
    let nodes = redis_cluster::cluster().await;
    let db = "strata_redis_cluster";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE kv (k int PRIMARY KEY, v text);
             INSERT INTO kv SELECT g, 'v0' FROM generate_series(1, 60) g",
        )
        .await
        .unwrap();
    // Each proxy knows some of the nodes only; the cluster tells them the rest.
    let seeds_a = format!("{},{}", nodes[0].url(), nodes[2].url());
    let (proxy_a, cache_a) = proxy(&["--redis-cluster", &seeds_a]).await;
    let (proxy_b, cache_b) = proxy(&["--redis-cluster", &nodes[1].url()]).await;
    let a = connect(proxy_a.port(), "postgres", db, None).await.unwrap();
    let b = connect(proxy_b.port(), "postgres", db, None).await.unwrap();
    let read = |k: u32| format!("SELECT v FROM kv WHERE k = {k}");

    // B answers from L2 what A filled (B's own L1 is empty): wait for both to synchronize their
    // versions with the cluster, then count.
    let start = Instant::now();
    loop {
        value(&a, &read(1)).await;
        let before = hits(&cache_b);
        value(&b, &read(1)).await;
        if hits(&cache_b) > before {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "proxy B never answered from the cluster's L2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in 2..=60 {
        value(&a, &read(k)).await;
    }
    let before = hits(&cache_b);
    for k in 2..=60 {
        assert_eq!(value(&b, &read(k)).await, "v0");
    }
    assert!(hits(&cache_b) - before >= 50, "B filled its own instead of reading A's results from L2");
    // The results spread over the cluster's nodes.
    let holding = nodes
        .iter()
        .filter(|n| {
            redis_cluster::cli(&["-p", &n.port.to_string(), "dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0
        })
        .count();
    assert!(holding >= 2, "L2 did not spread over the cluster");

    // A write through B invalidates what A has cached (its L1 included), and the other way round.
    assert_eq!(value(&a, &read(7)).await, "v0");
    b.batch_execute("UPDATE kv SET v = 'v1' WHERE k = 7").await.unwrap();
    sees(&a, &read(7), "v1", "A kept serving the row B's write changed").await;
    assert_eq!(value(&b, &read(9)).await, "v0");
    a.batch_execute("UPDATE kv SET v = 'v2' WHERE k = 9").await.unwrap();
    sees(&b, &read(9), "v2", "B kept serving the row A's write changed").await;
    drop(cache_a);
}

/// An L2 the config file's `[cache.l2.storage]` puts in Redis is shared by every proxy so
/// configured: the table versions live there too. Before, they stayed local to each process, so
/// a proxy kept answering from L2 (filled by itself or another) a row another proxy's write had
/// changed, until the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_the_config_file_puts_in_redis_shares_the_table_versions_too() {
    let db = "strata_file_redis_l2";
    kv_database(db).await;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let file = std::env::temp_dir().join(format!("strata-file-redis-l2-{}-{nanos}.toml", std::process::id()));
    let url = std::env::var("STRATA_TEST_REDIS_URL").expect("STRATA_TEST_REDIS_URL: run `cargo xtask test`");
    std::fs::write(
        &file,
        format!(
            "[cache.l2.storage]\nbackend = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"strata-test:{nanos}:l2:\"\n"
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let (proxy_a, cache_a) = proxy(&["--config", config]).await;
    let (proxy_b, _cache_b) = proxy(&["--config", config]).await;
    let a = connect(proxy_a.port(), "postgres", db, None).await.unwrap();
    let b = connect(proxy_b.port(), "postgres", db, None).await.unwrap();
    let read = "SELECT v FROM kv WHERE k = 1";
    // A caches the row.
    let start = Instant::now();
    loop {
        let before = cache_a.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum::<u64>();
        assert_eq!(value(&a, read).await, "v0");
        if cache_a.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum::<u64>() > before {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "A never answered from its cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.batch_execute("UPDATE kv SET v = 'v1' WHERE k = 1").await.unwrap();
    sees(&a, read, "v1", "A kept serving the row B's write changed").await;
    let _ = std::fs::remove_file(&file);
}

fn gauge(cache: &StrataCache, name: &str) -> f64 {
    let families = cache.query_cache().registry().gather();
    let family = families.iter().find(|f| f.name() == name);
    family.and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value())).unwrap_or(-1.0)
}

/// Proxies on a Redis Cluster with the WAL stream elect one streamer through a lease in the
/// cluster, and a write made straight on PostgreSQL reaches both proxies' caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_redis_cluster_elects_one_wal_streamer_for_direct_writes() {
    let nodes = redis_cluster::cluster().await;
    let db = "strata_redis_cluster_wal";
    let direct = kv_database(db).await;
    let pg = pg();
    let seeds: Vec<String> = nodes.iter().map(redis_cluster::Node::url).collect();
    let mut caches = Vec::new();
    let mut proxies = Vec::new();
    let mut invalidators = Vec::new();
    for seed in &seeds[..2] {
        let (proxy, cache) = proxy(&["--redis-cluster", seed]).await;
        let config = strata::WalConfig::builder()
            .with_upstream(pg.host(), pg.port())
            .with_user("postgres")
            .with_database(db)
            .with_publication(format!("{db}_{}", std::process::id()))
            .with_application_name(format!("{db}-{}", std::process::id()))
            .with_lag_bound(Duration::from_secs(1))
            .with_heartbeat_interval(Duration::from_millis(100))
            .with_redis_cluster_lease([seed.clone()], format!("strata_test:{db}:{}:", std::process::id()))
            .build()
            .unwrap();
        invalidators.push(strata::WalInvalidator::start_for_sessions(config, cache.sessions()).unwrap());
        caches.push(cache);
        proxies.push(proxy);
    }
    let clients = [
        connect(proxies[0].port(), "postgres", db, None).await.unwrap(),
        connect(proxies[1].port(), "postgres", db, None).await.unwrap(),
    ];
    let read = "SELECT v FROM kv WHERE k = 1";
    let all_hits = |i: usize| caches[i].query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum::<u64>();
    for (i, c) in clients.iter().enumerate() {
        let start = Instant::now();
        loop {
            let before = all_hits(i);
            assert_eq!(value(c, read).await, "v0");
            if all_hits(i) > before {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "proxy {i} never answered from its cache");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let held: Vec<f64> = caches.iter().map(|c| gauge(c, "strata_wal_lease_held")).collect();
    assert_eq!(held.iter().sum::<f64>(), 1.0, "exactly one proxy streams: {held:?}");
    direct.batch_execute("UPDATE kv SET v = 'v1' WHERE k = 1").await.unwrap();
    for c in &clients {
        sees(c, read, "v1", "a proxy kept serving the row a direct write changed").await;
    }
    drop(invalidators);
    let _ = direct.batch_execute(&format!("DROP PUBLICATION IF EXISTS {db}_{}", std::process::id())).await;
}

/// A redis-server of the test's own that speaks TLS only, with the harness's certificate for
/// 127.0.0.1 (signed by its `root.crt`).
struct TlsRedis {
    port: u16,
    child: std::process::Child,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_file(name: &str) -> String {
    let dir =
        std::env::var("STRATA_TEST_PG_TLS_DIR").expect("STRATA_TEST_PG_TLS_DIR: run `cargo xtask test`");
    format!("{dir}/{name}")
}

/// `strata-proxy` as a process of its own, trusting the certificates in `trusted` (the system
/// store that `SSL_CERT_FILE` names), with its log.
struct ProxyProcess {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl ProxyProcess {
    async fn start(redis: &str, trusted: &str) -> Self {
        let (port, http) = (dead_port().await, dead_port().await);
        let log =
            std::env::temp_dir().join(format!("strata-proxy-redis-tls-{}-{port}.log", std::process::id()));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata-proxy"));
        for (name, _) in std::env::vars() {
            if name.starts_with("STRATA_") && !name.starts_with("STRATA_TEST_") {
                command.env_remove(name);
            }
        }
        let pg = pg();
        command
            .env("SSL_CERT_FILE", trusted)
            .env_remove("SSL_CERT_DIR")
            .args(["--upstream", &format!("postgres://{}:{}", pg.host(), pg.port())])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", &format!("127.0.0.1:{http}")])
            .args(["--redis", redis, "--log", "warn"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut proxy = Self { child: command.spawn().expect("start strata-proxy"), port, log };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("strata-proxy exited ({status}): {}", proxy.log());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "strata-proxy did not start: {}", proxy.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `rediss://`: the proxy reaches Redis over TLS, verifying the server against the system's
/// certificates (here the file `SSL_CERT_FILE` names), and caches through it; a server whose
/// certificate it cannot verify is never used (answers come from PostgreSQL, uncached). Before,
/// the proxy refused every `rediss://` URL at startup ("invalid redis url").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_verify_the_server_and_cache_through_it() {
    let port = dead_port().await;
    let child = std::process::Command::new(redis_cluster::service("STRATA_TEST_REDIS_SERVER"))
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--tls-cert-file", &tls_file("server.crt"), "--tls-key-file", &tls_file("server.key")])
        .args(["--tls-ca-cert-file", &tls_file("root.crt"), "--tls-auth-clients", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let redis = TlsRedis { port, child };
    let (root, redis_port) = (tls_file("root.crt"), redis.port.to_string());
    let cli = |args: &[&str]| {
        let mut all = vec!["--tls", "--cacert", root.as_str(), "-p", redis_port.as_str()];
        all.extend_from_slice(args);
        redis_cluster::cli(&all)
    };
    let start = Instant::now();
    while cli(&["ping"]).trim() != "PONG" {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server with TLS did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("rediss://127.0.0.1:{}/", redis.port);
    let db = "strata_redis_tls";
    kv_database(db).await;
    let read = "SELECT v FROM kv WHERE k = 1";

    let trusted = ProxyProcess::start(&url, &tls_file("root.crt")).await;
    let c = connect(trusted.port, "postgres", db, None).await.unwrap();
    let start = Instant::now();
    loop {
        assert_eq!(value(&c, read).await, "v0");
        if cli(&["--scan", "--pattern", "strata:l2:*"]).lines().count() > 0
            && cli(&["exists", "strata:versions:epoch"]).trim() == "1"
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing reached Redis over TLS: {}",
            trusted.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.batch_execute("UPDATE kv SET v = 'v1' WHERE k = 1").await.unwrap();
    assert_eq!(value(&c, read).await, "v1");

    // Trusting another certificate only, the proxy cannot verify this server: it relays, uncached.
    drop(c);
    drop(trusted);
    cli(&["flushall"]);
    let other = std::env::temp_dir().join(format!("strata-redis-tls-other-{}.crt", std::process::id()));
    let other_cert = rcgen::generate_simple_self_signed(vec!["other.invalid".to_owned()]).unwrap();
    std::fs::write(&other, other_cert.cert.pem()).unwrap();
    let untrusting = ProxyProcess::start(&url, other.to_str().unwrap()).await;
    let u = connect(untrusting.port, "postgres", db, None).await.unwrap();
    for _ in 0..5 {
        assert_eq!(value(&u, read).await, "v1");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cli(&["--scan"]).trim(), "", "a server the proxy cannot verify was used");
    assert!(untrusting.log().contains("certificate"), "no certificate error logged: {}", untrusting.log());
    let _ = std::fs::remove_file(&other);
}
