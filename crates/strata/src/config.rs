//! Building a `QueryCache`: programmatically with a builder, or from a TOML file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use strata_core::{CacheTier, Clock, TableName, VersionStore};
use strata_l1::{CoarseClock, HotTier};
use strata_l2::WarmTierConfig;
use strata_normalizer::{Normalizer, NormalizerConfig};

use crate::cache::{QueryCache, Shared, Slot, TierName, TierRole};
use crate::flight::Flights;
use crate::metrics::Metrics;
use crate::policy::{OffThread, Policy};
use crate::versions::{version_unit, LocalVersions};
use crate::Error;

/// Builds a [`QueryCache`]. Every setter documents its default.
pub struct QueryCacheBuilder {
    tiers: Vec<(TierName, TierRole, Arc<dyn CacheTier>)>,
    semantic: Option<Arc<strata_l3::SemanticTier>>,
    warm: Option<Arc<strata_l2::WarmTier>>,
    hot: Option<Arc<HotTier>>,
    versions: Option<Arc<dyn VersionStore>>,
    normalizer: Option<NormalizerConfig>,
    default_ttl: Duration,
    table_ttls: Vec<(String, Duration)>,
    excluded: Vec<String>,
    semantic_tables: Vec<String>,
    max_result_bytes: u64,
    soft_ttl_ratio: f64,
    ttl_jitter_ratio: f64,
    singleflight_wait: Duration,
    key_level: bool,
    plan_memo_entries: usize,
    clock: Arc<dyn Clock>,
}

impl Default for QueryCacheBuilder {
    fn default() -> Self {
        Self {
            tiers: Vec::new(),
            semantic: None,
            warm: None,
            hot: None,
            versions: None,
            normalizer: None,
            default_ttl: Duration::from_secs(60),
            table_ttls: Vec::new(),
            excluded: Vec::new(),
            semantic_tables: Vec::new(),
            max_result_bytes: 1 << 20,
            soft_ttl_ratio: 1.0,
            ttl_jitter_ratio: 0.1,
            singleflight_wait: Duration::from_secs(5),
            key_level: true,
            plan_memo_entries: 10_000,
            clock: Arc::new(CoarseClock::new()),
        }
    }
}

impl QueryCacheBuilder {
    /// Adds a tier after the ones added so far; lookups walk tiers in this order. Default: none
    /// (a cache with no tier bypasses everything, which is useful only in tests).
    #[must_use]
    pub fn with_tier(mut self, name: impl Into<TierName>, role: TierRole, tier: Arc<dyn CacheTier>) -> Self {
        self.tiers.push((name.into(), role, tier));
        self
    }

    /// Adds an in-process hot tier, named `l1`.
    #[must_use]
    pub fn with_l1(mut self, tier: HotTier) -> Self {
        let tier = Arc::new(tier);
        if self.tiers.is_empty() {
            // In front of the others, typed: its hits need no owned key at all.
            self.hot = Some(tier.clone());
        }
        self.with_tier("l1", TierRole::Hot, tier)
    }

    /// Adds a shared warm tier, named `l2`.
    #[must_use]
    pub fn with_l2(mut self, tier: strata_l2::WarmTier) -> Self {
        let tier = Arc::new(tier);
        // Kept typed as well, so its breaker state and error counts reach the metrics.
        self.warm = Some(tier.clone());
        self.with_tier("l2", TierRole::Warm, tier)
    }

    /// Adds the semantic tier, named `l3`: statements with the `semantic` hint that miss the exact
    /// tiers may be answered with the result of a similar enough question in the same scope, over
    /// the same tables, with equal literals, filled under the current table versions.
    /// Default: none.
    #[must_use]
    pub fn with_l3(mut self, tier: strata_l3::SemanticTier) -> Self {
        self.semantic = Some(Arc::new(tier));
        self
    }

    /// Where table versions live. Default: [`LocalVersions`], correct only when no other process
    /// shares the tiers. With a shared L2, use a shared store so writes through one instance
    /// invalidate every instance.
    #[must_use]
    pub fn with_version_store(mut self, versions: Arc<dyn VersionStore>) -> Self {
        self.versions = Some(versions);
        self
    }

    /// The normalizer's configuration (function allow list, catalogs, hint TTL cap, the size of
    /// the longest text analyzed). Default: its defaults.
    #[must_use]
    pub fn with_normalizer(mut self, config: NormalizerConfig) -> Self {
        self.normalizer = Some(config);
        self
    }

