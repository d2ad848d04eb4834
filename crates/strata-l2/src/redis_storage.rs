//! `RedisStorage`: standalone Redis (multiplexed, auto-reconnecting) or Redis Cluster, with native expiry under a key prefix.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue};
use strata_core::PutOutcome;

use crate::slots::{slot_of, Topology};
use crate::{Error, ErrorKind, NodeId, Storage};

/// Where the Redis data lives.
#[derive(Clone)]
enum Target {
    Standalone(String),
    Cluster(Vec<String>),
}

/// Builds a [`RedisStorage`]. Every setter documents its default.
#[derive(Clone)]
pub struct RedisStorageBuilder {
    target: Target,
    key_prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    reconnect_max_delay: Duration,
    topology_refresh_interval: Duration,
}

impl fmt::Debug for RedisStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorageBuilder")
            .field("target", &TargetDebug(&self.target))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("topology_refresh_interval", &self.topology_refresh_interval)
            .finish()
    }
}

struct TargetDebug<'a>(&'a Target);

impl fmt::Debug for TargetDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Target::Standalone(url) => f.debug_tuple("Standalone").field(&redact(url)).finish(),
            Target::Cluster(nodes) => {
                f.debug_tuple("Cluster").field(&nodes.iter().map(|n| redact(n)).collect::<Vec<_>>()).finish()
            }
        }
    }
}

/// The URL with any password replaced by `***`, for logs and `Debug`.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{}{}{}", &url[..scheme_end], shown, &rest[at..])
        }
        None => url.to_owned(),
    }
}

