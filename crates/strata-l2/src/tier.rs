//! The warm tier: encodes results, bounds every storage call by a deadline and a circuit breaker, and fails open.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_core::{
    async_trait, CacheKey, CacheTier, CachedResult, Clock, NowLookup, PutOutcome, Rejection, SystemClock,
    TierStats,
};

use crate::breaker::{Breaker, BreakerState};
use crate::codec::{Codec, DecodeError};
use crate::{Error, ErrorKind, NodeId, ResultLookup, Storage, StoredResult};

/// Builds a [`WarmTier`] over a storage. Every setter documents its default.
#[derive(Clone)]
pub struct WarmTierBuilder {
    storage: Arc<dyn Storage>,
    deadline: Duration,
    admin_deadline: Duration,
    breaker_failure_threshold: u32,
    breaker_cooldown: Duration,
    compress_above_bytes: usize,
    max_payload_bytes: usize,
    warn_interval: Duration,
    clock: Arc<dyn Clock>,
    name: String,
}

impl fmt::Debug for WarmTierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmTierBuilder")
            .field("storage", &self.storage)
            .field("deadline", &self.deadline)
            .field("admin_deadline", &self.admin_deadline)
            .field("breaker_failure_threshold", &self.breaker_failure_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("compress_above_bytes", &self.compress_above_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("warn_interval", &self.warn_interval)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WarmTierBuilder {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            deadline: Duration::from_millis(5),
            admin_deadline: Duration::from_secs(30),
            breaker_failure_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            compress_above_bytes: 4096,
            max_payload_bytes: 16 << 20,
            warn_interval: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            name: "l2".to_owned(),
        }
    }

    /// The most one lookup or write may take; past it the call is a miss (or a dropped write).
    /// Default: 5 ms.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The most [`clear`](CacheTier::clear) may take (it scans the whole prefix). Default: 30 s.
    #[must_use]
    pub fn with_admin_deadline(mut self, deadline: Duration) -> Self {
        self.admin_deadline = deadline;
        self
    }

    /// How many consecutive failed or timed-out calls open the circuit breaker. Default: 5.
    #[must_use]
    pub fn with_breaker_failure_threshold(mut self, failures: u32) -> Self {
        self.breaker_failure_threshold = failures;
        self
    }

    /// How long the breaker stays open before one probe call may close it. Default: 1 s.
    #[must_use]
    pub fn with_breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Payloads of at least this many bytes are stored lz4-compressed (raw if that does not
    /// shrink them). Default: 4096.
    #[must_use]
    pub fn with_compress_above_bytes(mut self, bytes: usize) -> Self {
        self.compress_above_bytes = bytes;
        self
    }

    /// The largest payload stored (larger results are refused with
    /// [`Rejection::TooLarge`]) and accepted when read back. Default: 16 MiB.
    #[must_use]
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// At most one warning per this interval while the storage fails. Default: 10 s.
    #[must_use]
    pub fn with_warn_interval(mut self, interval: Duration) -> Self {
        self.warn_interval = interval;
        self
    }

    /// The clock for TTLs. Default: the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The tier's name in stats and logs. Default: `l2`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the tier; fails on a zero deadline, cool-down or failure threshold, or a zero or
    /// 4 GiB-or-larger payload limit.
    pub fn build(self) -> Result<WarmTier, Error> {
        if self.deadline.is_zero() || self.admin_deadline.is_zero() {
            return Err(Error::config("l2 deadlines must be above zero"));
        }
        if self.breaker_failure_threshold == 0 {
            return Err(Error::config("l2 breaker failure threshold must be at least 1"));
        }
        if self.breaker_cooldown.is_zero() {
            return Err(Error::config("l2 breaker cool-down must be above zero"));
        }
        if self.max_payload_bytes == 0 || u32::try_from(self.max_payload_bytes).is_err() {
            return Err(Error::config(format!(
                "l2 max payload size must be between 1 and {} bytes, got {}",
                u32::MAX,
                self.max_payload_bytes
            )));
        }
        Ok(WarmTier {
            storage: self.storage,
            breaker: Breaker::new(self.breaker_failure_threshold, self.breaker_cooldown),
            node_breakers: RwLock::new(HashMap::new()),
            breaker_failure_threshold: self.breaker_failure_threshold,
            breaker_cooldown: self.breaker_cooldown,
            codec: Codec {
                compress_above_bytes: self.compress_above_bytes,
                max_payload_bytes: self.max_payload_bytes,
            },
            deadline: self.deadline,
            admin_deadline: self.admin_deadline,
            clock: self.clock,
            counters: Counters::default(),
            warn: RateLimitedWarn::new(self.warn_interval),
            name: self.name,
        })
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    expirations: AtomicU64,
    rejections: AtomicU64,
    collisions: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    short_circuited: AtomicU64,
    dropped_writes: AtomicU64,
}

/// How the warm tier's storage is doing: the breakers and the failure counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmTierHealth {
    /// The state of the storage-wide circuit breaker: the only one for a storage on one server;
    /// on a Redis Cluster, the breaker of calls not tied to one node (`clear`, and keys whose
    /// node the storage does not know yet). Each node's own breaker is in
    /// [`nodes`](Self::nodes).
    pub breaker: BreakerState,
    /// How many times the storage-wide breaker has opened.
    pub breaker_opens: u64,
    /// One breaker per node of a storage spread over several servers (see
    /// [`Storage::node_of`]), sorted by node; empty for a storage on one server.
    pub nodes: Vec<NodeHealth>,
    /// Storage calls that failed, timeouts included.
    pub errors: u64,
    /// Storage calls that hit the deadline.
    pub timeouts: u64,
    /// Calls answered at once, without touching the storage, because the breaker was open.
    pub short_circuited: u64,
    /// Writes dropped because the storage failed or the breaker was open.
    pub dropped_writes: u64,
    /// Stored values that failed to decode (served as misses and deleted).
    pub corrupt: u64,
}

/// The circuit breaker of one node of the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeHealth {
    /// The node.
    pub node: NodeId,
    /// Its breaker's state.
    pub breaker: BreakerState,
    /// How many times its breaker has opened.
    pub breaker_opens: u64,
}

