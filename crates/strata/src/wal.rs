//! Invalidation from PostgreSQL's write-ahead log, for writes that bypass the proxy: pgoutput's
//! logical replication messages decoded into the relations and replica-identity keys they touch.
//!
//! [`WalInvalidator`] runs one background task per process. It follows one database through a
//! temporary logical replication slot and a publication (created with
//! `publish_via_partition_root` when missing, and kept holding every table with a replica
//! identity), and at each commit invalidates the tables the transaction wrote.
//!
//! See [`WalInvalidator`] for the health gate and for what happens when it cannot run.

use std::fmt;
use std::time::Duration;

use strata_normalizer::WriteEffect;
use tokio::task::JoinHandle;

use crate::keys::WrittenKeys;
use crate::{Error, QueryCache, SessionCache};

#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "commit timestamps and truncate options are decoded for completeness, not used"
    )
)]
mod decode;

mod lease;
mod stream;
mod transaction;

use stream::Runner;

/// The publication used when none is configured.
pub(crate) const DEFAULT_PUBLICATION: &str = "strata_invalidation";
/// The prefix of the logical messages that carry heartbeats.
const HEARTBEAT_PREFIX: &str = "strata_hb";
/// The prefix of the logical messages the DDL event trigger emits.
const DDL_PREFIX: &str = "strata_ddl";
/// First retry delay after a failed attempt; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// At most one warning about the same failure in this period.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Keys kept per table and transaction; beyond, the table counts as written table-wide.
const MAX_KEYS_PER_TABLE: usize = 256;

/// How to follow PostgreSQL's write-ahead log: a replication connection and a side connection of
/// Strata's own, as a role with `REPLICATION` (and, to create the publication, superuser).
#[derive(Clone)]
pub struct WalConfig {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
    publication: String,
    slot_prefix: String,
    application_name: String,
    lag_bound: Duration,
    heartbeat_interval: Duration,
    connect_timeout: Duration,
    lease: Option<LeaseConfig>,
    ddl_trigger: bool,
}

/// Where a fleet of processes elects the one invalidator of an upstream.
#[derive(Clone)]
pub(crate) struct LeaseConfig {
    pub(crate) target: crate::redis_conn::RedisTarget,
    pub(crate) prefix: String,
    pub(crate) ttl: Duration,
}

impl WalConfig {
    /// Starts configuring the invalidator.
    pub fn builder() -> WalConfigBuilder {
        WalConfigBuilder::default()
    }

    /// The database whose writes are followed.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The publication streamed.
    pub fn publication(&self) -> &str {
        &self.publication
    }

    /// The `application_name` of both connections (how `pg_stat_replication` shows the stream).
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// The largest heartbeat delay under which the cache still answers.
    pub fn lag_bound(&self) -> Duration {
        self.lag_bound
    }

    /// The period of the heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Whether one invalidator per upstream is elected through a lease in Redis.
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// The lease's key: one per upstream server and database.
    pub(crate) fn lease_key(&self, prefix: &str) -> String {
        format!("{prefix}wal:lease:{}:{}/{}", self.host, self.port, self.database)
    }

    /// The key of the fleet's stream health, written by the lease holder.
    pub(crate) fn health_key(&self, prefix: &str) -> String {
        format!("{prefix}wal:health:{}:{}/{}", self.host, self.port, self.database)
    }
}

impl fmt::Debug for WalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is never shown, only whether there is one.
        f.debug_struct("WalConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("database", &self.database)
            .field("publication", &self.publication)
            .field("slot_prefix", &self.slot_prefix)
            .field("application_name", &self.application_name)
            .field("lag_bound", &self.lag_bound)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease", &self.lease.as_ref().map(|l| (&l.prefix, l.ttl)))
            .field("ddl_trigger", &self.ddl_trigger)
            .finish()
    }
}

/// Builds a [`WalConfig`].
#[derive(Default)]
pub struct WalConfigBuilder {
    upstream: Option<(String, u16)>,
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
    publication: Option<String>,
    slot_prefix: Option<String>,
    application_name: Option<String>,
    lag_bound: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    connect_timeout: Option<Duration>,
    lease: Option<(crate::redis_conn::RedisTarget, String)>,
    lease_ttl: Option<Duration>,
    ddl_trigger: Option<bool>,
}

