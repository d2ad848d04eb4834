//! Writes made directly on PostgreSQL, bypassing the proxy, stop being served from the proxy's
//! cache once the WAL invalidator has seen them commit: the fixture every WAL test uses (the one
//! place the invalidator starts), repeated updates, and a walsender killed mid-stream. The kinds
//! of writes (cascades, triggers, partitions, views, COPY...) are in `wal_cases`.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, CacheSettings, CatalogConfig, Invalidation, StrataCache};
use tokio::time::Instant;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{admin, connect, fresh_database, pg, start_proxy, TestProxy};

/// How long a cached read may still be served stale after a direct write committed.
pub const FRESH_WITHIN: Duration = Duration::from_secs(5);
/// How long a read may take to be answered from the cache: lookups bypass until the stream is up.
const HIT_WITHIN: Duration = Duration::from_secs(20);
/// Generous: tests run in parallel on a loaded machine, which delays every heartbeat, and no test
/// here means to see the stream lag.
const LAG_BOUND: Duration = Duration::from_secs(8);
/// Long enough that the catalog is read only when the cache starts.
const NO_PERIODIC_REFRESH: Duration = Duration::from_secs(3600);

/// Starts the WAL invalidator on the proxy's cache. Every test starts it here and nowhere else,
/// so that the way it attaches to a cache changes in one place.
pub fn start_wal(
    cache: &StrataCache,
    db: &str,
    publication: &str,
    application_name: &str,
    lag_bound: Duration,
) -> strata::WalInvalidator {
    let pg = pg();
    let config = strata::WalConfig::builder()
        .with_upstream(pg.host(), pg.port())
        .with_user("postgres")
        .with_database(db)
        .with_publication(publication)
        .with_application_name(application_name)
        .with_lag_bound(lag_bound)
        .build()
        .expect("wal config");
    // Through the session cache, as the proxy does: its invalidation mode decides what a
    // commit seen in the WAL bumps.
    strata::WalInvalidator::start_for_sessions(config, cache.sessions()).expect("invalidator")
}

/// How the proxy's cache turns writes it relays into invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No catalog user: the default, [`Invalidation::Everything`].
    Everything,
    /// A catalog user (`postgres`): [`Invalidation::Catalog`].
    Catalog,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Everything => "everything",
            Mode::Catalog => "catalog",
        }
    }
}

/// Generates, for each named `async fn case(mode: Mode)`, a module with one test per mode:
/// `case::everything` and `case::catalog`.
macro_rules! in_both_modes {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn everything() {
                super::$case(crate::wal::Mode::Everything).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn catalog() {
                super::$case(crate::wal::Mode::Catalog).await;
            }
        }
    )*};
}
pub(crate) use in_both_modes;

/// A caching proxy in front of a fresh database, with the WAL invalidator following it, a client
/// through the proxy and one straight to PostgreSQL. Stale reads are collected, so that one test
/// reports every case it covers; [`WalProxy::finish`] fails the test if there were any.
pub struct WalProxy {
    mode: Mode,
    pub cache: Arc<StrataCache>,
    /// Through the proxy.
    pub through: Client,
    /// Straight to PostgreSQL, bypassing the proxy.
    pub direct: Client,
    pub application_name: String,
    publication: String,
    wal: Option<strata::WalInvalidator>,
    proxy: TestProxy,
    stale: Vec<String>,
}

/// A cached read and the answer it gave before a write.
pub struct Before {
    sql: String,
    old: String,
}

impl WalProxy {
    /// Creates database `strata_proxy_wal_<case>_<mode>` with `schema`, then the cache (waiting
    /// for the catalog in [`Mode::Catalog`]), the invalidator and the proxy.
    pub async fn start(case: &str, mode: Mode, schema: &str) -> WalProxy {
        let db = format!("strata_proxy_wal_{case}_{}", mode.name());
        fresh_database(&db).await;
        let direct = admin(&db).await;
        direct.batch_execute(schema).await.unwrap_or_else(|e| panic!("schema of {db}: {e}"));
        let settings = CacheSettings::default();
        let query_cache = build_query_cache(&settings).await.expect("cache");
        let cache = match mode {
            Mode::Everything => StrataCache::new(query_cache).expect("strata cache"),
            Mode::Catalog => {
                let pg = pg();
                let config = CatalogConfig::builder()
                    .with_upstream(pg.host(), pg.port())
                    .with_user("postgres")
                    .with_database(&db)
                    .with_refresh_interval(NO_PERIODIC_REFRESH)
                    .with_timeout(Duration::from_secs(10))
                    .build()
                    .expect("catalog config");
                let cache = StrataCache::builder(query_cache)
                    .with_invalidation(Invalidation::Catalog(config))
                    .build()
                    .expect("strata cache");
                assert!(
                    cache.wait_for_catalog(Duration::from_secs(30)).await,
                    "the catalog of {db} was not read"
                );
                cache
            }
        };
        let cache = Arc::new(cache);
        let pid = std::process::id();
        let publication = format!("wal_{case}_{}_{pid}", mode.name());
        let application_name = format!("strata-proxy-wal-{case}-{}-{pid}", mode.name());
        let wal = start_wal(&cache, &db, &publication, &application_name, LAG_BOUND);
        let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
        let through = connect(proxy.port(), "postgres", &db, None).await.expect("connect through the proxy");
        WalProxy {
            mode,
            cache,
            through,
            direct,
            application_name,
            publication,
            wal: Some(wal),
            proxy,
            stale: Vec::new(),
        }
    }

