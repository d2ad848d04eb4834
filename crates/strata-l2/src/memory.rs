//! `MemoryStorage`: the embedded, byte-bounded backend on `quick_cache`, with per-value expiry.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use strata_core::{Clock, PutOutcome, Rejection, SystemClock};

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

impl Weighter<String, Entry> for EntryWeighter {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        key.len() as u64 + value_weight(&entry.value) + ENTRY_OVERHEAD_BYTES
    }
}

#[derive(Clone)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<String, Entry> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: String, _entry: Entry) {
        self.0.fetch_add(1, Relaxed);
    }
}

type Inner = Cache<String, Entry, EntryWeighter, DefaultHashBuilder, CountEvictions>;

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
        let entry = self.cache.get(key)?;
        if self.clock.now() >= entry.expires_at {
            let expired = entry.expires_at;
            self.cache.remove_if(key, |e| e.expires_at == expired);
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

    fn insert(&self, key: &str, value: Value, ttl: Duration) -> Result<PutOutcome, Error> {
        let value_bytes = value_weight(&value);
        if value_bytes > self.max_value_bytes {
            return Ok(PutOutcome::Rejected(Rejection::TooLarge {
                weight_bytes: key.len() as u64 + value_bytes + ENTRY_OVERHEAD_BYTES,
                limit_bytes: self.max_value_bytes,
            }));
        }
        let Some(expires_at) = self.clock.now().checked_add(ttl) else {
            return Err(Error::config("l2 memory ttl overflows the clock"));
        };
        self.cache.insert(key.to_owned(), Entry { value, expires_at });
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
    fn get_result_now(&self, key: &str, now: SystemTime) -> ResultLookup {
        let Some(entry) = self.cache.get(key) else { return ResultLookup::Absent };
        let Value::Result(stored) = entry.value else { return ResultLookup::Unsupported };
        if stored.result().is_expired_at(now) {
            let expires_at = entry.expires_at;
            self.cache.remove_if(key, |e| e.expires_at == expires_at);
            return ResultLookup::Expired;
        }
        ResultLookup::Found(stored)
    }

    fn set_result_now(
        &self,
        key: &str,
        value: StoredResult,
        ttl: Duration,
    ) -> Option<Result<PutOutcome, Error>> {
        Some(self.insert(key, Value::Result(value), ttl))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        Ok(self.lookup(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        Ok(keys.iter().map(|k| self.lookup(k)).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<PutOutcome, Error> {
        self.insert(key, Value::Bytes(value), ttl)
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.cache.remove(key);
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