impl fmt::Debug for WalConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalConfigBuilder")
            .field("upstream", &self.upstream)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("database", &self.database)
            .field("publication", &self.publication)
            .field("slot_prefix", &self.slot_prefix)
            .field("application_name", &self.application_name)
            .field("lag_bound", &self.lag_bound)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease", &self.lease.as_ref().map(|(_, prefix)| prefix))
            .field("lease_ttl", &self.lease_ttl)
            .field("ddl_trigger", &self.ddl_trigger)
            .finish()
    }
}

/// Whether a name is safe as a slot or publication name written unquoted: lowercase ASCII
/// letters, digits and underscores (what replication slot names allow).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl WalConfigBuilder {
    /// The upstream server's host and port. Required.
    pub fn with_upstream(mut self, host: impl Into<String>, port: u16) -> Self {
        self.upstream = Some((host.into(), port));
        self
    }

    /// The role to stream as; it needs `LOGIN` and `REPLICATION` (and a `pg_hba.conf` line
    /// allowing it to connect to the database), and superuser to create the publication when it
    /// does not exist. Required.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The role's password. Default: none (trust or peer authentication).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database whose writes are followed. Required.
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// The publication to stream; created `WITH (publish_via_partition_root = true)` and marked
    /// as Strata's when missing. Strata keeps a publication it marked holding every permanent
    /// user table with a replica identity (a primary key, `REPLICA IDENTITY FULL` or `USING
    /// INDEX`), not `FOR ALL TABLES`, since PostgreSQL refuses UPDATE and DELETE on a published
    /// table without one; a publication it did not create is used as it is. Tables outside it
    /// are never cached. Lowercase letters, digits and underscores. Default
    /// `strata_invalidation`.
    pub fn with_publication(mut self, publication: impl Into<String>) -> Self {
        self.publication = Some(publication.into());
        self
    }

    /// The start of each temporary slot's name (a unique suffix follows). Lowercase letters,
    /// digits and underscores, at most 24 bytes. Default `strata`.
    pub fn with_slot_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.slot_prefix = Some(prefix.into());
        self
    }

    /// The `application_name` of the replication and side connections. Default
    /// `strata-invalidator`.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// The largest heartbeat delay under which the cache still answers; above it every lookup
    /// bypasses. Default 1 s.
    pub fn with_lag_bound(mut self, bound: Duration) -> Self {
        self.lag_bound = Some(bound);
        self
    }

    /// The period of the heartbeat; less than the lag bound. Default 250 ms.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// The timeout of connecting, of each replication command and of each heartbeat. Default 5 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Shares one invalidator per upstream between every process configured with the same Redis
    /// and prefix (the Redis whose table versions they share): a lease in Redis elects the one
    /// that streams; the others follow the health it publishes (their lookups bypass while it
    /// lags or while none streams) and one of them takes over within the lease's TTL when the
    /// holder dies. Default: none, every process streams for itself.
    pub fn with_redis_lease(mut self, url: impl Into<String>, prefix: impl Into<String>) -> Self {
        self.lease = Some((crate::redis_conn::RedisTarget::Node(url.into()), prefix.into()));
        self
    }

    /// [`with_redis_lease`](Self::with_redis_lease) on a Redis Cluster, given the URLs of some
    /// of its nodes.
    pub fn with_redis_cluster_lease(
        mut self,
        nodes: impl IntoIterator<Item = impl Into<String>>,
        prefix: impl Into<String>,
    ) -> Self {
        let nodes = nodes.into_iter().map(Into::into).collect();
        self.lease = Some((crate::redis_conn::RedisTarget::Cluster(nodes), prefix.into()));
        self
    }

    /// How long a lease lives unless its holder renews it (every third of it): the longest a
    /// dead holder delays the takeover. Default 3 s.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// Whether to install (when missing, which needs superuser) the event trigger that reports
    /// every committed DDL statement through the WAL, so that every process reads its catalog
    /// again at once and materialized view refreshes invalidate. Without it, DDL made directly on
    /// PostgreSQL reaches the catalog map at its next periodic read, and materialized views are
    /// never cached. Default true.
    pub fn with_ddl_trigger(mut self, install: bool) -> Self {
        self.ddl_trigger = Some(install);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<WalConfig, Error> {
        let (host, port) =
            self.upstream.ok_or_else(|| Error::config("the WAL invalidator needs an upstream host"))?;
        if host.is_empty() {
            return Err(Error::config("the WAL invalidator's upstream host is empty"));
        }
        let user = self
            .user
            .filter(|u| !u.is_empty() && !u.contains('\0'))
            .ok_or_else(|| Error::config("the WAL invalidator's user is empty"))?;
        let database = self
            .database
            .filter(|d| !d.is_empty() && !d.contains('\0'))
            .ok_or_else(|| Error::config("the WAL invalidator's database is empty"))?;
        let publication = self.publication.unwrap_or_else(|| DEFAULT_PUBLICATION.to_owned());
        if !is_plain_name(&publication) || publication.len() > 63 {
            return Err(Error::config(format!(
                "bad WAL publication name {publication:?}: use lowercase letters, digits and underscores"
            )));
        }
        let slot_prefix = self.slot_prefix.unwrap_or_else(|| "strata".to_owned());
        if !is_plain_name(&slot_prefix) || slot_prefix.len() > 24 {
            return Err(Error::config(format!(
                "bad WAL slot prefix {slot_prefix:?}: use at most 24 lowercase letters, digits and underscores"
            )));
        }
        let application_name = self.application_name.unwrap_or_else(|| "strata-invalidator".to_owned());
        if application_name.contains('\0') {
            return Err(Error::config("the WAL application name contains NUL"));
        }
        let lag_bound = self.lag_bound.unwrap_or(Duration::from_secs(1));
        let heartbeat_interval = self.heartbeat_interval.unwrap_or(Duration::from_millis(250));
        if heartbeat_interval < Duration::from_millis(10) {
            return Err(Error::config("the WAL heartbeat interval must be at least 10 ms"));
        }
        if lag_bound <= heartbeat_interval {
            return Err(Error::config("the WAL lag bound must be longer than the heartbeat interval"));
        }
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(5));
        if connect_timeout.is_zero() {
            return Err(Error::config("the WAL connect timeout must be positive"));
        }
        let lease_ttl = self.lease_ttl.unwrap_or(Duration::from_secs(3));
        if lease_ttl < Duration::from_millis(300) {
            return Err(Error::config("the WAL lease TTL must be at least 300 ms"));
        }
        let lease = match self.lease {
            None => None,
            Some((target, prefix)) => {
                if prefix.is_empty() {
                    return Err(Error::config("the WAL lease prefix is empty"));
                }
                if target.urls().is_empty() {
                    return Err(Error::config("the WAL lease needs at least one redis cluster node url"));
                }
                for url in target.urls() {
                    redis::Client::open(url.as_str())
                        .map_err(|e| Error::config(format!("invalid redis url for the WAL lease: {e}")))?;
                }
                Some(LeaseConfig { target, prefix, ttl: lease_ttl })
            }
        };
        Ok(WalConfig {
            host,
            port,
            user,
            password: self.password,
            database,
            publication,
            slot_prefix,
            application_name,
            lag_bound,
            heartbeat_interval,
            connect_timeout,
            lease,
            ddl_trigger: self.ddl_trigger.unwrap_or(true),
        })
    }
}

