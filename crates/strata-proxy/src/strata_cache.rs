//! `StrataCache`: the proxy's [`RequestCache`] backed by `strata::SessionCache`.
//!
//! It turns wire requests into `strata` requests: a simple `Query` is one text; an extended
//! batch is keyed by its shape (the replayed bytes depend on which messages asked), its bound
//! parameters, declared types and result formats. It fills from the exact server bytes, and hands
//! every request that ran upstream to the session's [`strata::CacheSession`], which decides what
//! it did to the session's state and what it invalidates. The proxy reads no SQL itself.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smallvec::{smallvec, SmallVec};
use strata::{
    CacheSession, DiscardTarget, Executed, FillTicket, Invalidation, KeyScope, Param, QueryCache,
    QueryCacheConfig, RedisVersions, ScopeStatus, SessionCache, SessionEffect, TransactionState,
};
use strata_core::TypeOid;

use crate::seam::{
    CacheMode, Capture, Captured, ColumnOrigin, ConsoleCommand, ConsoleReply, Dropped, ExtendedMessage, Fill,
    Format, Lookup, PreparedStatement, Request, RequestCache, RequestKind, RequestSession, Response, Target,
    TransactionStatus,
};
use crate::session::SessionView;
use crate::Error;

/// Where the cache's shared state lives and how it is configured; see [`build_query_cache`].
#[derive(Clone)]
pub struct CacheSettings {
    /// The `[cache]` table of the proxy's configuration file (`strata::QueryCacheConfig`).
    pub table: Option<toml::Table>,
    /// A Redis URL: L2 and table versions are then shared with every proxy using the same Redis.
    pub redis: Option<String>,
    /// The URLs of some nodes of a Redis Cluster, instead of `redis`: L2 and table versions are
    /// then shared through that cluster.
    pub redis_cluster: Vec<String>,
    /// `false` turns caching off (the proxy only relays).
    pub enabled: bool,
    /// Custom settings every session's key includes from the start.
    pub custom_settings: Vec<String>,
    /// Key-level invalidation on or off, over the `[cache]` table's `key_level` (default on).
    pub key_level: Option<bool>,
    /// The semantic tier, when on (`[semantic]`, `--semantic-model`).
    pub semantic: Option<SemanticSettings>,
}

/// The embedder of the semantic tier.
#[derive(Clone, PartialEq)]
pub enum EmbedderChoice {
    /// all-MiniLM-L6-v2 run in-process from a directory holding `config.json`, `tokenizer.json`
    /// and `model.safetensors` (the `minilm` feature).
    MiniLm(PathBuf),
    /// Hashed word and character n-grams: lexical, no model, no service.
    NGrams,
    /// An embedding service: `api` is `openai` or `ollama`.
    Http {
        /// Its URL.
        url: String,
        /// `openai` or `ollama`.
        api: String,
        /// The model name sent.
        model: String,
        /// The length of its vectors.
        dimension: usize,
        /// Sent as a bearer token.
        api_key: Option<String>,
    },
}

impl fmt::Debug for EmbedderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl EmbedderChoice {
    /// What the startup line says.
    pub fn describe(&self) -> String {
        match self {
            Self::MiniLm(dir) => format!("all-MiniLM-L6-v2 in-process from {}", dir.display()),
            Self::NGrams => "hashed n-grams (lexical)".to_owned(),
            Self::Http { url, api, model, dimension, api_key } => format!(
                "{api} embeddings service {url}, model {model}, {dimension} dimensions{}",
                if api_key.is_some() { ", with an API key" } else { "" }
            ),
        }
    }

