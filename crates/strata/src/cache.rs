//! `QueryCache`: lookups across the tiers, fills, single-flight, freshness and invalidation.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_core::{
    CacheKey, CacheTier, CachedResult, Clock, Format, NowLookup, PutOutcome, TableName, VersionStore,
    VersionView,
};
use strata_normalizer::{Analysis, Normalizer, NotCacheable, TierHint, WriteEffect};
use tokio::sync::watch;
use tracing::Instrument;

use crate::flight::{self, FlightLead, Flights, Joined, Landing};
use crate::metrics::Metrics;
use crate::policy::{OffThread, Plan, Policy, Verdict, BLOCKING_PLAN_MIN_TEXT};
use crate::versions::{version_unit, EVERYTHING};
use crate::{Error, Param, Request};

/// The role a tier plays, which hints and promotion refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TierRole {
    /// In-process (L1): answers without awaiting.
    Hot,
    /// Shared between processes (L2).
    Warm,
}

/// A tier's name: free to clone for the usual static names (`l1`, `l2`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TierName(NameRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum NameRepr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl TierName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            NameRepr::Static(s) => s,
            NameRepr::Shared(s) => s,
        }
    }
}

impl From<&'static str> for TierName {
    fn from(name: &'static str) -> Self {
        TierName(NameRepr::Static(name))
    }
}

impl From<String> for TierName {
    fn from(name: String) -> Self {
        TierName(NameRepr::Shared(name.into()))
    }
}

impl fmt::Display for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::ops::Deref for TierName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

pub(crate) struct Slot {
    pub(crate) name: TierName,
    pub(crate) role: TierRole,
    pub(crate) tier: Arc<dyn CacheTier>,
}

/// The answer to [`QueryCache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// A cached result.
    Hit(Hit),
    /// No usable result: run the query, then [`FillTicket::fill`] (or drop the ticket on error).
    Miss(FillTicket),
    /// The cache will not answer this statement; run it and do not fill.
    Bypass(Bypass),
}

/// A cached result and where it came from.
#[derive(Debug, Clone)]
pub struct Hit {
    result: CachedResult,
    tier: TierName,
    age: Duration,
    stale: bool,
}

impl Hit {
    /// The result.
    pub fn result(&self) -> &CachedResult {
        &self.result
    }

    /// Its payload.
    pub fn payload(&self) -> &Bytes {
        self.result.payload()
    }

    /// The tier that answered (`l1`, `l2`, ...), or `single-flight` for a result another caller
    /// had just fetched.
    pub fn tier(&self) -> &str {
        self.tier.as_str()
    }

    /// [`tier`](Self::tier), as a name that is free to keep.
    pub fn tier_name(&self) -> &TierName {
        &self.tier
    }

    /// How old the result is.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// Whether the result is past its soft TTL (served while another caller refreshes it).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Takes the result.
    pub fn into_result(self) -> CachedResult {
        self.result
    }
}

/// Why the cache did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BypassReason {
    /// The normalizer's verdict (includes the `cache=off` hint and parse errors).
    NotCacheable(NotCacheable),
    /// The statement reads a table excluded by configuration.
    ExcludedTable(TableName),
    /// Reading this relation runs a volatile user function (a view or a row-level-security
    /// policy calling one, by the catalog), or it is a sequence: its result (and side effects)
    /// belong to each run.
    VolatileRelation(TableName),
    /// The number of bound parameters differs from the statement's `$n` placeholders.
    ParameterCount {
        /// Placeholders in the text.
        expected: u32,
        /// Parameters bound.
        bound: usize,
    },
    /// Table versions are shared and the change channel is resynchronizing: serving now could
    /// serve a result another instance already invalidated.
    VersionsUnsynchronized,
    /// No configured tier may hold this statement (for example `tier=l2` without an L2).
    NoTier,
    /// A text parameter of a date/time or unspecified type spells a value that depends on when
    /// it is read (`'now'`, `'tomorrow 10:00'`): the server reads it at execution time.
    TimeDependentParameter,
    /// A WAL invalidator is attached but cannot vouch for the versions now: its stream is not up
    /// yet, broke, or lags behind its bound. Writes made directly on PostgreSQL might not have
    /// been applied.
    WalUnavailable,
    /// A WAL invalidator is attached and changes to this relation never reach its stream: an
    /// unlogged table, a foreign table, a table the publication leaves out, a materialized view
    /// (unless the DDL trigger reports its refreshes), or a view over one of those. A write made
    /// directly on PostgreSQL could never invalidate it.
    NotStreamed(TableName),
}

impl BypassReason {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BypassReason::NotCacheable(reason) => not_cacheable_label(reason),
            BypassReason::ExcludedTable(_) => "excluded_table",
            BypassReason::VolatileRelation(_) => "volatile_relation",
            BypassReason::ParameterCount { .. } => "parameter_count",
            BypassReason::VersionsUnsynchronized => "versions_unsynchronized",
            BypassReason::NoTier => "no_tier",
            BypassReason::TimeDependentParameter => "time_dependent_parameter",
            BypassReason::WalUnavailable => "wal_unavailable",
            BypassReason::NotStreamed(_) => "not_streamed",
        }
    }
}

impl fmt::Display for BypassReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BypassReason::NotCacheable(reason) => write!(f, "not cacheable: {reason}"),
            BypassReason::ExcludedTable(t) => write!(f, "table {t} is excluded from caching"),
            BypassReason::VolatileRelation(t) => {
                write!(f, "reading {t} runs a volatile function or reads a sequence")
            }
            BypassReason::ParameterCount { expected, bound } => {
                write!(f, "statement has {expected} parameters but {bound} were bound")
            }
            BypassReason::VersionsUnsynchronized => f.write_str("table versions are resynchronizing"),
            BypassReason::NoTier => f.write_str("no configured tier may hold this statement"),
            BypassReason::TimeDependentParameter => {
                f.write_str("a parameter spells a time-dependent value such as 'now'")
            }
            BypassReason::WalUnavailable => f.write_str("the WAL invalidator is not streaming in time"),
            BypassReason::NotStreamed(t) => {
                write!(f, "changes to {t} do not reach the WAL stream (unlogged, foreign, unpublished or materialized)")
            }
        }
    }
}

fn not_cacheable_label(reason: &NotCacheable) -> &'static str {
    match reason {
        NotCacheable::ParseError(_) => "parse_error",
        NotCacheable::Empty => "empty",
        NotCacheable::NotARead(_) => "not_a_read",
        NotCacheable::DataModifyingCte => "data_modifying_cte",
        NotCacheable::SelectInto => "select_into",
        NotCacheable::LockingClause => "locking_clause",
        NotCacheable::VolatileFunction(_) => "volatile_function",
        NotCacheable::UnknownFunction(_) => "unknown_function",
        NotCacheable::SqlValueFunction(_) => "sql_value_function",
        NotCacheable::TimeLiteral(_) => "time_literal",
        NotCacheable::SystemCatalog(_) => "system_catalog",
        NotCacheable::TableSampleWithoutRepeatable => "tablesample",
        NotCacheable::TemporaryTable(_) => "temporary_table",
        NotCacheable::HintCacheOff => "hint_cache_off",
        NotCacheable::TooLarge { .. } => "too_large",
        _ => "not_cacheable",
    }
}

/// A lookup the cache declined, with the reason.
#[derive(Debug, Clone)]
pub struct Bypass {
    reason: BypassReason,
}

impl Bypass {
    /// Why.
    pub fn reason(&self) -> &BypassReason {
        &self.reason
    }
}

/// The right, and the duty, to fill a missed key: returned by a miss. Dropping it without
/// filling (the query failed, or its answer must not be cached) releases any callers waiting
/// for it, who then go to the database themselves.
pub struct FillTicket(Box<TicketInner>);

