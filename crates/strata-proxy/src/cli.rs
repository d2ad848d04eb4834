//! Command-line arguments of the `strata-proxy` binary, merged over the TOML config file.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use strata::{CatalogConfig, Invalidation, WalConfig};

use crate::{
    config::{FileConfig, ProxyBuilder, Upstream, DEFAULT_UPSTREAM},
    error::Error,
    server::Proxy,
    strata_cache::{CacheSettings, EmbedderChoice, SemanticSettings},
    tls::{SslMode, UpstreamTls},
};

/// A caching PostgreSQL proxy: point clients at it instead of PostgreSQL.
///
/// Each option can also come from its environment variable or from the config file; the command
/// line wins over the environment, which wins over the file.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "strata-proxy", version, about)]
pub struct Args {
    /// Upstream PostgreSQL server (user, database and password come from each client)
    /// [default: postgres://127.0.0.1:5432].
    #[arg(long, env = "STRATA_UPSTREAM")]
    pub upstream: Option<String>,
    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, env = "STRATA_LISTEN")]
    pub listen: Option<String>,
    /// Address serving /health and /metrics; "off" disables it [default: 127.0.0.1:9187].
    #[arg(long, env = "STRATA_HTTP")]
    pub http: Option<String>,
    /// Redis URL shared by every proxy of a deployment (redis://host:port/): the L2 cache and the
    /// table versions live there, so a write through one proxy invalidates all of them. Without
    /// it the cache uses its embedded in-memory L2 and versions local to this process.
    #[arg(long, env = "STRATA_REDIS")]
    pub redis: Option<String>,
    /// Instead of --redis, a Redis Cluster shared by every proxy of a deployment: the URLs of some
    /// of its nodes, comma-separated (redis://10.0.0.1:6379,redis://10.0.0.2:6379). L2 spreads over
    /// the cluster's slots; the table versions live in one slot.
    #[arg(long, env = "STRATA_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Option<Vec<String>>,
    /// "off" turns caching off: the proxy only relays [default: on].
    #[arg(long, env = "STRATA_CACHE")]
    pub cache: Option<String>,
    /// TOML config file (see `FileConfig`).
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. "info" or "strata_proxy=debug" [default: info].
    #[arg(long, env = "STRATA_LOG")]
    pub log: Option<String>,
    /// Role the proxy reads the upstream's catalog as, to learn what a write changes beyond the
    /// tables its SQL names (views, triggers, rules, cascading foreign keys, partitions). Its
    /// password comes only from the STRATA_CATALOG_PASSWORD environment variable.
    #[arg(long, env = "STRATA_CATALOG_USER")]
    pub catalog_user: Option<String>,
    /// Databases whose catalog is read at startup, comma-separated (others are read when a
    /// client first uses them).
    #[arg(long, env = "STRATA_CATALOG_DATABASES", value_delimiter = ',')]
    pub catalog_databases: Option<Vec<String>>,
    /// Period of the catalog refresh in milliseconds [default: 30000].
    #[arg(long, env = "STRATA_CATALOG_REFRESH_MS")]
    pub catalog_refresh_ms: Option<u64>,
    /// How writes become invalidations: "catalog" (needs a catalog user), "everything" (every
    /// write invalidates every cached result) or "sql-text" (only the tables the SQL names; stale
    /// results through views, triggers, cascades, partitions) [default: catalog with a catalog
    /// user, else everything].
    #[arg(long, env = "STRATA_INVALIDATION")]
    pub invalidation: Option<String>,
    /// Role that streams the upstream's WAL (logical replication) so that writes made directly on
    /// PostgreSQL invalidate within milliseconds; needs REPLICATION and a server with
    /// wal_level=logical. Its password comes only from STRATA_REPLICATION_PASSWORD.
    #[arg(long, env = "STRATA_REPLICATION_USER")]
    pub replication_user: Option<String>,
    /// The database whose WAL is followed [default: the replication user's name].
    #[arg(long, env = "STRATA_REPLICATION_DATABASE")]
    pub replication_database: Option<String>,
    /// How far behind the WAL may be, in milliseconds, before the cache is bypassed [default: 1000].
    #[arg(long, env = "STRATA_WAL_LAG_BOUND_MS")]
    pub wal_lag_bound_ms: Option<u64>,
    /// Do not install the event trigger that reports DDL through the WAL (installing it needs a
    /// superuser replication user). Without it, DDL made directly reaches the catalog map through
    /// a schema fingerprint read every second, and materialized views are not cached.
    #[arg(long, env = "STRATA_NO_WAL_DDL_TRIGGER")]
    pub no_wal_ddl_trigger: bool,
    /// Key-level invalidation, "on" (default) or "off": a write to some rows of a table leaves
    /// cached reads of its other keys (point, IN list, closed range on the key) reachable.
    #[arg(long, env = "STRATA_KEY_LEVEL")]
    pub key_level: Option<String>,
    /// Users who may open the admin console by connecting to the virtual database `strata`
    /// (`psql -d strata`), comma-separated; the upstream server checks their password.
    #[arg(long, env = "STRATA_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Option<Vec<String>>,
    /// The upstream database an admin's login is checked on [default: postgres].
    #[arg(long, env = "STRATA_ADMIN_AUTH_DATABASE")]
    pub admin_auth_database: Option<String>,
    /// Custom settings (app.tenant) every session's cache key includes, comma-separated, beyond
    /// those learnt from SQL texts, role and database defaults and the catalog.
    #[arg(long, env = "STRATA_CUSTOM_SETTINGS", value_delimiter = ',')]
    pub custom_settings: Option<Vec<String>>,
    /// The semantic tier with all-MiniLM-L6-v2 run in-process from this directory (config.json,
    /// tokenizer.json, model.safetensors): reads with the `semantic` hint (or of tables marked
    /// `semantic = true`) that miss may be answered by a similar enough question's result. The
    /// `[semantic]` table of the config file chooses another embedder and the threshold.
    #[arg(long, env = "STRATA_SEMANTIC_MODEL")]
    pub semantic_model: Option<PathBuf>,
    /// Client TLS: the certificate chain (PEM, leaf first). SIGHUP reloads it with the key.
    #[arg(long, env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client TLS: the certificate's private key (PEM).
    #[arg(long, env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Client TLS: clients must present a certificate chaining to a root in this PEM file.
    #[arg(long, env = "STRATA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TCP clients that do not use TLS (Unix socket clients are local and may).
    #[arg(long, env = "STRATA_TLS_REQUIRE")]
    pub tls_require: bool,
    /// Also listen on the Unix socket DIR/.s.PGSQL.<port>, so `psql -h DIR -p PORT` connects.
    #[arg(long, env = "STRATA_UNIX_SOCKET_DIR")]
    pub unix_socket_dir: Option<PathBuf>,
    /// TLS to the upstream, as libpq's sslmode: disable, prefer, require, verify-ca or
    /// verify-full [default: prefer]. prefer and require verify nothing.
    #[arg(long, env = "STRATA_UPSTREAM_SSLMODE")]
    pub upstream_sslmode: Option<String>,
    /// Root certificates (PEM) for upstream verify-ca and verify-full; "system" for the Mozilla roots.
    #[arg(long, env = "STRATA_UPSTREAM_SSLROOTCERT")]
    pub upstream_sslrootcert: Option<PathBuf>,
    /// Threads serving sessions, each a single-threaded runtime that keeps a session's work on
    /// one thread [default: one per core]. On a host shared with PostgreSQL and the clients,
    /// fewer threads can mean fewer wake-ups per request; measure before changing.
    #[arg(long, env = "STRATA_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// How clients get server connections: session (one each, the default) or transaction
    /// (shared, one transaction at a time; the proxy then authenticates clients itself).
    #[arg(long, env = "STRATA_POOL_MODE")]
    pub pool_mode: Option<String>,
    /// Transaction pooling: server connections per database, user and startup parameters [default: 20].
    #[arg(long, env = "STRATA_POOL_SIZE")]
    pub pool_size: Option<usize>,
    /// Transaction pooling: idle server connections kept open per pool [default: 0].
    #[arg(long, env = "STRATA_POOL_MIN_IDLE")]
    pub pool_min_idle: Option<usize>,
    /// Transaction pooling: how long a request waits for a server connection, ms [default: 60000].
    #[arg(long, env = "STRATA_POOL_TIMEOUT_MS")]
    pub pool_timeout_ms: Option<u64>,
    /// Transaction pooling: clients connected at most [default: 10000].
    #[arg(long, env = "STRATA_MAX_CLIENT_CONN")]
    pub max_client_conn: Option<usize>,
    /// Transaction pooling: idle server connections unused this long close, ms [default: 600000].
    #[arg(long, env = "STRATA_SERVER_IDLE_TIMEOUT_MS")]
    pub server_idle_timeout_ms: Option<u64>,
    /// Transaction pooling: server connections this old close when next idle, ms [default: 3600000].
    #[arg(long, env = "STRATA_SERVER_LIFETIME_MS")]
    pub server_lifetime_ms: Option<u64>,
    /// Transaction pooling: scram-sha-256, md5 or trust (local use only) [default: scram-sha-256].
    #[arg(long, env = "STRATA_AUTH_TYPE")]
    pub auth_type: Option<String>,
    /// Transaction pooling: users and passwords, PgBouncer's userlist.txt format.
    #[arg(long, env = "STRATA_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Transaction pooling: prepared statements kept per server connection [default: 200].
    #[arg(long, env = "STRATA_MAX_PREPARED_STATEMENTS")]
    pub max_prepared_statements: Option<usize>,
}

