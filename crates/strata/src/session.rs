//! What one client session's statements mean for the cache: its key scope, read back from
//! PostgreSQL whenever the session may have changed it; the writes of its open transaction, bumped
//! when it commits; and how a committed write becomes invalidations.
//!
//! # Why the scope is read back from the server
//! A session's results depend on its role, its session user and its settings. The SQL text of
//! what the session ran cannot show all of them: a function, a procedure, a `DO` block, a
//! trigger or a view may call `set_config` or `SET ROLE`; `ALTER ROLE … SET` and `ALTER DATABASE
//! … SET` give new sessions settings no statement of theirs set. So a [`CacheSession`] believes
//! nothing it cannot prove: it starts *unverified*, and every request that is not proven to leave
//! the session's state alone makes it unverified again. An unverified session neither looks up
//! nor fills; before its next lookup, the caller runs [`VERIFICATION`-style query](CacheSession::verification_query)
//! on the session's own connection and hands the rows to [`CacheSession::verified`], which
//! rebuilds the scope from PostgreSQL's answer.
//!
//! Proven neutral are: a request answered from cache (nothing ran), transaction control, and
//! reads and writes whose text calls only built-in functions that cannot change settings and
//! (with a current catalog) whose relations run no user code when read or written (no triggers,
//! rules, views or policies calling user functions, defaults or checks calling user functions).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts};
use strata_core::{KeyScope, SettingsDigest, TableName};
use strata_normalizer::{SessionEffect, StatementAnalysis, WriteEffect};

use crate::cache::QueryCache;
use crate::keys::Returned;
use crate::policy::Verdict;
use crate::request::Param;
use crate::Error;

/// Settings proven not to change any result or its text form: the client's own label.
const NEUTRAL_SETTINGS: &[&str] = &["application_name"];

/// Without a catalog, how long a relation found to run no user code is believed to stay so: a
/// trigger, rule or policy created by DDL that bypasses Strata is seen within this time, as the
/// catalog's periodic refresh sees it. DDL through Strata forgets the database's relations at once.
const PLAIN_FOR: Duration = Duration::from_secs(30);

/// At most this many relations are checked by one verification.
const MAX_RELATIONS_CHECKED: usize = 64;

/// At most this many custom setting names are followed; past it, sessions that may have changed
/// a custom setting cannot be verified and stop using the cache (counted, warned).
const MAX_SETTING_NAMES: usize = 4096;

/// The transaction status a request left the session in (PostgreSQL's `ReadyForQuery` status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionState {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block.
    Failed,
}

/// How a write that committed becomes invalidations.
///
/// The SQL text of a write names the tables it writes, but not everything it changes: triggers
/// and rules write elsewhere, cascading foreign keys change referencing tables, a view or a
/// partition parent shows rows of relations a read does not name. Only the catalog tells.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Invalidation {
    /// Every committed write invalidates every cached result. The safe default without a
    /// catalog connection: reads still hit until the next write.
    #[default]
    Everything,
    /// Only the tables the SQL text names. Serves stale results for views, triggers, rules,
    /// cascading foreign keys and inheritance or partition trees: choose it only for a schema
    /// without them.
    SqlText,
    /// The tables the SQL text names, expanded through the upstream's catalog, read on a
    /// connection of the cache's own (feature `catalog`).
    #[cfg(feature = "catalog")]
    Catalog(crate::catalog::CatalogConfig),
}

/// How far a session's state is trusted: a switch for mutation tests of the leak hunt only, which
/// must show that the hunt fails when sessions are not verified. Never use it in production.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestOnlySessionTrust {
    /// The state read before the first lookup is trusted for the whole session.
    StartupOnly,
}

/// Opens one [`CacheSession`] per client session over a shared [`QueryCache`], and owns what
/// all sessions share: the invalidation mode (and its catalog follower), and the names of the
/// custom settings (`app.tenant`) that scopes must include.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct SessionCache {
    inner: Arc<Inner>,
}

struct Inner {
    cache: QueryCache,
    mode: Mode,
    names: Arc<SettingNames>,
    /// Without a current catalog: relations a verification found to run no user code, by
    /// database, with when that was read.
    plain: Mutex<HashMap<Arc<str>, HashMap<TableName, Instant>>>,
    /// Without a catalog: the names of the user functions (outside `pg_catalog`) that are not
    /// immutable and of user operators running such functions, by database, with when a
    /// verification read them (`None` once DDL made them unknown). A call of a built-in's name
    /// may run one of them (an overload for other argument types wins whatever the
    /// `search_path`), which the text cannot show. Believed for [`PLAIN_FOR`].
    overloads: Mutex<HashMap<Arc<str>, Overloads>>,
    verifications: IntCounter,
    verification_failures: IntCounter,
    unverified: IntCounterVec,
    trust_startup_only: bool,
    /// The last verified scope of a session of each database and user (at most
    /// [`MAX_RECENT_SCOPES`]), for explaining a statement as such a session would run it.
    recent_scopes: Mutex<HashMap<DatabaseUser, KeyScope>>,
}

/// The names of a database's user functions that are not immutable, and when they were read.
type Overloads = (Arc<HashSet<String>>, Option<Instant>);

/// A database and a user.
type DatabaseUser = (Arc<str>, Arc<str>);

/// Database and user pairs whose last scope is kept.
const MAX_RECENT_SCOPES: usize = 1_000;

impl Inner {
    /// DDL committed on `database`, here or seen elsewhere: with a catalog, every proxy sharing
    /// the table versions reads its catalog again (see `Catalog::announce_schema_change`).
    fn schema_changed(&self, database: &str) {
        self.plain.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(database);
        // Unknown until read again (a new overload may exist), as opposed to never read.
        self.overloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(Arc::from(database))
            .or_insert_with(|| (Arc::default(), None))
            .1 = None;
        match &self.mode {
            #[cfg(feature = "catalog")]
            Mode::Catalog(catalog) => catalog.announce_schema_change(database),
            Mode::Everything | Mode::SqlText => {
                let _ = database;
            }
        }
    }
}

enum Mode {
    Everything,
    SqlText,
    #[cfg(feature = "catalog")]
    Catalog(crate::catalog::Catalog),
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Everything => f.write_str("Everything"),
            Mode::SqlText => f.write_str("SqlText"),
            #[cfg(feature = "catalog")]
            Mode::Catalog(c) => write!(f, "Catalog({c:?})"),
        }
    }
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCache")
            .field("cache", &self.inner.cache)
            .field("mode", &self.inner.mode)
            .field("custom_settings", &self.inner.names.len())
            .finish()
    }
}