/// Boxed so that [`Lookup`] stays small on the hit path; a miss allocates once.
struct TicketInner {
    cache: Arc<Shared>,
    key: CacheKey,
    plan: Arc<Plan>,
    /// The units `versions` are of, when not the plan's (key-level tables).
    units: Option<Arc<[TableName]>>,
    versions: Vec<u64>,
    started: Instant,
    lead: Option<FlightLead>,
    seed: Option<SemanticSeed>,
}

impl fmt::Debug for FillTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillTicket")
            .field("key", &self.0.key)
            .field("leads_flight", &self.0.lead.is_some())
            .finish()
    }
}

/// What [`FillTicket::fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FillOutcome {
    /// Stored in at least one tier.
    Stored,
    /// Larger than the configured maximum result size: not stored.
    TooLarge,
    /// Every tier declined it.
    Declined,
}

impl FillTicket {
    /// The key the result will be stored under.
    pub fn key(&self) -> &CacheKey {
        &self.0.key
    }

    /// Stores the database's answer. `row_count` is informational.
    pub async fn fill(self, payload: Bytes, row_count: u64) -> FillOutcome {
        let span = tracing::trace_span!("strata::fill", bytes = payload.len());
        self.fill_inner(payload, row_count, Stores::AllAwaited).instrument(span).await
    }

    /// Like [`fill`](Self::fill), but only the in-process (hot) tiers are stored before it
    /// returns; the stores into the other tiers (a Redis L2, the semantic tier) go on as a task
    /// of the current tokio runtime (and are awaited here when there is none). For callers that
    /// answer their client first, like a proxy: a networked store's round trip leaves the
    /// client's path. Until the task lands another process may miss where it would have hit;
    /// nothing stale can be served, since the key carries the versions read before the query ran.
    pub async fn fill_detached(self, payload: Bytes, row_count: u64) -> FillOutcome {
        let span = tracing::trace_span!("strata::fill", bytes = payload.len());
        self.fill_inner(payload, row_count, Stores::HotAwaited).instrument(span).await
    }

    async fn fill_inner(self, payload: Bytes, row_count: u64, stores: Stores) -> FillOutcome {
        let mut this = self.0;
        let cache = this.cache.clone();
        let fill_cost = this.started.elapsed();
        let bytes = payload.len();
        if payload.len() as u64 > cache.policy.max_result_bytes {
            cache.metrics.fills_too_large.inc();
            return FillOutcome::TooLarge;
        }
        let now = cache.clock.now();
        let mut builder = CachedResult::builder(payload)
            .with_row_count(row_count)
            .with_created_at(now)
            .with_ttl(cache.policy.jittered_ttl(this.plan.ttl(), &this.key))
            .with_fill_cost(fill_cost);
        if let Verdict::Cacheable(c) = &this.plan.verdict {
            let units = this.units.as_deref().unwrap_or(&c.units);
            for (unit, version) in units.iter().zip(&this.versions) {
                builder = builder.with_dependency(unit.clone(), *version);
            }
        }
        let result = builder.build();
        // Waiters get the answer before the (possibly networked) stores finish.
        if let Some(lead) = this.lead.take() {
            lead.land(Landing::Filled(result.clone()));
        }
        let mut stored = false;
        let mut later: Vec<Arc<dyn CacheTier>> = Vec::new();
        for slot in cache.tiers.iter().filter(|s| this.plan.allows(s.role)) {
            if stores == Stores::HotAwaited && slot.role != TierRole::Hot {
                later.push(slot.tier.clone());
                continue;
            }
            stored |= store(&slot.tier, &this.key, &result).await;
        }
        let semantic = match (&cache.semantic, this.seed.take(), &this.plan.verdict) {
            (Some(l3), Some(seed), Verdict::Cacheable(c)) => {
                c.semantic.as_ref().map(|plan| (l3.clone(), seed, plan.text.clone(), plan.tables.clone()))
            }
            _ => None,
        };
        let key = this.key.clone();
        let rest = async move {
            let mut stored = false;
            for tier in &later {
                stored |= store(tier, &key, &result).await;
            }
            if let Some((l3, seed, text, tables)) = semantic {
                let request = strata_l3::SemanticRequest::new(&seed.scope, &text)
                    .with_tables(&tables)
                    .with_literals(&seed.literals)
                    .with_exact(&seed.exact);
                stored |= l3.insert(&request, key.clone(), result.clone()).await == PutOutcome::Stored;
            }
            stored
        };
        match (stores, tokio::runtime::Handle::try_current()) {
            (Stores::HotAwaited, Ok(runtime)) => {
                // Stores that finish at once (an embedded tier) finish here; the rest (a
                // networked tier waiting on its server) go on in a task of their own. Counted as
                // stored: the task was handed a result to store.
                let mut rest = Box::pin(rest);
                match std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(std::future::Future::poll(rest.as_mut(), cx))
                })
                .await
                {
                    std::task::Poll::Ready(done) => stored |= done,
                    std::task::Poll::Pending => {
                        runtime.spawn(rest.instrument(tracing::trace_span!("strata::fill_detached")));
                        stored = true;
                    }
                }
            }
            _ => stored |= rest.await,
        }
        if stored {
            cache.metrics.fills_stored.inc();
            cache.metrics.fill_cost_seconds.observe(fill_cost.as_secs_f64());
            if let Some(shape) = this.plan.shape.get() {
                cache.stats.filled(shape, fill_cost, bytes);
            }
            FillOutcome::Stored
        } else {
            FillOutcome::Declined
        }
    }

    /// Gives the ticket back without filling: waiters go to the database.
    pub fn abandon(self) {
        self.0.cache.metrics.fills_abandoned.inc();
    }
}

/// Which stores a fill awaits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stores {
    AllAwaited,
    HotAwaited,
}

/// Puts a result into one tier; a failure is logged and counts as not stored.
async fn store(tier: &Arc<dyn CacheTier>, key: &CacheKey, result: &CachedResult) -> bool {
    match tier.put(key, result.clone()).await {
        Ok(PutOutcome::Stored) => true,
        Ok(_) => false,
        Err(err) => {
            tracing::debug!(tier = %tier.name(), error = %err, "strata: fill failed in one tier");
            false
        }
    }
}

/// What a loader passed to [`QueryCache::get_or_fill`] returns.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The answer's bytes.
    pub payload: Bytes,
    /// Rows in it.
    pub row_count: u64,
}

/// Where [`QueryCache::get_or_fill`]'s answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// A tier (or a concurrent fill), by name.
    Cache(TierName),
    /// The loader ran and its answer was offered to the cache.
    Database,
    /// The loader ran; the cache did not take part, for this reason.
    Bypassed(BypassReason),
}

/// The answer of [`QueryCache::get_or_fill`].
#[derive(Debug, Clone)]
pub struct Answer {
    /// The payload.
    pub payload: Bytes,
    /// Where it came from.
    pub source: Source,
}

