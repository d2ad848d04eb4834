//! Catalog-aware invalidation: what a write's SQL text does not show, read from PostgreSQL's catalog.
//!
//! A view reads its base relations, a partition parent reads its partitions, a row-level-security
//! policy reads the tables its expressions name; a write to a parent reaches its partitions, a
//! cascading foreign key changes the referencing table, and a trigger or a rule may change
//! anything. The proxy reads these from `pg_rewrite`/`pg_depend`, `pg_inherits`, `pg_constraint`,
//! `pg_policy`, `pg_trigger` on a connection of its own (the catalog user), per database clients
//! use, and installs them in the query cache as [`Relations`]. It also learns the custom setting
//! names (`app.tenant`) that function bodies, policies, views and role or database defaults use,
//! so that session scopes include them, and which relations run user code when read or written.
//!
//! # Freshness
//! A database whose catalog has not been read yet, or whose schema may have changed since the last
//! read (a statement with unknown effects, DDL included, committed through the proxy), is *stale*:
//! every write on it invalidates everything until a refresh has installed the new map. The map of
//! the last successful read is kept when a refresh fails.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::Notify, task::JoinHandle};

use strata_core::{TableName, VersionView};

use crate::relations::{KeyKind, KeySource};
use crate::versions::SCHEMA;
use crate::{session::SettingNames, Error, QueryCache, Relations};

/// The default period between two reads of every database's catalog.
pub(crate) const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// At most one warning per database in this period while its refreshes fail.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often the shared schema epoch is compared with the last one seen.
pub(crate) const SCHEMA_WATCH: Duration = Duration::from_millis(200);
/// First retry delay after a failed read; doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// How to read the upstream's catalog: a connection of Strata's own, since clients
/// authenticate themselves and Strata never borrows their credentials.
#[derive(Clone)]
pub struct CatalogConfig {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    databases: Vec<String>,
    refresh_interval: Duration,
    timeout: Duration,
    tls: Option<crate::pg_tls::PgTls>,
}

impl CatalogConfig {
    /// Starts configuring the catalog connection.
    pub fn builder() -> CatalogConfigBuilder {
        CatalogConfigBuilder::default()
    }

    /// The role the proxy reads the catalog as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The databases read at startup (others are read when a client first uses them).
    pub fn databases(&self) -> &[String] {
        &self.databases
    }

