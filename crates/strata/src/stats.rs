//! Statistics per query shape and per table, for people asking a running cache why (the proxy's
//! admin console): how often a shape was looked up, where it was answered, why it bypassed, what
//! its fills cost and when its tables were last invalidated.
//!
//! A shape is what the normalizer's identity says (literal values, whitespace and comments do not
//! count). Each plan finds its shape's counters once, so a lookup costs a few atomic increments;
//! at most [`MAX_SHAPES`] shapes are told apart, later ones are counted together.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use strata_core::TableName;
use strata_normalizer::{Analysis, StatementIdentity};

/// Shapes told apart; beyond, shapes share one row.
pub(crate) const MAX_SHAPES: usize = 2_000;
/// The longest normalized text kept per shape.
const MAX_TEXT: usize = 2_000;
/// Tables whose invalidations are kept; beyond, new tables are not counted.
const MAX_TABLES: usize = 10_000;

/// The normalized text shown for the shapes beyond [`MAX_SHAPES`].
const OTHER_SHAPES: &str = "(other shapes)";

/// The counters of one query shape.
#[derive(Debug)]
pub(crate) struct ShapeCounters {
    text: Box<str>,
    tables: Vec<TableName>,
    calls: AtomicU64,
    /// By tier, in the order of [`Stats::tiers`].
    hits: Vec<AtomicU64>,
    misses: AtomicU64,
    fills: AtomicU64,
    fill_micros: AtomicU64,
    bytes_stored: AtomicU64,
    bypasses: Mutex<BTreeMap<&'static str, u64>>,
}

impl ShapeCounters {
    fn new(text: Box<str>, tables: Vec<TableName>, tiers: usize) -> Self {
        Self {
            text,
            tables,
            calls: AtomicU64::new(0),
            hits: (0..tiers).map(|_| AtomicU64::new(0)).collect(),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            fill_micros: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
            bypasses: Mutex::new(BTreeMap::new()),
        }
    }
}

/// What one lookup came to, for [`Stats::looked_up`].
pub(crate) enum Outcome<'a> {
    Hit(&'a str),
    Miss,
    Bypass(&'static str),
}

/// One table's invalidations through this process, and the fills since the last one.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TableCounters {
    pub(crate) invalidations: u64,
    pub(crate) last: Option<SystemTime>,
    pub(crate) fills_since: u64,
}

/// The statistics of one cache.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Where hits can come from: the tiers, then the semantic tier and single-flight waits.
    tiers: Vec<String>,
    shapes: Mutex<HashMap<StatementIdentity, Arc<ShapeCounters>, foldhash::fast::RandomState>>,
    other: Arc<ShapeCounters>,
    /// Locked by every fill: foldhash, as table names are short and come from the catalog.
    tables: Mutex<HashMap<TableName, TableCounters, foldhash::fast::RandomState>>,
    /// Invalidations of everything, and when the last one was.
    everything: Mutex<TableCounters>,
}

impl Stats {
    pub(crate) fn new(tier_names: impl IntoIterator<Item = String>) -> Self {
        let mut tiers: Vec<String> = tier_names.into_iter().collect();
        tiers.extend(["l3".to_owned(), "single-flight".to_owned()]);
        let other = Arc::new(ShapeCounters::new(OTHER_SHAPES.into(), Vec::new(), tiers.len()));
        Self {
            tiers,
            shapes: Mutex::new(HashMap::default()),
            other,
            tables: Mutex::new(HashMap::default()),
            everything: Mutex::new(TableCounters::default()),
        }
    }