pub(crate) struct Shared {
    pub(crate) tiers: Vec<Slot>,
    /// The first tier, typed, when it is a [`strata_l1::HotTier`]: hits are then found with the
    /// key built in a reused buffer, allocating nothing.
    pub(crate) hot: Option<Arc<strata_l1::HotTier>>,
    /// The semantic tier, consulted after the exact tiers for statements with the `semantic` hint.
    pub(crate) semantic: Option<Arc<strata_l3::SemanticTier>>,
    pub(crate) versions: Arc<dyn VersionStore>,
    pub(crate) normalizer: Normalizer,
    pub(crate) plans: quick_cache::sync::Cache<Box<str>, Arc<Plan>>,
    pub(crate) policy: Policy,
    pub(crate) flights: Arc<Flights>,
    pub(crate) relations: std::sync::RwLock<crate::Relations>,
    /// Relations whose changes an attached WAL invalidator cannot see (empty without one).
    pub(crate) unstreamed: std::sync::RwLock<Arc<HashSet<TableName>>>,
    /// Bumped by every [`QueryCache::set_relations`] (and change of the unstreamed relations):
    /// memoized plans of older generations replan.
    pub(crate) relations_generation: std::sync::atomic::AtomicU64,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    /// Plans long texts on the blocking pool, one at a time (see [`BLOCKING_PLAN_MIN_TEXT`]).
    pub(crate) off_thread: OffThread,
    /// Per query shape and per table, for [`QueryCache::query_stats`].
    pub(crate) stats: crate::stats::Stats,
}

/// The query-result cache: tiers in order, table versions, single-flight, freshness, metrics.
///
/// Cheap to clone (one `Arc`); share it between tasks and threads.
#[derive(Clone)]
pub struct QueryCache {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCache")
            .field("tiers", &self.shared.tiers.iter().map(|s| &*s.name).collect::<Vec<_>>())
            .field("versions", &self.shared.versions)
            .finish()
    }
}

/// A lookup that could not finish without awaiting, and where it stopped.
struct Pending {
    plan: Arc<Plan>,
    /// This execution's units when the plan has key-level tables; else the plan's.
    units: Option<Arc<[TableName]>>,
    key: CacheKey,
    versions: Vec<u64>,
    started: Option<Instant>,
    /// The tier to continue from.
    next_tier: usize,
    /// A result a later in-process tier returned, to be promoted and served.
    found: Option<CachedResult>,
    /// A concurrent fill to wait for.
    seat: Option<watch::Receiver<Landing>>,
    /// For a semantic lookup: the scope and every literal (written and bound).
    seed: Option<SemanticSeed>,
}

/// What a semantic lookup or insert needs beyond the plan: the scope, the literals (those
/// written in the text and the values bound to `$n`), which a match must carry equal, and the
/// bytes a match must carry equal whatever the guards: the answer's wire form (protocol messages
/// and result formats: an extended request is never answered with a simple query's bytes) and
/// the statement up to how it is written
/// ([`SemanticPlan::exact`](crate::policy::SemanticPlan::exact)).
#[derive(Debug, Clone)]
pub(crate) struct SemanticSeed {
    scope: strata_core::KeyScope,
    literals: Vec<strata_l3::Literal>,
    exact: Vec<u8>,
}

fn semantic_seed(req: &Request<'_>, plan: &Plan) -> Option<SemanticSeed> {
    let Verdict::Cacheable(c) = &plan.verdict else { return None };
    let semantic = c.semantic.as_ref()?;
    let mut literals = semantic.literals.clone();
    for param in req.params {
        literals.push(match (param.value(), param.format()) {
            (None, _) => strata_l3::Literal::string("\0null"),
            (Some(v), Format::Text) => strata_l3::Literal::string(&String::from_utf8_lossy(v)),
            (Some(v), Format::Binary) => strata_l3::Literal::string(&hex(v)),
        });
    }
    let bound = |n: u32| -> Option<Vec<u8>> {
        let param = req.params.get(usize::try_from(n).ok()?.checked_sub(1)?)?;
        Some(match param.value() {
            None => vec![b'n'],
            Some(v) => [&[param.format().code() as u8][..], v].concat(),
        })
    };
    let mut exact = semantic.exact(bound);
    exact.extend_from_slice(&(req.variant.len() as u64).to_le_bytes());
    exact.extend_from_slice(req.variant);
    exact.extend_from_slice(&(req.result_formats.len() as u64).to_le_bytes());
    exact.extend(req.result_formats.iter().map(|f| f.code() as u8));
    exact.push(u8::from(req.params_per_statement));
    Some(SemanticSeed { scope: req.scope.clone(), literals, exact })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rules a cache applies per table, which a running cache may replace
/// ([`QueryCache::set_table_rules`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableRuleSet {
    /// The TTL of results whose statement has no hint and reads no table with its own TTL.
    pub default_ttl: Duration,
    /// Per-table TTLs (the shortest applies when a result reads several).
    pub ttls: Vec<(String, Duration)>,
    /// Tables whose readers are never cached.
    pub excluded: Vec<String>,
    /// Tables whose readers go through the semantic tier (when there is one) as if they carried
    /// the `semantic` hint.
    pub semantic: Vec<String>,
}

/// Whether a result found by similarity was filled under the versions current now: the semantic
/// tier matches by meaning, not by key, so a write another instance made (which this process's
/// semantic tier never heard of) must still make the old result unservable.
fn filled_under(result: &CachedResult, units: &[TableName], versions: &[u64]) -> bool {
    !result.dependencies().is_empty()
        && result.dependencies().iter().all(|dep| {
            units.iter().position(|u| *u == dep.table).is_some_and(|i| versions.get(i) == Some(&dep.version))
        })
}

enum Step {
    Done(Lookup),
    Await(Pending),
}

/// Texts longer than this are planned on every call rather than memoized.
const PLAN_MEMO_MAX_TEXT: usize = 64 * 1024;

impl QueryCache {
    /// Starts building a cache.
    pub fn builder() -> crate::QueryCacheBuilder {
        crate::QueryCacheBuilder::default()
    }

    /// The plan for a SQL text: analysis, dependencies, TTL and verdict, memoized by text.
    /// Plans on the calling thread, however long the text: async callers use
    /// [`QueryCache::plan_async`].
    pub(crate) fn plan(&self, sql: &str) -> Arc<Plan> {
        self.memoized_plan(sql).unwrap_or_else(|| self.fresh_plan(sql))
    }

    /// The memoized plan of a text, if it is current.
    fn memoized_plan(&self, sql: &str) -> Option<Arc<Plan>> {
        let shared = &self.shared;
        if sql.len() > PLAN_MEMO_MAX_TEXT {
            // Never memoized: not even worth hashing.
            return None;
        }
        let generation = shared.relations_generation.load(std::sync::atomic::Ordering::Acquire);
        shared.plans.get(sql).filter(|plan| plan.generation == generation)
    }

    /// Like [`QueryCache::plan`], but a text of [`BLOCKING_PLAN_MIN_TEXT`] bytes or more that is
    /// not memoized is planned on tokio's blocking pool, one such text at a time per cache, so
    /// that its parse neither stalls the worker thread (and the sessions it relays) nor, in a
    /// flood, takes every blocking thread and all memory. Shorter texts and memo hits plan
    /// inline.
    pub(crate) async fn plan_async(&self, sql: &str) -> Arc<Plan> {
        if sql.len() < BLOCKING_PLAN_MIN_TEXT {
            return self.plan(sql);
        }
        match self.memoized_plan(sql) {
            Some(plan) => plan,
            None => self.plan_off_thread(sql).await,
        }
    }

    /// Plans a long text that is not memoized on the blocking pool; inline when there is no
    /// tokio runtime or the blocking task did not finish.
    async fn plan_off_thread(&self, sql: &str) -> Arc<Plan> {
        if sql.len() > self.shared.normalizer.config().max_analyzed_bytes() {
            // Refused unparsed by the normalizer (one hash over the text): no need for a thread,
            // nor for a copy of the text.
            return self.fresh_plan(sql);
        }
        let this = self.clone();
        let text: Box<str> = sql.into();
        // `plan` looks in the memo again: a caller that waited for the gate behind the same
        // text finds its plan there.
        match self.shared.off_thread.run(move || this.plan(&text)).await {
            Some(plan) => plan,
            None => self.plan(sql),
        }
    }