    fn build(&self) -> Result<Arc<dyn strata_l3::Embedder>, Error> {
        match self {
            #[cfg(feature = "minilm")]
            Self::MiniLm(dir) => {
                let model = strata_l3::MiniLmEmbedder::load(dir).map_err(|e| {
                    Error::config(format!("cannot load the semantic model from {}: {e}", dir.display()))
                })?;
                Ok(Arc::new(model))
            }
            #[cfg(not(feature = "minilm"))]
            Self::MiniLm(_) => Err(Error::config(
                "this strata-proxy was built without the `minilm` feature: rebuild with --features minilm, or choose embedder = \"ngrams\" or \"http\" in [semantic]",
            )),
            Self::NGrams => Ok(Arc::new(strata_l3::LocalEmbedder::default())),
            Self::Http { url, api, model, dimension, api_key } => {
                let api = match api.as_str() {
                    "openai" => strata_l3::EmbeddingApi::OpenAi,
                    "ollama" => strata_l3::EmbeddingApi::Ollama,
                    other => {
                        return Err(Error::config(format!(
                            "[semantic] api must be openai or ollama, not {other:?}"
                        )))
                    }
                };
                let mut builder = strata_l3::HttpEmbedder::builder(url, api, model, *dimension);
                if let Some(key) = api_key {
                    builder = builder.with_api_key(key.clone());
                }
                let embedder =
                    builder.build().map_err(|e| Error::config(format!("invalid [semantic] embedder: {e}")))?;
                Ok(Arc::new(embedder))
            }
        }
    }
}

/// The semantic tier's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SemanticSettings {
    /// Its embedder.
    pub embedder: EmbedderChoice,
    /// The similarity above which a stored question's result may answer; the tier's default
    /// (0.80) when unset.
    pub threshold: Option<f32>,
    /// Most entries held (default 100 000).
    pub max_entries: Option<usize>,
    /// Most bytes held (default 256 MiB).
    pub max_bytes: Option<u64>,
    /// How long a lookup waits for the embedder before it is a miss, in milliseconds (default 200).
    pub embed_deadline_ms: Option<u64>,
}

impl SemanticSettings {
    /// The similarity threshold in force: the one set, else the model's own for the model (chosen
    /// from data), else the tier's default (chosen for n-grams).
    pub fn threshold(&self) -> f32 {
        match (self.threshold, &self.embedder) {
            (Some(t), _) => t,
            #[cfg(feature = "minilm")]
            (None, EmbedderChoice::MiniLm(_)) => strata_l3::MiniLmEmbedder::RECOMMENDED_THRESHOLD.get(),
            (None, _) => strata_l3::CosineSimilarity::DEFAULT_THRESHOLD.get(),
        }
    }

    /// The tier these settings describe (loading the model, if any).
    pub fn build_tier(&self) -> Result<strata_l3::SemanticTier, Error> {
        let threshold = strata_l3::CosineSimilarity::new(self.threshold())
            .map_err(|e| Error::config(format!("invalid [semantic] threshold: {e}")))?;
        let mut builder = strata_l3::SemanticTier::builder()
            .with_embedder(self.embedder.build()?)
            .with_threshold(threshold);
        if let Some(n) = self.max_entries {
            builder = builder.with_max_entries(n);
        }
        if let Some(n) = self.max_bytes {
            builder = builder.with_max_bytes(n);
        }
        if let Some(ms) = self.embed_deadline_ms {
            builder = builder.with_embed_deadline(Duration::from_millis(ms));
        }
        builder.build().map_err(|e| Error::config(format!("invalid [semantic] settings: {e}")))
    }
}

impl Default for CacheSettings {
    /// Caching on, embedded tiers, the `[cache]` defaults.
    fn default() -> Self {
        Self {
            table: None,
            redis: None,
            redis_cluster: Vec::new(),
            enabled: true,
            custom_settings: Vec::new(),
            key_level: None,
            semantic: None,
        }
    }
}

impl fmt::Debug for CacheSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheSettings")
            .field("table", &self.table.as_ref().map(|t| t.keys().cloned().collect::<Vec<_>>()))
            .field("redis", &self.redis.as_ref().map(|_| "<set>"))
            .field("redis_cluster", &self.redis_cluster.len())
            .field("enabled", &self.enabled)
            .field("custom_settings", &self.custom_settings)
            .field("key_level", &self.key_level)
            .field("semantic", &self.semantic)
            .finish()
    }
}

