//! Sessions through the proxy: password authentication, cancel, graceful shutdown, HTTP endpoints.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
};
use tokio_postgres::NoTls;

use crate::support::{admin, connect, must_fail, pg, start_proxy};

/// Creates (or resets) the password roles the harness configures for scram-sha-256 and md5.
pub(crate) async fn password_roles() {
    let a = admin("postgres").await;
    for (role, encryption, password) in
        [("strata_scram", "scram-sha-256", "scram-secret"), ("strata_md5", "md5", "md5-secret")]
    {
        a.batch_execute(&format!(
            "SET password_encryption = '{encryption}';
             DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN PASSWORD '{password}';
               ELSE
                 ALTER ROLE {role} LOGIN PASSWORD '{password}';
               END IF;
             END $$;"
        ))
        .await
        .expect("create password role");
        let stored: String = a
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role])
            .await
            .expect("read stored password")
            .get(0);
        let prefix = if encryption == "md5" { "md5" } else { "SCRAM-SHA-256$" };
        assert!(stored.starts_with(prefix), "{role} password stored as {prefix}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_md5_authentication_work_through_the_proxy() {
    password_roles().await;
    let proxy = start_proxy(|b| b).await;
    for (role, password) in [("strata_scram", "scram-secret"), ("strata_md5", "md5-secret")] {
        let c = connect(proxy.port(), role, "postgres", Some(password))
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let who: String = c.query_one("SELECT current_user::text", &[]).await.expect("query").get(0);
        assert_eq!(who, role);

        let err =
            must_fail(connect(proxy.port(), role, "postgres", Some("wrong-password")).await, "must fail");
        let db =
            err.as_db_error().unwrap_or_else(|| panic!("{role}: expected the server's error, got {err}"));
        assert_eq!(db.code().code(), "28P01", "{role}: {db:?}");
        assert!(db.message().contains("password authentication failed"), "{}", db.message());

        // libpq (psql) too, with the password from the environment.
        let out = Command::new("/usr/bin/psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                &pg().host(),
                "-p",
                &proxy.port().to_string(),
                "-U",
                role,
                "-d",
                "postgres",
            ])
            .args(["-c", "SELECT current_user"])
            .env("PGPASSWORD", password)
            .output()
            .await
            .expect("psql");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            role,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("/usr/bin/psql")
            .args(["-X", "-h", &pg().host(), "-p", &proxy.port().to_string(), "-U", role, "-d", "postgres"])
            .args(["-c", "SELECT 1"])
            .env("PGPASSWORD", "nope")
            .output()
            .await
            .expect("psql");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("password authentication failed for user \"{role}\"")), "{stderr}");
    }
}

