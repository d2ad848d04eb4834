//! Behavior of the hot tier a user would notice: its byte bound, TTLs, refusals and concurrency.

// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use strata_core::{
    CacheKey, CacheTier, CachedResult, Clock, Format, KeyScope, ManualClock, NowLookup, PutOutcome,
    Rejection, SettingsDigest, TableName, TypeOid,
};
use strata_l1::HotTier;

fn key(n: u64) -> CacheKey {
    let scope = KeyScope::new("shop", "app", SettingsDigest::default());
    CacheKey::builder(&scope, b"SELECT * FROM items WHERE id = $1")
        .param(TypeOid::INT8, Format::Text, n.to_string().as_bytes())
        .build()
}

/// A payload that names its key, so a test can tell whose result it got.
fn payload(n: u64, len: usize) -> Bytes {
    let mut bytes = format!("item-{n}:").into_bytes();
    bytes.resize(len.max(bytes.len()), b'.');
    Bytes::from(bytes)
}

fn result(n: u64, len: usize, created_at: SystemTime, ttl: Duration) -> CachedResult {
    CachedResult::builder(payload(n, len))
        .with_row_count(1)
        .with_dependency(TableName::new("items"), 1)
        .with_created_at(created_at)
        .with_ttl(ttl)
        .build()
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn never_holds_more_bytes_than_its_capacity_under_a_mixed_workload() {
    let capacity = 256 * 1024;
    let l1 =
        HotTier::builder().with_capacity_bytes(capacity).with_max_entry_bytes(16 * 1024).build().unwrap();
    let now = SystemTime::now();
    let mut rng = Lcg(42);
    let mut stored_bytes = 0u64;
    for step in 0..20_000 {
        let n = rng.next() % 2_000;
        match rng.next() % 10 {
            // Puts of sizes from a few bytes to the limit, replacing keys often.
            0..=4 => {
                let len = match rng.next() % 4 {
                    0 => 10,
                    1 => 500,
                    2 => 4_000,
                    _ => (rng.next() % 15_000) as usize,
                };
                let r = result(n, len, now, Duration::from_secs(600));
                if l1.insert(&key(n), r) == PutOutcome::Stored {
                    stored_bytes += len as u64;
                }
            }
            5 => l1.invalidate(&key(n)),
            _ => {
                if let Some(hit) = l1.lookup(&key(n)) {
                    assert!(
                        hit.payload().starts_with(format!("item-{n}:").as_bytes()),
                        "wrong value for {n}"
                    );
                }
            }
        }
        let stats = l1.snapshot();
        assert!(stats.bytes <= capacity, "step {step}: holds {} bytes, capacity {capacity}", stats.bytes);
    }
    let stats = l1.snapshot();
    assert!(stored_bytes > 10 * capacity, "the workload must overflow the cache many times over");
    assert!(stats.evictions > 0, "overflowing the cache must evict: {stats:?}");
    assert!(stats.bytes > capacity / 2, "the cache should stay well filled: {stats:?}");
}

#[test]
fn an_entry_expires_at_its_ttl_on_the_injected_clock() {
    let clock = Arc::new(ManualClock::fixed());
    let l1 = HotTier::builder().with_clock(clock.clone()).build().unwrap();
    let k = key(1);
    assert_eq!(l1.insert(&k, result(1, 100, clock.now(), Duration::from_secs(10))), PutOutcome::Stored);

    clock.advance(Duration::from_secs(9));
    let hit = l1.lookup(&k).expect("still fresh at 9 s");
    assert_eq!(hit.remaining_ttl(clock.now()), Duration::from_secs(1));

    clock.advance(Duration::from_secs(1));
    assert!(l1.lookup(&k).is_none(), "expired at exactly 10 s");
    let stats = l1.snapshot();
    assert_eq!((stats.hits, stats.misses, stats.expirations, stats.entries), (1, 1, 1, 0));

    // A result that arrives already expired (say, promoted from a slower tier too late) is refused.
    let stale = result(2, 100, clock.now() - Duration::from_secs(20), Duration::from_secs(10));
    assert_eq!(l1.insert(&key(2), stale), PutOutcome::Rejected(Rejection::Expired));
    assert!(l1.lookup(&key(2)).is_none());
}

#[test]
fn an_entry_over_the_limit_is_refused_and_counted_never_silently_dropped() {
    let l1 = HotTier::builder().with_capacity_bytes(1 << 20).with_max_entry_bytes(8 * 1024).build().unwrap();
    let now = SystemTime::now();
    let outcome = l1.insert(&key(1), result(1, 9 * 1024, now, Duration::from_secs(60)));
    match outcome {
        PutOutcome::Rejected(Rejection::TooLarge { weight_bytes, limit_bytes }) => {
            assert!(weight_bytes > 9 * 1024);
            assert_eq!(limit_bytes, 8 * 1024);
        }
        other => panic!("expected a size refusal, got {other:?}"),
    }
    assert!(l1.lookup(&key(1)).is_none());
    assert_eq!(l1.insert(&key(2), result(2, 7 * 1024, now, Duration::from_secs(60))), PutOutcome::Stored);
    assert!(l1.lookup(&key(2)).is_some());
    let stats = l1.snapshot();
    assert_eq!((stats.rejections, stats.inserts, stats.entries), (1, 1, 1));
}

#[test]
fn concurrent_readers_and_writers_only_ever_see_the_right_values() {
    let l1 = Arc::new(HotTier::builder().with_capacity_bytes(4 << 20).build().unwrap());
    let now = SystemTime::now();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let l1 = l1.clone();
            std::thread::spawn(move || {
                let mut rng = Lcg(t + 1);
                let mut hits = 0u64;
                for _ in 0..20_000 {
                    let n = rng.next() % 500;
                    if rng.next().is_multiple_of(4) {
                        l1.insert(&key(n), result(n, 64 + (n as usize % 900), now, Duration::from_secs(60)));
                    } else if let Some(hit) = l1.lookup(&key(n)) {
                        assert_eq!(
                            hit.payload(),
                            &payload(n, 64 + (n as usize % 900)),
                            "key {n} got another value"
                        );
                        hits += 1;
                    }
                }
                hits
            })
        })
        .collect();
    let hits: u64 = threads.into_iter().map(|t| t.join().expect("no thread panics")).sum();
    let stats = l1.snapshot();
    assert_eq!(stats.hits, hits);
    assert!(hits > 10_000, "a warm cache of 500 keys should mostly hit: {stats:?}");
    assert_eq!(stats.hits + stats.misses, 8 * 20_000 - stats.inserts);
}