    /// The period of the background refresh.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval
    }
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is never shown, only whether there is one.
        f.debug_struct("CatalogConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("databases", &self.databases)
            .field("refresh_interval", &self.refresh_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Builds a [`CatalogConfig`].
#[derive(Default)]
pub struct CatalogConfigBuilder {
    upstream: Option<(String, u16)>,
    user: Option<String>,
    password: Option<String>,
    databases: Vec<String>,
    refresh_interval: Option<Duration>,
    timeout: Option<Duration>,
    tls: Option<crate::pg_tls::PgTls>,
}

impl fmt::Debug for CatalogConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfigBuilder")
            .field("upstream", &self.upstream)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("databases", &self.databases)
            .field("refresh_interval", &self.refresh_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CatalogConfigBuilder {
    /// TLS for the catalog connection (what `tls` verifies; required or preferred). Default:
    /// none (plain TCP; a host that is a socket directory never uses TLS).
    pub fn with_tls(mut self, tls: crate::pg_tls::PgTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The upstream server's host and port. Required.
    pub fn with_upstream(mut self, host: impl Into<String>, port: u16) -> Self {
        self.upstream = Some((host.into(), port));
        self
    }

    /// The role to read the catalog as; it needs `LOGIN` and `CONNECT` on the databases, no table
    /// privilege (the catalogs read are readable by every role). Required.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The catalog user's password. Default: none (trust or peer authentication).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// A database to read at startup; may be repeated. Default: none (each database is read
    /// when a client session on it is first seen).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.databases.push(database.into());
        self
    }

    /// The period of the background refresh. Default 30 s.
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    /// The timeout of connecting to the upstream and of each catalog read. Default 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<CatalogConfig, Error> {
        let (host, port) =
            self.upstream.ok_or_else(|| Error::config("the catalog needs an upstream host"))?;
        if host.is_empty() {
            return Err(Error::config("the catalog's upstream host is empty"));
        }
        let user =
            self.user.filter(|u| !u.is_empty()).ok_or_else(|| Error::config("the catalog user is empty"))?;
        let refresh_interval = self.refresh_interval.unwrap_or(DEFAULT_REFRESH);
        if refresh_interval < Duration::from_millis(100) {
            return Err(Error::config("catalog_refresh_ms must be at least 100"));
        }
        let timeout = self.timeout.unwrap_or(Duration::from_secs(5));
        if timeout.is_zero() {
            return Err(Error::config("the catalog timeout must be positive"));
        }
        let mut databases = Vec::new();
        for d in self.databases {
            if d.is_empty() || d.contains('\0') {
                return Err(Error::config(format!("bad catalog database name {d:?}")));
            }
            if !databases.contains(&d) {
                databases.push(d);
            }
        }
        Ok(CatalogConfig {
            host,
            port,
            user,
            password: self.password,
            databases,
            refresh_interval,
            timeout,
            tls: self.tls,
        })
    }
}

/// One dependency read from a catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Edge {
    /// Reading the first relation also reads the second.
    ReadsThrough(String, String),
    /// A write to the first table may also change the second.
    WritesAlso(String, String),
    /// A write to the table may change anything.
    Unknown(String),
    /// Reading or writing the relation runs user code.
    RunsCode(String),
    /// Reading the relation runs a volatile user function.
    Volatile(String),
    /// The relation is a sequence: `nextval` changes it, also where a column default calls it
    /// on an insert, and no write names it.
    Sequence(String),
    /// A user function (outside `pg_catalog`) that is not immutable (it may read tables, or do
    /// anything) has this name: a call of a built-in of that name may run it. Immutable ones
    /// (`citext`'s `lower(citext)`) compute from their arguments alone, like the built-ins.
    UserFunction(String),
    /// The table's key column (the leading column of its replica identity index) and the kind
    /// of its type: `int`, `uuid`, `text` (deterministic collation) or `other`.
    Key(String, String, String),
}

/// What each kind of catalog row means for reads and writes; see [`CATALOG_SQL`].
pub(crate) fn edges_of_row(kind: &str, a: &str, b: Option<&str>, flag: bool) -> Vec<Edge> {
    let pair = |x: &str, y: &str| (x.to_owned(), y.to_owned());
    match (kind, b) {
        // A view shows its base relations; a write to an auto-updatable view writes its base
        // (the catalog does not say which of the view's relations is the target: all of them).
        ("view", Some(b)) => {
            let (v, b) = pair(a, b);
            let mut edges = vec![Edge::ReadsThrough(v.clone(), b.clone())];
            if flag {
                edges.push(Edge::WritesAlso(v, b));
            }
            edges
        }
        // A parent shows its children's rows; UPDATE/DELETE (and INSERT routing) through the
        // parent changes children; a write to a child changes what the parent shows.
        ("inherits", Some(b)) => {
            let (p, c) = pair(a, b);
            vec![
                Edge::ReadsThrough(p.clone(), c.clone()),
                Edge::WritesAlso(p.clone(), c.clone()),
                Edge::WritesAlso(c, p),
            ]
        }
        // ON DELETE/UPDATE CASCADE, SET NULL, SET DEFAULT: a write to the referenced table
        // changes the referencing one.
        ("cascades", Some(b)) => {
            let (referenced, referencing) = pair(a, b);
            vec![Edge::WritesAlso(referenced, referencing)]
        }
        // A row-level-security policy whose expressions read another table: what the table
        // shows depends on it.
        ("policy", Some(b)) => {
            let (t, other) = pair(a, b);
            vec![Edge::ReadsThrough(t, other)]
        }
        // User triggers (and internal ones calling a non-builtin function) and rules other than
        // a view's `_RETURN`: their effects cannot be listed.
        ("trigger" | "rule", _) => vec![Edge::Unknown(a.to_owned()), Edge::RunsCode(a.to_owned())],
        // A default or a check constraint calling a user function runs it on writes.
        ("code", _) => vec![Edge::RunsCode(a.to_owned())],
        // A view or a policy calling a volatile user function: never cached.
        ("volatile", _) => vec![Edge::Volatile(a.to_owned())],
        // A sequence: never cached.
        ("sequence", _) => vec![Edge::Sequence(a.to_owned())],
        // A user function's name: it may shadow a built-in of that name.
        ("function", _) => vec![Edge::UserFunction(a.to_owned())],
        _ => Vec::new(),
    }
}

/// The catalog read, one round trip: `(kind, a, b, flag)` rows for [`edges_of_row`].
/// System schemas are left out (their relations change only by DDL, which invalidates everything).
pub(crate) const CATALOG_SQL: &str = r"
WITH user_rel AS (
  SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
),
-- Views and row-level-security policies calling a function outside pg_catalog, and whether one
-- of those functions is volatile.
code_reads AS (
  SELECT x.relname, pg_catalog.bool_or(f.provolatile = 'v') AS volatile
  FROM (SELECT r.ev_class AS oid, d.refobjid AS fn
          FROM pg_catalog.pg_rewrite r
          JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
               AND d.refclassid = 'pg_catalog.pg_proc'::regclass
          WHERE r.rulename = '_RETURN'
        UNION
        SELECT p.polrelid, d.refobjid
          FROM pg_catalog.pg_policy p
          JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
               AND d.refclassid = 'pg_catalog.pg_proc'::regclass) o
  JOIN pg_catalog.pg_proc f ON f.oid = o.fn AND f.pronamespace <> 'pg_catalog'::regnamespace
  JOIN user_rel x ON x.oid = o.oid AND x.relkind IN ('v', 'r', 'p', 'f')
  GROUP BY x.relname
)
SELECT 'view', v.relname::text, b.relname::text, (pg_catalog.pg_relation_is_updatable(v.oid, false) <> 0)::text
  FROM pg_catalog.pg_rewrite r
  JOIN user_rel v ON v.oid = r.ev_class AND v.relkind = 'v'
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class
  JOIN pg_catalog.pg_class b ON b.oid = d.refobjid AND b.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  WHERE r.rulename = '_RETURN'
UNION
SELECT 'inherits', p.relname::text, c.relname::text, 'false'
  FROM pg_catalog.pg_inherits i
  JOIN user_rel p ON p.oid = i.inhparent AND p.relkind IN ('r', 'p', 'f')
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p', 'f')
UNION
SELECT 'cascades', f.relname::text, t.relname::text, 'false'
  FROM pg_catalog.pg_constraint k
  JOIN user_rel t ON t.oid = k.conrelid
  JOIN pg_catalog.pg_class f ON f.oid = k.confrelid
  WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
UNION
SELECT 'policy', t.relname::text, b.relname::text, 'false'
  FROM pg_catalog.pg_policy p
  JOIN user_rel t ON t.oid = p.polrelid
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> p.polrelid
  JOIN pg_catalog.pg_class b ON b.oid = d.refobjid AND b.relkind IN ('r', 'p', 'v', 'm', 'f')
UNION
SELECT 'trigger', c.relname::text, NULL, 'false'
  FROM pg_catalog.pg_trigger t
  JOIN user_rel c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
  WHERE NOT t.tgisinternal OR f.pronamespace <> 'pg_catalog'::regnamespace
UNION
SELECT 'rule', c.relname::text, NULL, 'false'
  FROM pg_catalog.pg_rewrite r
  JOIN user_rel c ON c.oid = r.ev_class
  WHERE r.rulename <> '_RETURN'
UNION
SELECT 'opaque', c.relname::text, NULL, 'false' FROM code_reads c
UNION
SELECT 'volatile', c.relname::text, NULL, 'false' FROM code_reads c WHERE c.volatile
UNION
SELECT 'sequence', c.relname::text, NULL, 'false' FROM user_rel c WHERE c.relkind = 'S'
UNION
SELECT 'relation', c.relname::text, NULL, 'false'
  FROM user_rel c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
UNION
SELECT 'key', c.relname::text, a.attname::text,
       -- A generated key changes when the columns it is computed from do: no write names it.
       CASE WHEN a.attgenerated <> '' THEN 'other'
            WHEN a.atttypid IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                                'pg_catalog.int8'::pg_catalog.regtype) THEN 'int'
            WHEN a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype THEN 'uuid'
            WHEN a.atttypid IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype)
                 AND (a.attcollation = 0 OR co.collisdeterministic) THEN 'text'
            ELSE 'other' END || ':' || c.oid::text || ':' || a.attnum::text
  FROM user_rel c
  JOIN pg_catalog.pg_class k ON k.oid = c.oid AND k.relkind IN ('r', 'p')
  JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
       AND CASE k.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
  LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