/// The semantic tier's settings from `--semantic-model` over the `[semantic]` table; `None` when
/// neither is given.
fn semantic_settings(
    model: Option<PathBuf>,
    file: Option<crate::config::SemanticFileConfig>,
) -> Result<Option<SemanticSettings>, Error> {
    if model.is_none() && file.is_none() {
        return Ok(None);
    }
    let file = file.unwrap_or_default();
    let model_dir = model.clone().or(file.model_dir.clone());
    let kind = match (&model, file.embedder.as_deref()) {
        // The argument names the model: the file's choice of embedder gives way.
        (Some(_), _) => "minilm",
        (None, Some(kind)) => kind,
        (None, None) if model_dir.is_some() => "minilm",
        (None, None) => "ngrams",
    };
    let embedder = match kind {
        "minilm" => EmbedderChoice::MiniLm(model_dir.ok_or_else(|| {
            Error::config("[semantic] embedder = \"minilm\" needs model_dir (or --semantic-model DIR)")
        })?),
        "ngrams" => EmbedderChoice::NGrams,
        "http" => {
            let need = |v: Option<String>, what: &str| {
                v.ok_or_else(|| Error::config(format!("[semantic] embedder = \"http\" needs {what}")))
            };
            let api_key = match &file.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    Error::config(format!("[semantic] api_key_env names {var}, which is not set"))
                })?),
                None => None,
            };
            EmbedderChoice::Http {
                url: need(file.url.clone(), "url")?,
                api: file.api.clone().unwrap_or_else(|| "openai".to_owned()),
                model: need(file.model.clone(), "model")?,
                dimension: file
                    .dimension
                    .ok_or_else(|| Error::config("[semantic] embedder = \"http\" needs dimension"))?,
                api_key,
            }
        }
        other => {
            return Err(Error::config(format!(
                "[semantic] embedder must be minilm, ngrams or http, not {other:?}"
            )))
        }
    };
    Ok(Some(SemanticSettings {
        embedder,
        threshold: file.threshold,
        max_entries: file.max_entries,
        max_bytes: file.max_bytes,
        embed_deadline_ms: file.embed_deadline_ms,
    }))
}

