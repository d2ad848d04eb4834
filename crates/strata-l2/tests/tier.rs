//! In-process tests of the warm tier: the memory backend, TTLs on an injected clock, the value checks, and fail-open with a storage of our own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::{key, result, result_at};
use strata_core::{CacheTier, Clock, ManualClock, NowLookup, PutOutcome, Rejection};
use strata_l2::{
    BreakerState, Error, ErrorKind, MemoryStorage, MemoryStorageBuilder, NodeHealth, NodeId, RedisStorage,
    RedisStorageBuilder, ResultLookup, Storage, StorageConfig, StorageUsage, StoredResult, WarmTier,
    WarmTierBuilder, WarmTierConfig, WarmTierHealth,
};

fn memory_tier(clock: &Arc<ManualClock>, capacity_bytes: u64) -> WarmTier {
    let storage = MemoryStorage::builder()
        .with_capacity_bytes(capacity_bytes)
        .with_clock(clock.clone())
        .build()
        .unwrap();
    WarmTier::builder(Arc::new(storage)).with_clock(clock.clone()).build().unwrap()
}

#[test]
fn public_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<WarmTier>();
    check::<WarmTierBuilder>();
    check::<WarmTierConfig>();
    check::<WarmTierHealth>();
    check::<StorageConfig>();
    check::<MemoryStorage>();
    check::<MemoryStorageBuilder>();
    check::<RedisStorage>();
    check::<RedisStorageBuilder>();
    check::<StorageUsage>();
    check::<StoredResult>();
    check::<NodeId>();
    check::<NodeHealth>();
    check::<ResultLookup>();
    check::<BreakerState>();
    check::<Error>();
    check::<ErrorKind>();
    check::<Arc<dyn Storage>>();
}

#[tokio::test]
async fn memory_round_trip_batch_and_remove() {
    let clock = Arc::new(ManualClock::fixed());
    let l2 = memory_tier(&clock, 1 << 20);
    let value = result_at(&b"row: alice"[..], clock.now(), Duration::from_secs(30));
    assert_eq!(l2.put(&key(1), value.clone()).await.unwrap(), PutOutcome::Stored);
    assert_eq!(l2.get(&key(1)).await.unwrap(), Some(value.clone()), "payload and metadata survive encoding");
    assert_eq!(l2.get(&key(2)).await.unwrap(), None);
    let many = l2.get_many(&[key(2), key(1), key(3)]).await.unwrap();
    assert_eq!(many, vec![None, Some(value.clone()), None]);
    // The memory backend answers without awaiting.
    assert!(matches!(l2.get_now(&key(1)), NowLookup::Hit(hit) if hit == value));
    assert!(matches!(l2.get_now(&key(2)), NowLookup::Miss));
    l2.remove(&key(1)).await.unwrap();
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);
    assert!(matches!(l2.get_now(&key(1)), NowLookup::Miss));
    let stats = l2.stats();
    assert_eq!((stats.hits, stats.misses, stats.inserts), (3, 6, 1));
}

#[tokio::test]
async fn ttl_follows_the_injected_clock_and_the_remaining_ttl_is_stored() {
    let clock = Arc::new(ManualClock::fixed());
    let l2 = memory_tier(&clock, 1 << 20);
    // Filled 20 s ago with a 30 s TTL: 10 s are left, and that is what the storage keeps it for.
    let old = result_at(&b"x"[..], clock.now() - Duration::from_secs(20), Duration::from_secs(30));
    l2.put(&key(1), old).await.unwrap();
    clock.advance(Duration::from_millis(9_999));
    assert!(l2.get(&key(1)).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);

    // A tier whose clock runs ahead of the storage's (another machine) still never serves
    // what is expired by its own clock.
    let storage_clock = Arc::new(ManualClock::fixed());
    let storage = MemoryStorage::builder().with_clock(storage_clock.clone()).build().unwrap();
    let l2 = WarmTier::builder(Arc::new(storage)).with_clock(clock.clone()).build().unwrap();
    l2.put(&key(2), result_at(&b"y"[..], clock.now(), Duration::from_secs(5))).await.unwrap();
    clock.advance(Duration::from_secs(5));
    assert_eq!(l2.get(&key(2)).await.unwrap(), None);
    assert_eq!(l2.stats().expirations, 1);
}

