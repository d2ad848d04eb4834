//! `SemanticTier`: the L3 cache, exact-key access plus guarded similarity lookups.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use strata_core::{
    CacheKey, CacheTier, CachedResult, Clock, KeyDigest, KeyScope, NowLookup, PutOutcome, Rejection,
    SystemClock, TableName, TierStats,
};

use crate::index::{Index, IndexConfig, Payload};
use crate::similarity::normalize;
use crate::{CosineSimilarity, Embedder, Error, Guards, Literal, LocalEmbedder};

/// How often, at most, maintenance walks every entry to tombstone expired ones (by the tier's
/// clock). Expired entries are never served in between: lookups check expiry themselves.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long the background indexer sleeps when nobody wakes it.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// At most one embedder warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Who builds the HNSW graphs and rebuilds partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Indexing {
    /// A background thread of the tier, woken by inserts and tombstones. The default.
    Background,
    /// Only calls to [`SemanticTier::maintain`]; for tests and tools that want determinism.
    Manual,
}

/// What a similarity lookup or a semantic insert is about.
///
/// `text` is what gets embedded: the application's `intent` when it gave one, else the
/// normalized statement (see [`SemanticRequest::from_statement`]). `tables` and `literals` are
/// what the caller extracted from the statement; with the default guards a stored entry can
/// only answer a request with the same scope, the same table set and the same literal values.
#[derive(Clone)]
pub struct SemanticRequest<'a> {
    scope: &'a KeyScope,
    text: &'a str,
    tables: &'a [TableName],
    literals: &'a [Literal],
    exact: &'a [u8],
    threshold: Option<CosineSimilarity>,
}

impl fmt::Debug for SemanticRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticRequest")
            .field("scope", self.scope)
            .field("text_len", &self.text.len())
            .field("tables", &self.tables)
            .field("literals", &self.literals.len())
            .field("exact_len", &self.exact.len())
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl<'a> SemanticRequest<'a> {
    /// A request in `scope` whose embedded text is `text`.
    pub fn new(scope: &'a KeyScope, text: &'a str) -> Self {
        Self { scope, text, tables: &[], literals: &[], exact: &[], threshold: None }
    }

    /// A request for a statement: embeds `intent` when the application gave one (the `intent`
    /// hint), else the normalized statement.
    pub fn from_statement(
        scope: &'a KeyScope,
        intent: Option<&'a str>,
        normalized_statement: &'a str,
    ) -> Self {
        Self::new(scope, intent.unwrap_or(normalized_statement))
    }

    /// The tables the statement reads. Default: none.
    #[must_use]
    pub fn with_tables(mut self, tables: &'a [TableName]) -> Self {
        self.tables = tables;
        self
    }

    /// The literal values of the statement. Default: none.
    #[must_use]
    pub fn with_literals(mut self, literals: &'a [Literal]) -> Self {
        self.literals = literals;
        self
    }

    /// Bytes a match must carry equal whatever the guards, like the scope: the caller's own
    /// conditions (the wire form of the answer, the statement's columns). Default: none.
    #[must_use]
    pub fn with_exact(mut self, exact: &'a [u8]) -> Self {
        self.exact = exact;
        self
    }

    /// A threshold for this request only (the `semantic` hint's threshold). Default: the tier's.
    #[must_use]
    pub fn with_threshold(mut self, threshold: CosineSimilarity) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// The text that is embedded.
    pub fn text(&self) -> &str {
        self.text
    }

    /// The partition this request belongs to under `guards`.
    fn partition(&self, guards: Guards) -> u128 {
        guards.partition(self.scope, self.exact, self.tables, self.literals, self.text)
    }
}

/// A similarity hit: the stored result, how similar its text was, and that text.
#[derive(Clone)]
pub struct SemanticHit {
    key: CacheKey,
    result: CachedResult,
    similarity: CosineSimilarity,
    matched_text: Arc<str>,
}

impl fmt::Debug for SemanticHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticHit")
            .field("key", &self.key)
            .field("result", &self.result)
            .field("similarity", &self.similarity)
            .field("matched_text_len", &self.matched_text.len())
            .finish()
    }
}