    /// The proxy's port, for more clients.
    pub fn port(&self) -> u16 {
        self.proxy.port()
    }

    /// What the proxy serves for `sql`.
    pub async fn served(&self, sql: &str) -> String {
        rows(&self.through, sql).await
    }

    /// What PostgreSQL itself answers.
    pub async fn truth(&self, sql: &str) -> String {
        rows(&self.direct, sql).await
    }

    /// Hits in every tier of the proxy's cache.
    pub fn hits(&self) -> u64 {
        self.cache.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum()
    }

    /// A sample of the proxy's registry, by the start of its line (`name{labels} `).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.cache.query_cache().registry().gather())
            .expect("metrics encode");
        text.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().parse().expect("a sample value"))
    }

    /// `strata_wal_stream_up`.
    pub fn stream_up(&self) -> Option<f64> {
        self.metric("strata_wal_stream_up ")
    }

    /// Lookups bypassed because the WAL invalidator could not vouch for the versions.
    pub fn wal_bypasses(&self) -> f64 {
        self.metric("strata_bypass_total{reason=\"wal_unavailable\"} ").unwrap_or(0.0)
    }

    /// Reads `sql` through the proxy until it is answered from the cache (bounded) and returns
    /// that answer. A hit that is not what PostgreSQL has is recorded as stale, the cache emptied,
    /// and the read cached again.
    pub async fn cached(&mut self, sql: &str) -> String {
        let started = Instant::now();
        loop {
            let before = self.hits();
            let served = self.served(sql).await;
            if self.hits() > before {
                let truth = self.truth(sql).await;
                if served == truth {
                    return served;
                }
                self.record(format!(
                    "`{sql}` was served {served:?} from the cache; PostgreSQL has {truth:?}"
                ))
                .await;
            }
            assert!(
                started.elapsed() < HIT_WITHIN,
                "{}: `{sql}` was not answered from the cache within {HIT_WITHIN:?}",
                self.mode.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Caches each read (see [`WalProxy::cached`]) before a write.
    pub async fn cache_reads(&mut self, reads: &[&str]) -> Vec<Before> {
        let mut before = Vec::new();
        for sql in reads {
            let old = self.cached(sql).await;
            before.push(Before { sql: (*sql).to_owned(), old });
        }
        before
    }

    /// After a direct write that committed: every read must change to what PostgreSQL now
    /// answers within `within`, and then be answered from the cache with that (a read fresh only
    /// because lookups bypassed while the stream lagged would turn stale again once it caught
    /// up). A read still stale is recorded and the cache emptied, so that the next step starts
    /// clean.
    pub async fn expect_fresh(&mut self, what: &str, before: Vec<Before>, within: Duration) {
        let started = Instant::now();
        let mut pending = Vec::new();
        for Before { sql, old } in before {
            let want = self.truth(&sql).await;
            assert_ne!(want, old, "{what}: the write does not change `{sql}`: the test is wrong");
            pending.push((sql, old, want));
        }
        // What each read served last, while that was not the new answer.
        let mut last: Vec<Option<String>> = vec![None; pending.len()];
        loop {
            for (i, (sql, _, want)) in pending.iter().enumerate() {
                let served = self.served(sql).await;
                last[i] = (served != *want).then_some(served);
            }
            let stale: Vec<String> = pending
                .iter()
                .zip(&last)
                .filter_map(|(read, served)| Some((read, served.as_ref()?)))
                .map(|((sql, old, want), served)| {
                    format!(
                        "{what}: `{sql}` still served {served:?} {within:?} after the write \
                         (before it: {old:?}; PostgreSQL now: {want:?})"
                    )
                })
                .collect();
            if stale.is_empty() {
                break;
            }
            if started.elapsed() >= within {
                for s in stale {
                    self.record(s).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (sql, _, _) in &pending {
            self.cached(sql).await;
        }
    }

    /// One direct write and the cached reads it must change, within [`FRESH_WITHIN`].
    pub async fn step(&mut self, what: &str, reads: &[&str], write: &str) {
        let before = self.cache_reads(reads).await;
        if let Err(e) = self.direct.batch_execute(write).await {
            panic!(
                "{what}: {write}: {}",
                e.as_db_error().map_or(e.to_string(), |db| db.message().to_owned())
            );
        }
        self.expect_fresh(what, before, FRESH_WITHIN).await;
    }

    async fn record(&mut self, stale: String) {
        eprintln!("STALE ({}): {stale}", self.mode.name());
        self.stale.push(stale);
        self.cache.query_cache().flush().await.expect("flush the cache");
    }

    /// Stops the invalidator, drops the publication once its walsender is gone, and fails if
    /// any read was served stale.
    pub async fn finish(mut self) {
        drop(self.wal.take());
        self.direct
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = $1",
                &[&self.application_name],
            )
            .await
            .expect("end the walsender");
        self.direct
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", self.publication))
            .await
            .expect("drop the publication");
        assert!(
            self.stale.is_empty(),
            "{} (mode {}) read(s) served stale:\n{}",
            self.stale.len(),
            self.mode.name(),
            self.stale.join("\n")
        );
    }
}

/// Every row of `sql` (simple protocol), columns joined by `|`, rows by `;`.
pub async fn rows(c: &Client, sql: &str) -> String {
    let messages = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).unwrap_or("<null>")).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect();
    rows.join(";")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_directly_on_postgres_is_not_served_from_cache() {
    let mut w = WalProxy::start(
        "rounds",
        Mode::Everything,
        "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')",
    )
    .await;
    for round in 1..=5 {
        w.step(
            &format!("round {round}"),
            &["SELECT v FROM kv WHERE k = 1"],
            &format!("UPDATE kv SET v = 'v{round}' WHERE k = 1"),
        )
        .await;
    }
    w.finish().await;
}

/// The invalidator's walsender is killed twice. While the stream is down every lookup bypasses;
/// a write made right after the kill is never served stale, neither then nor once a new stream
/// is up and the read is cached again.
async fn walsender_killed(mode: Mode) {
    let mut w = WalProxy::start(
        "killed",
        mode,
        "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')",
    )
    .await;
    let read = "SELECT v FROM kv WHERE k = 1";
    for kill in 1..=2 {
        let old = w.cached(read).await;
        let killed = w
            .direct
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = $1",
                &[&w.application_name],
            )
            .await
            .expect("kill the walsender");
        assert_eq!(killed, 1, "kill {kill}: one walsender streams for the invalidator");
        let new = format!("v{kill}");
        w.direct.execute("UPDATE kv SET v = $1 WHERE k = 1", &[&new]).await.expect("direct write");
        assert_ne!(old, new);

        // Down: the invalidator notices (a new stream takes at least its 250 ms retry delay).
        let killed_at = Instant::now();
        while w.stream_up() != Some(0.0) {
            assert!(
                killed_at.elapsed() < FRESH_WITHIN,
                "kill {kill}: strata_wal_stream_up is {:?}, not 0, {FRESH_WITHIN:?} after the kill",
                w.stream_up()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (hits, bypasses) = (w.hits(), w.wal_bypasses());
        let served = w.served(read).await;
        assert_eq!(served, new, "kill {kill}: served stale while the stream was down");
        assert_eq!(w.hits(), hits, "kill {kill}: a lookup hit while the stream was down");
        assert!(
            w.wal_bypasses() > bypasses,
            "kill {kill}: a lookup while the stream was down was not a wal_unavailable bypass"
        );

        // Back: a read hits again, and no read ever serves the value from before the write.
        loop {
            let before = w.hits();
            let served = w.served(read).await;
            assert_eq!(served, new, "kill {kill}: served stale after the stream came back");
            if w.hits() > before {
                break;
            }
            assert!(
                killed_at.elapsed() < HIT_WITHIN,
                "kill {kill}: reads never hit again within {HIT_WITHIN:?} (strata_wal_stream_up {:?})",
                w.stream_up()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("{}: kill {kill}: cached again after {:?}", mode.name(), killed_at.elapsed());
        assert_eq!(w.stream_up(), Some(1.0), "kill {kill}: reads hit, so the stream is up");
        assert_eq!(w.truth(read).await, new);
    }
    w.finish().await;
}

in_both_modes!(walsender_killed);