/// Waits (bounded) until the server shows the query running.
async fn wait_until_running(pattern: &str) {
    let a = admin("postgres").await;
    let start = Instant::now();
    loop {
        let n: i64 = a
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "query {pattern} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_right_backend() {
    let proxy = start_proxy(|b| b).await;
    let victim = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let bystander = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let token = victim.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(60) /* cancel-me */").await });
    let other = tokio::spawn(async move {
        bystander.query_one("SELECT pg_sleep(1.5)::text /* keep-me */", &[]).await.map(|_| bystander)
    });
    wait_until_running("%cancel-me%").await;
    wait_until_running("%keep-me%").await;
    token.cancel_query(NoTls).await.expect("send cancel through the proxy");
    let err = must_fail(sleeper.await.expect("join"), "the sleep must be cancelled");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let bystander = other.await.expect("join").expect("the other session's query is not cancelled");
    bystander.simple_query("SELECT 1").await.expect("bystander still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_work_finish() {
    let proxy = start_proxy(|b| b.with_shutdown_grace(Duration::from_secs(20))).await;
    let mut in_tx = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let busy = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let idle = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let tx = in_tx.transaction().await.expect("begin");
    tx.simple_query("SELECT 1").await.expect("in transaction");
    let slow = tokio::spawn(async move {
        let r = busy.query_one("SELECT pg_sleep(1)::text /* slow-at-shutdown */, 42", &[]).await;
        r.map(|row| row.get::<_, i32>(1))
    });
    wait_until_running("%slow-at-shutdown%").await;
    proxy.shutdown.shutdown();
    // The in-flight query completes; the idle session is closed; new connections are refused.
    assert_eq!(slow.await.expect("join").expect("in-flight query finishes"), 42);
    let start = Instant::now();
    while !idle.is_closed() {
        assert!(start.elapsed() < Duration::from_secs(10), "idle session not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connect(proxy.port(), "postgres", "postgres", None).await.is_err(), "new connections refused");
    // The open transaction may still finish.
    tx.simple_query("SELECT 2").await.expect("transaction continues during the grace period");
    tx.commit().await.expect("commit during the grace period");
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("proxy stops")
        .expect("join")
        .expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served_over_http() {
    let proxy = start_proxy(|b| b.with_http("127.0.0.1:0")).await;
    let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    c.simple_query("SELECT 1").await.expect("query");
    c.query("SELECT $1::int", &[&1i32]).await.expect("query");
    let http = proxy.http.expect("http address");
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(http).await.expect("http connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    let health = get("/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"), "{health}");
    let metrics = get("/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("strata_proxy_connections_total 1"), "{metrics}");
    assert!(metrics.contains("strata_proxy_requests_total{protocol=\"simple\"} 1"), "{metrics}");
    assert!(metrics.contains("strata_proxy_requests_total{protocol=\"extended\"}"), "{metrics}");
    assert!(metrics.contains("strata_proxy_sessions_active 1"), "{metrics}");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
}

#[test]
fn public_types_are_debug_send_sync() {
    fn check<T: std::fmt::Debug + Send + Sync>() {}
    check::<strata_proxy::Proxy>();
    check::<strata_proxy::ProxyBuilder>();
    check::<strata_proxy::BoundProxy>();
    check::<strata_proxy::ShutdownHandle>();
    check::<strata_proxy::Error>();
    check::<strata_proxy::ErrorKind>();
    check::<strata_proxy::FileConfig>();
    check::<strata_proxy::Args>();
    check::<strata_proxy::Upstream>();
    check::<strata_proxy::Request>();
    check::<strata_proxy::RequestKind>();
    check::<strata_proxy::ExtendedMessage>();
    check::<strata_proxy::Bind>();
    check::<strata_proxy::Target>();
    check::<strata_proxy::PreparedStatement>();
    check::<strata_proxy::Response>();
    check::<strata_proxy::ResponseSummary>();
    check::<strata_proxy::Lookup>();
    check::<strata_proxy::Fill>();
    check::<strata_proxy::SessionView>();
    check::<strata_proxy::Dropped>();
    check::<strata_proxy::StrataCache>();
    check::<strata_proxy::PassThrough>();
    check::<strata_proxy::CacheMode>();
    check::<strata_proxy::NotCacheable>();
    check::<strata_proxy::TransactionStatus>();
    check::<strata_proxy::Format>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shutdown_request_ends_every_session_now() {
    let proxy = start_proxy(|b| b.with_shutdown_grace(Duration::from_secs(120))).await;
    let busy = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let slow =
        tokio::spawn(
            async move { busy.query_one("SELECT pg_sleep(60)::text /* second-signal */", &[]).await },
        );
    wait_until_running("%second-signal%").await;
    proxy.shutdown.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!proxy.task.is_finished(), "a first request waits for the running query");
    proxy.shutdown.shutdown_now();
    tokio::time::timeout(Duration::from_secs(30), proxy.task)
        .await
        .expect("a second request ends the sessions without waiting out the grace")
        .expect("join")
        .expect("run");
    let err = must_fail(slow.await.expect("join"), "the running query is ended");
    assert!(
        err.as_db_error().is_some_and(|d| ["57014", "57P01"].contains(&d.code().code())) || err.is_closed(),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_say_goodbye_are_not_counted_as_lost_upstreams() {
    let proxy = start_proxy(|b| b.with_http("127.0.0.1:0")).await;
    for _ in 0..3 {
        let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
        c.simple_query("SELECT 1").await.expect("query");
        drop(c);
    }
    let http = proxy.http.expect("http address");
    let start = Instant::now();
    loop {
        let mut s = tokio::net::TcpStream::connect(http).await.expect("http connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        if out.contains("strata_proxy_sessions_active 0") {
            assert!(out.contains("strata_proxy_upstream_lost_total 0"), "{out}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "sessions never ended: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_pipelined_with_the_startup_and_terminate_is_answered_before_the_close() {
    // PostgreSQL answers what came before a Terminate, then closes; so must the proxy, even when
    // the whole conversation arrives in one write before authentication is over.
    let proxy = start_proxy(|b| b).await;
    for _ in 0..20 {
        let mut c = crate::support::RawClient::connect(proxy.port()).await;
        let mut bytes = crate::support::startup_packet("postgres", "postgres");
        bytes.extend_from_slice(&[b'Q', 0, 0, 0, 14]);
        bytes.extend_from_slice(b"SELECT 42\0");
        bytes.extend_from_slice(&[b'X', 0, 0, 0, 4]);
        c.send(&bytes).await;
        let mut all = Vec::new();
        while let Some((tag, body)) = c.read_msg().await {
            all.push((tag, body));
        }
        let tags: Vec<u8> = all.iter().map(|(t, _)| *t).collect();
        assert!(tags.contains(&b'D') && tags.contains(&b'C'), "no answer before the close: {tags:?}");
        let last = all.last().map(|(_, body)| String::from_utf8_lossy(body).into_owned());
        assert_eq!(tags.last(), Some(&b'Z'), "{tags:?} {last:?}");
    }
}
