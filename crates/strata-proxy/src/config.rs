//! The proxy's configuration: a validated builder, the upstream address, and the TOML file type.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    auth::{AuthType, UserList},
    error::Error,
    pool::{PoolMode, PoolSettings},
    seam::{PassThrough, RequestCache},
    server::Proxy,
    tls::{ClientTls, SslMode, TlsFiles, UpstreamTls},
};

/// The upstream PostgreSQL server: a TCP host and port, or a Unix socket directory and port.
///
/// Only where to connect is used: the user, database and password come from each client's own
/// startup message and authentication, which the proxy relays unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A host name or address and a TCP port.
    Tcp {
        /// The host name or address.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A directory holding PostgreSQL's socket `.s.PGSQL.<port>` (libpq's `host=/dir`).
    Unix {
        /// The socket directory.
        dir: std::path::PathBuf,
        /// The port in the socket's name.
        port: u16,
    },
}

impl Upstream {
    /// Parses `postgres://[user[:password]@]host[:port][/database][?params]` (or `postgresql://`),
    /// where the host may be a percent-encoded socket directory (`%2Fvar%2Frun%2Fpostgresql`) and
    /// the `host` and `port` parameters win over the authority, as in libpq; or a bare socket
    /// directory (`/var/run/postgresql`, port 5432).
    pub fn parse(url: &str) -> Result<Self, Error> {
        if url.starts_with('/') {
            return Ok(Self::Unix { dir: url.into(), port: 5432 });
        }
        let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or_else(
            || Error::config(format!("upstream must be a postgres:// url or a socket directory: {url:?}")),
        )?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::config(format!("bad ipv6 host in upstream url {url:?}")))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let mut host = percent_decode(host)
            .ok_or_else(|| Error::config(format!("bad percent-encoding in upstream url {url:?}")))?;
        let mut port = port.map(str::to_owned);
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("host", h)) => {
                        host = percent_decode(h)
                            .ok_or_else(|| Error::config(format!("bad host parameter in {url:?}")))?;
                    }
                    Some(("port", p)) => port = Some(p.to_owned()),
                    _ => {}
                }
            }
        }
        if host.is_empty() {
            return Err(Error::config(format!("upstream url has no host: {url:?}")));
        }
        let port = match port.as_deref() {
            None | Some("") => 5432,
            Some(p) => p.parse().map_err(|_| Error::config(format!("bad port in upstream url {url:?}")))?,
        };
        Ok(if host.starts_with('/') {
            Self::Unix { dir: host.into(), port }
        } else {
            Self::Tcp { host, port }
        })
    }

    /// The host name or address, or the socket directory (as libpq and tokio-postgres take it).
    pub fn host(&self) -> String {
        match self {
            Self::Tcp { host, .. } => host.clone(),
            Self::Unix { dir, .. } => dir.display().to_string(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Tcp { port, .. } | Self::Unix { port, .. } => *port,
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix { dir, port } => write!(f, "{}", crate::transport::socket_path(dir, *port).display()),
        }
    }
}

/// Validated proxy settings.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    pub(crate) upstream: Upstream,
    pub(crate) listen: SocketAddr,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) redis: Option<String>,
    pub(crate) redis_cluster: Vec<String>,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_result_bytes: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_recording_bytes: usize,
    /// Threads whose own single-threaded runtimes serve sessions (a session's tasks and sockets
    /// stay on one); 0 serves them on the runtime that runs the proxy.
    pub(crate) session_threads: usize,
    /// Users who may open the admin console (the virtual database `strata`); none turns it off.
    pub(crate) admin_users: Vec<String>,
    /// The database an admin's password is checked on.
    pub(crate) admin_auth_database: String,
    /// The configuration file, for `RELOAD` and `SHOW CONFIG`.
    pub(crate) config_file: Option<std::path::PathBuf>,
    /// The certificate clients see, when client TLS is on.
    pub(crate) tls: Option<Arc<ClientTls>>,
    /// Whether a TCP client must use TLS (Unix socket clients need not).
    pub(crate) tls_required: bool,
    /// Where the Unix socket `.s.PGSQL.<port>` is created, if anywhere.
    pub(crate) unix_socket_dir: Option<PathBuf>,
    /// The upstream leg's TLS.
    pub(crate) upstream_tls: UpstreamTls,
    /// Transaction pooling's settings; `None` in session mode.
    pub(crate) pooling: Option<PoolSettings>,
}

