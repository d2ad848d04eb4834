//! A proxy started with `--redis` while Redis is down: it starts, answers from PostgreSQL without
//! serving anything from the cache, and caches (and invalidates) once Redis comes up.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};

use crate::support::*;

/// The bound of every wait in this file.
const BOUND: Duration = Duration::from_secs(20);

fn hits(cache: &StrataCache) -> u64 {
    cache.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum()
}

/// Lookups the cache bypassed because table versions were not synchronized.
fn unsynchronized_bypasses(cache: &StrataCache) -> u64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&cache.query_cache().registry().gather())
        .expect("metrics encode");
    text.lines()
        .find_map(|l| l.strip_prefix("strata_bypass_total{reason=\"versions_unsynchronized\"} "))
        .map_or(0, |v| v.parse().expect("a counter value"))
}

async fn value(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT v FROM kv WHERE k = 1", &[]).await.unwrap().get(0)
}

async fn set_value(c: &tokio_postgres::Client, v: &str) {
    c.execute("UPDATE kv SET v = $1 WHERE k = 1", &[&v]).await.unwrap();
}

/// A redis-server this test starts on a port of its choosing, killed when dropped.
struct OwnRedis {
    child: std::process::Child,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        let binary = std::env::var("STRATA_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_SERVER is unset: run `cargo xtask test`"));
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let started = Instant::now();
        while resp(port, &["PING"]).as_deref() != Some("+PONG") {
            assert!(started.elapsed() < BOUND, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        OwnRedis { child }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one command to the Redis on `port` and returns the first line of its reply.
fn resp(port: u16, args: &[&str]) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for arg in args {
        cmd.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    s.write_all(cmd.as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    reply.split("\r\n").next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_redis_is_down_it_serves_from_postgres_then_caches_once_redis_is_up() {
    let db = "strata_redis_down_at_start";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')")
        .await
        .unwrap();
    let port = dead_port().await;
    let settings =
        CacheSettings { redis: Some(format!("redis://127.0.0.1:{port}/")), ..CacheSettings::default() };
    let building = Instant::now();
    let built = tokio::time::timeout(BOUND, build_query_cache(&settings))
        .await
        .expect("building the cache hung while redis is down")
        .expect("the cache builds while redis is down");
    println!("cache built in {:?} with redis down", building.elapsed());
    let cache = Arc::new(StrataCache::new(built).expect("strata cache"));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let c = connect(proxy.port(), "postgres", db, None).await.unwrap();

    // Redis is down: every answer comes from PostgreSQL and is current, writes included.
    for round in 1..=3 {
        let old = format!("v{}", round - 1);
        assert_eq!(value(&c).await, old);
        assert_eq!(value(&c).await, old);
        let new = format!("v{round}");
        set_value(&c, &new).await;
        assert_eq!(value(&c).await, new);
    }
    assert_eq!(hits(&cache), 0, "nothing is served from the cache while versions are unsynchronized");
    let bypassed = unsynchronized_bypasses(&cache);
    assert!(bypassed >= 9, "every read bypassed as versions_unsynchronized, got {bypassed}");
    assert_eq!(resp(port, &["PING"]), None, "nothing listens on the redis port yet");

    // Redis comes up on that port: the proxy connects by itself and repeated reads start hitting.
    let _redis = OwnRedis::start_on(port);
    let started = Instant::now();
    loop {
        let before = hits(&cache);
        assert_eq!(value(&c).await, "v3");
        assert_eq!(value(&c).await, "v3");
        if hits(&cache) > before {
            break;
        }
        assert!(started.elapsed() < BOUND, "caching did not start within {BOUND:?} of redis starting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("caching started {:?} after redis did", started.elapsed());
    // The writes made while Redis was down reached it before anything was cached: the Redis
    // started empty, and no write has run since.
    let bumped = resp(port, &["HLEN", "strata:versions:versions"]);
    assert!(
        bumped.as_deref().is_some_and(|r| r != ":0" && r.starts_with(':')),
        "the writes made while redis was down were not applied to it: HLEN {bumped:?}"
    );

    // Writes still invalidate: the next read is the new value, and is then cached again.
    for round in 4..=6 {
        let new = format!("v{round}");
        set_value(&c, &new).await;
        assert_eq!(value(&c).await, new);
        let before = hits(&cache);
        let again = Instant::now();
        loop {
            assert_eq!(value(&c).await, new);
            if hits(&cache) > before {
                break;
            }
            assert!(again.elapsed() < BOUND, "the new value was not cached within {BOUND:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    proxy.shutdown.shutdown();
}
