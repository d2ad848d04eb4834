//! The warm tier against the harness's Redis: round trip, batch, native expiry, prefix isolation, corruption written straight into Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{key, raw_connection, result, result_at, service, unique_prefix};
use redis::AsyncCommands;
use strata_core::{CacheKey, CacheTier, NowLookup, PutOutcome};
use strata_l2::{RedisStorage, Storage, WarmTier};

/// A tier on the shared test Redis under a prefix of its own. The deadline is generous: these
/// tests check behaviour, not speed, on a busy debug build.
fn tier(prefix: &str) -> WarmTier {
    let storage =
        RedisStorage::standalone(service("STRATA_TEST_REDIS_URL")).with_key_prefix(prefix).build().unwrap();
    WarmTier::builder(Arc::new(storage)).with_deadline(Duration::from_secs(2)).build().unwrap()
}

fn redis_key(prefix: &str, key: &CacheKey) -> String {
    format!("{prefix}{}", key.digest())
}

#[tokio::test]
async fn round_trip_batch_and_remove() {
    let prefix = unique_prefix("round_trip");
    let l2 = tier(&prefix);
    let small = result(&b"row: alice"[..]);
    let large = result((0..64 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    assert_eq!(l2.put(&key(1), small.clone()).await.unwrap(), PutOutcome::Stored);
    assert_eq!(l2.put(&key(2), large.clone()).await.unwrap(), PutOutcome::Stored);
    assert_eq!(l2.get(&key(1)).await.unwrap(), Some(small.clone()));
    assert!(matches!(l2.get_now(&key(1)), NowLookup::WouldAwait), "redis is never asked synchronously");
    assert_eq!(l2.get(&key(2)).await.unwrap(), Some(large.clone()));
    let many = l2.get_many(&[key(2), key(3), key(1)]).await.unwrap();
    assert_eq!(many, vec![Some(large), None, Some(small)]);

    // Stored under the prefix with the digest, compressed (the large payload is repetitive).
    let mut raw = raw_connection(&service("STRATA_TEST_REDIS_URL")).await;
    let stored: Vec<u8> = raw.get(redis_key(&prefix, &key(2))).await.unwrap();
    assert_eq!(&stored[..4], b"SL2V");
    assert!(stored.len() < 16 * 1024, "{}", stored.len());

    l2.remove(&key(1)).await.unwrap();
    assert_eq!(l2.get(&key(1)).await.unwrap(), None);
    l2.clear().await.unwrap();
    let exists: bool = raw.exists(redis_key(&prefix, &key(2))).await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn values_expire_natively_after_their_remaining_ttl() {
    let prefix = unique_prefix("ttl");
    let l2 = tier(&prefix);
    let mut raw = raw_connection(&service("STRATA_TEST_REDIS_URL")).await;

    // Filled 20 s ago with a 30 s TTL: Redis keeps it for the remaining 10 s.
    let old = result_at(&b"x"[..], SystemTime::now() - Duration::from_secs(20), Duration::from_secs(30));
    l2.put(&key(1), old).await.unwrap();
    let pttl: i64 = raw.pttl(redis_key(&prefix, &key(1))).await.unwrap();
    assert!((9_000..=10_000).contains(&pttl), "PTTL {pttl}");

    // A short TTL, and Redis's own expiry removes the key.
    l2.put(&key(2), result_at(&b"y"[..], SystemTime::now(), Duration::from_millis(300))).await.unwrap();
    assert!(l2.get(&key(2)).await.unwrap().is_some());
    let start = Instant::now();
    loop {
        let exists: bool = raw.exists(redis_key(&prefix, &key(2))).await.unwrap();
        if !exists {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "redis did not expire the key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l2.get(&key(2)).await.unwrap(), None);
    l2.clear().await.unwrap();
}

#[tokio::test]
async fn prefixes_isolate_deployments_sharing_one_redis() {
    let (pa, pb) = (unique_prefix("iso_a"), unique_prefix("iso_b"));
    let (a, b) = (tier(&pa), tier(&pb));
    a.put(&key(1), result(&b"from a"[..])).await.unwrap();
    assert_eq!(b.get(&key(1)).await.unwrap(), None, "b does not see a's entry");
    b.put(&key(1), result(&b"from b"[..])).await.unwrap();
    assert_eq!(a.get(&key(1)).await.unwrap().unwrap().payload(), &Bytes::from_static(b"from a"));
    b.clear().await.unwrap();
    assert_eq!(b.get(&key(1)).await.unwrap(), None);
    assert!(a.get(&key(1)).await.unwrap().is_some(), "clearing b leaves a alone");

    // A prefix with glob characters clears only itself.
    let glob = format!("{pa}*");
    let g = tier(&glob);
    g.put(&key(2), result(&b"g"[..])).await.unwrap();
    g.clear().await.unwrap();
    assert!(a.get(&key(1)).await.unwrap().is_some(), "a `*` in a prefix is not a wildcard");
    a.clear().await.unwrap();
}

#[tokio::test]
async fn corrupt_values_written_into_redis_are_misses_and_deleted() {
    let prefix = unique_prefix("corrupt");
    let l2 = tier(&prefix);
    let mut raw = raw_connection(&service("STRATA_TEST_REDIS_URL")).await;
    l2.put(&key(100), result(vec![7u8; 3000])).await.unwrap();
    let good: Vec<u8> = raw.get(redis_key(&prefix, &key(100))).await.unwrap();

    let mut old_version = good.clone();
    old_version[4] = 0;
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..500)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("header only", good[..10].to_vec()),
        ("empty", Vec::new()),
        ("random", random),
        ("old version", old_version),
        ("flipped byte", flipped),
        ("foreign", b"{\"cached_by\":\"another app\"}".to_vec()),
    ];
    for (n, (what, bytes)) in cases.iter().enumerate() {
        let k = key(n as u64);
        let rk = redis_key(&prefix, &k);
        let () = raw.set(&rk, bytes.as_slice()).await.unwrap();
        assert_eq!(l2.get(&k).await.unwrap(), None, "{what} is a miss");
        let exists: bool = raw.exists(&rk).await.unwrap();
        assert!(!exists, "{what} is deleted");
    }
    // The same through the batch path.
    let k = key(50);
    let () = raw.set(redis_key(&prefix, &k), &b"SL2V\x01"[..]).await.unwrap();
    assert_eq!(l2.get_many(&[k.clone(), key(100)]).await.unwrap()[0], None);
    let exists: bool = raw.exists(redis_key(&prefix, &k)).await.unwrap();
    assert!(!exists);
    assert_eq!(l2.stats().corrupt, cases.len() as u64 + 1);
    assert_eq!(l2.stats().errors, 0, "corruption is not a storage failure");
    assert!(l2.get(&key(100)).await.unwrap().is_some(), "the good value is still served");
    l2.clear().await.unwrap();
}

#[tokio::test]
async fn storage_can_be_used_directly() {
    let prefix = unique_prefix("direct");
    let storage =
        RedisStorage::standalone(service("STRATA_TEST_REDIS_URL")).with_key_prefix(&prefix).build().unwrap();
    assert_eq!(storage.redis_key("abc"), format!("{prefix}abc"));
    storage.set("abc", Bytes::from_static(b"v"), Duration::from_secs(10)).await.unwrap();
    let got = storage.get_many(&["abc".to_owned(), "zzz".to_owned()]).await.unwrap();
    assert_eq!(got, vec![Some(Bytes::from_static(b"v")), None]);
    assert_eq!(storage.get_many(&[]).await.unwrap(), Vec::<Option<Bytes>>::new());
    storage.clear().await.unwrap();
    assert_eq!(storage.get("abc").await.unwrap(), None);
}
