//! Per-statement plans: what a statement depends on, how long its result lives, whether it is
//! cached, and where a long text is planned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use strata_core::{CacheKey, TableName};
use strata_normalizer::{Analysis, Cacheability, LiteralForm, TierHint};

use crate::cache::{BypassReason, TierRole};
use crate::relations::Relations;
use crate::versions::{version_unit, EVERYTHING};

/// Texts of at least this many bytes that are not memoized are planned on tokio's blocking pool
/// ([`OffThread`]) rather than on the async worker thread that asked, which relays other sessions.
/// The analysis grows with the text (PostgreSQL's parse tree takes over a hundred times its size,
/// and a 16 KiB list of values takes milliseconds to parse), while handing work to another
/// thread costs a few microseconds: below this size, where nearly every statement is, planning
/// inline is cheaper than the hand-off and the parse is too short to stall anyone.
pub(crate) const BLOCKING_PLAN_MIN_TEXT: usize = 16 * 1024;

/// Runs work too heavy for an async worker thread (planning a long text) on tokio's blocking
/// pool, one piece at a time per cache: a flood of long statements then holds one blocking thread
/// and the memory of one analysis, not every blocking thread and all memory, and the worker
/// threads keep relaying other sessions meanwhile.
#[derive(Debug)]
pub(crate) struct OffThread {
    /// One permit: held by the work while it runs.
    permits: Arc<tokio::sync::Semaphore>,
}

impl OffThread {
    pub(crate) fn new() -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(1)) }
    }

    /// Runs `work` on the blocking pool of the current tokio runtime once no other work of this
    /// gate runs, and returns its result. `None` when there is no tokio runtime or the work did
    /// not finish there (it panicked, or the runtime is shutting down): the caller then runs it
    /// itself.
    pub(crate) async fn run<T, F>(&self, work: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        // The gate is never closed, so this waits for the permit and never fails.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        // The permit moves into the work: a caller that stops waiting cannot let a second piece
        // of work start while the first still runs on its blocking thread.
        runtime
            .spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
            .ok()
    }
}

/// The rules for tables, which a running cache may replace ([`QueryCache::set_table_rules`]):
/// plans made from then on follow the new ones.
///
/// [`QueryCache::set_table_rules`]: crate::QueryCache::set_table_rules
#[derive(Debug, Clone, Default)]
pub(crate) struct TableRules {
    pub(crate) default_ttl: Duration,
    pub(crate) table_ttls: HashMap<TableName, Duration>,
    pub(crate) excluded: HashSet<TableName>,
    /// Tables whose readers go through the semantic tier without the hint.
    pub(crate) semantic: HashSet<TableName>,
}

/// The cache-wide rules: the table rules, and the rest fixed when the cache is built.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) rules: std::sync::RwLock<Arc<TableRules>>,
    pub(crate) max_result_bytes: u64,
    pub(crate) soft_ttl_ratio: f64,
    pub(crate) ttl_jitter_ratio: f64,
    pub(crate) singleflight_wait: Duration,
    /// Whether reads restricted to keys are planned key-level.
    pub(crate) key_level: bool,
}

/// What the cache decided about one SQL text, memoized by text.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) analysis: Arc<Analysis>,
    pub(crate) verdict: Verdict,
    ttl: Duration,
    /// The [`Relations`] generation the plan was made under; a newer one replans.
    pub(crate) generation: u64,
    /// The counters of the plan's query shape, found at its first lookup.
    pub(crate) shape: std::sync::OnceLock<Arc<crate::stats::ShapeCounters>>,
}

#[derive(Debug)]
pub(crate) enum Verdict {
    Cacheable(Cacheable),
    Bypass(BypassReason),
}

#[derive(Debug)]
pub(crate) struct Cacheable {
    /// The version units the key includes: the "everything" unit first, then each table the
    /// statement reads or a `tables=` hint declares, sorted and deduplicated. With key-level
    /// tables ([`Cacheable::keyed`]) these are the units when their values cannot be read.
    pub(crate) units: Vec<TableName>,
    /// Tables read key-level: each lookup replaces their table unit by the units of the keys it
    /// binds (see `crate::keys`). Empty for most statements.
    pub(crate) keyed: Vec<crate::keys::KeyedRead>,
    /// For statements with the `semantic` hint: what the semantic tier embeds and guards on.
    pub(crate) semantic: Option<SemanticPlan>,
}

