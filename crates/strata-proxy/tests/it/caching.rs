//! The proxy with `strata::QueryCache` plugged in: answers identical to PostgreSQL's, hits that
//! rise when they should, every client reading its own writes, and no row crossing a scope.

use std::sync::Arc;

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};

use crate::differential::{pgbench, psql};
use crate::support::*;

/// A proxy with the cache on (L1 and the embedded L2), and the cache to read counters from.
async fn caching_proxy() -> (TestProxy, Arc<StrataCache>) {
    caching_proxy_in(None).await
}

/// A caching proxy, in transaction pooling mode over `pool` server connections when given.
async fn caching_proxy_in(pool: Option<usize>) -> (TestProxy, Arc<StrataCache>) {
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy = start_proxy(|b| {
        let b = b.with_cache(cache.clone());
        match pool {
            Some(size) => b
                .with_pool_mode(strata_proxy::PoolMode::Transaction)
                .with_pool_size(size)
                .with_auth_type(strata_proxy::AuthType::Trust),
            None => b,
        }
    })
    .await;
    (proxy, cache)
}

fn hits(cache: &StrataCache) -> u64 {
    cache.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum()
}

const SCRIPT: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags text[], doc jsonb, at timestamptz);
INSERT INTO items SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || g], jsonb_build_object('g', g), '2026-01-01'::timestamptz + g * interval '1 day' FROM generate_series(1, 50) g;
SELECT * FROM items WHERE id <= 3 ORDER BY id;
SELECT * FROM items WHERE id <= 3 ORDER BY id;
SELECT count(*), sum(price) FROM items;
SELECT count(*), sum(price) FROM items;
SELECT name FROM items WHERE id = 7;
UPDATE items SET name = 'renamed' WHERE id = 7;
SELECT name FROM items WHERE id = 7;
SELECT name FROM items WHERE id = 7;
SELECT 1/0;
SELECT doc->>'g', tags FROM items WHERE id IN (1, 2, 3) ORDER BY id;
SELECT doc->>'g', tags FROM items WHERE id IN (1, 2, 3) ORDER BY id;
DELETE FROM items WHERE id > 40;
SELECT count(*), sum(price) FROM items;
SELECT now() > '2000-01-01';
DROP TABLE items;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_gets_byte_identical_answers_and_repeated_reads_hit() {
    let db = "strata_cache_psql";
    fresh_database(db).await;
    let direct = psql(pg().port(), db, SCRIPT).await;
    let (proxy, cache) = caching_proxy().await;
    let before = hits(&cache);
    let through = psql(proxy.port(), db, SCRIPT).await;
    assert_eq!(String::from_utf8_lossy(&through.stdout), String::from_utf8_lossy(&direct.stdout));
    assert_eq!(String::from_utf8_lossy(&through.stderr), String::from_utf8_lossy(&direct.stderr));
    // Three repeated reads hit; the read after the UPDATE and the one after the DELETE did not
    // serve the old answer (the outputs match PostgreSQL's).
    assert!(hits(&cache) - before >= 4, "expected hits, got {}", hits(&cache) - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_binary_results_match_and_hit() {
    let db = "strata_cache_binary";
    fresh_database(db).await;
    let a = admin(db).await;
    a.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, f float8, n numeric, b bytea, ts timestamp);
         INSERT INTO t SELECT g, g / 3.0, g * 1.5, decode(md5(g::text), 'hex'), '2026-01-01'::timestamp + g * interval '1 hour' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let (proxy, cache) = caching_proxy().await;
    let c = connect(proxy.port(), "postgres", db, None).await.unwrap();
    let stmt = c
        .prepare("SELECT id, f, n::text, b, ts FROM t WHERE id BETWEEN $1 AND $2 ORDER BY id")
        .await
        .unwrap();
    let raw = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<Raw>> {
        rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect()).collect()
    };
    let before = hits(&cache);
    for round in 0..3 {
        for (lo, hi) in [(1i32, 10i32), (5, 50), (90, 100)] {
            let direct = raw(a
                .query(
                    "SELECT id, f, n::text, b, ts FROM t WHERE id BETWEEN $1 AND $2 ORDER BY id",
                    &[&lo, &hi],
                )
                .await
                .unwrap());
            let through = raw(c.query(&stmt, &[&lo, &hi]).await.unwrap());
            assert_eq!(through, direct, "round {round}, {lo}..{hi}");
        }
    }
    assert!(hits(&cache) - before >= 6, "the second and third rounds should hit: {}", hits(&cache) - before);
    // A write through the proxy is seen by the very next read.
    c.execute("UPDATE t SET f = -1 WHERE id = 5", &[]).await.unwrap();
    let row = c.query_one("SELECT f FROM t WHERE id = $1", &[&5i32]).await.unwrap();
    assert_eq!(row.get::<_, f64>(0), -1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_the_cache_has_no_failures_and_tpcb_balances_stay_consistent() {
    let db = "strata_cache_pgbench";
    fresh_database(db).await;
    pgbench(pg().port(), db, &["-i", "-s", "1", "-q"]).await;
    let (proxy, cache) = caching_proxy().await;
    for mode in ["simple", "extended", "prepared"] {
        let before = hits(&cache);
        let text =
            pgbench(proxy.port(), db, &["-M", mode, "-S", "-c", "4", "-j", "2", "-T", "2", "-n"]).await;
        assert!(text.contains("number of failed transactions: 0"), "{text}");
        assert!(hits(&cache) > before, "select-only in {mode} mode should hit the cache");
        let text = pgbench(proxy.port(), db, &["-M", mode, "-c", "4", "-j", "2", "-T", "2", "-n"]).await;
        assert!(text.contains("number of failed transactions: 0"), "{text}");
    }
    // Every TPC-B transaction adds one delta to an account, a teller, a branch and the history:
    // any stale read served inside the workload would break these sums.
    let c = admin(db).await;
    let row = c
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::int8, (SELECT sum(tbalance) FROM pgbench_tellers)::int8,
                    (SELECT sum(bbalance) FROM pgbench_branches)::int8, (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::int8",
            &[],
        )
        .await
        .unwrap();
    let sums: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert!(sums.iter().all(|s| *s == sums[0]), "balances diverged: {sums:?}");
    // And a read through the proxy agrees with PostgreSQL right now.
    let through = connect(proxy.port(), "postgres", db, None).await.unwrap();
    let q = "SELECT sum(abalance)::int8 FROM pgbench_accounts";
    assert_eq!(through.query_one(q, &[]).await.unwrap().get::<_, i64>(0), sums[0]);
}

async fn value(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT v FROM kv WHERE k = 1", &[]).await.unwrap().get(0)
}

async fn simple_value(c: &tokio_postgres::Client) -> String {
    column(c, "SELECT v FROM kv WHERE k = 1").await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_reads_its_own_and_others_committed_writes_and_rollbacks_change_nothing() {
    read_your_writes("strata_cache_ryw", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_holds_in_transaction_pooling() {
    // Two server connections for two clients: each request or transaction takes whichever is
    // free (one client's open transaction holds one, so the other's reads still run).
    read_your_writes("strata_cache_ryw_pooled", Some(2)).await;
}

async fn read_your_writes(db: &str, pool: Option<usize>) {
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')")
        .await
        .unwrap();
    let (proxy, cache) = caching_proxy_in(pool).await;
    let a = connect(proxy.port(), "postgres", db, None).await.unwrap();
    let mut b = connect(proxy.port(), "postgres", db, None).await.unwrap();

    // One connection, both protocols, autocommit.
    assert_eq!(value(&a).await, "v0");
    assert_eq!(simple_value(&a).await, "v0");
    a.execute("UPDATE kv SET v = 'v1' WHERE k = 1", &[]).await.unwrap();
    assert_eq!(value(&a).await, "v1");
    assert_eq!(simple_value(&a).await, "v1");

    // Across connections, autocommit.
    assert_eq!(value(&b).await, "v1");
    b.batch_execute("UPDATE kv SET v = 'v2' WHERE k = 1").await.unwrap();
    assert_eq!(value(&a).await, "v2");
    assert_eq!(simple_value(&a).await, "v2");

    // In a transaction: invisible to others until COMMIT, visible to everyone right after.
    let tx = b.transaction().await.unwrap();
    tx.execute("UPDATE kv SET v = 'v3' WHERE k = 1", &[]).await.unwrap();
    assert_eq!(value(&a).await, "v2");
    tx.commit().await.unwrap();
    assert_eq!(value(&a).await, "v3");
    assert_eq!(simple_value(&a).await, "v3");

    // ROLLBACK: nothing changed, and the cached answer stays valid (it is served again).
    assert_eq!(value(&a).await, "v3");
    let before = hits(&cache);
    let tx = b.transaction().await.unwrap();
    tx.execute("UPDATE kv SET v = 'never' WHERE k = 1", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(value(&a).await, "v3");
    assert!(hits(&cache) > before, "a rolled-back write must not invalidate");

    // A write inside a multi-statement simple query that fails is rolled back as a whole.
    assert!(b.batch_execute("UPDATE kv SET v = 'half' WHERE k = 1; SELECT 1/0").await.is_err());
    assert_eq!(value(&a).await, "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_roles_and_search_paths_never_see_each_others_rows_also_from_cache() {
    isolation("strata_cache_isolation", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_roles_and_search_paths_stay_apart_in_transaction_pooling() {
    // Two server connections per pool for four sessions of one user with their own settings:
    // each transaction runs on a connection brought to its session's settings.
    isolation("strata_cache_isolation_pooled", Some(2)).await;
}

async fn isolation(db: &str, pool: Option<usize>) {
    fresh_database(db).await;
    let a = admin(db).await;
    a.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_tenant_app') THEN CREATE ROLE strata_tenant_app LOGIN; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_reader_a') THEN CREATE ROLE strata_reader_a LOGIN; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_reader_b') THEN CREATE ROLE strata_reader_b LOGIN; END IF;
         END $$;
         CREATE TABLE accounts (tenant text, owner text, balance int);
         INSERT INTO accounts VALUES ('a', 'strata_reader_a', 100), ('b', 'strata_reader_b', 200);
         ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
         CREATE POLICY by_tenant ON accounts FOR SELECT TO strata_tenant_app USING (tenant = current_setting('app.tenant_id', true));
         CREATE POLICY by_owner ON accounts FOR SELECT TO strata_reader_a, strata_reader_b USING (owner = current_user);
         GRANT SELECT ON accounts TO strata_tenant_app, strata_reader_a, strata_reader_b;
         CREATE SCHEMA s1; CREATE SCHEMA s2;
         CREATE TABLE s1.t (v text); CREATE TABLE s2.t (v text);
         INSERT INTO s1.t VALUES ('from s1'); INSERT INTO s2.t VALUES ('from s2');
         GRANT USAGE ON SCHEMA s1, s2 TO strata_tenant_app; GRANT SELECT ON s1.t, s2.t TO strata_tenant_app;",
    )
    .await
    .unwrap();
    let (proxy, cache) = caching_proxy_in(pool).await;
    let tenant_a = connect(proxy.port(), "strata_tenant_app", db, None).await.unwrap();
    let tenant_b = connect(proxy.port(), "strata_tenant_app", db, None).await.unwrap();
    tenant_a.batch_execute("SET app.tenant_id = 'a'").await.unwrap();
    tenant_b.batch_execute("SET app.tenant_id = 'b'").await.unwrap();
    let reader_a = connect(proxy.port(), "strata_reader_a", db, None).await.unwrap();
    let reader_b = connect(proxy.port(), "strata_reader_b", db, None).await.unwrap();
    let before = hits(&cache);
    for _ in 0..3 {
        assert_eq!(balances(&tenant_a).await, ["100"]);
        assert_eq!(balances(&tenant_b).await, ["200"]);
        assert_eq!(balances(&reader_a).await, ["100"]);
        assert_eq!(balances(&reader_b).await, ["200"]);
    }
    assert!(hits(&cache) - before >= 8, "repeated reads in each scope should hit");

    // SET ROLE inside one session changes the scope too.
    let admin_session = connect(proxy.port(), "postgres", db, None).await.unwrap();
    admin_session.batch_execute("SET ROLE strata_reader_a").await.unwrap();
    assert_eq!(balances(&admin_session).await, ["100"]);
    admin_session.batch_execute("SET ROLE strata_reader_b").await.unwrap();
    assert_eq!(balances(&admin_session).await, ["200"]);
    admin_session.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(balances(&admin_session).await, ["100", "200"]);

    // The same text under two search paths reads two tables.
    tenant_a.batch_execute("SET search_path = s1").await.unwrap();
    tenant_b.batch_execute("SET search_path = s2").await.unwrap();
    for _ in 0..2 {
        assert_eq!(column(&tenant_a, "SELECT v FROM t").await, ["from s1"]);
        assert_eq!(column(&tenant_b, "SELECT v FROM t").await, ["from s2"]);
    }
}

/// The first column of every row of a simple-protocol query, as text.
async fn column(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let rows = c.simple_query(sql).await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

async fn balances(c: &tokio_postgres::Client) -> Vec<String> {
    column(c, "SELECT balance FROM accounts ORDER BY balance").await
}

/// A redis-server of this test's own, so it can be killed and restarted.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        let binary = std::env::var("STRATA_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_SERVER is unset: run `cargo xtask test`"));
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        OwnRedis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_queries_go_on_uncached_and_caching_comes_back() {
    let db = "strata_cache_redis_down";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')")
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = OwnRedis::start_on(port);
    let settings =
        CacheSettings { redis: Some(format!("redis://127.0.0.1:{port}/")), ..CacheSettings::default() };
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let c = connect(proxy.port(), "postgres", db, None).await.unwrap();
    assert_eq!(value(&c).await, "v0");
    let before = hits(&cache);
    assert_eq!(value(&c).await, "v0");
    assert!(hits(&cache) > before, "with redis up, the repeated read hits");

    redis.stop();
    // Reads and writes keep working and keep being right; nothing is served that the cache can
    // no longer vouch for.
    for round in 0..5 {
        assert_eq!(value(&c).await, if round == 0 { "v0" } else { "v1" });
        c.execute("UPDATE kv SET v = 'v1' WHERE k = 1", &[]).await.unwrap();
        assert_eq!(value(&c).await, "v1");
    }

    let _redis = OwnRedis::start_on(redis.port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let before = hits(&cache);
        assert_eq!(value(&c).await, "v1");
        assert_eq!(value(&c).await, "v1");
        if hits(&cache) > before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "caching did not come back after redis restarted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    c.execute("UPDATE kv SET v = 'v2' WHERE k = 1", &[]).await.unwrap();
    assert_eq!(value(&c).await, "v2");
}

fn pipelined(statements: &[(&str, &[&str])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (sql, params) in statements {
        out.extend(parse_bind_execute(sql, params));
    }
    out.extend(message(b'S', &[]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_are_answered_byte_for_byte_and_cached_as_a_whole() {
    let db = "strata_cache_pipeline";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE p (id int PRIMARY KEY, v text); INSERT INTO p VALUES (1, 'one'), (2, 'two')",
        )
        .await
        .unwrap();
    let (proxy, cache) = caching_proxy().await;
    let batch = pipelined(&[
        ("SELECT v FROM p WHERE id = $1", &["1"]),
        ("SELECT v, $2::text FROM p WHERE id = $1", &["2", "x"]),
    ]);
    let (mut direct, _) = RawClient::startup(pg().port(), "postgres", db).await;
    direct.send(&batch).await;
    let expected = direct.read_until_ready().await;
    assert!(expected.iter().any(|(t, _)| *t == b'D'), "rows expected: {expected:?}");

    let (mut through, _) = RawClient::startup(proxy.port(), "postgres", db).await;
    let before = hits(&cache);
    for round in 0..3 {
        through.send(&batch).await;
        assert_eq!(through.read_until_ready().await, expected, "round {round}");
    }
    assert!(hits(&cache) - before >= 2, "the repeated batch should be answered from cache");

    // The same values split differently between the two statements: the server refuses it, and
    // so must the proxy rather than replay the cached success.
    let resplit = pipelined(&[
        ("SELECT v FROM p WHERE id = $1", &["1", "2"]),
        ("SELECT v, $2::text FROM p WHERE id = $1", &["x"]),
    ]);
    through.send(&resplit).await;
    let refused = through.read_until_ready().await;
    assert!(refused.iter().any(|(t, _)| *t == b'E'), "expected an error, got {refused:?}");

    // A write in a batch of its own invalidates what the cached batch read.
    through.send(&pipelined(&[("UPDATE p SET v = $1 WHERE id = 2", &["deux"])])).await;
    through.read_until_ready().await;
    direct.send(&batch).await;
    let expected = direct.read_until_ready().await;
    through.send(&batch).await;
    assert_eq!(through.read_until_ready().await, expected);
}