    /// The TTL of results whose statement has no hint and reads no table with its own TTL. Default: 60 s.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// A TTL for results that read `table` (the shortest applies when several do).
    #[must_use]
    pub fn with_table_ttl(mut self, table: impl Into<String>, ttl: Duration) -> Self {
        self.table_ttls.push((table.into(), ttl));
        self
    }

    /// Sends reads of `table` through the semantic tier (with [`with_l3`](Self::with_l3)) as if
    /// they carried the `semantic` hint: after an exact miss, a similar enough question's result
    /// may answer, under the tier's guards. Default: none (the hint only).
    #[must_use]
    pub fn with_semantic_table(mut self, table: impl Into<String>) -> Self {
        self.semantic_tables.push(table.into());
        self
    }

    /// Never caches statements that read `table`.
    #[must_use]
    pub fn with_excluded_table(mut self, table: impl Into<String>) -> Self {
        self.excluded.push(table.into());
        self
    }

    /// Results larger than this are not stored. Default: 1 MiB.
    #[must_use]
    pub fn with_max_result_bytes(mut self, bytes: u64) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// The share of a result's TTL after which it is refreshed by one caller while others keep
    /// being served the old value (stale-while-revalidate). `1.0` turns this off. Default: 1.0.
    #[must_use]
    pub fn with_soft_ttl_ratio(mut self, ratio: f64) -> Self {
        self.soft_ttl_ratio = ratio;
        self
    }

    /// Up to this share of each TTL is taken off, differently per key, so results filled
    /// together do not expire together. Default: 0.1.
    #[must_use]
    pub fn with_ttl_jitter_ratio(mut self, ratio: f64) -> Self {
        self.ttl_jitter_ratio = ratio;
        self
    }

    /// How long a lookup waits for a concurrent fill of the same key before going to the
    /// database itself. Default: 5 s.
    #[must_use]
    pub fn with_singleflight_wait(mut self, wait: Duration) -> Self {
        self.singleflight_wait = wait;
        self
    }

    /// How many SQL texts' plans are memoized. Default: 10,000.
    #[must_use]
    pub fn with_plan_memo_entries(mut self, entries: usize) -> Self {
        self.plan_memo_entries = entries;
        self
    }

    /// Key-level invalidation, on by default: reads restricted to keys of a table (point, IN list,
    /// `= ANY($1)`, closed range on its key column, as the [`Relations`](crate::Relations) tell)
    /// depend on those keys' version units instead of the whole table's, so a write to one row
    /// leaves reads of other rows reachable. Writes always maintain the finer units; `false`
    /// makes every read table-level (see `ARCHITECTURE.md`).
    #[must_use]
    pub fn with_key_level(mut self, on: bool) -> Self {
        self.key_level = on;
        self
    }