/// The parts of a semantic lookup that depend only on the text.
#[derive(Debug)]
pub(crate) struct SemanticPlan {
    /// The intent hint's text, else the normalized statements.
    pub(crate) text: String,
    /// The tables read (the version units, without the "everything" unit).
    pub(crate) tables: Vec<TableName>,
    /// The literals written in the text: a match must carry equal ones.
    pub(crate) literals: Vec<strata_l3::Literal>,
    /// The statement up to how it is written: a match must be the same (see [`SemanticPlan::exact`]).
    pub(crate) form: strata_normalizer::SemanticForm,
}

impl SemanticPlan {
    /// The bytes a semantic match must carry equal: the statement itself up to how it is written,
    /// with every bound value in its place, whether or not an intent is what is embedded (two
    /// statements answering similar questions may compute different rows: `ORDER BY price DESC`
    /// and `ASC` for "top" and "bottom products by price"). `param` renders the value bound to
    /// `$n` (1-based); `None` past the last one.
    pub(crate) fn exact(&self, param: impl Fn(u32) -> Option<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |tag: u8, bytes: &[u8]| {
            out.push(tag);
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        field(b'Q', self.form.canonical().as_bytes());
        let mut n = 1;
        while let Some(p) = param(n) {
            field(b'P', &p);
            n += 1;
        }
        out
    }
}

impl Plan {
    /// The TTL before jitter: the hint's (already capped by the normalizer), else the shortest
    /// per-table TTL among the dependencies, else the default.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The semantic part of a plan; `None` (the semantic tier is not consulted) unless the text is
/// one `SELECT` whose form PostgreSQL's parser gives.
fn semantic_plan(sql: &str, analysis: &Analysis, units: &[TableName]) -> Option<SemanticPlan> {
    let form = strata_normalizer::semantic_form(sql)?;
    let text = match analysis.hints().intent() {
        Some(intent) => intent.to_owned(),
        None => analysis.statements().iter().map(|s| s.normalized()).collect::<Vec<_>>().join("; "),
    };
    let literals = analysis
        .params()
        .map(|p| match p.form() {
            LiteralForm::Integer | LiteralForm::Numeric => strata_l3::Literal::number(p.text()),
            _ => strata_l3::Literal::string(p.text()),
        })
        .collect();
    let tables = units.iter().filter(|u| u.as_str() != EVERYTHING).cloned().collect();
    Some(SemanticPlan { text, tables, literals, form })
}

impl Policy {
    pub(crate) fn plan(
        &self,
        sql: &str,
        analysis: Arc<Analysis>,
        mut roles: impl Iterator<Item = TierRole>,
        relations: &Relations,
        unstreamed: &HashSet<TableName>,
        generation: u64,
    ) -> Plan {
        let bypass = |analysis: Arc<Analysis>, reason| Plan {
            analysis,
            verdict: Verdict::Bypass(reason),
            ttl: Duration::ZERO,
            generation,
            shape: std::sync::OnceLock::new(),
        };
        if let Cacheability::NotCacheable(reason) = analysis.cacheability() {
            let reason = reason.clone();
            return bypass(analysis, BypassReason::NotCacheable(reason));
        }
        // A built-in's name that a user function has too may call the user's function (an
        // overload for other argument types wins whatever the `search_path`).
        let shadowed = analysis.statements().iter().find_map(|s| relations.user_function_in(s));
        if let Some(name) = shadowed {
            let reason = strata_normalizer::NotCacheable::UnknownFunction(Arc::from(name));
            return bypass(analysis, BypassReason::NotCacheable(reason));
        }
        let mut units: Vec<TableName> =
            analysis.reads().iter().chain(analysis.hints().tables()).map(version_unit).collect();
        // A view (or a partition parent) reads relations its text does not name.
        let through: Vec<TableName> =
            units.iter().flat_map(|u| relations.reads_through(u)).cloned().collect();
        units.extend(through.iter().cloned());
        units.push(TableName::new(EVERYTHING));
        units.sort();
        units.dedup();
        let rules = self.rules.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(excluded) = units.iter().find(|u| rules.excluded.contains(*u)) {
            let excluded = excluded.clone();
            return bypass(analysis, BypassReason::ExcludedTable(excluded));
        }
        if let Some(volatile) = units.iter().find(|u| relations.is_volatile(u)) {
            let volatile = volatile.clone();
            return bypass(analysis, BypassReason::VolatileRelation(volatile));
        }
        if let Some(unseen) = units.iter().find(|u| unstreamed.contains(*u)) {
            let unseen = unseen.clone();
            return bypass(analysis, BypassReason::NotStreamed(unseen));
        }
        let wanted = match analysis.hints().tier() {
            None => None,
            Some(TierHint::L1) => Some(TierRole::Hot),
            Some(TierHint::L2) => Some(TierRole::Warm),
        };
        if let Some(wanted) = wanted {
            if !roles.any(|r| r == wanted) {
                return bypass(analysis, BypassReason::NoTier);
            }
        }
        let ttl = analysis.hints().ttl().unwrap_or_else(|| {
            units.iter().filter_map(|u| rules.table_ttls.get(u)).min().copied().unwrap_or(rules.default_ttl)
        });
        let semantic = (analysis.hints().semantic() || units.iter().any(|u| rules.semantic.contains(u)))
            .then(|| semantic_plan(sql, &analysis, &units))
            .flatten();
        let keyed = if semantic.is_some() || !self.key_level {
            Vec::new()
        } else {
            crate::keys::keyed_reads(&analysis, relations, &through)
        };
        Plan {
            analysis,
            verdict: Verdict::Cacheable(Cacheable { units, keyed, semantic }),
            ttl,
            generation,
            shape: std::sync::OnceLock::new(),
        }
    }

