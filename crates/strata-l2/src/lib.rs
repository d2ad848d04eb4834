//! Strata's warm tier (L2): a query-result cache shared by processes and machines, over swappable storage.
//!
//! [`WarmTier`] implements [`CacheTier`](strata_core::CacheTier) over any [`Storage`], held as
//! `Arc<dyn Storage>` so you can plug in a backend of your own. Two come with the crate, chosen
//! by type or at run time from a [`WarmTierConfig`]:
//! - [`MemoryStorage`]: embedded in the process, byte-bounded, with TTLs and eviction (`quick_cache`).
//!   The default; nothing to install.
//! - [`RedisStorage`]: one Redis server (multiplexed connection, automatic reconnect, password and
//!   database from the URL) or a Redis Cluster. Values expire natively (`SET ... PX` with the
//!   result's remaining TTL) under a key prefix, so several deployments can share one Redis.
//!
//! # Value format
//! Every value carries a versioned header (magic, format version, flags, an xxh3 checksum), the
//! result's metadata and the canonical key, then the payload, lz4-compressed above a configurable
//! size. A value that is truncated, corrupted, foreign or of another version is a miss, is counted
//! ([`TierStats::corrupt`](strata_core::TierStats)) and is deleted; it is never served. A value whose
//! canonical key differs from the one asked for (a digest collision) is a miss too.
//!
//! The memory backend is the exception: it keeps the tier's results as values
//! ([`Storage::set_result_now`]), and [`get_now`](strata_core::CacheTier::get_now) serves them
//! with one hash lookup, one read of the tier's clock and no decoding or checksum (values that
//! never left the process cannot be corrupted in transit or by another writer); the canonical
//! key and the expiry are still checked. Reading such a value through [`Storage::get`] encodes it.
//!
//! # Fail-open
//! Every storage call has a deadline (default 5 ms). After repeated failures a circuit breaker
//! opens: lookups miss and writes are dropped at once, without touching the storage, until after a
//! cool-down one probe call decides whether to close it. A storage that is slow, down or
//! restarting never fails a lookup or a write and never delays it beyond the deadline; it shows in
//! [`WarmTier::health`] and in one rate-limited `tracing::warn!`. A storage that answers but refuses
//! a command (Redis out of memory) drops that write without opening the breaker, so reads go on.
//!
//! A breaker counts consecutive failures. On a Redis Cluster the tier keeps one breaker per
//! primary: the storage maps each key to its slot (CRC16 of the key or its `{hash tag}`) and the
//! slot to its node (`CLUSTER SLOTS`, reloaded periodically and after failures), so with one node
//! down only that node's keys miss while the others keep hitting; batch gets go to each node
//! separately. [`WarmTier::health`] shows every node's breaker.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use bytes::Bytes;
//! use strata_core::{CacheKey, CacheTier, CachedResult, KeyScope, PutOutcome, SettingsDigest};
//! use strata_l2::{MemoryStorage, WarmTier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = MemoryStorage::builder().with_capacity_bytes(64 << 20).build()?;
//! let l2 = WarmTier::builder(Arc::new(storage)).with_deadline(Duration::from_millis(5)).build()?;
//! let key = CacheKey::builder(&KeyScope::new("shop", "app", SettingsDigest::default()), b"SELECT 1").build();
//! let result = CachedResult::builder(Bytes::from_static(b"1"))
//!     .with_created_at(SystemTime::now())
//!     .with_ttl(Duration::from_secs(30))
//!     .build();
//! assert_eq!(l2.put(&key, result).await?, PutOutcome::Stored);
//! assert_eq!(l2.get(&key).await?.map(|r| r.payload().clone()), Some(Bytes::from_static(b"1")));
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//! - `tls`: `rediss://` URLs for Redis and Redis Cluster (rustls with the webpki roots).

mod breaker;
mod codec;
mod config;
mod error;
mod memory;
mod redis_storage;
mod slots;
mod storage;
mod tier;

pub use crate::{
    breaker::BreakerState,
    config::{StorageConfig, WarmTierConfig},
    error::{Error, ErrorKind},
    memory::{MemoryStorage, MemoryStorageBuilder},
    redis_storage::{RedisStorage, RedisStorageBuilder},
    storage::{NodeId, ResultLookup, Storage, StorageUsage, StoredResult},
    tier::{NodeHealth, WarmTier, WarmTierBuilder, WarmTierHealth},
};