    /// Analyzes and plans a text, and memoizes the plan when the text is short enough.
    fn fresh_plan(&self, sql: &str) -> Arc<Plan> {
        let shared = &self.shared;
        let generation = shared.relations_generation.load(std::sync::atomic::Ordering::Acquire);
        // The plan memo below holds the text: the normalizer need not memoize it again.
        let analysis = shared.normalizer.analyze_behind_memo(sql);
        let relations = self.relations();
        let unstreamed = self.shared.unstreamed.read().unwrap_or_else(|e| e.into_inner()).clone();
        let plan = Arc::new(shared.policy.plan(
            sql,
            analysis,
            shared.tiers.iter().map(|s| s.role),
            &relations,
            &unstreamed,
            generation,
        ));
        if sql.len() <= PLAN_MEMO_MAX_TEXT {
            shared.plans.insert(sql.into(), plan.clone());
        }
        plan
    }

    fn bypass(&self, reason: BypassReason) -> Lookup {
        self.shared.metrics.bypass(reason.label());
        Lookup::Bypass(Bypass { reason })
    }

    /// Looks a statement up in the tiers. A hit is served; a miss hands out a [`FillTicket`]
    /// (concurrent misses on one key wait for the first one's fill instead); a bypass says why
    /// the cache will not take part.
    ///
    /// An in-process hit is answered synchronously inside the first poll; only lookups that must
    /// wait (a networked tier, a concurrent fill) go on to a boxed slower path, which keeps this
    /// future small and cheap to create.
    ///
    /// A text of 16 KiB or more whose plan is not memoized is analyzed on tokio's blocking pool,
    /// one such text at a time, so that a huge statement does not stall this worker thread; a
    /// text longer than the normalizer's
    /// [`max_analyzed_bytes`](strata_normalizer::NormalizerConfig::max_analyzed_bytes) is not
    /// analyzed at all and bypasses ([`NotCacheable::TooLarge`]).
    pub async fn lookup(&self, req: &Request<'_>) -> Lookup {
        let plan = if req.sql.len() < BLOCKING_PLAN_MIN_TEXT {
            self.plan(req.sql)
        } else {
            match self.memoized_plan(req.sql) {
                Some(plan) => plan,
                None => Box::pin(self.plan_off_thread(req.sql)).await,
            }
        };
        let shape = self.shape(&plan).clone();
        let lookup = match self.lookup_now(req, plan) {
            Step::Done(lookup) => lookup,
            Step::Await(pending) => {
                let span = tracing::trace_span!("strata::lookup");
                Box::pin(self.lookup_pending(pending).instrument(span)).await
            }
        };
        let outcome = match &lookup {
            Lookup::Hit(hit) => crate::stats::Outcome::Hit(hit.tier()),
            Lookup::Miss(_) => crate::stats::Outcome::Miss,
            Lookup::Bypass(bypass) => crate::stats::Outcome::Bypass(bypass.reason().label()),
        };
        self.shared.stats.looked_up(&shape, outcome);
        lookup
    }

