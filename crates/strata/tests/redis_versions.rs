//! Integration tests of `RedisVersions` against real redis-server processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use strata::{
    BypassReason, KeyScope, Lookup, QueryCache, RedisVersions, Request, SettingsDigest, VersionStats,
    WriteEffect,
};
use strata_core::{ErrorKind, TableName, VersionHealth, VersionStore, VersionView};
use strata_l1::HotTier;
use strata_l2::{RedisStorage, WarmTier};

const LIVENESS: Duration = Duration::from_secs(5);

fn shared_redis_url() -> String {
    std::env::var("STRATA_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_URL is unset: run `cargo xtask test`"))
}

fn redis_server_binary() -> String {
    std::env::var("STRATA_TEST_REDIS_SERVER")
        .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_SERVER is unset: run `cargo xtask test`"))
}

/// A key prefix no other test (or test run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("strata-test:versions:{test}:{}:{nanos}:", std::process::id())
}

fn raw(url: &str) -> redis::Connection {
    match redis::Client::open(url).and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2))) {
        Ok(con) => con,
        Err(e) => panic!("cannot connect to {url}: {e}"),
    }
}

/// Deletes a test's keys from the shared Redis (never FLUSHALL there).
fn cleanup(url: &str, prefix: &str) {
    let mut con = raw(url);
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(format!("{prefix}versions"))
        .arg(format!("{prefix}seq"))
        .arg(format!("{prefix}epoch"))
        .exec(&mut con);
}

fn t(name: &str) -> TableName {
    TableName::new(name)
}

fn read1(store: &RedisVersions, table: &TableName) -> (u64, VersionView) {
    let mut out = Vec::new();
    let view = store.read(std::slice::from_ref(table), &mut out);
    (out[0], view)
}

async fn store(url: &str, prefix: &str) -> RedisVersions {
    builder(url, prefix).build().await.unwrap_or_else(|e| panic!("build failed: {e}"))
}

fn builder(url: &str, prefix: &str) -> strata::RedisVersionsBuilder {
    RedisVersions::builder(url)
        .with_prefix(prefix)
        // Generous: the machine running the tests may be busy; the down test sets a short one.
        .with_deadline(Duration::from_secs(2))
        .with_heartbeat(Duration::from_millis(100))
        .with_grace(Duration::from_millis(200))
        .with_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

async fn synchronized(store: &RedisVersions) {
    assert!(
        store.wait_for(VersionHealth::Synchronized, LIVENESS).await,
        "store did not synchronize within {LIVENESS:?}: {:?}",
        store.stats()
    );
}

/// Polls `cond` (not sleeping on time in the logic: only a liveness bound).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIVENESS, "not within {LIVENESS:?}: {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    start.elapsed()
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_micros();
    format!(
        "n={} p50={}us p99={}us max={}us",
        samples.len(),
        at(0.5),
        at(0.99),
        samples.last().map_or(0, Duration::as_micros)
    )
}