/// Builds a [`SessionCache`].
#[derive(Debug)]
pub struct SessionCacheBuilder {
    cache: QueryCache,
    invalidation: Invalidation,
    settings: Vec<String>,
    trust: Option<TestOnlySessionTrust>,
}

impl SessionCacheBuilder {
    /// Mutation tests only: see [`TestOnlySessionTrust`].
    #[doc(hidden)]
    #[must_use]
    pub fn with_test_only_session_trust(mut self, trust: TestOnlySessionTrust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// How committed writes become invalidations. Default [`Invalidation::Everything`].
    #[must_use]
    pub fn with_invalidation(mut self, invalidation: Invalidation) -> Self {
        self.invalidation = invalidation;
        self
    }

    /// A custom setting (`app.tenant`) every scope includes even before any text or catalog names
    /// it. Names are otherwise learnt from the SQL texts sessions run, from the catalog (function
    /// bodies, policies, views, role and database defaults) and from role and database defaults
    /// read at verification. Default: none.
    #[must_use]
    pub fn with_custom_setting(mut self, name: impl Into<String>) -> Self {
        self.settings.push(name.into());
        self
    }

    /// Builds; with a catalog (`Invalidation::Catalog`, feature `catalog`) it starts reading the
    /// catalog in the background, so it must run inside a Tokio runtime.
    pub fn build(self) -> Result<SessionCache, Error> {
        let names = Arc::new(SettingNames::default());
        for name in &self.settings {
            if !is_setting_name(name) {
                return Err(Error::config(format!(
                    "{name:?} is not a custom setting name (like app.tenant)"
                )));
            }
        }
        names.learn(self.settings.iter().map(String::as_str));
        let mode = match self.invalidation {
            Invalidation::Everything => {
                tracing::warn!("{NO_CATALOG_WARNING}");
                Mode::Everything
            }
            Invalidation::SqlText => {
                tracing::warn!("strata: invalidating only the tables a write's SQL text names (invalidation = sql-text): results that depend on views, triggers, rules, cascading foreign keys or partitions can be stale until their TTL");
                Mode::SqlText
            }
            #[cfg(feature = "catalog")]
            Invalidation::Catalog(config) => {
                tracing::info!(user = config.user(), databases = ?config.databases(), "strata: following the upstream catalog for invalidation");
                Mode::Catalog(crate::catalog::Catalog::start(config, self.cache.clone(), names.clone())?)
            }
        };
        let registry = self.cache.registry();
        let counter = |name: &str, help: &str| -> Result<IntCounter, Error> {
            let c = IntCounter::new(name, help).map_err(|e| Error::config(e.to_string()))?;
            registry.register(Box::new(c.clone())).map_err(|e| Error::config(e.to_string()))?;
            Ok(c)
        };
        let verifications = counter(
            "strata_session_verifications_total",
            "Session states read back from PostgreSQL before a lookup",
        )?;
        let verification_failures = counter(
            "strata_session_verification_failures_total",
            "Session state reads that failed; the session stopped using the cache",
        )?;
        let unverified = IntCounterVec::new(
            Opts::new(
                "strata_session_unverified_total",
                "Requests after which a session's state had to be read back, by reason",
            ),
            &["reason"],
        )
        .map_err(|e| Error::config(e.to_string()))?;
        registry.register(Box::new(unverified.clone())).map_err(|e| Error::config(e.to_string()))?;
        Ok(SessionCache {
            inner: Arc::new(Inner {
                cache: self.cache,
                mode,
                names,
                plain: Mutex::new(HashMap::new()),
                overloads: Mutex::new(HashMap::new()),
                verifications,
                verification_failures,
                unverified,
                trust_startup_only: self.trust == Some(TestOnlySessionTrust::StartupOnly),
                recent_scopes: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Logged at startup when there is no catalog connection.
const NO_CATALOG_WARNING: &str = "strata: no catalog user: every committed write invalidates every cached result, since without reading the catalog Strata cannot know what views, triggers, rules, cascading foreign keys and partitions make a write change; and every read or write that reaches the database makes its session read its state back before the next lookup, since only the catalog shows which relations run user code; set a catalog user for per-table invalidation";

impl SessionCache {
    /// Starts building over `cache`.
    pub fn builder(cache: QueryCache) -> SessionCacheBuilder {
        SessionCacheBuilder {
            cache,
            invalidation: Invalidation::Everything,
            settings: Vec::new(),
            trust: None,
        }
    }

    /// The query cache.
    pub fn query_cache(&self) -> &QueryCache {
        &self.inner.cache
    }

    /// Opens the cache's view of a new client session on `database` as `user` (the login role).
    /// It starts unverified: its first lookup asks for its state to be read.
    pub fn open(&self, database: &str, user: &str) -> CacheSession {
        #[cfg(feature = "catalog")]
        if let Mode::Catalog(catalog) = &self.inner.mode {
            catalog.observe(database);
        }
        CacheSession {
            shared: self.inner.clone(),
            database: Arc::from(database),
            user: Arc::from(user),
            state: Mutex::new(SessionState {
                scope: Scope::Unverified,
                pending: WriteEffect::Nothing,
                pending_keys: crate::keys::KeyLedger::default(),
                functions: BTreeSet::new(),
                relations: BTreeSet::new(),
            }),
        }
    }

    /// With a catalog: waits up to `timeout` until the catalog of every database seen so far has
    /// been read after its last known schema change, and says whether that happened. Without
    /// one there is nothing to wait for: `true` at once.
    pub async fn wait_for_catalog(&self, timeout: std::time::Duration) -> bool {
        match &self.inner.mode {
            #[cfg(feature = "catalog")]
            Mode::Catalog(catalog) => catalog.wait_current(timeout).await,
            Mode::Everything | Mode::SqlText => {
                let _ = timeout;
                true
            }
        }
    }

    /// A transaction the WAL stream saw commit on `database`: invalidates what it wrote under the
    /// invalidation mode (without a catalog, any write invalidates everything, as for writes
    /// through Strata). `schema` when it carried the DDL trigger's message: every proxy's catalog
    /// map is read again, and everything is invalidated.
    #[cfg(feature = "wal")]
    pub(crate) async fn wal_committed(
        &self,
        database: &str,
        effect: WriteEffect,
        keys: &crate::keys::WrittenKeys,
        schema: bool,
    ) -> Result<(), Error> {
        let effect = if schema {
            self.inner.schema_changed(database);
            WriteEffect::Unknown
        } else {
            self.inner.mode.committed(database, effect)
        };
        self.inner.cache.invalidate_keyed(&effect, keys).await
    }

    /// With a catalog: reads the catalog of every database seen so far again now (after DDL
    /// that bypassed Strata, say) and waits up to `timeout` for it; until then writes on them
    /// invalidate everything. Without one: `true` at once.
    pub async fn refresh_catalog(&self, timeout: std::time::Duration) -> bool {
        match &self.inner.mode {
            #[cfg(feature = "catalog")]
            Mode::Catalog(catalog) => {
                catalog.refresh_all();
                catalog.wait_current(timeout).await
            }
            Mode::Everything | Mode::SqlText => {
                let _ = timeout;
                true
            }
        }
    }

    /// The scope a session of `user` on `database` last verified with, if one did.
    pub fn recent_scope(&self, database: &str, user: &str) -> Option<KeyScope> {
        let recent = self.inner.recent_scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.get(&(Arc::from(database), Arc::from(user))).cloned()
    }

    /// The custom setting names scopes include now, sorted.
    pub fn custom_settings(&self) -> Vec<String> {
        self.inner.names.snapshot().1.iter().cloned().collect()
    }
}

/// Whether a session may use the cache now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeStatus {
    /// Verified: look up and fill under this scope.
    Ready(KeyScope),
    /// The session's state must be read back first ([`CacheSession::verification_query`]).
    Unverified,
    /// The session does not use the cache (its state could not be read), with the reason.
    Disabled(String),
}

enum Scope {
    Unverified,
    /// Read back; `Err` with the reason while the session's names may resolve to what its texts
    /// do not show: temporary relations, whose unqualified names can shadow other relations in
    /// its reads, or a `search_path` that puts a schema before `pg_catalog`, where a function or
    /// operator of that schema shadows the built-in one of its name (no lookups until something
    /// changes and a new read finds neither).
    Verified {
        scope: Result<KeyScope, &'static str>,
        names_generation: u64,
    },
    Disabled(String),
}

struct SessionState {
    scope: Scope,
    /// Writes of the open transaction, bumped when it commits.
    pending: WriteEffect,
    /// The keys the pending writes changed, where they are known.
    pending_keys: crate::keys::KeyLedger,
    /// Functions called by requests since the last verification: the next one reads their
    /// bodies for custom setting names.
    functions: BTreeSet<String>,
    /// Relations a request reached upstream that are not known to run no user code: the next
    /// verification reads whether they do.
    relations: BTreeSet<String>,
}

/// One client session as the cache sees it. Opened by [`SessionCache::open`]; dropping it ends
/// the session (PostgreSQL rolls back an open transaction, so its buffered writes are dropped).
pub struct CacheSession {
    shared: Arc<Inner>,
    database: Arc<str>,
    user: Arc<str>,
    state: Mutex<SessionState>,
}

impl fmt::Debug for CacheSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        let scope = match &st.scope {
            Scope::Unverified => "unverified".to_owned(),
            Scope::Verified { scope: Ok(scope), .. } => format!("verified as {}", scope.role()),
            Scope::Verified { scope: Err(why), .. } => format!("verified: {why}"),
            Scope::Disabled(why) => format!("disabled: {why}"),
        };
        f.debug_struct("CacheSession")
            .field("database", &self.database)
            .field("user", &self.user)
            .field("scope", &scope)
            .finish_non_exhaustive()
    }
}

/// A request that ran on the server, as [`CacheSession::executed`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Executed<'a> {
    statements: &'a [Option<&'a str>],
    params: &'a [Option<&'a [Param<'a>]>],
    returned: Option<Returned<'a>>,
    command_tags: &'a [String],
    failed: bool,
    after: TransactionState,
}

impl<'a> Executed<'a> {
    /// The SQL texts the request executed, in order (`None` for a statement whose text is not
    /// known, such as a fast-path function call or a portal of an unknown statement), the
    /// command tags the server answered with, whether an error was reported, and the
    /// transaction status the request ended in.
    pub fn new(
        statements: &'a [Option<&'a str>],
        command_tags: &'a [String],
        failed: bool,
        after: TransactionState,
    ) -> Self {
        Self { statements, params: &[], returned: None, command_tags, failed, after }
    }

    /// The parameters each statement was bound with (extended protocol), in the order of the
    /// statements; `None` (or a missing entry) where they are not known. Writes keyed by `$n`
    /// then bump only their keys' units (see [key-level invalidation](crate::QueryCacheBuilder::with_key_level)).
    #[must_use]
    pub fn with_params(mut self, params: &'a [Option<&'a [Param<'a>]>]) -> Self {
        self.params = params;
        self
    }

    /// For a request of one statement: the key field of the rows it returned
    /// (`RETURNING`), which tells the keys a write changed when its text does not.
    #[must_use]
    pub fn with_returned(mut self, returned: Returned<'a>) -> Self {
        self.returned = Some(returned);
        self
    }
}

impl CacheSession {
    fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The database the session is connected to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The query cache.
    pub fn query_cache(&self) -> &QueryCache {
        &self.shared.cache
    }

    /// Whether lookups may run now, and under which scope.
    pub fn scope(&self) -> ScopeStatus {
        let mut st = self.state();
        match &st.scope {
            Scope::Verified { scope, names_generation } => {
                if *names_generation == self.shared.names.generation() || self.shared.trust_startup_only {
                    match scope {
                        Ok(_) if !self.overloads_fresh() => {
                            // Without a catalog, which built-in names user functions share is
                            // read with the session's state, and believed for a while.
                            st.scope = Scope::Unverified;
                            ScopeStatus::Unverified
                        }
                        Ok(scope) => ScopeStatus::Ready(scope.clone()),
                        Err(why) => ScopeStatus::Disabled((*why).to_owned()),
                    }
                } else {
                    // A custom setting name was learnt since: the scope does not include it yet.
                    st.scope = Scope::Unverified;
                    ScopeStatus::Unverified
                }
            }
            Scope::Unverified => ScopeStatus::Unverified,
            Scope::Disabled(why) => ScopeStatus::Disabled(why.clone()),
        }
    }

    /// The query that reads the session's state back: run it as a simple `Query` on the
    /// session's own connection while it is idle outside a transaction, and hand every row it
    /// returns to [`verified`](Self::verified). It changes nothing in the session (one
    /// read-only implicit transaction) and schema-qualifies everything it calls, so the
    /// session's `search_path` cannot redirect it.
    pub fn verification_query(&self) -> String {
        let (_, names) = self.shared.names.snapshot();
        let st = self.state();
        let functions: Vec<String> = st.functions.iter().cloned().collect();
        let relations: Vec<String> = st.relations.iter().cloned().collect();
        drop(st);
        let mut sql = verification_sql(&names, &functions, &relations);
        if !self.overloads_fresh() {
            sql.push_str(OVERLOADS_SQL);
        }
        sql
    }

    /// Rebuilds the scope from the rows of [`verification_query`](Self::verification_query)
    /// (each a list of column values, `None` for NULL, as sent in text format), or stops caching
    /// for the session when the read failed (`Err` with why).
    pub fn verified(&self, rows: Result<&[Vec<Option<Bytes>>], &str>) {
        let generation_before = self.shared.names.generation();
        let outcome = rows.map_err(str::to_owned).and_then(|rows| {
            let answer = parse_answer(rows)?;
            self.shared.names.learn(answer.names_seen.iter().map(String::as_str));
            Ok(answer)
        });
        let mut st = self.state();
        match outcome {
            Ok(mut answer) => {
                self.shared.verifications.inc();
                st.functions.clear();
                st.relations.clear();
                if let Some(names) = answer.overloads.take() {
                    self.shared
                        .overloads
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(self.database.clone(), (Arc::new(names), Some(Instant::now())));
                }
                if !answer.relations.is_empty() {
                    let now = Instant::now();
                    let mut plain =
                        self.shared.plain.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let known = plain.entry(self.database.clone()).or_default();
                    for (name, runs_code) in &answer.relations {
                        if *runs_code {
                            known.remove(&TableName::new(name.as_str()));
                        } else {
                            known.insert(TableName::new(name.as_str()), now);
                        }
                    }
                }
                if self.shared.names.generation() != generation_before
                    && !answer.covers(&self.shared.names.snapshot().1)
                {
                    // New names were found (role defaults, function bodies): read them too.
                    st.scope = Scope::Unverified;
                    return;
                }
                if self.shared.names.overflowed() {
                    st.scope = Scope::Disabled("too many custom setting names to follow".to_owned());
                    return;
                }
                let scope = if answer.temporary_relations != 0 {
                    Err("the session has temporary relations")
                } else if answer.builtins_shadowable() {
                    Err("the session's search_path puts a schema before pg_catalog, whose functions and operators may then shadow the built-in ones")
                } else {
                    Ok(answer.scope(&self.database))
                };
                if let Ok(scope) = &scope {
                    let mut recent =
                        self.shared.recent_scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let key = (self.database.clone(), self.user.clone());
                    if recent.len() < MAX_RECENT_SCOPES || recent.contains_key(&key) {
                        recent.insert(key, scope.clone());
                    }
                }
                st.scope = Scope::Verified { scope, names_generation: self.shared.names.generation() };
            }
            Err(why) => {
                self.shared.verification_failures.inc();
                tracing::info!(database = %self.database, user = %self.user, error = %why, "strata: could not read a session's state back; it no longer uses the cache");
                st.scope = Scope::Disabled(format!("reading the session state failed: {why}"));
            }
        }
    }

    fn unverify(&self, st: &mut SessionState, reason: &'static str) {
        if self.shared.trust_startup_only {
            return;
        }
        if let Scope::Verified { .. } = st.scope {
            st.scope = Scope::Unverified;
            self.shared.unverified.with_label_values(&[reason]).inc();
        }
    }

    /// Something outside any request may have changed the session's state (the server reported
    /// a parameter change on its own): read it back before the next lookup.
    pub fn state_may_have_changed(&self) {
        let mut st = self.state();
        self.unverify(&mut st, "server report");
    }

    /// Reports a request that ran on the server (never one answered from cache), after its
    /// response ended and before the client may send another: the session's state is checked
    /// for changes, writes of an open transaction are buffered, and committed writes are
    /// invalidated.
    pub async fn executed(&self, request: Executed<'_>) {
        let cache = &self.shared.cache;
        let mut effect = WriteEffect::Nothing;
        let mut ledger = crate::keys::KeyLedger::default();
        let mut unverify: Option<&'static str> = None;
        let catalog_current = self.catalog_current();
        let relations = cache.relations();
        let one_statement = request.statements.len() == 1;
        for (i, statement) in request.statements.iter().enumerate() {
            let Some(sql) = statement else {
                effect = WriteEffect::Unknown;
                unverify = Some("unknown statement");
                continue;
            };
            let plan = cache.plan_async(sql).await;
            let analysis = &plan.analysis;
            effect.merge(analysis.writes());
            if analysis
                .statements()
                .iter()
                .any(|s| relations.user_function_in(s).is_some() || self.overload_in(s, false).is_some())
            {
                // It may have called a user function that shadows a built-in: anything goes.
                effect = WriteEffect::Unknown;
                unverify.get_or_insert("a user function has a built-in's name");
            }
            if let WriteEffect::Tables(written) = analysis.writes() {
                let params = request.params.get(i).copied().flatten();
                let returned = request.returned.as_ref().filter(|_| one_statement);
                ledger.record(written, cache.written_keys(analysis, params, returned));
            }
            if !analysis.leaves_session_alone() {
                unverify.get_or_insert(reason_of(analysis.session_effects()));
                self.shared.names.learn_from_text(sql);
                let mut st = self.state();
                for s in analysis.statements() {
                    for f in s.functions() {
                        if st.functions.len() < 64 {
                            st.functions.insert(f.to_string());
                        }
                    }
                }
                continue;
            }
            // The text runs no code that could change settings; what it reads or writes might.
            if analysis.statements().iter().all(|s| s.kind() == strata_normalizer::StatementKind::Transaction)
            {
                continue;
            }
            let mut touched: Vec<TableName> = match &plan.verdict {
                Verdict::Cacheable(c) => c.units.clone(),
                Verdict::Bypass(_) => analysis.dependencies(),
            };
            if let WriteEffect::Tables(t) = analysis.writes() {
                touched.extend(t.iter().cloned());
            }
            if catalog_current {
                if relations.runs_user_code(&touched) {
                    unverify.get_or_insert("relation runs user code");
                }
                continue;
            }
            // Without a current catalog, each relation is asked about once (by a verification)
            // and believed for a while.
            let unknown = self.not_known_plain(&touched);
            if !unknown.is_empty() {
                unverify.get_or_insert("relation not known to run no user code");
                let mut st = self.state();
                for name in unknown {
                    if st.relations.len() < MAX_RELATIONS_CHECKED {
                        st.relations.insert(name);
                    }
                }
            }
        }
        let tags = request.command_tags;
        // An error outside a transaction rolled the whole request back (the simple protocol runs
        // a multi-statement query as one implicit transaction), unless it committed on the way.
        let rolled_back =
            request.after == TransactionState::Idle && request.failed && !tags.iter().any(|t| t == "COMMIT");
        if rolled_back {
            effect = WriteEffect::Nothing;
        }
        // A prepared transaction commits later, perhaps from another session: whatever it wrote
        // is unknown here, so COMMIT PREPARED invalidates everything.
        if tags.iter().any(|t| t == "COMMIT PREPARED") {
            effect = WriteEffect::Unknown;
        }
        // DDL (and what may run DDL) that executed: views, triggers, rules, keys, partitions or
        // privileges may have changed, whatever tables the text names.
        let schema_changed = !rolled_back && tags.iter().any(|t| changes_schema(t));
        if schema_changed {
            effect = WriteEffect::Unknown;
            self.shared.schema_changed(&self.database);
            unverify.get_or_insert("schema change");
        }
        let to_bump = {
            let mut st = self.state();
            if let Some(reason) = unverify {
                self.unverify(&mut st, reason);
            }
            match request.after {
                TransactionState::InTransaction | TransactionState::Failed => {
                    st.pending.merge(&effect);
                    st.pending_keys.merge(ledger);
                    None
                }
                TransactionState::Idle => {
                    let mut committed = std::mem::replace(&mut st.pending, WriteEffect::Nothing);
                    let mut keys = std::mem::take(&mut st.pending_keys);
                    keys.merge(ledger);
                    let rolled_back_txn = tags.last().is_some_and(|t| t == "ROLLBACK");
                    if rolled_back_txn && effect == WriteEffect::Nothing {
                        // ROLLBACK: the transaction's writes never happened.
                        None
                    } else {
                        committed.merge(&effect);
                        Some((committed, keys.into_keys()))
                    }
                }
            }
        };
        let Some((effect, keys)) = to_bump.map(|(e, k)| (self.committed(e), k)) else { return };
        if effect != WriteEffect::Nothing {
            if let Err(err) = cache.invalidate_keyed(&effect, &keys).await {
                tracing::warn!(error = %err, "strata: could not invalidate after a write; caching is suspended until versions resynchronize");
            }
        }
    }

    /// Of `touched` (version units), those not known to run no user code now.
    fn not_known_plain(&self, touched: &[TableName]) -> Vec<String> {
        let plain = self.shared.plain.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = plain.get(&self.database);
        let now = Instant::now();
        touched
            .iter()
            .filter(|t| t.as_str() != crate::versions::EVERYTHING)
            .filter(|t| known.and_then(|k| k.get(*t)).is_none_or(|at| now.duration_since(*at) >= PLAIN_FOR))
            .map(|t| t.as_str().to_owned())
            .collect()
    }

    /// Whether the session's database's user functions are followed here (no catalog follows
    /// them) and were not read back within [`PLAIN_FOR`] or were forgotten by DDL since.
    fn overloads_fresh(&self) -> bool {
        if matches!(self.shared.mode, Mode::Everything | Mode::SqlText) && !self.shared.trust_startup_only {
            let overloads = self.shared.overloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            overloads.get(&self.database).is_some_and(|(_, at)| at.is_some_and(|at| at.elapsed() < PLAIN_FOR))
        } else {
            true
        }
    }

    /// Without a catalog: the first of `statement`'s bare names (its functions, then its operators
    /// as `operator =`) that a user function (or operator) that is not immutable has too, so that
    /// the call may run it; the first bare name while those names are unknown since
    /// DDL, and while they were never read when `never_read_counts` (a lookup: the scope's
    /// verification reads them first, so only a race gets there). A request run before any
    /// session of its database verified counts only the names read since: until then the proxy
    /// has cached nothing of that database, and counting every operator as a write of unknown
    /// effect would flush every database's results on each read-only transaction.
    fn overload_in<'a>(&self, statement: &'a StatementAnalysis, never_read_counts: bool) -> Option<&'a str> {
        if !matches!(self.shared.mode, Mode::Everything | Mode::SqlText) {
            return None;
        }
        let overloads = self.shared.overloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match overloads.get(&self.database) {
            Some((_, None)) => crate::relations::bare_names(statement).next(),
            Some((names, Some(_))) if names.is_empty() => None,
            Some((names, Some(_))) => crate::relations::shadowed_name(statement, names),
            None if never_read_counts => crate::relations::bare_names(statement).next(),
            None => None,
        }
    }

    /// Without a catalog: the name of a user function the statements of `sql` may call where
    /// their text calls a built-in (a user overload of `upper` for other argument types is what
    /// `upper(5)` runs, whatever the `search_path`), read back with the session's state. Such a
    /// request must not be looked up. With a catalog, its policy already refuses them (`None`).
    pub async fn calls_user_overload(&self, sql: &str) -> Option<String> {
        if !matches!(self.shared.mode, Mode::Everything | Mode::SqlText) {
            return None;
        }
        {
            let overloads = self.shared.overloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if overloads.get(&self.database).is_some_and(|(names, at)| at.is_some() && names.is_empty()) {
                return None;
            }
        }
        let plan = self.shared.cache.plan_async(sql).await;
        plan.analysis.statements().iter().find_map(|s| self.overload_in(s, true).map(str::to_owned))
    }

    fn catalog_current(&self) -> bool {
        match &self.shared.mode {
            #[cfg(feature = "catalog")]
            Mode::Catalog(catalog) => catalog.is_current(&self.database),
            Mode::Everything | Mode::SqlText => false,
        }
    }

    /// What a committed write invalidates under the invalidation mode.
    fn committed(&self, effect: WriteEffect) -> WriteEffect {
        self.shared.mode.committed(&self.database, effect)
    }
}

impl Mode {
    /// What a write committed on `database` invalidates under this mode.
    fn committed(&self, database: &str, effect: WriteEffect) -> WriteEffect {
        match (self, effect) {
            (_, WriteEffect::Nothing) => WriteEffect::Nothing,
            #[cfg(feature = "catalog")]
            (Mode::Catalog(catalog), WriteEffect::Unknown) => {
                // DDL, a DO block, a function: the schema may have changed. Until a read of the
                // catalog started after now is installed, writes here invalidate everything.
                catalog.schema_may_have_changed(database);
                WriteEffect::Unknown
            }
            (_, WriteEffect::Unknown) | (Mode::Everything, _) => WriteEffect::Unknown,
            (Mode::SqlText, tables) => tables,
            #[cfg(feature = "catalog")]
            (Mode::Catalog(catalog), tables) => {
                if catalog.is_current(database) {
                    tables
                } else {
                    WriteEffect::Unknown
                }
            }
        }
    }
}

fn reason_of<'a>(mut effects: impl Iterator<Item = &'a SessionEffect>) -> &'static str {
    match effects.next() {
        Some(SessionEffect::Set { .. } | SessionEffect::Reset { .. } | SessionEffect::ResetAll) => "set",
        Some(SessionEffect::SetLocal { .. }) => "set local",
        Some(SessionEffect::Role | SessionEffect::SessionAuthorization) => "role",
        Some(SessionEffect::SetConfig) => "set_config",
        Some(SessionEffect::ServerCode(_)) | None => "server code",
        Some(_) => "session command",
    }
}

