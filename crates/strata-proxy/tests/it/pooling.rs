//! Transaction pooling: many clients over a few server connections, state that never leaks from
//! one client to another, clients pinned while their session keeps state, prepared statements on
//! whichever connection runs them, the pool running out, a server connection killed, the
//! proxy's own authentication, cancel routing, and cache hits that need no server connection.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, AuthType, CacheSettings, PoolMode, ProxyBuilder, StrataCache};
use tokio_postgres::{Client, NoTls};

use crate::{
    differential::{extended_workload, pgbench, simple_answers_match, transaction_workload},
    support::*,
};

fn pooled(size: usize) -> impl FnOnce(ProxyBuilder) -> ProxyBuilder {
    move |b| {
        b.with_pool_mode(PoolMode::Transaction)
            .with_pool_size(size)
            .with_auth_type(AuthType::Trust)
            .with_pool_timeout(Duration::from_secs(20))
    }
}

async fn client(port: u16, db: &str) -> Client {
    connect(port, "postgres", db, None).await.expect("connect through the pooling proxy")
}

/// Backends connected to `db` other than this test's own direct admin connection.
async fn backends(db: &str) -> i64 {
    admin("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            &[&db],
        )
        .await
        .expect("count backends")
        .get(0)
}

async fn text(c: &Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_share_ten_server_connections() {
    let db = "strata_pool_thousand";
    fresh_database(db).await;
    admin(db).await.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g").await.expect("setup");
    let proxy = start_proxy(pooled(10)).await;
    let port = proxy.port();
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(client(port, db).await);
    }
    let clients = Arc::new(clients);
    let mut tasks = Vec::new();
    for worker in 0..50usize {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..1000).step_by(50) {
                let c = &clients[i];
                let id = (i % 100) as i32 + 1;
                // Extended protocol with a named statement, then a simple query, then a transaction.
                let row = c.query_one("SELECT v FROM t WHERE id = $1", &[&id]).await.expect("select");
                assert_eq!(row.get::<_, String>(0), format!("v{id}"));
                let n = text(c, "SELECT count(*) FROM t").await;
                assert_eq!(n, "100");
                c.batch_execute("BEGIN; SELECT 1; COMMIT").await.expect("transaction");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let n = backends(db).await;
    assert!(n <= 10, "{n} server connections for 1,000 clients with a pool of 10");
    assert!(n >= 1);
    drop(clients);
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_never_leak_and_a_client_keeps_its_own() {
    let db = "strata_pool_state";
    fresh_database(db).await;
    admin(db).await.batch_execute("CREATE SCHEMA other").await.expect("schema");
    let proxy = start_proxy(pooled(2)).await;
    let a = client(proxy.port(), db).await;
    let b = client(proxy.port(), db).await;
    let default_path = text(&b, "SHOW search_path").await;
    a.batch_execute("SET search_path = other; SET statement_timeout = '7s'").await.expect("set");
    for _ in 0..20 {
        // The other client never sees the SET, whichever connection it gets.
        assert_eq!(text(&b, "SHOW search_path").await, default_path);
        assert_eq!(text(&b, "SHOW statement_timeout").await, "0");
        // The client that set it keeps it.
        assert_eq!(text(&a, "SHOW search_path").await, "other");
        assert_eq!(text(&a, "SHOW statement_timeout").await, "7s");
    }
    // Undone, the client can share again; SET LOCAL and set_config(.., true) never stick.
    a.batch_execute("RESET ALL").await.expect("reset");
    a.batch_execute(
        "BEGIN; SET LOCAL search_path = other; SELECT set_config('app.tenant', '42', true); COMMIT",
    )
    .await
    .expect("local");
    for _ in 0..10 {
        assert_eq!(text(&b, "SHOW search_path").await, default_path);
        assert_eq!(text(&a, "SHOW search_path").await, default_path);
        let tenant =
            text(&b, "SELECT coalesce(nullif(current_setting('app.tenant', true), ''), 'unset')").await;
        assert_eq!(tenant, "unset");
    }
    // A role change stays with its client.
    admin(db)
        .await
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE strata_pool_role; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .expect("role");
    a.batch_execute("SET ROLE strata_pool_role").await.expect("set role");
    for _ in 0..10 {
        assert_eq!(text(&b, "SELECT current_user").await, "postgres");
        assert_eq!(text(&a, "SELECT current_user").await, "strata_pool_role");
    }
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_roles_are_replayed_on_one_shared_connection() {
    let db = "strata_pool_replay";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE SCHEMA other;
             DO $$ BEGIN CREATE ROLE strata_replay_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             DO $$ BEGIN CREATE ROLE strata_replay_gone; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )
        .await
        .expect("setup");
    // One server connection and a short pool timeout: a client pinned by its settings would
    // make the other's requests fail with 53300.
    let proxy = start_proxy(|b| pooled(1)(b).with_pool_timeout(Duration::from_secs(3))).await;
    let port = proxy.port();
    let a = client(port, db).await;
    let b = client(port, db).await;
    let c = client(port, db).await;
    let pid = text(&c, "SELECT pg_backend_pid()").await;
    let default_path = text(&c, "SHOW search_path").await;
    a.batch_execute(
        "SET search_path = other, public; SET statement_timeout = '7s'; SET app.tenant = 'a'; \
         SET DateStyle = 'German, DMY'; SET ROLE strata_replay_reader",
    )
    .await
    .expect("a sets");
    b.batch_execute("SET work_mem = '9MB'; SELECT set_config('app.tenant', 'it''s $s$ b', false)")
        .await
        .expect("b sets");
    for _ in 0..10 {
        assert_eq!(text(&a, "SHOW search_path").await, "other, public");
        assert_eq!(text(&a, "SHOW statement_timeout").await, "7s");
        assert_eq!(text(&a, "SELECT current_setting('app.tenant')").await, "a");
        assert_eq!(text(&a, "SELECT '2026-12-06'::date::text").await, "06.12.2026");
        assert_eq!(text(&a, "SELECT current_user").await, "strata_replay_reader");
        assert_eq!(text(&b, "SHOW work_mem").await, "9MB");
        assert_eq!(text(&b, "SELECT current_setting('app.tenant')").await, "it's $s$ b");
        assert_eq!(text(&b, "SHOW statement_timeout").await, "0");
        assert_eq!(text(&b, "SELECT current_user").await, "postgres");
        assert_eq!(text(&c, "SHOW search_path").await, default_path);
        assert_eq!(text(&c, "SHOW work_mem").await, "4MB");
        assert_eq!(text(&c, "SELECT '2026-12-06'::date::text").await, "2026-12-06");
        assert_eq!(
            text(&c, "SELECT coalesce(nullif(current_setting('app.tenant', true), ''), 'unset')").await,
            "unset"
        );
        // Every client ran on the one server connection.
        assert_eq!(text(&a, "SELECT pg_backend_pid()").await, pid);
        assert_eq!(text(&b, "SELECT pg_backend_pid()").await, pid);
    }
    // Inside a transaction the replayed state holds, and a client's change made there is kept.
    let rows = a
        .simple_query("BEGIN; SET statement_timeout = '8s'; SELECT current_setting('app.tenant'); COMMIT")
        .await
        .expect("transaction");
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("a"))));
    assert_eq!(text(&c, "SHOW statement_timeout").await, "0");
    assert_eq!(text(&a, "SHOW statement_timeout").await, "8s");
    // Session characteristics replay as their default_transaction_* settings (the
    // transaction_* ones follow from them in each transaction).
    b.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY")
        .await
        .expect("characteristics");
    for _ in 0..5 {
        assert_eq!(text(&b, "SHOW transaction_isolation").await, "serializable");
        assert_eq!(text(&b, "SHOW transaction_read_only").await, "on");
        assert_eq!(text(&c, "SHOW transaction_isolation").await, "read committed");
        assert_eq!(text(&a, "SHOW transaction_read_only").await, "off");
    }
    // RESET ALL and RESET ROLE bring a client back to the fresh state.
    b.batch_execute("RESET ALL").await.expect("reset");
    assert_eq!(text(&b, "SHOW work_mem").await, "4MB");
    // A role that cannot be set again (dropped meanwhile) ends that session with an error
    // that says so; nobody else is affected, and nothing runs with the wrong role.
    let d = client(port, db).await;
    d.batch_execute("SET ROLE strata_replay_gone").await.expect("set role");
    assert_eq!(text(&c, "SELECT current_user").await, "postgres");
    admin(db).await.batch_execute("DROP ROLE strata_replay_gone").await.expect("drop role");
    let err = d.simple_query("SELECT current_user").await.expect_err("the role is gone");
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| err.to_string());
    assert!(message.contains("could not bring a pooled server connection"), "{message}");
    assert_eq!(text(&c, "SELECT current_user").await, "postgres");
    assert_eq!(text(&a, "SELECT current_user").await, "strata_replay_reader");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_the_client_to_its_connection() {
    let db = "strata_pool_pins";
    fresh_database(db).await;
    // Three clients end up pinned (temporary table, PREPARE, LISTEN): the others share the rest.
    let proxy = start_proxy(pooled(5)).await;
    let port = proxy.port();
    let other = client(port, db).await;
    // Temporary table: the client keeps finding it, nobody else sees it.
    let a = client(port, db).await;
    a.batch_execute("CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (1)").await.expect("temp");
    for _ in 0..5 {
        assert_eq!(text(&a, "SELECT count(*) FROM mine").await, "1");
        assert!(other.simple_query("SELECT count(*) FROM pg_temp.mine").await.is_err());
    }
    // Session advisory lock: held until unlocked, on the same backend.
    let b = client(port, db).await;
    let pid = text(&b, "SELECT pg_backend_pid()").await;
    assert_eq!(text(&b, "SELECT pg_advisory_lock(4242)").await, "");
    for _ in 0..5 {
        assert_eq!(text(&b, "SELECT pg_backend_pid()").await, pid);
        assert_eq!(text(&other, "SELECT pg_try_advisory_lock(4242)").await, "f");
    }
    assert_eq!(text(&b, "SELECT pg_advisory_unlock(4242)").await, "t");
    // SQL PREPARE: the statement stays usable.
    let c = client(port, db).await;
    c.batch_execute("PREPARE p(int) AS SELECT $1 * 2").await.expect("prepare");
    for _ in 0..5 {
        assert_eq!(text(&c, "EXECUTE p(21)").await, "42");
        assert!(other.simple_query("EXECUTE p(1)").await.is_err());
    }
    // LISTEN: notifications reach the listener.
    let (listener, mut connection) =
        tokio_postgres::connect(&conn_string(port, "postgres", db, None), NoTls).await.expect("listener");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    listener.batch_execute("LISTEN pool_channel").await.expect("listen");
    other.batch_execute("NOTIFY pool_channel, 'hello'").await.expect("notify");
    listener.batch_execute("SELECT 1").await.expect("poll");
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("notification in time");
    assert_eq!(got.as_deref(), Some("hello"));
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_their_client_across_connections() {
    let db = "strata_pool_prepared";
    fresh_database(db).await;
    admin(db).await.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g * 10 FROM generate_series(1, 50) g").await.expect("setup");
    let proxy = start_proxy(pooled(3)).await;
    let mut tasks = Vec::new();
    for n in 0..12i32 {
        let port = proxy.port();
        tasks.push(tokio::spawn(async move {
            let c = client(port, db).await;
            let by_id = c.prepare("SELECT v FROM t WHERE id = $1").await.expect("prepare");
            let plus = c.prepare("SELECT $1::int + $2::int").await.expect("prepare");
            for i in 1..=40i32 {
                let id = (i + n) % 50 + 1;
                let v: i32 = c.query_one(&by_id, &[&id]).await.expect("by id").get(0);
                assert_eq!(v, id * 10);
                let s: i32 = c.query_one(&plus, &[&i, &n]).await.expect("plus").get(0);
                assert_eq!(s, i + n);
            }
            // Closing a statement and preparing the same text again works.
            drop(plus);
            let again = c.prepare("SELECT $1::int + $2::int").await.expect("prepare again");
            let s: i32 = c.query_one(&again, &[&1i32, &2i32]).await.expect("again").get(0);
            assert_eq!(s, 3);
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    assert!(backends(db).await <= 3);
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_transaction_mode_in_every_protocol() {
    let db = "strata_pool_pgbench";
    fresh_database(db).await;
    pgbench(pg().port(), db, &["-i", "-s", "1", "-q"]).await;
    let proxy = start_proxy(pooled(4)).await;
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(proxy.port(), db, &["-M", mode, "-c", "16", "-j", "2", "-t", "100", "-n"]).await;
        assert!(out.contains("number of failed transactions: 0"), "{mode}:\n{out}");
        let out =
            pgbench(proxy.port(), db, &["-M", mode, "-S", "-c", "16", "-j", "2", "-t", "200", "-n"]).await;
        assert!(out.contains("number of failed transactions: 0"), "{mode} -S:\n{out}");
    }
    assert!(backends(db).await <= 4);
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_times_out_with_53300_then_recovers() {
    let db = "strata_pool_exhausted";
    fresh_database(db).await;
    let proxy = start_proxy(|b| pooled(1)(b).with_pool_timeout(Duration::from_millis(300))).await;
    let holder = client(proxy.port(), db).await;
    let waiter = client(proxy.port(), db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let err = must_fail(waiter.simple_query("SELECT 1").await, "a query with the pool held");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    // The waiter's session is intact.
    holder.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(text(&waiter, "SELECT 2").await, "2");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_killed_mid_transaction_fails_only_its_client() {
    let db = "strata_pool_killed";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(2)).await;
    let victim = client(proxy.port(), db).await;
    victim.batch_execute("BEGIN").await.expect("begin");
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    admin("postgres").await.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate");
    assert!(victim.simple_query("SELECT 1").await.is_err(), "the killed transaction's client gets an error");
    // Others, and new clients, go on.
    for _ in 0..5 {
        let c = client(proxy.port(), db).await;
        assert_eq!(text(&c, "SELECT 3").await, "3");
    }
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_authenticates_clients_and_logs_in_with_scram() {
    crate::sessions::password_roles().await;
    let dir = std::env::temp_dir().join(format!("strata-pool-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("userlist.txt");
    std::fs::write(&file, "\"strata_scram\" \"scram-secret\"\n\"postgres\" \"pg-secret\"\n")
        .expect("userlist");
    for auth in [AuthType::ScramSha256, AuthType::Md5] {
        let file = file.clone();
        let proxy = start_proxy(move |b| pooled(2)(b).with_auth_type(auth).with_auth_file(file)).await;
        // strata_scram's upstream login needs SCRAM (the harness's pg_hba): the proxy does it.
        let c = connect(proxy.port(), "strata_scram", "postgres", Some("scram-secret"))
            .await
            .expect("right password");
        assert_eq!(text(&c, "SELECT current_user").await, "strata_scram");
        let err = must_fail(
            connect(proxy.port(), "strata_scram", "postgres", Some("nope")).await,
            "wrong password",
        );
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
        let err = must_fail(connect(proxy.port(), "nobody", "postgres", Some("x")).await, "unknown user");
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
        proxy.shutdown.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_query_of_the_client_that_asked() {
    let db = "strata_pool_cancel";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(2)).await;
    let victim = client(proxy.port(), db).await;
    let bystander = client(proxy.port(), db).await;
    let token = victim.cancel_token();
    let sleeper = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled in time")
        .expect("task");
    let err = must_fail(result, "a cancelled sleep");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(text(&bystander, "SELECT 4").await, "4");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_need_no_server_connection() {
    let db = "strata_pool_hits";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')")
        .await
        .expect("setup");
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy =
        start_proxy(|b| pooled(1)(b).with_pool_timeout(Duration::from_millis(500)).with_cache(cache.clone()))
            .await;
    let reader = client(proxy.port(), db).await;
    for _ in 0..3 {
        assert_eq!(text(&reader, "SELECT v FROM t WHERE id = 1").await, "one");
    }
    // The only server connection is held by another client's transaction.
    let holder = client(proxy.port(), db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.expect("hold");
    for _ in 0..20 {
        assert_eq!(
            text(&reader, "SELECT v FROM t WHERE id = 1").await,
            "one",
            "a hit while the pool is exhausted"
        );
    }
    // A miss has to wait, and times out.
    assert!(reader.simple_query("SELECT v FROM t WHERE id = 2").await.is_err());
    holder.batch_execute("COMMIT").await.expect("release");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_statements_and_results_pass_through_a_pooled_connection() {
    let db = "strata_pool_large";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(1)).await;
    let c = client(proxy.port(), db).await;
    // A 3 MB statement and a 3 MB result, both far over the link's buffers.
    let big = "x".repeat(3 << 20);
    let sql = format!("SELECT length('{big}')");
    assert_eq!(text(&c, &sql).await, (3 << 20).to_string());
    let row = c.query_one("SELECT repeat('y', $1)", &[&(3i32 << 20)]).await.expect("large result");
    assert_eq!(row.get::<_, String>(0).len(), 3 << 20);
    let other = client(proxy.port(), db).await;
    assert_eq!(text(&other, "SELECT 5").await, "5");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_output_through_the_caching_pool_equals_postgresql() {
    let db = "strata_pool_psql";
    fresh_database(db).await;
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy = start_proxy(|b| pooled(2)(b).with_cache(cache.clone())).await;
    let direct = crate::differential::psql(pg().port(), db, crate::differential::PSQL_SCRIPT).await;
    let pooled_out = crate::differential::psql(proxy.port(), db, crate::differential::PSQL_SCRIPT).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(text(&pooled_out.stdout), text(&direct.stdout));
    assert_eq!(text(&pooled_out.stderr), text(&direct.stderr));
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_shared_connections_see_only_their_rows_and_fresh_writes() {
    let db = "strata_pool_tenants";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_pool_app') THEN CREATE ROLE strata_pool_app LOGIN; END IF; END $$;
             CREATE TABLE docs (id int PRIMARY KEY, tenant text, body text);
             INSERT INTO docs VALUES (1, 'a', 'a-doc'), (2, 'b', 'b-doc');
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON docs USING (tenant = current_setting('app.tenant', true));
             GRANT SELECT, UPDATE ON docs TO strata_pool_app;",
        )
        .await
        .expect("setup");
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy = start_proxy(|b| pooled(2)(b).with_cache(cache.clone())).await;
    let port = proxy.port();
    let read = |tenant: &'static str| async move {
        let c = connect(port, "strata_pool_app", db, None).await.expect("connect");
        let mut seen = Vec::new();
        for _ in 0..10 {
            let rows = c
                .simple_query(&format!(
                    "BEGIN; SET LOCAL app.tenant = '{tenant}'; SELECT string_agg(body, ',' ORDER BY id) FROM docs; COMMIT"
                ))
                .await
                .expect("tenant read");
            for m in rows {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    seen.push(r.get(0).unwrap_or("none").to_owned());
                }
            }
        }
        seen
    };
    let (a, b) = tokio::join!(read("a"), read("b"));
    assert!(a.iter().all(|v| v == "a-doc"), "{a:?}");
    assert!(b.iter().all(|v| v == "b-doc"), "{b:?}");
    // A session-level tenant pins its client; the other client still sees nothing of it.
    let pinned = connect(port, "strata_pool_app", db, None).await.expect("connect");
    pinned.batch_execute("SET app.tenant = 'a'").await.expect("set tenant");
    let other = connect(port, "strata_pool_app", db, None).await.expect("connect");
    for _ in 0..5 {
        assert_eq!(text(&pinned, "SELECT string_agg(body, ',') FROM docs").await, "a-doc");
        assert_eq!(text(&other, "SELECT coalesce(string_agg(body, ','), 'none') FROM docs").await, "none");
    }
    // Writes through the pool are read back fresh by another client.
    pinned.batch_execute("UPDATE docs SET body = 'a-doc-2' WHERE id = 1").await.expect("update");
    let reader = connect(port, "strata_pool_app", db, None).await.expect("connect");
    let fresh = reader
        .simple_query("BEGIN; SET LOCAL app.tenant = 'a'; SELECT body FROM docs WHERE id = 1; COMMIT")
        .await
        .expect("read");
    let body = fresh.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(body.as_deref(), Some("a-doc-2"));
    proxy.shutdown.shutdown();
}

/// Two clients on one shared server connection set a tenant through functions, then read each
/// other's setting and rows after each other's transactions.
async fn tenants_set_by_function(port: u16, db: &str, function: &str, setting: &str) {
    let a = connect(port, "strata_pool_fn_app", db, None).await.expect("connect");
    let b = connect(port, "strata_pool_fn_app", db, None).await.expect("connect");
    let current = format!("SELECT coalesce(current_setting('{setting}', true), '')");
    let rows = "SELECT coalesce(string_agg(body, ',' ORDER BY id), 'none') FROM docs";
    for round in 0..3 {
        a.batch_execute(&format!("SELECT {function}('a')")).await.expect("set a");
        assert_eq!(text(&a, &current).await, "a", "round {round}: a after its own call");
        assert_eq!(
            text(&b, &current).await,
            if round == 0 { "" } else { "b" },
            "round {round}: b after a's call"
        );
        b.batch_execute(&format!("SELECT {function}('b')")).await.expect("set b");
        assert_eq!(text(&b, &current).await, "b", "round {round}: b after its own call");
        assert_eq!(text(&a, &current).await, "a", "round {round}: a after b's call");
        if setting == "app.tenant" {
            assert_eq!(text(&a, rows).await, "a-doc", "round {round}: a's rows");
            assert_eq!(text(&b, rows).await, "b-doc", "round {round}: b's rows");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_only_a_function_sets_never_crosses_clients() {
    let db = "strata_pool_function_setting";
    fresh_database(db).await;
    let direct = admin(db).await;
    direct
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_pool_fn_app') THEN CREATE ROLE strata_pool_fn_app LOGIN; END IF; END $$;
             CREATE TABLE docs (id int PRIMARY KEY, tenant text, body text);
             INSERT INTO docs VALUES (1, 'a', 'a-doc'), (2, 'b', 'b-doc');
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON docs USING (tenant = current_setting('app.tenant', true));
             GRANT SELECT ON docs TO strata_pool_fn_app;
             CREATE FUNCTION enter(t text) RETURNS void LANGUAGE sql AS $$ SELECT set_config('app.tenant', t, false) $$;",
        )
        .await
        .expect("setup");
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    // One server connection: every client's transaction runs on it, so any state left behind
    // would reach the other client.
    let proxy = start_proxy(|b| pooled(1)(b).with_cache(cache.clone())).await;
    // Defined before the pool opened its connection (its text is read then).
    tenants_set_by_function(proxy.port(), db, "enter", "app.tenant").await;
    // Defined straight on PostgreSQL after the connection opened: its body is read after the
    // first call, which keeps its client on the connection until the setting is read back.
    direct
        .batch_execute(
            "CREATE FUNCTION app_region(r text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('app.region', r, false); END $$;",
        )
        .await
        .expect("second function");
    let a = connect(proxy.port(), "strata_pool_fn_app", db, None).await.expect("connect");
    let b = connect(proxy.port(), "strata_pool_fn_app", db, None).await.expect("connect");
    let current = "SELECT coalesce(current_setting('app.region', true), '')";
    a.batch_execute("SELECT app_region('north')").await.expect("set a");
    assert_eq!(text(&a, current).await, "north");
    // The only connection is a's until its state is known: b waits for it (a timeout here would
    // show b was never given it) or reads it after a replay, never with a's region.
    let b_reads = tokio::spawn(async move { text(&b, current).await });
    // a's next session-changing statement reads its state back, now covering app.region.
    a.batch_execute("SELECT app_region('north')").await.expect("set a again");
    assert_eq!(text(&a, current).await, "north");
    assert_eq!(b_reads.await.expect("b's read"), "", "b must not see a's region");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_by_one_client_leaves_the_others_statements_working() {
    let db = "strata_pool_discard";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(1)).await;
    let a = client(proxy.port(), db).await;
    let b = client(proxy.port(), db).await;
    let sa = a.prepare("SELECT $1::int + 1").await.expect("prepare a");
    let sb = b.prepare("SELECT $1::int + 2").await.expect("prepare b");
    assert_eq!(a.query_one(&sa, &[&1i32]).await.expect("a").get::<_, i32>(0), 2);
    // On the one shared connection, DISCARD ALL drops b's statement too: it is prepared again.
    b.batch_execute("DISCARD ALL").await.expect("discard");
    assert_eq!(a.query_one(&sa, &[&1i32]).await.expect("a after discard").get::<_, i32>(0), 2);
    // b's own statement is gone for b, as PostgreSQL says after DISCARD ALL.
    assert!(b.query_one(&sb, &[&1i32]).await.is_err());
    let sb = b.prepare("SELECT $1::int + 2").await.expect("prepare b again");
    assert_eq!(b.query_one(&sb, &[&1i32]).await.expect("b").get::<_, i32>(0), 3);
    proxy.shutdown.shutdown();
}

/// Parse of a named statement, then Sync; the tags of the answer.
async fn prepare_named(c: &mut RawClient, name: &str, sql: &str) -> Vec<u8> {
    let mut parse = cstr(name);
    parse.extend(cstr(sql));
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bytes = message(b'P', &parse);
    bytes.extend(message(b'S', &[]));
    c.send(&bytes).await;
    c.read_until_ready().await.into_iter().map(|m| m.0).collect()
}

/// Bind of a named statement with one text parameter, Execute, Sync: the first column of the
/// row, or the SQLSTATE of the error.
async fn run_named(c: &mut RawClient, name: &str, param: &str) -> Result<String, String> {
    let mut bind = cstr("");
    bind.extend(cstr(name));
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
    bind.extend_from_slice(param.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = cstr("");
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut bytes = message(b'B', &bind);
    bytes.extend(message(b'E', &execute));
    bytes.extend(message(b'S', &[]));
    c.send(&bytes).await;
    let answer = c.read_until_ready().await;
    if let Some((_, body)) = answer.iter().find(|m| m.0 == b'E') {
        return Err(sqlstate(body));
    }
    let row = answer.iter().find(|m| m.0 == b'D').ok_or_else(|| format!("no row in {answer:?}"))?;
    let len = i32::from_be_bytes([row.1[2], row.1[3], row.1[4], row.1[5]]) as usize;
    Ok(String::from_utf8_lossy(&row.1[6..6 + len]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_by_name_drops_the_clients_protocol_statement() {
    let db = "strata_pool_deallocate";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(2)).await;
    let port = proxy.port();
    let (mut a, _) = RawClient::startup(port, "postgres", db).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(client(port, db).await);
    }
    for (name, n) in [("first", 1), ("second", 2), ("third", 3)] {
        let tags = prepare_named(&mut a, name, &format!("SELECT ($1::int + {n})::text")).await;
        assert_eq!(tags, [b'1', b'Z'], "{name}");
    }
    assert_eq!(run_named(&mut a, "first", "1").await, Ok("2".to_owned()));
    // Other clients move the connections around, so a name lands on a connection that may or
    // may not have the statement.
    for c in &others {
        assert_eq!(text(c, "SELECT 1").await, "1");
    }
    // libpq's PQexec: a simple query.
    let answer = a.query("DEALLOCATE first").await;
    assert_eq!(answer.iter().map(|m| m.0).collect::<Vec<_>>(), [b'C', b'Z'], "{answer:?}");
    assert_eq!(answer[0].1, b"DEALLOCATE\0");
    // psycopg 3's form: an unnamed statement in the extended protocol.
    let mut bytes = parse_bind_execute("DEALLOCATE PREPARE second", &[]);
    bytes.extend(message(b'S', &[]));
    a.send(&bytes).await;
    let answer = a.read_until_ready().await;
    assert!(answer.iter().any(|m| m.0 == b'C' && m.1 == b"DEALLOCATE\0"), "{answer:?}");
    assert!(!answer.iter().any(|m| m.0 == b'E'), "{answer:?}");
    assert_eq!(run_named(&mut a, "first", "1").await, Err("26000".to_owned()));
    assert_eq!(run_named(&mut a, "second", "1").await, Err("26000".to_owned()));
    // The others are untouched, a name nobody prepared still gets the server's error, and a
    // dropped name can be prepared again.
    assert_eq!(run_named(&mut a, "third", "1").await, Ok("4".to_owned()));
    let answer = a.query("DEALLOCATE never_prepared").await;
    assert!(answer.iter().any(|m| m.0 == b'E' && sqlstate(&m.1) == "26000"), "{answer:?}");
    for c in &others {
        assert_eq!(text(c, "SELECT 2").await, "2");
    }
    assert_eq!(prepare_named(&mut a, "first", "SELECT ($1::int * 10)::text").await, [b'1', b'Z']);
    assert_eq!(run_named(&mut a, "first", "3").await, Ok("30".to_owned()));
    assert_eq!(run_named(&mut a, "third", "2").await, Ok("5".to_owned()));
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_and_simple_protocol_answers_equal_postgresqls_in_transaction_pooling() {
    let db = "strata_pool_differential";
    fresh_database(db).await;
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    let proxy = start_proxy(|b| pooled(2)(b).with_cache(cache.clone())).await;
    // Clients that keep moving the two connections between the workload's transactions.
    let movers: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(client(proxy.port(), db).await);
        }
        v
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &movers {
                    c.batch_execute("SET work_mem = '5MB'; SELECT 1").await.expect("mover");
                }
            }
        })
    };
    let mut direct = connect(pg().port(), "postgres", db, None).await.expect("direct");
    let mut pooled_client = client(proxy.port(), db).await;
    let want = extended_workload(&direct).await;
    let got = extended_workload(&pooled_client).await;
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "statement {i} differs");
    }
    let want = transaction_workload(&mut direct).await;
    let got = transaction_workload(&mut pooled_client).await;
    assert_eq!(got, want);
    let (mut direct, _) = RawClient::startup(pg().port(), "postgres", db).await;
    let (mut proxied, startup) = RawClient::startup(proxy.port(), "postgres", db).await;
    assert!(startup.iter().any(|(t, _)| *t == b'K'), "BackendKeyData");
    simple_answers_match(&mut direct, &mut proxied, &["SHOW work_mem"]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.await.expect("churn");
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_result_type_changed_fails_on_every_connection_as_on_postgresql() {
    let db = "strata_pool_shape";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE shape_t (a int PRIMARY KEY, b text); INSERT INTO shape_t VALUES (1, '10'), (2, '20');
             CREATE TABLE steady (a int PRIMARY KEY, b text); INSERT INTO steady VALUES (1, 'x');",
        )
        .await
        .expect("setup");
    let proxy = start_proxy(pooled(3)).await;
    let movers = [client(proxy.port(), db).await, client(proxy.port(), db).await];
    let pooled_client = client(proxy.port(), db).await;
    let direct = connect(pg().port(), "postgres", db, None).await.expect("direct");
    let mut statements = Vec::new();
    for c in [&direct, &pooled_client] {
        let changing = c.prepare("SELECT * FROM shape_t ORDER BY a").await.expect("prepare");
        let steady = c.prepare("SELECT b FROM steady WHERE a = $1").await.expect("prepare");
        assert_eq!(c.query(&changing, &[]).await.expect("before").len(), 2);
        statements.push((changing, steady));
    }
    // The pooled client's statements get prepared on every connection of the pool.
    for _ in 0..6 {
        for m in &movers {
            m.batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT").await.expect("mover");
        }
        let (changing, steady) = &statements[1];
        assert_eq!(pooled_client.query(changing, &[]).await.expect("before DDL").len(), 2);
        assert_eq!(pooled_client.query_one(steady, &[&1i32]).await.expect("steady").get::<_, String>(0), "x");
    }
    admin(db)
        .await
        .batch_execute("ALTER TABLE shape_t ALTER COLUMN b TYPE int USING b::int; CREATE INDEX ON steady (b)")
        .await
        .expect("DDL");
    for (c, (changing, steady), who) in
        [(&direct, &statements[0], "direct"), (&pooled_client, &statements[1], "pooled")]
    {
        for round in 0..6 {
            // Other clients hold connections now and then, so the statement runs on different
            // connections: one that had it prepared before the DDL, or one preparing it anew.
            let hold = movers[round % 2].batch_execute("BEGIN; SELECT pg_sleep(0.02); COMMIT");
            let (result, held) = tokio::join!(c.query(changing, &[]), hold);
            held.expect("mover");
            let err = result.expect_err(&format!("{who}, round {round}: the result type changed"));
            assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{who}, round {round}: {err}");
            let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
            assert_eq!(message, "cached plan must not change result type", "{who}");
            // A statement whose result did not change goes on working.
            assert_eq!(
                c.query_one(steady, &[&1i32]).await.expect("steady").get::<_, String>(0),
                "x",
                "{who}"
            );
        }
        // Prepared again by the client, the new shape is served.
        let again = c.prepare("SELECT * FROM shape_t ORDER BY a").await.expect("prepare again");
        let rows = c.query(&again, &[]).await.expect("after re-prepare");
        assert_eq!(rows[1].get::<_, i32>(1), 20, "{who}");
    }
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_committed_while_the_pool_reads_state_reaches_the_listener() {
    let db = "strata_pool_notify";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(3)).await;
    let other = client(proxy.port(), db).await;
    let (listener, mut connection) =
        tokio_postgres::connect(&conn_string(proxy.port(), "postgres", db, None), NoTls)
            .await
            .expect("listener");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    // Each LISTEN makes the pool read the session's state; the NOTIFY right after commits while
    // that read may still run on the listener's connection.
    for i in 0..20 {
        listener.batch_execute(&format!("LISTEN ch_{i}")).await.expect("listen");
        other.batch_execute(&format!("NOTIFY ch_{i}, '{i}'")).await.expect("notify");
        listener.batch_execute("SELECT 1").await.expect("poll");
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.ok().flatten().as_deref(), Some(i.to_string().as_str()), "notification {i}");
    }
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holdable_cursors_and_session_authorization_pin_their_client() {
    let db = "strata_pool_pins_more";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE strata_pool_authz; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .expect("role");
    let proxy = start_proxy(pooled(3)).await;
    let port = proxy.port();
    let others = [client(port, db).await, client(port, db).await];
    // A cursor WITH HOLD outlives its transaction: the client keeps fetching from it.
    let a = client(port, db).await;
    a.batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 6) g")
        .await
        .expect("declare");
    let pid = text(&a, "SELECT pg_backend_pid()").await;
    for round in 0..3 {
        for o in &others {
            assert!(o.simple_query("FETCH 1 FROM c").await.is_err(), "another client sees the cursor");
            o.batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT").await.expect("other");
        }
        let rows = a.simple_query("FETCH 2 FROM c").await.expect("fetch");
        let got: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(got, [(round * 2 + 1).to_string(), (round * 2 + 2).to_string()]);
        assert_eq!(text(&a, "SELECT pg_backend_pid()").await, pid, "pinned to its connection");
    }
    a.batch_execute("CLOSE c").await.expect("close");
    // SET SESSION AUTHORIZATION changes the session user: only that client runs as it.
    let b = client(port, db).await;
    b.batch_execute("SET SESSION AUTHORIZATION strata_pool_authz").await.expect("authz");
    let pid = text(&b, "SELECT pg_backend_pid()").await;
    for _ in 0..5 {
        for o in &others {
            assert_eq!(text(o, "SELECT session_user || '/' || current_user").await, "postgres/postgres");
            o.batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT").await.expect("other");
        }
        assert_eq!(
            text(&b, "SELECT session_user || '/' || current_user").await,
            "strata_pool_authz/strata_pool_authz"
        );
        assert_eq!(text(&b, "SELECT pg_backend_pid()").await, pid, "pinned to its connection");
    }
    // Undone, the client shares connections again (and still sees the right user).
    b.batch_execute("RESET SESSION AUTHORIZATION").await.expect("reset");
    for _ in 0..3 {
        assert_eq!(text(&b, "SELECT session_user").await, "postgres");
    }
    proxy.shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_different_application_names_share_one_pool_and_keep_their_names() {
    let db = "strata_pool_appname";
    fresh_database(db).await;
    let proxy = start_proxy(pooled(3)).await;
    let mut clients = Vec::new();
    for i in 0..24 {
        // A few names, some clients with none (tokio-postgres sends none by default).
        let name = (i % 4 != 3).then(|| format!("app_{}", i % 4));
        let mut conn = conn_string(proxy.port(), "postgres", db, None);
        if let Some(n) = &name {
            conn.push_str(&format!(" application_name={n}"));
        }
        let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.expect("connect");
        tokio::spawn(connection);
        clients.push((c, name.unwrap_or_default()));
    }
    let clients = Arc::new(clients);
    let mut tasks = Vec::new();
    for worker in 0..6usize {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                for (c, name) in clients.iter().skip(worker).step_by(6) {
                    // What the server records for the session running the query, and what the
                    // session shows, are the client's own name, whichever connection runs it.
                    let row = c
                        .query_one(
                            "SELECT current_setting('application_name'), \
                             (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())",
                            &[],
                        )
                        .await
                        .expect("read");
                    assert_eq!(row.get::<_, String>(0), *name, "round {round}");
                    assert_eq!(row.get::<_, String>(1), *name, "round {round}");
                    c.batch_execute("BEGIN; SELECT pg_sleep(0.005); COMMIT").await.expect("transaction");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let n = backends(db).await;
    assert!((1..=3).contains(&n), "{n} server connections for four application names with a pool of 3");
    // A client changing its name keeps the new one, and the others keep theirs.
    let (first, _) = &clients[0];
    first.batch_execute("SET application_name = 'renamed'").await.expect("rename");
    for (c, name) in clients.iter().skip(1).take(5) {
        assert_eq!(text(c, "SHOW application_name").await, *name);
        assert_eq!(text(first, "SHOW application_name").await, "renamed");
    }
    drop(clients);
    proxy.shutdown.shutdown();
}