UNION
-- Every other relation says it has no key: relations of one name share version units, so a
-- keyless one in another schema must keep the name table-level.
SELECT 'key', c.relname::text, '', 'other'
  FROM user_rel c
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
    AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_class k
      JOIN pg_catalog.pg_index i ON i.indrelid = k.oid
       AND CASE k.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END
      WHERE k.oid = c.oid AND k.relkind IN ('r', 'p'))
UNION
SELECT 'code', c.relname::text, NULL, 'false'
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid AND f.pronamespace <> 'pg_catalog'::regnamespace
  JOIN pg_catalog.pg_attrdef a ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND a.oid = d.objid
  JOIN user_rel c ON c.oid = a.adrelid
  WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass
UNION
SELECT 'code', c.relname::text, NULL, 'false'
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid AND f.pronamespace <> 'pg_catalog'::regnamespace
  JOIN pg_catalog.pg_constraint k ON d.classid = 'pg_catalog.pg_constraint'::regclass AND k.oid = d.objid
  JOIN user_rel c ON c.oid = k.conrelid
  WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass
UNION
SELECT 'function', p.proname::text, NULL, 'false'
  FROM pg_catalog.pg_proc p
  WHERE p.pronamespace <> 'pg_catalog'::regnamespace AND p.pronamespace <> 'information_schema'::regnamespace
    AND p.provolatile <> 'i'