/// Builds the `QueryCache` the proxy uses: the `[cache]` table's settings; with a Redis URL or a
/// Redis Cluster, L2 there and table versions shared through it (so writes through any proxy
/// invalidate every proxy); without one, the embedded in-memory L2 and versions local to this
/// process. An L2 the `[cache]` table puts in Redis or a Redis Cluster shares the table versions
/// there too: other proxies may fill it, so versions local to one process could not vouch for it.
///
/// Redis being down is not an error: the proxy starts and relays to PostgreSQL, bypassing the
/// cache (writes are still recorded for invalidation) until the shared table versions have
/// connected and synchronized in the background; only invalid settings fail.
pub async fn build_query_cache(settings: &CacheSettings) -> Result<QueryCache, Error> {
    let config = match &settings.table {
        Some(table) => {
            QueryCacheConfig::from_toml(&table.to_string()).map_err(|e| Error::config(e.to_string()))?
        }
        None => QueryCacheConfig::default(),
    };
    let mut config = config;
    if let Some(on) = settings.key_level {
        config.key_level = on;
    }
    let semantic = settings.semantic.as_ref().map(SemanticSettings::build_tier).transpose()?;
    let with_l3 = |builder: strata::QueryCacheBuilder| match semantic {
        Some(tier) => builder.with_l3(tier),
        None => builder,
    };
    let storage = match (&settings.redis, settings.redis_cluster.as_slice()) {
        (Some(_), [_, ..]) => return Err(Error::config("give a redis url or redis cluster nodes, not both")),
        (Some(url), []) => {
            Some(strata_l2::StorageConfig::Redis { url: url.clone(), key_prefix: L2_PREFIX.to_owned() })
        }
        (None, nodes @ [_, ..]) => Some(strata_l2::StorageConfig::RedisCluster {
            nodes: nodes.to_vec(),
            key_prefix: L2_PREFIX.to_owned(),
        }),
        (None, []) => None,
    };
    if let Some(storage) = storage {
        config.l2.get_or_insert_with(Default::default).storage = storage;
    }
    let shared = match config.l2.as_ref().map(|l2| &l2.storage) {
        Some(strata_l2::StorageConfig::Redis { url, key_prefix }) => {
            RedisVersions::builder(url.clone()).with_prefix(versions_prefix(key_prefix))
        }
        Some(strata_l2::StorageConfig::RedisCluster { nodes, key_prefix }) => {
            RedisVersions::cluster_builder(nodes.clone()).with_prefix(versions_prefix(key_prefix))
        }
        _ => {
            return with_l3(config.to_builder().map_err(|e| Error::config(e.to_string()))?)
                .build()
                .map_err(|e| Error::config(e.to_string()));
        }
    };
    // Waits at most the deadline for the first synchronization; a Redis that is down leaves the
    // store unsynchronized (every lookup bypasses) while it keeps connecting in the background.
    let versions = shared
        .with_deadline(Duration::from_millis(500))
        .build()
        .await
        .map_err(|e| Error::config(format!("invalid redis settings for shared table versions: {e}")))?;
    with_l3(config.to_builder().map_err(|e| Error::config(e.to_string()))?)
        .with_version_store(Arc::new(versions))
        .build()
        .map_err(|e| Error::config(e.to_string()))
}

/// The key prefix of L2 in a Redis the proxy is given (`--redis`, `--redis-cluster`).
const L2_PREFIX: &str = "strata:l2:";

/// The key prefix of the table versions shared next to an L2 under `l2_prefix`: `strata:versions:`
/// beside the default L2 prefix, else `strata:versions:shop:l2:`, so deployments that keep L2
/// apart keep their versions apart too (and flushing L2's prefix leaves them alone).
fn versions_prefix(l2_prefix: &str) -> String {
    if l2_prefix == L2_PREFIX {
        "strata:versions:".to_owned()
    } else {
        format!("strata:versions:{l2_prefix}")
    }
}