/// The running invalidator: a background task following the WAL into a [`QueryCache`].
/// Dropping it stops the task and detaches it (the cache then behaves as without one).
///
/// # Health gate
/// While an attached invalidator cannot vouch for the versions, every lookup of its cache
/// bypasses ([`BypassReason::WalUnavailable`](crate::BypassReason::WalUnavailable)):
/// - before its first stream is up (at most one connection attempt);
/// - after a stream that was up broke, until a new one is up and everything was invalidated
///   (a temporary slot loses what committed while nothing streamed);
/// - while its heartbeat lags behind [`WalConfig::lag_bound`]: a heartbeat arrived late, or none
///   arrived for longer than the bound plus the heartbeat interval.
///
/// Fills taken before the gate closed may still be stored: a recovering stream bumps every
/// version before the gate reopens, so they can never be served. A lagging stream needs no bump:
/// its changes still arrive and bump what they wrote.
///
/// # When it cannot run at all
/// Without `wal_level = logical`, without the `REPLICATION` privilege, without a free slot or
/// sender, or without the publication (creating one needs a superuser), the invalidator logs a
/// warning saying what to change and keeps retrying with backoff. Until a stream has been up
/// once, the gate stays **open**: the cache works as it does without an invalidator (writes
/// through Strata invalidate; direct writes are seen only through TTLs), and
/// `strata_wal_stream_up` stays 0. Closing the gate would turn a configuration gap into a cache
/// that never answers. Once a stream has been up, a broken stream closes the gate until it is
/// back.
///
/// # Example
/// ```no_run
/// use strata::{QueryCache, WalConfig, WalInvalidator};
///
/// # async fn run() -> Result<(), strata::Error> {
/// let cache = QueryCache::builder().build()?;
/// let config = WalConfig::builder()
///     .with_upstream("db.internal", 5432)
///     .with_user("strata_wal")
///     .with_database("app")
///     .build()?;
/// // Follows the WAL for as long as it lives.
/// let invalidator = WalInvalidator::start(config, cache.clone())?;
/// # drop(invalidator);
/// # Ok(())
/// # }
/// ```
pub struct WalInvalidator {
    config: WalConfig,
    cache: QueryCache,
    /// Its id in the cache's gate.
    id: u64,
    task: JoinHandle<()>,
}