/// The pooling options as given (validated into [`PoolSettings`] by `build`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolOptions {
    mode: PoolMode,
    size: usize,
    min_idle: usize,
    timeout: Duration,
    max_client_conn: usize,
    server_idle_timeout: Duration,
    server_lifetime: Duration,
    auth_type: AuthType,
    auth_file: Option<PathBuf>,
    max_prepared_statements: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            mode: PoolMode::Session,
            size: 20,
            min_idle: 0,
            timeout: Duration::from_secs(60),
            max_client_conn: 10_000,
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            max_prepared_statements: 200,
        }
    }
}

impl PoolOptions {
    fn settings(&self) -> Result<Option<PoolSettings>, Error> {
        if self.mode == PoolMode::Session {
            return Ok(None);
        }
        if self.size == 0 {
            return Err(Error::config("pool_size must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("pool_timeout must be positive"));
        }
        let users = match &self.auth_file {
            Some(path) => Some(Arc::new(
                UserList::load(path).map_err(|e| Error::config(format!("auth_file {}: {e}", path.display())))?,
            )),
            None if self.auth_type != AuthType::Trust => {
                return Err(Error::config(format!(
                    "transaction pooling with auth_type {} needs an auth_file of users and passwords (the proxy authenticates clients and logs in to PostgreSQL itself)",
                    self.auth_type
                )))
            }
            None => None,
        };
        Ok(Some(PoolSettings {
            size: self.size,
            min_idle: self.min_idle.min(self.size),
            timeout: self.timeout,
            max_client_conn: self.max_client_conn.max(1),
            server_idle_timeout: self.server_idle_timeout,
            server_lifetime: self.server_lifetime,
            auth_type: self.auth_type,
            users,
            max_prepared_statements: self.max_prepared_statements.max(1),
        }))
    }
}

/// Builds a [`Proxy`].
pub struct ProxyBuilder {
    upstream: Option<String>,
    listen: String,
    http: Option<String>,
    redis: Option<String>,
    redis_cluster: Vec<String>,
    max_message_bytes: u64,
    max_result_bytes: u64,
    connect_timeout: Duration,
    startup_timeout: Duration,
    shutdown_grace: Duration,
    drain_timeout: Duration,
    max_recording_bytes: u64,
    session_threads: Option<usize>,
    admin_users: Vec<String>,
    admin_auth_database: String,
    config_file: Option<std::path::PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_required: bool,
    unix_socket_dir: Option<PathBuf>,
    upstream_sslmode: SslMode,
    upstream_sslrootcert: Option<PathBuf>,
    pool: PoolOptions,
    cache: Arc<dyn RequestCache>,
    registry: Option<prometheus::Registry>,
}

/// The upstream the binary uses when none is given.
pub const DEFAULT_UPSTREAM: &str = "postgres://127.0.0.1:5432";
/// The default client listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// The default HTTP address for `/health` and `/metrics`.
pub const DEFAULT_HTTP: &str = "127.0.0.1:9187";

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self {
            upstream: None,
            listen: DEFAULT_LISTEN.to_owned(),
            http: Some(DEFAULT_HTTP.to_owned()),
            redis: None,
            redis_cluster: Vec::new(),
            max_message_bytes: 64 << 20,
            max_result_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_recording_bytes: 256 << 20,
            session_threads: None,
            admin_users: Vec::new(),
            admin_auth_database: "postgres".to_owned(),
            config_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_required: false,
            unix_socket_dir: None,
            upstream_sslmode: SslMode::default(),
            upstream_sslrootcert: None,
            pool: PoolOptions::default(),
            cache: Arc::new(PassThrough),
            registry: None,
        }
    }
}