impl SemanticHit {
    /// The key the matched result was stored under.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// The matched result.
    pub fn result(&self) -> &CachedResult {
        &self.result
    }

    /// The cosine similarity between the request's embedding and the matched entry's.
    pub fn similarity(&self) -> CosineSimilarity {
        self.similarity
    }

    /// The text the matched entry was stored with.
    pub fn matched_text(&self) -> &str {
        &self.matched_text
    }
}

/// Counters of the semantic side of the tier, beyond [`TierStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemanticStats {
    /// Similarity lookups that returned a hit.
    pub similarity_hits: u64,
    /// Similarity lookups that returned nothing (no partition, nothing above the threshold,
    /// embedder failure).
    pub similarity_misses: u64,
    /// Embedder calls that failed.
    pub embedder_failures: u64,
    /// Embedder calls that did not finish within the deadline.
    pub embedder_timeouts: u64,
    /// Partitions rebuilt to drop tombstones.
    pub rebuilds: u64,
    /// Partitions (scope × guarded values) that hold an index now.
    pub partitions: u64,
}

/// What one [`SemanticTier::maintain`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Maintenance {
    /// Vectors inserted into HNSW graphs.
    pub indexed: u64,
    /// Partitions rebuilt from their live entries.
    pub rebuilt: u64,
    /// Expired entries tombstoned.
    pub expired: u64,
    /// Empty partitions dropped.
    pub dropped_partitions: u64,
}

/// Builds a [`SemanticTier`]; every setter documents its default.
pub struct SemanticTierBuilder {
    embedder: Arc<dyn Embedder>,
    clock: Arc<dyn Clock>,
    index: IndexConfig,
    guards: Guards,
    threshold: CosineSimilarity,
    max_entries: usize,
    max_bytes: u64,
    embed_deadline: Duration,
    indexing: Indexing,
}

impl fmt::Debug for SemanticTierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticTierBuilder")
            .field("embedder", &self.embedder)
            .field("index", &self.index)
            .field("guards", &self.guards)
            .field("threshold", &self.threshold)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("embed_deadline", &self.embed_deadline)
            .field("indexing", &self.indexing)
            .finish()
    }
}

impl SemanticTierBuilder {
    /// The embedder. Default: [`LocalEmbedder`] of 128 dimensions.
    #[must_use]
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = embedder;
        self
    }

    /// The clock for TTLs. Default: [`SystemClock`].
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Index tuning. Default: [`IndexConfig::default`].
    #[must_use]
    pub fn with_index(mut self, index: IndexConfig) -> Self {
        self.index = index;
        self
    }

    /// Enabled guards. Default: [`Guards::all`].
    #[must_use]
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    /// The similarity threshold of lookups that do not set their own.
    /// Default: [`CosineSimilarity::DEFAULT_THRESHOLD`] (0.80).
    #[must_use]
    pub fn with_threshold(mut self, threshold: CosineSimilarity) -> Self {
        self.threshold = threshold;
        self
    }

    /// Most entries held; the oldest are evicted first. Default: 100 000.
    #[must_use]
    pub fn with_max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries;
        self
    }

    /// Most bytes held (results, texts and vectors); the oldest are evicted first. A single
    /// entry above it is rejected. Default: 256 MiB.
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The longest a lookup or insert waits for the embedder; past it the lookup is a miss.
    /// Default: 200 ms.
    #[must_use]
    pub fn with_embed_deadline(mut self, deadline: Duration) -> Self {
        self.embed_deadline = deadline;
        self
    }

    /// Who builds graphs and rebuilds partitions. Default: [`Indexing::Background`].
    #[must_use]
    pub fn with_indexing(mut self, indexing: Indexing) -> Self {
        self.indexing = indexing;
        self
    }

    /// Checks the settings and builds the tier (starting its indexer thread, if background).
    pub fn build(self) -> Result<SemanticTier, Error> {
        self.index.validate()?;
        if self.max_entries == 0 || self.max_bytes == 0 {
            return Err(Error::config("max entries and max bytes must be above zero"));
        }
        if self.embed_deadline.is_zero() {
            return Err(Error::config("embed deadline must be above zero"));
        }
        let dim = self.embedder.dimension();
        if dim == 0 {
            return Err(Error::config("embedder dimension must be at least 1"));
        }
        let (wake, rx) = mpsc::sync_channel(1);
        let inner = Arc::new(Inner {
            embedder: self.embedder,
            clock: self.clock,
            index: self.index,
            guards: self.guards,
            threshold: self.threshold,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            embed_deadline: self.embed_deadline,
            dim,
            book: Mutex::new(Book::default()),
            partitions: RwLock::new(HashMap::new()),
            by_text: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            wake: Mutex::new(None),
            last_warn: Mutex::new(None),
            next_sweep: Mutex::new(SystemTime::UNIX_EPOCH),
        });
        if self.indexing == Indexing::Background {
            spawn_indexer(&inner, wake, rx);
        }
        Ok(SemanticTier { inner })
    }
}

