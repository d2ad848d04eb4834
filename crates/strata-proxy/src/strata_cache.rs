//! `StrataCache`: the proxy's [`RequestCache`] backed by `strata::QueryCache`.
//!
//! It derives each request's key scope from the session (database, the role in effect, every
//! setting the proxy tracked), keys extended-protocol batches by their shape (the replayed bytes
//! depend on which messages asked), fills from the exact server bytes, and turns every write that
//! commits into a version bump before the client sees `ReadyForQuery`: of every table
//! ([`Invalidation::Everything`], the default), of the tables the SQL names, or of those expanded
//! through the upstream's catalog ([`Invalidation::Catalog`], see `catalog.rs`). DDL that
//! committed invalidates everything and, with a catalog, triggers a read of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use strata::{
    FillTicket, KeyScope, Param, QueryCache, QueryCacheConfig, RedisVersions, SettingsDigest, WriteEffect,
};
use strata_core::TypeOid;

use crate::catalog::{Catalog, CatalogConfig};
use crate::seam::{
    CacheMode, ExtendedMessage, Fill, Format, Lookup, Request, RequestCache, RequestKind, Response, Target,
    TransactionStatus,
};
use crate::session::SessionView;
use crate::Error;

/// Where the cache's shared state lives and how it is configured; see [`build_query_cache`].
#[derive(Clone, Default)]
pub struct CacheSettings {
    /// The `[cache]` table of the proxy's configuration file (`strata::QueryCacheConfig`).
    pub table: Option<toml::Table>,
    /// A Redis URL: L2 and table versions are then shared with every proxy using the same Redis.
    pub redis: Option<String>,
    /// `false` turns caching off (the proxy only relays).
    pub enabled: bool,
}

impl fmt::Debug for CacheSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheSettings")
            .field("table", &self.table.as_ref().map(|t| t.keys().cloned().collect::<Vec<_>>()))
            .field("redis", &self.redis.as_ref().map(|_| "<set>"))
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// Builds the `QueryCache` the proxy uses: the `[cache]` table's settings; with a Redis URL,
/// L2 in that Redis and table versions shared through it (so writes through any proxy invalidate
/// every proxy); without one, the embedded in-memory L2 and versions local to this process.
pub async fn build_query_cache(settings: &CacheSettings) -> Result<QueryCache, Error> {
    let config = match &settings.table {
        Some(table) => {
            QueryCacheConfig::from_toml(&table.to_string()).map_err(|e| Error::config(e.to_string()))?
        }
        None => QueryCacheConfig::default(),
    };
    let Some(url) = &settings.redis else {
        return config.build().map_err(|e| Error::config(e.to_string()));
    };
    let mut config = config;
    let mut l2 = config.l2.take().unwrap_or_default();
    l2.storage = strata_l2::StorageConfig::Redis { url: url.clone(), key_prefix: "strata:l2:".to_owned() };
    config.l2 = Some(l2);
    let versions = RedisVersions::builder(url.clone())
        .with_prefix("strata:versions:")
        .with_deadline(Duration::from_millis(500))
        .build()
        .await
        .map_err(|e| Error::config(format!("cannot use redis for shared table versions: {e}")))?;
    config
        .to_builder()
        .map_err(|e| Error::config(e.to_string()))?
        .with_version_store(Arc::new(versions))
        .build()
        .map_err(|e| Error::config(e.to_string()))
}

/// How a write that committed through the proxy becomes invalidations.
///
/// The SQL text of a write names the tables it writes, but not everything it changes: triggers
/// and rules write elsewhere, cascading foreign keys change referencing tables, a view or a
/// partition parent shows rows of relations a read does not name. Only the catalog tells.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Invalidation {
    /// Every committed write invalidates every cached result. The safe default when the proxy
    /// has no catalog connection: reads still hit until the next write.
    #[default]
    Everything,
    /// Only the tables the SQL text names. Serves stale results for views, triggers, rules,
    /// cascading foreign keys and inheritance or partition trees: choose it only for a schema
    /// without them (or with the tables they touch excluded from caching).
    SqlText,
    /// The tables the SQL text names, expanded through the upstream's catalog read on a
    /// connection of the proxy's own.
    Catalog(CatalogConfig),
}

/// The proxy's cache: `strata::QueryCache` behind the [`RequestCache`] seam.
pub struct StrataCache {
    cache: QueryCache,
    mode: Mode,
    /// The scope derived from each session's current snapshot.
    scopes: Mutex<HashMap<u64, (SessionView, KeyScope)>>,
    /// Writes made inside each session's open transaction, bumped when it commits.
    pending: Mutex<HashMap<u64, WriteEffect>>,
}