    /// The clock for result ages and TTLs. Default: [`CoarseClock`], the system clock read from a
    /// value refreshed every millisecond (reading the OS clock costs as much as a whole hit on
    /// some virtual machines).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the settings and builds the cache.
    pub fn build(self) -> Result<QueryCache, Error> {
        if self.default_ttl.is_zero() {
            return Err(Error::config("default ttl must be positive"));
        }
        if !(0.0..=1.0).contains(&self.soft_ttl_ratio) || self.soft_ttl_ratio == 0.0 {
            return Err(Error::config(format!(
                "soft ttl ratio must be in (0, 1], got {}",
                self.soft_ttl_ratio
            )));
        }
        if !(0.0..1.0).contains(&self.ttl_jitter_ratio) {
            return Err(Error::config(format!(
                "ttl jitter ratio must be in [0, 1), got {}",
                self.ttl_jitter_ratio
            )));
        }
        if let Some((table, _)) = self.table_ttls.iter().find(|(_, ttl)| ttl.is_zero()) {
            return Err(Error::config(format!("ttl of table {table} must be positive")));
        }
        if self.plan_memo_entries == 0 {
            return Err(Error::config("plan memo needs at least one entry"));
        }
        let mut names = HashSet::new();
        if let Some((name, _, _)) = self.tiers.iter().find(|(name, _, _)| !names.insert(name.clone())) {
            return Err(Error::config(format!("two tiers are named {name}")));
        }
        let normalizer_config = match self.normalizer {
            Some(config) => config,
            None => NormalizerConfig::builder()
                .build()
                .map_err(|e| Error::config("default normalizer configuration").with_source(e))?,
        };
        let versions = self.versions.unwrap_or_else(|| Arc::new(LocalVersions::new()));
        let mut named: Vec<(TierName, Arc<dyn CacheTier>)> =
            self.tiers.iter().map(|(n, _, t)| (n.clone(), t.clone())).collect();
        if let Some(l3) = &self.semantic {
            named.push((TierName::from("l3"), l3.clone() as Arc<dyn CacheTier>));
        }
        let metrics = Metrics::new(&named, versions.clone(), self.warm.clone())
            .map_err(|e| Error::config("registering metrics").with_source(e))?;
        let unit = |name: &str| version_unit(&TableName::new(name.to_ascii_lowercase()));
        let policy = Policy {
            rules: std::sync::RwLock::new(Arc::new(crate::policy::TableRules {
                default_ttl: self.default_ttl,
                table_ttls: self.table_ttls.iter().map(|(t, ttl)| (unit(t), *ttl)).collect::<HashMap<_, _>>(),
                excluded: self.excluded.iter().map(|t| unit(t)).collect(),
                semantic: self.semantic_tables.iter().map(|t| unit(t)).collect(),
            })),
            max_result_bytes: self.max_result_bytes,
            soft_ttl_ratio: self.soft_ttl_ratio,
            ttl_jitter_ratio: self.ttl_jitter_ratio,
            singleflight_wait: self.singleflight_wait,
            key_level: self.key_level,
        };
        let stats = crate::stats::Stats::new(self.tiers.iter().map(|(name, _, _)| name.to_string()));
        let shared = Shared {
            stats,
            tiers: self.tiers.into_iter().map(|(name, role, tier)| Slot { name, role, tier }).collect(),
            semantic: self.semantic,
            hot: self.hot,
            versions,
            normalizer: Normalizer::new(normalizer_config),
            plans: quick_cache::sync::Cache::new(self.plan_memo_entries),
            policy,
            flights: Arc::new(Flights::default()),
            relations: std::sync::RwLock::new(crate::Relations::default()),
            unstreamed: std::sync::RwLock::new(Arc::new(std::collections::HashSet::new())),
            relations_generation: std::sync::atomic::AtomicU64::new(0),
            metrics,
            clock: self.clock,
            off_thread: OffThread::new(),
        };
        Ok(QueryCache { shared: Arc::new(shared) })
    }
}

impl fmt::Debug for QueryCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCacheBuilder")
            .field("tiers", &self.tiers.iter().map(|(n, r, _)| (n.clone(), *r)).collect::<Vec<_>>())
            .field("default_ttl", &self.default_ttl)
            .field("max_result_bytes", &self.max_result_bytes)
            .finish_non_exhaustive()
    }
}

/// The cache's configuration as a file (TOML), with every field optional.
///
/// ```toml
/// default_ttl_ms = 60000
/// max_result_bytes = 1048576
/// soft_ttl_ratio = 0.8
/// max_analyzed_bytes = 262144
///
/// [l1]
/// capacity_bytes = 268435456
///
/// [l2.storage]            # omit [l2] for no L2; memory is the default backend
/// backend = "redis"
/// url = "redis://127.0.0.1:6379/0"
///
/// [tables.prices]
/// ttl_ms = 5000
/// [tables.audit_log]
/// cache = false
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QueryCacheConfig {
    /// Default TTL in milliseconds.
    pub default_ttl_ms: u64,
    /// Largest result stored, in bytes.
    pub max_result_bytes: u64,
    /// See [`QueryCacheBuilder::with_soft_ttl_ratio`].
    pub soft_ttl_ratio: f64,
    /// See [`QueryCacheBuilder::with_ttl_jitter_ratio`].
    pub ttl_jitter_ratio: f64,
    /// See [`QueryCacheBuilder::with_singleflight_wait`], in milliseconds.
    pub singleflight_wait_ms: u64,
    /// The largest TTL a `ttl=` hint may ask for, in milliseconds.
    pub hint_ttl_cap_ms: u64,
    /// Statements longer than this many bytes are not analyzed: never cached, and taken to write
    /// everything and to change their session. Default 256 KiB; see
    /// [`NormalizerConfigBuilder::with_max_analyzed_bytes`](strata_normalizer::NormalizerConfigBuilder::with_max_analyzed_bytes).
    pub max_analyzed_bytes: u64,
    /// The hot tier; `None` for none.
    pub l1: Option<L1Config>,
    /// The warm tier; `None` for none.
    pub l2: Option<WarmTierConfig>,
    /// Per-table rules, by table name.
    pub tables: BTreeMap<String, TableConfig>,
    /// See [`QueryCacheBuilder::with_key_level`].
    pub key_level: bool,
}