#[tokio::test]
async fn expired_and_oversized_results_are_refused() {
    let clock = Arc::new(ManualClock::fixed());
    let storage =
        MemoryStorage::builder().with_capacity_bytes(1 << 20).with_clock(clock.clone()).build().unwrap();
    let l2 = WarmTier::builder(Arc::new(storage))
        .with_clock(clock.clone())
        .with_max_payload_bytes(1000)
        .build()
        .unwrap();
    let expired = result_at(&b"x"[..], clock.now() - Duration::from_secs(31), Duration::from_secs(30));
    assert_eq!(l2.put(&key(1), expired).await.unwrap(), PutOutcome::Rejected(Rejection::Expired));
    let big = result_at(vec![0u8; 1001], clock.now(), Duration::from_secs(30));
    assert!(matches!(l2.put(&key(2), big).await.unwrap(), PutOutcome::Rejected(Rejection::TooLarge { .. })));
    assert_eq!(l2.stats().rejections, 2);
    assert_eq!(l2.get(&key(2)).await.unwrap(), None);
}

#[tokio::test]
async fn memory_backend_stays_within_its_byte_bound() {
    let clock = Arc::new(ManualClock::fixed());
    let l2 = memory_tier(&clock, 64 << 10);
    // Incompressible-ish payloads so the stored size is close to the payload size.
    for n in 0..300u64 {
        let payload: Vec<u8> = (0..1024u64).map(|i| (i.wrapping_mul(n + 7) >> 3) as u8 ^ n as u8).collect();
        let outcome =
            l2.put(&key(n), result_at(payload, clock.now(), Duration::from_secs(60))).await.unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
        let stats = l2.stats();
        assert!(stats.bytes <= stats.capacity_bytes, "{} > {}", stats.bytes, stats.capacity_bytes);
    }
    let stats = l2.stats();
    assert!(stats.capacity_bytes <= 64 << 10 && stats.capacity_bytes > 60 << 10, "{stats:?}");
    assert!(stats.evictions > 0 && stats.entries < 300, "{stats:?}");
    assert!(l2.get(&key(299)).await.unwrap().is_some(), "the newest entry survives");

    // A value larger than the storage accepts for one entry is refused, not silently dropped.
    let storage = MemoryStorage::builder().with_capacity_bytes(64 << 10).build().unwrap();
    let too_big = Bytes::from(vec![0u8; 5000]);
    let outcome = storage.set("k", too_big, Duration::from_secs(1)).await.unwrap();
    assert!(matches!(outcome, PutOutcome::Rejected(Rejection::TooLarge { .. })), "{outcome:?}");
}

#[tokio::test]
async fn corrupt_and_colliding_values_are_misses() {
    let clock = Arc::new(ManualClock::fixed());
    let l2 = memory_tier(&clock, 1 << 20);
    let storage = l2.storage().clone();
    // Garbage under key 1's storage key: a miss, counted, and deleted.
    let skey1 = key(1).digest().to_string();
    storage.set(&skey1, Bytes::from_static(b"garbage"), Duration::from_secs(60)).await.unwrap();
    // The synchronous path cannot delete, so it hands an undecodable value to `get`.
    assert!(matches!(l2.get_now(&key(1)), NowLookup::WouldAwait));
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);
    assert_eq!(l2.stats().corrupt, 1);
    assert_eq!(storage.get(&skey1).await.unwrap(), None, "corrupt value deleted");

    // A valid value of key 2 stored under key 3's digest (what a digest collision looks like):
    // never served for key 3, and left in place for its owner.
    l2.put(&key(2), result(&b"two"[..])).await.unwrap();
    let raw = storage.get(&key(2).digest().to_string()).await.unwrap().unwrap();
    let skey3 = key(3).digest().to_string();
    storage.set(&skey3, raw, Duration::from_secs(60)).await.unwrap();
    assert_eq!(l2.get(&key(3)).await.unwrap(), None);
    assert_eq!(l2.stats().collisions, 1);
    assert!(storage.get(&skey3).await.unwrap().is_some());
}