impl ProxyBuilder {
    /// The upstream PostgreSQL server as a `postgres://host:port` URL. Required.
    pub fn with_upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = Some(url.into());
        self
    }

    /// Where clients connect (`host:port`; port 0 picks a free one). Default `127.0.0.1:6432`.
    pub fn with_listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// Where `/health` and `/metrics` are served. Default `127.0.0.1:9187`.
    pub fn with_http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Serves no HTTP endpoint.
    pub fn without_http(mut self) -> Self {
        self.http = None;
        self
    }

    /// The shared L2's Redis URL, kept for the cache configuration. Default: none (embedded L2).
    pub fn with_redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(url.into());
        self
    }

    /// The shared L2's Redis Cluster (URLs of some of its nodes), kept for the cache
    /// configuration, instead of [`with_redis`](Self::with_redis). Default: none.
    pub fn with_redis_cluster(mut self, nodes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.redis_cluster = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// The largest client message accepted; a longer one is a protocol violation. Default 64 MiB.
    pub fn with_max_message_bytes(mut self, bytes: u64) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The largest response recorded for the cache; a longer one is relayed but not stored.
    /// Default 1 MiB.
    pub fn with_max_result_bytes(mut self, bytes: u64) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// Timeout for connecting to the upstream server. Default 5 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout for a client to send its startup message. Default 60 s.
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// How long shutdown waits for sessions to finish their current transaction. Default 30 s.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long a session whose client left (or whose shutdown grace ran out) keeps reading the
    /// answers of requests still running upstream, so that a write committing after the client
    /// left is still invalidated. Past it the running query is cancelled, and what it may have
    /// written is invalidated conservatively. Default 30 s.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The most bytes all sessions together may hold in responses being recorded for the cache
    /// (each is also bounded by the maximum result size); a response that would pass it is
    /// relayed unrecorded. Default 256 MiB.
    pub fn with_max_recording_bytes(mut self, bytes: u64) -> Self {
        self.max_recording_bytes = bytes;
        self
    }

    /// How many threads serve sessions, each with its own single-threaded runtime [default: one
    /// per core]. A session's two directions, its sockets and what it spawns stay on the thread
    /// it was given (the one serving the fewest sessions), so in session mode a relayed request
    /// wakes no other thread (a pooled server connection is polled by the thread that opened it).
    /// 0 serves sessions as tasks of the runtime that runs the proxy instead.
    pub fn with_session_threads(mut self, threads: usize) -> Self {
        self.session_threads = Some(threads);
        self
    }

    /// The cache consulted for each request. Default [`PassThrough`].
    pub fn with_cache(mut self, cache: Arc<dyn RequestCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The metrics registry the proxy registers into and serves. Default: a new one.
    pub fn with_registry(mut self, registry: prometheus::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Users who may open the admin console by connecting to the virtual database `strata`
    /// (their password is checked by the upstream server). Default: none, and `strata` is then
    /// an ordinary database name relayed upstream.
    #[must_use]
    pub fn with_admin_users(mut self, users: Vec<String>) -> Self {
        self.admin_users = users;
        self
    }

    /// The upstream database an admin's login is checked on. Default: `postgres`.
    #[must_use]
    pub fn with_admin_auth_database(mut self, database: impl Into<String>) -> Self {
        self.admin_auth_database = database.into();
        self
    }

    /// The configuration file the proxy was started with, which the console's `RELOAD` reads
    /// again. Default: none.
    #[must_use]
    pub fn with_config_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Client TLS with this certificate chain (leaf first) and key, both PEM: the proxy answers
    /// `S` to SSLRequest and accepts PostgreSQL 17's direct TLS. `SIGHUP` reloads both files.
    /// Default: none (clients connect in plain text).
    #[must_use]
    pub fn with_tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Clients on TLS must present a certificate chaining to a root in this PEM file. Default: no
    /// client certificates asked for.
    #[must_use]
    pub fn with_tls_client_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls_client_ca = Some(ca.into());
        self
    }

    /// Whether a TCP client must use TLS (it is refused with SQLSTATE 28000 otherwise); Unix
    /// socket clients are local and need not. Default: false.
    #[must_use]
    pub fn with_tls_required(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// Also listens on the Unix socket `DIR/.s.PGSQL.<port>` (the port the TCP listener got), so
    /// that `psql -h DIR -p PORT` connects. Default: no Unix socket.
    #[must_use]
    pub fn with_unix_socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.unix_socket_dir = Some(dir.into());
        self
    }

    /// The upstream leg's TLS, as libpq's `sslmode`. Default: [`SslMode::Prefer`].
    #[must_use]
    pub fn with_upstream_sslmode(mut self, mode: SslMode) -> Self {
        self.upstream_sslmode = mode;
        self
    }

    /// The root certificates (PEM) the upstream's certificate must chain to in `verify-ca` and
    /// `verify-full`; `system` means the Mozilla roots. Default: none.
    #[must_use]
    pub fn with_upstream_sslrootcert(mut self, path: impl Into<PathBuf>) -> Self {
        self.upstream_sslrootcert = Some(path.into());
        self
    }

    /// How clients get server connections. [`PoolMode::Transaction`] shares a few per database,
    /// user and startup parameters, linked for one transaction at a time, and authenticates
    /// clients itself (see [`with_auth_type`](Self::with_auth_type)). Default:
    /// [`PoolMode::Session`] (one server connection per client, authentication relayed).
    #[must_use]
    pub fn with_pool_mode(mut self, mode: PoolMode) -> Self {
        self.pool.mode = mode;
        self
    }

    /// Transaction pooling: server connections per pool at most. Default 20.
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool.size = size;
        self
    }

    /// Transaction pooling: idle server connections kept open per pool once a client has logged
    /// in to it. Default 0.
    #[must_use]
    pub fn with_pool_min_idle(mut self, n: usize) -> Self {
        self.pool.min_idle = n;
        self
    }

    /// Transaction pooling: how long a request waits for a server connection before it fails
    /// with SQLSTATE 53300. Default 60 s.
    #[must_use]
    pub fn with_pool_timeout(mut self, timeout: Duration) -> Self {
        self.pool.timeout = timeout;
        self
    }

    /// Transaction pooling: clients connected at most; more are refused with SQLSTATE 53300.
    /// Default 10,000.
    #[must_use]
    pub fn with_max_client_conn(mut self, n: usize) -> Self {
        self.pool.max_client_conn = n;
        self
    }

    /// Transaction pooling: an idle server connection unused this long is closed. Default 600 s.
    #[must_use]
    pub fn with_server_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool.server_idle_timeout = timeout;
        self
    }

    /// Transaction pooling: a server connection this old is closed when next idle. Default 3600 s.
    #[must_use]
    pub fn with_server_lifetime(mut self, lifetime: Duration) -> Self {
        self.pool.server_lifetime = lifetime;
        self
    }

    /// Transaction pooling: how the proxy authenticates clients. `trust` is for local use only.
    /// Default [`AuthType::ScramSha256`].
    #[must_use]
    pub fn with_auth_type(mut self, auth: AuthType) -> Self {
        self.pool.auth_type = auth;
        self
    }

    /// Transaction pooling: the users and their passwords (PgBouncer's `userlist.txt` format:
    /// `"user" "password"`, the password in plain text, as `md5...` or as a SCRAM verifier).
    /// Required unless the auth type is `trust`. Default: none.
    #[must_use]
    pub fn with_auth_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pool.auth_file = Some(path.into());
        self
    }

    /// Transaction pooling: protocol-level prepared statements kept per server connection (the
    /// least recently used are closed). Default 200.
    #[must_use]
    pub fn with_max_prepared_statements(mut self, n: usize) -> Self {
        self.pool.max_prepared_statements = n;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Proxy, Error> {
        let upstream = Upstream::parse(
            self.upstream
                .as_deref()
                .ok_or_else(|| Error::config("an upstream url is required (--upstream)"))?,
        )?;
        let listen = parse_addr("listen", &self.listen)?;
        let http = self.http.as_deref().map(|h| parse_addr("http", h)).transpose()?;
        if self.max_message_bytes < 1024 {
            return Err(Error::config("max_message_bytes must be at least 1024"));
        }
        let max_message_bytes = usize::try_from(self.max_message_bytes.min(1 << 30)).unwrap_or(1 << 30);
        let max_result_bytes = usize::try_from(self.max_result_bytes).unwrap_or(usize::MAX);
        for (name, d) in
            [("connect_timeout", self.connect_timeout), ("startup_timeout", self.startup_timeout)]
        {
            if d.is_zero() {
                return Err(Error::config(format!("{name} must be positive")));
            }
        }
        if let Some(r) = &self.redis {
            if !r.starts_with("redis://") && !r.starts_with("rediss://") && !r.starts_with("unix://") {
                return Err(Error::config(format!("redis url must start with redis://: {r:?}")));
            }
            if !self.redis_cluster.is_empty() {
                return Err(Error::config("give a redis url or redis cluster nodes, not both"));
            }
        }
        for node in &self.redis_cluster {
            if !node.starts_with("redis://") && !node.starts_with("rediss://") {
                return Err(Error::config(format!(
                    "redis cluster node urls must start with redis:// or rediss://: {node:?}"
                )));
            }
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(Arc::new(ClientTls::load(TlsFiles { cert, key, client_ca: self.tls_client_ca })?))
            }
            (None, None) if self.tls_client_ca.is_none() && !self.tls_required => None,
            (None, None) => {
                return Err(Error::config(
                    "client TLS options need a certificate and key (--tls-cert, --tls-key)",
                ))
            }
            _ => return Err(Error::config("client TLS needs both --tls-cert and --tls-key")),
        };
        let config = ProxyConfig {
            upstream,
            listen,
            http,
            redis: self.redis,
            redis_cluster: self.redis_cluster,
            max_message_bytes,
            max_result_bytes,
            connect_timeout: self.connect_timeout,
            startup_timeout: self.startup_timeout,
            shutdown_grace: self.shutdown_grace,
            drain_timeout: self.drain_timeout,
            max_recording_bytes: usize::try_from(self.max_recording_bytes).unwrap_or(usize::MAX),
            session_threads: self.session_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            admin_users: self.admin_users,
            admin_auth_database: self.admin_auth_database,
            config_file: self.config_file,
            tls,
            tls_required: self.tls_required,
            unix_socket_dir: self.unix_socket_dir,
            upstream_tls: UpstreamTls::new(self.upstream_sslmode, self.upstream_sslrootcert.as_deref())?,
            pooling: self.pool.settings()?,
        };
        Proxy::new(config, self.cache, self.registry.unwrap_or_default())
    }
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("upstream", &self.upstream)
            .field("listen", &self.listen)
            .field("http", &self.http)
            .field("redis", &self.redis.as_ref().map(|_| "<set>"))
            .field("redis_cluster", &self.redis_cluster.len())
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_result_bytes", &self.max_result_bytes)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, Error> {
    s.parse().map_err(|e| Error::config(format!("bad {what} address {s:?}")).with_source(e))
}