/// One `tracing::warn!` per interval, with a count of what was not logged.
struct RateLimitedWarn {
    interval_ms: u64,
    start: Instant,
    /// Milliseconds after `start` of the last warning, plus one (0: never warned).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    fn new(interval: Duration) -> Self {
        Self {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn warn(&self, tier: &str, storage: &str, op: &'static str, err: &Error) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1);
        let last = self.last_ms.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due && self.last_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            let suppressed = self.suppressed.swap(0, Relaxed);
            let source = std::error::Error::source(err).map(ToString::to_string).unwrap_or_default();
            tracing::warn!(
                target: "strata::l2",
                tier, storage, op, error = %err, source = %source, suppressed,
                "l2 storage failing; serving misses and dropping writes"
            );
        } else {
            self.suppressed.fetch_add(1, Relaxed);
        }
    }
}

/// The shared warm tier (L2). See the [crate docs](crate).
pub struct WarmTier {
    storage: Arc<dyn Storage>,
    /// The storage-wide breaker.
    breaker: Breaker,
    /// One breaker per node, for storages that name nodes; created on a node's first call.
    node_breakers: RwLock<HashMap<NodeId, Arc<Breaker>>>,
    breaker_failure_threshold: u32,
    breaker_cooldown: Duration,
    codec: Codec,
    deadline: Duration,
    admin_deadline: Duration,
    clock: Arc<dyn Clock>,
    counters: Counters,
    warn: RateLimitedWarn,
    name: String,
}

impl fmt::Debug for WarmTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmTier")
            .field("name", &self.name)
            .field("storage", &self.storage)
            .field("deadline", &self.deadline)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// What a stored value turned out to be.
enum Inspected {
    Hit(CachedResult),
    Miss,
    Corrupt(DecodeError),
}

/// Why a storage call gave no answer.
enum CallFailure {
    /// The breaker is open: the storage was not touched.
    ShortCircuited,
    /// The storage failed or timed out.
    Failed(Error),
}

/// The breaker a call goes through.
enum BreakerRef<'a> {
    Storage(&'a Breaker),
    Node(Arc<Breaker>),
}

