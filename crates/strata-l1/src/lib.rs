//! Strata's hot tier: an in-process, byte-bounded cache of query results on `quick_cache`.
//!
//! [`HotTier`] keeps results in memory, bounded by their weight in bytes, with per-entry TTLs
//! read from each [`CachedResult`](strata_core::CachedResult). The hit path never awaits, takes no
//! global lock (one shard's read lock), and allocates nothing: a hit hands out a clone that shares
//! the payload. It implements [`CacheTier`](strata_core::CacheTier), and offers the same lookups
//! synchronously for callers that hold it directly.
//!
//! # Guarantees
//! - The bytes held never exceed the configured capacity.
//! - An entry heavier than the per-entry limit is refused and counted, never silently dropped
//!   (`quick_cache` alone drops items heavier than a shard's share without a word).
//! - An expired entry is a miss and is removed. Keys are compared by digest *and* canonical
//!   encoding, so two keys whose digests collide are two entries, and neither is served for the other.
//! - TTLs are read from [`CoarseClock`] by default (one atomic load instead of an OS clock read),
//!   so an entry may outlive its TTL by about a millisecond. Correctness after writes does not
//!   rest on TTLs: keys carry table versions.
//!
//! # Example
//! ```
//! use std::time::{Duration, SystemTime};
//! use bytes::Bytes;
//! use strata_core::{CacheKey, CachedResult, KeyScope, PutOutcome, SettingsDigest};
//! use strata_l1::HotTier;
//!
//! let l1 = HotTier::builder().with_capacity_bytes(64 << 20).build()?;
//! let scope = KeyScope::new("shop", "app", SettingsDigest::default());
//! let key = CacheKey::builder(&scope, b"SELECT 1").build();
//! let result = CachedResult::builder(Bytes::from_static(b"1"))
//!     .with_created_at(SystemTime::now())
//!     .with_ttl(Duration::from_secs(30))
//!     .build();
//! assert_eq!(l1.insert(&key, result), PutOutcome::Stored);
//! assert_eq!(l1.lookup(&key).map(|r| r.payload().clone()), Some(Bytes::from_static(b"1")));
//! # Ok::<(), strata_l1::Error>(())
//! ```

mod clock;
mod config;
mod error;
mod tier;

pub use crate::{
    clock::CoarseClock,
    config::HotTierBuilder,
    error::{Error, ErrorKind},
    tier::HotTier,
};

// The README's examples are compiled and run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