/// Whether a command tag is one of a statement that may change the schema or privileges.
fn changes_schema(tag: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "CREATE ",
        "ALTER ",
        "DROP ",
        "COMMENT",
        "GRANT",
        "REVOKE",
        "SECURITY LABEL",
        "IMPORT FOREIGN SCHEMA",
    ];
    tag == "DO" || tag == "CALL" || PREFIXES.iter().any(|p| tag.starts_with(p))
}

/// The custom setting names scopes include, shared by all sessions; the generation changes
/// whenever a name is added, so scopes verified without it are verified again.
#[derive(Default)]
pub(crate) struct SettingNames {
    names: Mutex<Arc<BTreeSet<String>>>,
    generation: AtomicU64,
    overflowed: std::sync::atomic::AtomicBool,
}

impl SettingNames {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn len(&self) -> usize {
        self.snapshot().1.len()
    }

    fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self) -> (u64, Arc<BTreeSet<String>>) {
        let names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (self.generation(), names.clone())
    }

    /// Adds names (lowercased, as PostgreSQL folds them); bumps the generation if any is new.
    pub(crate) fn learn<'a>(&self, candidates: impl IntoIterator<Item = &'a str>) {
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut added = false;
        for candidate in candidates {
            if !is_setting_name(candidate) {
                continue;
            }
            let name = candidate.to_ascii_lowercase();
            if names.contains(&name) {
                continue;
            }
            if names.len() >= MAX_SETTING_NAMES {
                if !self.overflowed.swap(true, Ordering::AcqRel) {
                    tracing::warn!("strata: more than {MAX_SETTING_NAMES} custom setting names; sessions that may change one no longer use the cache");
                }
                break;
            }
            Arc::make_mut(&mut names).insert(name);
            added = true;
        }
        if added {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Learns every word of a text shaped like a custom setting name (`app.tenant`), wherever it
    /// stands: a `SET` name, a `set_config` argument, a string a `DO` block executes. Extra
    /// names cost one `current_setting` each at verification; a missed one could merge scopes.
    pub(crate) fn learn_from_text(&self, text: &str) {
        self.learn(setting_like_words(text));
    }
}

/// Words shaped like `prefix.name` (letters, digits, `_`, `$`; one or more dots, no leading
/// digit), the shape of PostgreSQL's custom setting names, where a setting name stands: right
/// after a quote (`current_setting('app.tenant')`, `set_config('app.tenant', …)`), after `SET`,
/// `RESET` or `SHOW` (with `LOCAL`/`SESSION`), or before `=` or `TO` (`proconfig`, `SET x TO`).
/// Table-qualified columns (`u.id`) stand elsewhere and are not taken.
pub(crate) fn setting_like_words(text: &str) -> impl Iterator<Item = &str> + '_ {
    // One pass, remembering only the two words before: texts can be megabytes long.
    let bytes = text.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'.';
    let is_keyword = |w: &str| ["set", "reset", "show"].iter().any(|k| w.eq_ignore_ascii_case(k));
    let is_scope = |w: &str| w.eq_ignore_ascii_case("local") || w.eq_ignore_ascii_case("session");
    let (mut i, mut prev1, mut prev2): (usize, Option<&str>, Option<&str>) = (0, None, None);
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if !is_word(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            // Word bytes are ASCII, so these are character boundaries.
            let word = &text[start..i];
            let (before1, before2) = (prev1, prev2);
            prev2 = prev1;
            prev1 = Some(word);
            if !is_setting_name(word) {
                continue;
            }
            let after_keyword = before1.is_some_and(is_keyword)
                || (before1.is_some_and(is_scope) && before2.is_some_and(is_keyword));
            let quoted = start > 0 && matches!(bytes[start - 1], b'\'' | b'"');
            let rest = &bytes[i..];
            let ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let after = &rest[ws..];
            let assigned = after.first() == Some(&b'=')
                || (after.len() > 2
                    && after[..2].eq_ignore_ascii_case(b"to")
                    && after[2].is_ascii_whitespace());
            if quoted || after_keyword || assigned || before1.is_none() {
                return Some(word);
            }
        }
        None
    })
}

