//! Prometheus metrics in one registry the application can mount.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use strata_core::{CacheTier, VersionHealth, VersionStore};

use crate::cache::TierName;

/// Handles to every metric, with per-tier labels resolved once so the hot path only increments.
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) tier_errors: Vec<IntCounter>,
    pub(crate) lookup_seconds: Vec<Histogram>,
    pub(crate) lookup_miss_seconds: Histogram,
    bypasses: IntCounterVec,
    pub(crate) fills_stored: IntCounter,
    pub(crate) fills_too_large: IntCounter,
    pub(crate) fills_abandoned: IntCounter,
    pub(crate) fill_cost_seconds: Histogram,
    pub(crate) flight_filled: IntCounter,
    pub(crate) flight_failed: IntCounter,
    pub(crate) soft_refreshes: IntCounter,
    pub(crate) stale_served: IntCounter,
    pub(crate) invalidate_tables: IntCounter,
    pub(crate) invalidate_everything: IntCounter,
    pub(crate) invalidate_errors: IntCounter,
    /// Key-level invalidation: reads of keyed tables that were key-level or fell back to the
    /// table (values unreadable, over the caps), writes to keyed tables that bumped their keys or
    /// went table-wide.
    pub(crate) key_reads_keyed: IntCounter,
    pub(crate) key_reads_table: IntCounter,
    pub(crate) key_writes_keyed: IntCounter,
    pub(crate) key_writes_wide: IntCounter,
    pub(crate) served_age_seconds: Histogram,
    /// The WAL gate and its gauges. It lives here, next to the registry its gauges join, because
    /// [`Metrics`] is the part of the cache's shared state built in this file.
    pub(crate) wal: WalHealth,
}

/// Whether an attached WAL invalidator vouches for the table versions (see `crate::wal`): while
/// it does not, every lookup bypasses. Without an invalidator the gate stays open, and a lookup
/// pays one atomic load for it.
#[derive(Debug, Default)]
pub(crate) struct WalHealth {
    closed: std::sync::atomic::AtomicBool,
    /// The attached invalidator's id; its reports count only while it is the one attached, so a
    /// task stopping concurrently with a drop never leaves the gate closed behind it.
    #[cfg(feature = "wal")]
    owner: Mutex<Option<u64>>,
    #[cfg(feature = "wal")]
    gauges: std::sync::OnceLock<WalGauges>,
}

impl WalHealth {
    /// Whether lookups must bypass. Acquire, so that a lookup that sees the gate reopened also
    /// sees the versions bumped before it reopened (on x86-64 this is the same plain load as a
    /// relaxed one).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The WAL invalidator's gauges, registered when the first invalidator attaches.
#[cfg(feature = "wal")]
#[derive(Debug, Clone)]
pub(crate) struct WalGauges {
    stream_up: IntGauge,
    pub(crate) lag_seconds: prometheus::Gauge,
    /// 1 while this process holds the fleet's WAL lease.
    pub(crate) lease_held: IntGauge,
}

#[cfg(feature = "wal")]
impl WalHealth {
    /// Attaches an invalidator (one per cache) and returns its id: the gate closes until it
    /// reports healthy.
    pub(crate) fn attach(&self, registry: &Registry) -> Result<(u64, WalGauges), crate::Error> {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        if owner.is_some() {
            return Err(crate::Error::config("a WAL invalidator is already attached to this cache"));
        }
        let gauges = match self.gauges.get() {
            Some(gauges) => gauges.clone(),
            None => {
                let stream_up = IntGauge::with_opts(Opts::new(
                    "strata_wal_stream_up",
                    "1 while the WAL invalidator streams from PostgreSQL (or, with a lease, follows a holder whose stream is up in time), else 0",
                ));
                let lease_held = IntGauge::with_opts(Opts::new(
                    "strata_wal_lease_held",
                    "1 while this process holds the fleet's WAL lease and streams for it",
                ));
                let lag_seconds = prometheus::Gauge::with_opts(Opts::new(
                    "strata_wal_lag_seconds",
                    "Heartbeat delay from emission on PostgreSQL to arrival in the WAL stream",
                ));
                let made = stream_up.and_then(|stream_up| {
                    let lag_seconds = lag_seconds?;
                    let lease_held = lease_held?;
                    registry.register(Box::new(stream_up.clone()))?;
                    registry.register(Box::new(lag_seconds.clone()))?;
                    registry.register(Box::new(lease_held.clone()))?;
                    Ok(WalGauges { stream_up, lag_seconds, lease_held })
                });
                match made {
                    Ok(gauges) => self.gauges.get_or_init(|| gauges).clone(),
                    Err(e) => {
                        return Err(crate::Error::config("cannot register the WAL gauges").with_source(e))
                    }
                }
            }
        };
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *owner = Some(id);
        gauges.stream_up.set(0);
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        Ok((id, gauges))
    }

