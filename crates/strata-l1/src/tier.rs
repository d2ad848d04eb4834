//! The hot tier itself: lookups, inserts, expiry, collision checks and counters.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Lifecycle, OptionsBuilder, Weighter};
use strata_core::{
    async_trait, CacheKey, CacheTier, CachedResult, Clock, Error, KeyDigest, NowLookup, PutOutcome,
    Rejection, TierStats,
};

use crate::config::{shard_count, HotTierBuilder, QUICK_CACHE_HOT_SHARE};
use crate::CoarseClock;

/// The stored key: the digest, and the canonical encoding so that a digest collision is a
/// different key to quick_cache (both entries are kept, neither is served for the other).
struct StoredKey {
    digest: u128,
    canonical: Bytes,
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.canonical == other.canonical
    }
}

impl Eq for StoredKey {}

impl Hash for StoredKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.digest);
    }
}

/// Looks a key up by its digest and borrowed canonical bytes, without building a [`StoredKey`].
struct Probe<'a> {
    digest: u128,
    canonical: &'a [u8],
}

impl<'a> Probe<'a> {
    #[inline]
    fn of(key: &'a CacheKey) -> Self {
        Probe { digest: key.digest().as_u128(), canonical: key.canonical() }
    }
}

impl Hash for Probe<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.digest);
    }
}

impl Equivalent<StoredKey> for Probe<'_> {
    #[inline]
    fn equivalent(&self, stored: &StoredKey) -> bool {
        stored.digest == self.digest && stored.canonical == self.canonical
    }
}

#[derive(Clone, Copy, Default)]
struct EntryWeighter;

impl Weighter<StoredKey, CachedResult> for EntryWeighter {
    #[inline]
    fn weight(&self, key: &StoredKey, result: &CachedResult) -> u64 {
        entry_weight(key.canonical.len(), result)
    }
}

/// The digest, the canonical key and the result's own weight.
fn entry_weight(canonical_len: usize, result: &CachedResult) -> u64 {
    16 + canonical_len as u64 + result.weight_bytes()
}

