//! The hybrid vector index: an exact scan below a size, an HNSW graph above it, rebuilt
//! instead of deleted from.
//!
//! The graph is built by hnsw_rs and searched through a flat copy (see `flat.rs`).
//!
//! hnsw_rs cannot delete points, so an index holds *generations*. A generation is an
//! append-only store of vectors (chunked, so appending never copies what is stored) plus, once
//! the store is large enough, an HNSW graph over a prefix of it. Lookups search the graph for
//! the indexed prefix and scan the unindexed tail exactly, so a fresh insert is findable at
//! once while the graph catches up in the background. Dead entries (tombstones) are skipped
//! by a filter *during* the graph search and the scan. When they pass a share of the store,
//! a new generation is built from the live entries off the query path and swapped in under a
//! short write lock; lookups that hold the old generation finish on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use hnsw_rs::prelude::{Distance, FilterT, Hnsw};

use crate::flat::FlatGraph;
use crate::similarity::{dot, normalize};
use crate::{CosineSimilarity, Error};

/// Slots per chunk of a store. A chunk's vector grows by doubling up to this many slots, so the
/// largest copy an append can cause is one chunk, and small partitions stay small.
const CHUNK_SLOTS: usize = 1024;
/// How many vectors the indexer copies out of the store per step; between steps it releases
/// the store lock so inserts are never held up by graph building.
const INDEX_BATCH: usize = 256;
/// Layers of the HNSW graph (hnsw_rs caps it at 16).
const MAX_LAYERS: usize = 16;
/// The flat copy of a graph is refreshed once this many indexed vectors are missing from it;
/// until then they are scanned exactly (a few tens of microseconds).
const COPY_EVERY: usize = 2048;

/// Tuning of the hybrid index. Every setter documents its default.
///
/// The defaults were chosen on this crate's structured test data (a Gaussian mixture and local
/// embeddings of generated questions): recall@1 of near-duplicates >= 0.99 at 100k entries.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexConfig {
    max_connections: usize,
    ef_construction: usize,
    ef_search: usize,
    exact_below: usize,
    rebuild_dead_share: f32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 64,
            ef_search: 128,
            exact_below: 8192,
            rebuild_dead_share: 0.25,
        }
    }
}

impl IndexConfig {
    /// Neighbours kept per node and layer (HNSW's `M`), 2..=255. Default: 16.
    #[must_use]
    pub fn with_max_connections(mut self, m: usize) -> Self {
        self.max_connections = m;
        self
    }

    /// Candidates explored while inserting (HNSW's `ef_construction`), at least 1. Default: 64.
    #[must_use]
    pub fn with_ef_construction(mut self, ef: usize) -> Self {
        self.ef_construction = ef;
        self
    }

    /// Candidates explored per lookup on the bottom layer (HNSW's `ef`), at least 1. Default: 128.
    #[must_use]
    pub fn with_ef_search(mut self, ef: usize) -> Self {
        self.ef_search = ef;
        self
    }

    /// Below this many vectors a partition is scanned exactly and has no graph; at or above it
    /// a graph is built in the background. Default: 8192 (around where a graph lookup becomes
    /// faster than a scan of 128-dimensional vectors; see the crate's bench).
    #[must_use]
    pub fn with_exact_below(mut self, entries: usize) -> Self {
        self.exact_below = entries;
        self
    }

    /// The share of dead (evicted, expired, invalidated) entries in a partition above which it
    /// is rebuilt from its live entries, in `0.0 < share < 1.0`. Default: 0.25.
    #[must_use]
    pub fn with_rebuild_dead_share(mut self, share: f32) -> Self {
        self.rebuild_dead_share = share;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(2..=255).contains(&self.max_connections) {
            return Err(Error::config(format!(
                "max connections must be within 2..=255, got {}",
                self.max_connections
            )));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err(Error::config("ef_construction and ef_search must be at least 1"));
        }
        if !(self.rebuild_dead_share > 0.0 && self.rebuild_dead_share < 1.0) {
            return Err(Error::config(format!(
                "rebuild dead share must be within 0..1 (exclusive), got {}",
                self.rebuild_dead_share
            )));
        }
        Ok(())
    }
}

/// Cosine distance for unit vectors: `1 - a·b`, never negative (hnsw_rs asserts that).
#[derive(Clone, Copy, Default)]
pub(crate) struct UnitDot;

