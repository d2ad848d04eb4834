//! The WAL invalidator against the harness's PostgreSQL: writes made directly on the database
//! (not through Strata) make cached results unreachable, a broken stream bypasses the cache until
//! a new one is up, and an invalidator that cannot run leaves the cache working.
#![cfg(feature = "wal")]
// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use strata::{
    BypassReason, KeyScope, Loaded, Lookup, QueryCache, Request, SettingsDigest, Source, WalConfig,
    WalInvalidator,
};
use strata_l1::HotTier;
use tokio_postgres::{Client, NoTls};

fn database_url() -> String {
    std::env::var("STRATA_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "STRATA_TEST_DATABASE_URL is unset: run `cargo xtask test`, which starts a throwaway PostgreSQL"
        )
    })
}

async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&database_url(), NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal_level, "logical", "the server must decode its WAL: run `cargo xtask test`");
    client
}

/// Names of this test's own, so that parallel tests and test binaries never meet.
fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A configuration for the harness's server, as `user`. The lag bound is generous: tests in
/// parallel (a large transaction, below) delay every stream, and only the lag test means to see it.
fn config(names: &str, user: Option<&str>) -> WalConfig {
    let builder = WalConfig::builder().with_lag_bound(Duration::from_secs(10));
    with_server(builder, names, user).build().unwrap()
}

/// `builder` completed for the harness's server.
fn rebuild(builder: strata::WalConfigBuilder, names: &str) -> WalConfig {
    with_server(builder, names, None).build().unwrap()
}

fn with_server(
    builder: strata::WalConfigBuilder,
    names: &str,
    user: Option<&str>,
) -> strata::WalConfigBuilder {
    let pg: tokio_postgres::Config = database_url().parse().unwrap();
    let host = match &pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the harness's PostgreSQL is reached over TCP, not {other:?}"),
    };
    builder
        .with_upstream(host, pg.get_ports()[0])
        .with_user(user.unwrap_or_else(|| pg.get_user().unwrap()))
        .with_database(pg.get_dbname().unwrap())
        .with_publication(format!("pub_{names}"))
        .with_slot_prefix("strata_test")
        .with_application_name(format!("strata-test-{names}"))
        .with_connect_timeout(Duration::from_secs(5))
}

fn cache() -> QueryCache {
    QueryCache::builder().with_l1(HotTier::builder().build().unwrap()).build().unwrap()
}