UNION
SELECT 'function', 'operator ' || o.oprname::text, NULL, 'false'
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode::oid
  WHERE o.oprnamespace <> 'pg_catalog'::regnamespace AND p.provolatile <> 'i'
UNION
SELECT 'text', p.prosrc, NULL, 'false'
  FROM pg_catalog.pg_proc p
  WHERE p.pronamespace <> 'pg_catalog'::regnamespace AND p.pronamespace <> 'information_schema'::regnamespace
    AND p.prolang <> 13 AND p.prolang <> 12
UNION
SELECT 'text', pg_catalog.array_to_string(p.proconfig, ' '), NULL, 'false'
  FROM pg_catalog.pg_proc p WHERE p.proconfig IS NOT NULL
UNION
SELECT 'text', pg_catalog.array_to_string(s.setconfig, ' '), NULL, 'false'
  FROM pg_catalog.pg_db_role_setting s
UNION
SELECT 'text', pg_catalog.concat(pg_catalog.pg_get_expr(p.polqual, p.polrelid), ' ',
                                 pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)), NULL, 'false'
  FROM pg_catalog.pg_policy p
UNION
SELECT 'text', pg_catalog.pg_get_viewdef(v.oid), NULL, 'false'
  FROM user_rel v WHERE v.relkind IN ('v', 'm')
";

/// A view or a row-level-security policy that calls a function outside `pg_catalog` may read any
/// table through it (the catalog records only the function): reading it reads every relation.
pub(crate) fn expand_opaque(
    edges: &mut BTreeSet<Edge>,
    opaque: &BTreeSet<String>,
    relations: &BTreeSet<String>,
) {
    for x in opaque {
        edges.insert(Edge::RunsCode(x.clone()));
        for r in relations.iter().filter(|r| *r != x) {
            edges.insert(Edge::ReadsThrough(x.clone(), r.clone()));
        }
    }
}

/// The relations for a set of edges.
pub(crate) fn relations_of<'a>(edges: impl IntoIterator<Item = &'a Edge>) -> Relations {
    let mut b = Relations::builder();
    for edge in edges {
        b = match edge {
            Edge::ReadsThrough(r, base) => b.reads_through(r, base),
            Edge::WritesAlso(t, other) => b.writes_also(t, other),
            Edge::Unknown(t) => b.writes_unknown(t),
            Edge::RunsCode(r) => b.runs_user_code(r),
            Edge::Volatile(r) => b.reads_volatile(r),
            Edge::Sequence(r) => b.sequence(r),
            Edge::UserFunction(f) => b.user_function(f),
            Edge::Key(t, column, kind) => {
                // `kind:table oid:column number`.
                let mut parts = kind.split(':');
                let kind = parts.next().and_then(KeyKind::parse);
                let source = match (parts.next().map(str::parse), parts.next().map(str::parse)) {
                    (Some(Ok(table_oid)), Some(Ok(column))) => Some(KeySource { table_oid, column }),
                    _ => None,
                };
                match (kind, source) {
                    (Some(kind), Some(source)) => b.key_column(t, column, kind).key_source(t, source),
                    (Some(kind), None) => b.key_column(t, column, kind),
                    (None, _) => b.keyless(t),
                }
            }
        };
    }
    b.build()
}

