//! `MemoryStorage`: the embedded, byte-bounded backend on `quick_cache`, with per-value expiry.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Equivalent, Lifecycle, OptionsBuilder, Weighter};
use strata_core::{Clock, KeyDigest, PutOutcome, Rejection, SystemClock};

use crate::codec::Codec;
use crate::{Error, ResultLookup, Storage, StorageUsage, StoredResult};

/// The share of a shard's capacity quick_cache admits for one item; heavier items would be
/// dropped by quick_cache without notice, so the storage refuses them first.
const QUICK_CACHE_HOT_SHARE: f64 = 0.97;
/// Bytes a value costs beyond its key and bytes: the entry, the expiry and quick_cache's bookkeeping.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The codec that turns a result kept as a value into bytes for [`Storage::get`]: never
/// compresses (the bytes stay in the process) and accepts any size the tier stored.
const PLAIN: Codec = Codec { compress_above_bytes: usize::MAX, max_payload_bytes: u32::MAX as usize };

/// A key of the map: the tier's keys are digests written as 32 lowercase hex digits, kept as the
/// number so the hit path neither formats nor hashes text; any other key is kept as text.
#[derive(Clone, PartialEq, Eq)]
enum MemKey {
    Digest(u128),
    Text(Box<str>),
}

/// How a key is looked up: the same, borrowed. Hashes exactly as [`MemKey`] does.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    Digest(u128),
    Text(&'a str),
}

impl<'a> KeyRef<'a> {
    fn parse(key: &'a str) -> Self {
        let digits = key.as_bytes();
        if digits.len() == 32 && digits.iter().all(|&c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            if let Ok(n) = u128::from_str_radix(key, 16) {
                return KeyRef::Digest(n);
            }
        }
        KeyRef::Text(key)
    }

    fn to_owned_key(self) -> MemKey {
        match self {
            KeyRef::Digest(n) => MemKey::Digest(n),
            KeyRef::Text(t) => MemKey::Text(t.into()),
        }
    }

    /// Bytes the key costs, as its text.
    fn len(self) -> u64 {
        match self {
            KeyRef::Digest(_) => 32,
            KeyRef::Text(t) => t.len() as u64,
        }
    }
}

impl MemKey {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            MemKey::Digest(n) => KeyRef::Digest(*n),
            MemKey::Text(t) => KeyRef::Text(t),
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            KeyRef::Digest(n) => state.write_u128(*n),
            KeyRef::Text(t) => {
                state.write_u8(1);
                t.hash(state);
            }
        }
    }
}

impl Hash for MemKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl Equivalent<MemKey> for KeyRef<'_> {
    fn equivalent(&self, key: &MemKey) -> bool {
        match (self, key) {
            (KeyRef::Digest(a), MemKey::Digest(b)) => a == b,
            (KeyRef::Text(a), MemKey::Text(b)) => *a == &**b,
            _ => false,
        }
    }
}

#[derive(Clone)]
enum Value {
    /// Bytes given to [`Storage::set`].
    Bytes(Bytes),
    /// A result given to [`Storage::set_result_now`]: cloning it costs one reference count.
    Result(StoredResult),
}

#[derive(Clone)]
struct Entry {
    value: Value,
    expires_at: SystemTime,
}

fn value_weight(value: &Value) -> u64 {
    match value {
        Value::Bytes(bytes) => bytes.len() as u64,
        Value::Result(stored) => stored.canonical().len() as u64 + stored.result().weight_bytes(),
    }
}

#[derive(Clone, Copy)]
struct EntryWeighter;

impl Weighter<MemKey, Entry> for EntryWeighter {
    fn weight(&self, key: &MemKey, entry: &Entry) -> u64 {
        key.as_ref().len() + value_weight(&entry.value) + ENTRY_OVERHEAD_BYTES
    }
}

#[derive(Clone)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<MemKey, Entry> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: MemKey, _entry: Entry) {
        self.0.fetch_add(1, Relaxed);
    }
}

type Inner = Cache<MemKey, Entry, EntryWeighter, DefaultHashBuilder, CountEvictions>;