pub(crate) fn is_setting_name(word: &str) -> bool {
    let mut parts = word.split('.');
    let mut count = 0;
    let ok = parts.all(|p| {
        count += 1;
        p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    });
    ok && count >= 2 && word.len() <= 128
}

/// The verification query: the role in effect and the session user, every setting
/// `pg_settings` shows that is not at its built-in default (a module's settings appear only once
/// a session loaded it, say plpgsql by running a function: a setting at its default is the same
/// whether it is shown or not, and a setting set anywhere, even to its default, is read), each custom setting name by `current_setting(name, true)`, the names
/// role and database defaults hold, and the bodies of the functions run since the last read
/// (for the custom setting names they use). Names are checked against [`is_setting_name`] and
/// function names are plain identifiers, so nothing here can close a string literal.
fn verification_sql(names: &BTreeSet<String>, functions: &[String], relations: &[String]) -> String {
    let mut sql = String::with_capacity(512 + names.len() * 24);
    sql.push_str(
        "SELECT 'r'::text, current_user::text, session_user::text \
         UNION ALL SELECT 's', s.name, s.setting FROM pg_catalog.pg_settings s \
           WHERE s.source OPERATOR(pg_catalog.<>) 'default' OR s.setting IS DISTINCT FROM s.boot_val \
         UNION ALL SELECT 'd', NULL, c FROM pg_catalog.pg_db_role_setting d, pg_catalog.unnest(d.setconfig) c \
         UNION ALL SELECT 't', NULL, pg_catalog.count(*)::text FROM pg_catalog.pg_class t \
           WHERE t.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()",
    );
    if !names.is_empty() {
        sql.push_str(
            " UNION ALL SELECT 'c', n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest('{",
        );
        let list: Vec<&str> = names.iter().filter(|n| is_setting_name(n)).map(String::as_str).collect();
        sql.push_str(&list.join(","));
        sql.push_str("}'::text[]) n");
    }
    let relations: Vec<String> = relations
        .iter()
        .map(|r| r.to_ascii_lowercase())
        .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    if !relations.is_empty() {
        // Whether reading or writing a relation of that name (in any schema) may run user code:
        // anything but a table without rules, user triggers, and defaults, checks or row-level
        // security policies calling functions outside pg_catalog, or a sequence (`nextval`
        // runs no user code).
        sql.push_str(" UNION ALL SELECT 'k', c.relname::text, (NOT (c.relkind OPERATOR(pg_catalog.=) 'r' OR c.relkind OPERATOR(pg_catalog.=) 'p' OR c.relkind OPERATOR(pg_catalog.=) 'S') \
             OR c.relhasrules \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid OPERATOR(pg_catalog.=) c.oid AND NOT g.tgisinternal) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) d.refobjid \
                 AND f.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
               WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
                 AND ((d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                       AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT a.oid FROM pg_catalog.pg_attrdef a WHERE a.adrelid OPERATOR(pg_catalog.=) c.oid)) \
                   OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                       AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT k.oid FROM pg_catalog.pg_constraint k WHERE k.conrelid OPERATOR(pg_catalog.=) c.oid)) \
                   OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass \
                       AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT p.oid FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid)))))::text \
             FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.=) ANY ('{");
        sql.push_str(&relations.join(","));
        sql.push_str("}'::name[])");
    }
    let bare: Vec<String> = functions
        .iter()
        .filter_map(|f| f.rsplit('.').next())
        .map(|f| f.trim_matches('"').to_ascii_lowercase())
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    if !bare.is_empty() {
        sql.push_str(" UNION ALL SELECT 'f', NULL, p.prosrc FROM pg_catalog.pg_proc p WHERE p.proname OPERATOR(pg_catalog.=) ANY ('{");
        sql.push_str(&bare.join(","));
        sql.push_str("}'::name[])");
        sql.push_str(" UNION ALL SELECT 'f', NULL, pg_catalog.array_to_string(p.proconfig, ' ') FROM pg_catalog.pg_proc p WHERE p.proname OPERATOR(pg_catalog.=) ANY ('{");
        sql.push_str(&bare.join(","));
        sql.push_str("}'::name[])");
    }
    sql
}