/// One database's catalog state.
#[derive(Debug, Default)]
struct Db {
    /// The edges of the last successful read; `None` until one succeeded.
    edges: Option<BTreeSet<Edge>>,
    /// Bumped whenever the schema may have changed; a read started at generation `g` makes the
    /// database current up to `g`.
    wanted: u64,
    /// The generation the installed map is current for.
    synced: u64,
    failures: u32,
    retry_at: Option<Instant>,
    warned_at: Option<Instant>,
}

impl Db {
    fn is_current(&self) -> bool {
        self.edges.is_some() && self.synced >= self.wanted
    }
}

#[derive(Debug, Default)]
struct State {
    dbs: BTreeMap<String, Db>,
    /// The union installed in the cache.
    installed: BTreeSet<Edge>,
}

struct Inner {
    config: CatalogConfig,
    cache: QueryCache,
    names: Arc<SettingNames>,
    state: Mutex<State>,
    wake: Notify,
    changed: tokio::sync::watch::Sender<u64>,
    refreshes: Option<prometheus::IntCounterVec>,
}

/// The running catalog follower: per-database state and the background refresh task.
pub(crate) struct Catalog {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Catalog")
            .field("config", &self.inner.config)
            .field("databases", &state.dbs.keys().collect::<Vec<_>>())
            .field("edges", &state.installed.len())
            .finish()
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Catalog {
    /// Starts following the catalog of the configured databases (and of each database observed
    /// later). Needs a Tokio runtime.
    pub(crate) fn start(
        config: CatalogConfig,
        cache: QueryCache,
        names: Arc<SettingNames>,
    ) -> Result<Self, Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("the catalog follower must start inside a tokio runtime"))?;
        let refreshes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "strata_catalog_refreshes_total",
                "Reads of a database's catalog for invalidation dependencies, by outcome",
            ),
            &["outcome"],
        )
        .ok()
        .filter(|c| cache.registry().register(Box::new(c.clone())).is_ok());
        let mut state = State::default();
        for d in &config.databases {
            state.dbs.insert(d.clone(), Db { wanted: 1, ..Db::default() });
        }
        let inner = Arc::new(Inner {
            config,
            cache,
            names,
            state: Mutex::new(state),
            wake: Notify::new(),
            changed: tokio::sync::watch::channel(0).0,
            refreshes,
        });
        let task = handle.spawn(run(inner.clone()));
        Ok(Self { inner, task })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client session uses `database`: read its catalog if that has not begun yet.
    pub(crate) fn observe(&self, database: &str) {
        let mut state = self.state();
        if !state.dbs.contains_key(database) {
            state.dbs.insert(database.to_owned(), Db { wanted: 1, ..Db::default() });
            drop(state);
            self.inner.wake.notify_one();
        }
    }

    /// Whether writes on `database` may be expanded through the installed map: its catalog was
    /// read, after every schema change the proxy saw committed.
    pub(crate) fn is_current(&self, database: &str) -> bool {
        let current = self.state().dbs.get(database).is_some_and(Db::is_current);
        if !current {
            self.observe(database);
        }
        current
    }

    /// Something with unknown effects (DDL included) committed on `database`: it is stale until
    /// a read started after now has been installed.
    pub(crate) fn schema_may_have_changed(&self, database: &str) {
        self.state().dbs.entry(database.to_owned()).or_default().wanted += 1;
        self.inner.wake.notify_one();
    }

    /// DDL committed on `database`: stale here, and the shared schema epoch (a version unit no
    /// key includes) is bumped so that every proxy sharing the table versions reads its
    /// catalogs again within [`SCHEMA_WATCH`], instead of at its next periodic refresh.
    pub(crate) fn announce_schema_change(&self, database: &str) {
        self.schema_may_have_changed(database);
        let versions = self.inner.cache.shared.versions.clone();
        tokio::spawn(async move {
            if let Err(e) = versions.bump(&[TableName::new(SCHEMA)]).await {
                tracing::debug!(error = %e, "strata: could not bump the shared schema epoch");
            }
        });
    }

    /// Reads every known database's catalog again now (each is stale until then).
    pub(crate) fn refresh_all(&self) {
        for db in self.state().dbs.values_mut() {
            db.wanted += 1;
            db.retry_at = None;
        }
        self.inner.wake.notify_one();
    }

    /// Waits until every database seen so far is current, up to `timeout`.
    pub(crate) async fn wait_current(&self, timeout: Duration) -> bool {
        let mut changed = self.inner.changed.subscribe();
        let all_current = || self.state().dbs.values().all(Db::is_current);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if all_current() {
                return true;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return all_current(),
            }
        }
    }
}