impl Distance<f32> for UnitDot {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

type Graph = Hnsw<'static, f32, UnitDot>;

/// What an index stores next to each vector.
pub(crate) trait Payload: Clone + Send + Sync + 'static {
    /// False once the entry is tombstoned; tombstones are permanent.
    fn is_live(&self) -> bool;

    /// When the entry expires, in nanoseconds since the Unix epoch; `u64::MAX` for never.
    fn expires_at_nanos(&self) -> u64;
}

/// An append-only, chunked store of unit vectors and their payloads.
struct Store<P> {
    dim: usize,
    vectors: Vec<Vec<f32>>,
    payloads: Vec<Vec<P>>,
    len: usize,
    /// The earliest expiry of any entry ever stored here.
    min_expiry: u64,
    /// Set when a rebuild replaced this generation: appends must go to the new one.
    retired: bool,
}

impl<P: Payload> Store<P> {
    fn new(dim: usize) -> Self {
        Self { dim, vectors: Vec::new(), payloads: Vec::new(), len: 0, min_expiry: u64::MAX, retired: false }
    }

    fn push(&mut self, vector: &[f32], payload: P) {
        if self.len.is_multiple_of(CHUNK_SLOTS) {
            self.vectors.push(Vec::new());
            self.payloads.push(Vec::new());
        }
        self.min_expiry = self.min_expiry.min(payload.expires_at_nanos());
        if let (Some(v), Some(p)) = (self.vectors.last_mut(), self.payloads.last_mut()) {
            v.extend_from_slice(vector);
            p.push(payload);
            self.len += 1;
        }
    }

    #[inline]
    fn vector(&self, slot: usize) -> &[f32] {
        let (c, o) = (slot / CHUNK_SLOTS, slot % CHUNK_SLOTS);
        &self.vectors[c][o * self.dim..(o + 1) * self.dim]
    }

    #[inline]
    fn payload(&self, slot: usize) -> &P {
        &self.payloads[slot / CHUNK_SLOTS][slot % CHUNK_SLOTS]
    }

    /// The best accepted slot in `from..self.len` by exact scan, if better than `best`.
    fn scan(
        &self,
        query: &[f32],
        from: usize,
        mut best: Option<(usize, f32)>,
        accept: &dyn Fn(&P) -> bool,
    ) -> Option<(usize, f32)> {
        let dim = self.dim;
        let mut slot = from - from % CHUNK_SLOTS;
        for (chunk, payloads) in self.vectors.iter().zip(&self.payloads).skip(from / CHUNK_SLOTS) {
            for (vector, payload) in chunk.chunks_exact(dim).zip(payloads) {
                if slot >= from {
                    let d = dot(query, vector);
                    if best.is_none_or(|(_, b)| d > b) && accept(payload) {
                        best = Some((slot, d));
                    }
                }
                slot += 1;
            }
        }
        best
    }
}

struct Generation<P> {
    store: RwLock<Store<P>>,
    graph: RwLock<Option<Arc<Graph>>>,
    /// The copy of the graph lookups search; see [`FlatGraph`].
    flat: RwLock<Option<Arc<FlatGraph>>>,
    /// Slots below this are in the graph, or were dead when the indexer reached them.
    indexed: AtomicUsize,
    dead: AtomicUsize,
}

impl<P: Payload> Generation<P> {
    fn new(dim: usize) -> Self {
        Self {
            store: RwLock::new(Store::new(dim)),
            graph: RwLock::new(None),
            flat: RwLock::new(None),
            indexed: AtomicUsize::new(0),
            dead: AtomicUsize::new(0),
        }
    }