/// The hot tier's settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct L1Config {
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Largest entry, in bytes; default 1/16 of the capacity.
    pub max_entry_bytes: Option<u64>,
}

impl Default for L1Config {
    fn default() -> Self {
        Self { capacity_bytes: 256 << 20, max_entry_bytes: None }
    }
}

/// Rules for one table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TableConfig {
    /// TTL in milliseconds for results that read the table.
    pub ttl_ms: Option<u64>,
    /// `false` never caches statements that read it.
    pub cache: bool,
    /// `true` sends its readers through the semantic tier as if they had the `semantic` hint.
    pub semantic: bool,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self { ttl_ms: None, cache: true, semantic: false }
    }
}

impl Default for QueryCacheConfig {
    fn default() -> Self {
        Self {
            default_ttl_ms: 60_000,
            max_result_bytes: 1 << 20,
            soft_ttl_ratio: 1.0,
            ttl_jitter_ratio: 0.1,
            singleflight_wait_ms: 5_000,
            hint_ttl_cap_ms: 3_600_000,
            max_analyzed_bytes: NormalizerConfig::default().max_analyzed_bytes() as u64,
            l1: Some(L1Config::default()),
            l2: Some(WarmTierConfig::default()),
            tables: BTreeMap::new(),
            key_level: true,
        }
    }
}

impl QueryCacheConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text)
            .map_err(|e| Error::config(format!("invalid cache configuration: {e}")).with_source(e))
    }

    /// A builder with this configuration's tiers and rules, to which a version store or more
    /// tiers can still be added.
    pub fn to_builder(&self) -> Result<QueryCacheBuilder, Error> {
        let normalizer = NormalizerConfig::builder()
            .with_hint_ttl_cap(Duration::from_millis(self.hint_ttl_cap_ms))
            .with_max_analyzed_bytes(usize::try_from(self.max_analyzed_bytes).unwrap_or(usize::MAX))
            .build()
            .map_err(|e| Error::config(format!("invalid normalizer configuration: {e}")).with_source(e))?;
        let mut builder = QueryCache::builder()
            .with_normalizer(normalizer)
            .with_default_ttl(Duration::from_millis(self.default_ttl_ms))
            .with_max_result_bytes(self.max_result_bytes)
            .with_soft_ttl_ratio(self.soft_ttl_ratio)
            .with_ttl_jitter_ratio(self.ttl_jitter_ratio)
            .with_singleflight_wait(Duration::from_millis(self.singleflight_wait_ms))
            .with_key_level(self.key_level);
        if let Some(l1) = &self.l1 {
            let mut hot = HotTier::builder().with_capacity_bytes(l1.capacity_bytes);
            if let Some(max) = l1.max_entry_bytes {
                hot = hot.with_max_entry_bytes(max);
            }
            builder = builder
                .with_l1(hot.build().map_err(|e| Error::config(format!("invalid l1: {e}")).with_source(e))?);
        }
        if let Some(l2) = &self.l2 {
            // The in-memory backend reads the clock on every hit: give it the cheap one.
            let clock: Arc<dyn Clock> = Arc::new(CoarseClock::new());
            let l2 = l2
                .build_with_clock(clock)
                .map_err(|e| Error::config(format!("invalid l2: {e}")).with_source(e))?;
            builder = builder.with_l2(l2);
        }
        for (table, rules) in &self.tables {
            if let Some(ttl) = rules.ttl_ms {
                builder = builder.with_table_ttl(table.clone(), Duration::from_millis(ttl));
            }
            if !rules.cache {
                builder = builder.with_excluded_table(table.clone());
            }
            if rules.semantic {
                builder = builder.with_semantic_table(table.clone());
            }
        }
        Ok(builder)
    }

    /// Builds the cache with local table versions.
    pub fn build(&self) -> Result<QueryCache, Error> {
        self.to_builder()?.build()
    }
}