/// The environment variable holding the catalog user's password (never an argument).
const CATALOG_PASSWORD_ENV: &str = "STRATA_CATALOG_PASSWORD";
/// The environment variable holding the replication user's password (never an argument).
const REPLICATION_PASSWORD_ENV: &str = "STRATA_REPLICATION_PASSWORD";

impl Args {
    /// The Redis every proxy of a deployment shares: a URL (`--redis`) or cluster nodes
    /// (`--redis-cluster`), the arguments' and environment's choice over the file's; one of the two.
    fn shared_redis(&self, file: &FileConfig) -> Result<(Option<String>, Vec<String>), Error> {
        let nodes = self.redis_cluster.clone().filter(|n| !n.is_empty());
        match (&self.redis, nodes) {
            (Some(_), Some(_)) => Err(Error::config("give --redis or --redis-cluster, not both")),
            (Some(url), None) => Ok((Some(url.clone()), Vec::new())),
            (None, Some(nodes)) => Ok((None, nodes)),
            (None, None) => match (&file.redis, file.redis_cluster.clone().unwrap_or_default()) {
                (Some(_), nodes) if !nodes.is_empty() => {
                    Err(Error::config("the config file gives redis and redis_cluster: keep one"))
                }
                (url, nodes) => Ok((url.clone(), nodes)),
            },
        }
    }