    /// The counters of an analysis's shape (`tables`: the version units it reads).
    pub(crate) fn shape(&self, analysis: &Analysis, tables: &[TableName]) -> Arc<ShapeCounters> {
        let mut shapes = self.shapes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = shapes.get(&analysis.identity()) {
            return found.clone();
        }
        if shapes.len() >= MAX_SHAPES {
            return self.other.clone();
        }
        let mut text: String = analysis
            .statements()
            .iter()
            .map(strata_normalizer::StatementAnalysis::normalized)
            .collect::<Vec<_>>()
            .join("; ");
        if text.len() > MAX_TEXT {
            let mut end = MAX_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        let counters = Arc::new(ShapeCounters::new(text.into(), tables.to_vec(), self.tiers.len()));
        shapes.insert(analysis.identity(), counters.clone());
        counters
    }

    pub(crate) fn looked_up(&self, shape: &ShapeCounters, outcome: Outcome<'_>) {
        shape.calls.fetch_add(1, Relaxed);
        match outcome {
            Outcome::Hit(tier) => {
                if let Some(i) = self.tiers.iter().position(|t| t == tier) {
                    shape.hits[i].fetch_add(1, Relaxed);
                }
            }
            Outcome::Miss => {
                shape.misses.fetch_add(1, Relaxed);
            }
            Outcome::Bypass(reason) => {
                *shape.bypasses.lock().unwrap_or_else(PoisonError::into_inner).entry(reason).or_default() +=
                    1;
            }
        }
    }

    /// A fill was stored: what it cost, its size, and the tables (version units) it read.
    pub(crate) fn filled(&self, shape: &ShapeCounters, cost: Duration, bytes: usize) {
        shape.fills.fetch_add(1, Relaxed);
        shape.fill_micros.fetch_add(u64::try_from(cost.as_micros()).unwrap_or(u64::MAX), Relaxed);
        shape.bytes_stored.fetch_add(bytes as u64, Relaxed);
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        for unit in &shape.tables {
            if let Some(t) = tables.get_mut(unit) {
                t.fills_since += 1;
            } else if tables.len() < MAX_TABLES {
                tables.insert(unit.clone(), TableCounters { fills_since: 1, ..TableCounters::default() });
            }
        }
    }

    /// Tables (version units) were invalidated; `None` for everything.
    pub(crate) fn invalidated(&self, units: Option<&[TableName]>) {
        let now = SystemTime::now();
        let Some(units) = units else {
            let mut everything = self.everything.lock().unwrap_or_else(PoisonError::into_inner);
            everything.invalidations += 1;
            everything.last = Some(now);
            let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            tables.values_mut().for_each(|t| t.fills_since = 0);
            return;
        };
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // Tables only: a keyed write's slots and buckets are not tables.
        for unit in units.iter().filter(|u| !u.as_str().contains('\0')) {
            let full = tables.len() >= MAX_TABLES;
            let entry = match tables.get_mut(unit) {
                Some(entry) => entry,
                None if full => continue,
                None => tables.entry(unit.clone()).or_default(),
            };
            entry.invalidations += 1;
            entry.last = Some(now);
            entry.fills_since = 0;
        }
    }

    /// Every shape's statistics, most looked up first.
    pub(crate) fn queries(&self) -> Vec<QueryStats> {
        let shapes: Vec<Arc<ShapeCounters>> = {
            let shapes = self.shapes.lock().unwrap_or_else(PoisonError::into_inner);
            shapes.values().cloned().chain(std::iter::once(self.other.clone())).collect()
        };
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let everything = self.everything.lock().unwrap_or_else(PoisonError::into_inner).last;
        let mut out: Vec<QueryStats> = shapes
            .iter()
            .filter(|s| s.calls.load(Relaxed) > 0)
            .map(|s| {
                let hits: Vec<(String, u64)> = self
                    .tiers
                    .iter()
                    .zip(&s.hits)
                    .map(|(t, n)| (t.clone(), n.load(Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let fills = s.fills.load(Relaxed);
                let mean_fill_cost =
                    Duration::from_micros(s.fill_micros.load(Relaxed).checked_div(fills).unwrap_or(0));
                let hit_count: u64 = hits.iter().map(|(_, n)| n).sum();
                let last_invalidation = s
                    .tables
                    .iter()
                    .filter_map(|t| tables.get(t).and_then(|c| c.last))
                    .chain(everything)
                    .max();
                QueryStats {
                    normalized: s.text.to_string(),
                    tables: s.tables.iter().map(|t| t.as_str().to_owned()).collect(),
                    calls: s.calls.load(Relaxed),
                    hits,
                    misses: s.misses.load(Relaxed),
                    bypasses: s
                        .bypasses
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .map(|(r, n)| ((*r).to_owned(), *n))
                        .collect(),
                    fills,
                    mean_fill_cost,
                    time_saved: mean_fill_cost.saturating_mul(u32::try_from(hit_count).unwrap_or(u32::MAX)),
                    bytes_stored: s.bytes_stored.load(Relaxed),
                    last_invalidation,
                }
            })
            .collect();
        out.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.normalized.cmp(&b.normalized)));
        out
    }

    /// Every table seen, by name, and the invalidations of everything.
    pub(crate) fn tables(&self) -> (Vec<(TableName, TableCounters)>, TableCounters) {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = tables.iter().map(|(t, c)| (t.clone(), *c)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let everything = *self.everything.lock().unwrap_or_else(PoisonError::into_inner);
        (out, everything)
    }
}

/// What the cache saw of one query shape since it started ([`QueryCache::query_stats`]).
///
/// [`QueryCache::query_stats`]: crate::QueryCache::query_stats
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryStats {
    /// The shape's normalized text (literals replaced by placeholders).
    pub normalized: String,
    /// The tables (version units) its results depend on, when it is cacheable.
    pub tables: Vec<String>,
    /// Lookups.
    pub calls: u64,
    /// Hits, by where they came from (a tier's name, `l3`, `single-flight`).
    pub hits: Vec<(String, u64)>,
    /// Misses (the database answered; a fill was offered).
    pub misses: u64,
    /// Bypasses, by reason (the `reason` label of `strata_bypass_total`).
    pub bypasses: Vec<(String, u64)>,
    /// Fills stored.
    pub fills: u64,
    /// What a fill cost the database, on average.
    pub mean_fill_cost: Duration,
    /// Hits times the mean fill cost: the database time the cache saved.
    pub time_saved: Duration,
    /// Bytes of the fills stored.
    pub bytes_stored: u64,
    /// When one of its tables (or everything) was last invalidated.
    pub last_invalidation: Option<SystemTime>,
}

/// What the cache saw of one table since it started ([`QueryCache::table_stats`]).
///
/// [`QueryCache::table_stats`]: crate::QueryCache::table_stats
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableStats {
    /// The table's version unit (its name without schema); `*` is everything.
    pub table: String,
    /// Its version now.
    pub version: u64,
    /// Invalidations through this process.
    pub invalidations: u64,
    /// When it was last invalidated through this process.
    pub last_invalidation: Option<SystemTime>,
    /// Fills stored that read it since its last invalidation (entries it may have now, before
    /// evictions and expiries).
    pub entries: u64,
}
