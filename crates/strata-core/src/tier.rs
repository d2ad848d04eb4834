//! The `CacheTier` trait every tier implements, and the small types its methods return.

use std::fmt;

use async_trait::async_trait;

use crate::{CacheKey, CachedResult, Error, TableName};

/// The answer of [`CacheTier::get_now`]: tiers that can answer without waiting do so here.
#[derive(Debug, Clone)]
pub enum NowLookup {
    /// The result, served without awaiting anything.
    Hit(CachedResult),
    /// The tier does not hold the key (or holds an expired or colliding entry).
    Miss,
    /// The tier cannot answer without waiting (network, lock); call [`CacheTier::get`].
    WouldAwait,
}

/// What [`CacheTier::put`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The result is stored.
    Stored,
    /// The tier declined to store the result; this is not an error.
    Rejected(Rejection),
}

/// Why a tier declined a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The entry weighs more than the tier accepts for one entry.
    TooLarge {
        /// The entry's weight.
        weight_bytes: u64,
        /// The most the tier accepts.
        limit_bytes: u64,
    },
    /// The result had already expired when it arrived.
    Expired,
    /// The tier is degraded (for example its circuit breaker is open) and drops writes.
    Degraded,
}

/// A point-in-time snapshot of a tier's counters. Counters only grow; `entries` and `bytes` are gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Lookups that returned a result.
    pub hits: u64,
    /// Lookups that returned nothing.
    pub misses: u64,
    /// Results stored.
    pub inserts: u64,
    /// Results removed to make room.
    pub evictions: u64,
    /// Results found expired and removed.
    pub expirations: u64,
    /// Results the tier declined to store.
    pub rejections: u64,
    /// Lookups whose digest matched an entry of a different canonical key (served as misses).
    pub collisions: u64,
    /// Stored values that failed to decode (served as misses and deleted).
    pub corrupt: u64,
    /// Calls that failed against the backing store.
    pub errors: u64,
    /// Entries held now, where the tier knows it.
    pub entries: u64,
    /// Bytes held now, where the tier knows it.
    pub bytes: u64,
    /// The byte capacity, where the tier has one.
    pub capacity_bytes: u64,
}

/// One level of the cache: L1 (in-process), L2 (shared), L3 (semantic), or one of your own.
///
/// Held as `Arc<dyn CacheTier>` by the integration crate, which walks tiers in order. A miss is
/// `Ok(None)`; an error means the tier could not answer (callers treat it as a miss and count it).
#[async_trait]
pub trait CacheTier: Send + Sync + fmt::Debug {
    /// A short name for logs and metrics (`l1`, `l2`, `l3`).
    fn name(&self) -> &str;

    /// Answers without awaiting, when the tier can. The default says [`NowLookup::WouldAwait`].
    /// In-process tiers override it so the hottest path neither awaits nor allocates a future.
    fn get_now(&self, key: &CacheKey) -> NowLookup {
        let _ = key;
        NowLookup::WouldAwait
    }

    /// Looks up a key.
    async fn get(&self, key: &CacheKey) -> Result<Option<CachedResult>, Error>;

    /// Looks up several keys at once; the answers are in the order of `keys`.
    /// The default asks one at a time; networked tiers override it with a batch call.
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<CachedResult>>, Error> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get(key).await?);
        }
        Ok(found)
    }

    /// Stores a result under a key, replacing any previous one.
    async fn put(&self, key: &CacheKey, value: CachedResult) -> Result<PutOutcome, Error>;

    /// Removes a key, if present.
    async fn remove(&self, key: &CacheKey) -> Result<(), Error>;

    /// Tells the tier that these tables changed. Tiers whose keys carry table versions need do
    /// nothing (old keys are unreachable already); tiers with their own indexes, such as a
    /// semantic tier, drop or tombstone the dependent entries. The default does nothing.
    async fn invalidate_tables(&self, tables: &[TableName]) -> Result<(), Error> {
        let _ = tables;
        Ok(())
    }

    /// Removes everything this tier holds.
    async fn clear(&self) -> Result<(), Error>;

    /// A snapshot of the tier's counters.
    fn stats(&self) -> TierStats;
}