    /// The query cache's settings: the config file's `[cache]` table, the Redis URL, on or off.
    pub fn cache_settings(&self) -> Result<CacheSettings, Error> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let shared = self.shared_redis(&file)?;
        let enabled = match self.cache.as_deref() {
            None | Some("on" | "true" | "1") => true,
            Some("off" | "false" | "0") => false,
            Some(other) => return Err(Error::config(format!("--cache takes on or off, not {other:?}"))),
        };
        let key_level = match self.key_level.as_deref() {
            None => None,
            Some("on" | "true" | "1") => Some(true),
            Some("off" | "false" | "0") => Some(false),
            Some(other) => return Err(Error::config(format!("--key-level takes on or off, not {other:?}"))),
        };
        let semantic = semantic_settings(self.semantic_model.clone(), file.semantic)?;
        Ok(CacheSettings {
            semantic,
            table: file.cache,
            redis: shared.0,
            redis_cluster: shared.1,
            enabled,
            custom_settings: self.custom_settings.clone().or(file.custom_settings).unwrap_or_default(),
            key_level,
        })
    }

    /// The WAL invalidator's settings, when a replication user is given (arguments over the
    /// config file; the password from `STRATA_REPLICATION_PASSWORD`).
    pub fn wal(&self) -> Result<Option<WalConfig>, Error> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let shared = self.shared_redis(&file)?;
        let Some(user) = self.replication_user.clone().or(file.replication_user).filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let upstream = self.upstream.clone().or(file.upstream).unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
        let upstream = Upstream::parse(&upstream)?;
        let database =
            self.replication_database.clone().or(file.replication_database).unwrap_or_else(|| user.clone());
        let mut b = WalConfig::builder()
            .with_upstream(upstream.host(), upstream.port())
            .with_user(user)
            .with_database(database);
        if let Some(p) = std::env::var(REPLICATION_PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
            b = b.with_password(p);
        }
        if let Some(ms) = self.wal_lag_bound_ms.or(file.wal_lag_bound_ms) {
            b = b.with_lag_bound(Duration::from_millis(ms));
        }
        if self.no_wal_ddl_trigger || file.wal_ddl_trigger == Some(false) {
            b = b.with_ddl_trigger(false);
        }
        // Proxies sharing a Redis share the table versions: one of them streams for all, elected
        // by a lease next to the versions.
        match shared {
            (Some(redis), _) => b = b.with_redis_lease(redis, "strata:"),
            (None, nodes) if !nodes.is_empty() => b = b.with_redis_cluster_lease(nodes, "strata:"),
            _ => {}
        }
        b.build().map(Some).map_err(|e| Error::config(e.to_string()))
    }

    /// How writes become invalidations, from the arguments over the config file; the catalog
    /// password from `STRATA_CATALOG_PASSWORD`.
    pub fn invalidation(&self) -> Result<Invalidation, Error> {
        let password = std::env::var(CATALOG_PASSWORD_ENV).ok().filter(|p| !p.is_empty());
        self.invalidation_with_password(password)
    }

    fn invalidation_with_password(&self, password: Option<String>) -> Result<Invalidation, Error> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let user = self.catalog_user.clone().or(file.catalog_user).filter(|u| !u.is_empty());
        let mode = self.invalidation.clone().or(file.invalidation);
        match (mode.as_deref(), user) {
            (None | Some("catalog"), Some(user)) => {
                let upstream =
                    self.upstream.clone().or(file.upstream).unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
                let upstream = Upstream::parse(&upstream)?;
                let mut b =
                    CatalogConfig::builder().with_upstream(upstream.host(), upstream.port()).with_user(user);
                // The catalog connection takes the same way as the sessions' upstream leg.
                let mode: SslMode = match self.upstream_sslmode.clone().or(file.upstream_sslmode) {
                    Some(m) => m.parse()?,
                    None => SslMode::default(),
                };
                let root = self.upstream_sslrootcert.clone().or(file.upstream_sslrootcert);
                if let Some(config) = UpstreamTls::new(mode, root.as_deref())?.client_config {
                    b = b.with_tls(strata::PgTls::new(config, mode != SslMode::Prefer));
                }
                if let Some(p) = password {
                    b = b.with_password(p);
                }
                for d in self.catalog_databases.clone().or(file.catalog_databases).unwrap_or_default() {
                    b = b.with_database(d);
                }
                if let Some(ms) = self.catalog_refresh_ms.or(file.catalog_refresh_ms) {
                    b = b.with_refresh_interval(Duration::from_millis(ms));
                }
                if let Some(ms) = file.connect_timeout_ms {
                    b = b.with_timeout(Duration::from_millis(ms));
                }
                Ok(Invalidation::Catalog(b.build().map_err(|e| Error::config(e.to_string()))?))
            }
            (Some("catalog"), None) => {
                Err(Error::config("invalidation = catalog needs a catalog user (--catalog-user)"))
            }
            (Some(other @ ("everything" | "sql-text")), Some(_)) => Err(Error::config(format!(
                "a catalog user is set but invalidation = {other}; drop one of them"
            ))),
            (None | Some("everything"), None) => Ok(Invalidation::Everything),
            (Some("sql-text"), None) => Ok(Invalidation::SqlText),
            (Some(other), _) => Err(Error::config(format!(
                "invalidation takes catalog, everything or sql-text, not {other:?}"
            ))),
        }
    }

    /// Reads the config file (if any) and merges it under the arguments.
    pub fn resolve(&self) -> Result<(ProxyBuilder, String), Error> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let shared = self.shared_redis(&file)?;
        let mut b = Proxy::builder();
        if let Some(threads) = self.worker_threads {
            b = b.with_session_threads(usize::from(threads));
        }
        b = b.with_upstream(
            self.upstream.clone().or(file.upstream).unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
        );
        if let Some(l) = self.listen.clone().or(file.listen) {
            b = b.with_listen(l);
        }
        match self.http.clone().or(file.http).as_deref() {
            Some("" | "off" | "none") => b = b.without_http(),
            Some(h) => b = b.with_http(h),
            None => {}
        }
        match shared {
            (Some(r), _) => b = b.with_redis(r),
            (None, nodes) if !nodes.is_empty() => b = b.with_redis_cluster(nodes),
            _ => {}
        }
        if let Some(n) = file.max_message_bytes {
            b = b.with_max_message_bytes(n);
        }
        if let Some(n) = file.max_result_bytes {
            b = b.with_max_result_bytes(n);
        }
        if let Some(ms) = file.connect_timeout_ms {
            b = b.with_connect_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = file.shutdown_grace_ms {
            b = b.with_shutdown_grace(Duration::from_millis(ms));
        }
        if let Some(n) = file.max_recording_bytes {
            b = b.with_max_recording_bytes(n);
        }
        if let Some(ms) = file.drain_timeout_ms {
            b = b.with_drain_timeout(Duration::from_millis(ms));
        }
        if let Some(users) = self.admin_users.clone().or(file.admin_users) {
            b = b.with_admin_users(users.into_iter().filter(|u| !u.is_empty()).collect());
        }
        if let Some(db) = self.admin_auth_database.clone().or(file.admin_auth_database) {
            b = b.with_admin_auth_database(db);
        }
        match (self.tls_cert.clone().or(file.tls_cert), self.tls_key.clone().or(file.tls_key)) {
            (None, None) => {}
            (Some(cert), Some(key)) => b = b.with_tls(cert, key),
            _ => return Err(Error::config("client TLS needs both --tls-cert and --tls-key")),
        }
        if let Some(ca) = self.tls_client_ca.clone().or(file.tls_client_ca) {
            b = b.with_tls_client_ca(ca);
        }
        if self.tls_require || file.tls_require == Some(true) {
            b = b.with_tls_required(true);
        }
        if let Some(dir) = self.unix_socket_dir.clone().or(file.unix_socket_dir) {
            b = b.with_unix_socket_dir(dir);
        }
        if let Some(mode) = self.upstream_sslmode.clone().or(file.upstream_sslmode) {
            b = b.with_upstream_sslmode(mode.parse()?);
        }
        if let Some(root) = self.upstream_sslrootcert.clone().or(file.upstream_sslrootcert) {
            b = b.with_upstream_sslrootcert(root);
        }
        let pool = file.pool.clone().unwrap_or_default();
        if let Some(mode) = self.pool_mode.clone().or(pool.mode) {
            b = b.with_pool_mode(mode.parse().map_err(Error::config)?);
        }
        if let Some(n) = self.pool_size.or(pool.size) {
            b = b.with_pool_size(n);
        }
        if let Some(n) = self.pool_min_idle.or(pool.min_idle) {
            b = b.with_pool_min_idle(n);
        }
        if let Some(ms) = self.pool_timeout_ms.or(pool.timeout_ms) {
            b = b.with_pool_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = self.max_client_conn.or(pool.max_client_conn) {
            b = b.with_max_client_conn(n);
        }
        if let Some(ms) = self.server_idle_timeout_ms.or(pool.server_idle_timeout_ms) {
            b = b.with_server_idle_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.server_lifetime_ms.or(pool.server_lifetime_ms) {
            b = b.with_server_lifetime(Duration::from_millis(ms));
        }
        if let Some(auth) = self.auth_type.clone().or(pool.auth_type) {
            b = b.with_auth_type(auth.parse().map_err(Error::config)?);
        }
        if let Some(path) = self.auth_file.clone().or(pool.auth_file) {
            b = b.with_auth_file(path);
        }
        if let Some(n) = self.max_prepared_statements.or(pool.max_prepared_statements) {
            b = b.with_max_prepared_statements(n);
        }
        if let Some(path) = &self.config {
            b = b.with_config_file(path.clone());
        }
        let log = self.log.clone().or(file.log).unwrap_or_else(|| "info".to_owned());
        Ok((b, log))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn arguments_override_the_file_and_defaults_fill_the_rest() {
        let path = std::env::temp_dir().join(format!("strata-proxy-cli-{}.toml", std::process::id()));
        let written = std::fs::write(
            &path,
            "upstream = \"postgres://db.internal:5433\"\nlisten = \"127.0.0.1:7000\"\nhttp = \"off\"\nlog = \"debug\"\n",
        );
        assert!(written.is_ok());
        let args = Args::try_parse_from([
            "strata-proxy",
            "--config",
            &path.to_string_lossy(),
            "--listen",
            "0.0.0.0:6543",
        ]);
        let (builder, log) = args
            .map_err(|e| e.to_string())
            .and_then(|a| a.resolve().map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&path);
        let shown = format!("{builder:?}");
        assert!(shown.contains("upstream: Some(\"postgres://db.internal:5433\")"), "{shown}");
        assert!(shown.contains("listen: \"0.0.0.0:6543\""), "{shown}");
        assert!(shown.contains("http: None"), "{shown}");
        assert_eq!(log, "debug");

        let (builder, log) = Args::default().resolve().unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{builder:?}");
        assert!(shown.contains("upstream: Some(\"postgres://127.0.0.1:5432\")"), "{shown}");
        assert!(shown.contains("listen: \"127.0.0.1:6432\""), "{shown}");
        assert_eq!(log, "info");
        assert!(Args { config: Some("/nonexistent/strata.toml".into()), ..Args::default() }
            .resolve()
            .is_err());
    }

    #[test]
    fn a_redis_cluster_is_one_shared_redis_and_excludes_a_redis_url() {
        let parse = |argv: &[&str]| Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let nodes = "redis://10.0.0.1:6379,redis://10.0.0.2:6379";
        let args = parse(&["strata-proxy", "--redis-cluster", nodes, "--replication-user", "strata_wal"]);
        let settings = args.cache_settings().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.redis, None);
        assert_eq!(settings.redis_cluster, ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
        // The fleet elects one WAL streamer through the cluster, as through one Redis.
        assert!(args.wal().unwrap_or_else(|e| panic!("{e}")).is_some_and(|w| w.is_leased()));
        let (builder, _) = args.resolve().unwrap_or_else(|e| panic!("{e}"));
        assert!(format!("{builder:?}").contains("redis_cluster: 2"), "{builder:?}");
        let both = parse(&["strata-proxy", "--redis", "redis://r:6379/", "--redis-cluster", nodes]);
        assert!(both.cache_settings().is_err() && both.resolve().is_err() && both.wal().is_err());
        // In the file, one of the two as well; an argument wins over the file's choice.
        let path = std::env::temp_dir().join(format!("strata-proxy-cluster-{}.toml", std::process::id()));
        let file = "redis = \"redis://r:6379/\"\nredis_cluster = [\"redis://10.0.0.1:6379\"]\n";
        assert!(std::fs::write(&path, file).is_ok());
        let config = path.to_string_lossy().into_owned();
        assert!(parse(&["strata-proxy", "--config", &config]).cache_settings().is_err());
        let chosen = parse(&["strata-proxy", "--config", &config, "--redis-cluster", nodes]).cache_settings();
        let _ = std::fs::remove_file(&path);
        let chosen = chosen.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((chosen.redis, chosen.redis_cluster.len()), (None, 2));
    }

    #[test]
    fn a_replication_user_configures_the_wal_invalidator() {
        let parse = |argv: &[&str]| Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        assert!(parse(&["strata-proxy"]).wal().unwrap_or_else(|e| panic!("{e}")).is_none());
        let config = parse(&[
            "strata-proxy",
            "--upstream",
            "postgres://db.internal:5433",
            "--replication-user",
            "strata_wal",
            "--replication-database",
            "app",
            "--wal-lag-bound-ms",
            "500",
        ])
        .wal()
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a replication user configures the invalidator"));
        assert_eq!(config.database(), "app");
        assert_eq!(config.lag_bound(), Duration::from_millis(500));
        let shown = format!("{config:?}");
        assert!(
            shown.contains("db.internal") && shown.contains("5433") && shown.contains("strata_wal"),
            "{shown}"
        );
        assert!(!config.is_leased(), "without Redis, every proxy streams for itself");
        // The database defaults to the user's name, as PostgreSQL's own.
        let config = parse(&["strata-proxy", "--replication-user", "strata_wal"]).wal();
        assert_eq!(config.ok().flatten().map(|c| c.database().to_owned()).as_deref(), Some("strata_wal"));
        // Proxies sharing a Redis elect one invalidator; the DDL trigger can be declined.
        let config = parse(&[
            "strata-proxy",
            "--replication-user",
            "strata_wal",
            "--redis",
            "redis://cache.internal:6379/",
            "--no-wal-ddl-trigger",
        ])
        .wal()
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("configured"));
        assert!(config.is_leased());
        assert!(format!("{config:?}").contains("ddl_trigger: false"));
    }

    fn invalidation(args: &[&str], file: &str, password: Option<&str>) -> String {
        let path = std::env::temp_dir().join(format!(
            "strata-proxy-inval-{}-{}.toml",
            std::process::id(),
            args.len() + file.len()
        ));
        if std::fs::write(&path, file).is_err() {
            return "cannot write the config file".to_owned();
        }
        let mut argv = vec!["strata-proxy", "--config", path.to_str().unwrap_or_default()];
        argv.extend_from_slice(args);
        let shown = match Args::try_parse_from(argv) {
            Err(e) => format!("args error: {}", e.kind()),
            Ok(a) => match a.invalidation_with_password(password.map(str::to_owned)) {
                Ok(i) => format!("{i:?}"),
                Err(e) => format!("error: {e}"),
            },
        };
        let _ = std::fs::remove_file(&path);
        shown
    }

    #[test]
    fn invalidation_defaults_to_everything_and_follows_the_catalog_with_a_user() {
        assert_eq!(invalidation(&[], "", None), "Everything");
        assert_eq!(invalidation(&["--invalidation", "sql-text"], "", None), "SqlText");
        let shown = invalidation(
            &["--catalog-user", "cat", "--catalog-databases", "app,reports"],
            "upstream = \"postgres://db:7\"\ncatalog_refresh_ms = 2000\n",
            Some("s3cret"),
        );
        assert!(shown.starts_with("Catalog(CatalogConfig {"), "{shown}");
        for part in ["host: \"db\", port: 7", "user: \"cat\"", "[\"app\", \"reports\"]", "2s", "<set>"] {
            assert!(shown.contains(part), "{part} in {shown}");
        }
        assert!(!shown.contains("s3cret"), "{shown}");
        let from_file = invalidation(&[], "catalog_user = \"cat\"\ncatalog_databases = [\"x\"]\n", None);
        assert!(from_file.contains("user: \"cat\"") && from_file.contains("password: None"), "{from_file}");
        assert!(invalidation(&["--invalidation", "catalog"], "", None).starts_with("error"));
        assert!(invalidation(&["--catalog-user", "cat", "--invalidation", "sql-text"], "", None)
            .starts_with("error"));
        assert!(invalidation(&["--invalidation", "some"], "", None).starts_with("error"));
        // The password is never an argument nor a file key.
        assert!(invalidation(&["--catalog-password", "x"], "", None).starts_with("args error"));
        assert!(invalidation(&[], "catalog_password = \"x\"\n", None).starts_with("error"));
    }
}