fn text_digest(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

fn spawn_indexer(inner: &Arc<Inner>, wake: SyncSender<()>, rx: Receiver<()>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new().name("strata-l3-indexer".into()).spawn(move || loop {
        match rx.recv_timeout(IDLE_WAKE) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        match weak.upgrade() {
            Some(inner) => {
                inner.maintain();
            }
            None => return,
        }
    });
    match spawned {
        Ok(_) => *inner.wake.lock().unwrap_or_else(PoisonError::into_inner) = Some(wake),
        Err(err) => {
            tracing::warn!(error = %err, "strata l3 could not start its indexer thread; indexing is manual")
        }
    }
}

/// One stored entry; shared by the key map, the eviction queue and the partition's index.
struct Entry {
    key: CacheKey,
    value: CachedResult,
    text: Arc<str>,
    /// `None` for entries stored through [`CacheTier::put`], which have no text to embed.
    partition: Option<u128>,
    tables: Vec<TableName>,
    weight: u64,
    dead: AtomicBool,
}

impl Payload for Arc<Entry> {
    #[inline]
    fn is_live(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    fn expires_at_nanos(&self) -> u64 {
        nanos(self.value.expires_at())
    }
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[derive(Default)]
struct Book {
    keys: HashMap<KeyDigest, Arc<Entry>>,
    fifo: VecDeque<Arc<Entry>>,
    by_table: HashMap<TableName, HashSet<KeyDigest>>,
    invalidated_at: HashMap<TableName, SystemTime>,
    bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    rejections: AtomicU64,
    collisions: AtomicU64,
    similarity_hits: AtomicU64,
    similarity_misses: AtomicU64,
    embedder_failures: AtomicU64,
    embedder_timeouts: AtomicU64,
    rebuilds: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why an entry was tombstoned, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Death {
    Evicted,
    Expired,
    Removed,
}

type PartitionIndex = Arc<Index<Arc<Entry>>>;

struct Inner {
    embedder: Arc<dyn Embedder>,
    clock: Arc<dyn Clock>,
    index: IndexConfig,
    guards: Guards,
    threshold: CosineSimilarity,
    max_entries: usize,
    max_bytes: u64,
    embed_deadline: Duration,
    dim: usize,
    book: Mutex<Book>,
    partitions: RwLock<HashMap<u128, PartitionIndex>>,
    /// The entry stored under each (partition, text digest): a repeated question is answered
    /// exactly, without the approximate graph search.
    by_text: RwLock<HashMap<(u128, u64), Arc<Entry>>>,
    counters: Counters,
    wake: Mutex<Option<SyncSender<()>>>,
    last_warn: Mutex<Option<Instant>>,
    next_sweep: Mutex<SystemTime>,
}

impl Inner {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn partition(&self, id: u128) -> Option<PartitionIndex> {
        self.partitions.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    fn wake_indexer(&self) {
        if let Some(wake) = self.wake.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            // A full channel means a wake-up is pending already.
            let _ = wake.try_send(());
        }
    }

    fn warn_embedder(&self, what: &str, detail: &dyn fmt::Display) {
        let mut last = self.last_warn.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(target: "strata::l3", detail = %detail, "semantic tier embedder {what}; lookups miss");
        }
    }

    /// Embeds `text` within the deadline, as a unit vector; `None` on any failure.
    async fn embed(&self, text: &str) -> Option<Vec<f32>> {
        let texts = [text];
        let call = self.embedder.embed(&texts);
        let answer = match tokio::time::timeout(self.embed_deadline, call).await {
            Ok(answer) => answer,
            Err(_) => {
                bump(&self.counters.embedder_timeouts);
                self.warn_embedder("timed out", &format_args!("{:?}", self.embed_deadline));
                return None;
            }
        };
        let mut vector = match answer.map(|mut v| v.pop()) {
            Ok(Some(v)) => v,
            Ok(None) => {
                bump(&self.counters.embedder_failures);
                self.warn_embedder("failed", &"no vector");
                return None;
            }
            Err(err) => {
                bump(&self.counters.embedder_failures);
                self.warn_embedder("failed", &err);
                return None;
            }
        };
        if vector.len() != self.dim || !normalize(&mut vector) {
            bump(&self.counters.embedder_failures);
            self.warn_embedder("failed", &"wrong length, zero or non-finite vector");
            return None;
        }
        Some(vector)
    }

    /// Tombstones `entry` if it is live, with the book locked.
    fn kill(&self, book: &mut Book, entry: &Arc<Entry>, death: Death) {
        if entry.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        book.bytes = book.bytes.saturating_sub(entry.weight);
        let digest = entry.key.digest();
        if book.keys.get(&digest).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            book.keys.remove(&digest);
            for table in &entry.tables {
                if let Some(set) = book.by_table.get_mut(table) {
                    set.remove(&digest);
                    if set.is_empty() {
                        book.by_table.remove(table);
                    }
                }
            }
        }
        if let Some(partition) = entry.partition {
            let text_key = (partition, text_digest(&entry.text));
            let mut by_text = self.by_text.write().unwrap_or_else(PoisonError::into_inner);
            if by_text.get(&text_key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                by_text.remove(&text_key);
            }
            drop(by_text);
            if let Some(index) = self.partition(partition) {
                index.note_dead();
            }
        }
        match death {
            Death::Evicted => bump(&self.counters.evictions),
            Death::Expired => bump(&self.counters.expirations),
            Death::Removed => {}
        }
    }

    /// Stores an entry (replacing one under the same key) and evicts down to capacity.
    fn store(&self, entry: Entry, vector: Option<&[f32]>) -> PutOutcome {
        let now = self.clock.now();
        if entry.value.is_expired_at(now) {
            bump(&self.counters.rejections);
            return PutOutcome::Rejected(Rejection::Expired);
        }
        if entry.weight > self.max_bytes {
            bump(&self.counters.rejections);
            return PutOutcome::Rejected(Rejection::TooLarge {
                weight_bytes: entry.weight,
                limit_bytes: self.max_bytes,
            });
        }
        let entry = Arc::new(entry);
        let mut book = self.book();
        // A result filled before one of its tables changed must not enter after the change.
        let stale = entry
            .tables
            .iter()
            .any(|t| book.invalidated_at.get(t).is_some_and(|at| entry.value.created_at() < *at));
        if stale {
            drop(book);
            bump(&self.counters.rejections);
            return PutOutcome::Rejected(Rejection::Expired);
        }
        let digest = entry.key.digest();
        if let Some(old) = book.keys.get(&digest).cloned() {
            self.kill(&mut book, &old, Death::Removed);
        }
        book.keys.insert(digest, entry.clone());
        for table in &entry.tables {
            book.by_table.entry(table.clone()).or_default().insert(digest);
        }
        book.fifo.push_back(entry.clone());
        book.bytes += entry.weight;
        if let (Some(partition), Some(vector)) = (entry.partition, vector) {
            let index = match self.partition(partition) {
                Some(index) => index,
                None => self
                    .partitions
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(partition)
                    .or_insert_with(|| Arc::new(Index::new(self.dim, self.index.clone())))
                    .clone(),
            };
            index.insert(vector, entry.clone());
            self.by_text
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((partition, text_digest(&entry.text)), entry.clone());
        }
        while book.keys.len() > self.max_entries || book.bytes > self.max_bytes {
            match book.fifo.pop_front() {
                Some(victim) => self.kill(&mut book, &victim, Death::Evicted),
                None => break,
            }
        }
        if book.fifo.len() > 2 * book.keys.len() + 1024 {
            book.fifo.retain(|e| e.is_live());
        }
        drop(book);
        bump(&self.counters.inserts);
        self.wake_indexer();
        PutOutcome::Stored
    }

    fn get_exact(&self, key: &CacheKey) -> Option<CachedResult> {
        let mut book = self.book();
        let Some(entry) = book.keys.get(&key.digest()).cloned() else {
            bump(&self.counters.misses);
            return None;
        };
        if entry.key.canonical() != key.canonical() {
            bump(&self.counters.collisions);
            bump(&self.counters.misses);
            return None;
        }
        if entry.value.is_expired_at(self.clock.now()) {
            self.kill(&mut book, &entry, Death::Expired);
            bump(&self.counters.misses);
            return None;
        }
        bump(&self.counters.hits);
        Some(entry.value.clone())
    }

    fn maintain(&self) -> Maintenance {
        let mut report = Maintenance::default();
        let now = self.clock.now();
        let sweep = {
            let mut next = self.next_sweep.lock().unwrap_or_else(PoisonError::into_inner);
            if now >= *next {
                *next = now + SWEEP_EVERY;
                true
            } else {
                false
            }
        };
        if sweep {
            let mut book = self.book();
            let expired: Vec<Arc<Entry>> =
                book.keys.values().filter(|e| e.value.is_expired_at(now)).cloned().collect();
            for entry in &expired {
                self.kill(&mut book, entry, Death::Expired);
            }
            report.expired = expired.len() as u64;
        }
        let partitions: Vec<(u128, PartitionIndex)> = self
            .partitions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut empty = Vec::new();
        for (id, index) in partitions {
            while index.needs_maintenance() {
                let done = index.maintain();
                report.indexed += done.indexed as u64;
                if done.rebuilt {
                    report.rebuilt += 1;
                    bump(&self.counters.rebuilds);
                }
            }
            if index.counts().0 == 0 {
                empty.push(id);
            }
        }
        if !empty.is_empty() {
            // Lock order: book, then partitions (as in `store`), so no insert is adding to a
            // partition while it is dropped.
            let _book = self.book();
            let mut partitions = self.partitions.write().unwrap_or_else(PoisonError::into_inner);
            for id in empty {
                if partitions.get(&id).is_some_and(|index| index.counts().0 == 0) {
                    partitions.remove(&id);
                    report.dropped_partitions += 1;
                }
            }
        }
        report
    }
}

/// The semantic cache tier (L3).
///
/// - Exact-key access through [`CacheTier`]: `get`, `put` (exact-key entries only: they have no
///   text to embed), `remove`, `invalidate_tables`, `clear`, `stats`.
/// - Similarity lookups through [`lookup`](Self::lookup) for entries stored with
///   [`insert`](Self::insert), which are also reachable by exact key.
///
/// Entries live in one hybrid index per *partition*: the scope (database, role, settings
/// digest) plus whatever the enabled [`Guards`] compare. Evicted, expired, removed and
/// invalidated entries are tombstoned, filtered during searches, and dropped when their
/// partition is rebuilt in the background.
#[derive(Clone)]
pub struct SemanticTier {
    inner: Arc<Inner>,
}

impl fmt::Debug for SemanticTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("SemanticTier")
            .field("embedder", &i.embedder)
            .field("guards", &i.guards)
            .field("threshold", &i.threshold)
            .field("max_entries", &i.max_entries)
            .field("max_bytes", &i.max_bytes)
            .field("index", &i.index)
            .finish_non_exhaustive()
    }
}