    /// The invalidator `id` stopped: the cache behaves as if none had been attached.
    pub(crate) fn detach(&self, id: u64) {
        let mut owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        if *owner == Some(id) {
            *owner = None;
            if let Some(gauges) = self.gauges.get() {
                gauges.stream_up.set(0);
                gauges.lease_held.set(0);
            }
            self.closed.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// The invalidator `id` reports whether its stream is up and whether lookups may be answered.
    pub(crate) fn report(&self, id: u64, stream_up: bool, open: bool) {
        let owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        if *owner == Some(id) {
            if let Some(gauges) = self.gauges.get() {
                gauges.stream_up.set(i64::from(stream_up));
            }
            self.closed.store(!open, std::sync::atomic::Ordering::Release);
        }
    }
}

thread_local! {
    /// Lookups this thread has seen, to sample the timing of in-process hits: reading a clock
    /// costs as much as the hit itself on some virtual machines, and a shared counter would cost
    /// every lookup an atomic read-modify-write.
    static SAMPLE: Cell<u64> = const { Cell::new(0) };
}

/// One in this many in-process hits is timed.
pub(crate) const SAMPLE_EVERY: u64 = 64;

const LATENCY_BUCKETS: &[f64] = &[
    0.000_000_1,
    0.000_000_5,
    0.000_001,
    0.000_005,
    0.000_01,
    0.000_05,
    0.000_1,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
];
const AGE_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub(crate) fn new(
        tiers: &[(TierName, Arc<dyn CacheTier>)],
        versions: Arc<dyn VersionStore>,
        warm: Option<Arc<strata_l2::WarmTier>>,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let errors = counter_vec(
            &registry,
            "strata_tier_errors_total",
            "Tier calls that failed (served as misses)",
            &["tier"],
        )?;
        let lookup = HistogramVec::new(
            HistogramOpts::new(
                "strata_lookup_seconds",
                "Time to answer a lookup, by the tier that answered (in-process hits sampled)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["tier"],
        )?;
        registry.register(Box::new(lookup.clone()))?;
        let names: Vec<&str> = tiers.iter().map(|(n, _)| n.as_str()).collect();
        let bypasses = counter_vec(
            &registry,
            "strata_bypass_total",
            "Lookups the cache did not answer, by reason",
            &["reason"],
        )?;
        let fills = counter_vec(
            &registry,
            "strata_fills_total",
            "Results offered to the cache, by outcome",
            &["outcome"],
        )?;
        let flights = counter_vec(
            &registry,
            "strata_singleflight_waits_total",
            "Lookups that waited for a concurrent fill, by outcome",
            &["outcome"],
        )?;
        let invalidations =
            counter_vec(&registry, "strata_invalidations_total", "Write notifications, by kind", &["kind"])?;
        let key_level = counter_vec(
            &registry,
            "strata_key_level_total",
            "Reads and writes of tables with a key column, by how they were versioned",
            &["what"],
        )?;
        let metrics = Metrics {
            key_reads_keyed: key_level.with_label_values(&["read_keyed"]),
            key_reads_table: key_level.with_label_values(&["read_table"]),
            key_writes_keyed: key_level.with_label_values(&["write_keyed"]),
            key_writes_wide: key_level.with_label_values(&["write_wide"]),
            tier_errors: names.iter().map(|n| errors.with_label_values(&[n])).collect(),
            lookup_seconds: names.iter().map(|n| lookup.with_label_values(&[n])).collect(),
            lookup_miss_seconds: lookup.with_label_values(&["miss"]),
            bypasses,
            fills_stored: fills.with_label_values(&["stored"]),
            fills_too_large: fills.with_label_values(&["too_large"]),
            fills_abandoned: fills.with_label_values(&["abandoned"]),
            fill_cost_seconds: histogram(
                &registry,
                "strata_fill_cost_seconds",
                "How long the database took to produce results that were cached",
                LATENCY_BUCKETS,
            )?,
            flight_filled: flights.with_label_values(&["filled"]),
            flight_failed: flights.with_label_values(&["failed_or_timeout"]),
            soft_refreshes: counter(
                &registry,
                "strata_soft_ttl_refreshes_total",
                "Refreshes of entries past their soft TTL",
            )?,
            stale_served: counter(
                &registry,
                "strata_soft_ttl_stale_served_total",
                "Hits served past soft TTL while another caller refreshed",
            )?,
            invalidate_tables: invalidations.with_label_values(&["tables"]),
            invalidate_everything: invalidations.with_label_values(&["everything"]),
            invalidate_errors: invalidations.with_label_values(&["failed"]),
            served_age_seconds: histogram(
                &registry,
                "strata_served_age_seconds",
                "Age of results served from cache (sampled for in-process hits)",
                AGE_BUCKETS,
            )?,
            wal: WalHealth::default(),
            registry,
        };
        metrics.registry.register(Box::new(TierGauges::new(tiers, versions)?))?;
        if let Some(warm) = warm {
            metrics.registry.register(Box::new(WarmGauges::new(warm)?))?;
        }
        Ok(metrics)
    }

    pub(crate) fn bypass(&self, reason: &str) {
        self.bypasses.with_label_values(&[reason]).inc();
    }

    /// Whether this in-process hit should be timed.
    #[inline]
    pub(crate) fn sampled(&self) -> bool {
        SAMPLE.with(|seen| {
            let n = seen.get();
            seen.set(n.wrapping_add(1));
            n % SAMPLE_EVERY == 0
        })
    }
}

/// Hits, misses, entries, bytes, evictions, expirations and corrupt values of each tier, and the
/// version store's state, read from the tiers' own counters when the registry is scraped, so the
/// hot path does not count twice.
struct TierGauges {
    tiers: Vec<(TierName, Arc<dyn CacheTier>)>,
    versions: Arc<dyn VersionStore>,
    entries: IntGaugeVec,
    bytes: IntGaugeVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    evictions: IntCounterVec,
    expirations: IntCounterVec,
    corrupt: IntCounterVec,
    synchronized: IntGauge,
    /// Counter values seen at the previous scrape, so counters advance by the difference.
    last: Mutex<Vec<[u64; 5]>>,
    descs: Vec<Desc>,
}

impl TierGauges {
    fn new(
        tiers: &[(TierName, Arc<dyn CacheTier>)],
        versions: Arc<dyn VersionStore>,
    ) -> prometheus::Result<Self> {
        let hits =
            IntCounterVec::new(Opts::new("strata_tier_hits_total", "Lookups a tier answered"), &["tier"])?;
        let misses = IntCounterVec::new(
            Opts::new("strata_tier_misses_total", "Lookups a tier could not answer"),
            &["tier"],
        )?;
        let entries =
            IntGaugeVec::new(Opts::new("strata_tier_entries", "Entries held by a tier"), &["tier"])?;
        let bytes = IntGaugeVec::new(Opts::new("strata_tier_bytes", "Bytes held by a tier"), &["tier"])?;
        let evictions = IntCounterVec::new(
            Opts::new("strata_tier_evictions_total", "Entries evicted to make room"),
            &["tier"],
        )?;
        let expirations = IntCounterVec::new(
            Opts::new("strata_tier_expirations_total", "Entries found expired"),
            &["tier"],
        )?;
        let corrupt = IntCounterVec::new(
            Opts::new("strata_tier_corrupt_total", "Stored values that failed to decode (served as misses)"),
            &["tier"],
        )?;
        let synchronized = IntGauge::with_opts(Opts::new(
            "strata_versions_synchronized",
            "1 when table versions are current (local, or shared with the change channel in sequence), 0 while resynchronizing",
        ))?;
        let mut descs = Vec::new();
        for c in [
            &hits as &dyn Collector,
            &misses,
            &entries,
            &bytes,
            &evictions,
            &expirations,
            &corrupt,
            &synchronized,
        ] {
            descs.extend(c.desc().into_iter().cloned());
        }
        Ok(Self {
            tiers: tiers.to_vec(),
            versions,
            hits,
            misses,
            entries,
            bytes,
            evictions,
            expirations,
            corrupt,
            synchronized,
            last: Mutex::new(vec![[0; 5]; tiers.len()]),
            descs,
        })
    }
}

impl Collector for TierGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (name, tier)) in self.tiers.iter().enumerate() {
            let stats = tier.stats();
            self.entries
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
            self.bytes
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
            let now = [stats.hits, stats.misses, stats.evictions, stats.expirations, stats.corrupt];
            let counters = [&self.hits, &self.misses, &self.evictions, &self.expirations, &self.corrupt];
            for (j, counter) in counters.into_iter().enumerate() {
                counter.with_label_values(&[name.as_str()]).inc_by(now[j].saturating_sub(last[i][j]));
            }
            last[i] = now;
        }
        let synchronized =
            matches!(self.versions.health(), VersionHealth::Local | VersionHealth::Synchronized);
        self.synchronized.set(i64::from(synchronized));
        let mut families = Vec::new();
        for c in [
            &self.hits as &dyn Collector,
            &self.misses,
            &self.entries,
            &self.bytes,
            &self.evictions,
            &self.expirations,
            &self.corrupt,
            &self.synchronized,
        ] {
            families.extend(c.collect());
        }
        families
    }
}

