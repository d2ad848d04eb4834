//! Two `QueryCache` instances sharing a real Redis (L2 and table versions): a write through one
//! reaches the other, and a lost change channel never turns into stale answers.

// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata::{
    BypassReason, KeyScope, Lookup, QueryCache, RedisVersions, Request, SettingsDigest, WriteEffect,
};
use strata_core::{TableName, VersionHealth, VersionStore};
use strata_l1::HotTier;
use strata_l2::{RedisStorage, WarmTier};

fn redis_url() -> String {
    std::env::var("STRATA_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "STRATA_TEST_REDIS_URL is unset: run `cargo xtask test`, which starts a throwaway redis-server"
        )
    })
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("strata-test:{test}:{}:{nanos}:", std::process::id())
}

/// A redis-server of this test's own, for tests that cut connections other tests rely on.
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    fn start() -> Self {
        let binary = std::env::var("STRATA_TEST_REDIS_SERVER").unwrap_or_else(|_| {
            panic!("STRATA_TEST_REDIS_SERVER is unset: run `cargo xtask test`, which provides redis-server")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "own redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        OwnRedis { child, url: format!("redis://127.0.0.1:{port}/") }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn instance(url: &str, prefix: &str) -> (QueryCache, Arc<RedisVersions>) {
    let versions = Arc::new(
        RedisVersions::builder(url)
            .with_prefix(format!("{prefix}v:"))
            .with_deadline(Duration::from_secs(2))
            .with_heartbeat(Duration::from_millis(100))
            .with_grace(Duration::from_millis(200))
            .with_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .build()
            .await
            .unwrap(),
    );
    assert!(versions.wait_for(VersionHealth::Synchronized, Duration::from_secs(5)).await);
    let storage = RedisStorage::standalone(url).with_key_prefix(format!("{prefix}l2:")).build().unwrap();
    let l2 = WarmTier::builder(Arc::new(storage)).with_deadline(Duration::from_secs(1)).build().unwrap();
    let cache = QueryCache::builder()
        .with_l1(HotTier::builder().build().unwrap())
        .with_l2(l2)
        .with_version_store(versions.clone())
        .with_default_ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    (cache, versions)
}

async fn fill(cache: &QueryCache, req: &Request<'_>, value: &'static str) {
    match cache.lookup(req).await {
        Lookup::Miss(ticket) => {
            ticket.fill(Bytes::from_static(value.as_bytes()), 1).await;
        }
        other => panic!("expected a miss to fill, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_stops_the_other_serving_the_old_result() {
    let (url, prefix) = (redis_url(), unique_prefix("cross"));
    let (a, _) = instance(&url, &prefix).await;
    let (b, _) = instance(&url, &prefix).await;
    let scope = KeyScope::new("shop", "app", SettingsDigest::default());
    let mut bounds = Vec::new();
    for round in 0..20 {
        let sql = format!("SELECT * FROM inventory WHERE sku = 'S-{round}'");
        let req = Request::new(&scope, &sql);
        fill(&a, &req, "old").await;
        // B finds A's fill in the shared L2 and promotes it into its own L1.
        assert!(matches!(b.lookup(&req).await, Lookup::Hit(h) if h.tier() == "l2"), "round {round}");
        assert!(matches!(b.lookup(&req).await, Lookup::Hit(h) if h.tier() == "l1"), "round {round}");

        let written = Instant::now();
        a.invalidate(&WriteEffect::Tables(vec![TableName::new("public.inventory")])).await.unwrap();
        // A itself never serves the old result once its invalidate returned.
        assert!(!matches!(a.lookup(&req).await, Lookup::Hit(_)), "A served its own stale result");
        while let Lookup::Hit(hit) = b.lookup(&req).await {
            assert_eq!(hit.payload(), &Bytes::from_static(b"old"));
            assert!(written.elapsed() < Duration::from_secs(5), "B still served the old result after 5 s");
            tokio::task::yield_now().await;
        }
        bounds.push(written.elapsed());
    }
    bounds.sort();
    println!(
        "cross-instance invalidation (A's invalidate call -> B stops serving): p50 {:?}, p90 {:?}, max {:?} over {} writes",
        bounds[bounds.len() / 2],
        bounds[bounds.len() * 9 / 10],
        bounds[bounds.len() - 1],
        bounds.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_change_channel_an_instance_serves_nothing_stale_and_recovers() {
    // Its own server: killing every pub/sub connection must not disturb other tests.
    let own = OwnRedis::start();
    let (url, prefix) = (own.url.clone(), unique_prefix("channel"));
    let (a, _) = instance(&url, &prefix).await;
    let (b, b_versions) = instance(&url, &prefix).await;
    let scope = KeyScope::new("shop", "app", SettingsDigest::default());
    let req = Request::new(&scope, "SELECT * FROM accounts WHERE id = 1");
    fill(&a, &req, "balance 100").await;
    assert!(matches!(b.lookup(&req).await, Lookup::Hit(_)));
    assert!(matches!(b.lookup(&req).await, Lookup::Hit(h) if h.tier() == "l1"));

    // Cut every pub/sub connection: B's change channel is gone.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut admin).await.unwrap();
    // While B cannot vouch for its versions it bypasses the cache: its L1 still holds the
    // old balance, and a write through A meanwhile must not be missed.
    let cut = Instant::now();
    let mut saw_bypass = false;
    while cut.elapsed() < Duration::from_millis(150) {
        match b.lookup(&req).await {
            Lookup::Bypass(bypass) => {
                assert_eq!(bypass.reason(), &BypassReason::VersionsUnsynchronized);
                saw_bypass = true;
                break;
            }
            Lookup::Hit(_) => tokio::task::yield_now().await,
            Lookup::Miss(_) => panic!("B has the result; it either serves it or bypasses"),
        }
    }
    a.invalidate(&WriteEffect::Tables(vec![TableName::new("accounts")])).await.unwrap();
    let after_write = Instant::now();
    let recovered = loop {
        match b.lookup(&req).await {
            Lookup::Hit(hit) => panic!("B served {:?} after the write it could not see", hit.payload()),
            Lookup::Bypass(bypass) => {
                saw_bypass = true;
                assert_eq!(bypass.reason(), &BypassReason::VersionsUnsynchronized);
                assert!(
                    after_write.elapsed() < Duration::from_secs(10),
                    "B did not resynchronize within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Lookup::Miss(ticket) => break ticket,
        }
    };
    println!("change channel cut: B resynchronized {:?} after the write", after_write.elapsed());
    assert!(saw_bypass, "B must have bypassed while its channel was down");
    assert_eq!(b_versions.health(), VersionHealth::Synchronized);
    recovered.fill(Bytes::from_static(b"balance 50"), 1).await;
    match a.lookup(&req).await {
        Lookup::Hit(hit) => assert_eq!(hit.payload(), &Bytes::from_static(b"balance 50")),
        other => panic!("A should see B's new fill through L2, got {other:?}"),
    }
}