/// The embedded backend: values in this process's memory, bounded by their size in bytes, each
/// expiring after its TTL (read from an injectable [`Clock`]). Nothing to install; nothing shared
/// with other processes. The default backend of [`StorageConfig`](crate::StorageConfig).
pub struct MemoryStorage {
    cache: Inner,
    clock: Arc<dyn Clock>,
    evictions: Arc<AtomicU64>,
    capacity_bytes: u64,
    max_value_bytes: u64,
}

/// Builds a [`MemoryStorage`]. Every setter documents its default.
#[derive(Clone)]
pub struct MemoryStorageBuilder {
    capacity_bytes: u64,
    max_value_bytes: Option<u64>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for MemoryStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStorageBuilder")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStorageBuilder {
    fn default() -> Self {
        Self { capacity_bytes: 256 << 20, max_value_bytes: None, clock: Arc::new(SystemClock) }
    }
}

impl MemoryStorageBuilder {
    /// The most bytes held (keys, values and a fixed per-value overhead). Default: 256 MiB.
    #[must_use]
    pub fn with_capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// The largest value accepted; larger ones are refused with
    /// [`Rejection::TooLarge`]. Default: 1/16 of the capacity.
    #[must_use]
    pub fn with_max_value_bytes(mut self, bytes: u64) -> Self {
        self.max_value_bytes = Some(bytes);
        self
    }

    /// The clock that decides expiry. Default: the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the storage; fails on a capacity below 4 KiB or a value limit above 97 % of it.
    pub fn build(self) -> Result<MemoryStorage, Error> {
        if self.capacity_bytes < 4096 {
            return Err(Error::config(format!(
                "l2 memory capacity must be at least 4096 bytes, got {}",
                self.capacity_bytes
            )));
        }
        let ceiling = (self.capacity_bytes as f64 * QUICK_CACHE_HOT_SHARE) as u64;
        let max_value_bytes = self.max_value_bytes.unwrap_or(self.capacity_bytes / 16);
        if max_value_bytes == 0 || max_value_bytes > ceiling {
            return Err(Error::config(format!(
                "l2 memory max value size must be between 1 and {ceiling} bytes (97% of capacity), got {max_value_bytes}"
            )));
        }
        // As many shards as the cores can use, but few enough that each can hold the largest value.
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get() * 4) as u64;
        let by_value = (ceiling / (max_value_bytes + ENTRY_OVERHEAD_BYTES + 64)).clamp(1, cores);
        let shards = 1usize << (63 - by_value.leading_zeros());
        // quick_cache gives each shard the ceiling of capacity / shards; keep their sum within bounds.
        let capacity_bytes = self.capacity_bytes - self.capacity_bytes % shards as u64;
        let evictions = Arc::new(AtomicU64::new(0));
        let estimated_items = usize::try_from((capacity_bytes / 2048).max(64)).unwrap_or(usize::MAX);
        let mut options = OptionsBuilder::new();
        options.weight_capacity(capacity_bytes).estimated_items_capacity(estimated_items).shards(shards);
        let options = options.build().map_err(|e| Error::config(format!("l2 memory options: {e:?}")))?;
        let cache = Cache::with_options(
            options,
            EntryWeighter,
            DefaultHashBuilder::default(),
            CountEvictions(evictions.clone()),
        );
        let admitted = (cache.shard_capacity() as f64 * QUICK_CACHE_HOT_SHARE) as u64;
        Ok(MemoryStorage {
            cache,
            clock: self.clock,
            evictions,
            capacity_bytes,
            max_value_bytes: max_value_bytes.min(admitted.saturating_sub(ENTRY_OVERHEAD_BYTES + 64)),
        })
    }
}

impl MemoryStorage {
    /// Starts building a memory storage.
    pub fn builder() -> MemoryStorageBuilder {
        MemoryStorageBuilder::default()
    }

    /// The byte capacity in effect (the configured one, rounded down to a multiple of the shard count).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The largest value accepted.
    pub fn max_value_bytes(&self) -> u64 {
        self.max_value_bytes
    }

    fn lookup(&self, key: &str) -> Option<Bytes> {
        let key = KeyRef::parse(key);
        let entry = self.cache.get(&key)?;
        if self.clock.now() >= entry.expires_at {
            let expired = entry.expires_at;
            self.cache.remove_if(&key, |e| e.expires_at == expired);
            return None;
        }
        match entry.value {
            Value::Bytes(bytes) => Some(bytes),
            // Rare: someone reads a kept result through the byte interface. Every result the
            // tier stored fits the plain codec, so this encodes; the fallback is a miss.
            Value::Result(stored) => {
                PLAIN.encode_canonical(stored.canonical(), stored.result()).map(Bytes::from)
            }
        }
    }