/// The proxy's cache: a [`strata::SessionCache`] behind the [`RequestCache`] seam. Each client
/// session gets a [`strata::CacheSession`], which owns what the session's statements mean for the
/// cache (scope read back from PostgreSQL, transactions, invalidation); this type only translates
/// wire requests into `strata` requests.
#[derive(Debug, Clone)]
pub struct StrataCache {
    sessions: SessionCache,
}

/// Builds a [`StrataCache`].
#[derive(Debug)]
pub struct StrataCacheBuilder {
    builder: strata::SessionCacheBuilder,
}

impl StrataCacheBuilder {
    /// How writes become invalidations. Default [`Invalidation::Everything`].
    pub fn with_invalidation(mut self, invalidation: Invalidation) -> Self {
        self.builder = self.builder.with_invalidation(invalidation);
        self
    }

    /// A custom setting (`app.tenant`) every session scope includes from the start; see
    /// [`strata::SessionCacheBuilder::with_custom_setting`].
    pub fn with_custom_setting(mut self, name: impl Into<String>) -> Self {
        self.builder = self.builder.with_custom_setting(name);
        self
    }

    /// Mutation tests only: see [`strata::TestOnlySessionTrust`].
    #[doc(hidden)]
    pub fn with_test_only_session_trust(mut self, trust: strata::TestOnlySessionTrust) -> Self {
        self.builder = self.builder.with_test_only_session_trust(trust);
        self
    }

    /// Builds the cache; with [`Invalidation::Catalog`] it starts reading the catalog in the
    /// background, so it must run inside a Tokio runtime.
    pub fn build(self) -> Result<StrataCache, Error> {
        let sessions = self.builder.build().map_err(|e| Error::config(e.to_string()))?;
        Ok(StrataCache { sessions })
    }
}

impl StrataCache {
    /// Wraps a query cache with the safe default, [`Invalidation::Everything`].
    pub fn new(cache: QueryCache) -> Result<Self, Error> {
        Self::builder(cache).build()
    }

    /// Starts building a cache around `cache`.
    pub fn builder(cache: QueryCache) -> StrataCacheBuilder {
        StrataCacheBuilder { builder: SessionCache::builder(cache) }
    }

    /// The query cache (for its registry, explain and stats).
    pub fn query_cache(&self) -> &QueryCache {
        self.sessions.query_cache()
    }

    /// The sessions' side of the cache.
    pub fn sessions(&self) -> &SessionCache {
        &self.sessions
    }

    /// With [`Invalidation::Catalog`]: waits up to `timeout` until the catalog of every database
    /// seen so far has been read after its last known schema change, and says whether that
    /// happened. Without a catalog there is nothing to wait for: `true` at once.
    pub async fn wait_for_catalog(&self, timeout: Duration) -> bool {
        self.sessions.wait_for_catalog(timeout).await
    }

    /// With [`Invalidation::Catalog`]: reads the catalog of every database seen so far again
    /// now and waits up to `timeout` for it. Without a catalog: `true` at once.
    pub async fn refresh_catalog(&self, timeout: Duration) -> bool {
        self.sessions.refresh_catalog(timeout).await
    }
}

#[async_trait]
impl RequestCache for StrataCache {
    fn mode(&self) -> CacheMode {
        CacheMode::Active
    }

    fn open_session(&self, session: &SessionView) -> Option<Box<dyn RequestSession>> {
        Some(Box::new(StrataSession {
            session: self.sessions.open(session.database(), session.user()),
            last: std::sync::Mutex::new(LastStatement::default()),
        }))
    }

    async fn console(&self, command: &ConsoleCommand) -> Result<ConsoleReply, String> {
        self.answer(command).await
    }
}

/// One client session's side of [`StrataCache`].
#[derive(Debug)]
struct StrataSession {
    session: CacheSession,
    /// What became of the last statement, for `EXPLAIN LAST STATEMENT`.
    last: std::sync::Mutex<LastStatement>,
}