    /// Shortens a TTL by up to the jitter ratio, by an amount taken from the key's digest: keys
    /// filled together do not all expire together, and a key's jitter is the same everywhere.
    pub(crate) fn jittered_ttl(&self, ttl: Duration, key: &CacheKey) -> Duration {
        let unit = (key.digest().as_u128() as u16) as f64 / f64::from(u16::MAX);
        ttl.mul_f64(1.0 - self.ttl_jitter_ratio * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::{KeyScope, SettingsDigest};

    fn policy() -> Policy {
        Policy {
            rules: std::sync::RwLock::new(Arc::new(TableRules {
                default_ttl: Duration::from_secs(60),
                table_ttls: HashMap::from([
                    (TableName::new("prices"), Duration::from_secs(5)),
                    (TableName::new("users"), Duration::from_secs(30)),
                ]),
                excluded: HashSet::from([TableName::new("audit_log")]),
                semantic: HashSet::new(),
            })),
            max_result_bytes: 1 << 20,
            soft_ttl_ratio: 0.8,
            ttl_jitter_ratio: 0.1,
            singleflight_wait: Duration::from_secs(1),
            key_level: false,
        }
    }

    fn plan(sql: &str) -> Plan {
        policy().plan(
            sql,
            Arc::new(strata_normalizer::analyze(sql)),
            [TierRole::Hot, TierRole::Warm].into_iter(),
            &Relations::default(),
            &HashSet::new(),
            0,
        )
    }

    #[test]
    fn ttl_precedence_is_hint_then_shortest_table_then_default() {
        assert_eq!(plan("SELECT * FROM orders").ttl(), Duration::from_secs(60));
        assert_eq!(plan("SELECT * FROM public.users").ttl(), Duration::from_secs(30));
        assert_eq!(plan("SELECT * FROM users JOIN prices USING (id)").ttl(), Duration::from_secs(5));
        assert_eq!(plan("/* strata: ttl=90s */ SELECT * FROM users").ttl(), Duration::from_secs(90));
    }

    #[test]
    fn excluded_tables_and_uncacheable_statements_bypass_with_a_reason() {
        assert!(matches!(
            plan("SELECT * FROM audit.audit_log").verdict,
            Verdict::Bypass(BypassReason::ExcludedTable(ref t)) if t.as_str() == "audit_log"
        ));
        assert!(matches!(plan("SELECT random()").verdict, Verdict::Bypass(BypassReason::NotCacheable(_))));
        assert!(matches!(
            plan("UPDATE users SET a = 1").verdict,
            Verdict::Bypass(BypassReason::NotCacheable(_))
        ));
        let l2_only = policy().plan(
            "/* strata: tier=l2 */ SELECT 1",
            Arc::new(strata_normalizer::analyze("/* strata: tier=l2 */ SELECT 1")),
            [TierRole::Hot].into_iter(),
            &Relations::default(),
            &HashSet::new(),
            0,
        );
        assert!(matches!(l2_only.verdict, Verdict::Bypass(BypassReason::NoTier)));
    }

    #[test]
    fn a_relation_the_wal_stream_cannot_see_bypasses_also_through_a_view() {
        let unstreamed = HashSet::from([TableName::new("scratch")]);
        let relations = Relations::builder().reads_through("report", "scratch").build();
        let plan_with = |sql: &str| {
            policy().plan(
                sql,
                Arc::new(strata_normalizer::analyze(sql)),
                [TierRole::Hot].into_iter(),
                &relations,
                &unstreamed,
                0,
            )
        };
        for sql in
            ["SELECT * FROM app.scratch", "SELECT * FROM report", "SELECT * FROM a JOIN scratch USING (id)"]
        {
            assert!(
                matches!(plan_with(sql).verdict, Verdict::Bypass(BypassReason::NotStreamed(ref t)) if t.as_str() == "scratch"),
                "{sql}"
            );
        }
        assert!(matches!(plan_with("SELECT * FROM orders").verdict, Verdict::Cacheable(_)));
    }

    #[test]
    fn units_are_unqualified_sorted_and_include_everything() {
        let p =
            plan("/* strata: tables=ledger */ SELECT * FROM s.b JOIN a USING (id) JOIN public.b USING (id)");
        let Verdict::Cacheable(c) = p.verdict else { panic!("cacheable") };
        let units: Vec<&str> = c.units.iter().map(TableName::as_str).collect();
        assert_eq!(units, [EVERYTHING, "a", "b", "ledger"]);
    }

    #[test]
    fn jitter_only_shortens_and_is_the_same_for_a_key() {
        let scope = KeyScope::new("d", "r", SettingsDigest::default());
        let p = policy();
        for n in 0..200u32 {
            let key = CacheKey::builder(&scope, &n.to_le_bytes()).build();
            let ttl = p.jittered_ttl(Duration::from_secs(100), &key);
            assert!(ttl <= Duration::from_secs(100) && ttl >= Duration::from_secs(90), "{ttl:?}");
            assert_eq!(ttl, p.jittered_ttl(Duration::from_secs(100), &key));
        }
    }

    /// A runtime with a single worker thread: work that blocked it would stall every task.
    fn one_worker() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    /// How long a test waits for something that must happen before it calls it a hang; never
    /// reached when the code works.
    const LIVENESS: Duration = Duration::from_secs(60);

    #[test]
    fn off_thread_work_leaves_the_worker_free_and_runs_one_at_a_time() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::sync::mpsc;

        let rt = one_worker();
        let gate = Arc::new(OffThread::new());
        let worker = rt.block_on(rt.spawn(async { std::thread::current().id() })).unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let first = rt.spawn({
            let gate = gate.clone();
            async move {
                gate.run(move || {
                    started_tx.send(std::thread::current().id()).unwrap();
                    release_rx.recv().unwrap();
                    1
                })
                .await
            }
        });
        // The first piece of work now runs, and stays running until released.
        let ran_on = started_rx.recv_timeout(LIVENESS).unwrap();
        assert_ne!(ran_on, worker, "the work ran on the worker thread");
        let second_started = Arc::new(AtomicBool::new(false));
        let second = rt.spawn({
            let (gate, started) = (gate.clone(), second_started.clone());
            async move {
                gate.run(move || {
                    started.store(true, SeqCst);
                    2
                })
                .await
            }
        });
        // The only worker thread still runs other tasks meanwhile.
        let (done_tx, done_rx) = mpsc::channel();
        rt.spawn(async move {
            tokio::task::yield_now().await;
            done_tx.send(()).unwrap();
        });
        done_rx.recv_timeout(LIVENESS).unwrap();
        // The second piece waits for the first.
        assert!(!second_started.load(SeqCst));
        assert!(!first.is_finished() && !second.is_finished());
        release_tx.send(()).unwrap();
        assert_eq!(rt.block_on(first).unwrap(), Some(1));
        assert_eq!(rt.block_on(second).unwrap(), Some(2));
        assert!(second_started.load(SeqCst));
    }

    #[test]
    fn without_a_runtime_off_thread_work_is_left_to_the_caller() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let gate = OffThread::new();
        let mut run = std::pin::pin!(gate.run(|| 1));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(run.as_mut().poll(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn only_long_texts_that_are_not_memoized_wait_for_the_gate() {
        use crate::{Lookup, QueryCache, Request};
        use bytes::Bytes;

        let rt = one_worker();
        let cache =
            QueryCache::builder().with_l1(strata_l1::HotTier::builder().build().unwrap()).build().unwrap();
        let scope = KeyScope::new("d", "r", SettingsDigest::default());
        let list: Vec<String> = (0..4000).map(|i| i.to_string()).collect();
        let long = format!("SELECT * FROM t WHERE a IN ({})", list.join(","));
        assert!((BLOCKING_PLAN_MIN_TEXT..=64 * 1024).contains(&long.len()), "{}", long.len());
        assert_eq!(cache.session_effects_now(&long), None, "a long text is not analyzed inline");

        // Hold the gate, as a long parse in progress would.
        let held = rt.block_on(cache.shared.off_thread.permits.clone().acquire_owned()).unwrap();
        let waiting = rt.spawn({
            let (cache, scope, long) = (cache.clone(), scope.clone(), long.clone());
            async move { matches!(cache.lookup(&Request::new(&scope, &long)).await, Lookup::Miss(_)) }
        });
        // Short lookups (misses, fills and hits) and a text too large to analyze finish
        // meanwhile, on the only worker thread.
        let short = rt.spawn({
            let (cache, scope) = (cache.clone(), scope.clone());
            async move {
                let mut hits = 0;
                for i in 0..40 {
                    let sql = format!("SELECT * FROM t WHERE a = {}", i % 4);
                    match cache.lookup(&Request::new(&scope, &sql)).await {
                        Lookup::Hit(_) => hits += 1,
                        Lookup::Miss(ticket) => {
                            ticket.fill(Bytes::from_static(b"row"), 1).await;
                        }
                        Lookup::Bypass(b) => panic!("{}", b.reason()),
                    }
                }
                let huge = format!("SELECT 1 {}", " ".repeat(300 * 1024));
                let refused = matches!(cache.lookup(&Request::new(&scope, &huge)).await, Lookup::Bypass(_));
                (hits, refused)
            }
        });
        let short = rt.block_on(async { tokio::time::timeout(LIVENESS, short).await }).unwrap().unwrap();
        assert_eq!(short, (36, true));
        assert!(!waiting.is_finished(), "the long text was planned without the gate");
        drop(held);
        assert!(rt.block_on(waiting).unwrap());

        // Now memoized: planned inline, even with the gate held.
        assert!(cache.session_effects_now(&long).is_some_and(|e| e.is_empty()));
        let _held = rt.block_on(cache.shared.off_thread.permits.clone().acquire_owned()).unwrap();
        let again = rt.spawn({
            let (cache, scope) = (cache.clone(), scope.clone());
            async move { matches!(cache.lookup(&Request::new(&scope, &long)).await, Lookup::Miss(_)) }
        });
        assert!(rt.block_on(async { tokio::time::timeout(LIVENESS, again).await }).unwrap().unwrap());
    }
}
