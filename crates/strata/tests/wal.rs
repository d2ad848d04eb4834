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
    NotStreamed,
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
        Lookup::Bypass(b) if matches!(b.reason(), BypassReason::NotStreamed(_)) => Seen::NotStreamed,
        Lookup::Bypass(_) => Seen::OtherBypass,
    }
}

/// Fills a read and checks that a lookup then hits. A fill may be refused (the stream reported a
/// change of state, a heartbeat or a lag, while it ran: the cache keeps nothing it cannot vouch
/// for), so it is tried again, a bounded number of times.
async fn fill(cache: &QueryCache, sql: &str) {
    let scope = scope();
    let load =
        || async { Ok::<_, std::io::Error>(Loaded { payload: Bytes::from_static(b"rows"), row_count: 1 }) };
    for attempt in 0..50 {
        let answer = cache.get_or_fill(&Request::new(&scope, sql), load).await.unwrap();
        if attempt == 0 {
            assert_eq!(answer.source, Source::Database, "{sql}");
        }
        if look(cache, sql).await == Seen::Hit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{sql} was filled 50 times and never hit");
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
             CREATE TABLE {dst} (id int PRIMARY KEY);
             CREATE FUNCTION {src}_fn() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO {dst} VALUES (NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER {src}_trg AFTER INSERT ON {src} FOR EACH ROW EXECUTE FUNCTION {src}_fn();
             CREATE TABLE {part} (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
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
    admin.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY)")).await.unwrap();

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

/// A fresh database of the test's own (so that whether the DDL trigger is installed is the
/// test's choice), and a connection to it.
async fn own_database(admin: &Client, names: &str) -> (String, Client) {
    let db = format!("db_{names}");
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let mut pg: tokio_postgres::Config = database_url().parse().unwrap();
    pg.dbname(&db);
    let (client, connection) = pg.connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.batch_execute("SET synchronous_commit = on").await.unwrap();
    (db, client)
}

async fn drop_database(admin: &Client, names: &str, db: &str) {
    drop_publication(admin, names).await;
    // The invalidator's slot is temporary: it goes when its walsender exits, which happens a
    // little after the walsender is told to end. DROP DATABASE refuses (55006) while a slot in
    // the database is active, so wait for the slot to go first.
    for _ in 0..200 {
        let active: i64 = admin
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE database = $1", &[&db])
            .await
            .unwrap()
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relations_the_stream_cannot_see_are_never_cached_and_ddl_reaches_the_cache() {
    let admin = connect().await;
    let names = unique("unseen");
    let (db, direct) = own_database(&admin, &names).await;
    direct
        .batch_execute(
            "CREATE TABLE logged (id int PRIMARY KEY);
             CREATE UNLOGGED TABLE scratch (id int);
             CREATE VIEW over_scratch AS SELECT id FROM scratch;
             CREATE TABLE parent (id int);
             CREATE UNLOGGED TABLE child () INHERITS (parent);
             CREATE MATERIALIZED VIEW summary AS SELECT count(*) AS n FROM logged;
             CREATE TABLE other (id int PRIMARY KEY);
             CREATE TABLE nokey (id int); INSERT INTO nokey VALUES (1)",
        )
        .await
        .unwrap();
    let cache = cache();
    let builder = with_server(WalConfig::builder().with_lag_bound(Duration::from_secs(10)), &names, None)
        .with_database(&db);
    let invalidator = WalInvalidator::start(builder.build().unwrap(), cache.clone()).unwrap();
    wait_streaming(&cache, Duration::from_secs(20)).await;

    // Writes to these never reach the stream: they must bypass, whatever reads them.
    for read in [
        "SELECT * FROM scratch",
        "SELECT * FROM public.scratch",
        "SELECT * FROM over_scratch",
        "SELECT * FROM parent",
        "SELECT * FROM logged JOIN scratch USING (id)",
    ] {
        assert_eq!(look(&cache, read).await, Seen::NotStreamed, "{read}");
    }
    // The trigger is installed (superuser): a materialized view's refresh reaches the stream.
    let installed: i64 = direct
        .query_one("SELECT count(*) FROM pg_event_trigger WHERE evtname = 'strata_ddl'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(installed, 1, "the DDL trigger was installed");
    fill(&cache, "SELECT n FROM summary").await;
    direct.batch_execute("INSERT INTO logged VALUES (1); REFRESH MATERIALIZED VIEW summary").await.unwrap();
    wait_for(&cache, "SELECT n FROM summary", Seen::Miss, Duration::from_secs(5), "after REFRESH").await;

    // DDL made directly: a table becomes unlogged; cached reads of it stop being served.
    fill(&cache, "SELECT id FROM logged").await;
    fill(&cache, "SELECT id FROM other").await;
    // A published table cannot become unlogged (PostgreSQL's rule): the operator takes it out
    // of the publication first.
    let refused = direct.batch_execute("ALTER TABLE other SET UNLOGGED").await.unwrap_err();
    assert!(
        refused.to_string().contains("publication") || format!("{refused:?}").contains("publication"),
        "{refused:?}"
    );
    direct
        .batch_execute(&format!(
            "ALTER PUBLICATION pub_{names} DROP TABLE other; ALTER TABLE other SET UNLOGGED"
        ))
        .await
        .unwrap();
    wait_for(&cache, "SELECT id FROM other", Seen::NotStreamed, Duration::from_secs(5), "SET UNLOGGED").await;
    // DDL invalidates everything (the catalog map may have changed).
    assert_eq!(look(&cache, "SELECT id FROM logged").await, Seen::Miss, "DDL invalidated everything");

    // A table without a replica identity is not published (PostgreSQL would refuse its UPDATEs
    // and DELETEs), so it is not cached; once it has a key, it is.
    direct
        .batch_execute("UPDATE nokey SET id = 2; DELETE FROM nokey; INSERT INTO nokey VALUES (1)")
        .await
        .unwrap();
    assert_eq!(look(&cache, "SELECT id FROM nokey").await, Seen::NotStreamed);
    direct.batch_execute("ALTER TABLE nokey ADD PRIMARY KEY (id)").await.unwrap();
    wait_for(&cache, "SELECT id FROM nokey", Seen::Miss, Duration::from_secs(5), "after ADD PRIMARY KEY")
        .await;
    fill(&cache, "SELECT id FROM nokey").await;
    direct.batch_execute("UPDATE nokey SET id = 3").await.unwrap();
    wait_for(&cache, "SELECT id FROM nokey", Seen::Miss, Duration::from_secs(5), "a keyed table is streamed")
        .await;
    // Losing its key takes it out of the publication in the same transaction: writes keep working.
    direct
        .batch_execute("BEGIN; ALTER TABLE nokey DROP CONSTRAINT nokey_pkey; UPDATE nokey SET id = 4; COMMIT")
        .await
        .unwrap();
    direct.batch_execute("DELETE FROM nokey").await.unwrap();
    wait_for(
        &cache,
        "SELECT id FROM nokey",
        Seen::NotStreamed,
        Duration::from_secs(5),
        "after DROP CONSTRAINT",
    )
    .await;

    drop(invalidator);
    assert_eq!(look(&cache, "SELECT * FROM scratch").await, Seen::Miss, "without an invalidator, as before");
    drop(direct);
    drop_database(&admin, &names, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ddl_trigger_the_schema_fingerprint_sees_ddl() {
    let admin = connect().await;
    let names = unique("noddl");
    let (db, direct) = own_database(&admin, &names).await;
    direct
        .batch_execute(
            "CREATE TABLE logged (id int PRIMARY KEY);
             CREATE MATERIALIZED VIEW summary AS SELECT count(*) AS n FROM logged",
        )
        .await
        .unwrap();
    let cache = cache();
    let builder = with_server(WalConfig::builder().with_lag_bound(Duration::from_secs(10)), &names, None)
        .with_database(&db)
        .with_ddl_trigger(false);
    let invalidator = WalInvalidator::start(builder.build().unwrap(), cache.clone()).unwrap();
    wait_streaming(&cache, Duration::from_secs(20)).await;
    let installed: i64 = direct.query_one("SELECT count(*) FROM pg_event_trigger", &[]).await.unwrap().get(0);
    assert_eq!(installed, 0, "no trigger was installed");
    // A refresh made directly would go unseen: never cached.
    assert_eq!(look(&cache, "SELECT n FROM summary").await, Seen::NotStreamed);

    fill(&cache, "SELECT id FROM logged").await;
    direct.batch_execute("CREATE UNLOGGED TABLE later (id int)").await.unwrap();
    // Seen by the fingerprint within a few heartbeats; everything is invalidated with it.
    wait_for(&cache, "SELECT id FROM logged", Seen::Miss, Duration::from_secs(5), "fingerprint").await;
    assert_eq!(look(&cache, "SELECT id FROM later").await, Seen::NotStreamed);
    // The invalidator itself keeps its publication in step: a table without a key stays out of it
    // (its writes keep working), a keyed one is added and streamed.
    direct
        .batch_execute("CREATE TABLE plain (id int); INSERT INTO plain VALUES (1); UPDATE plain SET id = 2")
        .await
        .unwrap();
    direct.batch_execute("CREATE TABLE keyed (id int PRIMARY KEY)").await.unwrap();
    wait_for(&cache, "SELECT id FROM keyed", Seen::Miss, Duration::from_secs(5), "keyed table added").await;
    wait_for(&cache, "SELECT id FROM plain", Seen::NotStreamed, Duration::from_secs(5), "keyless table")
        .await;
    fill(&cache, "SELECT id FROM keyed").await;
    direct.batch_execute("INSERT INTO keyed VALUES (1)").await.unwrap();
    wait_for(&cache, "SELECT id FROM keyed", Seen::Miss, Duration::from_secs(5), "keyed table streamed")
        .await;

    drop(invalidator);
    drop(direct);
    drop_database(&admin, &names, &db).await;
}

fn redis_url() -> String {
    std::env::var("STRATA_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_URL is unset: run `cargo xtask test`"))
}

/// A cache whose versions are shared through Redis under `prefix`, like every proxy of a fleet.
async fn shared_cache(prefix: &str) -> QueryCache {
    let versions = strata::RedisVersions::builder(redis_url())
        .with_prefix(format!("{prefix}versions:"))
        .with_heartbeat(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    QueryCache::builder()
        .with_l1(HotTier::builder().build().unwrap())
        .with_version_store(std::sync::Arc::new(versions))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_streams_for_the_fleet_and_another_takes_over_when_it_dies() {
    let admin = connect().await;
    let names = unique("lease");
    let t = format!("t_{names}");
    admin
        .batch_execute(&format!(
            "SET synchronous_commit = on; CREATE TABLE {t} (id int PRIMARY KEY, v int); INSERT INTO {t} VALUES (1, 0)"
        ))
        .await
        .unwrap();
    let prefix = format!("strata_test:{names}:");
    let leased = || {
        let builder = WalConfig::builder()
            .with_lag_bound(Duration::from_secs(2))
            .with_heartbeat_interval(Duration::from_millis(100))
            .with_redis_lease(redis_url(), prefix.clone())
            .with_lease_ttl(Duration::from_secs(1));
        rebuild(builder, &names)
    };
    let caches = [shared_cache(&prefix).await, shared_cache(&prefix).await];
    let mut invalidators: Vec<Option<WalInvalidator>> =
        caches.iter().map(|c| Some(WalInvalidator::start(leased(), c.clone()).unwrap())).collect();
    for cache in &caches {
        wait_streaming(cache, Duration::from_secs(20)).await;
    }
    let held: Vec<f64> = caches.iter().map(|c| gauge(c, "strata_wal_lease_held").unwrap()).collect();
    assert_eq!(held.iter().sum::<f64>(), 1.0, "exactly one process holds the lease: {held:?}");
    let holder = held.iter().position(|h| *h == 1.0).unwrap();
    let follower = 1 - holder;
    let streaming = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1",
            &[&format!("strata-test-{names}")],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(streaming, 1, "one walsender for the fleet");

    // A direct write reaches both through the one stream.
    let read = format!("SELECT v FROM {t} WHERE id = 1");
    for cache in &caches {
        fill(cache, &read).await;
    }
    admin.batch_execute(&format!("UPDATE {t} SET v = 1 WHERE id = 1")).await.unwrap();
    for cache in &caches {
        wait_for(cache, &read, Seen::Miss, Duration::from_secs(5), "one stream for both").await;
        fill(cache, &read).await;
    }

    // The holder dies without releasing the lease; a write lands before anyone streams again.
    invalidators[holder] = None;
    admin.batch_execute(&format!("UPDATE {t} SET v = 2 WHERE id = 1")).await.unwrap();
    let survivor = &caches[follower];
    // It stops answering within the lag bound (it cannot know the write happened)...
    let stopped = Instant::now();
    loop {
        match look(survivor, &read).await {
            Seen::Hit => assert!(
                stopped.elapsed() < Duration::from_secs(3),
                "the follower kept serving after the holder died"
            ),
            Seen::WalUnavailable | Seen::Miss => break,
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...then takes the lease over, invalidates everything and answers again.
    let started = Instant::now();
    while gauge(survivor, "strata_wal_lease_held") != Some(1.0) {
        assert!(started.elapsed() < Duration::from_secs(20), "nobody took the lease over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("takeover after {:?}", stopped.elapsed());
    wait_for(survivor, &read, Seen::Miss, Duration::from_secs(20), "after the takeover").await;
    fill(survivor, &read).await;
    admin.batch_execute(&format!("UPDATE {t} SET v = 3 WHERE id = 1")).await.unwrap();
    wait_for(survivor, &read, Seen::Miss, Duration::from_secs(5), "the new holder streams").await;

    invalidators.clear();
    drop_publication(&admin, &names).await;
    admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}