/// The proxy's TOML configuration file (`--config strata.toml`).
///
/// ```toml
/// upstream = "postgres://127.0.0.1:5432"
/// listen = "127.0.0.1:6432"
/// http = "127.0.0.1:9187"
/// redis = "redis://127.0.0.1:6379/"
/// log = "info"
/// max_message_bytes = 67108864
/// max_result_bytes = 1048576
/// connect_timeout_ms = 5000
/// shutdown_grace_ms = 30000
/// drain_timeout_ms = 30000
/// max_recording_bytes = 268435456
/// catalog_user = "strata_catalog"         # password: STRATA_CATALOG_PASSWORD only
/// catalog_databases = ["app"]
/// catalog_refresh_ms = 30000
/// invalidation = "catalog"                # or "everything", "sql-text"
/// custom_settings = ["app.tenant"]        # always part of session keys
/// replication_user = "strata_wal"         # password: STRATA_REPLICATION_PASSWORD only
/// replication_database = "app"
/// wal_lag_bound_ms = 1000
/// wal_ddl_trigger = true                  # install the DDL event trigger (needs superuser)
/// admin_users = ["admin"]                 # may open the admin console: psql -d strata
/// admin_auth_database = "postgres"        # where an admin's password is checked
/// tls_cert = "server.crt"                 # client TLS (with tls_key); SIGHUP reloads them
/// tls_key = "server.key"
/// tls_client_ca = "clients-ca.crt"        # clients must present a certificate from this CA
/// tls_require = false                     # refuse TCP clients without TLS
/// unix_socket_dir = "/var/run/strata"     # also listen on .s.PGSQL.<port> there
/// upstream_sslmode = "prefer"             # disable | prefer | require | verify-ca | verify-full
/// upstream_sslrootcert = "root.crt"       # or "system"
///
/// [pool]    # transaction pooling; without this table each client has its own server connection
/// mode = "transaction"                    # or "session" (the default)
/// size = 20                               # server connections per database, user, parameters
/// timeout_ms = 60000                      # a request waits this long for one (then 53300)
/// auth_type = "scram-sha-256"             # or "md5", "trust" (local use only)
/// auth_file = "userlist.txt"              # "user" "password" lines, as PgBouncer's
///
/// [cache]   # handed to the query cache's own configuration
/// key_level = true                        # key-level invalidation (--key-level)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `postgres://host:port` of the upstream server.
    pub upstream: Option<String>,
    /// Client listen address.
    pub listen: Option<String>,
    /// HTTP address for `/health` and `/metrics`; `""` disables it.
    pub http: Option<String>,
    /// Redis URL of the shared L2.
    pub redis: Option<String>,
    /// URLs of some nodes of the Redis Cluster holding the shared L2 (instead of `redis`).
    pub redis_cluster: Option<Vec<String>>,
    /// Log filter (`tracing_subscriber::EnvFilter` syntax).
    pub log: Option<String>,
    /// Largest client message accepted.
    pub max_message_bytes: Option<u64>,
    /// Largest response recorded for the cache.
    pub max_result_bytes: Option<u64>,
    /// Upstream connect timeout in milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// Shutdown grace period in milliseconds.
    pub shutdown_grace_ms: Option<u64>,
    /// How long a session whose client left keeps reading answers of requests still running, in
    /// milliseconds (default 30000).
    pub drain_timeout_ms: Option<u64>,
    /// The most bytes all sessions may hold in responses being recorded (default 256 MiB).
    pub max_recording_bytes: Option<u64>,
    /// How writes become invalidations: `"everything"`, `"sql-text"` or `"catalog"` (default:
    /// `"catalog"` with a `catalog_user`, else `"everything"`).
    pub invalidation: Option<String>,
    /// The role the proxy reads the upstream's catalog as (its password only from the
    /// environment, `STRATA_CATALOG_PASSWORD`).
    pub catalog_user: Option<String>,
    /// Databases whose catalog is read at startup (others when a client first uses them).
    pub catalog_databases: Option<Vec<String>>,
    /// Period of the catalog refresh in milliseconds (default 30000).
    pub catalog_refresh_ms: Option<u64>,
    /// Custom settings (`app.tenant`) every session's key includes, beyond those Strata learns
    /// from SQL texts, role and database defaults and the catalog.
    pub custom_settings: Option<Vec<String>>,
    /// The role that streams the upstream's WAL to invalidate on writes that bypass the proxy
    /// (its password only from the environment, `STRATA_REPLICATION_PASSWORD`).
    pub replication_user: Option<String>,
    /// The database whose WAL is followed.
    pub replication_database: Option<String>,
    /// How far behind the WAL may be before the cache is bypassed, in milliseconds (default 1000).
    pub wal_lag_bound_ms: Option<u64>,
    /// Whether to install the event trigger that reports DDL through the WAL (default true).
    pub wal_ddl_trigger: Option<bool>,
    /// Users who may open the admin console (`psql -d strata`); none turns it off.
    pub admin_users: Option<Vec<String>>,
    /// The database an admin's login is checked on (default `postgres`).
    pub admin_auth_database: Option<String>,
    /// Client TLS certificate chain (PEM, leaf first).
    pub tls_cert: Option<PathBuf>,
    /// Client TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Roots client certificates must chain to; none asks for no client certificate.
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TCP clients without TLS (default false).
    pub tls_require: Option<bool>,
    /// Directory of the Unix socket `.s.PGSQL.<port>` to listen on.
    pub unix_socket_dir: Option<PathBuf>,
    /// Upstream TLS as libpq's sslmode (default `"prefer"`).
    pub upstream_sslmode: Option<String>,
    /// Roots (PEM) for upstream `verify-ca`/`verify-full`, or `"system"`.
    pub upstream_sslrootcert: Option<PathBuf>,
    /// Transaction pooling (`[pool]`; session mode without it).
    pub pool: Option<PoolFileConfig>,
    /// The query cache's settings, passed through to it.
    pub cache: Option<toml::Table>,
    /// The semantic tier (off without this table or `--semantic-model`).
    pub semantic: Option<SemanticFileConfig>,
}