#[tokio::test]
async fn works_as_a_cache_tier_object() {
    let l1: Arc<dyn CacheTier> = Arc::new(HotTier::builder().build().unwrap());
    let k = key(5);
    assert_eq!(l1.name(), "l1");
    assert!(matches!(l1.get_now(&k), NowLookup::Miss));
    let r = result(5, 10, SystemTime::now(), Duration::from_secs(60));
    assert_eq!(l1.put(&k, r.clone()).await.unwrap(), PutOutcome::Stored);
    assert_eq!(l1.get(&k).await.unwrap(), Some(r.clone()));
    assert!(matches!(l1.get_now(&k), NowLookup::Hit(hit) if hit == r));
    let many = l1.get_many(&[key(5), key(6)]).await.unwrap();
    assert_eq!(many, vec![Some(r), None]);
    l1.remove(&k).await.unwrap();
    assert_eq!(l1.get(&k).await.unwrap(), None);
    l1.put(&k, result(5, 10, SystemTime::now(), Duration::from_secs(60))).await.unwrap();
    l1.clear().await.unwrap();
    assert_eq!(l1.stats().entries, 0);
}

#[test]
fn debug_shows_sizes_not_payloads_and_the_tier_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HotTier>();
    assert_send_sync::<strata_l1::HotTierBuilder>();
    assert_send_sync::<strata_l1::Error>();
    let l1 = HotTier::builder().build().unwrap();
    l1.insert(&key(1), result(1, 32, SystemTime::now(), Duration::from_secs(60)));
    let shown = format!("{l1:?}");
    assert!(shown.contains("entries: 1") && !shown.contains("item-1"), "{shown}");
}