/// The shared tier's circuit breaker and failure counters, read when the registry is scraped.
struct WarmGauges {
    warm: Arc<strata_l2::WarmTier>,
    breaker: IntGauge,
    counters: IntGaugeVec,
    descs: Vec<Desc>,
}

impl WarmGauges {
    fn new(warm: Arc<strata_l2::WarmTier>) -> prometheus::Result<Self> {
        let breaker = IntGauge::with_opts(Opts::new(
            "strata_l2_breaker_state",
            "The shared tier's worst circuit breaker (storage-wide or any cluster node): 0 closed, 1 half-open (probing), 2 open (calls miss at once)",
        ))?;
        let counters = IntGaugeVec::new(
            Opts::new(
                "strata_l2_failures",
                "Shared-tier failures since start, by kind (errors, timeouts, short_circuited, dropped_writes, breaker_opens)",
            ),
            &["kind"],
        )?;
        let mut descs = Vec::new();
        for c in [&breaker as &dyn Collector, &counters] {
            descs.extend(c.desc().into_iter().cloned());
        }
        Ok(Self { warm, breaker, counters, descs })
    }
}

impl Collector for WarmGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let health = self.warm.health();
        let level = |state: &strata_l2::BreakerState| match state {
            strata_l2::BreakerState::Closed => 0,
            strata_l2::BreakerState::HalfOpen => 1,
            _ => 2,
        };
        // On a cluster each node has its own breaker: report the worst, so one dead node shows.
        let worst =
            health.nodes.iter().map(|n| level(&n.breaker)).chain([level(&health.breaker)]).max().unwrap_or(0);
        self.breaker.set(worst);
        for (kind, value) in [
            ("errors", health.errors),
            ("timeouts", health.timeouts),
            ("short_circuited", health.short_circuited),
            ("dropped_writes", health.dropped_writes),
            ("breaker_opens", health.breaker_opens),
        ] {
            self.counters.with_label_values(&[kind]).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        let mut families = self.breaker.collect();
        families.extend(self.counters.collect());
        families
    }
}