#[derive(Debug)]
enum Mode {
    Everything,
    SqlText,
    Catalog(Catalog),
}

/// Builds a [`StrataCache`].
#[derive(Debug)]
pub struct StrataCacheBuilder {
    cache: QueryCache,
    invalidation: Invalidation,
}

impl StrataCacheBuilder {
    /// How writes become invalidations. Default [`Invalidation::Everything`].
    pub fn with_invalidation(mut self, invalidation: Invalidation) -> Self {
        self.invalidation = invalidation;
        self
    }

    /// Builds the cache; with [`Invalidation::Catalog`] it starts reading the catalog in the
    /// background, so it must run inside a Tokio runtime.
    pub fn build(self) -> Result<StrataCache, Error> {
        let mode = match self.invalidation {
            Invalidation::Everything => {
                tracing::warn!("{NO_CATALOG_WARNING}");
                Mode::Everything
            }
            Invalidation::SqlText => {
                tracing::warn!("strata-proxy: invalidating only the tables a write's SQL text names (invalidation = sql-text): results that depend on views, triggers, rules, cascading foreign keys or partitions can be stale until their TTL");
                Mode::SqlText
            }
            Invalidation::Catalog(config) => {
                tracing::info!(user = config.user(), databases = ?config.databases(), "strata-proxy: following the upstream catalog for invalidation");
                Mode::Catalog(Catalog::start(config, self.cache.clone())?)
            }
        };
        Ok(StrataCache {
            cache: self.cache,
            mode,
            scopes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        })
    }
}

/// Logged at startup when the proxy has no catalog connection.
const NO_CATALOG_WARNING: &str = "strata-proxy: no catalog user (--catalog-user / STRATA_CATALOG_USER): every write through the proxy invalidates every cached result, since without reading the catalog the proxy cannot know what views, triggers, rules, cascading foreign keys and partitions make a write change; set a catalog user for per-table invalidation";