/// Why a read failed.
enum ReadError {
    /// The database does not exist (any more): forget it.
    NoDatabase,
    Failed(String),
}

async fn run(inner: Arc<Inner>) {
    let mut clients: HashMap<String, tokio_postgres::Client> = HashMap::new();
    let interval = inner.config.refresh_interval;
    let mut next_periodic = Instant::now() + interval;
    let mut schema_epoch = None;
    let mut versions = Vec::with_capacity(1);
    loop {
        // DDL announced by another proxy (or seen in the WAL by the invalidator): read every
        // database again.
        versions.clear();
        if inner.cache.shared.versions.read(&[TableName::new(SCHEMA)], &mut versions) == VersionView::Current
        {
            let epoch = versions.first().copied();
            if schema_epoch.is_some() && schema_epoch != epoch {
                for db in inner.state.lock().unwrap_or_else(|e| e.into_inner()).dbs.values_mut() {
                    db.wanted += 1;
                    db.retry_at = None;
                }
            }
            schema_epoch = epoch;
        }
        let now = Instant::now();
        let periodic = now >= next_periodic;
        if periodic {
            next_periodic = now + interval;
        }
        let work: Vec<(String, u64)> = {
            let state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .dbs
                .iter()
                .filter(|(_, d)| (periodic || !d.is_current()) && d.retry_at.is_none_or(|t| t <= now))
                .map(|(name, d)| (name.clone(), d.wanted))
                .collect()
        };
        for (database, generation) in work {
            let result = read(&inner.config, &inner.names, &mut clients, &database).await;
            apply(&inner, &database, generation, result);
        }
        let wake_at = {
            let state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut at = next_periodic.min(now + SCHEMA_WATCH);
            for d in state.dbs.values().filter(|d| !d.is_current()) {
                // A stale database is read again at once unless it is backing off.
                at = at.min(d.retry_at.unwrap_or(now));
            }
            at
        };
        tokio::select! {
            () = inner.wake.notified() => {}
            () = tokio::time::sleep_until(wake_at.into()) => {}
        }
    }
}