impl SemanticTier {
    /// Starts a builder with the defaults each setter documents.
    pub fn builder() -> SemanticTierBuilder {
        SemanticTierBuilder {
            embedder: Arc::new(LocalEmbedder::default()),
            clock: Arc::new(SystemClock),
            index: IndexConfig::default(),
            guards: Guards::all(),
            threshold: CosineSimilarity::DEFAULT_THRESHOLD,
            max_entries: 100_000,
            max_bytes: 256 << 20,
            embed_deadline: Duration::from_millis(200),
            indexing: Indexing::Background,
        }
    }

    /// The stored entry most similar to `request` that passes every guard, if its similarity
    /// reaches the threshold. Never fails: an embedder error or timeout is a miss.
    pub async fn lookup(&self, request: &SemanticRequest<'_>) -> Option<SemanticHit> {
        let inner = &self.inner;
        let miss = || {
            bump(&inner.counters.similarity_misses);
            None
        };
        let partition = request.partition(inner.guards);
        // No partition means nothing could match: answer without calling the embedder.
        let Some(index) = inner.partition(partition) else { return miss() };
        let now = inner.clock.now();
        let accept = |e: &Arc<Entry>| e.is_live() && !e.value.is_expired_at(now);
        let same_text = inner
            .by_text
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(partition, text_digest(request.text)))
            .filter(|e| accept(e) && *e.text == *request.text)
            .cloned();
        let (entry, similarity) = match same_text {
            // The same text embeds to the same vector: similarity 1, no embedder call needed.
            Some(entry) => (entry, CosineSimilarity::from_dot(1.0)),
            None => {
                let Some(vector) = inner.embed(request.text).await else { return miss() };
                let Some((entry, dot)) = index.search(&vector, nanos(now), &accept) else { return miss() };
                (entry, CosineSimilarity::from_dot(dot))
            }
        };
        if similarity < request.threshold.unwrap_or(inner.threshold) {
            return miss();
        }
        bump(&inner.counters.similarity_hits);
        Some(SemanticHit {
            key: entry.key.clone(),
            result: entry.value.clone(),
            similarity,
            matched_text: entry.text.clone(),
        })
    }

    /// Stores `value` under `key` and indexes the request's text for similarity lookups.
    ///
    /// The guarded table set is the request's; table invalidation reaches the entry through
    /// the request's tables and the result's dependencies. Never fails: an embedder failure rejects the entry as
    /// [`Rejection::Degraded`]. Returns once the entry is findable; the graph is built later.
    pub async fn insert(
        &self,
        request: &SemanticRequest<'_>,
        key: CacheKey,
        value: CachedResult,
    ) -> PutOutcome {
        let inner = &self.inner;
        let Some(vector) = inner.embed(request.text).await else {
            bump(&inner.counters.rejections);
            return PutOutcome::Rejected(Rejection::Degraded);
        };
        let partition = request.partition(inner.guards);
        // Invalidation follows both the tables the caller named and the result's dependencies.
        let mut tables: Vec<TableName> = request.tables.to_vec();
        tables.extend(value.dependencies().iter().map(|d| d.table.clone()));
        tables.sort_unstable();
        tables.dedup();
        let weight = value.weight_bytes()
            + request.text.len() as u64
            + (inner.dim * std::mem::size_of::<f32>()) as u64 * 2
            + key.canonical().len() as u64;
        let entry = Entry {
            key,
            value,
            text: request.text.into(),
            partition: Some(partition),
            tables,
            weight,
            dead: AtomicBool::new(false),
        };
        inner.store(entry, Some(&vector))
    }

    /// Runs maintenance now: tombstones expired entries (at most once a second of the tier's
    /// clock), indexes pending vectors, rebuilds partitions whose tombstones passed their share,
    /// and drops empty partitions. The background indexer calls this; so may tests and tools.
    pub fn maintain(&self) -> Maintenance {
        self.inner.maintain()
    }

    /// Counters of the semantic side.
    pub fn semantic_stats(&self) -> SemanticStats {
        let c = &self.inner.counters;
        SemanticStats {
            similarity_hits: c.similarity_hits.load(Ordering::Relaxed),
            similarity_misses: c.similarity_misses.load(Ordering::Relaxed),
            embedder_failures: c.embedder_failures.load(Ordering::Relaxed),
            embedder_timeouts: c.embedder_timeouts.load(Ordering::Relaxed),
            rebuilds: c.rebuilds.load(Ordering::Relaxed),
            partitions: self.inner.partitions.read().unwrap_or_else(PoisonError::into_inner).len() as u64,
        }
    }

    /// Tombstoned entries still held by indexes, summed over partitions (they go at rebuild).
    pub fn pending_tombstones(&self) -> u64 {
        let partitions = self.inner.partitions.read().unwrap_or_else(PoisonError::into_inner);
        partitions.values().map(|index| index.counts().1 as u64).sum()
    }
}

