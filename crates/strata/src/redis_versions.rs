//! `RedisVersions`: table versions shared between processes through Redis, mirrored locally.
//!
//! The protocol is documented on [`RedisVersions`], where users of the public API can read it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use strata_core::{async_trait, Error, ErrorKind, TableName, VersionHealth, VersionStore, VersionView};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::redis_conn::{mask_url, RedisConn, RedisTarget};

/// Increments each table (starting from the epoch), increments `seq` and publishes, atomically.
/// KEYS: versions, seq, epoch. ARGV: channel, tables... Returns {epoch, seq, version...}.
const BUMP_SCRIPT: &str = r#"
local function epoch()
  local e = redis.call('GET', KEYS[3])
  if not e then
    local t = redis.call('TIME')
    e = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', KEYS[3], e)
  end
  return e
end
local e = epoch()
local out = {e, 0}
local parts = {}
for i = 2, #ARGV do
  local t = ARGV[i]
  redis.call('HSETNX', KEYS[1], t, e)
  local v = redis.call('HINCRBY', KEYS[1], t, 1)
  out[#out + 1] = v
  parts[#parts + 1] = string.format('%.0f', v) .. ':' .. string.len(t) .. ':' .. t
end
local s = redis.call('INCR', KEYS[2])
out[2] = s
redis.call('PUBLISH', ARGV[1],
  'v1 ' .. e .. ' ' .. string.format('%.0f', s) .. ' ' .. (#ARGV - 1) .. '\n' .. table.concat(parts))
return out
"#;

/// An atomic snapshot. KEYS: versions, seq, epoch. Returns {epoch, seq, {table, version, ...}}.
const SNAPSHOT_SCRIPT: &str = r#"
local function epoch()
  local e = redis.call('GET', KEYS[3])
  if not e then
    local t = redis.call('TIME')
    e = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', KEYS[3], e)
  end
  return e
end
local e = epoch()
local s = redis.call('GET', KEYS[2])
if not s then s = '0' end
return {e, s, redis.call('HGETALL', KEYS[1])}
"#;

/// Defaults, shared by the builder docs and `build`.
const DEFAULT_PREFIX: &str = "strata:";
const DEFAULT_DEADLINE: Duration = Duration::from_millis(500);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
const DEFAULT_GRACE: Duration = Duration::from_secs(1);
const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(50);
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// The longest duration a setting accepts (so that no deadline arithmetic can overflow).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// How often the subscriber thread wakes up to check whether the store was dropped.
const SUBSCRIBER_POLL: Duration = Duration::from_millis(100);

/// Builds a [`RedisVersions`]; see [`RedisVersions::builder`].
#[derive(Clone)]
pub struct RedisVersionsBuilder {
    target: RedisTarget,
    prefix: String,
    deadline: Duration,
    heartbeat: Duration,
    grace: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl fmt::Debug for RedisVersionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisVersionsBuilder")
            .field("target", &self.target.masked())
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .field("heartbeat", &self.heartbeat)
            .field("grace", &self.grace)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl RedisVersionsBuilder {
    /// The prefix of the keys and of the channel (`{prefix}versions`, `{prefix}seq`,
    /// `{prefix}epoch`, `{prefix}invalidations`). Default `strata:`. Every instance that shares
    /// cached results must use the same prefix; unrelated deployments on one Redis use different ones.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The deadline of every Redis call, connecting included. Default 500 ms.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How often the change channel is checked: `seq` in Redis against the last message seen,
    /// and a `PING` on an idle subscription. Default 1 s.
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long `seq` in Redis may stay ahead of the last message seen before the missing messages
    /// count as lost and the mirror resynchronizes. Default 1 s.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The bounds of the exponential backoff between reconnection attempts. Default 50 ms to 2 s.
    #[must_use]
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Validates the configuration, starts the change channel and waits (at most the deadline)
    /// for the first synchronization. A store that is not synchronized yet is returned anyway:
    /// its [`read`](VersionStore::read) says so until it is.
    ///
    /// Redis being down (refusing connections, not answering, rejecting the scripts) is not an
    /// error here: the store starts unsynchronized, connects in the background with the
    /// reconnection backoff, and synchronizes like after any outage. Only an invalid
    /// configuration fails.
    ///
    /// Must be called within a tokio runtime, which runs the change channel task.
    pub async fn build(self) -> Result<RedisVersions, Error> {
        let masked = self.target.masked();
        if self.prefix.is_empty() {
            return Err(Error::new(ErrorKind::Config, "redis versions key prefix is empty"));
        }
        for (name, value) in [
            ("deadline", self.deadline),
            ("heartbeat", self.heartbeat),
            ("grace", self.grace),
            ("reconnect backoff minimum", self.reconnect_min),
        ] {
            if value.is_zero() {
                return Err(Error::new(ErrorKind::Config, format!("redis versions {name} is zero")));
            }
        }
        for (name, value) in [
            ("deadline", self.deadline),
            ("heartbeat", self.heartbeat),
            ("grace", self.grace),
            ("reconnect backoff maximum", self.reconnect_max),
        ] {
            if value > MAX_DURATION {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("redis versions {name} is above {} s", MAX_DURATION.as_secs()),
                ));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(Error::new(
                ErrorKind::Config,
                "redis versions reconnect backoff maximum is below its minimum",
            ));
        }
        if self.target.urls().is_empty() {
            return Err(Error::new(ErrorKind::Config, "redis versions need at least one cluster node url"));
        }
        // One client per node for the subscriber, which may use any node of a cluster.
        let subscribe_to = self
            .target
            .urls()
            .iter()
            .map(|url| {
                redis::Client::open(url.as_str()).map_err(|e| {
                    Error::new(ErrorKind::Config, format!("invalid redis url {}", mask_url(url)))
                        .with_source(e)
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Lazy: it connects on first use, so a Redis that is down at start-up delays nothing
        // here. The change channel task is the first user (it loads the scripts).
        let conn = RedisConn::open(&self.target, self.deadline, self.reconnect_min, self.reconnect_max)
            .map_err(|e| {
                Error::new(ErrorKind::Config, format!("invalid redis connection settings for {masked}"))
                    .with_source(e)
            })?;
        let (health_tx, health_rx) = watch::channel(VersionHealth::Unsynchronized);
        // On a cluster the three keys share a slot (the prefix is their hash tag), as the
        // scripts touching them require.
        let keys = Keys {
            versions: self.target.key(&self.prefix, "versions"),
            seq: self.target.key(&self.prefix, "seq"),
            epoch: self.target.key(&self.prefix, "epoch"),
            channel: format!("{}invalidations", self.prefix),
        };
        let shared = Arc::new(Shared {
            config: Config {
                masked_url: masked,
                prefix: self.prefix,
                deadline: self.deadline,
                heartbeat: self.heartbeat,
                grace: self.grace,
                reconnect_min: self.reconnect_min,
                reconnect_max: self.reconnect_max,
            },
            keys,
            subscribe_to,
            next_node: AtomicUsize::new(0),
            conn,
            digests: OnceLock::new(),
            mirror: RwLock::new(Mirror::default()),
            health: health_tx,
            wake: Notify::new(),
            counters: Counters::default(),
        });
        let task = tokio::spawn(run_channel(Arc::clone(&shared)));
        let store = RedisVersions { shared, health: health_rx, task };
        store.wait_for(VersionHealth::Synchronized, store.shared.config.deadline).await;
        Ok(store)
    }
}

/// Table versions shared through Redis, with a local mirror kept current by pub/sub.
///
/// Dropping the store stops its background task and its subscriber thread. Requires a tokio
/// runtime. One Redis node ([`builder`](Self::builder)) or a Redis Cluster
/// ([`cluster_builder`](Self::cluster_builder)).
///
/// # Data in Redis
/// Under a configurable key prefix `P` (default `strata:`):
/// - `{P}versions`: a hash, table name → version;
/// - `{P}seq`: a counter, incremented once by every bump, so every bump has a unique sequence number;
/// - `{P}epoch`: the version of every table absent from the hash. It is Redis' own clock in
///   microseconds (`TIME`) when the first script finds it missing: after Redis loses its data the new
///   epoch is above every version handed out before, so versions keep growing across the loss and a
///   result cached under an old version is never reachable again;
/// - `{P}invalidations`: the pub/sub channel. Every bump publishes
///   `v1 <epoch> <seq> <count>\n` followed by `<version>:<name length in bytes>:<name>` per table.
///
/// A bump is one Lua script (`EVALSHA`, falling back to `EVAL`) that increments each table,
/// increments `seq` and publishes, atomically; its reply carries the new versions, which are applied
/// to the local mirror before [`VersionStore::bump`] returns (read-your-writes in this process).
///
/// # The mirror and its change channel
/// [`VersionStore::read`] is synchronous and reads a local mirror. A background task keeps it current:
/// it subscribes first, then takes an atomic snapshot (`epoch`, `seq`, the hash), max-merges it and
/// remembers `seq` as the last one seen. Each message with the next sequence number is applied; a
/// message past the next one is a gap and forces a new snapshot. A heartbeat compares `seq` in Redis
/// with the last one seen, so a message lost without a gap behind it is found within the heartbeat
/// plus a grace period. While the channel is down, out of sequence, resynchronizing, or a bump from
/// this process has not reached Redis, `read` says [`VersionView::Unsynchronized`]: a lost
/// invalidation never turns into silent staleness.
///
/// The subscription runs on a blocking Redis connection in its own thread (polled with a 100 ms read
/// timeout so it ends soon after the store is dropped, and pinged when idle for a heartbeat);
/// everything else is async on tokio.
///
/// # Version numbers
/// A table never bumped since Redis last lost its data reads as the epoch (Redis' clock in
/// microseconds when the data was first written), not 0: any smaller number could name a version
/// under which results were cached before the loss. Numbers stay below 2^53 (exact in Lua) until
/// about the year 2255.
///
/// # Failures
/// A store built while Redis is down starts unsynchronized: every [`read`](VersionStore::read)
/// says [`VersionView::Unsynchronized`] (the mirror is empty, so it could not vouch for anything),
/// and the change channel keeps trying to connect with the reconnection backoff. Once it reaches
/// Redis it runs the same steps as after any outage: apply the pending bumps, take a snapshot,
/// follow the messages. Versions are current only from then on, and include every bump any
/// instance made before the snapshot.
///
/// Every Redis call has the configured deadline. A bump that fails or times out returns
/// [`ErrorKind::Unavailable`] or [`ErrorKind::Timeout`]; its tables become pending and the store
/// stays unsynchronized until a background retry has applied them to Redis and resynchronized
/// (a bump that timed out after Redis applied it is applied twice: harmless, versions only grow).
/// Bumping locally instead would let another instance's later bump to the same number mask it.
pub struct RedisVersions {
    shared: Arc<Shared>,
    health: watch::Receiver<VersionHealth>,
    task: JoinHandle<()>,
}

/// Counters of a [`RedisVersions`], for metrics and tests; see [`RedisVersions::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VersionStats {
    /// Bump scripts that reached Redis (pending bumps applied later included).
    pub bumps_sent: u64,
    /// Bumps that failed or timed out; their tables became pending.
    pub bump_failures: u64,
    /// Invalidation messages received on the channel (own bumps included).
    pub messages_received: u64,
    /// Messages whose sequence number skipped one: a message was lost before them.
    pub gaps_detected: u64,
    /// Messages found missing by the heartbeat (`seq` in Redis stayed ahead for the grace period).
    pub lost_detected: u64,
    /// Messages that could not be parsed.
    pub malformed_messages: u64,
    /// Snapshots taken (the first one included).
    pub resyncs: u64,
    /// Times the change channel was lost (connection ended, failed or a heartbeat failed).
    pub disconnects: u64,
    /// Times the epoch changed under a synchronized mirror (Redis lost its data).
    pub epoch_changes: u64,
    /// Tables whose bump has not reached Redis yet.
    pub pending_tables: u64,
    /// The last sequence number the mirror is known to be complete up to.
    pub last_seen_seq: u64,
}

impl RedisVersions {
    /// Starts a builder for the Redis at `url` (`redis://[user:password@]host:port/[db]`).
    pub fn builder(url: impl Into<String>) -> RedisVersionsBuilder {
        Self::builder_for(RedisTarget::Node(url.into()))
    }

    /// Starts a builder for a Redis Cluster, given the URLs of some of its nodes. The keys take
    /// the prefix as their hash tag (`{strata:}versions`, unless the prefix has a tag of its
    /// own), so they live in one slot, as the scripts need; the invalidation channel is plain
    /// pub/sub, which the cluster forwards to every node, and the subscriber uses the nodes in turn.
    pub fn cluster_builder(nodes: impl IntoIterator<Item = impl Into<String>>) -> RedisVersionsBuilder {
        Self::builder_for(RedisTarget::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    fn builder_for(target: RedisTarget) -> RedisVersionsBuilder {
        RedisVersionsBuilder {
            target,
            prefix: DEFAULT_PREFIX.to_owned(),
            deadline: DEFAULT_DEADLINE,
            heartbeat: DEFAULT_HEARTBEAT,
            grace: DEFAULT_GRACE,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
        }
    }

    /// Bumps `tables` like [`VersionStore::bump`] and returns their new versions, in the order of
    /// `tables` (a table named twice is bumped once and reported twice).
    pub async fn bump_returning(&self, tables: &[TableName]) -> Result<Vec<u64>, Error> {
        let unique: Vec<TableName> = {
            let mut seen = HashSet::with_capacity(tables.len());
            tables.iter().filter(|t| seen.insert(*t)).cloned().collect()
        };
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        match shared.run_bump(&unique).await {
            Ok(reply) => {
                shared.counters.bumps_sent.fetch_add(1, Ordering::Relaxed);
                let mut mirror = shared.mirror_write();
                let epoch_differs = mirror.epoch != Some(reply.epoch);
                for (table, version) in unique.iter().zip(&reply.versions) {
                    mirror.merge(table.clone(), *version);
                }
                if epoch_differs && mirror.channel_synced {
                    // The bump ran in an epoch the mirror has not seen: Redis lost its data.
                    // Resynchronize before vouching for anything again.
                    mirror.channel_synced = false;
                    shared.publish_health(&mirror);
                    shared.wake.notify_one();
                }
                drop(mirror);
                let by_name: HashMap<&TableName, u64> = unique.iter().zip(reply.versions).collect();
                Ok(tables.iter().map(|t| by_name.get(t).copied().unwrap_or(0)).collect())
            }
            Err(error) => {
                shared.counters.bump_failures.fetch_add(1, Ordering::Relaxed);
                let mut mirror = shared.mirror_write();
                let first = mirror.pending.is_empty();
                mirror.add_pending(&unique);
                shared.publish_health(&mirror);
                drop(mirror);
                shared.wake.notify_one();
                // One warning per outage: further failures while bumps are pending are debug events.
                if first {
                    tracing::warn!(target: "strata::versions", %error, "version bump failed; serving nothing from cache until it is applied");
                } else {
                    tracing::debug!(target: "strata::versions", %error, "version bump failed");
                }
                Err(error)
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> VersionStats {
        let c = &self.shared.counters;
        let mirror = self.shared.mirror_read();
        VersionStats {
            bumps_sent: c.bumps_sent.load(Ordering::Relaxed),
            bump_failures: c.bump_failures.load(Ordering::Relaxed),
            messages_received: c.messages_received.load(Ordering::Relaxed),
            gaps_detected: c.gaps_detected.load(Ordering::Relaxed),
            lost_detected: c.lost_detected.load(Ordering::Relaxed),
            malformed_messages: c.malformed_messages.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            epoch_changes: c.epoch_changes.load(Ordering::Relaxed),
            pending_tables: mirror.pending.len() as u64,
            last_seen_seq: c.last_seen_seq.load(Ordering::Relaxed),
        }
    }

    /// Waits until [`health`](VersionStore::health) is `health`, at most `within`; returns whether
    /// it got there.
    pub async fn wait_for(&self, health: VersionHealth, within: Duration) -> bool {
        let mut rx = self.health.clone();
        let reached = matches!(tokio::time::timeout(within, rx.wait_for(|h| *h == health)).await, Ok(Ok(_)));
        reached
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.config.prefix
    }
}

impl Drop for RedisVersions {
    fn drop(&mut self) {
        // Aborting the task drops its subscriber handle, which stops the subscriber thread.
        self.task.abort();
    }
}

impl fmt::Debug for RedisVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("RedisVersions")
            .field("url", &c.masked_url)
            .field("prefix", &c.prefix)
            .field("deadline", &c.deadline)
            .field("heartbeat", &c.heartbeat)
            .field("grace", &c.grace)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl VersionStore for RedisVersions {
    fn read(&self, tables: &[TableName], out: &mut Vec<u64>) -> VersionView {
        out.clear();
        let mirror = self.shared.mirror_read();
        out.extend(tables.iter().map(|t| mirror.get(t)));
        if mirror.is_synchronized() {
            VersionView::Current
        } else {
            VersionView::Unsynchronized
        }
    }

    async fn bump(&self, tables: &[TableName]) -> Result<(), Error> {
        self.bump_returning(tables).await.map(drop)
    }

    fn health(&self) -> VersionHealth {
        if self.shared.mirror_read().is_synchronized() {
            VersionHealth::Synchronized
        } else {
            VersionHealth::Unsynchronized
        }
    }
}

struct Config {
    masked_url: String,
    prefix: String,
    deadline: Duration,
    heartbeat: Duration,
    grace: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

struct Keys {
    versions: String,
    seq: String,
    epoch: String,
    channel: String,
}

#[derive(Default)]
struct Counters {
    bumps_sent: AtomicU64,
    bump_failures: AtomicU64,
    messages_received: AtomicU64,
    gaps_detected: AtomicU64,
    lost_detected: AtomicU64,
    malformed_messages: AtomicU64,
    resyncs: AtomicU64,
    disconnects: AtomicU64,
    epoch_changes: AtomicU64,
    last_seen_seq: AtomicU64,
}

/// The local mirror. Every version only grows.
#[derive(Default)]
struct Mirror {
    versions: HashMap<TableName, u64>,
    /// The version of a table absent from `versions`: the epoch of the last snapshot.
    floor: u64,
    epoch: Option<u64>,
    /// The change channel is connected, in sequence and past its first snapshot.
    channel_synced: bool,
    /// Tables whose bump failed, with the generation of the failure.
    pending: HashMap<TableName, u64>,
    next_generation: u64,
}

impl Mirror {
    #[inline]
    fn get(&self, table: &TableName) -> u64 {
        self.versions.get(table).map_or(self.floor, |v| (*v).max(self.floor))
    }

    fn merge(&mut self, table: TableName, version: u64) {
        let slot = self.versions.entry(table).or_insert(version);
        *slot = (*slot).max(version);
    }

    fn is_synchronized(&self) -> bool {
        self.channel_synced && self.pending.is_empty()
    }

    fn add_pending(&mut self, tables: &[TableName]) {
        self.next_generation += 1;
        for table in tables {
            self.pending.insert(table.clone(), self.next_generation);
        }
    }
}

struct BumpReply {
    epoch: u64,
    versions: Vec<u64>,
}

struct Snapshot {
    epoch: u64,
    seq: u64,
    versions: Vec<(TableName, u64)>,
}

struct Shared {
    config: Config,
    keys: Keys,
    /// A client per node URL: the subscriber takes them in turn, so a cluster node that is down
    /// costs one attempt.
    subscribe_to: Vec<redis::Client>,
    next_node: AtomicUsize,
    /// Lazy: connects on first use and reconnects by itself.
    conn: RedisConn,
    /// The scripts' digests for `EVALSHA`, set once the change channel first loaded them into
    /// Redis; until then scripts run by `EVAL`.
    digests: OnceLock<ScriptDigests>,
    mirror: RwLock<Mirror>,
    health: watch::Sender<VersionHealth>,
    /// Wakes the channel task: a bump failed (pending tables) or ran in an unknown epoch.
    wake: Notify,
    counters: Counters,
}

impl Shared {
    fn mirror_read(&self) -> RwLockReadGuard<'_, Mirror> {
        // A panic while holding the lock cannot leave the mirror inconsistent (every update is a
        // max-merge or a flag), so a poisoned lock is used as is.
        self.mirror.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mirror_write(&self) -> RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes the health computed from `mirror` (called with the write lock held, so that
    /// transitions are published in order).
    fn publish_health(&self, mirror: &Mirror) {
        let health = if mirror.is_synchronized() {
            VersionHealth::Synchronized
        } else {
            VersionHealth::Unsynchronized
        };
        self.health.send_if_modified(|h| std::mem::replace(h, health) != health);
    }

    fn set_channel_synced(&self, synced: bool) {
        let mut mirror = self.mirror_write();
        mirror.channel_synced = synced;
        self.publish_health(&mirror);
    }

    /// Runs `fut` within the deadline, mapping Redis errors and the timeout to [`Error`].
    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.config.deadline, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.is_timeout() => {
                Err(Error::new(ErrorKind::Timeout, format!("redis {what} timed out")).with_source(e))
            }
            Ok(Err(e)) => {
                Err(Error::new(ErrorKind::Unavailable, format!("redis {what} failed")).with_source(e))
            }
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("redis {what} did not finish within {:?}", self.config.deadline),
            )),
        }
    }

    /// Runs a script by `EVALSHA`, falling back to `EVAL` when Redis does not have it cached (a
    /// restarted Redis forgets scripts; `EVAL` caches it again), or by `EVAL` while its digest is
    /// not known yet.
    async fn eval(&self, script: Script, args: &[&str], what: &'static str) -> Result<redis::Value, Error> {
        let keys = [&self.keys.versions, &self.keys.seq, &self.keys.epoch];
        let build = |command: &str, body: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(body).arg(keys.len()).arg(&keys[..]).arg(args);
            cmd
        };
        let evalsha = self.digests.get().map(|d| build("EVALSHA", d.of(script)));
        let attempt = async {
            if let Some(evalsha) = evalsha {
                // A cluster node that took over a slot may not have the script yet: `EVAL`.
                match self.conn.query::<redis::Value>(&evalsha).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {}
                    other => return other,
                }
            }
            self.conn.query::<redis::Value>(&build("EVAL", script.source())).await
        };
        self.call(what, attempt).await
    }

    /// Loads the scripts into Redis once, for their digests (`EVALSHA` sends 40 bytes instead of
    /// the script).
    async fn load_scripts(&self) -> Result<(), Error> {
        if self.digests.get().is_some() {
            return Ok(());
        }
        let bump = self.load_script(Script::Bump).await?;
        let snapshot = self.load_script(Script::Snapshot).await?;
        // Only the channel task loads them; were it ever raced, both values would be equal.
        let _ = self.digests.set(ScriptDigests { bump, snapshot });
        Ok(())
    }

    async fn load_script(&self, script: Script) -> Result<String, Error> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(script.source());
        self.call("version script load", self.conn.query::<String>(&cmd)).await
    }

    async fn run_bump(&self, tables: &[TableName]) -> Result<BumpReply, Error> {
        let mut args: Vec<&str> = Vec::with_capacity(tables.len() + 1);
        args.push(&self.keys.channel);
        args.extend(tables.iter().map(TableName::as_str));
        let value = self.eval(Script::Bump, &args, "version bump").await?;
        let redis::Value::Array(items) = value else {
            return Err(codec("version bump reply is not an array"));
        };
        if items.len() != tables.len() + 2 {
            return Err(codec("version bump reply has the wrong length"));
        }
        let epoch = value_u64(&items[0]).ok_or_else(|| codec("version bump reply has a bad epoch"))?;
        let versions = items[2..]
            .iter()
            .map(value_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| codec("version bump reply has a bad version"))?;
        Ok(BumpReply { epoch, versions })
    }

    async fn run_snapshot(&self) -> Result<Snapshot, Error> {
        let value = self.eval(Script::Snapshot, &[], "version snapshot").await?;
        let redis::Value::Array(items) = value else {
            return Err(codec("version snapshot reply is not an array"));
        };
        let [epoch, seq, hash] = items.as_slice() else {
            return Err(codec("version snapshot reply has the wrong length"));
        };
        let epoch = value_u64(epoch).ok_or_else(|| codec("version snapshot has a bad epoch"))?;
        let seq = value_u64(seq).ok_or_else(|| codec("version snapshot has a bad sequence number"))?;
        let redis::Value::Array(fields) = hash else {
            return Err(codec("version snapshot hash is not an array"));
        };
        let mut versions = Vec::with_capacity(fields.len() / 2);
        for pair in fields.chunks(2) {
            let [name, version] = pair else {
                return Err(codec("version snapshot hash has an odd length"));
            };
            let redis::Value::BulkString(name) = name else {
                return Err(codec("version snapshot has a bad table name"));
            };
            let Ok(name) = std::str::from_utf8(name) else {
                // No caller can ask for a table whose name is not UTF-8.
                continue;
            };
            let version = value_u64(version).ok_or_else(|| codec("version snapshot has a bad version"))?;
            versions.push((TableName::new(name), version));
        }
        Ok(Snapshot { epoch, seq, versions })
    }

    /// Reads `epoch` and `seq` for the heartbeat.
    async fn probe(&self) -> Result<(Option<u64>, u64), Error> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&self.keys.epoch).arg(&self.keys.seq);
        let (epoch, seq): (Option<String>, Option<String>) =
            self.call("version probe", self.conn.query(&cmd)).await?;
        let epoch = match epoch {
            Some(e) => Some(e.parse().map_err(|_| codec("version epoch is not a number"))?),
            None => None,
        };
        let seq = match seq {
            Some(s) => s.parse().map_err(|_| codec("version sequence number is not a number"))?,
            None => 0,
        };
        Ok((epoch, seq))
    }

    /// Applies the pending bumps to Redis. Tables that fail again stay pending.
    async fn flush_pending(&self) -> Result<(), Error> {
        let (tables, generation): (Vec<TableName>, u64) = {
            let mirror = self.mirror_read();
            (mirror.pending.keys().cloned().collect(), mirror.next_generation)
        };
        if tables.is_empty() {
            return Ok(());
        }
        let reply = self.run_bump(&tables).await?;
        self.counters.bumps_sent.fetch_add(1, Ordering::Relaxed);
        let mut mirror = self.mirror_write();
        for (table, version) in tables.iter().zip(&reply.versions) {
            mirror.merge(table.clone(), *version);
        }
        // A bump of the same table that failed after we took the list is still pending.
        mirror.pending.retain(|_, g| *g > generation);
        self.publish_health(&mirror);
        tracing::info!(target: "strata::versions", tables = tables.len(), "pending version bumps applied");
        Ok(())
    }

    /// Takes a snapshot and max-merges it; the channel is in sequence from the returned seq on.
    async fn resync(&self) -> Result<u64, Error> {
        self.set_channel_synced(false);
        self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.run_snapshot().await?;
        let mut mirror = self.mirror_write();
        if mirror.epoch != Some(snapshot.epoch) {
            if let Some(old) = mirror.epoch {
                self.counters.epoch_changes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "strata::versions", old, new = snapshot.epoch, "redis version epoch changed: redis lost its data");
                if snapshot.epoch <= old {
                    tracing::error!(target: "strata::versions", "new redis version epoch is not above the old one: redis clock went backwards");
                }
            }
            mirror.epoch = Some(snapshot.epoch);
            mirror.floor = mirror.floor.max(snapshot.epoch);
        }
        for (table, version) in snapshot.versions {
            mirror.merge(table, version);
        }
        mirror.channel_synced = true;
        self.counters.last_seen_seq.store(snapshot.seq, Ordering::Relaxed);
        self.publish_health(&mirror);
        Ok(snapshot.seq)
    }
}

/// The Lua scripts this store runs.
#[derive(Debug, Clone, Copy)]
enum Script {
    Bump,
    Snapshot,
}

impl Script {
    fn source(self) -> &'static str {
        match self {
            Script::Bump => BUMP_SCRIPT,
            Script::Snapshot => SNAPSHOT_SCRIPT,
        }
    }
}

/// SHA-1 digests of the scripts, as `SCRIPT LOAD` returned them.
struct ScriptDigests {
    bump: String,
    snapshot: String,
}

impl ScriptDigests {
    fn of(&self, script: Script) -> &str {
        match script {
            Script::Bump => &self.bump,
            Script::Snapshot => &self.snapshot,
        }
    }
}

fn codec(message: &'static str) -> Error {
    Error::new(ErrorKind::Codec, message)
}

fn value_u64(value: &redis::Value) -> Option<u64> {
    match value {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        redis::Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// One invalidation message.
#[derive(Debug, PartialEq, Eq)]
struct Invalidation {
    epoch: u64,
    seq: u64,
    versions: Vec<(TableName, u64)>,
}

/// Parses `v1 <epoch> <seq> <count>\n` followed by `<version>:<len>:<name>` per table.
fn parse_invalidation(bytes: &[u8]) -> Option<Invalidation> {
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let mut fields = header.split(' ');
    if fields.next()? != "v1" {
        return None;
    }
    let epoch = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let count: usize = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    let mut rest = &bytes[newline + 1..];
    // Each entry takes at least 4 bytes, so a lying count cannot allocate much.
    let mut versions = Vec::with_capacity(count.min(rest.len() / 4));
    let number = |rest: &mut &[u8]| -> Option<u64> {
        let colon = rest.iter().position(|b| *b == b':')?;
        let digits = &rest[..colon];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = std::str::from_utf8(digits).ok()?.parse().ok()?;
        *rest = &rest[colon + 1..];
        Some(value)
    };
    for _ in 0..count {
        let version = number(&mut rest)?;
        let len = usize::try_from(number(&mut rest)?).ok()?;
        if rest.len() < len {
            return None;
        }
        let name = std::str::from_utf8(&rest[..len]).ok()?;
        versions.push((TableName::new(name), version));
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return None;
    }
    Some(Invalidation { epoch, seq, versions })
}

/// What the subscriber thread reports.
enum Event {
    Subscribed,
    Message(Vec<u8>),
    Down(redis::RedisError),
}

/// The subscriber thread; dropping the handle stops it within [`SUBSCRIBER_POLL`].
struct Subscriber {
    stop: Arc<AtomicBool>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Subscriber {
    fn spawn(shared: &Shared, events: mpsc::UnboundedSender<Event>) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let node = shared.next_node.fetch_add(1, Ordering::Relaxed) % shared.subscribe_to.len();
        let client = shared.subscribe_to[node].clone();
        let channel = shared.keys.channel.clone();
        let deadline = shared.config.deadline;
        let heartbeat = shared.config.heartbeat;
        let thread_stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("strata-versions-sub".to_owned())
            .spawn(move || {
                let result = subscribe_loop(&client, &channel, deadline, heartbeat, &thread_stop, &events);
                if let Err(e) = result {
                    let _ = events.send(Event::Down(e));
                }
            })
            .map_err(|e| {
                Error::new(ErrorKind::Unavailable, "cannot start the subscriber thread").with_source(e)
            })?;
        Ok(Self { stop })
    }
}

fn subscribe_loop(
    client: &redis::Client,
    channel: &str,
    deadline: Duration,
    heartbeat: Duration,
    stop: &AtomicBool,
    events: &mpsc::UnboundedSender<Event>,
) -> redis::RedisResult<()> {
    let mut con = client.get_connection_with_timeout(deadline)?;
    con.set_write_timeout(Some(deadline))?;
    let mut pubsub = con.as_pubsub();
    pubsub.set_read_timeout(Some(deadline))?;
    pubsub.subscribe(channel)?;
    if events.send(Event::Subscribed).is_err() {
        return Ok(());
    }
    let poll = SUBSCRIBER_POLL.min(heartbeat);
    pubsub.set_read_timeout(Some(poll))?;
    let mut last_activity = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) || events.is_closed() {
            return Ok(());
        }
        match pubsub.get_message() {
            Ok(msg) => {
                last_activity = Instant::now();
                if msg.get_channel_name() == channel
                    && events.send(Event::Message(msg.get_payload_bytes().to_vec())).is_err()
                {
                    return Ok(());
                }
            }
            Err(e) if e.is_timeout() => {
                if last_activity.elapsed() >= heartbeat {
                    // A connection can die without a FIN; only a round trip proves it alive.
                    pubsub.set_read_timeout(Some(deadline))?;
                    pubsub.ping::<redis::Value>()?;
                    pubsub.set_read_timeout(Some(poll))?;
                    last_activity = Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The change channel task: subscribe, snapshot, follow the messages; on any doubt, start over.
async fn run_channel(shared: Arc<Shared>) {
    // If this task stops for any reason (the store dropped, the runtime shut down), nobody keeps
    // the mirror current any more: it must not vouch for its versions.
    let _unsync_on_exit = UnsyncOnDrop(Arc::clone(&shared));
    let mut backoff = shared.config.reconnect_min;
    let mut first = true;
    // One warning per outage; the retries of the same outage are debug events.
    let mut in_outage = false;
    let report = |in_outage: &mut bool, error: &dyn fmt::Display, what: &str| {
        if std::mem::replace(in_outage, true) {
            tracing::debug!(target: "strata::versions", %error, "{what}");
        } else {
            tracing::warn!(target: "strata::versions", %error, "{what}");
        }
    };
    loop {
        if !first {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(shared.config.reconnect_max);
        }
        first = false;
        shared.set_channel_synced(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let subscriber = match Subscriber::spawn(&shared, tx) {
            Ok(s) => s,
            Err(error) => {
                report(&mut in_outage, &error, "version channel not started");
                continue;
            }
        };
        match tokio::time::timeout(shared.config.deadline.saturating_mul(2), rx.recv()).await {
            Ok(Some(Event::Subscribed)) => {}
            Ok(Some(Event::Down(error))) => {
                report(&mut in_outage, &error, "version channel subscription failed");
                continue;
            }
            _ => {
                report(&mut in_outage, &"no answer", "version channel subscription timed out");
                continue;
            }
        }
        let mut synced = false;
        let error = follow(&shared, &mut rx, &mut backoff, &mut synced).await;
        shared.set_channel_synced(false);
        shared.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        drop(subscriber);
        if synced {
            in_outage = false;
        }
        report(&mut in_outage, &error, "version channel lost; resynchronizing");
    }
}

struct UnsyncOnDrop(Arc<Shared>);

impl Drop for UnsyncOnDrop {
    fn drop(&mut self) {
        self.0.set_channel_synced(false);
    }
}

/// Follows a subscribed channel until it fails; returns why.
async fn follow(
    shared: &Shared,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    backoff: &mut Duration,
    synced: &mut bool,
) -> Error {
    // The first connection (a store built while Redis was down) and every reconnection run the
    // same steps: scripts, the bumps that failed meanwhile, then a full snapshot.
    if let Err(e) = shared.load_scripts().await {
        return e;
    }
    if let Err(e) = shared.flush_pending().await {
        return e;
    }
    let mut last_seen = match shared.resync().await {
        Ok(seq) => seq,
        Err(e) => return e,
    };
    *backoff = shared.config.reconnect_min;
    *synced = true;
    // A sequence number Redis had reached, and when its messages must have arrived by.
    let mut expected: Option<(u64, Instant)> = None;
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        let mut need_resync = false;
        tokio::select! {
            event = rx.recv() => match event {
                None => return Error::new(ErrorKind::Unavailable, "version subscriber ended"),
                Some(Event::Down(e)) => return Error::new(ErrorKind::Unavailable, "version subscription failed").with_source(e),
                Some(Event::Subscribed) => {}
                Some(Event::Message(bytes)) => {
                    shared.counters.messages_received.fetch_add(1, Ordering::Relaxed);
                    need_resync = !apply_message(shared, &bytes, &mut last_seen);
                }
            },
            _ = heartbeat.tick() => {
                let (epoch, seq) = match shared.probe().await {
                    Ok(probe) => probe,
                    Err(e) => return e,
                };
                let current_epoch = shared.mirror_read().epoch;
                if epoch.is_none() || epoch != current_epoch || seq < last_seen {
                    need_resync = true;
                }
                if let Some((target, by)) = expected {
                    if last_seen >= target {
                        expected = None;
                    } else if Instant::now() >= by {
                        shared.counters.lost_detected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "strata::versions", last_seen, target, "version messages lost");
                        need_resync = true;
                    }
                }
                // Every message up to `seq` was published before this probe: they must arrive
                // within the grace period, or they are lost.
                if expected.is_none() && seq > last_seen {
                    expected = Some((seq, Instant::now() + shared.config.grace));
                }
            },
            () = shared.wake.notified() => {
                let had_pending = !shared.mirror_read().pending.is_empty();
                if let Err(e) = shared.flush_pending().await {
                    return e;
                }
                // A wake-up whose bumps were already flushed on (re)connecting, with the channel in
                // sequence, needs nothing more: resynchronizing then would only make a store that
                // just reported itself synchronized bypass for a moment.
                need_resync = had_pending || !shared.mirror_read().channel_synced;
            },
        }
        if need_resync {
            expected = None;
            match shared.resync().await {
                Ok(seq) => last_seen = seq,
                Err(e) => return e,
            }
        }
    }
}

/// Applies one message; returns false when the mirror must resynchronize.
fn apply_message(shared: &Shared, bytes: &[u8], last_seen: &mut u64) -> bool {
    let Some(message) = parse_invalidation(bytes) else {
        shared.counters.malformed_messages.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "strata::versions", len = bytes.len(), "malformed version message");
        return false;
    };
    let mut mirror = shared.mirror_write();
    if mirror.epoch != Some(message.epoch) {
        return false;
    }
    let next = last_seen.saturating_add(1);
    if message.seq > next {
        shared.counters.gaps_detected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "strata::versions", last_seen = *last_seen, seq = message.seq, "version message gap");
        mirror.channel_synced = false;
        shared.publish_health(&mirror);
        return false;
    }
    for (table, version) in message.versions {
        mirror.merge(table, version);
    }
    if message.seq == next {
        *last_seen = message.seq;
        shared.counters.last_seen_seq.store(message.seq, Ordering::Relaxed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scripts_message_format() {
        let msg = b"v1 1700000000123456 42 2\n1700000000123457:5:users1700000000123459:9:a:b\nc d e";
        let parsed = parse_invalidation(msg);
        assert_eq!(
            parsed,
            Some(Invalidation {
                epoch: 1_700_000_000_123_456,
                seq: 42,
                versions: vec![
                    (TableName::new("users"), 1_700_000_000_123_457),
                    (TableName::new("a:b\nc d e"), 1_700_000_000_123_459),
                ],
            })
        );
    }

    #[test]
    fn rejects_malformed_messages_without_panicking() {
        for bad in [
            &b""[..],
            b"v1",
            b"v2 1 2 0\n",
            b"v1 1 2 1\n",
            b"v1 1 2 1\n5:10:users",
            b"v1 1 2 1\n5:5:users trailing",
            b"v1 1 2 0 extra\n",
            b"v1 x 2 0\n",
            b"v1 1 2 18446744073709551615\n1:1:a",
            b"v1 1 2 1\n-5:1:a",
            b"v1 1 2 1\n5:99999999999999999999999:a",
            b"v1 1 2 1\n5:2:\xff\xfe",
        ] {
            assert_eq!(parse_invalidation(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_invalidation(b"v1 1 2 0\n").is_some());
    }

    #[test]
    fn masks_passwords_in_urls() {
        assert_eq!(mask_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(mask_url("redis://user:s3cret@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(mask_url("redis://:s3cret@host/"), "redis://:***@host/");
        assert_eq!(mask_url("rediss://s3cret@host"), "rediss://***@host");
        assert_eq!(
            mask_url("redis+unix:///tmp/r.sock?db=1&pass=s3cret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
    }

    #[test]
    fn mirror_versions_only_grow_and_respect_the_floor() {
        let mut mirror = Mirror { floor: 100, ..Mirror::default() };
        let users = TableName::new("users");
        assert_eq!(mirror.get(&users), 100);
        mirror.merge(users.clone(), 105);
        mirror.merge(users.clone(), 103);
        assert_eq!(mirror.get(&users), 105);
        mirror.floor = 200;
        assert_eq!(mirror.get(&users), 200);
    }
}