/// Keys are already uniform 128-bit digests: hashing them again would only cost time.
#[derive(Clone, Copy, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u128(&mut self, digest: u128) {
        self.0 = (digest as u64) ^ ((digest >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for digests; a plain FNV-1a keeps the hasher total for any other input.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

#[derive(Clone, Copy, Default)]
struct BuildDigestHasher;

impl BuildHasher for BuildDigestHasher {
    type Hasher = DigestHasher;

    #[inline]
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0xcbf2_9ce4_8422_2325)
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    rejections: AtomicU64,
    collisions: AtomicU64,
}

/// Counts evictions as quick_cache makes them.
#[derive(Clone)]
struct CountEvictions(Arc<Counters>);

impl Lifecycle<StoredKey, CachedResult> for CountEvictions {
    type RequestState = ();

    #[inline]
    fn on_evict(&self, _state: &mut (), _key: StoredKey, _result: CachedResult) {
        self.0.evictions.fetch_add(1, Relaxed);
    }
}

/// The default coarse clock is read inline; an injected one through its trait object.
enum TtlClock {
    Coarse(CoarseClock),
    Injected(Arc<dyn Clock>),
}

impl TtlClock {
    #[inline]
    fn now(&self) -> SystemTime {
        match self {
            TtlClock::Coarse(clock) => clock.now(),
            TtlClock::Injected(clock) => clock.now(),
        }
    }
}

type Inner = Cache<StoredKey, CachedResult, EntryWeighter, BuildDigestHasher, CountEvictions>;

/// The in-process hot tier. See the [crate docs](crate).
pub struct HotTier {
    cache: Inner,
    clock: TtlClock,
    counters: Arc<Counters>,
    capacity_bytes: u64,
    max_entry_bytes: u64,
    name: String,
}

impl HotTier {
    /// Starts building a hot tier.
    pub fn builder() -> HotTierBuilder {
        HotTierBuilder::default()
    }

    pub(crate) fn from_builder(b: HotTierBuilder, max_entry_bytes: u64) -> Self {
        let max_shards =
            b.max_shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get() * 4));
        let shards = shard_count(b.capacity_bytes, max_entry_bytes, max_shards);
        // Round the capacity down to a multiple of the shard count: quick_cache gives each shard
        // the ceiling of capacity / shards, and their sum must not exceed what the user configured.
        let capacity_bytes = b.capacity_bytes - b.capacity_bytes % shards as u64;
        let estimated_items =
            usize::try_from((capacity_bytes / b.estimated_entry_bytes).max(64)).unwrap_or(usize::MAX);
        let counters = Arc::new(Counters::default());
        let mut options = OptionsBuilder::new();
        options.weight_capacity(capacity_bytes).estimated_items_capacity(estimated_items).shards(shards);
        let cache = match options.build() {
            Ok(options) => Cache::with_options(
                options,
                EntryWeighter,
                BuildDigestHasher,
                CountEvictions(counters.clone()),
            ),
            // Unreachable: both required options are set above. Fall back to the same layout.
            Err(_) => Cache::with(
                estimated_items,
                capacity_bytes,
                EntryWeighter,
                BuildDigestHasher,
                CountEvictions(counters.clone()),
            ),
        };
        // quick_cache may lower the shard count (never raise it), which only enlarges shards; the
        // effective per-entry limit is whatever the built shards really admit.
        let admitted = (cache.shard_capacity() as f64 * QUICK_CACHE_HOT_SHARE) as u64;
        Self {
            cache,
            clock: match b.clock {
                Some(clock) => TtlClock::Injected(clock),
                None => TtlClock::Coarse(CoarseClock::new()),
            },
            counters,
            capacity_bytes,
            max_entry_bytes: max_entry_bytes.min(admitted),
            name: b.name,
        }
    }

    /// Looks up a key without awaiting. Expired entries are removed and count as misses.
    #[inline]
    pub fn lookup(&self, key: &CacheKey) -> Option<CachedResult> {
        self.lookup_probe(&Probe::of(key))
    }

    /// Looks a key up by its digest and canonical bytes, as a [`KeyBuilder`](strata_core::KeyBuilder)
    /// has them before it builds an owned [`CacheKey`]: a hit then allocates nothing at all.
    #[inline]
    pub fn lookup_parts(&self, digest: KeyDigest, canonical: &[u8]) -> Option<CachedResult> {
        self.lookup_probe(&Probe { digest: digest.as_u128(), canonical })
    }

    #[inline]
    fn lookup_probe(&self, probe: &Probe<'_>) -> Option<CachedResult> {
        let Some(result) = self.cache.get(probe) else {
            self.counters.misses.fetch_add(1, Relaxed);
            return None;
        };
        if result.is_expired_at(self.clock.now()) {
            if self.cache.remove_if(probe, |stored| *stored == result).is_some() {
                self.counters.expirations.fetch_add(1, Relaxed);
            }
            self.counters.misses.fetch_add(1, Relaxed);
            return None;
        }
        self.counters.hits.fetch_add(1, Relaxed);
        Some(result)
    }

    /// Stores a result, replacing any previous one for the key. Refuses (and counts) results
    /// that are already expired or heavier than the per-entry limit.
    pub fn insert(&self, key: &CacheKey, result: CachedResult) -> PutOutcome {
        if result.is_expired_at(self.clock.now()) {
            self.counters.rejections.fetch_add(1, Relaxed);
            return PutOutcome::Rejected(Rejection::Expired);
        }
        let weight_bytes = entry_weight(key.canonical().len(), &result);
        if weight_bytes > self.max_entry_bytes {
            self.counters.rejections.fetch_add(1, Relaxed);
            return PutOutcome::Rejected(Rejection::TooLarge {
                weight_bytes,
                limit_bytes: self.max_entry_bytes,
            });
        }
        let stored = StoredKey { digest: key.digest().as_u128(), canonical: key.canonical().clone() };
        self.cache.insert(stored, result);
        self.counters.inserts.fetch_add(1, Relaxed);
        PutOutcome::Stored
    }

    /// Removes a key, if present.
    pub fn invalidate(&self, key: &CacheKey) {
        self.cache.remove(&Probe::of(key));
    }

    /// Removes everything.
    pub fn clear_all(&self) {
        self.cache.clear();
    }

    /// The capacity in bytes actually in force (the configured one rounded down to the shard count).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The heaviest entry accepted, in bytes.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    /// A snapshot of the counters and of what is held now.
    pub fn snapshot(&self) -> TierStats {
        let c = &self.counters;
        let mut stats = TierStats::default();
        stats.hits = c.hits.load(Relaxed);
        stats.misses = c.misses.load(Relaxed);
        stats.inserts = c.inserts.load(Relaxed);
        stats.evictions = c.evictions.load(Relaxed);
        stats.expirations = c.expirations.load(Relaxed);
        stats.rejections = c.rejections.load(Relaxed);
        stats.collisions = c.collisions.load(Relaxed);
        stats.entries = self.cache.len() as u64;
        stats.bytes = self.cache.weight();
        stats.capacity_bytes = self.capacity_bytes;
        stats
    }

    #[cfg(test)]
    pub(crate) fn insert_raw_for_test(&self, digest: u128, canonical: Bytes, result: CachedResult) {
        self.cache.insert(StoredKey { digest, canonical }, result);
    }

    #[cfg(test)]
    pub(crate) fn shards_for_test(&self) -> usize {
        self.cache.num_shards()
    }
}