impl RedisStorageBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            key_prefix: "strata:l2:".to_owned(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(2),
            reconnect_max_delay: Duration::from_millis(500),
            topology_refresh_interval: Duration::from_secs(5),
        }
    }

    /// The prefix of every key this storage writes, so several deployments can share one Redis;
    /// [`clear`](Storage::clear) removes only keys under it. Default: `strata:l2:`.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one connection attempt may take. Default: 500 ms.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the connection waits for an answer before it gives up on the connection and
    /// reconnects (the tier's own, much shorter, deadline already bounds callers). Default: 2 s.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The longest pause between reconnection attempts while Redis is down. Default: 500 ms.
    #[must_use]
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay;
        self
    }

    /// Redis Cluster only: how often the storage reloads which primary serves which slot
    /// (`CLUSTER SLOTS`), which the tier uses to keep one circuit breaker per node. Failed calls
    /// also trigger a reload (at most one per 100 ms). Default: 5 s.
    #[must_use]
    pub fn with_topology_refresh_interval(mut self, interval: Duration) -> Self {
        self.topology_refresh_interval = interval;
        self
    }

    /// Builds the storage without waiting for Redis: the connection is made in the background and
    /// on first use, so a Redis that is down at start-up gives misses, not a failed start.
    ///
    /// Must be called inside a tokio runtime. Fails on an invalid URL, an empty prefix or
    /// node list, or when called outside a runtime.
    pub fn build(self) -> Result<RedisStorage, Error> {
        if self.key_prefix.is_empty() {
            return Err(Error::config("l2 redis key prefix must not be empty"));
        }
        if self.connect_timeout.is_zero()
            || self.response_timeout.is_zero()
            || self.topology_refresh_interval.is_zero()
        {
            return Err(Error::config("l2 redis timeouts and intervals must be above zero"));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config("l2 redis storage must be built inside a tokio runtime"));
        }
        let mut topology = None;
        let conn = match &self.target {
            Target::Standalone(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    Error::config(format!("invalid l2 redis url {}", redact(url))).with_source(e)
                })?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(self.reconnect_max_delay)
                    .set_number_of_retries(2);
                let manager = ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| Error::config("l2 redis connection manager").with_source(e))?;
                Conn::Standalone(manager)
            }
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(Error::config("l2 redis cluster needs at least one node url"));
                }
                let client = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(u64::try_from(self.reconnect_max_delay.as_millis()).unwrap_or(u64::MAX))
                    .build()
                    .map_err(|e| Error::config("invalid l2 redis cluster node urls").with_source(e))?;
                let conn =
                    client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new());
                topology = Some(Topology::start(
                    conn.clone(),
                    self.topology_refresh_interval,
                    self.connect_timeout + self.response_timeout,
                ));
                Conn::Cluster(conn)
            }
        };
        Ok(RedisStorage { conn, key_prefix: self.key_prefix, target: self.target, topology })
    }
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis backend, for results shared by several processes or machines.
///
/// Standalone Redis uses one multiplexed connection that reconnects by itself (a URL such as
/// `redis://:password@host:6379/2` selects the password and database; `rediss://` needs the `tls`
/// feature). Redis Cluster routes each key to its slot's node, and the storage tells the tier
/// which node that is ([`Storage::node_of`]) so one dead node only loses its own keys. Values are written with
/// `SET key value PX ttl`, so Redis expires them natively, under a key prefix.
pub struct RedisStorage {
    conn: Conn,
    key_prefix: String,
    target: Target,
    /// Cluster only: which primary serves which slot.
    topology: Option<Topology>,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("target", &TargetDebug(&self.target))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

fn redis_error(what: &'static str, err: redis::RedisError) -> Error {
    Error::new(classify(&err), what).with_source(err)
}

/// A reply error from a live server (out of memory, read-only, no permission, ...) is a
/// refusal; errors that mean the server or the cluster cannot serve (I/O, timeouts, `LOADING`,
/// `CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`, redirections that could not be followed) are unavailability.
fn classify(err: &redis::RedisError) -> ErrorKind {
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    let from_server = matches!(err.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Extension);
    let unavailable_codes = ["LOADING", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "MOVED", "ASK"];
    match err.code() {
        Some(code) if from_server && !unavailable_codes.contains(&code) => ErrorKind::Rejected,
        _ => ErrorKind::Unavailable,
    }
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStorage {
    /// Starts building a storage on one Redis server, given its URL
    /// (`redis://[user][:password@]host[:port][/db]`).
    pub fn standalone(url: impl Into<String>) -> RedisStorageBuilder {
        RedisStorageBuilder::new(Target::Standalone(url.into()))
    }

    /// Starts building a storage on a Redis Cluster, given the URLs of some of its nodes.
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<String>>) -> RedisStorageBuilder {
        RedisStorageBuilder::new(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// The prefix of every key this storage writes.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The full Redis key for a tier key.
    pub fn redis_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.key_prefix.len() + key.len());
        full.push_str(&self.key_prefix);
        full.push_str(key);
        full
    }

    async fn query<T: FromRedisValue>(&self, what: &'static str, cmd: &Cmd) -> Result<T, Error> {
        let result = match &self.conn {
            Conn::Standalone(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        };
        result.map_err(|e| {
            let err = redis_error(what, e);
            if let (Some(topology), ErrorKind::Unavailable | ErrorKind::Timeout) =
                (&self.topology, err.kind())
            {
                // A node down, a failover or a redirection that could not be followed: the
                // slot map may have changed.
                topology.request_refresh();
            }
            err
        })
    }

    /// Deletes every key under the prefix on one server (standalone) or one node (cluster).
    async fn clear_node(&self, node: Option<(String, u16)>) -> Result<(), Error> {
        let pattern = format!("{}*", glob_escape(&self.key_prefix));
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<Vec<u8>>) = match (&self.conn, &node) {
                (Conn::Cluster(c), Some((host, port))) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let value = c
                        .clone()
                        .route_command(scan, routing)
                        .await
                        .map_err(|e| redis_error("redis scan failed", e))?;
                    FromRedisValue::from_redis_value(value).map_err(|e| {
                        Error::new(ErrorKind::Unavailable, "unexpected redis scan reply").with_source(e)
                    })?
                }
                _ => self.query("redis scan failed", &scan).await?,
            };
            // One UNLINK per key: in a cluster the keys of one batch live in many slots.
            for key in keys {
                self.query::<()>("redis unlink failed", redis::cmd("UNLINK").arg(key)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// The `host:port` of every primary in a `CLUSTER NODES` reply that is not marked failed.
fn cluster_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _id = fields.next()?;
            let addr = fields.next()?;
            let flags = fields.next()?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let host_port = addr.split('@').next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[async_trait]
impl Storage for RedisStorage {
    fn name(&self) -> &str {
        match self.conn {
            Conn::Standalone(_) => "redis",
            Conn::Cluster(_) => "redis-cluster",
        }
    }

    fn node_of(&self, key: &str) -> Option<NodeId> {
        let topology = self.topology.as_ref()?;
        // A hash tag may span the prefix and the key, so the slot is the full key's; the full key
        // is built on the stack for usual lengths.
        let mut buf = [0u8; 128];
        let len = self.key_prefix.len() + key.len();
        let slot = match buf.get_mut(..len) {
            Some(full) => {
                full[..self.key_prefix.len()].copy_from_slice(self.key_prefix.as_bytes());
                full[self.key_prefix.len()..].copy_from_slice(key.as_bytes());
                slot_of(full)
            }
            None => slot_of(self.redis_key(key).as_bytes()),
        };
        topology.node_of_slot(slot)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.query("redis get failed", redis::cmd("GET").arg(self.redis_key(key))).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.redis_key(key));
        }
        let found: Vec<Option<Bytes>> = self.query("redis mget failed", &cmd).await?;
        if found.len() != keys.len() {
            return Err(Error::new(ErrorKind::Unavailable, "redis mget returned a wrong number of values"));
        }
        Ok(found)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<PutOutcome, Error> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key)).arg(value.as_ref()).arg("PX").arg(millis);
        self.query::<()>("redis set failed", &cmd).await?;
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.query::<()>("redis unlink failed", redis::cmd("UNLINK").arg(self.redis_key(key))).await
    }

    async fn clear(&self) -> Result<(), Error> {
        match &self.conn {
            Conn::Standalone(_) => self.clear_node(None).await,
            Conn::Cluster(c) => {
                let nodes = c
                    .clone()
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await
                    .map_err(|e| redis_error("redis cluster nodes failed", e))?;
                let nodes: String = FromRedisValue::from_redis_value(nodes).map_err(|e| {
                    Error::new(ErrorKind::Unavailable, "unexpected cluster nodes reply").with_source(e)
                })?;
                for node in cluster_primaries(&nodes) {
                    self.clear_node(Some(node)).await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_has_no_nodes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let _guard = rt.enter();
        let storage =
            RedisStorage::standalone("redis://127.0.0.1:1/").build().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(storage.node_of("abc"), None);
    }

    #[test]
    fn urls_are_redacted_and_globs_escaped() {
        assert_eq!(redact("redis://:s3cret@host:6379/2"), "redis://:***@host:6379/2");
        assert_eq!(redact("redis://user:s3cret@host/0"), "redis://user:***@host/0");
        assert_eq!(redact("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn cluster_nodes_reply_yields_live_primaries() {
        let reply = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected";
        assert_eq!(
            cluster_primaries(reply),
            vec![("127.0.0.1".to_owned(), 7000), ("127.0.0.1".to_owned(), 7002)]
        );
    }
}