/// A redis-server of our own on a free port, for tests that kill it.
struct OwnRedis {
    port: u16,
    /// Where the server writes its RDB file on `SAVE` and loads it from when it starts.
    dir: Option<PathBuf>,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let mut me = Self::unstarted(None);
        me.spawn();
        me
    }

    /// A free port where nothing listens until [`spawn`](Self::spawn). With a `dir`, the server
    /// loads the RDB file a server sharing that directory saved.
    fn unstarted(dir: Option<&Path>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        Self { port, dir: dir.map(Path::to_path_buf), child: None }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(self.dir.iter().flat_map(|d| [Path::new("--dir"), d.as_path()]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return;
            }
            assert!(start.elapsed() < LIVENESS, "own redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open, nothing answers.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().map(Child::id).unwrap_or_else(|| panic!("server not running"));
        let status = Command::new("kill").args([signal, &pid.to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid} failed");
    }

    /// Writes the RDB file into the server's directory.
    fn save(&self) {
        let mut con = raw(&self.url());
        redis::cmd("SAVE").exec(&mut con).unwrap_or_else(|e| panic!("SAVE failed: {e}"));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn public_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<RedisVersions>();
    check::<strata::RedisVersionsBuilder>();
    check::<VersionStats>();
}

#[test]
fn debug_masks_the_password() {
    let b = RedisVersions::builder("redis://app:hunter2@127.0.0.1:6379/0");
    let text = format!("{b:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("app:***@127.0.0.1"), "{text}");
}

#[tokio::test]
async fn invalid_configuration_is_a_config_error() {
    let cases = [
        RedisVersions::builder("not a url"),
        RedisVersions::builder("redis://127.0.0.1/").with_prefix(""),
        RedisVersions::builder("redis://127.0.0.1/").with_deadline(Duration::ZERO),
        RedisVersions::builder("redis://127.0.0.1/").with_heartbeat(Duration::ZERO),
        RedisVersions::builder("redis://127.0.0.1/").with_grace(Duration::ZERO),
        RedisVersions::builder("redis://127.0.0.1/").with_heartbeat(Duration::MAX),
        RedisVersions::builder("redis://127.0.0.1/")
            .with_reconnect_backoff(Duration::from_secs(1), Duration::MAX),
        RedisVersions::builder("redis://127.0.0.1/")
            .with_reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
    ];
    for case in cases {
        let shown = format!("{case:?}");
        match case.build().await {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Config, "{shown}: {e}"),
            Ok(_) => panic!("{shown} built"),
        }
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("strata-versions-{test}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A query cache with L1, L2 in the Redis at `url` and versions from `versions`.
fn query_cache(url: &str, prefix: &str, versions: Arc<RedisVersions>) -> QueryCache {
    let storage = RedisStorage::standalone(url)
        .with_key_prefix(format!("{prefix}l2:"))
        .build()
        .unwrap_or_else(|e| panic!("l2 storage: {e}"));
    let l2 = WarmTier::builder(Arc::new(storage))
        .with_deadline(Duration::from_secs(1))
        .build()
        .unwrap_or_else(|e| panic!("l2 tier: {e}"));
    QueryCache::builder()
        .with_l1(HotTier::builder().build().unwrap_or_else(|e| panic!("l1: {e}")))
        .with_l2(l2)
        .with_version_store(versions)
        .with_default_ttl(Duration::from_secs(600))
        .build()
        .unwrap_or_else(|e| panic!("query cache: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_built_while_redis_is_down_bypasses_then_syncs_without_missing_a_bump() {
    let dir = TempDir::new("start-down");
    // Nothing listens on this port until the test starts a server there.
    let mut redis = OwnRedis::unstarted(Some(&dir.0));
    let url = redis.url();
    let prefix = unique_prefix("start-down");
    let deadline = Duration::from_millis(300);
    let items = t("items");
    let audit = t("audit");
    let scope = KeyScope::new("shop", "app", SettingsDigest::default());
    let req = Request::new(&scope, "SELECT * FROM items WHERE id = 7");

    // Building is not an error, and a password never shows.
    let with_password = format!("redis://:secret@127.0.0.1:{}/", redis.port);
    match builder(&with_password, &prefix).with_deadline(deadline).build().await {
        Ok(s) => assert!(!format!("{s:?}").contains("secret"), "{s:?}"),
        Err(e) => panic!("a store built while redis is down failed: {e}"),
    }
    let start = Instant::now();
    let a = builder(&url, &prefix).with_deadline(deadline).build().await;
    let a = Arc::new(a.unwrap_or_else(|e| panic!("a store built while redis is down failed: {e}")));
    let built_in = start.elapsed();
    assert!(built_in < LIVENESS, "{built_in:?}");
    assert_eq!(a.health(), VersionHealth::Unsynchronized);
    assert_eq!(read1(&a, &items).1, VersionView::Unsynchronized);
    assert_eq!(a.stats().resyncs, 0, "{:?}", a.stats());
    let a_cache = query_cache(&url, &prefix, Arc::clone(&a));
    match a_cache.lookup(&req).await {
        Lookup::Bypass(bypass) => assert_eq!(bypass.reason(), &BypassReason::VersionsUnsynchronized),
        other => panic!("an unsynchronized store must bypass the cache, got {other:?}"),
    }
    // A write through A while Redis is down fails its bump, which stays pending.
    let err = a_cache.invalidate(&WriteEffect::Tables(vec![audit.clone()])).await;
    assert!(err.is_err(), "a bump succeeded with redis down");
    // Two units stay pending: the table's and its table-wide unit (key-level invalidation).
    assert_eq!(a.stats().pending_tables, 2, "{:?}", a.stats());

    // Meanwhile another instance, which can reach Redis (a scratch server sharing the data
    // directory), caches a result and then writes: the result is stale from then on.
    let b_version = {
        let mut scratch = OwnRedis::unstarted(Some(&dir.0));
        scratch.spawn();
        let b = Arc::new(store(&scratch.url(), &prefix).await);
        synchronized(&b).await;
        let b_cache = query_cache(&scratch.url(), &prefix, Arc::clone(&b));
        match b_cache.lookup(&req).await {
            Lookup::Miss(ticket) => {
                ticket.fill(Bytes::from_static(b"old"), 1).await;
            }
            other => panic!("expected a miss to fill, got {other:?}"),
        }
        // The old result is in Redis (a cache without it in L1 finds it in L2).
        let other_cache = query_cache(&scratch.url(), &prefix, Arc::clone(&b));
        assert!(matches!(other_cache.lookup(&req).await, Lookup::Hit(h) if h.tier() == "l2"));
        b_cache
            .invalidate(&WriteEffect::Tables(vec![items.clone()]))
            .await
            .unwrap_or_else(|e| panic!("bump through B: {e}"));
        assert!(matches!(other_cache.lookup(&req).await, Lookup::Miss(_)));
        let (version, view) = read1(&b, &items);
        assert_eq!(view, VersionView::Current);
        scratch.save();
        scratch.kill();
        version
    };
    assert_eq!(a.health(), VersionHealth::Unsynchronized);

    // A server starts on A's port with that data: A picks it up by itself.
    redis.spawn();
    let started = Instant::now();
    synchronized(&a).await;
    println!(
        "built while redis was down in {}ms; synchronized {}ms after redis started",
        built_in.as_millis(),
        started.elapsed().as_millis()
    );
    // B's write is in A's first snapshot: the old result is never served.
    assert_eq!(read1(&a, &items), (b_version, VersionView::Current));
    match a_cache.lookup(&req).await {
        Lookup::Miss(ticket) => {
            ticket.fill(Bytes::from_static(b"new"), 1).await;
        }
        Lookup::Hit(hit) => panic!("served {:?}, cached before a write A could not see", hit.payload()),
        Lookup::Bypass(bypass) => panic!("still bypassing once synchronized: {bypass:?}"),
    }
    match a_cache.lookup(&req).await {
        Lookup::Hit(hit) => assert_eq!(hit.payload(), &Bytes::from_static(b"new")),
        other => panic!("expected a hit once synchronized, got {other:?}"),
    }
    // A's bump made while Redis was down was applied to Redis before A synchronized.
    assert_eq!(a.stats().pending_tables, 0, "{:?}", a.stats());
    let mut con = raw(&url);
    let stored: u64 =
        redis::cmd("HGET").arg(format!("{prefix}versions")).arg("audit").query(&mut con).unwrap_or(0);
    assert_eq!(read1(&a, &audit), (stored, VersionView::Current));

    // From now on the change channel carries writes as usual.
    let c = store(&url, &prefix).await;
    synchronized(&c).await;
    c.bump(std::slice::from_ref(&items)).await.unwrap_or_else(|e| panic!("{e}"));
    let written = Instant::now();
    while let Lookup::Hit(hit) = a_cache.lookup(&req).await {
        assert_eq!(hit.payload(), &Bytes::from_static(b"new"));
        assert!(written.elapsed() < LIVENESS, "A still served the result {LIVENESS:?} after a write");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    redis.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bump_is_read_back_immediately_and_debug_hides_secrets() {
    let url = shared_redis_url();
    let prefix = unique_prefix("ryw");
    let a = store(&url, &prefix).await;
    synchronized(&a).await;
    let users = t("users");
    let orders = t("orders");
    let mut out = vec![99];
    assert_eq!(a.read(&[users.clone(), orders.clone()], &mut out), VersionView::Current);
    let floor = out[0];
    assert_eq!(out, vec![floor, floor], "never-bumped tables read as the epoch floor");
    for i in 1..=20 {
        a.bump(std::slice::from_ref(&users)).await.unwrap_or_else(|e| panic!("bump: {e}"));
        assert_eq!(read1(&a, &users), (floor + i, VersionView::Current));
    }
    assert_eq!(read1(&a, &orders).0, floor);
    // Bumping a table twice in one call bumps it once.
    let v = a.bump_returning(&[orders.clone(), orders.clone()]).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, vec![floor + 1, floor + 1]);
    assert!(a.bump(&[]).await.is_ok());
    // The hot path: reported, not asserted (speed belongs in benches).
    let tables = [users.clone(), orders.clone()];
    let start = Instant::now();
    for _ in 0..100_000 {
        assert_eq!(a.read(&tables, &mut out), VersionView::Current);
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("read() of 2 tables: {} ns per call ({build} build)", start.elapsed().as_nanos() / 100_000);
    let text = format!("{a:?}");
    assert!(text.contains("Synchronized") && text.contains(&prefix), "{text}");
    // A store started later finds the versions in its snapshot.
    let b = store(&url, &prefix).await;
    synchronized(&b).await;
    assert_eq!(read1(&b, &users), (floor + 20, VersionView::Current));
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bump_through_one_store_reaches_the_other_within_a_measured_bound() {
    let url = shared_redis_url();
    let prefix = unique_prefix("propagation");
    let a = store(&url, &prefix).await;
    let b = Arc::new(store(&url, &prefix).await);
    synchronized(&a).await;
    synchronized(&b).await;
    let table = t("accounts");
    let mut after_return = Vec::new();
    let mut from_start = Vec::new();
    for _ in 0..300 {
        let target = read1(&a, &table).0 + 1;
        // A spinning reader thread, like a hot path, records when B first sees the new version.
        let seen = {
            let b = Arc::clone(&b);
            let table = table.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                loop {
                    let (v, view) = read1(&b, &table);
                    if v >= target && view == VersionView::Current {
                        return Some(Instant::now());
                    }
                    if start.elapsed() > LIVENESS {
                        return None;
                    }
                    std::thread::yield_now();
                }
            })
        };
        let start = Instant::now();
        a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("bump: {e}"));
        let returned = Instant::now();
        let seen = seen.join().ok().flatten().unwrap_or_else(|| panic!("B never saw version {target}"));
        after_return.push(seen.saturating_duration_since(returned));
        from_start.push(seen.saturating_duration_since(start));
    }
    println!("propagation A.bump returned -> B.read sees: {}", percentiles(after_return));
    println!("propagation A.bump called   -> B.read sees: {}", percentiles(from_start));
    let stats = b.stats();
    assert!(stats.messages_received >= 300, "{stats:?}");
    // Sequence gaps are real losses; the heartbeat may resync spuriously on a starved machine.
    assert_eq!((stats.gaps_detected, stats.malformed_messages), (0, 0), "{stats:?}");
    println!("B after the propagation run: {stats:?}");
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_makes_the_store_unsynchronized_until_it_resyncs() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("kill-pubsub");
    let a = store(&url, &prefix).await;
    // B reconnects slowly, so that A's bumps land while B is disconnected.
    let b = builder(&url, &prefix)
        .with_reconnect_backoff(Duration::from_millis(300), Duration::from_millis(300))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synchronized(&a).await;
    synchronized(&b).await;
    let table = t("items");
    a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
    eventually("B sees the first bump", || read1(&b, &table).0 == read1(&a, &table).0).await;
    let before = b.stats();

    let mut unsync_times = Vec::new();
    let mut resync_times = Vec::new();
    for _round in 0..3 {
        let mut con = raw(&url);
        let killed_at = Instant::now();
        let killed: u64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut con).unwrap_or(0);
        assert!(killed >= 2, "expected both subscriptions killed, got {killed}");
        assert!(b.wait_for(VersionHealth::Unsynchronized, LIVENESS).await, "B stayed synchronized");
        unsync_times.push(killed_at.elapsed());
        assert_eq!(read1(&b, &table).1, VersionView::Unsynchronized);
        // Bumps while B is disconnected (B waits 300 ms before reconnecting).
        for _ in 0..10 {
            a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let expected = read1(&a, &table).0;
        synchronized(&b).await;
        resync_times.push(killed_at.elapsed());
        assert_eq!(
            read1(&b, &table),
            (expected, VersionView::Current),
            "B missed bumps made while it was down"
        );
    }
    println!("CLIENT KILL -> B unsynchronized: {}", percentiles(unsync_times));
    println!("CLIENT KILL -> B synchronized again (300 ms backoff): {}", percentiles(resync_times));
    let after = b.stats();
    assert!(after.disconnects >= before.disconnects + 3, "{after:?}");
    assert!(after.resyncs >= before.resyncs + 3, "{after:?}");
    redis.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_lost_message_is_found_by_the_heartbeat() {
    let url = shared_redis_url();
    let prefix = unique_prefix("lost");
    let a = store(&url, &prefix).await;
    let b = store(&url, &prefix).await;
    synchronized(&b).await;
    let table = t("payments");
    a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
    let v = eventually_value(&b, &table, read1(&a, &table).0).await;
    // The bump script without its PUBLISH: the message is lost, no later message shows a gap.
    let mut con = raw(&url);
    let (new, _seq): (u64, u64) = redis::pipe()
        .atomic()
        .cmd("HINCRBY")
        .arg(format!("{prefix}versions"))
        .arg("payments")
        .arg(1)
        .cmd("INCR")
        .arg(format!("{prefix}seq"))
        .query(&mut con)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(new, v + 1);
    let lost_before = b.stats().lost_detected;
    let detected = eventually("B finds the lost bump", || read1(&b, &table).0 == new).await;
    println!("lost message found by heartbeat (100 ms) + grace (200 ms) after {}ms", detected.as_millis());
    assert!(b.stats().lost_detected > lost_before, "{:?}", b.stats());
    synchronized(&b).await;
    cleanup(&url, &prefix);
}

async fn eventually_value(store: &RedisVersions, table: &TableName, want: u64) -> u64 {
    eventually("version propagates", || read1(store, table).0 >= want).await;
    read1(store, table).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_in_the_messages_forces_a_resync() {
    let url = shared_redis_url();
    let prefix = unique_prefix("gap");
    let a = store(&url, &prefix).await;
    // A heartbeat far beyond the test, so only the message path can find the gap.
    let b = builder(&url, &prefix).with_heartbeat(Duration::from_secs(600)).build().await;
    let b = b.unwrap_or_else(|e| panic!("{e}"));
    synchronized(&b).await;
    let lost = t("lost_table");
    let seen = t("seen_table");
    a.bump(std::slice::from_ref(&lost)).await.unwrap_or_else(|e| panic!("{e}"));
    eventually_value(&b, &lost, read1(&a, &lost).0).await;
    // One silent bump of `lost`, then a published bump of another table.
    let mut con = raw(&url);
    let (new, _): (u64, u64) = redis::pipe()
        .atomic()
        .cmd("HINCRBY")
        .arg(format!("{prefix}versions"))
        .arg("lost_table")
        .arg(1)
        .cmd("INCR")
        .arg(format!("{prefix}seq"))
        .query(&mut con)
        .unwrap_or_else(|e| panic!("{e}"));
    let gaps_before = b.stats().gaps_detected;
    a.bump(std::slice::from_ref(&seen)).await.unwrap_or_else(|e| panic!("{e}"));
    let took = eventually("B resyncs after the gap", || read1(&b, &lost).0 == new).await;
    println!("gap found by message and resynced after {}us", took.as_micros());
    assert_eq!(b.stats().gaps_detected, gaps_before + 1);
    synchronized(&b).await;
    assert_eq!(read1(&b, &seen).0, read1(&a, &seen).0);
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_stale_messages_never_lower_a_version() {
    let url = shared_redis_url();
    let prefix = unique_prefix("malformed");
    let a = store(&url, &prefix).await;
    let b = store(&url, &prefix).await;
    synchronized(&b).await;
    let table = t("stock");
    for _ in 0..5 {
        a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let v = eventually_value(&b, &table, read1(&a, &table).0).await;
    let mut con = raw(&url);
    let channel = format!("{prefix}invalidations");
    let epoch: u64 = redis::cmd("GET").arg(format!("{prefix}epoch")).query(&mut con).unwrap_or(0);
    let seq: u64 = redis::cmd("GET").arg(format!("{prefix}seq")).query(&mut con).unwrap_or(0);
    // A replayed message with an old version and an old sequence number: max-merge keeps v.
    let received = b.stats().messages_received;
    let stale = format!("v1 {epoch} {seq} 1\n{}:5:stock", v - 3);
    let _: u64 = redis::cmd("PUBLISH").arg(&channel).arg(&stale).query(&mut con).unwrap_or(0);
    eventually("B receives the stale message", || b.stats().messages_received > received).await;
    assert_eq!(read1(&b, &table), (v, VersionView::Current));
    let resyncs = b.stats().resyncs;
    let garbage: &[&[u8]] = &[b"v1 nonsense", b"\xff\x00\x01", b""];
    for payload in garbage {
        let _: u64 = redis::cmd("PUBLISH").arg(&channel).arg(*payload).query(&mut con).unwrap_or(0);
    }
    eventually("B resynchronizes after the malformed messages", || b.stats().resyncs >= resyncs + 3).await;
    assert_eq!(b.stats().malformed_messages, 3);
    synchronized(&b).await;
    assert_eq!(read1(&b, &table), (v, VersionView::Current));
    a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(eventually_value(&b, &table, v + 1).await, v + 1);
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_bumps_in_time_and_applies_them_after_restart() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("down");
    let deadline = Duration::from_millis(300);
    let a = builder(&url, &prefix).with_deadline(deadline).build().await.unwrap_or_else(|e| panic!("{e}"));
    let b = builder(&url, &prefix).with_deadline(deadline).build().await.unwrap_or_else(|e| panic!("{e}"));
    synchronized(&a).await;
    synchronized(&b).await;
    let table = t("ledger");
    let untouched = t("untouched");
    for _ in 0..3 {
        a.bump(&[table.clone(), untouched.clone()]).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let before = eventually_value(&b, &table, read1(&a, &table).0).await;
    let untouched_before = eventually_value(&b, &untouched, read1(&a, &untouched).0).await;

    redis.kill();
    let killed_at = Instant::now();
    let start = Instant::now();
    let err = match a.bump(std::slice::from_ref(&table)).await {
        Err(e) => e,
        Ok(()) => panic!("bump succeeded with redis down"),
    };
    let bump_took = start.elapsed();
    assert!(matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout), "{err}");
    assert!(bump_took < deadline + Duration::from_millis(700), "bump took {bump_took:?}");
    assert_eq!(a.health(), VersionHealth::Unsynchronized);
    assert_eq!(read1(&a, &table).1, VersionView::Unsynchronized);
    assert_eq!(a.stats().pending_tables, 1);
    assert!(b.wait_for(VersionHealth::Unsynchronized, LIVENESS).await, "B did not notice redis is down");
    let b_unsync = killed_at.elapsed();
    // Still down: more failures, still unsynchronized, nothing served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.health(), VersionHealth::Unsynchronized);
    assert_eq!(read1(&b, &table).1, VersionView::Unsynchronized);

    // Redis comes back empty (no persistence): a new epoch, above every old version.
    redis.spawn();
    let restarted = Instant::now();
    synchronized(&a).await;
    let a_sync = restarted.elapsed();
    let after_a = read1(&a, &table);
    assert_eq!(after_a.1, VersionView::Current);
    assert!(after_a.0 > before, "{} <= {before}", after_a.0);
    assert_eq!(a.stats().pending_tables, 0);
    synchronized(&b).await;
    let b_sync = restarted.elapsed();
    let seen = eventually_value(&b, &table, after_a.0).await;
    assert_eq!(seen, after_a.0);
    // The pending bump really is in Redis: one bump of `ledger` in the new epoch.
    let mut con = raw(&url);
    let epoch: u64 = redis::cmd("GET").arg(format!("{prefix}epoch")).query(&mut con).unwrap_or(0);
    let stored: u64 =
        redis::cmd("HGET").arg(format!("{prefix}versions")).arg("ledger").query(&mut con).unwrap_or(0);
    assert_eq!(stored, epoch + 1);
    assert_eq!(stored, seen);
    assert!(epoch > before, "the new epoch {epoch} is not above the old version {before}");
    // A table Redis forgot reads as the new epoch in both stores: above its old version, so
    // results cached under the old version are unreachable.
    for s in [&a, &b] {
        assert_eq!(read1(s, &untouched), (epoch, VersionView::Current));
        assert!(epoch > untouched_before);
    }
    println!(
        "redis killed: bump failed after {}ms; B unsynchronized after {}ms; restarted: A synchronized after {}ms, B after {}ms",
        bump_took.as_millis(),
        b_unsync.as_millis(),
        a_sync.as_millis(),
        b_sync.as_millis()
    );
    assert!(a.stats().epoch_changes >= 1 || b.stats().epoch_changes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bumps_from_two_stores_get_unique_increasing_versions() {
    let url = shared_redis_url();
    let prefix = unique_prefix("concurrent");
    let a = Arc::new(store(&url, &prefix).await);
    let b = Arc::new(store(&url, &prefix).await);
    synchronized(&a).await;
    synchronized(&b).await;
    let table = t("counter");
    let floor = read1(&a, &table).0;
    let stop = Arc::new(AtomicBool::new(false));
    // Readers check that no store's view of the table ever goes down.
    let mut readers = Vec::new();
    for s in [&a, &b] {
        let s = Arc::clone(s);
        let table = table.clone();
        let stop = Arc::clone(&stop);
        readers.push(std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = read1(&s, &table).0;
                assert!(v >= last, "version went down from {last} to {v}");
                last = v;
                std::thread::yield_now();
            }
        }));
    }
    let mut tasks = Vec::new();
    for s in [&a, &b, &a, &b] {
        let s = Arc::clone(s);
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..50 {
                let v =
                    s.bump_returning(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
                // Read-your-writes: this store never reads below its own bump.
                assert!(read1(&s, &table).0 >= v[0]);
                got.push(v[0]);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(got.windows(2).all(|w| w[0] < w[1]), "not increasing: {got:?}");
        all.extend(got);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (floor + 1..=floor + 200).collect();
    assert_eq!(all, expected, "versions are not unique and dense");
    for s in [&a, &b] {
        eventually_value(s, &table, floor + 200).await;
        assert_eq!(read1(s, &table), (floor + 200, VersionView::Current));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().is_ok(), "a reader saw a version go down");
    }
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_ends_its_subscription() {
    let url = shared_redis_url();
    let prefix = unique_prefix("drop");
    let channel = format!("{prefix}invalidations");
    let subscribers = || -> u64 {
        let mut con = raw(&url);
        let reply: (String, u64) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query(&mut con).unwrap_or_default();
        reply.1
    };
    let a = store(&url, &prefix).await;
    synchronized(&a).await;
    assert_eq!(subscribers(), 1);
    drop(a);
    let took = eventually("the subscription ends after drop", || subscribers() == 0).await;
    println!("subscription ended {}ms after drop", took.as_millis());
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_keys_without_a_disconnect_move_both_stores_to_a_higher_epoch() {
    let url = shared_redis_url();
    let prefix = unique_prefix("dataloss");
    let a = store(&url, &prefix).await;
    let b = store(&url, &prefix).await;
    synchronized(&a).await;
    synchronized(&b).await;
    let table = t("orders");
    let untouched = t("customers");
    for _ in 0..5 {
        a.bump(&[table.clone(), untouched.clone()]).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let old = eventually_value(&b, &table, read1(&a, &table).0).await;
    let old_untouched = read1(&b, &untouched).0;
    // The keys vanish (FLUSHDB, eviction, a failover to an empty replica) while connections stay up.
    cleanup(&url, &prefix);
    let new = a.bump_returning(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"))[0];
    assert!(new > old, "the new epoch's version {new} is not above the old {old}");
    for s in [&a, &b] {
        synchronized(s).await;
        assert_eq!(eventually_value(s, &table, new).await, new);
        let (v, view) = read1(s, &untouched);
        assert_eq!((v, view), (new - 1, VersionView::Current), "a forgotten table reads as the new epoch");
        assert!(v > old_untouched);
    }
    assert!(a.stats().epoch_changes >= 1 && b.stats().epoch_changes >= 1, "{:?} {:?}", a.stats(), b.stats());
    cleanup(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_bumps_out_and_the_heartbeat_notices() {
    let redis = OwnRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("frozen");
    let deadline = Duration::from_millis(300);
    let a = builder(&url, &prefix).with_deadline(deadline).build().await.unwrap_or_else(|e| panic!("{e}"));
    let b = builder(&url, &prefix).with_deadline(deadline).build().await.unwrap_or_else(|e| panic!("{e}"));
    synchronized(&a).await;
    synchronized(&b).await;
    let table = t("frozen");
    a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("{e}"));
    let before = eventually_value(&b, &table, read1(&a, &table).0).await;

    // The connections stay open but nothing answers: only deadlines and pings can tell.
    redis.signal("-STOP");
    let frozen_at = Instant::now();
    let start = Instant::now();
    let err = match a.bump(std::slice::from_ref(&table)).await {
        Err(e) => e,
        Ok(()) => panic!("bump succeeded against a frozen redis"),
    };
    let bump_took = start.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(bump_took < deadline + Duration::from_millis(700), "bump took {bump_took:?}");
    assert_eq!(read1(&a, &table).1, VersionView::Unsynchronized);
    assert!(b.wait_for(VersionHealth::Unsynchronized, LIVENESS).await, "B did not notice the frozen redis");
    let b_noticed = frozen_at.elapsed();

    redis.signal("-CONT");
    let thawed = Instant::now();
    synchronized(&a).await;
    synchronized(&b).await;
    let recovered = thawed.elapsed();
    // A heartbeat sent while Redis was frozen may time out just after the thaw and send the store
    // through one more resynchronization (reads bypass meanwhile): it must end current.
    eventually("A reads current versions after the thaw", || read1(&a, &table).1 == VersionView::Current)
        .await;
    // The timed-out bump may also have run once Redis woke up: versions only grow, never lost.
    let after = read1(&a, &table);
    assert_eq!(after.1, VersionView::Current);
    assert!(after.0 > before, "{} <= {before}", after.0);
    assert_eq!(eventually_value(&b, &table, after.0).await, after.0);
    assert_eq!(a.stats().pending_tables, 0);
    println!(
        "redis frozen: bump timed out after {}ms; B unsynchronized after {}ms (heartbeat 100 ms + deadline 300 ms); thawed: both synchronized after {}ms",
        bump_took.as_millis(),
        b_noticed.as_millis(),
        recovered.as_millis()
    );
}

#[test]
fn a_store_whose_runtime_is_gone_stops_vouching_for_its_versions() {
    let url = shared_redis_url();
    let prefix = unique_prefix("runtime-gone");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let store = runtime.block_on(async {
        let s = store(&url, &prefix).await;
        synchronized(&s).await;
        s
    });
    assert_eq!(store.health(), VersionHealth::Synchronized);
    // Nothing keeps the mirror current once the runtime is gone.
    drop(runtime);
    assert_eq!(store.health(), VersionHealth::Unsynchronized);
    assert_eq!(read1(&store, &t("anything")).1, VersionView::Unsynchronized);
    drop(store);
    cleanup(&url, &prefix);
}