#[tokio::test]
async fn memory_keeps_results_as_values_and_still_checks_keys_and_expiry() {
    let clock = Arc::new(ManualClock::fixed());
    let l2 = memory_tier(&clock, 1 << 20);
    let storage = l2.storage().clone();
    let value = result_at(&b"row: bob"[..], clock.now(), Duration::from_secs(30));
    l2.put(&key(1), value.clone()).await.unwrap();
    let skey1 = key(1).digest().to_string();

    // The tier's write is kept as the result itself: the hit is the same allocation, not a decoded copy.
    let ResultLookup::Found(kept) = storage.get_result_now(key(1).digest(), clock.now()) else {
        panic!("the memory storage keeps the result as a value")
    };
    assert_eq!(kept.canonical(), key(1).canonical());
    let NowLookup::Hit(hit) = l2.get_now(&key(1)) else { panic!("a kept result is a hit") };
    assert_eq!(hit.payload().as_ptr(), value.payload().as_ptr(), "served without decoding");
    assert!(!format!("{kept:?}").contains("bob"), "Debug never prints the payload");

    // The byte interface still answers with a value the tier can read (here: under a
    // colliding digest, which the tier refuses and counts).
    let raw = storage.get(&skey1).await.unwrap().expect("kept results read as bytes too");
    let skey3 = key(3).digest().to_string();
    storage.set(&skey3, raw, Duration::from_secs(60)).await.unwrap();
    assert_eq!(l2.get(&key(3)).await.unwrap(), None);
    assert_eq!(l2.stats().collisions, 1);

    // A kept result of another key under this key's digest is refused on the fast path too.
    let outcome = storage.set_result_now(key(4).digest(), kept.clone(), Duration::from_secs(60));
    assert!(matches!(outcome, Some(Ok(PutOutcome::Stored))), "{outcome:?}");
    assert!(matches!(l2.get_now(&key(4)), NowLookup::Miss));
    assert_eq!(l2.get_many(&[key(4), key(1)]).await.unwrap(), vec![None, Some(value.clone())]);
    assert_eq!(l2.stats().collisions, 3);

    // Expiry follows the tier's clock and drops the entry.
    clock.advance(Duration::from_secs(30));
    assert!(matches!(l2.get_now(&key(1)), NowLookup::Miss));
    assert_eq!(l2.stats().expirations, 1);
    assert_eq!(
        storage.get_result_now(key(1).digest(), clock.now()),
        ResultLookup::Absent,
        "expired entry dropped"
    );

    // A storage of bytes only (the trait's defaults) says so, and the tier takes the byte path.
    let flaky = Flaky {
        inner: MemoryStorage::builder().build().unwrap(),
        mode: AtomicU8::new(HEALTHY),
        calls: AtomicU64::new(0),
    };
    assert_eq!(flaky.get_result_now(key(1).digest(), clock.now()), ResultLookup::Unsupported);
    assert!(flaky.set_result_now(key(1).digest(), kept, Duration::from_secs(1)).is_none());
}

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;

/// A storage of our own (which also proves the trait is implementable and object safe):
/// a memory storage that can be told to fail or to hang, and counts the calls that reach it.
#[derive(Debug)]
struct Flaky {
    inner: MemoryStorage,
    mode: AtomicU8,
    calls: AtomicU64,
}

impl Flaky {
    async fn enter(&self) -> Result<(), Error> {
        self.calls.fetch_add(1, SeqCst);
        match self.mode.load(SeqCst) {
            FAILING => Err(Error::new(ErrorKind::Unavailable, "flaky storage refused")),
            HANGING => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Storage for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.enter().await?;
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<PutOutcome, Error> {
        self.enter().await?;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.enter().await?;
        self.inner.delete(key).await
    }
    async fn clear(&self) -> Result<(), Error> {
        self.enter().await?;
        self.inner.clear().await
    }
}

#[tokio::test(start_paused = true)]
async fn slow_or_failing_storage_fails_open_and_the_breaker_recovers() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStorage::builder().build().unwrap(),
        mode: AtomicU8::new(HEALTHY),
        calls: AtomicU64::new(0),
    });
    let l2 = WarmTier::builder(flaky.clone())
        .with_deadline(Duration::from_millis(5))
        .with_breaker_failure_threshold(3)
        .with_breaker_cooldown(Duration::from_millis(200))
        .build()
        .unwrap();
    l2.put(&key(1), result(&b"one"[..])).await.unwrap();

    // A hanging storage: each call gives up exactly at the deadline, as a miss.
    flaky.mode.store(HANGING, SeqCst);
    for _ in 0..3 {
        let start = tokio::time::Instant::now();
        assert_eq!(l2.get(&key(1)).await.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }
    assert_eq!(l2.health().breaker, BreakerState::Open);
    assert_eq!(l2.health().timeouts, 3);

    // Open: answers at once without touching the storage; writes are dropped.
    let calls = flaky.calls.load(SeqCst);
    let start = tokio::time::Instant::now();
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);
    assert_eq!(
        l2.put(&key(2), result(&b"two"[..])).await.unwrap(),
        PutOutcome::Rejected(Rejection::Degraded)
    );
    assert_eq!(l2.get_many(&[key(1), key(2)]).await.unwrap(), vec![None, None]);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(flaky.calls.load(SeqCst), calls, "an open breaker never calls the storage");
    let err = l2.remove(&key(1)).await.unwrap_err();
    assert_eq!(err.kind(), strata_core::ErrorKind::Unavailable, "explicit removals report failure");

    // After the cool-down one probe goes through; a refusing storage reopens the breaker.
    tokio::time::advance(Duration::from_millis(200)).await;
    flaky.mode.store(FAILING, SeqCst);
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);
    assert_eq!(flaky.calls.load(SeqCst), calls + 1);
    assert_eq!(l2.health().breaker, BreakerState::Open);

    // Healthy again: the next probe closes the breaker and the stored value is served.
    flaky.mode.store(HEALTHY, SeqCst);
    tokio::time::advance(Duration::from_millis(200)).await;
    assert!(l2.get(&key(1)).await.unwrap().is_some());
    assert_eq!(l2.health().breaker, BreakerState::Closed);
    let health = l2.health();
    assert_eq!((health.breaker_opens, health.errors, health.timeouts), (2, 4, 3), "{health:?}");
    assert!(health.short_circuited >= 4, "{health:?}");
    assert_eq!(health.dropped_writes, 1);
    assert_eq!(l2.stats().errors, 4);
}