    fn insert(&self, key: KeyRef<'_>, value: Value, ttl: Duration) -> Result<PutOutcome, Error> {
        let value_bytes = value_weight(&value);
        if value_bytes > self.max_value_bytes {
            return Ok(PutOutcome::Rejected(Rejection::TooLarge {
                weight_bytes: key.len() + value_bytes + ENTRY_OVERHEAD_BYTES,
                limit_bytes: self.max_value_bytes,
            }));
        }
        let Some(expires_at) = self.clock.now().checked_add(ttl) else {
            return Err(Error::config("l2 memory ttl overflows the clock"));
        };
        self.cache.insert(key.to_owned_key(), Entry { value, expires_at });
        Ok(PutOutcome::Stored)
    }
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .field("capacity_bytes", &self.capacity_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "memory"
    }

    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        Some(self.lookup(key))
    }

    /// One hash lookup and two reference counts: no clock read of its own (the expiry that
    /// matters is the result's, at the tier's `now`), no decoding.
    fn get_result_now(&self, key: KeyDigest, now: SystemTime) -> ResultLookup {
        let key = KeyRef::Digest(key.as_u128());
        let Some(entry) = self.cache.get(&key) else { return ResultLookup::Absent };
        let Value::Result(stored) = entry.value else { return ResultLookup::Unsupported };
        if stored.result().is_expired_at(now) {
            let expires_at = entry.expires_at;
            self.cache.remove_if(&key, |e| e.expires_at == expires_at);
            return ResultLookup::Expired;
        }
        ResultLookup::Found(stored)
    }

    fn set_result_now(
        &self,
        key: KeyDigest,
        value: StoredResult,
        ttl: Duration,
    ) -> Option<Result<PutOutcome, Error>> {
        Some(self.insert(KeyRef::Digest(key.as_u128()), Value::Result(value), ttl))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        Ok(self.lookup(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        Ok(keys.iter().map(|k| self.lookup(k)).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<PutOutcome, Error> {
        self.insert(KeyRef::parse(key), Value::Bytes(value), ttl)
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.cache.remove(&KeyRef::parse(key));
        Ok(())
    }

    async fn clear(&self) -> Result<(), Error> {
        self.cache.clear();
        Ok(())
    }

    fn usage(&self) -> StorageUsage {
        StorageUsage {
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            capacity_bytes: self.capacity_bytes,
            evictions: self.evictions.load(Relaxed),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn digest_keys_and_text_keys_stay_apart() {
        let storage = MemoryStorage::builder().build().unwrap();
        let lower = "0123456789abcdef0123456789abcdef";
        let upper = lower.to_uppercase();
        let ttl = Duration::from_secs(60);
        storage.set(lower, Bytes::from_static(b"l"), ttl).await.unwrap();
        storage.set(&upper, Bytes::from_static(b"u"), ttl).await.unwrap();
        storage.set("short", Bytes::from_static(b"s"), ttl).await.unwrap();
        assert_eq!(storage.get(lower).await.unwrap(), Some(Bytes::from_static(b"l")));
        assert_eq!(storage.get(&upper).await.unwrap(), Some(Bytes::from_static(b"u")));
        assert_eq!(storage.get("short").await.unwrap(), Some(Bytes::from_static(b"s")));
        assert_eq!(storage.get(&lower[1..]).await.unwrap(), None);
        assert_eq!(storage.usage().entries, 3);
        // The hex key and its digest name one entry.
        let digest = KeyDigest::from_bytes(u128::from_str_radix(lower, 16).unwrap().to_be_bytes());
        assert_eq!(
            storage.get_result_now(digest, SystemTime::now()),
            ResultLookup::Unsupported,
            "held as bytes"
        );
        storage.delete(lower).await.unwrap();
        assert_eq!(storage.get_result_now(digest, SystemTime::now()), ResultLookup::Absent);
        assert_eq!(storage.usage().entries, 2);
    }
}