    fn store(&self) -> RwLockReadGuard<'_, Store<P>> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn graph(&self) -> Option<Arc<Graph>> {
        self.graph.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn flat(&self) -> Option<Arc<FlatGraph>> {
        self.flat.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Maintained {
    pub(crate) indexed: usize,
    pub(crate) rebuilt: bool,
}

/// A hybrid index over payloads `P`; see the module docs.
pub(crate) struct Index<P> {
    dim: usize,
    config: IndexConfig,
    current: RwLock<Arc<Generation<P>>>,
    /// One indexer or rebuilder at a time per index.
    maintenance: Mutex<()>,
}

impl<P: Payload> Index<P> {
    pub(crate) fn new(dim: usize, config: IndexConfig) -> Self {
        Self {
            dim,
            config,
            current: RwLock::new(Arc::new(Generation::new(dim))),
            maintenance: Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<Generation<P>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Appends a unit vector of the index's dimension. Takes the store's write lock for one
    /// copy of the vector; never touches the graph.
    pub(crate) fn insert(&self, vector: &[f32], payload: P) {
        debug_assert_eq!(vector.len(), self.dim);
        loop {
            let generation = self.current();
            let mut store = generation.store.write().unwrap_or_else(PoisonError::into_inner);
            if store.retired {
                // A rebuild swapped generations after we read `current`; append to the new one.
                continue;
            }
            store.push(vector, payload);
            return;
        }
    }

    /// Counts one more tombstone towards the rebuild threshold.
    pub(crate) fn note_dead(&self) {
        self.current().dead.fetch_add(1, Ordering::Relaxed);
    }

    /// Vectors stored (live or dead) and dead ones, in the current generation.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let generation = self.current();
        let len = generation.store().len;
        (len, generation.dead.load(Ordering::Relaxed).min(len))
    }

    /// Whether the background indexer has work: an unindexed tail above the exact size, or a
    /// rebuild due.
    pub(crate) fn needs_maintenance(&self) -> bool {
        let generation = self.current();
        let len = generation.store().len;
        let dead = generation.dead.load(Ordering::Relaxed).min(len);
        self.rebuild_due(len, dead)
            || (len >= self.config.exact_below && generation.indexed.load(Ordering::Acquire) < len)
    }

    fn rebuild_due(&self, len: usize, dead: usize) -> bool {
        dead > 0 && dead as f32 > self.config.rebuild_dead_share * len as f32
    }

    /// The accepted payload nearest to `query` (a unit vector) and its dot product: the graph for
    /// the indexed prefix (filtered during the search), an exact scan for the rest.
    pub(crate) fn search(
        &self,
        query: &[f32],
        now_nanos: u64,
        accept: &dyn Fn(&P) -> bool,
    ) -> Option<(P, f32)> {
        let generation = self.current();
        let store = generation.store();
        let len = store.len;
        let mut best = None;
        let mut scan_from = 0;
        if let Some(flat) = generation.flat() {
            let covered = flat.covered().min(len);
            let vector = |slot: usize| store.vector(slot);
            let accept_slot = |slot: usize| slot < len && accept(store.payload(slot));
            best = flat.search(query, self.config.ef_search, &vector, &accept_slot);
            scan_from = covered;
        } else if let Some(graph) = generation.graph() {
            let indexed = generation.indexed.load(Ordering::Acquire).min(len);
            if indexed > 0 {
                let filter = |id: &usize| *id < len && accept(store.payload(*id));
                // hnsw_rs stops early only without a filter, and a filter costs about 2.5x; so
                // filter only when something in this generation can be dead or expired.
                let may_reject = generation.dead.load(Ordering::Relaxed) > 0 || now_nanos >= store.min_expiry;
                let filter: Option<&dyn FilterT> = if may_reject { Some(&filter) } else { None };
                let found = graph.search_filter(query, 1, self.config.ef_search, filter);
                best = found
                    .first()
                    .map(|n| n.d_id)
                    .filter(|&slot| slot < len && accept(store.payload(slot)))
                    .map(|slot| (slot, dot(query, store.vector(slot))));
                scan_from = indexed;
            }
        }
        let best = store.scan(query, scan_from, best, accept);
        best.map(|(slot, d)| (store.payload(slot).clone(), d))
    }

    /// The accepted payload nearest to `query` by exact scan of every stored vector.
    pub(crate) fn search_exact(&self, query: &[f32], accept: &dyn Fn(&P) -> bool) -> Option<(P, f32)> {
        let generation = self.current();
        let store = generation.store();
        store.scan(query, 0, None, accept).map(|(slot, d)| (store.payload(slot).clone(), d))
    }

    /// Rebuilds if tombstones passed their share, else indexes the unindexed tail. Runs on the
    /// background indexer (or a caller that wants it done now), never on a lookup.
    pub(crate) fn maintain(&self) -> Maintained {
        let _one_at_a_time = self.maintenance.lock().unwrap_or_else(PoisonError::into_inner);
        let (len, dead) = self.counts();
        if self.rebuild_due(len, dead) {
            self.rebuild();
            return Maintained { indexed: 0, rebuilt: true };
        }
        Maintained { indexed: self.index_pending(&self.current()), rebuilt: false }
    }

    fn new_graph(&self, expected: usize) -> Graph {
        Hnsw::new(
            self.config.max_connections,
            expected.max(1024),
            MAX_LAYERS,
            self.config.ef_construction,
            UnitDot,
        )
    }

    /// Inserts the generation's unindexed tail into its graph, then refreshes the flat copy
    /// lookups search if enough is missing from it. Returns how many vectors it inserted.
    fn index_pending(&self, generation: &Generation<P>) -> usize {
        let inserted = self.grow_graph(generation);
        let indexed = generation.indexed.load(Ordering::Acquire);
        let copied = generation.flat().map_or(0, |f| f.covered());
        if indexed > copied && (copied == 0 || indexed - copied >= COPY_EVERY) {
            if let Some(graph) = generation.graph() {
                let flat = FlatGraph::copy(&graph, indexed).map(Arc::new);
                *generation.flat.write().unwrap_or_else(PoisonError::into_inner) = flat;
            }
        }
        inserted
    }

    /// Inserts the generation's unindexed tail into its graph, creating the graph once the
    /// store reaches the exact-scan size. Returns how many vectors it inserted.
    fn grow_graph(&self, generation: &Generation<P>) -> usize {
        let len = generation.store().len;
        if len < self.config.exact_below {
            return 0;
        }
        let graph = match generation.graph() {
            Some(graph) => graph,
            None => {
                let graph = Arc::new(self.new_graph(len * 2));
                *generation.graph.write().unwrap_or_else(PoisonError::into_inner) = Some(graph.clone());
                graph
            }
        };
        let mut inserted = 0;
        let mut batch: Vec<(usize, Vec<f32>)> = Vec::with_capacity(INDEX_BATCH);
        loop {
            let from = generation.indexed.load(Ordering::Acquire);
            batch.clear();
            let to = {
                let store = generation.store();
                let to = store.len.min(from + INDEX_BATCH);
                for slot in from..to {
                    if store.payload(slot).is_live() {
                        batch.push((slot, store.vector(slot).to_vec()));
                    }
                }
                to
            };
            if to == from {
                return inserted;
            }
            for (slot, vector) in &batch {
                graph.insert_slice((vector.as_slice(), *slot));
            }
            inserted += batch.len();
            generation.indexed.store(to, Ordering::Release);
        }
    }

    /// Builds a new generation from the live entries and swaps it in.
    fn rebuild(&self) {
        let old = self.current();
        let fresh = Generation::new(self.dim);
        let snapshot_len = {
            let store = old.store();
            let mut next = fresh.store.write().unwrap_or_else(PoisonError::into_inner);
            for slot in 0..store.len {
                let payload = store.payload(slot);
                if payload.is_live() {
                    next.push(store.vector(slot), payload.clone());
                }
            }
            store.len
        };
        // Index the copy before it becomes visible, so lookups never see a half-built graph.
        self.index_pending(&fresh);
        let mut store = old.store.write().unwrap_or_else(PoisonError::into_inner);
        {
            let mut next = fresh.store.write().unwrap_or_else(PoisonError::into_inner);
            for slot in snapshot_len..store.len {
                let payload = store.payload(slot);
                if payload.is_live() {
                    next.push(store.vector(slot), payload.clone());
                }
            }
        }
        // Entries that died while the copy was made are tombstoned in both generations
        // (tombstones live in the payload), so they count towards the next rebuild.
        let dead = {
            let next = fresh.store();
            (0..next.len).filter(|&slot| !next.payload(slot).is_live()).count()
        };
        fresh.dead.store(dead, Ordering::Relaxed);
        store.retired = true;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
    }
}

/// A public hybrid index of vectors keyed by `u64`, the one [`SemanticTier`](crate::SemanticTier)
/// uses per partition; exposed for benchmarks and tools that bring their own vectors.
///
/// Vectors are L2-normalized on insert; zero and non-finite vectors are refused. Lookups
/// answer by exact scan below [`IndexConfig::with_exact_below`] entries and from an HNSW
/// graph above it, plus an exact scan of vectors not yet in the graph. The graph grows only
/// when [`VectorIndex::build_pending`] runs.
pub struct VectorIndex {
    index: Index<IdPayload>,
    dim: usize,
}

#[derive(Clone, Copy)]
struct IdPayload(u64);

impl Payload for IdPayload {
    fn is_live(&self) -> bool {
        true
    }

    fn expires_at_nanos(&self) -> u64 {
        u64::MAX
    }
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (len, _) = self.index.counts();
        f.debug_struct("VectorIndex")
            .field("dimension", &self.dim)
            .field("len", &len)
            .field("config", &self.index.config)
            .finish()
    }
}

impl VectorIndex {
    /// An empty index of `dimension`-long vectors.
    pub fn new(dimension: usize, config: IndexConfig) -> Result<Self, Error> {
        config.validate()?;
        if dimension == 0 {
            return Err(Error::config("dimension must be at least 1"));
        }
        Ok(Self { index: Index::new(dimension, config), dim: dimension })
    }

    /// Adds a vector under `id`; an error if its length is wrong or it has no direction.
    pub fn insert(&self, id: u64, vector: &[f32]) -> Result<(), Error> {
        let unit = self.unit(vector)?;
        self.index.insert(&unit, IdPayload(id));
        Ok(())
    }

    /// Inserts every vector not yet in the graph (creating it at the exact-scan size);
    /// returns how many were inserted.
    pub fn build_pending(&self) -> usize {
        let mut total = 0;
        while self.index.needs_maintenance() {
            total += self.index.maintain().indexed;
        }
        total
    }

    /// The nearest stored id and its similarity, by the hybrid strategy.
    pub fn search(&self, query: &[f32]) -> Result<Option<(u64, CosineSimilarity)>, Error> {
        let unit = self.unit(query)?;
        Ok(self.index.search(&unit, 0, &|_| true).map(|(p, d)| (p.0, CosineSimilarity::from_dot(d))))
    }

    /// The nearest stored id and its similarity, by exact scan of every vector.
    pub fn search_exact(&self, query: &[f32]) -> Result<Option<(u64, CosineSimilarity)>, Error> {
        let unit = self.unit(query)?;
        Ok(self.index.search_exact(&unit, &|_| true).map(|(p, d)| (p.0, CosineSimilarity::from_dot(d))))
    }

    /// How many vectors the index holds.
    pub fn len(&self) -> usize {
        self.index.counts().0
    }

    /// Whether the index holds no vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unit(&self, vector: &[f32]) -> Result<Vec<f32>, Error> {
        if vector.len() != self.dim {
            return Err(Error::config(format!(
                "vector has {} dimensions, the index {}",
                vector.len(),
                self.dim
            )));
        }
        let mut unit = vector.to_vec();
        if normalize(&mut unit) {
            Ok(unit)
        } else {
            Err(Error::config("vector is zero or not finite"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_scan_and_graph_agree_on_a_small_index() {
        let config = IndexConfig::default().with_exact_below(64);
        let index = VectorIndex::new(8, config).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..300u64 {
            let v: Vec<f32> = (0..8).map(|d| ((i * 7 + d * 13) % 17) as f32 + 0.5).collect();
            index.insert(i, &v).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(index.build_pending() > 0);
        let q: Vec<f32> = (0..8).map(|d| ((5 * 7 + d * 13) % 17) as f32 + 0.5).collect();
        let exact = index.search_exact(&q).unwrap_or_else(|e| panic!("{e}"));
        let hybrid = index.search(&q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exact.map(|(_, s)| s.get() > 0.9999), Some(true));
        assert_eq!(hybrid.map(|(_, s)| s.get() > 0.9999), Some(true));
        assert!(index.insert(1, &[0.0; 8]).is_err(), "zero vectors never enter the index");
        assert!(index.insert(1, &[1.0; 3]).is_err(), "wrong dimension is an error");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(IndexConfig::default().with_max_connections(300).validate().is_err());
        assert!(IndexConfig::default().with_max_connections(1).validate().is_err());
        assert!(IndexConfig::default().with_ef_search(0).validate().is_err());
        assert!(IndexConfig::default().with_rebuild_dead_share(1.0).validate().is_err());
        assert!(IndexConfig::default().validate().is_ok());
    }
}