impl StrataCache {
    /// Wraps a query cache with the safe default, [`Invalidation::Everything`].
    pub fn new(cache: QueryCache) -> Self {
        Self {
            cache,
            mode: Mode::Everything,
            scopes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Starts building a cache around `cache`.
    pub fn builder(cache: QueryCache) -> StrataCacheBuilder {
        StrataCacheBuilder { cache, invalidation: Invalidation::Everything }
    }

    /// The query cache (for its registry, explain and stats).
    pub fn query_cache(&self) -> &QueryCache {
        &self.cache
    }

    /// With [`Invalidation::Catalog`]: waits up to `timeout` until the catalog of every database
    /// seen so far has been read after its last known schema change, and says whether that
    /// happened. Without a catalog there is nothing to wait for: `true` at once.
    pub async fn wait_for_catalog(&self, timeout: Duration) -> bool {
        match &self.mode {
            Mode::Catalog(catalog) => catalog.wait_current(timeout).await,
            Mode::Everything | Mode::SqlText => true,
        }
    }

    /// With [`Invalidation::Catalog`]: reads the catalog of every database seen so far again
    /// now (say, after DDL that bypassed the proxy, instead of waiting for the periodic refresh),
    /// and waits up to `timeout` for it; until then writes on them invalidate everything.
    /// Without a catalog: `true` at once.
    pub async fn refresh_catalog(&self, timeout: Duration) -> bool {
        match &self.mode {
            Mode::Catalog(catalog) => {
                catalog.refresh_all();
                catalog.wait_current(timeout).await
            }
            Mode::Everything | Mode::SqlText => true,
        }
    }

    fn scope(&self, session: &SessionView) -> KeyScope {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((view, scope)) = scopes.get(&session.session_id()) {
            if view.same_snapshot(session) {
                return scope.clone();
            }
        }
        let scope = scope_of(session);
        scopes.insert(session.session_id(), (session.clone(), scope.clone()));
        drop(scopes);
        // A new session or a changed snapshot, never the hit path: start reading the
        // database's catalog if nobody has yet.
        if let Mode::Catalog(catalog) = &self.mode {
            catalog.observe(session.database());
        }
        scope
    }

    /// What a committed write on `database` invalidates under the invalidation mode.
    fn committed(&self, database: &str, effect: WriteEffect) -> WriteEffect {
        match (&self.mode, effect) {
            (_, WriteEffect::Nothing) => WriteEffect::Nothing,
            (Mode::Catalog(catalog), WriteEffect::Unknown) => {
                // DDL, a DO block, a function: the schema may have changed. Until a read of
                // the catalog started after now is installed, writes here invalidate everything.
                catalog.schema_may_have_changed(database);
                WriteEffect::Unknown
            }
            (_, WriteEffect::Unknown) | (Mode::Everything, _) => WriteEffect::Unknown,
            (Mode::SqlText, tables) => tables,
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

impl fmt::Debug for StrataCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrataCache")
            .field("cache", &self.cache)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
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

/// Whether a simple-protocol text has a `TRUNCATE ... CASCADE`, which empties every table
/// referencing the named ones whatever their foreign keys' actions.
fn truncates_with_cascade(sql: &str) -> bool {
    crate::effects::split_statements(sql).iter().any(|statement| {
        let words: Vec<String> = statement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_uppercase)
            .collect();
        words.iter().any(|w| w == "TRUNCATE") && words.iter().any(|w| w == "CASCADE")
    })
}

/// The role whose privileges and row-level-security policies apply: `SET ROLE`, else
/// `SET SESSION AUTHORIZATION`, else the login user.
fn role_in_effect(session: &SessionView) -> &str {
    session.role().or(session.session_authorization()).unwrap_or(session.user())
}

/// Settings that cannot change a result or its text form (the client's own label).
const NEUTRAL_SETTINGS: &[&str] = &["application_name"];

/// The scope of a session: database, role in effect, and a digest of everything the session
/// set or the server reported, except settings known not to matter. Anything unknown is
/// included: two sessions share results only if every tracked setting agrees.
fn scope_of(session: &SessionView) -> KeyScope {
    let mut pairs: Vec<(String, &str)> = Vec::new();
    let neutral = |name: &str| NEUTRAL_SETTINGS.iter().any(|n| n.eq_ignore_ascii_case(name));
    for (name, value) in session.startup_parameters().filter(|(n, _)| !neutral(n)) {
        pairs.push((format!("startup:{}", name.to_ascii_lowercase()), value));
    }
    for (name, value) in session.server_parameters().filter(|(n, _)| !neutral(n)) {
        pairs.push((format!("server:{}", name.to_ascii_lowercase()), value));
    }
    for (name, value) in session.settings().filter(|(n, _)| !neutral(n)) {
        pairs.push((format!("set:{}", name.to_ascii_lowercase()), value));
    }
    pairs.push(("login_user".to_owned(), session.user()));
    let digest = SettingsDigest::of(pairs.iter().map(|(n, v)| (n.as_str(), *v)));
    KeyScope::new(session.database(), role_in_effect(session), digest)
}

fn strata_format(format: Format) -> strata_core::Format {
    match format {
        Format::Text => strata_core::Format::Text,
        Format::Binary => strata_core::Format::Binary,
    }
}

/// A cacheable extended batch: one or more `[Parse] Bind [Describe] Execute` groups (pipelined
/// before one `Sync`), no row limits.
struct Batch<'a> {
    items: Vec<BatchItem<'a>>,
    /// Which messages asked: the replayed bytes depend on it.
    shape: Vec<u8>,
}

/// One executed statement of a batch.
struct BatchItem<'a> {
    sql: &'a str,
    param_types: &'a [u32],
    params: &'a [Option<bytes::Bytes>],
    param_formats: &'a [Format],
    result_formats: &'a [Format],
}

fn batch(messages: &[ExtendedMessage]) -> Option<Batch<'_>> {
    // Room for the shape and, of a single statement, its declared types and more: the shape
    // becomes the key's variant without regrowing.
    let mut shape = Vec::with_capacity(32);
    let mut bound: Option<&crate::seam::Bind> = None;
    let mut items = Vec::with_capacity(1);
    for message in messages {
        match message {
            ExtendedMessage::Parse(_) => shape.push(b'P'),
            ExtendedMessage::Bind(b) => {
                // A portal bound and never executed: not a shape worth caching.
                if bound.is_some() {
                    return None;
                }
                bound = Some(b);
                shape.push(b'B');
            }
            ExtendedMessage::Describe(Target::Portal(_)) => shape.extend_from_slice(b"DP"),
            ExtendedMessage::Describe(Target::Statement(..)) => shape.extend_from_slice(b"DS"),
            ExtendedMessage::Execute { max_rows, portal, .. } => {
                let bind = bound.take()?;
                if *max_rows != 0 || bind.portal() != portal {
                    return None;
                }
                let statement = bind.statement()?;
                items.push(BatchItem {
                    sql: statement.sql(),
                    param_types: statement.param_types(),
                    params: bind.params(),
                    param_formats: bind.param_formats(),
                    result_formats: bind.result_formats(),
                });
                shape.push(b'E');
            }
            ExtendedMessage::Sync => shape.push(b'S'),
            _ => return None,
        }
    }
    (bound.is_none() && !items.is_empty()).then_some(Batch { items, shape })
}

impl BatchItem<'_> {
    /// The bound parameters with their declared types and formats (one format code applies to
    /// every parameter; none means text).
    fn params(&self) -> impl Iterator<Item = Param<'_>> + '_ {
        self.params.iter().enumerate().map(|(i, value)| {
            let ty = TypeOid(self.param_types.get(i).copied().unwrap_or(0));
            let format = match self.param_formats {
                [] => Format::Text,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(Format::Text),
            };
            match (value, format) {
                (Some(v), Format::Text) => Param::text(ty, v),
                (Some(v), Format::Binary) => Param::binary(ty, v),
                (None, f) => Param::null(ty, strata_format(f)),
            }
        })
    }
}