impl fmt::Debug for HotTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotTier")
            .field("name", &self.name)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

#[async_trait]
impl CacheTier for HotTier {
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn get_now(&self, key: &CacheKey) -> NowLookup {
        match self.lookup(key) {
            Some(result) => NowLookup::Hit(result),
            None => NowLookup::Miss,
        }
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<CachedResult>, Error> {
        Ok(self.lookup(key))
    }

    async fn put(&self, key: &CacheKey, value: CachedResult) -> Result<PutOutcome, Error> {
        Ok(self.insert(key, value))
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), Error> {
        self.invalidate(key);
        Ok(())
    }

    async fn clear(&self) -> Result<(), Error> {
        self.clear_all();
        Ok(())
    }

    fn stats(&self) -> TierStats {
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strata_core::{KeyScope, ManualClock, SettingsDigest};

    fn key(n: u64) -> CacheKey {
        let scope = KeyScope::new("db", "role", SettingsDigest::default());
        CacheKey::builder(&scope, b"SELECT $1")
            .param(strata_core::TypeOid::INT8, strata_core::Format::Text, n.to_string().as_bytes())
            .build()
    }

    #[test]
    fn a_digest_collision_is_a_miss_not_another_keys_result() {
        let clock = Arc::new(ManualClock::fixed());
        let l1 = HotTier::builder().with_clock(clock.clone()).build().unwrap_or_else(|e| panic!("{e}"));
        let wanted = key(1);
        let impostor = key(2);
        let result = CachedResult::builder(Bytes::from_static(b"row of key 2"))
            .with_created_at(clock.now())
            .with_ttl(Duration::from_secs(60))
            .build();
        // Forge an entry of another canonical key under the wanted key's digest.
        l1.insert_raw_for_test(wanted.digest().as_u128(), impostor.canonical().clone(), result);
        assert!(l1.lookup(&wanted).is_none(), "served another key's result on a digest collision");
        // Both live side by side: the real owner of the digest is stored and served as well.
        let own = CachedResult::builder(Bytes::from_static(b"row of key 1"))
            .with_created_at(clock.now())
            .with_ttl(Duration::from_secs(60))
            .build();
        assert_eq!(l1.insert(&wanted, own.clone()), PutOutcome::Stored);
        assert_eq!(l1.lookup(&wanted), Some(own));
        let stats = l1.snapshot();
        assert_eq!((stats.entries, stats.misses, stats.hits), (2, 1, 1));
    }

    #[test]
    fn shard_layout_admits_an_entry_of_exactly_the_limit() {
        for (capacity, limit) in [(1 << 20, 60_000), (64 << 20, 4 << 20), (10_000, 9_000), (3 << 20, 100_000)]
        {
            let l1 = HotTier::builder()
                .with_capacity_bytes(capacity)
                .with_max_entry_bytes(limit)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(l1.max_entry_bytes(), limit, "capacity {capacity}: {} shards", l1.shards_for_test());
            let k = key(7);
            let overhead =
                16 + k.canonical().len() as u64 + CachedResult::builder(Bytes::new()).build().weight_bytes();
            let payload = Bytes::from(vec![7u8; (limit - overhead) as usize]);
            let result = CachedResult::builder(payload)
                .with_created_at(std::time::SystemTime::now())
                .with_ttl(Duration::from_secs(60))
                .build();
            assert_eq!(l1.insert(&k, result), PutOutcome::Stored);
            assert!(l1.lookup(&k).is_some(), "capacity {capacity}: an entry at the limit was dropped");
        }
    }
}