/// Read with a session's state when no catalog follows its database (and what was read is older
/// than [`PLAIN_FOR`]): a marker row, then the names of the user functions (outside `pg_catalog`
/// and `information_schema`) that are not immutable, and as `operator <name>` those of user
/// operators running such a function.
const OVERLOADS_SQL: &str = " UNION ALL SELECT 'o', NULL, NULL \
     UNION ALL SELECT 'o', p.proname::text, NULL FROM pg_catalog.pg_proc p \
       WHERE p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
         AND p.pronamespace OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.regnamespace \
         AND p.provolatile OPERATOR(pg_catalog.<>) 'i' \
     UNION ALL SELECT 'o', 'operator ' OPERATOR(pg_catalog.||) o.oprname::text, NULL \
       FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) o.oprcode::pg_catalog.oid \
       WHERE o.oprnamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
         AND p.provolatile OPERATOR(pg_catalog.<>) 'i'";

/// The parsed answer of a verification.
struct Answer {
    role: String,
    /// Relations asked about, and whether one of that name may run user code.
    relations: HashMap<String, bool>,
    /// Relations in the session's temporary schema.
    temporary_relations: u64,
    pairs: Vec<(String, String)>,
    custom_checked: BTreeSet<String>,
    names_seen: Vec<String>,
    /// The names of user functions that are not immutable, when they were asked for.
    overloads: Option<HashSet<String>>,
}