/// A storage of our own on two "nodes", `a` and `b` (by the first hex digit of the key), where
/// node `b` can be taken down: its calls fail, as a dead Redis Cluster primary's do.
#[derive(Debug)]
struct TwoNodes {
    inner: MemoryStorage,
    b_down: AtomicU8,
    b_calls: AtomicU64,
}

fn node_name(key: &str) -> &'static str {
    if key.as_bytes().first().is_some_and(|&c| c < b'8') {
        "a"
    } else {
        "b"
    }
}

impl TwoNodes {
    fn enter(&self, keys: &[&str]) -> Result<(), Error> {
        if keys.iter().any(|k| node_name(k) == "b") {
            self.b_calls.fetch_add(1, SeqCst);
            if self.b_down.load(SeqCst) == 1 {
                return Err(Error::new(ErrorKind::Unavailable, "node b is down"));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for TwoNodes {
    fn name(&self) -> &str {
        "two-nodes"
    }
    fn node_of(&self, key: &str) -> Option<NodeId> {
        Some(NodeId::new(node_name(key)))
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.enter(&[key])?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        self.enter(&keys.iter().map(String::as_str).collect::<Vec<_>>())?;
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<PutOutcome, Error> {
        self.enter(&[key])?;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.enter(&[key])?;
        self.inner.delete(key).await
    }
    async fn clear(&self) -> Result<(), Error> {
        self.inner.clear().await
    }
}

#[tokio::test(start_paused = true)]
async fn one_breaker_per_node_keeps_healthy_nodes_hitting() {
    let storage = Arc::new(TwoNodes {
        inner: MemoryStorage::builder().build().unwrap(),
        b_down: AtomicU8::new(0),
        b_calls: AtomicU64::new(0),
    });
    // The default breaker: 5 consecutive failures, 1 s cool-down.
    let l2 = WarmTier::builder(storage.clone()).build().unwrap();
    let keys: Vec<_> = (0..40).map(key).collect();
    let on_b: Vec<bool> = keys.iter().map(|k| node_name(&k.digest().to_string()) == "b").collect();
    assert!(on_b.iter().filter(|&&b| b).count() >= 10 && on_b.iter().filter(|&&b| !b).count() >= 10);
    for k in &keys {
        assert_eq!(l2.put(k, result(&b"v"[..])).await.unwrap(), PutOutcome::Stored);
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| !on_b[i]);

    storage.b_calls.store(0, SeqCst);
    storage.b_down.store(1, SeqCst);
    for pass in 0..3 {
        // Node b's keys first: far more failures in a row than the threshold.
        for &i in &order {
            let found = l2.get(&keys[i]).await.unwrap();
            assert_eq!(found.is_some(), !on_b[i], "pass {pass}, key {i}: {:?}", l2.health());
        }
        let batch = l2.get_many(&keys).await.unwrap();
        let hits: Vec<bool> = batch.iter().map(Option::is_some).collect();
        assert_eq!(
            hits,
            on_b.iter().map(|b| !b).collect::<Vec<_>>(),
            "pass {pass}: a batch is split by node"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
    }
    let health = l2.health();
    let states: Vec<_> = health.nodes.iter().map(|n| (n.node.as_str(), n.breaker, n.breaker_opens)).collect();
    assert_eq!(
        states,
        vec![("a", BreakerState::Closed, 0), ("b", BreakerState::Open, 2)],
        "b opened, probed after its cool-down and reopened: {health:?}"
    );
    assert_eq!((health.breaker, health.breaker_opens), (BreakerState::Closed, 0));
    // Five failures opened it, one failed probe reopened it; every other call to b was short-circuited.
    assert_eq!(storage.b_calls.load(SeqCst), 6);

    // Back up: after the cool-down a probe closes b's breaker and its keys hit again.
    storage.b_down.store(0, SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    for (i, k) in keys.iter().enumerate() {
        assert!(l2.get(k).await.unwrap().is_some(), "key {i} after recovery");
    }
    assert!(l2.health().nodes.iter().all(|n| n.breaker == BreakerState::Closed));
}

#[tokio::test]
async fn config_selects_the_backend_at_run_time() {
    let config: WarmTierConfig = toml::from_str("").unwrap();
    assert_eq!(config, WarmTierConfig::default());
    let l2 = config.build().unwrap();
    assert_eq!(l2.storage().name(), "memory");
    assert_eq!(l2.deadline(), Duration::from_millis(5));

    let config: WarmTierConfig = toml::from_str(
        r#"
        deadline_ms = 2
        breaker_cooldown_ms = 50
        [storage]
        backend = "redis"
        url = "redis://:hunter2@127.0.0.1:1/3"
        key_prefix = "app1:"
        "#,
    )
    .unwrap();
    assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
    let l2 = config.build().unwrap();
    assert_eq!(l2.storage().name(), "redis");
    assert!(!format!("{l2:?}").contains("hunter2"));
    // Nothing listens on port 1: building succeeds (the connection is lazy) and lookups miss.
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);
    assert_eq!(l2.health().errors, 1);

    let config: WarmTierConfig = toml::from_str(
        r#"
        [storage]
        backend = "redis_cluster"
        nodes = ["redis://127.0.0.1:1/", "redis://127.0.0.1:2/"]
        "#,
    )
    .unwrap();
    assert_eq!(config.build().unwrap().storage().name(), "redis-cluster");

    let bad: Result<WarmTierConfig, _> = toml::from_str("[storage]\nbackend = \"memcached\"\n");
    assert!(bad.is_err());
    let bad: Result<WarmTierConfig, _> = toml::from_str("deadline = 3\n");
    assert!(bad.is_err(), "unknown fields are refused");
    let zero: WarmTierConfig = toml::from_str("deadline_ms = 0\n").unwrap();
    assert_eq!(zero.build().unwrap_err().to_string(), "l2 deadlines must be above zero");
    let bad_url = StorageConfig::Redis { url: "http://nope".into(), key_prefix: "p:".into() };
    assert_eq!(bad_url.build().unwrap_err().kind(), ErrorKind::Config);
}

#[test]
fn redis_storage_outside_a_runtime_is_a_config_error_not_a_panic() {
    let err = RedisStorage::standalone("redis://127.0.0.1:1/").build().unwrap_err();
    assert_eq!(err.to_string(), "l2 redis storage must be built inside a tokio runtime");
    let err = MemoryStorage::builder().with_capacity_bytes(10).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// Counts WARN events.
struct CountWarnings(Arc<AtomicU64>);

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_failing_storage_logs_one_rate_limited_warning() {
    let warnings = Arc::new(AtomicU64::new(0));
    tracing::subscriber::with_default(CountWarnings(warnings.clone()), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let flaky = Arc::new(Flaky {
                inner: MemoryStorage::builder().build().unwrap(),
                mode: AtomicU8::new(FAILING),
                calls: AtomicU64::new(0),
            });
            let l2 = WarmTier::builder(flaky)
                .with_breaker_failure_threshold(1000)
                .with_warn_interval(Duration::from_secs(3600))
                .build()
                .unwrap();
            for n in 0..50 {
                assert_eq!(l2.get(&key(n)).await.unwrap(), None);
                let outcome = l2.put(&key(n), result(&b"v"[..])).await.unwrap();
                assert_eq!(outcome, PutOutcome::Rejected(Rejection::Degraded));
            }
            assert_eq!(l2.health().errors, 100);
            assert!(matches!(l2.get_now(&key(1)), NowLookup::WouldAwait), "a networked-style storage waits");
        });
    });
    assert_eq!(warnings.load(SeqCst), 1, "100 failures, one warning per interval");
}
