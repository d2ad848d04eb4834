//! A read-only copy of an hnsw_rs graph in flat arrays, searched without locks or allocation
//! per visited node.
//!
//! hnsw_rs builds good graphs but its search is slow for this use: it allocates per visited
//! node, hashes visited ids, descends the upper layers one hop per layer (so the bottom-layer
//! search starts far away), and stops early only without a filter. After each indexing pass the
//! indexer copies the graph's adjacency into this structure; lookups search the copy with a
//! greedy descent to a local minimum on every upper layer and a beam search on the bottom layer,
//! skipping rejected (tombstoned, expired) nodes *during* the search: they are traversed but
//! never returned.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use hnsw_rs::prelude::Hnsw;

use crate::index::UnitDot;
use crate::similarity::dot;

/// A distance with a total order, for the heaps.
#[derive(Clone, Copy, PartialEq)]
struct Dist(f32);

impl Eq for Dist {}

impl PartialOrd for Dist {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dist {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Adjacency of a graph over slots `0..covered`.
pub(crate) struct FlatGraph {
    covered: usize,
    entry: u32,
    /// Bottom layer in compressed rows: neighbours of slot `s` are `edges[offsets[s]..offsets[s + 1]]`.
    offsets: Vec<u32>,
    edges: Vec<u32>,
    /// Upper layers, index 0 is layer 1.
    upper: Vec<HashMap<u32, Box<[u32]>>>,
}

impl FlatGraph {
    /// Copies `graph`, whose points are slots below `covered`. `None` if the graph is empty.
    pub(crate) fn copy(graph: &Hnsw<'static, f32, UnitDot>, covered: usize) -> Option<Self> {
        let mut bottom: Vec<Vec<u32>> = vec![Vec::new(); covered];
        let mut upper: Vec<HashMap<u32, Box<[u32]>>> = Vec::new();
        let mut entry: Option<(u8, u32)> = None;
        for point in graph.get_point_indexation() {
            let slot = point.get_origin_id();
            if slot >= covered {
                continue;
            }
            let slot32 = slot as u32;
            let level = point.get_point_id().0;
            if entry.is_none_or(|(l, _)| level > l) {
                entry = Some((level, slot32));
            }
            for (layer, list) in point.get_neighborhood_id().into_iter().enumerate() {
                let ids: Vec<u32> =
                    list.iter().map(|n| n.d_id).filter(|&d| d < covered).map(|d| d as u32).collect();
                if layer == 0 {
                    bottom[slot] = ids;
                } else if !ids.is_empty() {
                    while upper.len() < layer {
                        upper.push(HashMap::new());
                    }
                    upper[layer - 1].insert(slot32, ids.into_boxed_slice());
                }
            }
        }
        let (_, entry) = entry?;
        let mut offsets = Vec::with_capacity(covered + 1);
        let mut edges = Vec::with_capacity(bottom.iter().map(Vec::len).sum());
        offsets.push(0);
        for list in &bottom {
            edges.extend_from_slice(list);
            offsets.push(edges.len() as u32);
        }
        Some(Self { covered, entry, offsets, edges, upper })
    }

    /// Slots below this are in the copy.
    pub(crate) fn covered(&self) -> usize {
        self.covered
    }

    /// The accepted slot nearest to `query` and its dot product. `vector(slot)` reads a stored
    /// unit vector; `accept(slot)` says whether the slot may be returned.
    pub(crate) fn search<'v>(
        &self,
        query: &[f32],
        ef: usize,
        vector: &dyn Fn(usize) -> &'v [f32],
        accept: &dyn Fn(usize) -> bool,
    ) -> Option<(usize, f32)> {
        let dist = |slot: u32| 1.0 - dot(query, vector(slot as usize));
        let mut current = self.entry;
        let mut current_d = dist(current);
        // Greedy descent to a local minimum on every upper layer.
        for layer in self.upper.iter().rev() {
            loop {
                let mut moved = false;
                if let Some(neighbours) = layer.get(&current) {
                    for &n in neighbours.iter() {
                        let d = dist(n);
                        if d < current_d {
                            current = n;
                            current_d = d;
                            moved = true;
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        // Beam search on the bottom layer; rejected nodes guide the search but are not returned.
        let ef = ef.max(1);
        let mut visited = vec![0u64; self.covered.div_ceil(64)];
        let mut mark = |slot: u32| {
            let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
            let seen = visited[word] & bit != 0;
            visited[word] |= bit;
            seen
        };
        mark(current);
        let mut best: Option<(usize, f32)> = None;
        let consider = |slot: u32, d: f32, best: &mut Option<(usize, f32)>| {
            if best.is_none_or(|(_, b)| d < b) && accept(slot as usize) {
                *best = Some((slot as usize, d));
            }
        };
        consider(current, current_d, &mut best);
        let mut candidates = BinaryHeap::with_capacity(ef * 4);
        let mut results = BinaryHeap::with_capacity(ef + 1);
        candidates.push(std::cmp::Reverse((Dist(current_d), current)));
        results.push((Dist(current_d), current));
        while let Some(std::cmp::Reverse((Dist(d), slot))) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|(Dist(worst), _)| d > *worst) {
                break;
            }
            let s = slot as usize;
            let (from, to) = (self.offsets[s] as usize, self.offsets[s + 1] as usize);
            for &n in &self.edges[from..to] {
                if mark(n) {
                    continue;
                }
                let dn = dist(n);
                let worst = results.peek().map_or(f32::INFINITY, |(Dist(w), _)| *w);
                if results.len() < ef || dn < worst {
                    candidates.push(std::cmp::Reverse((Dist(dn), n)));
                    results.push((Dist(dn), n));
                    if results.len() > ef {
                        results.pop();
                    }
                }
                consider(n, dn, &mut best);
            }
        }
        best.map(|(slot, d)| (slot, 1.0 - d))
    }
}