/// A NULL, which no PostgreSQL text value can spell (they never hold NUL).
const NULL: &str = "\0null";

fn text_of(value: &Option<Bytes>) -> String {
    match value {
        None => NULL.to_owned(),
        // Values are in the client's encoding: kept exactly, hex-escaped when not UTF-8.
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                let mut s = String::from("\0hex:");
                for b in bytes.iter() {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }
        },
    }
}

fn parse_answer(rows: &[Vec<Option<Bytes>>]) -> Result<Answer, String> {
    let mut answer = Answer {
        role: String::new(),
        relations: HashMap::new(),
        temporary_relations: 0,
        pairs: Vec::new(),
        custom_checked: BTreeSet::new(),
        names_seen: Vec::new(),
        overloads: None,
    };
    let mut saw_role = false;
    let mut settings = 0usize;
    for row in rows {
        let [kind, name, value] = row.as_slice() else {
            return Err(format!("a row of {} columns instead of 3", row.len()));
        };
        let kind = kind.as_deref().unwrap_or_default();
        match kind {
            b"r" => {
                answer.role = text_of(name);
                answer.pairs.push(("session_user".to_owned(), text_of(value)));
                saw_role = true;
            }
            b"s" => {
                let name = text_of(name);
                settings += 1;
                if !NEUTRAL_SETTINGS.contains(&name.as_str()) {
                    answer.pairs.push((format!("s:{name}"), text_of(value)));
                }
            }
            b"c" => {
                let name = text_of(name);
                answer.custom_checked.insert(name.clone());
                answer.pairs.push((format!("c:{name}"), text_of(value)));
            }
            b"d" => {
                // `name=value` from ALTER ROLE/DATABASE ... SET: the name may be a custom one.
                let text = text_of(value);
                if let Some((n, _)) = text.split_once('=') {
                    answer.names_seen.push(n.to_owned());
                }
            }
            b"k" => {
                // One row per relation of that name, in any schema: it runs no user code only
                // if none of them does.
                let runs_code = value.as_deref() != Some(&b"false"[..]);
                *answer.relations.entry(text_of(name)).or_insert(false) |= runs_code;
            }
            b"t" => {
                answer.temporary_relations = text_of(value)
                    .parse()
                    .map_err(|_| "the count of temporary relations is not a number".to_owned())?;
            }
            b"o" => {
                let names = answer.overloads.get_or_insert_with(HashSet::new);
                if name.is_some() {
                    names.insert(text_of(name));
                }
            }
            b"f" => {
                let text = text_of(value);
                answer.names_seen.extend(setting_like_words(&text).map(str::to_owned));
            }
            other => return Err(format!("unexpected row kind {:?}", String::from_utf8_lossy(other))),
        }
    }
    if !saw_role || settings == 0 {
        return Err("the answer lacks the role or the settings".to_owned());
    }
    Ok(answer)
}