#[async_trait]
impl CacheTier for SemanticTier {
    fn name(&self) -> &str {
        "l3"
    }

    fn get_now(&self, key: &CacheKey) -> NowLookup {
        match self.inner.get_exact(key) {
            Some(value) => NowLookup::Hit(value),
            None => NowLookup::Miss,
        }
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<CachedResult>, strata_core::Error> {
        Ok(self.inner.get_exact(key))
    }

    async fn put(&self, key: &CacheKey, value: CachedResult) -> Result<PutOutcome, strata_core::Error> {
        let tables: Vec<TableName> = value.dependencies().iter().map(|d| d.table.clone()).collect();
        let weight = value.weight_bytes() + key.canonical().len() as u64;
        let entry = Entry {
            key: key.clone(),
            value,
            text: "".into(),
            partition: None,
            tables,
            weight,
            dead: AtomicBool::new(false),
        };
        Ok(self.inner.store(entry, None))
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), strata_core::Error> {
        let inner = &self.inner;
        let mut book = inner.book();
        if let Some(entry) = book.keys.get(&key.digest()).cloned() {
            if entry.key.canonical() == key.canonical() {
                inner.kill(&mut book, &entry, Death::Removed);
            }
        }
        drop(book);
        inner.wake_indexer();
        Ok(())
    }

    async fn invalidate_tables(&self, tables: &[TableName]) -> Result<(), strata_core::Error> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut book = inner.book();
        for table in tables {
            book.invalidated_at.insert(table.clone(), now);
            let digests = book.by_table.remove(table).unwrap_or_default();
            for digest in digests {
                if let Some(entry) = book.keys.get(&digest).cloned() {
                    inner.kill(&mut book, &entry, Death::Removed);
                }
            }
        }
        drop(book);
        inner.wake_indexer();
        Ok(())
    }

