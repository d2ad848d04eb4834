//! Strata's integration crate: [`QueryCache`] composes the cache tiers behind one API that is
//! correct under concurrency.
//!
//! It takes a statement (SQL text, bound parameters, result formats, and a [`KeyScope`] of
//! database, role and result-changing settings), decides with the normalizer whether the cache
//! may answer, walks the tiers in order, and keeps every tier honest when tables change.
//!
//! # How results stay correct
//! - **Table versions in every key.** Each table has a version in a [`VersionStore`]. A lookup
//!   reads the versions of the tables its statement reads and puts them in the key; a write bumps
//!   them ([`QueryCache::invalidate`]). Results filled before a write are keyed by old versions
//!   and are simply unreachable: invalidation costs O(tables), and a slow fill that lands after a
//!   write can never be served. Versions are read *before* the query runs, and writes bump *after*
//!   they commit.
//! - **Single-flight.** Concurrent misses on one key run one fill; the others wait (bounded) for
//!   it. If it fails, they go to the database themselves.
//! - **Freshness.** TTL from a hint, else per table, else the default, shortened by a per-key
//!   jitter; optionally a soft TTL (one caller refreshes while others get the old value); a hit in
//!   a slower tier is promoted into faster ones with its remaining TTL.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use strata::{Loaded, QueryCache, Request, Source};
//! use strata_core::{KeyScope, SettingsDigest};
//! use strata_l1::HotTier;
//! use strata_normalizer::WriteEffect;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = QueryCache::builder().with_l1(HotTier::builder().build()?).build()?;
//! let scope = KeyScope::new("shop", "app", SettingsDigest::of([("search_path", "public")]));
//! let req = Request::new(&scope, "SELECT name FROM users WHERE id = 42");
//! let load = || async { Ok::<_, std::io::Error>(Loaded { payload: Bytes::from_static(b"alice"), row_count: 1 }) };
//!
//! let first = cache.get_or_fill(&req, load).await?;
//! assert_eq!(first.source, Source::Database);
//! let second = cache.get_or_fill(&req, load).await?;
//! assert_eq!(second.source, Source::Cache("l1".into()));
//!
//! // A write to `users` makes the cached result unreachable.
//! cache.invalidate_sql("UPDATE users SET name = 'bob' WHERE id = 42").await?;
//! assert_eq!(cache.get_or_fill(&req, load).await?.source, Source::Database);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod cache;
#[cfg(feature = "catalog")]
mod catalog;
mod config;
mod error;
mod flight;
mod keys;
mod metrics;
#[cfg(feature = "catalog")]
mod pg_tls;
mod policy;
mod pooling;
mod redis_conn;
mod redis_versions;
mod relations;
mod request;
mod session;
mod stats;
mod versions;
#[cfg(feature = "wal")]
mod wal;

#[cfg(feature = "catalog")]
pub use crate::catalog::{CatalogConfig, CatalogConfigBuilder};
#[cfg(feature = "catalog")]
pub use crate::pg_tls::{MakeRustls, PgTls, RustlsConnect, RustlsStream};
#[cfg(feature = "wal")]
pub use crate::wal::{WalConfig, WalConfigBuilder, WalInvalidator};
pub use crate::{
    cache::{
        Answer, Bypass, BypassReason, Explanation, FillOutcome, FillTicket, Hit, Loaded, Lookup, QueryCache,
        Source, TableRuleSet, TierName, TierRole,
    },
    config::{L1Config, QueryCacheBuilder, QueryCacheConfig, TableConfig},
    error::{Error, ErrorKind},
    keys::Returned,
    pooling::{Judgement, SessionSettings, StateDifference, StateWatch},
    redis_versions::{RedisVersions, RedisVersionsBuilder, VersionStats},
    relations::{KeyColumn, KeyKind, KeySource, Relations, RelationsBuilder},
    request::{Param, Request},
    session::{
        CacheSession, Executed, Invalidation, ScopeStatus, SessionCache, SessionCacheBuilder,
        TestOnlySessionTrust, TransactionState,
    },
    stats::{QueryStats, TableStats},
    versions::LocalVersions,
};
pub use strata_core::{KeyScope, SettingsDigest, VersionStore};
pub use strata_normalizer::{DiscardTarget, SessionEffect, WriteEffect};