/// Reads one database's catalog on the proxy's own connection (reconnecting when needed).
async fn read(
    config: &CatalogConfig,
    names: &SettingNames,
    clients: &mut HashMap<String, tokio_postgres::Client>,
    database: &str,
) -> Result<BTreeSet<Edge>, ReadError> {
    let failed = |what: &str, e: tokio_postgres::Error| {
        if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
            ReadError::NoDatabase
        } else {
            match e.as_db_error() {
                Some(db) => ReadError::Failed(format!("{what}: {} ({})", db.message(), db.code().code())),
                None => ReadError::Failed(format!("{what}: {e}")),
            }
        }
    };
    if clients.get(database).is_none_or(tokio_postgres::Client::is_closed) {
        clients.remove(database);
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .dbname(database)
            .application_name("strata catalog")
            .connect_timeout(config.timeout);
        if let Some(p) = &config.password {
            pg.password(p);
        }
        let connected = match config.tls.as_ref().filter(|_| !config.host.starts_with('/')) {
            Some(tls) => {
                pg.ssl_mode(if tls.required {
                    tokio_postgres::config::SslMode::Require
                } else {
                    tokio_postgres::config::SslMode::Prefer
                });
                connect_with(&pg, crate::pg_tls::MakeRustls(tls.config.clone()), config.timeout).await
            }
            None => connect_with(&pg, tokio_postgres::NoTls, config.timeout).await,
        };
        let client = match connected {
            Ok(client) => client,
            Err(Some(e)) => return Err(failed("cannot connect", e)),
            Err(None) => return Err(ReadError::Failed("connecting timed out".to_owned())),
        };
        clients.insert(database.to_owned(), client);
    }
    let Some(client) = clients.get(database) else {
        return Err(ReadError::Failed("no connection".to_owned()));
    };
    let messages = match tokio::time::timeout(config.timeout, client.simple_query(CATALOG_SQL)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            clients.remove(database);
            return Err(failed("catalog query failed", e));
        }
        Err(_) => {
            // Dropping the client closes its connection; the next read reconnects.
            clients.remove(database);
            return Err(ReadError::Failed("catalog query timed out".to_owned()));
        }
    };
    let (mut edges, mut opaque, mut relations) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for message in &messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let (Some(kind), Some(a)) = (row.get(0), row.get(1)) else { continue };
            match kind {
                "opaque" => {
                    opaque.insert(a.to_owned());
                }
                "relation" => {
                    relations.insert(a.to_owned());
                }
                "text" => names.learn_from_text(a),
                "key" => {
                    if let (Some(column), Some(kind)) = (row.get(2), row.get(3)) {
                        edges.insert(Edge::Key(a.to_owned(), column.to_owned(), kind.to_owned()));
                    }
                }
                _ => edges.extend(edges_of_row(kind, a, row.get(2), row.get(3) == Some("true"))),
            }
        }
    }
    expand_opaque(&mut edges, &opaque, &relations);
    Ok(edges)
}

/// Installs a read's result: the new union of every database's edges goes to the cache before
/// the database counts as current, so no write is expanded through a map older than it claims.
fn apply(inner: &Inner, database: &str, generation: u64, result: Result<BTreeSet<Edge>, ReadError>) {
    let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = match result {
        Ok(edges) => {
            if let Some(db) = state.dbs.get_mut(database) {
                db.edges = Some(edges);
                db.failures = 0;
                db.retry_at = None;
            }
            install(inner, &mut state);
            if let Some(db) = state.dbs.get_mut(database) {
                db.synced = db.synced.max(generation);
            }
            "ok"
        }
        Err(ReadError::NoDatabase) => {
            // No session can write to a database that does not exist; one that appears later
            // is observed again.
            state.dbs.remove(database);
            install(inner, &mut state);
            tracing::debug!(database, "strata: catalog database does not exist; forgotten");
            "no_database"
        }
        Err(ReadError::Failed(message)) => {
            let refresh = inner.config.refresh_interval;
            if let Some(db) = state.dbs.get_mut(database) {
                db.failures = db.failures.saturating_add(1);
                let backoff =
                    FIRST_RETRY.saturating_mul(1 << db.failures.min(16).saturating_sub(1)).min(refresh);
                db.retry_at = Some(Instant::now() + backoff);
                let now = Instant::now();
                if db.warned_at.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                    db.warned_at = Some(now);
                    let stale = !db.is_current();
                    tracing::warn!(
                        database,
                        error = %message,
                        stale,
                        "strata: cannot read the catalog; keeping the last dependency map (while stale, every write on this database invalidates everything)"
                    );
                }
            }
            "error"
        }
    };
    drop(state);
    if let Some(c) = &inner.refreshes {
        c.with_label_values(&[outcome]).inc();
    }
    inner.changed.send_modify(|n| *n = n.wrapping_add(1));
}

fn install(inner: &Inner, state: &mut State) {
    let union: BTreeSet<Edge> =
        state.dbs.values().filter_map(|d| d.edges.as_ref()).flatten().cloned().collect();
    if union != state.installed {
        inner.cache.set_relations(relations_of(&union));
        state.installed = union;
    }
}