fn scope() -> KeyScope {
    KeyScope::new("postgres", "app", SettingsDigest::of([("search_path", "public")]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Hit,
    Miss,
    WalUnavailable,
    OtherBypass,
}

async fn look(cache: &QueryCache, sql: &str) -> Seen {
    let scope = scope();
    match cache.lookup(&Request::new(&scope, sql)).await {
        Lookup::Hit(_) => Seen::Hit,
        Lookup::Miss(ticket) => {
            ticket.abandon();
            Seen::Miss
        }
        Lookup::Bypass(b) if *b.reason() == BypassReason::WalUnavailable => Seen::WalUnavailable,
        Lookup::Bypass(_) => Seen::OtherBypass,
    }
}

/// Fills a read and checks that the next lookup hits.
async fn fill(cache: &QueryCache, sql: &str) {
    let scope = scope();
    let load =
        || async { Ok::<_, std::io::Error>(Loaded { payload: Bytes::from_static(b"rows"), row_count: 1 }) };
    let answer = cache.get_or_fill(&Request::new(&scope, sql), load).await.unwrap();
    assert_eq!(answer.source, Source::Database, "{sql}");
    assert_eq!(look(cache, sql).await, Seen::Hit, "{sql} was filled");
}

/// Polls until a lookup of `sql` is `want`, for at most `within`; returns how long it took.
async fn wait_for(cache: &QueryCache, sql: &str, want: Seen, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let seen = look(cache, sql).await;
        if seen == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: {sql} was still {seen:?} after {within:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn gauge(cache: &QueryCache, name: &str) -> Option<f64> {
    cache
        .registry()
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .and_then(|family| family.get_metric().first().map(|m| m.get_gauge().get_value()))
}

/// Waits until the invalidator streams (the gate opened with the stream up).
async fn wait_streaming(cache: &QueryCache, within: Duration) {
    let started = Instant::now();
    while gauge(cache, "strata_wal_stream_up") != Some(1.0) {
        assert!(started.elapsed() < within, "the WAL stream did not come up within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drops what a test created: the publication, after its walsender is gone.
async fn drop_publication(admin: &Client, names: &str) {
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = $1",
            &[&format!("strata-test-{names}")],
        )
        .await
        .unwrap();
    admin.batch_execute(&format!("DROP PUBLICATION IF EXISTS pub_{names}")).await.unwrap();
}

/// COPY FROM STDIN through `psql`, the way a bulk load reaches the server.
fn copy_from_stdin(table: &str, rows: &str) {
    use std::io::Write;
    let bindir = std::env::var("STRATA_TEST_PG_BINDIR").unwrap_or_else(|_| {
        panic!("STRATA_TEST_PG_BINDIR is unset: run `cargo xtask test`, which provides psql")
    });
    let mut child = std::process::Command::new(format!("{bindir}/psql"))
        .args([
            database_url().as_str(),
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            &format!("COPY {table} FROM STDIN"),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(rows.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "psql COPY {table} FROM STDIN failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_make_cached_reads_miss() {
    let admin = connect().await;
    let names = unique("writes");
    let (t, src, dst, part) =
        (format!("t_{names}"), format!("src_{names}"), format!("dst_{names}"), format!("p_{names}"));
    // PostgreSQL's default; the harness commits asynchronously, which delays decoding until the
    // WAL writer (or the next heartbeat) flushes.
    admin
        .batch_execute(&format!(
            "SET synchronous_commit = on;
             CREATE TABLE {t} (id int PRIMARY KEY, v text);
             CREATE TABLE {src} (id int PRIMARY KEY);
             CREATE TABLE {dst} (id int);
             CREATE FUNCTION {src}_fn() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO {dst} VALUES (NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER {src}_trg AFTER INSERT ON {src} FOR EACH ROW EXECUTE FUNCTION {src}_fn();
             CREATE TABLE {part} (id int, v text) PARTITION BY RANGE (id);
             CREATE TABLE {part}_1 PARTITION OF {part} FOR VALUES FROM (0) TO (1000);
             INSERT INTO {t} VALUES (1, 'a'), (2, 'b');"
        ))
        .await
        .unwrap();

    let cache = cache();
    let invalidator = WalInvalidator::start(config(&names, None), cache.clone()).unwrap();
    wait_streaming(&cache, Duration::from_secs(20)).await;

    let read_t = format!("SELECT v FROM {t} ORDER BY id");
    let cases: Vec<(&str, String, String)> = vec![
        ("insert", read_t.clone(), format!("INSERT INTO {t} VALUES (3, 'c')")),
        ("update", read_t.clone(), format!("UPDATE {t} SET v = 'z' WHERE id = 1")),
        ("delete", read_t.clone(), format!("DELETE FROM {t} WHERE id = 2")),
        ("truncate", read_t.clone(), format!("TRUNCATE {t}")),
        ("trigger", format!("SELECT count(*) FROM {dst}"), format!("INSERT INTO {src} VALUES (1)")),
        (
            "partition",
            format!("SELECT count(*) FROM {part}"),
            format!("INSERT INTO {part}_1 VALUES (5, 'x')"),
        ),
        ("copy", read_t.clone(), String::new()),
    ];
    let mut slowest = (Duration::ZERO, "");
    for (what, read, write) in cases {
        fill(&cache, &read).await;
        if what == "copy" {
            copy_from_stdin(&t, "10\tten\n11\televen\n");
        } else {
            admin.batch_execute(&write).await.unwrap();
        }
        let took = wait_for(&cache, &read, Seen::Miss, Duration::from_secs(5), what).await;
        slowest = slowest.max((took, what));
    }
    eprintln!("slowest direct write to a miss: {slowest:?}");

    // Heartbeats arrive and set the lag.
    let started = Instant::now();
    while gauge(&cache, "strata_wal_lag_seconds").is_none_or(|lag| lag <= 0.0) {
        assert!(started.elapsed() < Duration::from_secs(5), "no heartbeat set the lag gauge");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lag = gauge(&cache, "strata_wal_lag_seconds").unwrap();
    eprintln!("heartbeat lag: {:.1} ms", lag * 1e3);
    assert!(lag < 10.0, "the heartbeat lag is under its bound: {lag}");

    drop(invalidator);
    assert_eq!(gauge(&cache, "strata_wal_stream_up"), Some(0.0), "dropping it stops the stream");
    drop_publication(&admin, &names).await;
    admin
        .batch_execute(&format!("DROP TABLE {t}, {src}, {dst}, {part}; DROP FUNCTION {src}_fn()"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_bypasses_until_a_new_one_invalidated_everything() {
    let admin = connect().await;
    let names = unique("broken");
    let t = format!("t_{names}");
    admin.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY)")).await.unwrap();

    let cache = cache();
    let invalidator = WalInvalidator::start(config(&names, None), cache.clone()).unwrap();
    wait_streaming(&cache, Duration::from_secs(20)).await;
    let read = format!("SELECT id FROM {t}");
    fill(&cache, &read).await;

    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = $1",
            &[&invalidator.config().application_name()],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1, "one walsender streams for the invalidator");
    wait_for(&cache, &read, Seen::WalUnavailable, Duration::from_secs(5), "after the kill").await;
    assert_eq!(gauge(&cache, "strata_wal_stream_up"), Some(0.0));

    // A new slot: nothing committed meanwhile was seen, so everything was invalidated, and the
    // result cached before the kill is a miss.
    let recovered = wait_for(&cache, &read, Seen::Miss, Duration::from_secs(20), "after recovery").await;
    eprintln!("recovered in {recovered:?}");
    assert_eq!(gauge(&cache, "strata_wal_stream_up"), Some(1.0));
    fill(&cache, &read).await;

    drop(invalidator);
    drop_publication(&admin, &names).await;
    admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidator_that_cannot_run_leaves_the_cache_working() {
    let admin = connect().await;
    let names = unique("norepl");
    // A role without REPLICATION (and not superuser, so it cannot create the publication either).
    let role = format!("role_{names}");
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN NOREPLICATION")).await.unwrap();

    let cache = cache();
    let invalidator = WalInvalidator::start(config(&names, Some(&role)), cache.clone()).unwrap();
    let read = format!("SELECT id FROM nowhere_{names}");
    // The gate opens once the first attempt failed: lookups answer as without an invalidator.
    let started = Instant::now();
    loop {
        let seen = look(&cache, &read).await;
        if seen != Seen::WalUnavailable {
            assert_eq!(seen, Seen::Miss);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the gate stayed closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fill(&cache, &read).await;
    assert_eq!(gauge(&cache, "strata_wal_stream_up"), Some(0.0), "no stream");

    drop(invalidator);
    admin.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_stream_bypasses_until_it_catches_up() {
    let admin = connect().await;
    let names = unique("lagging");
    let t = format!("t_{names}");
    admin.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();

    let cache = cache();
    let config = WalConfig::builder()
        .with_lag_bound(Duration::from_millis(100))
        .with_heartbeat_interval(Duration::from_millis(20));
    let config = rebuild(config, &names);
    let invalidator = WalInvalidator::start(config, cache.clone()).unwrap();
    wait_streaming(&cache, Duration::from_secs(20)).await;
    let read = format!("SELECT id FROM {t}");
    fill(&cache, &read).await;

    // One large transaction: pgoutput decodes it only after its commit, and the heartbeats that
    // follow it in the WAL wait behind its rows.
    admin
        .batch_execute(&format!("INSERT INTO {t} SELECT g FROM generate_series(1, 300000) g"))
        .await
        .unwrap();
    let closed =
        wait_for(&cache, &read, Seen::WalUnavailable, Duration::from_secs(20), "while lagging").await;
    let caught_up = wait_for(&cache, &read, Seen::Miss, Duration::from_secs(60), "after catching up").await;
    eprintln!("lagging after {closed:?}, caught up {caught_up:?} later");

    drop(invalidator);
    drop_publication(&admin, &names).await;
    admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}