/// The `[semantic]` table: the semantic tier's embedder and limits. Which reads go through it is
/// the `semantic` hint, or `semantic = true` for a table under `[cache.tables.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticFileConfig {
    /// `"minilm"` (all-MiniLM-L6-v2 in-process from `model_dir`), `"ngrams"` or `"http"`.
    /// Default: `"minilm"` with a `model_dir`, else `"ngrams"`.
    pub embedder: Option<String>,
    /// The directory of `config.json`, `tokenizer.json` and `model.safetensors`.
    pub model_dir: Option<PathBuf>,
    /// The embeddings service's URL (`"http"`).
    pub url: Option<String>,
    /// `"openai"` or `"ollama"` (`"http"`; default `"openai"`).
    pub api: Option<String>,
    /// The model name sent to the service (`"http"`).
    pub model: Option<String>,
    /// The length of the service's vectors (`"http"`).
    pub dimension: Option<usize>,
    /// The environment variable holding the service's API key (never the key itself).
    pub api_key_env: Option<String>,
    /// The similarity above which a stored question's result may answer (default 0.80).
    pub threshold: Option<f32>,
    /// Most entries held (default 100000).
    pub max_entries: Option<usize>,
    /// Most bytes held (default 256 MiB).
    pub max_bytes: Option<u64>,
    /// How long a lookup waits for the embedder before it is a miss, in ms (default 200).
    pub embed_deadline_ms: Option<u64>,
}