impl fmt::Debug for WalInvalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalInvalidator").field("config", &self.config).finish()
    }
}

impl Drop for WalInvalidator {
    fn drop(&mut self) {
        self.task.abort();
        self.cache.shared.metrics.wal.detach(self.id);
        self.cache.set_unstreamed(std::collections::HashSet::new());
    }
}

/// Where committed changes go.
#[derive(Clone)]
pub(crate) enum Target {
    /// Straight into the cache, expanded through its relations.
    Cache(QueryCache),
    /// Through the session cache's invalidation mode.
    Sessions(SessionCache),
}

impl Target {
    pub(crate) fn cache(&self) -> &QueryCache {
        match self {
            Target::Cache(cache) => cache,
            Target::Sessions(sessions) => sessions.query_cache(),
        }
    }

    /// Invalidates what a transaction committed on `database` wrote (`keys`: the changed rows'
    /// keys of the tables the stream gave them for); `schema` when it ran DDL.
    pub(crate) async fn committed(
        &self,
        database: &str,
        effect: WriteEffect,
        keys: &WrittenKeys,
        schema: bool,
    ) -> Result<(), Error> {
        match self {
            Target::Cache(cache) if schema => cache.invalidate(&WriteEffect::Unknown).await,
            Target::Cache(cache) => cache.invalidate_keyed(&effect, keys).await,
            Target::Sessions(sessions) => sessions.wal_committed(database, effect, keys, schema).await,
        }
    }
}

impl WalInvalidator {
    /// Attaches an invalidator to `cache` and starts following the WAL. Needs a Tokio runtime;
    /// one invalidator per cache. Returns at once: lookups bypass until the stream is up, or
    /// until the first attempt fails (see the [type's docs](Self)).
    ///
    /// Each commit invalidates the tables it wrote, expanded through the cache's
    /// [`Relations`](crate::Relations); use [`WalInvalidator::start_for_sessions`] with a
    /// [`SessionCache`] to follow its invalidation mode instead.
    pub fn start(config: WalConfig, cache: QueryCache) -> Result<Self, Error> {
        Self::start_with(config, Target::Cache(cache))
    }

    /// Like [`WalInvalidator::start`], for the query cache of `sessions`, with its invalidation
    /// mode: without a catalog ([`Invalidation::Everything`](crate::Invalidation::Everything)) a
    /// committed write invalidates everything, as a write through Strata does, since only the
    /// catalog shows which views, partitions and inheritance parents read the tables written; with
    /// one, DDL reported by the event trigger makes the catalog follower read the catalog again.
    pub fn start_for_sessions(config: WalConfig, sessions: &SessionCache) -> Result<Self, Error> {
        Self::start_with(config, Target::Sessions(sessions.clone()))
    }

    fn start_with(config: WalConfig, target: Target) -> Result<Self, Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("the WAL invalidator must start inside a tokio runtime"))?;
        let cache = target.cache().clone();
        let (id, gauges) = cache.shared.metrics.wal.attach(cache.registry())?;
        let runner = Runner { config: config.clone(), target, id, gauges };
        let task = handle.spawn(runner.run());
        Ok(Self { config, cache, id, task })
    }

    /// The configuration.
    pub fn config(&self) -> &WalConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests;
