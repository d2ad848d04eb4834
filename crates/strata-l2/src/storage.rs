//! The `Storage` trait: where the warm tier keeps its encoded values; implement it to plug in your own.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{CachedResult, KeyDigest, PutOutcome};

use crate::Error;

/// What a storage holds now, where it knows; every field defaults to zero (unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageUsage {
    /// Values held now.
    pub entries: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// The byte capacity.
    pub capacity_bytes: u64,
    /// Values removed to make room, since the storage was built.
    pub evictions: u64,
}

/// A result kept as a value rather than as bytes, with the canonical key it was stored under
/// (see [`Storage::get_result_now`]). Cloning it costs one reference count.
///
/// `Debug` prints sizes, never the key or the payload.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResult(Arc<Kept>);

#[derive(PartialEq, Eq)]
struct Kept {
    canonical: Bytes,
    result: CachedResult,
}

impl StoredResult {
    /// A result stored under the cache key whose [canonical bytes](strata_core::CacheKey::canonical)
    /// are `canonical`.
    pub fn new(canonical: Bytes, result: CachedResult) -> Self {
        Self(Arc::new(Kept { canonical, result }))
    }

    /// The canonical bytes of the key it was stored under (the tier refuses it for any other key).
    pub fn canonical(&self) -> &Bytes {
        &self.0.canonical
    }

    /// The result.
    pub fn result(&self) -> &CachedResult {
        &self.0.result
    }
}

impl fmt::Debug for StoredResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResult")
            .field("canonical_bytes", &self.0.canonical.len())
            .field("result", &self.0.result)
            .finish()
    }
}

/// One server of a storage spread over several (a Redis Cluster primary), as `host:port`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A node named `name` (for Redis, `host:port`).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The node's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer of [`Storage::get_result_now`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultLookup {
    /// The storage does not keep results as values, or holds this key as bytes: ask
    /// [`Storage::get`].
    Unsupported,
    /// Nothing under the key.
    Absent,
    /// A result was there but had expired at the time given; the storage dropped it.
    Expired,
    /// The result.
    Found(StoredResult),
}

/// A byte store with per-value expiry, behind the [`WarmTier`](crate::WarmTier).
///
/// The tier hands a storage opaque, already-encoded values under short ASCII keys (the hex digest
/// of a cache key) and checks everything it reads back, so a storage needs no knowledge of cached
/// results. The tier bounds every call by its deadline and its circuit breaker; a storage reports
/// failures as [`Error`]s (kind [`Unavailable`](crate::ErrorKind::Unavailable) or
/// [`Timeout`](crate::ErrorKind::Timeout)) and never needs to retry.
///
/// Held as `Arc<dyn Storage>`, so the trait is object safe (it uses `async_trait`).
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// A short name for logs (`memory`, `redis`, `redis-cluster`).
    fn name(&self) -> &str;

    /// The value under `key`, or `None`.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error>;

    /// The value under `key` if the storage can answer without waiting (an in-process store),
    /// `None` if it would have to wait. The tier uses it for
    /// [`CacheTier::get_now`](strata_core::CacheTier::get_now); the default always waits.
    /// Storages that answer here must never block, and need no deadline.
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        let _ = key;
        None
    }

    /// The node that serves `key`, for a storage spread over several servers (Redis Cluster).
    /// The tier keeps one circuit breaker per node, so a dead node turns only its own keys into
    /// misses. `None` (the default, and the answer while the storage does not know yet) puts
    /// the key under the storage-wide breaker. Called on every lookup: it must not wait.
    fn node_of(&self, key: &str) -> Option<NodeId> {
        let _ = key;
        None
    }

    /// The result under `key`, kept as a value by an in-process storage that stored it with
    /// [`set_result_now`](Self::set_result_now), answered without waiting; a result that has
    /// expired at `now` (the tier's clock, read once per lookup) is dropped and reported as
    /// [`ResultLookup::Expired`].
    ///
    /// This is the fast path of in-process storages: such values never left the process, so the
    /// tier serves them without a checksum or decoding. The default says
    /// [`ResultLookup::Unsupported`], and the tier uses the byte-oriented methods; a storage
    /// that keeps values elsewhere should leave it so.
    ///
    /// `key` is the cache key's digest; its 32 lowercase hex digits (`key.to_string()`) are the
    /// key the byte-oriented methods see for the same value.
    fn get_result_now(&self, key: KeyDigest, now: SystemTime) -> ResultLookup {
        let _ = (key, now);
        ResultLookup::Unsupported
    }

    /// Stores `value` as a value (no encoding) under `key` for `ttl`, without waiting; `None`
    /// if the storage does not keep values (the default), and the tier then encodes the result
    /// and calls [`set`](Self::set). A storage that answers here must still answer
    /// [`get`](Self::get) for the key with an encoded value the tier can read.
    fn set_result_now(
        &self,
        key: KeyDigest,
        value: StoredResult,
        ttl: Duration,
    ) -> Option<Result<PutOutcome, Error>> {
        let _ = (key, value, ttl);
        None
    }

    /// The values under `keys`, in order; one batch call where the backend has one (Redis `MGET`).
    /// The default asks one key at a time.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get(key).await?);
        }
        Ok(found)
    }

    /// Stores `value` under `key` for `ttl` (at least one millisecond), replacing any previous value.
    /// A storage may decline a value (for example one larger than it accepts) with
    /// [`PutOutcome::Rejected`].
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<PutOutcome, Error>;

    /// Removes `key`, if present.
    async fn delete(&self, key: &str) -> Result<(), Error>;

    /// Removes every value this storage holds for the tier (for Redis: every key under its prefix).
    async fn clear(&self) -> Result<(), Error>;

    /// What the storage holds now, where it knows. The default knows nothing.
    fn usage(&self) -> StorageUsage {
        StorageUsage::default()
    }
}