/// The `[pool]` table: how clients get server connections.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFileConfig {
    /// `"session"` (default) or `"transaction"`.
    pub mode: Option<String>,
    /// Server connections per pool at most (default 20).
    pub size: Option<usize>,
    /// Idle server connections kept per pool (default 0).
    pub min_idle: Option<usize>,
    /// How long a request waits for a server connection, in ms (default 60000).
    pub timeout_ms: Option<u64>,
    /// Clients connected at most (default 10000).
    pub max_client_conn: Option<usize>,
    /// Idle server connections unused this long close, in ms (default 600000).
    pub server_idle_timeout_ms: Option<u64>,
    /// Server connections this old close when next idle, in ms (default 3600000).
    pub server_lifetime_ms: Option<u64>,
    /// `"scram-sha-256"` (default), `"md5"` or `"trust"` (local use only).
    pub auth_type: Option<String>,
    /// Users and passwords, PgBouncer's userlist.txt format.
    pub auth_file: Option<PathBuf>,
    /// Protocol-level prepared statements kept per server connection (default 200).
    pub max_prepared_statements: Option<usize>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}", path.display())).with_source(e)
        })?;
        Self::parse(&text)
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::config(format!("invalid config file: {e}")).with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let ok =
            |u: &str| Upstream::parse(u).map(|x| x.to_string()).unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(ok("postgres://127.0.0.1:5433/db"), "127.0.0.1:5433");
        assert_eq!(ok("postgresql://u:p@host/db?sslmode=disable"), "host:5432");
        assert_eq!(ok("postgres://u:p@w@host:1"), "host:1");
        assert_eq!(ok("postgres://[::1]:7/x"), "[::1]:7");
        assert!(ok("mysql://x").starts_with("error"));
        assert!(ok("postgres://:5432").starts_with("error"));
        assert!(ok("postgres://h:99999").starts_with("error"));
        // Socket directories, as libpq takes them.
        assert_eq!(ok("/var/run/postgresql"), "/var/run/postgresql/.s.PGSQL.5432");
        assert_eq!(ok("postgres://%2Ftmp%2Fpg:5433/db"), "/tmp/pg/.s.PGSQL.5433");
        assert_eq!(ok("postgresql:///db?host=/tmp/pg&port=6000"), "/tmp/pg/.s.PGSQL.6000");
        assert_eq!(ok("postgres://h:1/db?port=2"), "h:2");
        assert!(ok("postgres://%2/db").starts_with("error"));
    }

    /// `strata.example.toml` claims to set each option to its default: the proxy built from it
    /// must equal the one built from no file. The destructuring names every field, so a new
    /// setting of the builder does not compile here until it is compared (or said not to be).
    #[test]
    fn the_example_file_states_the_proxy_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../strata.example.toml");
        let resolve = |config| {
            crate::Args { config, ..crate::Args::default() }.resolve().unwrap_or_else(|e| panic!("{e}"))
        };
        let settings = |b: ProxyBuilder| {
            let ProxyBuilder {
                upstream,
                listen,
                http,
                redis,
                redis_cluster,
                max_message_bytes,
                max_result_bytes,
                connect_timeout,
                startup_timeout,
                shutdown_grace,
                drain_timeout,
                max_recording_bytes,
                admin_users,
                admin_auth_database,
                tls_cert,
                tls_key,
                tls_client_ca,
                tls_required,
                unix_socket_dir,
                upstream_sslmode,
                upstream_sslrootcert,
                pool,
                // Not file options: the binary plugs in the cache and the cache's registry, and
                // the file's own path; session threads come from --worker-threads only.
                session_threads: _,
                cache: _,
                registry: _,
                config_file: _,
            } = b;
            (
                (upstream, listen, http, redis, redis_cluster, admin_users, admin_auth_database),
                (max_message_bytes, max_result_bytes, max_recording_bytes),
                (connect_timeout, startup_timeout, shutdown_grace, drain_timeout),
                (tls_cert, tls_key, tls_client_ca, tls_required, unix_socket_dir),
                (upstream_sslmode, upstream_sslrootcert, pool),
            )
        };
        let (from_file, file_log) = resolve(Some(example));
        let (builtin, builtin_log) = resolve(None);
        assert_eq!(settings(from_file), settings(builtin));
        assert_eq!(file_log, builtin_log);
    }

    #[test]
    fn file_config_rejects_unknown_keys() {
        assert!(FileConfig::parse("listen = \"127.0.0.1:1\"\n[cache]\nttl = 3\n").is_ok());
        assert!(FileConfig::parse("lisen = 1").is_err());
    }
}