impl Deref for BreakerRef<'_> {
    type Target = Breaker;

    fn deref(&self) -> &Breaker {
        match self {
            BreakerRef::Storage(b) => b,
            BreakerRef::Node(b) => b,
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs futures concurrently and returns their outputs in order.
async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut futures: Vec<Option<BoxFuture<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// The storage key of a cache key: its digest as 32 lowercase hex digits, built on the stack.
struct StorageKey([u8; 32]);

impl StorageKey {
    fn new(key: &CacheKey) -> Self {
        // Two hex digits per table entry: one load per byte on the hit path.
        const PAIRS: [[u8; 2]; 256] = {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut pairs = [[0u8; 2]; 256];
            let mut i = 0;
            while i < 256 {
                pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
                i += 1;
            }
            pairs
        };
        let mut out = [0u8; 32];
        for (pair, byte) in out.chunks_exact_mut(2).zip(key.digest().to_bytes()) {
            pair.copy_from_slice(&PAIRS[usize::from(byte)]);
        }
        Self(out)
    }

    fn as_str(&self) -> &str {
        // Always ASCII hex digits, so this never fails; the fallback keeps the code panic-free.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn storage_key(key: &CacheKey) -> String {
    StorageKey::new(key).as_str().to_owned()
}

impl WarmTier {
    /// Starts building a tier over `storage`.
    pub fn builder(storage: Arc<dyn Storage>) -> WarmTierBuilder {
        WarmTierBuilder::new(storage)
    }

    /// The storage behind the tier.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The breakers' states and the failure counters.
    pub fn health(&self) -> WarmTierHealth {
        let c = &self.counters;
        let mut nodes: Vec<NodeHealth> = self
            .node_breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(node, b)| NodeHealth { node: node.clone(), breaker: b.state(), breaker_opens: b.opens() })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        WarmTierHealth {
            breaker: self.breaker.state(),
            breaker_opens: self.breaker.opens(),
            nodes,
            errors: c.errors.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            short_circuited: c.short_circuited.load(Relaxed),
            dropped_writes: c.dropped_writes.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
        }
    }

    /// The breaker of the node that serves `skey`, or the storage-wide one.
    fn breaker_for(&self, skey: &str) -> BreakerRef<'_> {
        match self.storage.node_of(skey) {
            Some(node) => self.node_breaker(node),
            None => BreakerRef::Storage(&self.breaker),
        }
    }

    fn node_breaker(&self, node: NodeId) -> BreakerRef<'_> {
        if let Some(b) = self.node_breakers.read().unwrap_or_else(PoisonError::into_inner).get(&node) {
            return BreakerRef::Node(b.clone());
        }
        let mut breakers = self.node_breakers.write().unwrap_or_else(PoisonError::into_inner);
        let b = breakers
            .entry(node)
            .or_insert_with(|| Arc::new(Breaker::new(self.breaker_failure_threshold, self.breaker_cooldown)));
        BreakerRef::Node(b.clone())
    }

    /// Runs one storage call on the storage-wide breaker; see [`call_on`](Self::call_on).
    async fn call<T, F, Fut>(&self, op: &'static str, deadline: Duration, f: F) -> Result<T, CallFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.call_on(&self.breaker, op, deadline, f).await
    }

    /// Runs one storage call under `breaker` and `deadline`. The future is created only once
    /// the breaker admits the call, so an open breaker never touches the storage.
    async fn call_on<T, F, Fut>(
        &self,
        breaker: &Breaker,
        op: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<T, CallFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let Some(permit) = breaker.try_acquire() else {
            self.counters.short_circuited.fetch_add(1, Relaxed);
            return Err(CallFailure::ShortCircuited);
        };
        let mut fut = std::pin::pin!(f());
        // A storage that answers without waiting (the memory backend) needs neither a timer nor a
        // clock read. For a networked one the first poll only queues the request, so the
        // deadline counts from there.
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        let outcome = match first {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => tokio::time::timeout(deadline, fut).await,
        };
        let err = match outcome {
            Ok(Ok(value)) => {
                permit.success();
                return Ok(value);
            }
            Ok(Err(err)) => err,
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Relaxed);
                Error::new(ErrorKind::Timeout, format!("l2 {op} exceeded its {deadline:?} deadline"))
            }
        };
        if matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) {
            permit.failure();
        } else {
            // The storage answered (it refused, or returned something unusable): it is up.
            permit.success();
        }
        self.counters.errors.fetch_add(1, Relaxed);
        self.warn.warn(&self.name, self.storage.name(), op, &err);
        Err(CallFailure::Failed(err))
    }

    /// Decodes and checks a stored value without awaiting. Counts hits and misses, except for
    /// undecodable values, which the caller handles (count, delete) with [`check`](Self::check).
    fn inspect(&self, key: &CacheKey, raw: Option<Bytes>) -> Inspected {
        let Some(raw) = raw else {
            self.counters.misses.fetch_add(1, Relaxed);
            return Inspected::Miss;
        };
        let decoded = match self.codec.decode(&raw) {
            Ok(decoded) => decoded,
            Err(err) => return Inspected::Corrupt(err),
        };
        if decoded.canonical != *key.canonical() {
            // Another key with the same 128-bit digest: never serve it, and leave it for its owner.
            self.counters.collisions.fetch_add(1, Relaxed);
            self.counters.misses.fetch_add(1, Relaxed);
            return Inspected::Miss;
        }
        if decoded.result.is_expired_at(self.clock.now()) {
            // The storage's own expiry will remove it; another process may already have replaced it.
            self.counters.expirations.fetch_add(1, Relaxed);
            self.counters.misses.fetch_add(1, Relaxed);
            return Inspected::Miss;
        }
        self.counters.hits.fetch_add(1, Relaxed);
        Inspected::Hit(decoded.result)
    }

    /// The in-process fast path: a result the storage kept as a value, checked against the key
    /// and the tier's clock (read once), counted. `None` when the storage holds no such value
    /// for the key (it does not keep values, or it holds bytes there): use the byte path.
    fn lookup_kept(&self, key: &CacheKey) -> Option<Option<CachedResult>> {
        match self.storage.get_result_now(key.digest(), self.clock.now()) {
            ResultLookup::Unsupported => None,
            ResultLookup::Absent => {
                self.counters.misses.fetch_add(1, Relaxed);
                Some(None)
            }
            ResultLookup::Expired => {
                self.counters.expirations.fetch_add(1, Relaxed);
                self.counters.misses.fetch_add(1, Relaxed);
                Some(None)
            }
            ResultLookup::Found(stored) => {
                if stored.canonical() != key.canonical() {
                    // Another key with the same digest: never serve it, and leave it for its owner.
                    self.counters.collisions.fetch_add(1, Relaxed);
                    self.counters.misses.fetch_add(1, Relaxed);
                    return Some(None);
                }
                self.counters.hits.fetch_add(1, Relaxed);
                Some(Some(stored.result().clone()))
            }
        }
    }

    /// Decodes and checks a stored value; corrupt values are counted and deleted.
    async fn check(&self, key: &CacheKey, skey: &str, raw: Option<Bytes>) -> Option<CachedResult> {
        match self.inspect(key, raw) {
            Inspected::Hit(result) => Some(result),
            Inspected::Miss => None,
            Inspected::Corrupt(err) => {
                self.on_corrupt(skey, err).await;
                self.counters.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    async fn on_corrupt(&self, skey: &str, err: DecodeError) {
        self.counters.corrupt.fetch_add(1, Relaxed);
        tracing::debug!(target: "strata::l2", tier = %self.name, key = skey, reason = %err, "deleting undecodable l2 value");
        // Best effort: a failed delete is counted by `call`, and the value stays a miss either way.
        let breaker = self.breaker_for(skey);
        let _ = self.call_on(&breaker, "delete", self.deadline, || self.storage.delete(skey)).await;
    }

    fn reject(&self, rejection: Rejection) -> PutOutcome {
        self.counters.rejections.fetch_add(1, Relaxed);
        PutOutcome::Rejected(rejection)
    }
}

fn admin_error(failure: CallFailure) -> strata_core::Error {
    match failure {
        CallFailure::ShortCircuited => {
            strata_core::Error::new(strata_core::ErrorKind::Unavailable, "l2 circuit breaker is open")
        }
        CallFailure::Failed(err) => err.into(),
    }
}

#[async_trait]
impl CacheTier for WarmTier {
    fn name(&self) -> &str {
        &self.name
    }

    /// Answers without awaiting when the storage can (the memory backend): no future, no timer.
    /// Networked storages say [`NowLookup::WouldAwait`], and so does an undecodable value, which
    /// [`get`](CacheTier::get) then counts and deletes.
    fn get_now(&self, key: &CacheKey) -> NowLookup {
        match self.lookup_kept(key) {
            Some(Some(result)) => return NowLookup::Hit(result),
            Some(None) => return NowLookup::Miss,
            None => {}
        }
        let skey = StorageKey::new(key);
        let Some(raw) = self.storage.get_now(skey.as_str()) else {
            return NowLookup::WouldAwait;
        };
        match self.inspect(key, raw) {
            Inspected::Hit(result) => NowLookup::Hit(result),
            Inspected::Miss => NowLookup::Miss,
            Inspected::Corrupt(_) => NowLookup::WouldAwait,
        }
    }

    /// Fails open: a storage that is down, slow or returning garbage gives `Ok(None)`.
    async fn get(&self, key: &CacheKey) -> Result<Option<CachedResult>, strata_core::Error> {
        if let Some(found) = self.lookup_kept(key) {
            return Ok(found);
        }
        let skey = StorageKey::new(key);
        let skey = skey.as_str();
        let breaker = self.breaker_for(skey);
        match self.call_on(&breaker, "get", self.deadline, || self.storage.get(skey)).await {
            Ok(raw) => Ok(self.check(key, skey, raw).await),
            Err(_) => {
                self.counters.misses.fetch_add(1, Relaxed);
                Ok(None)
            }
        }
    }

    /// One batch call (`MGET` on Redis) per node under one deadline, the nodes in parallel.
    /// Fails open like [`get`](Self::get): the keys of a node whose batch fails are misses.
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<CachedResult>>, strata_core::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(first) = self.lookup_kept(&keys[0]) {
            // An in-process storage: every key answers at once (one kept as bytes goes through `get`).
            let mut found = Vec::with_capacity(keys.len());
            found.push(first);
            for key in &keys[1..] {
                match self.lookup_kept(key) {
                    Some(result) => found.push(result),
                    None => found.push(self.get(key).await?),
                }
            }
            return Ok(found);
        }
        // One batch per node (a single one for a storage on one server), run concurrently, each
        // under its node's breaker and the deadline: a dead node turns only its keys into misses.
        let skeys: Vec<String> = keys.iter().map(storage_key).collect();
        let mut groups: Vec<(Option<NodeId>, Vec<usize>)> = Vec::new();
        for (i, skey) in skeys.iter().enumerate() {
            let node = self.storage.node_of(skey);
            match groups.iter_mut().find(|(n, _)| *n == node) {
                Some((_, members)) => members.push(i),
                None => groups.push((node, vec![i])),
            }
        }
        let mut raws: Vec<Option<Option<Bytes>>> = vec![None; keys.len()];
        let batches: Vec<BoxFuture<'_, (Vec<usize>, Option<Vec<Option<Bytes>>>)>> = groups
            .into_iter()
            .map(|(node, members)| {
                let breaker = match node {
                    Some(node) => self.node_breaker(node),
                    None => BreakerRef::Storage(&self.breaker),
                };
                let batch: Vec<String> = members.iter().map(|&i| skeys[i].clone()).collect();
                let fut: BoxFuture<'_, _> = Box::pin(async move {
                    let found = self
                        .call_on(&breaker, "get_many", self.deadline, || self.storage.get_many(&batch))
                        .await
                        .ok()
                        .filter(|found| found.len() == batch.len());
                    (members, found)
                });
                fut
            })
            .collect();
        for (members, found) in join_all(batches).await {
            if let Some(found) = found {
                for (i, raw) in members.into_iter().zip(found) {
                    raws[i] = Some(raw);
                }
            }
        }
        let mut found = Vec::with_capacity(keys.len());
        for ((key, skey), raw) in keys.iter().zip(&skeys).zip(raws) {
            match raw {
                Some(raw) => found.push(self.check(key, skey, raw).await),
                // Its node's batch failed, timed out or was short-circuited.
                None => {
                    self.counters.misses.fetch_add(1, Relaxed);
                    found.push(None);
                }
            }
        }
        Ok(found)
    }

    /// Stores with the result's remaining TTL. Fails open: a failing storage or an open breaker
    /// drops the write and answers [`Rejection::Degraded`].
    async fn put(&self, key: &CacheKey, value: CachedResult) -> Result<PutOutcome, strata_core::Error> {
        let ttl = value.remaining_ttl(self.clock.now());
        if ttl < Duration::from_millis(1) {
            return Ok(self.reject(Rejection::Expired));
        }
        if value.payload().len() > self.codec.max_payload_bytes {
            return Ok(self.reject(Rejection::TooLarge {
                weight_bytes: value.weight_bytes(),
                limit_bytes: self.codec.max_payload_bytes as u64,
            }));
        }
        let kept = StoredResult::new(key.canonical().clone(), value.clone());
        if let Some(outcome) = self.storage.set_result_now(key.digest(), kept, ttl) {
            return Ok(match outcome {
                Ok(PutOutcome::Stored) => {
                    self.counters.inserts.fetch_add(1, Relaxed);
                    PutOutcome::Stored
                }
                Ok(PutOutcome::Rejected(rejection)) => self.reject(rejection),
                Ok(other) => other,
                Err(err) => {
                    self.counters.errors.fetch_add(1, Relaxed);
                    self.counters.dropped_writes.fetch_add(1, Relaxed);
                    self.warn.warn(&self.name, self.storage.name(), "put", &err);
                    self.reject(Rejection::Degraded)
                }
            });
        }
        let Some(encoded) = self.codec.encode(key, &value) else {
            return Ok(self.reject(Rejection::TooLarge {
                weight_bytes: value.weight_bytes(),
                limit_bytes: self.codec.max_payload_bytes as u64,
            }));
        };
        let skey = storage_key(key);
        let encoded = Bytes::from(encoded);
        let breaker = self.breaker_for(&skey);
        match self.call_on(&breaker, "put", self.deadline, || self.storage.set(&skey, encoded, ttl)).await {
            Ok(PutOutcome::Stored) => {
                self.counters.inserts.fetch_add(1, Relaxed);
                Ok(PutOutcome::Stored)
            }
            Ok(PutOutcome::Rejected(rejection)) => Ok(self.reject(rejection)),
            Ok(other) => Ok(other),
            Err(_) => {
                self.counters.dropped_writes.fetch_add(1, Relaxed);
                Ok(self.reject(Rejection::Degraded))
            }
        }
    }

    /// Unlike lookups and writes, an explicit removal reports a storage failure
    /// (kind `Unavailable` or `Timeout`), so the caller knows the value may still be there.
    async fn remove(&self, key: &CacheKey) -> Result<(), strata_core::Error> {
        let skey = storage_key(key);
        let breaker = self.breaker_for(&skey);
        self.call_on(&breaker, "remove", self.deadline, || self.storage.delete(&skey))
            .await
            .map_err(admin_error)
    }

    /// Removes everything under the storage's namespace; bounded by the admin deadline and
    /// reports failures.
    async fn clear(&self) -> Result<(), strata_core::Error> {
        self.call("clear", self.admin_deadline, || self.storage.clear()).await.map_err(admin_error)
    }

    fn stats(&self) -> TierStats {
        let c = &self.counters;
        let usage = self.storage.usage();
        let mut stats = TierStats::default();
        stats.hits = c.hits.load(Relaxed);
        stats.misses = c.misses.load(Relaxed);
        stats.inserts = c.inserts.load(Relaxed);
        stats.evictions = usage.evictions;
        stats.expirations = c.expirations.load(Relaxed);
        stats.rejections = c.rejections.load(Relaxed);
        stats.collisions = c.collisions.load(Relaxed);
        stats.corrupt = c.corrupt.load(Relaxed);
        stats.errors = c.errors.load(Relaxed);
        stats.entries = usage.entries;
        stats.bytes = usage.bytes;
        stats.capacity_bytes = usage.capacity_bytes;
        stats
    }
}

#[cfg(test)]
mod tests {
    use strata_core::{KeyScope, SettingsDigest};

    use super::*;

    #[test]
    fn storage_key_is_the_digest_in_hex() {
        for statement in [&b"SELECT 1"[..], b"", b"SELECT * FROM t WHERE a = $1"] {
            let key =
                CacheKey::builder(&KeyScope::new("db", "role", SettingsDigest::default()), statement).build();
            assert_eq!(StorageKey::new(&key).as_str(), key.digest().to_string());
        }
    }
}