    /// The counters of a plan's query shape.
    fn shape<'p>(&self, plan: &'p Plan) -> &'p Arc<crate::stats::ShapeCounters> {
        plan.shape.get_or_init(|| {
            let units: Vec<TableName> = match &plan.verdict {
                Verdict::Cacheable(c) => {
                    c.units.iter().filter(|u| u.as_str() != EVERYTHING).cloned().collect()
                }
                Verdict::Bypass(_) => plan.analysis.dependencies().iter().map(version_unit).collect(),
            };
            self.shared.stats.shape(&plan.analysis, &units)
        })
    }

    /// What the cache saw of each query shape since it started, most looked up first (at most
    /// a couple of thousand shapes are told apart; later ones share a row).
    pub fn query_stats(&self) -> Vec<crate::QueryStats> {
        self.shared.stats.queries()
    }

    /// What the cache saw of each table since it started, with its version now; `*` stands
    /// for invalidations of everything.
    pub fn table_stats(&self) -> Vec<crate::TableStats> {
        let (tables, everything) = self.shared.stats.tables();
        let mut units: Vec<TableName> = vec![TableName::new(EVERYTHING)];
        units.extend(tables.iter().map(|t| t.0.clone()));
        let mut versions = Vec::new();
        let _ = self.shared.versions.read(&units, &mut versions);
        let mut versions = versions.into_iter().chain(std::iter::repeat(0));
        let mut out = vec![crate::TableStats {
            table: "*".to_owned(),
            version: versions.next().unwrap_or(0),
            invalidations: everything.invalidations,
            last_invalidation: everything.last,
            entries: 0,
        }];
        out.extend(tables.into_iter().zip(versions).map(|((table, c), version)| crate::TableStats {
            table: table.as_str().to_owned(),
            version,
            invalidations: c.invalidations,
            last_invalidation: c.last,
            entries: c.fills_since,
        }));
        out
    }

    /// Makes every cached result that reads `table` unreachable (in every process sharing the
    /// table versions), as a write to it would.
    pub async fn invalidate_table(&self, table: &str) -> Result<(), Error> {
        self.invalidate(&WriteEffect::Tables(vec![TableName::new(table)])).await
    }

    /// The table rules in force (table names as version units, sorted).
    pub fn table_rules(&self) -> TableRuleSet {
        let rules =
            self.shared.policy.rules.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let names = |set: &HashSet<TableName>| {
            let mut v: Vec<String> = set.iter().map(|t| t.as_str().to_owned()).collect();
            v.sort();
            v
        };
        let mut ttls: Vec<(String, Duration)> =
            rules.table_ttls.iter().map(|(t, d)| (t.as_str().to_owned(), *d)).collect();
        ttls.sort();
        TableRuleSet {
            default_ttl: rules.default_ttl,
            ttls,
            excluded: names(&rules.excluded),
            semantic: names(&rules.semantic),
        }
    }

    /// Replaces the table rules of a running cache. Lookups plan under them from now on; results
    /// already cached keep their TTL, and a newly excluded table's results are no longer served.
    pub fn set_table_rules(&self, rules: &TableRuleSet) {
        let unit = |name: &String| version_unit(&TableName::new(name.to_ascii_lowercase()));
        let rules = crate::policy::TableRules {
            default_ttl: rules.default_ttl,
            table_ttls: rules.ttls.iter().map(|(t, d)| (unit(t), *d)).collect(),
            excluded: rules.excluded.iter().map(unit).collect(),
            semantic: rules.semantic.iter().map(unit).collect(),
        };
        *self.shared.policy.rules.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(rules);
        self.shared.relations_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Everything a lookup can do without awaiting: plan, versions, key, the in-process tier in
    /// front, and taking the lead of a new fill.
    fn lookup_now(&self, req: &Request<'_>, plan: Arc<Plan>) -> Step {
        let (units, own_units) = match &plan.verdict {
            Verdict::Bypass(reason) => return Step::Done(self.bypass(reason.clone())),
            Verdict::Cacheable(c) if c.keyed.is_empty() || req.params_per_statement => (&c.units[..], None),
            Verdict::Cacheable(c) => match plan.analysis.statements() {
                // Key-level tables: this execution's keys pick the units.
                [statement] => {
                    let values = crate::keys::Values { statement, params: Some(req.params), returned: None };
                    let (own, table_level) = crate::keys::request_units(&c.units, &c.keyed, &values);
                    let metrics = &self.shared.metrics;
                    metrics.key_reads_table.inc_by(table_level as u64);
                    metrics.key_reads_keyed.inc_by((c.keyed.len() - table_level) as u64);
                    let own: Arc<[TableName]> = own.into();
                    (&c.units[..], Some(own))
                }
                _ => (&c.units[..], None),
            },
        };
        let units: &[TableName] = own_units.as_deref().unwrap_or(units);
        if self.shared.metrics.wal.is_closed() {
            // Fills taken before the gate closed may still land: the invalidator bumps every
            // version before it reopens after a broken stream, so they are never reachable.
            return Step::Done(self.bypass(BypassReason::WalUnavailable));
        }
        let expected = plan.analysis.client_param_count();
        if req.params.len() != expected as usize && !req.params_per_statement {
            return Step::Done(
                self.bypass(BypassReason::ParameterCount { expected, bound: req.params.len() }),
            );
        }
        if req.params.iter().any(time_dependent_param) {
            return Step::Done(self.bypass(BypassReason::TimeDependentParameter));
        }
        let shared = &self.shared;
        let started = shared.metrics.sampled().then(Instant::now);
        let mut first_tier = 0;
        let mut built = None;
        match self.probe_hot(req, &plan, units) {
            Fast::Skip => {}
            Fast::Unsynchronized => return Step::Done(self.bypass(BypassReason::VersionsUnsynchronized)),
            Fast::Missed(key, versions) => {
                first_tier = 1;
                built = Some((key, versions));
            }
            Fast::Found(result) => {
                let now = shared.clock.now();
                let age = result.age(now);
                let fresh = !result.is_expired_at(now)
                    && (shared.policy.soft_ttl_ratio >= 1.0
                        || age < result.ttl().mul_f64(shared.policy.soft_ttl_ratio));
                if fresh {
                    if let Some(started) = started {
                        shared.metrics.lookup_seconds[0].observe(started.elapsed().as_secs_f64());
                        shared.metrics.served_age_seconds.observe(age.as_secs_f64());
                    }
                    return Step::Done(Lookup::Hit(Hit {
                        result,
                        tier: shared.tiers[0].name.clone(),
                        age,
                        stale: false,
                    }));
                }
                // Expired or past its soft TTL: the walk below decides who refreshes.
            }
        }
        let (key, versions) = match built {
            // The versions were read before the query runs, as a fill ticket needs.
            Some(built) => built,
            None => {
                let mut versions = Vec::with_capacity(units.len());
                if shared.versions.read(units, &mut versions) == VersionView::Unsynchronized {
                    return Step::Done(self.bypass(BypassReason::VersionsUnsynchronized));
                }
                (build_key(req, &plan.analysis, units, &versions), versions)
            }
        };
        let seed = if shared.semantic.is_some() { semantic_seed(req, &plan) } else { None };
        let mut pending = Pending {
            plan,
            units: own_units.clone(),
            key,
            versions,
            started,
            next_tier: 0,
            found: None,
            seat: None,
            seed,
        };
        for (index, slot) in shared.tiers.iter().enumerate().skip(first_tier) {
            if !pending.plan.allows(slot.role) {
                continue;
            }
            pending.next_tier = index;
            match slot.tier.get_now(&pending.key) {
                NowLookup::Hit(result) if index == 0 => {
                    if let Some(lookup) = self.serve(&pending, result, index) {
                        return Step::Done(lookup);
                    }
                    // Expired (counted as a miss): keep walking.
                }
                NowLookup::Hit(result) => {
                    // A later in-process tier: promotion into the ones before it awaits.
                    pending.found = Some(result);
                    return Step::Await(pending);
                }
                NowLookup::Miss => {}
                NowLookup::WouldAwait => return Step::Await(pending),
            }
        }
        pending.next_tier = shared.tiers.len();
        if pending.seed.is_some() {
            // The semantic tier embeds text: that awaits.
            return Step::Await(pending);
        }
        match shared.flights.join(&pending.key) {
            Joined::Lead(lead) => Step::Done(self.lead(pending, lead)),
            Joined::Follow(seat) => {
                pending.seat = Some(seat);
                Step::Await(pending)
            }
        }
    }

    /// Asks the typed in-process tier in front with the key built in this thread's reused buffer:
    /// a hit allocates nothing. A miss takes a copy of the key and of the versions it was built
    /// with (read before the query runs) for the rest of the lookup and its fill ticket.
    fn probe_hot(&self, req: &Request<'_>, plan: &Plan, units: &[TableName]) -> Fast {
        let shared = &self.shared;
        let Some(hot) = &shared.hot else { return Fast::Skip };
        if !plan.allows(shared.tiers[0].role) {
            return Fast::Skip;
        }
        SCRATCH.with(|cell| {
            let Ok(mut scratch) = cell.try_borrow_mut() else { return Fast::Skip };
            let Scratch { key, versions } = &mut *scratch;
            if shared.versions.read(units, versions) == VersionView::Unsynchronized {
                return Fast::Unsynchronized;
            }
            let builder = CacheKey::builder_in(std::mem::take(key), req.scope, plan.analysis.key_bytes());
            let builder = key_parts(builder, req, &plan.analysis, units, versions);
            let found = hot.lookup_parts(builder.digest(), builder.canonical());
            let fast = match found {
                Some(result) => Fast::Found(result),
                None => Fast::Missed(builder.to_key(), versions.clone()),
            };
            *key = builder.into_buffer();
            fast
        })
    }

    /// The rest of a lookup: tiers that await, promotion, and waiting for a concurrent fill.
    async fn lookup_pending(&self, mut pending: Pending) -> Lookup {
        let shared = &self.shared;
        if let Some(seat) = pending.seat.take() {
            return self.wait_for_flight(pending, seat).await;
        }
        for index in pending.next_tier..shared.tiers.len() {
            let slot = &shared.tiers[index];
            if !pending.plan.allows(slot.role) {
                continue;
            }
            let result = match pending.found.take() {
                Some(result) => Some(result),
                None => match slot.tier.get_now(&pending.key) {
                    NowLookup::Hit(result) => Some(result),
                    NowLookup::Miss => None,
                    NowLookup::WouldAwait => match slot.tier.get(&pending.key).await {
                        Ok(found) => found,
                        Err(err) => {
                            shared.metrics.tier_errors[index].inc();
                            tracing::debug!(tier = %slot.name, error = %err, "strata: tier lookup failed; treated as a miss");
                            None
                        }
                    },
                },
            };
            let Some(result) = result else { continue };
            if result.is_expired_at(shared.clock.now()) {
                continue;
            }
            if index > 0 {
                self.promote(&pending.key, &result, index, &pending.plan).await;
            }
            if let Some(lookup) = self.serve(&pending, result, index) {
                return lookup;
            }
        }
        if let Some(hit) = self.semantic_lookup(&pending).await {
            return hit;
        }
        match shared.flights.join(&pending.key) {
            Joined::Lead(lead) => self.lead(pending, lead),
            Joined::Follow(seat) => self.wait_for_flight(pending, seat).await,
        }
    }

    /// Asks the semantic tier for an answer to a similar enough question, and serves it only if
    /// it was filled under the table versions current now.
    async fn semantic_lookup(&self, pending: &Pending) -> Option<Lookup> {
        let shared = &self.shared;
        let (l3, seed) = (shared.semantic.as_ref()?, pending.seed.as_ref()?);
        let Verdict::Cacheable(c) = &pending.plan.verdict else { return None };
        let plan = c.semantic.as_ref()?;
        let request = strata_l3::SemanticRequest::new(&seed.scope, &plan.text)
            .with_tables(&plan.tables)
            .with_literals(&seed.literals)
            .with_exact(&seed.exact);
        let hit = l3.lookup(&request).await?;
        let result = hit.result().clone();
        let now = shared.clock.now();
        if result.is_expired_at(now) || !filled_under(&result, &c.units, &pending.versions) {
            return None;
        }
        self.promote(&pending.key, &result, shared.tiers.len(), &pending.plan).await;
        let age = result.age(now);
        shared.metrics.served_age_seconds.observe(age.as_secs_f64());
        tracing::debug!(similarity = hit.similarity().get(), "strata: semantic hit");
        Some(Lookup::Hit(Hit { result, tier: TierName::from("l3"), age, stale: false }))
    }

    fn lead(&self, pending: Pending, lead: FlightLead) -> Lookup {
        if let Some(started) = pending.started {
            self.shared.metrics.lookup_miss_seconds.observe(started.elapsed().as_secs_f64());
        }
        Lookup::Miss(self.ticket(
            pending.key,
            pending.plan,
            pending.units,
            pending.versions,
            Some(lead),
            pending.seed,
        ))
    }

    async fn wait_for_flight(&self, pending: Pending, seat: watch::Receiver<Landing>) -> Lookup {
        let shared = &self.shared;
        match flight::wait(seat, shared.policy.singleflight_wait).await {
            Some(result) => {
                shared.metrics.flight_filled.inc();
                let age = result.age(shared.clock.now());
                Lookup::Hit(Hit { result, tier: TierName::from("single-flight"), age, stale: false })
            }
            None => {
                shared.metrics.flight_failed.inc();
                Lookup::Miss(self.ticket(
                    pending.key,
                    pending.plan,
                    pending.units,
                    pending.versions,
                    None,
                    pending.seed,
                ))
            }
        }
    }

    /// Turns a tier's result into the answer: `None` if it has expired; past its soft TTL, one
    /// caller is sent to refresh while everyone else keeps getting the old value.
    fn serve(&self, pending: &Pending, result: CachedResult, index: usize) -> Option<Lookup> {
        let shared = &self.shared;
        let now = shared.clock.now();
        if result.is_expired_at(now) {
            return None;
        }
        let age = result.age(now);
        if let Some(started) = pending.started {
            shared.metrics.lookup_seconds[index].observe(started.elapsed().as_secs_f64());
            shared.metrics.served_age_seconds.observe(age.as_secs_f64());
        } else if index > 0 {
            shared.metrics.served_age_seconds.observe(age.as_secs_f64());
        }
        let tier = shared.tiers[index].name.clone();
        if shared.policy.soft_ttl_ratio < 1.0 && age >= result.ttl().mul_f64(shared.policy.soft_ttl_ratio) {
            if let Some(lead) = shared.flights.try_lead(&pending.key) {
                shared.metrics.soft_refreshes.inc();
                let ticket = self.ticket(
                    pending.key.clone(),
                    pending.plan.clone(),
                    pending.units.clone(),
                    pending.versions.clone(),
                    Some(lead),
                    pending.seed.clone(),
                );
                return Some(Lookup::Miss(ticket));
            }
            shared.metrics.stale_served.inc();
            return Some(Lookup::Hit(Hit { result, tier, age, stale: true }));
        }
        Some(Lookup::Hit(Hit { result, tier, age, stale: false }))
    }

    fn ticket(
        &self,
        key: CacheKey,
        plan: Arc<Plan>,
        units: Option<Arc<[TableName]>>,
        versions: Vec<u64>,
        lead: Option<FlightLead>,
        seed: Option<SemanticSeed>,
    ) -> FillTicket {
        FillTicket(Box::new(TicketInner {
            cache: self.shared.clone(),
            key,
            plan,
            units,
            versions,
            started: Instant::now(),
            lead,
            seed,
        }))
    }

    /// Copies a hit from a slower tier into the faster ones before it, with the same creation
    /// time and TTL: a promoted entry keeps its remaining lifetime, never a fresh one.
    async fn promote(&self, key: &CacheKey, result: &CachedResult, found_at: usize, plan: &Plan) {
        for slot in self.shared.tiers[..found_at].iter().filter(|s| plan.allows(s.role)) {
            if let Err(err) = slot.tier.put(key, result.clone()).await {
                tracing::debug!(tier = %slot.name, error = %err, "strata: promotion failed");
            }
        }
    }

    /// Looks up, and on a miss runs `load` and fills the cache with its answer. A failed load
    /// returns its error and caches nothing; callers waiting on this fill then load themselves.
    pub async fn get_or_fill<F, Fut, E>(&self, req: &Request<'_>, load: F) -> Result<Answer, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Loaded, E>>,
    {
        let span = tracing::trace_span!("strata::get_or_fill");
        async move {
            match self.lookup(req).await {
                Lookup::Hit(hit) => {
                    Ok(Answer { payload: hit.payload().clone(), source: Source::Cache(hit.tier) })
                }
                Lookup::Bypass(bypass) => {
                    let loaded = load().await?;
                    Ok(Answer { payload: loaded.payload, source: Source::Bypassed(bypass.reason) })
                }
                Lookup::Miss(ticket) => {
                    // On error the ticket is dropped here, which releases the waiters.
                    let loaded = load().await?;
                    ticket.fill(loaded.payload.clone(), loaded.row_count).await;
                    Ok(Answer { payload: loaded.payload, source: Source::Database })
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Tells the cache that tables changed (after the write committed): every result that read
    /// them becomes unreachable in every tier, in this process at once and in processes sharing
    /// the version store within its propagation bound. [`WriteEffect::Unknown`] invalidates
    /// everything.
    pub async fn invalidate(&self, effect: &WriteEffect) -> Result<(), Error> {
        self.invalidate_keyed(effect, &crate::keys::WrittenKeys::default()).await
    }

    /// Like [`QueryCache::invalidate`], with the keys some of the written tables are known to
    /// have changed (by their version units): those bump only their keys' units, every other
    /// written table all of its units (see `crate::keys`).
    pub(crate) async fn invalidate_keyed(
        &self,
        effect: &WriteEffect,
        keys: &crate::keys::WrittenKeys,
    ) -> Result<(), Error> {
        let span = tracing::debug_span!("strata::invalidate");
        async {
            let shared = &self.shared;
            let (units, tables): (Vec<TableName>, &[TableName]) = match effect {
                WriteEffect::Nothing => return Ok(()),
                WriteEffect::Tables(tables) => {
                    let relations = self.relations();
                    let mut written: Vec<TableName> = tables.iter().map(version_unit).collect();
                    // A cascade, an inheritance tree: what else the write may change, at keys
                    // no text shows.
                    let also: Vec<TableName> =
                        written.iter().flat_map(|u| relations.writes_also(u)).cloned().collect();
                    written.sort();
                    written.dedup();
                    if written.iter().chain(&also).any(|u| relations.writes_unknown(u)) {
                        // A trigger or a rule may have changed anything.
                        (vec![TableName::new(EVERYTHING)], &[][..])
                    } else {
                        let mut units: Vec<TableName> = Vec::new();
                        for unit in &written {
                            let known = if also.contains(unit) { None } else { keys.get(unit) };
                            if relations.key_column(unit).is_some() {
                                match known {
                                    Some(_) => shared.metrics.key_writes_keyed.inc(),
                                    None => shared.metrics.key_writes_wide.inc(),
                                }
                            }
                            units.extend(crate::keys::write_units(unit, known.map(Vec::as_slice)));
                        }
                        for unit in &also {
                            units.extend(crate::keys::write_units(unit, None));
                        }
                        units.sort();
                        units.dedup();
                        (units, tables)
                    }
                }
                WriteEffect::Unknown => (vec![TableName::new(EVERYTHING)], &[]),
            };
            if let Err(err) = shared.versions.bump(&units).await {
                shared.metrics.invalidate_errors.inc();
                tracing::warn!(error = %err, "strata: could not bump table versions; this instance bypasses the cache until they resynchronize");
                return Err(err.into());
            }
            shared.stats.invalidated((!tables.is_empty()).then_some(units.as_slice()));
            if tables.is_empty() {
                shared.metrics.invalidate_everything.inc();
            } else {
                shared.metrics.invalidate_tables.inc();
            }
            // Tiers with their own indexes (a semantic tier) drop dependents eagerly; for the
            // others the bump above already made every old key unreachable.
            for slot in &shared.tiers {
                let _ = slot.tier.invalidate_tables(tables).await;
            }
            if let Some(l3) = &shared.semantic {
                // Its matches are re-checked against current versions anyway; this frees them.
                let _ = if tables.is_empty() { l3.clear().await } else { l3.invalidate_tables(tables).await };
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// What a statement writes, by the normalizer (memoized like lookups).
    pub fn write_effect(&self, sql: &str) -> WriteEffect {
        self.plan(sql).analysis.writes().clone()
    }

    /// What a text does to its session's state (`SET`, `DEALLOCATE`, `DISCARD`, server code...),
    /// by the normalizer (memoized like lookups). A long text is analyzed off this thread, as in
    /// [`QueryCache::lookup`]; one too large to analyze has one
    /// [`SessionEffect::ServerCode`](strata_normalizer::SessionEffect::ServerCode).
    pub async fn session_effects(&self, sql: &str) -> Vec<strata_normalizer::SessionEffect> {
        self.plan_async(sql).await.analysis.session_effects().cloned().collect()
    }

    /// [`QueryCache::session_effects`] for a caller that cannot await: `None`, without analyzing,
    /// for a text of 16 KiB or more whose plan is not memoized (its parse would stall the
    /// calling thread). Such a caller must then assume the worst of the text: that it may have
    /// changed anything [`SessionEffect`](strata_normalizer::SessionEffect) names.
    pub fn session_effects_now(&self, sql: &str) -> Option<Vec<strata_normalizer::SessionEffect>> {
        let plan = if sql.len() < BLOCKING_PLAN_MIN_TEXT { self.plan(sql) } else { self.memoized_plan(sql)? };
        Some(plan.analysis.session_effects().cloned().collect())
    }

    /// For a text of one write statement about to run: where the key column of the table it
    /// writes is (its OIDs and column numbers), when the rows it returns (`RETURNING`) may say
    /// which keys it changed and its text may not; empty otherwise, and for a long text not
    /// analyzed yet (this never waits). Hand the returned field back with
    /// [`Executed::with_returned`](crate::Executed::with_returned).
    pub fn returned_key_sources(&self, sql: &str) -> Vec<crate::KeySource> {
        if !self.shared.policy.key_level {
            return Vec::new();
        }
        let plan = if sql.len() < BLOCKING_PLAN_MIN_TEXT {
            self.plan(sql)
        } else {
            match self.memoized_plan(sql) {
                Some(plan) => plan,
                None => return Vec::new(),
            }
        };
        let [statement] = plan.analysis.statements() else { return Vec::new() };
        crate::keys::returning_sources(statement, &self.relations())
    }

    /// Whether a lookup of this text could be answered or filled at all: the normalizer's verdict
    /// and the cache's policy, before scope, parameters and versions. A long text is analyzed off
    /// this thread, as in [`QueryCache::lookup`].
    pub async fn is_cacheable(&self, sql: &str) -> bool {
        matches!(self.plan_async(sql).await.verdict, crate::policy::Verdict::Cacheable(_))
    }

    /// Installs the dependencies a statement's text does not show (views, cascades, triggers),
    /// usually read from the database's catalog. Lookups plan with them from now on; writes
    /// expand through them.
    pub fn set_relations(&self, relations: crate::Relations) {
        let shared = &self.shared;
        *shared.relations.write().unwrap_or_else(|e| e.into_inner()) = relations;
        shared.relations_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Installs the relations whose changes the attached WAL invalidator cannot see: lookups
    /// reading them bypass from now on. Empty when no invalidator is attached.
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub(crate) fn set_unstreamed(&self, relations: HashSet<TableName>) {
        let shared = &self.shared;
        let mut current = shared.unstreamed.write().unwrap_or_else(|e| e.into_inner());
        if **current != relations {
            *current = Arc::new(relations);
            shared.relations_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// The dependencies in force.
    pub fn relations(&self) -> crate::Relations {
        self.shared.relations.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Analyzes a statement that was executed and invalidates what it wrote (a long text is
    /// analyzed off this thread, as in [`QueryCache::lookup`]). A text too large to analyze
    /// invalidates everything.
    pub async fn invalidate_sql(&self, sql: &str) -> Result<(), Error> {
        let plan = self.plan_async(sql).await;
        let keys = self.written_keys(&plan.analysis, None, None);
        self.invalidate_keyed(plan.analysis.writes(), &keys).await
    }

    /// The keys the statements of a text change, by table, where every statement writing the
    /// table says which (its literals, `params` for the client's `$n`, or for a text of one
    /// statement the key field of the rows it `returned`).
    pub(crate) fn written_keys(
        &self,
        analysis: &Analysis,
        params: Option<&[Param<'_>]>,
        returned: Option<&crate::keys::Returned<'_>>,
    ) -> crate::keys::WrittenKeys {
        let relations = self.relations();
        let mut keys = crate::keys::WrittenKeys::new();
        let mut wide: Vec<TableName> = Vec::new();
        for statement in analysis.statements() {
            let WriteEffect::Tables(tables) = statement.writes() else { continue };
            let returned = returned.filter(|_| analysis.statements().len() == 1);
            let values = crate::keys::Values { statement, params, returned };
            let known = crate::keys::written_keys(&values, &relations);
            for unit in tables.iter().map(version_unit) {
                match &known {
                    Some((keyed, values)) if *keyed == unit => {
                        keys.entry(unit).or_default().extend(values.iter().cloned())
                    }
                    _ => wide.push(unit),
                }
            }
        }
        for unit in &wide {
            keys.remove(unit);
        }
        keys
    }

    /// Makes every cached result unreachable and empties the tiers this process owns.
    pub async fn flush(&self) -> Result<(), Error> {
        self.invalidate(&WriteEffect::Unknown).await?;
        for slot in self.shared.tiers.iter().filter(|s| s.role == TierRole::Hot) {
            slot.tier.clear().await?;
        }
        Ok(())
    }

    /// The statistics of each tier, by name.
    pub fn tier_stats(&self) -> Vec<(String, strata_core::TierStats)> {
        let mut stats: Vec<_> =
            self.shared.tiers.iter().map(|s| (s.name.to_string(), s.tier.stats())).collect();
        if let Some(l3) = &self.shared.semantic {
            stats.push(("l3".to_owned(), l3.stats()));
        }
        stats
    }

    /// The Prometheus registry holding every Strata metric; mount it in your exporter.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.shared.metrics.registry
    }

    /// Why a statement would or would not be cached, under which key and versions.
    pub fn explain(&self, req: &Request<'_>) -> Explanation {
        self.explain_with_key(req).0
    }

    /// The tier holding a live result for this request now, if any (first in lookup order).
    /// Looking counts in the tiers' own hit and miss statistics.
    pub async fn cached_in(&self, req: &Request<'_>) -> Option<String> {
        let key = self.explain_with_key(req).1?;
        for slot in &self.shared.tiers {
            if let Ok(Some(result)) = slot.tier.get(&key).await {
                if !result.is_expired_at(self.shared.clock.now()) {
                    return Some(slot.name.to_string());
                }
            }
        }
        None
    }

    fn explain_with_key(&self, req: &Request<'_>) -> (Explanation, Option<CacheKey>) {
        let plan = self.plan(req.sql);
        let mut key = None;
        let analysis = &plan.analysis;
        let mut explanation = Explanation {
            kind: analysis.kind().map_or_else(|| "multiple".to_owned(), |k| k.to_string()),
            verdict: Ok(()),
            tables: Vec::new(),
            ttl: plan.ttl(),
            tiers: self
                .shared
                .tiers
                .iter()
                .filter(|s| plan.allows(s.role))
                .map(|s| s.name.to_string())
                .collect(),
            database: req.scope.database().to_owned(),
            role: req.scope.role().to_owned(),
            settings_digest: req.scope.settings().digest().to_string(),
            key_digest: None,
            ignored_hints: analysis
                .hints()
                .ignored()
                .iter()
                .map(|h| format!("{}: {}", h.text(), h.reason()))
                .collect(),
        };
        match &plan.verdict {
            Verdict::Bypass(reason) => explanation.verdict = Err(reason.to_string()),
            Verdict::Cacheable(c) => {
                // Key-level tables: this request's keys pick the units, as in a lookup.
                let units: Vec<TableName> = match analysis.statements() {
                    [statement] if !c.keyed.is_empty() && !req.params_per_statement => {
                        let values =
                            crate::keys::Values { statement, params: Some(req.params), returned: None };
                        crate::keys::request_units(&c.units, &c.keyed, &values).0
                    }
                    _ => c.units.clone(),
                };
                let mut versions = Vec::new();
                let view = self.shared.versions.read(&units, &mut versions);
                explanation.tables = units
                    .iter()
                    .zip(&versions)
                    .filter(|(u, _)| u.as_str() != EVERYTHING)
                    .map(|(u, v)| (crate::keys::display_unit(u), *v))
                    .collect();
                if view == VersionView::Unsynchronized {
                    explanation.verdict = Err(BypassReason::VersionsUnsynchronized.to_string());
                } else if self.shared.metrics.wal.is_closed() {
                    explanation.verdict = Err(BypassReason::WalUnavailable.to_string());
                } else if req.params.len() != analysis.client_param_count() as usize
                    && !req.params_per_statement
                {
                    explanation.verdict = Err(BypassReason::ParameterCount {
                        expected: analysis.client_param_count(),
                        bound: req.params.len(),
                    }
                    .to_string());
                } else if req.params.iter().any(time_dependent_param) {
                    explanation.verdict = Err(BypassReason::TimeDependentParameter.to_string());
                } else {
                    let built = build_key(req, analysis, &units, &versions);
                    explanation.key_digest = Some(built.digest().to_string());
                    key = Some(built);
                }
            }
        }
        (explanation, key)
    }
}

/// Whether a bound parameter is date/time input read at execution time: text format, a type
/// that is unspecified, `unknown` or a date/time type, and a value such as `now` or `tomorrow`.
/// (A binary value is an absolute instant; a `text` parameter is only text.)
fn time_dependent_param(param: &Param<'_>) -> bool {
    const DATE_TIME: [u32; 7] = [0, 705, 1082, 1083, 1114, 1184, 1266];
    param.format() == Format::Text
        && DATE_TIME.contains(&param.type_oid().0)
        && param
            .value()
            .is_some_and(|v| std::str::from_utf8(v).is_ok_and(strata_normalizer::is_time_dependent_input))
}

/// The key of a request: scope, statement identity, literal values lifted by the normalizer,
/// bound parameters, result formats, and the version of every table the statement reads.
pub(crate) fn build_key(
    req: &Request<'_>,
    analysis: &Analysis,
    units: &[TableName],
    versions: &[u64],
) -> CacheKey {
    // Every record costs a tag and a length (5 bytes) plus its fields: size the buffer once.
    let literals: usize = analysis.params().map(|p| 10 + p.text().len()).sum();
    let params: usize = req.params.iter().map(|p| 10 + p.value().map_or(0, <[u8]>::len)).sum();
    let tables: usize = units.iter().map(|u| 17 + u.as_str().len()).sum();
    let builder = CacheKey::builder(req.scope, analysis.key_bytes())
        .with_reserved(literals + params + tables + 10 + req.result_formats.len() + req.variant.len());
    key_parts(builder, req, analysis, units, versions).build()
}

/// Appends everything after the statement identity: literal values lifted by the normalizer,
/// bound parameters, result formats, the variant, and the version of every table read.
fn key_parts(
    mut builder: strata_core::KeyBuilder,
    req: &Request<'_>,
    analysis: &Analysis,
    units: &[TableName],
    versions: &[u64],
) -> strata_core::KeyBuilder {
    for literal in analysis.params() {
        builder = builder.param(literal.type_oid(), Format::Text, literal.text().as_bytes());
    }
    for param in req.params {
        builder = match param.value() {
            Some(value) => builder.param(param.type_oid(), param.format(), value),
            None => builder.null_param(param.type_oid(), param.format()),
        };
    }
    builder = builder.result_formats(req.result_formats);
    if !req.variant.is_empty() {
        builder = builder.variant(req.variant);
    }
    for (unit, version) in units.iter().zip(versions) {
        builder = builder.table_version(unit.as_str(), *version);
    }
    builder
}

/// Per-thread buffers of the allocation-free hit path.
#[derive(Default)]
struct Scratch {
    key: Vec<u8>,
    versions: Vec<u64>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// What the allocation-free probe of the in-process tier found.
enum Fast {
    /// Not applicable (no typed in-process tier in front, or the buffers are in use).
    Skip,
    /// The versions cannot be vouched for.
    Unsynchronized,
    Found(CachedResult),
    /// Not in the tier in front: the key built and the versions it was built with, for the rest
    /// of the lookup and the fill ticket.
    Missed(CacheKey, Vec<u64>),
}

/// The answer of [`QueryCache::explain`].
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The statement kind.
    pub kind: String,
    /// `Ok` when cacheable now; otherwise the reason.
    pub verdict: Result<(), String>,
    /// The tables the result depends on, with their current versions.
    pub tables: Vec<(String, u64)>,
    /// The TTL a fill would get (before jitter).
    pub ttl: Duration,
    /// The tiers that may hold it.
    pub tiers: Vec<String>,
    /// The scope's database.
    pub database: String,
    /// The scope's role.
    pub role: String,
    /// The digest of the scope's result-changing settings.
    pub settings_digest: String,
    /// The key digest, when cacheable.
    pub key_digest: Option<String>,
    /// Hints that were ignored, with reasons.
    pub ignored_hints: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Ok(()) => writeln!(f, "{} statement: cacheable", self.kind)?,
            Err(reason) => writeln!(f, "{} statement: not cached ({reason})", self.kind)?,
        }
        writeln!(
            f,
            "scope: database {}, role {}, settings {}",
            self.database, self.role, self.settings_digest
        )?;
        let tables: Vec<String> = self.tables.iter().map(|(t, v)| format!("{t}@{v}")).collect();
        writeln!(
            f,
            "depends on: {}",
            if tables.is_empty() { "no tables".to_owned() } else { tables.join(", ") }
        )?;
        writeln!(f, "ttl: {:?}, tiers: {}", self.ttl, self.tiers.join(", "))?;
        if let Some(digest) = &self.key_digest {
            writeln!(f, "key: {digest}")?;
        }
        for hint in &self.ignored_hints {
            writeln!(f, "ignored hint {hint}")?;
        }
        Ok(())
    }
}

impl crate::policy::Plan {
    pub(crate) fn allows(&self, role: TierRole) -> bool {
        match (&self.verdict, self.analysis.hints().tier()) {
            (Verdict::Bypass(_), _) => false,
            (_, None) => true,
            (_, Some(TierHint::L1)) => role == TierRole::Hot,
            (_, Some(TierHint::L2)) => role == TierRole::Warm,
        }
    }
}