/// The write effect of everything a request executed.
fn write_effect(cache: &QueryCache, request: &Request) -> WriteEffect {
    let mut effect = WriteEffect::Nothing;
    match request.kind() {
        RequestKind::Simple { sql } => match cache.write_effect(sql) {
            WriteEffect::Tables(_) if truncates_with_cascade(sql) => effect = WriteEffect::Unknown,
            written => merge(&mut effect, &written),
        },
        RequestKind::Extended { messages } => {
            for message in messages {
                if let ExtendedMessage::Execute { statement, .. } = message {
                    match statement {
                        Some(statement) => match cache.write_effect(statement.sql()) {
                            WriteEffect::Tables(_) if truncates_with_cascade(statement.sql()) => {
                                effect = WriteEffect::Unknown;
                            }
                            written => merge(&mut effect, &written),
                        },
                        // A statement the proxy does not know: anything may have changed.
                        None => effect = WriteEffect::Unknown,
                    }
                }
            }
        }
        // A fast-path function call may do anything.
        RequestKind::FunctionCall => effect = WriteEffect::Unknown,
    }
    effect
}

fn merge(into: &mut WriteEffect, other: &WriteEffect) {
    match (&mut *into, other) {
        (WriteEffect::Unknown, _) | (_, WriteEffect::Nothing) => {}
        (_, WriteEffect::Unknown) => *into = WriteEffect::Unknown,
        (WriteEffect::Nothing, WriteEffect::Tables(t)) => *into = WriteEffect::Tables(t.clone()),
        (WriteEffect::Tables(mine), WriteEffect::Tables(t)) => {
            for table in t {
                if !mine.contains(table) {
                    mine.push(table.clone());
                }
            }
        }
    }
}

#[async_trait]
impl RequestCache for StrataCache {
    fn mode(&self) -> CacheMode {
        CacheMode::Active
    }