impl Answer {
    /// Whether every name in `names` was read in this answer.
    fn covers(&self, names: &BTreeSet<String>) -> bool {
        names.iter().all(|n| self.custom_checked.contains(n))
    }

    /// Whether the `search_path` read back names a schema before `pg_catalog`: PostgreSQL
    /// searches `pg_catalog` first only when the path does not name it, so a function or
    /// operator in an earlier schema then shadows the built-in one its text seems to call.
    fn builtins_shadowable(&self) -> bool {
        let Some((_, path)) = self.pairs.iter().find(|(n, _)| n == "s:search_path") else { return false };
        search_path_shadows_builtins(path)
    }

    fn scope(&self, database: &str) -> KeyScope {
        let digest = SettingsDigest::of(self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        KeyScope::new(database, self.role.as_str(), digest)
    }
}

/// Whether a `search_path` value names a schema before `pg_catalog` (`pg_temp` aside: functions
/// and operators are never looked up there).
fn search_path_shadows_builtins(path: &str) -> bool {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut current)),
            c if !quoted && c.is_whitespace() => {}
            c if !quoted => current.extend(c.to_lowercase()),
            c => current.push(c),
        }
    }
    names.push(current);
    match names.iter().position(|n| n == "pg_catalog") {
        Some(at) => names[..at].iter().any(|n| !n.is_empty() && n != "pg_temp" && !n.starts_with("pg_temp_")),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_path_shadows_builtins_when_it_names_a_schema_before_pg_catalog() {
        for (path, shadows) in [
            ("\"$user\", public", false),
            ("public", false),
            ("pg_catalog, public", false),
            ("pg_temp, pg_catalog, app", false),
            ("", false),
            ("public, pg_catalog", true),
            ("app, PG_CATALOG", true),
            ("\"$user\", public, pg_catalog", true),
            ("\"pg_catalog\", app", false),
            ("\"a,b\", pg_catalog", true),
            ("\"pg_catalog \", pg_catalog", true),
        ] {
            assert_eq!(search_path_shadows_builtins(path), shadows, "{path}");
        }
    }

    fn row(kind: &str, name: Option<&str>, value: Option<&str>) -> Vec<Option<Bytes>> {
        vec![
            Some(Bytes::copy_from_slice(kind.as_bytes())),
            name.map(|n| Bytes::copy_from_slice(n.as_bytes())),
            value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        ]
    }

    fn base() -> Vec<Vec<Option<Bytes>>> {
        vec![
            row("r", Some("alice"), Some("alice")),
            row("s", Some("search_path"), Some("public")),
            row("s", Some("application_name"), Some("psql")),
        ]
    }

    fn scope_of(rows: &[Vec<Option<Bytes>>]) -> KeyScope {
        parse_answer(rows).map(|a| a.scope("db")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn scope_follows_every_setting_but_application_name() {
        let a = scope_of(&base());
        let mut other_app = base();
        other_app[2] = row("s", Some("application_name"), Some("pgbench"));
        assert_eq!(a, scope_of(&other_app));
        let mut other_path = base();
        other_path[1] = row("s", Some("search_path"), Some("other"));
        assert_ne!(a, scope_of(&other_path));
        let mut other_role = base();
        other_role[0] = row("r", Some("bob"), Some("alice"));
        assert_ne!(a, scope_of(&other_role));
        let mut other_session_user = base();
        other_session_user[0] = row("r", Some("alice"), Some("carol"));
        assert_ne!(a, scope_of(&other_session_user));
    }

    #[test]
    fn custom_settings_null_and_empty_differ() {
        let mut unset = base();
        unset.push(row("c", Some("app.tenant"), None));
        let mut empty = base();
        empty.push(row("c", Some("app.tenant"), Some("")));
        let mut one = base();
        one.push(row("c", Some("app.tenant"), Some("1")));
        assert_ne!(scope_of(&unset), scope_of(&empty));
        assert_ne!(scope_of(&empty), scope_of(&one));
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(parse_answer(&[]).is_err());
        assert!(parse_answer(&[row("r", Some("a"), Some("a"))]).is_err());
        assert!(parse_answer(&[vec![None]]).is_err());
        let mut odd = base();
        odd.push(row("x", None, None));
        assert!(parse_answer(&odd).is_err());
    }

    #[test]
    fn setting_names_are_learnt_from_words() {
        let words: Vec<&str> = setting_like_words(
            "DO $$BEGIN EXECUTE 'SET app.tenant = 5'; PERFORM set_config('x.y_z', '1', false); END$$",
        )
        .collect();
        assert_eq!(words, ["app.tenant", "x.y_z"]);
        let words: Vec<&str> = setting_like_words(
            "SELECT u.id FROM public.users u WHERE current_setting('app.t') = 'x'; SET LOCAL a.b TO 1; c.d=1 e.f",
        )
        .collect();
        assert_eq!(words, ["app.t", "a.b", "c.d"]);
        // Multibyte characters right after a name, and a long text, are read without a slip.
        let words: Vec<&str> = setting_like_words("SELECT 'a.b'é, x.yé, SET c.dé").collect();
        assert_eq!(words, ["a.b", "c.d"]);
        let long = "SELECT u.id FROM t u WHERE ".repeat(200_000) + "current_setting('app.z')";
        assert_eq!(setting_like_words(&long).collect::<Vec<_>>(), ["app.z"]);
        assert!(!is_setting_name("1a.b"));
        assert!(!is_setting_name("a."));
        assert!(!is_setting_name("plain"));
        assert!(is_setting_name("a.b.c"));
    }

    #[test]
    fn verification_sql_embeds_only_checked_names() {
        let names: BTreeSet<String> = ["app.tenant".to_owned(), "x'y.z".to_owned()].into();
        let sql = verification_sql(
            &names,
            &["app.set_tenant".to_owned(), "bad'name".to_owned()],
            &["accounts".to_owned(), "x'; drop".to_owned()],
        );
        assert!(sql.contains("'{accounts}'"), "{sql}");
        assert!(!sql.contains("drop"), "{sql}");
        assert!(sql.contains("'{app.tenant}'"), "{sql}");
        assert!(!sql.contains("x'y"), "{sql}");
        assert!(sql.contains("'{set_tenant}'"), "{sql}");
        assert!(!sql.contains("bad'"), "{sql}");
    }
}