/// The last statement of a session and what became of it. Kept on every request, so it is
/// kept in parts that cost little to take; `EXPLAIN LAST STATEMENT` renders them.
#[derive(Debug, Default)]
struct LastStatement {
    statement: Option<LastText>,
    destination: &'static str,
    outcome: &'static str,
    reason: LastReason,
    /// A lookup's outcome waiting for its response: the request's bytes, outcome and reason.
    pending: Option<(bytes::Bytes, &'static str, LastReason)>,
}

/// The text of the last statement.
#[derive(Debug)]
enum LastText {
    /// The one statement of an extended request, shared with its prepared statement.
    Statement(Arc<str>),
    /// Anything else, already truncated ([`request_text`]).
    Text(String),
}

impl LastText {
    fn of(request: &Request) -> Self {
        if let RequestKind::Extended { messages } = request.kind() {
            let mut executed = messages.iter().filter_map(|m| match m {
                ExtendedMessage::Execute { statement, .. } => Some(statement.as_deref()),
                _ => None,
            });
            if let (Some(Some(statement)), None) = (executed.next(), executed.next()) {
                if statement.is_exact() {
                    return LastText::Statement(statement.sql_shared().clone());
                }
            }
        }
        LastText::Text(request_text(request))
    }

    fn render(&self) -> String {
        match self {
            LastText::Statement(sql) => truncated(sql.to_string()),
            LastText::Text(text) => text.clone(),
        }
    }
}

/// Why the last statement went where it went.
#[derive(Debug, Default)]
enum LastReason {
    #[default]
    Nothing,
    Static(&'static str),
    Text(String),
    ServedBy(strata::TierName),
    /// A miss's fill: what storing made of it, or why the response was not offered.
    Filled(Option<strata::FillOutcome>, Option<crate::seam::NotCacheable>),
}

impl LastReason {
    fn render(&self) -> String {
        match self {
            LastReason::Nothing => String::new(),
            LastReason::Static(text) => (*text).to_owned(),
            LastReason::Text(text) => text.clone(),
            LastReason::ServedBy(tier) => format!("served by {}", tier.as_str()),
            LastReason::Filled(stored, not_cacheable) => match (stored, not_cacheable) {
                (Some(strata::FillOutcome::Stored), _) => "the answer was stored".to_owned(),
                (Some(other), _) => format!("the answer was not stored: {other:?}"),
                (None, Some(why)) => format!("the answer was not stored: {why:?}"),
                (None, None) => "the answer was not stored".to_owned(),
            },
        }
    }
}

/// The most of a statement's text `EXPLAIN LAST STATEMENT` shows.
const MAX_SHOWN_TEXT: usize = 1_000;

/// A request's SQL, for people (truncated).
fn request_text(request: &Request) -> String {
    let text = match request.kind() {
        RequestKind::Simple { sql } => sql.clone(),
        RequestKind::Extended { .. } => executed_statements(request)
            .iter()
            .map(|s| s.unwrap_or("(unreadable)"))
            .collect::<Vec<_>>()
            .join("; "),
        RequestKind::FunctionCall => "(fast-path function call)".to_owned(),
        RequestKind::Undecodable => "(a text the proxy could not read exactly)".to_owned(),
    };
    truncated(text)
}

/// `text` cut to [`MAX_SHOWN_TEXT`] bytes (on a character boundary) and marked as cut.
fn truncated(mut text: String) -> String {
    if text.len() > MAX_SHOWN_TEXT {
        let mut end = MAX_SHOWN_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl StrataSession {
    fn last(&self) -> std::sync::MutexGuard<'_, LastStatement> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A lookup's answer, before the response (if any) comes.
    fn looked_up(&self, request: &Request, outcome: &'static str, reason: LastReason) {
        self.last().pending = Some((request.wire_bytes().clone(), outcome, reason));
    }
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
    /// The types the client declared (they shape the replayed answer).
    param_types: &'a [u32],
    /// The types the server reads the parameters as, where it said (see
    /// [`PreparedStatement::server_param_types`]).
    server_types: &'a [u32],
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
                // A text not read exactly is never keyed.
                let statement = bind.statement().filter(|s| s.is_exact())?;
                items.push(BatchItem {
                    sql: statement.sql(),
                    param_types: statement.param_types(),
                    server_types: statement.server_param_types(),
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
    /// The bound parameters with their declared types and formats.
    fn params(&self) -> impl Iterator<Item = Param<'_>> + '_ {
        bound_params(self.server_types, self.params, self.param_formats)
    }
}

/// A Bind's parameters with their declared types and formats (one format code applies to every
/// parameter; none means text).
fn bound_params<'a>(
    param_types: &'a [u32],
    params: &'a [Option<bytes::Bytes>],
    param_formats: &'a [Format],
) -> impl Iterator<Item = Param<'a>> + 'a {
    params.iter().enumerate().map(move |(i, value)| {
        let ty = TypeOid(param_types.get(i).copied().unwrap_or(0));
        let format = match param_formats {
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

/// The parameters each statement [`executed_statements`] lists was bound with, where the Bind
/// of its portal is in the same request (`None` otherwise).
fn executed_params(request: &Request) -> PerExecute<Option<Vec<Param<'_>>>> {
    let RequestKind::Extended { messages } = request.kind() else { return PerExecute::new() };
    let mut binds: SmallVec<[&crate::seam::Bind; 2]> = SmallVec::new();
    let mut out = PerExecute::new();
    for message in messages {
        match message {
            ExtendedMessage::Bind(b) => {
                binds.retain(|x| x.portal() != b.portal());
                binds.push(b);
            }
            ExtendedMessage::Execute { portal, statement, .. } => {
                let bind = binds.iter().find(|b| b.portal() == portal);
                out.push(bind.zip(statement.as_deref()).map(|(b, s)| {
                    bound_params(s.server_param_types(), b.params(), b.param_formats()).collect::<Vec<_>>()
                }));
            }
            // Closing a portal ends it: a later Execute of the name binds again.
            ExtendedMessage::Close(Target::Portal(name)) => binds.retain(|b| b.portal() != name),
            _ => {}
        }
    }
    out
}

/// One item per Execute of a request, inline for the usual one or two.
type PerExecute<T> = SmallVec<[T; 2]>;

/// The SQL texts a request executed (`None` where the proxy does not know the text).
fn executed_statements(request: &Request) -> PerExecute<Option<&str>> {
    match request.kind() {
        RequestKind::Simple { sql } => smallvec![Some(sql.as_str())],
        // A text the proxy could not read exactly: anything may have run.
        RequestKind::Undecodable => smallvec![None],
        RequestKind::Extended { messages } => messages
            .iter()
            .filter_map(|m| match m {
                ExtendedMessage::Execute { statement, .. } => {
                    Some(statement.as_deref().filter(|s| s.is_exact()).map(PreparedStatement::sql))
                }
                _ => None,
            })
            .collect(),
        // A fast-path function call may do anything.
        RequestKind::FunctionCall => smallvec![None],
    }
}

fn transaction_state(status: TransactionStatus) -> TransactionState {
    match status {
        TransactionStatus::Idle => TransactionState::Idle,
        TransactionStatus::InTransaction => TransactionState::InTransaction,
        TransactionStatus::Failed => TransactionState::Failed,
    }
}

impl StrataSession {
    /// Looks a request up under `scope` in the query cache.
    async fn lookup_in(&self, scope: &KeyScope, request: &Request) -> Option<strata::Lookup> {
        let cache = self.session.query_cache();
        match request.kind() {
            RequestKind::Simple { sql } => {
                Some(cache.lookup(&strata::Request::new(scope, sql).with_variant(b"Q")).await)
            }
            RequestKind::Extended { messages } => {
                let mut batch = batch(messages)?;
                let params: Vec<Param<'_>> = batch.items.iter().flat_map(BatchItem::params).collect();
                // The declared parameter types shape the ParameterDescription a replay contains.
                let mut variant = std::mem::take(&mut batch.shape);
                if let [item] = batch.items.as_slice() {
                    for ty in item.param_types {
                        variant.extend_from_slice(&ty.to_le_bytes());
                    }
                    let formats: Vec<strata_core::Format> =
                        item.result_formats.iter().map(|f| strata_format(*f)).collect();
                    let req = strata::Request::new(scope, item.sql)
                        .with_params(&params)
                        .with_result_formats(&formats)
                        .with_variant(&variant);
                    Some(cache.lookup(&req).await)
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
                    let req = strata::Request::new(scope, &sql)
                        .with_params(&params)
                        .with_variant(&variant)
                        .as_batch();
                    Some(cache.lookup(&req).await)
                }
            }
            RequestKind::FunctionCall | RequestKind::Undecodable => None,
        }
    }

    /// Whether the cache could take part in a request at all, before any scope: only such
    /// requests are worth reading the session's state back for.
    async fn could_cache(&self, request: &Request) -> bool {
        let cache = self.session.query_cache();
        match request.kind() {
            // Awaited: a long text is analyzed off this thread, which relays other sessions.
            RequestKind::Simple { sql } => cache.is_cacheable(sql).await,
            RequestKind::Extended { messages } => {
                let Some(batch) = batch(messages) else { return false };
                for item in &batch.items {
                    if !cache.is_cacheable(item.sql).await {
                        return false;
                    }
                }
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl RequestSession for StrataSession {
    async fn lookup(&self, request: &Request) -> Lookup {
        let scope = match self.session.scope() {
            ScopeStatus::Ready(scope) => scope,
            ScopeStatus::Unverified if self.could_cache(request).await => {
                return Lookup::Verify(self.session.verification_query());
            }
            ScopeStatus::Unverified => {
                self.looked_up(request, "bypass", LastReason::Static("not cacheable"));
                return Lookup::Bypass;
            }
            ScopeStatus::Disabled(why) => {
                let reason = LastReason::Text(format!("the session does not use the cache: {why}"));
                self.looked_up(request, "bypass", reason);
                return Lookup::Bypass;
            }
        };
        // Without a catalog: a built-in's name a user function has too may call the user's
        // function (read back with the session's state).
        for sql in executed_statements(request).iter().flatten() {
            if let Some(name) = self.session.calls_user_overload(sql).await {
                let reason = format!("calls {name}, a name a user function that is not immutable has too");
                self.looked_up(request, "bypass", LastReason::Text(reason));
                return Lookup::Bypass;
            }
        }
        match self.lookup_in(&scope, request).await {
            Some(strata::Lookup::Hit(hit)) => {
                let mut last = self.last();
                *last = LastStatement {
                    statement: Some(LastText::of(request)),
                    destination: "cache",
                    outcome: "hit",
                    reason: LastReason::ServedBy(hit.tier_name().clone()),
                    pending: None,
                };
                Lookup::Hit(hit.payload().clone())
            }
            Some(strata::Lookup::Miss(ticket)) => {
                self.looked_up(request, "miss", LastReason::Nothing);
                Lookup::Miss(Fill::new(ticket))
            }
            Some(strata::Lookup::Bypass(bypass)) => {
                self.looked_up(request, "bypass", LastReason::Text(bypass.reason().to_string()));
                Lookup::Bypass
            }
            None => {
                self.looked_up(request, "bypass", LastReason::Static("not a batch the cache can answer"));
                Lookup::Bypass
            }
        }
    }

    fn last_statement(&self) -> ConsoleReply {
        let last = self.last();
        let rows = match &last.statement {
            Some(statement) => vec![vec![
                Some(statement.render()),
                Some(last.destination.to_owned()),
                Some(last.outcome.to_owned()),
                Some(last.reason.render()),
            ]],
            None => Vec::new(),
        };
        ConsoleReply::table(&["statement", "destination", "outcome", "reason"], rows)
    }

    fn verified(&self, rows: Result<&[Vec<Option<bytes::Bytes>>], &str>) {
        self.session.verified(rows);
    }

    async fn complete(&self, request: &Request, response: &Response, fill: Option<Fill>) {
        let mut stored = None;
        if let Some(ticket) = fill.and_then(|f| f.downcast::<FillTicket>().ok()) {
            match response.cacheable_bytes() {
                Some(bytes) => {
                    stored = Some(ticket.fill_detached(bytes.clone(), response.summary().rows()).await);
                }
                // An error, a notice, a parameter change, too large...: never stored; anyone
                // waiting for this fill goes to the database.
                None => ticket.abandon(),
            }
        }
        {
            let mut last = self.last();
            let pending = last.pending.take().filter(|(wire, _, _)| wire == request.wire_bytes());
            let (outcome, reason) = match pending {
                Some((_, "miss", _)) => {
                    ("miss", LastReason::Filled(stored, response.summary().not_cacheable()))
                }
                Some((_, outcome, reason)) => (outcome, reason),
                None => (
                    "not looked up",
                    LastReason::Static(
                        "the cache is consulted only outside transaction blocks, with nothing else in \
                         flight, for requests it could replay",
                    ),
                ),
            };
            *last = LastStatement {
                statement: Some(LastText::of(request)),
                destination: "upstream",
                outcome,
                reason,
                pending: None,
            };
        }
        let summary = response.summary();
        let statements = executed_statements(request);
        let bound = executed_params(request);
        let params: PerExecute<Option<&[Param<'_>]>> = bound.iter().map(Option::as_deref).collect();
        let executed = Executed::new(
            &statements,
            summary.command_tags(),
            summary.error_code().is_some(),
            transaction_state(summary.transaction_status()),
        )
        .with_params(&params);
        let returned = response.captured().filter(|c| returned_every_row(summary.command_tags(), c));
        let executed = match returned {
            Some(c) => executed.with_returned(strata::Returned::new(
                strata::KeySource { table_oid: c.origin().table_oid, column: c.origin().column },
                c.type_oid(),
                strata_format(c.format()),
                c.values(),
            )),
            None => executed,
        };
        self.session.executed(executed).await;
    }

    async fn abandoned(&self, request: Option<&Request>) {
        // Invalidated as if it committed: its writes, and those of the transaction it may have
        // ended.
        let statements = request.map_or_else(|| smallvec![None], executed_statements);
        let executed = Executed::new(&statements, &[], false, TransactionState::Idle);
        self.session.executed(executed).await;
    }

    fn drops_statements(&self, sql: &str) -> Dropped {
        // A long text is not analyzed on this thread, which relays other sessions (this method
        // cannot await the analysis elsewhere): it is taken to drop every prepared statement.
        // Over-approximating is safe, the proxy then prepares again what it needs.
        let Some(effects) = self.session.query_cache().session_effects_now(sql) else {
            return Dropped::All;
        };
        let mut dropped = Dropped::Nothing;
        for effect in effects {
            match effect {
                SessionEffect::Deallocate(None) | SessionEffect::Discard(DiscardTarget::All) => {
                    return Dropped::All
                }
                SessionEffect::Deallocate(Some(name)) => match &mut dropped {
                    Dropped::Named(names) => names.push(name.to_string()),
                    _ => dropped = Dropped::Named(vec![name.to_string()]),
                },
                _ => {}
            }
        }
        dropped
    }

    fn parameter_changed(&self) {
        self.session.state_may_have_changed();
    }

    fn capture(&self, sql: &str) -> Option<Capture> {
        let sources = self.session.query_cache().returned_key_sources(sql);
        (!sources.is_empty()).then(|| Capture {
            origins: sources
                .into_iter()
                .map(|s| ColumnOrigin { table_oid: s.table_oid, column: s.column })
                .collect(),
        })
    }
}

/// Whether a captured field holds a row for every row the one write of the request changed: its
/// only command tag (`INSERT 0 n`, `UPDATE n`, `DELETE n`) counts as many rows.
fn returned_every_row(tags: &[String], captured: &Captured) -> bool {
    let [tag] = tags else { return false };
    let mut words = tag.split(' ');
    let count = match words.next() {
        Some("INSERT") => words.nth(1),
        Some("UPDATE" | "DELETE") => words.next(),
        _ => None,
    };
    count.and_then(|n| n.parse::<usize>().ok()) == Some(captured.values().len())
}