    async fn lookup(&self, session: &SessionView, request: &Request) -> Lookup {
        let scope = self.scope(session);
        let found = match request.kind() {
            RequestKind::Simple { sql } => {
                self.cache.lookup(&strata::Request::new(&scope, sql).with_variant(b"Q")).await
            }
            RequestKind::Extended { messages } => {
                let Some(mut batch) = batch(messages) else { return Lookup::Bypass };
                let params: Vec<Param<'_>> = batch.items.iter().flat_map(BatchItem::params).collect();
                // The declared parameter types shape the ParameterDescription a replay contains.
                let mut variant = std::mem::take(&mut batch.shape);
                if let [item] = batch.items.as_slice() {
                    for ty in item.param_types {
                        variant.extend_from_slice(&ty.to_le_bytes());
                    }
                    let formats: Vec<strata_core::Format> =
                        item.result_formats.iter().map(|f| strata_format(*f)).collect();
                    let req = strata::Request::new(&scope, item.sql)
                        .with_params(&params)
                        .with_result_formats(&formats)
                        .with_variant(&variant);
                    self.cache.lookup(&req).await
                } else {
                    // Pipelined statements: one text for the analysis (cacheable only if every
                    // statement is), their parameters one after the other, and each one's declared
                    // types and result formats in the variant. The separator sits on its own line so
                    // a trailing line comment cannot swallow it.
                    let sql = batch.items.iter().map(|i| i.sql).collect::<Vec<_>>().join("\n;\n");
                    // Each list is length-prefixed, so no two batches encode alike; the count of
                    // values each Bind carried is there too, so a batch that splits the same
                    // values differently (which the server would refuse) never meets a cached answer.
                    for item in &batch.items {
                        variant.extend_from_slice(&(item.params.len() as u32).to_le_bytes());
                        variant.extend_from_slice(&(item.param_types.len() as u32).to_le_bytes());
                        for ty in item.param_types {
                            variant.extend_from_slice(&ty.to_le_bytes());
                        }
                        variant.extend_from_slice(&(item.result_formats.len() as u32).to_le_bytes());
                        variant.extend(item.result_formats.iter().map(|f| strata_format(*f).code() as u8));
                    }
                    let req = strata::Request::new(&scope, &sql)
                        .with_params(&params)
                        .with_variant(&variant)
                        .as_batch();
                    self.cache.lookup(&req).await
                }
            }
            _ => return Lookup::Bypass,
        };
        match found {
            strata::Lookup::Hit(hit) => Lookup::Hit(hit.payload().clone()),
            strata::Lookup::Miss(ticket) => Lookup::Miss(Fill::new(ticket)),
            strata::Lookup::Bypass(_) => Lookup::Bypass,
        }
    }

    async fn complete(
        &self,
        session: &SessionView,
        request: &Request,
        response: &Response,
        fill: Option<Fill>,
    ) {
        if let Some(ticket) = fill.and_then(|f| f.downcast::<FillTicket>().ok()) {
            match response.cacheable_bytes() {
                Some(bytes) => {
                    ticket.fill_detached(bytes.clone(), response.summary().rows()).await;
                }
                // An error, a notice, a parameter change, too large...: never stored; anyone
                // waiting for this fill goes to the database.
                None => ticket.abandon(),
            }
        }
        let summary = response.summary();
        let tags = summary.command_tags();
        let mut effect = write_effect(&self.cache, request);
        let status = summary.transaction_status();
        // An error outside a transaction rolled the whole request back (the simple protocol runs
        // a multi-statement query as one implicit transaction), unless it committed on the way.
        let rolled_back = status == TransactionStatus::Idle
            && summary.error_code().is_some()
            && !tags.iter().any(|t| t == "COMMIT");
        if rolled_back {
            effect = WriteEffect::Nothing;
        }
        // A prepared transaction commits later, perhaps from another session: whatever it wrote
        // is unknown here, so COMMIT PREPARED invalidates everything.
        if tags.iter().any(|t| t == "COMMIT PREPARED") {
            effect = WriteEffect::Unknown;
        }
        // DDL (and what may run DDL) that executed: views, triggers, rules, keys, partitions or
        // privileges may have changed, whatever tables the text names. It invalidates everything
        // and, with a catalog, makes the database stale until its catalog is read again.
        if !rolled_back && tags.iter().any(|t| changes_schema(t)) {
            effect = WriteEffect::Unknown;
        }
        let to_bump = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let session_id = session.session_id();
            match status {
                TransactionStatus::InTransaction | TransactionStatus::Failed => {
                    merge(pending.entry(session_id).or_insert(WriteEffect::Nothing), &effect);
                    None
                }
                _ => {
                    let mut committed = pending.remove(&session_id).unwrap_or(WriteEffect::Nothing);
                    let rolled_back = tags.last().is_some_and(|t| t == "ROLLBACK");
                    if rolled_back && effect == WriteEffect::Nothing {
                        // ROLLBACK: the transaction's writes never happened.
                        None
                    } else {
                        merge(&mut committed, &effect);
                        Some(committed)
                    }
                }
            }
        };
        let to_bump = to_bump.map(|e| self.committed(session.database(), e));
        if let Some(effect) = to_bump.filter(|e| *e != WriteEffect::Nothing) {
            if let Err(err) = self.cache.invalidate(&effect).await {
                tracing::warn!(error = %err, "strata-proxy: could not invalidate after a write; caching is suspended until versions resynchronize");
            }
        }
    }

    async fn session_closed(&self, session_id: u64) {
        // PostgreSQL rolls back a transaction left open: its writes never happened.
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&session_id);
        self.scopes.lock().unwrap_or_else(|e| e.into_inner()).remove(&session_id);
    }
}
