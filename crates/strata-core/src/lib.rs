//! The contract between Strata's cache tiers: keys, cached results, and the [`CacheTier`] trait.
//!
//! Strata caches PostgreSQL query results in tiers: an in-process hot tier (`strata-l1`), a
//! shared warm tier (`strata-l2`), and a semantic tier (`strata-l3`). The integration crate
//! (`strata`) holds them as `Arc<dyn CacheTier>` and walks them in order. This crate is only the
//! contract: traits and value types, with no I/O, no async runtime, and no backend types.
//!
//! # Parts
//! - [`CacheKey`], built from a [`KeyScope`] (database, role, settings), a statement identity,
//!   parameter values with their types and formats, result formats and table versions. Its
//!   [`KeyDigest`] is xxh3-128 over a canonical encoding, stable across builds and machines.
//! - [`CachedResult`]: an opaque payload with its row count, dependencies, creation time, TTL,
//!   fill cost and weight.
//! - [`CacheTier`]: the async trait tiers implement, with [`TierStats`] snapshots.
//! - [`Error`] with an [`ErrorKind`] callers can match on. A miss is `Ok(None)`, never an error.
//! - [`VersionStore`]: per-table versions that make stale results unreachable after a write.
//! - [`Clock`]: wall-clock time, injectable so TTL logic is tested without sleeping.
//!
//! # Example
//! ```
//! use std::time::{Duration, SystemTime};
//! use bytes::Bytes;
//! use strata_core::{CacheKey, CachedResult, Format, KeyScope, SettingsDigest, TableName, TypeOid};
//!
//! let scope = KeyScope::new("shop", "app_user", SettingsDigest::of([("search_path", "public")]));
//! let key = CacheKey::builder(&scope, b"SELECT name FROM users WHERE id = $1")
//!     .param(TypeOid::INT4, Format::Text, b"42")
//!     .result_formats(&[Format::Text])
//!     .table_version("users", 3)
//!     .build();
//! let result = CachedResult::builder(Bytes::from_static(b"...wire frames..."))
//!     .with_row_count(1)
//!     .with_dependency(TableName::new("users"), 3)
//!     .with_created_at(SystemTime::now())
//!     .with_ttl(Duration::from_secs(30))
//!     .build();
//! assert_eq!(key.digest().to_string().len(), 32);
//! assert!(result.weight_bytes() > result.payload().len() as u64);
//! ```

mod clock;
mod error;
mod key;
mod result;
mod tier;
mod versions;

pub use crate::{
    clock::{Clock, ManualClock, SystemClock},
    error::{Error, ErrorKind},
    key::{CacheKey, Format, KeyBuilder, KeyDigest, KeyScope, SettingsDigest, TypeOid},
    result::{CachedResult, CachedResultBuilder, TableName, TableVersion},
    tier::{CacheTier, NowLookup, PutOutcome, Rejection, TierStats},
    versions::{VersionHealth, VersionStore, VersionView},
};

/// Re-exported so tier implementations use the same `async_trait` as the trait definition.
pub use async_trait::async_trait;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_debug<T: Send + Sync + std::fmt::Debug>() {}

    #[test]
    fn public_types_are_send_sync_and_debug() {
        assert_send_sync_debug::<CacheKey>();
        assert_send_sync_debug::<KeyBuilder>();
        assert_send_sync_debug::<KeyDigest>();
        assert_send_sync_debug::<KeyScope>();
        assert_send_sync_debug::<SettingsDigest>();
        assert_send_sync_debug::<TypeOid>();
        assert_send_sync_debug::<Format>();
        assert_send_sync_debug::<CachedResult>();
        assert_send_sync_debug::<CachedResultBuilder>();
        assert_send_sync_debug::<TableName>();
        assert_send_sync_debug::<TableVersion>();
        assert_send_sync_debug::<NowLookup>();
        assert_send_sync_debug::<PutOutcome>();
        assert_send_sync_debug::<TierStats>();
        assert_send_sync_debug::<Error>();
        assert_send_sync_debug::<ErrorKind>();
        assert_send_sync_debug::<SystemClock>();
        assert_send_sync_debug::<ManualClock>();
        assert_send_sync_debug::<std::sync::Arc<dyn CacheTier>>();
        assert_send_sync_debug::<std::sync::Arc<dyn Clock>>();
        assert_send_sync_debug::<std::sync::Arc<dyn VersionStore>>();
        assert_send_sync_debug::<VersionView>();
        assert_send_sync_debug::<VersionHealth>();
    }
}
