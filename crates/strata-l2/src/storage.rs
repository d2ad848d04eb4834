//! The `Storage` trait: where the warm tier keeps its encoded values; implement it to plug in your own.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::PutOutcome;

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