    async fn clear(&self) -> Result<(), strata_core::Error> {
        let inner = &self.inner;
        let mut book = inner.book();
        let all: Vec<Arc<Entry>> = book.keys.values().cloned().collect();
        for entry in &all {
            entry.dead.store(true, Ordering::Release);
        }
        book.keys.clear();
        book.fifo.clear();
        book.by_table.clear();
        book.bytes = 0;
        inner.partitions.write().unwrap_or_else(PoisonError::into_inner).clear();
        inner.by_text.write().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(())
    }

    fn stats(&self) -> TierStats {
        let c = &self.inner.counters;
        let (entries, bytes) = {
            let book = self.inner.book();
            (book.keys.len() as u64, book.bytes)
        };
        let mut s = TierStats::default();
        s.hits = c.hits.load(Ordering::Relaxed) + c.similarity_hits.load(Ordering::Relaxed);
        s.misses = c.misses.load(Ordering::Relaxed) + c.similarity_misses.load(Ordering::Relaxed);
        s.inserts = c.inserts.load(Ordering::Relaxed);
        s.evictions = c.evictions.load(Ordering::Relaxed);
        s.expirations = c.expirations.load(Ordering::Relaxed);
        s.rejections = c.rejections.load(Ordering::Relaxed);
        s.collisions = c.collisions.load(Ordering::Relaxed);
        s.errors = c.embedder_failures.load(Ordering::Relaxed) + c.embedder_timeouts.load(Ordering::Relaxed);
        s.entries = entries;
        s.bytes = bytes;
        s.capacity_bytes = self.inner.max_bytes;
        s
    }
}