/// Connects with `tls` within `timeout`, the connection driven by a task of its own; `None` as
/// the error when the time ran out.
async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    timeout: Duration,
) -> Result<tokio_postgres::Client, Option<tokio_postgres::Error>>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    match tokio::time::timeout(timeout, pg.connect(tls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "strata: catalog connection ended");
                }
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validates_and_never_shows_the_password() {
        let config = CatalogConfig::builder()
            .with_upstream("db", 5433)
            .with_user("strata_catalog")
            .with_password("hunter2")
            .with_database("app")
            .with_database("app")
            .build();
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.databases(), ["app"]);
        assert_eq!(config.refresh_interval(), DEFAULT_REFRESH);
        let shown = format!("{config:?} {:?}", CatalogConfig::builder().with_password("hunter2"));
        assert!(!shown.contains("hunter2") && shown.contains("<set>"), "{shown}");
        assert!(CatalogConfig::builder().with_user("u").build().is_err(), "no upstream");
        assert!(CatalogConfig::builder().with_upstream("h", 5432).build().is_err(), "no user");
        assert!(CatalogConfig::builder()
            .with_upstream("h", 5432)
            .with_user("u")
            .with_refresh_interval(Duration::ZERO)
            .build()
            .is_err());
        assert!(CatalogConfig::builder()
            .with_upstream("h", 5432)
            .with_user("u")
            .with_database("")
            .build()
            .is_err());
    }

    #[test]
    fn public_types_are_debug_send_sync() {
        fn check<T: fmt::Debug + Send + Sync>() {}
        check::<CatalogConfig>();
        check::<CatalogConfigBuilder>();
        check::<Catalog>();
        check::<crate::Invalidation>();
        check::<crate::SessionCacheBuilder>();
        check::<crate::SessionCache>();
        check::<crate::CacheSession>();
    }

    fn tables(cache: &QueryCache, sql: &str) -> Vec<String> {
        let scope = crate::KeyScope::new("db", "role", crate::SettingsDigest::of([("a", "b")]));
        cache.explain(&crate::Request::new(&scope, sql)).tables.into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn catalog_rows_become_read_and_write_dependencies() {
        let rows: &[(&str, &str, Option<&str>, bool)] = &[
            ("view", "v_orders", Some("orders"), true),
            ("view", "v_report", Some("v_orders"), false),
            ("view", "v_report", Some("customers"), false),
            ("inherits", "measurements", Some("measurements_2026"), false),
            ("cascades", "customers", Some("orders"), false),
            ("policy", "documents", Some("members"), false),
            ("trigger", "accounts", None, false),
            ("rule", "logged", None, false),
            ("mystery", "x", Some("y"), false),
        ];
        let edges: BTreeSet<Edge> = rows.iter().flat_map(|(k, a, b, f)| edges_of_row(k, a, *b, *f)).collect();
        let cache = crate::QueryCacheConfig::default().build().unwrap_or_else(|e| panic!("{e}"));
        cache.set_relations(relations_of(&edges));
        assert_eq!(tables(&cache, "SELECT * FROM v_report"), ["customers", "orders", "v_orders", "v_report"]);
        assert_eq!(tables(&cache, "SELECT * FROM measurements"), ["measurements", "measurements_2026"]);
        assert_eq!(tables(&cache, "SELECT * FROM documents"), ["documents", "members"]);
        assert_eq!(tables(&cache, "SELECT * FROM y"), ["y"]);
        assert!(edges.contains(&Edge::WritesAlso("v_orders".into(), "orders".into())));
        assert!(
            !edges.iter().any(|e| matches!(e, Edge::WritesAlso(v, _) if v == "v_report")),
            "not updatable"
        );
        assert!(edges.contains(&Edge::WritesAlso("measurements".into(), "measurements_2026".into())));
        assert!(edges.contains(&Edge::WritesAlso("measurements_2026".into(), "measurements".into())));
        assert!(edges.contains(&Edge::WritesAlso("customers".into(), "orders".into())));
        assert!(
            edges.contains(&Edge::Unknown("accounts".into()))
                && edges.contains(&Edge::Unknown("logged".into()))
        );
        assert!(edges.contains(&Edge::RunsCode("accounts".into())));
        assert_eq!(edges.len(), 13);

        let mut edges = BTreeSet::new();
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<String>>();
        expand_opaque(&mut edges, &names(&["v_fn"]), &names(&["a", "b", "v_fn"]));
        let expected: BTreeSet<Edge> = [
            Edge::ReadsThrough("v_fn".into(), "a".into()),
            Edge::ReadsThrough("v_fn".into(), "b".into()),
            Edge::RunsCode("v_fn".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(edges, expected);
    }
}
