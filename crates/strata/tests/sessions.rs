//! A Rust user of `strata` without the proxy: one `CacheSession` per database connection gets its
//! scope from PostgreSQL's own answer, and transaction-aware invalidation from what it reports.

// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use strata::{
    Executed, Loaded, QueryCacheConfig, Request, ScopeStatus, SessionCache, Source, TransactionState,
};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The harness's PostgreSQL; panics with what to run when unset.
async fn connect() -> Client {
    let url = std::env::var("STRATA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_DATABASE_URL is unset: run `cargo xtask test`"));
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs the session's verification query on its own connection and hands the rows back.
async fn verify(session: &strata::CacheSession, client: &Client) {
    let messages = client.simple_query(&session.verification_query()).await.expect("verification query");
    let rows: Vec<Vec<Option<Bytes>>> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(|v| Bytes::copy_from_slice(v.as_bytes()))).collect())
            }
            _ => None,
        })
        .collect();
    session.verified(Ok(&rows));
}

fn ready(session: &strata::CacheSession) -> strata::KeyScope {
    match session.scope() {
        ScopeStatus::Ready(scope) => scope,
        other => panic!("expected a verified scope, got {other:?}"),
    }
}

/// Runs a statement on the connection and tells the session what ran, with the command tag the
/// server answered (`COMMIT`, `ROLLBACK`, `INSERT 0 1`, ...).
async fn run(session: &strata::CacheSession, client: &Client, sql: &str, tag: &str, after: TransactionState) {
    client.batch_execute(sql).await.expect(sql);
    let tags = vec![tag.to_owned()];
    session.executed(Executed::new(&[Some(sql)], &tags, false, after)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_come_from_postgres_and_writes_count_at_commit() {
    let cache = QueryCacheConfig::default().build().unwrap();
    let sessions = SessionCache::builder(cache.clone()).build().unwrap();
    let (a_conn, b_conn) = (connect().await, connect().await);
    a_conn
        .batch_execute("DROP TABLE IF EXISTS strata_sessions_t; CREATE TABLE strata_sessions_t (v int)")
        .await
        .unwrap();
    let a = sessions.open("postgres", "postgres");
    let b = sessions.open("postgres", "postgres");
    assert_eq!(a.scope(), ScopeStatus::Unverified, "a new session is read before its first lookup");
    verify(&a, &a_conn).await;
    verify(&b, &b_conn).await;
    assert_eq!(ready(&a), ready(&b), "the same state, the same scope");

    // A custom setting set on one connection: a statement that changes state makes the session
    // unverified, and the read-back tells the two apart.
    run(&a, &a_conn, "SELECT set_config('app.tenant', '7', false)", "SELECT 1", TransactionState::Idle).await;
    assert_eq!(a.scope(), ScopeStatus::Unverified);
    verify(&a, &a_conn).await;
    // The name was learnt: b's scope, verified without it, is read again.
    assert_eq!(b.scope(), ScopeStatus::Unverified);
    verify(&b, &b_conn).await;
    assert_ne!(ready(&a), ready(&b));

    // Transaction-aware invalidation: a write counts when its transaction commits.
    let scope = ready(&b);
    let read = "SELECT count(*) FROM strata_sessions_t";
    let load =
        || async { Ok::<_, std::io::Error>(Loaded { payload: Bytes::from_static(b"0"), row_count: 1 }) };
    let req = Request::new(&scope, read);
    assert_eq!(cache.get_or_fill(&req, load).await.unwrap().source, Source::Database);
    assert!(matches!(cache.get_or_fill(&req, load).await.unwrap().source, Source::Cache(_)));
    run(&b, &b_conn, "BEGIN", "BEGIN", TransactionState::InTransaction).await;
    run(
        &b,
        &b_conn,
        "INSERT INTO strata_sessions_t VALUES (1)",
        "INSERT 0 1",
        TransactionState::InTransaction,
    )
    .await;
    assert!(
        matches!(cache.get_or_fill(&req, load).await.unwrap().source, Source::Cache(_)),
        "not invalidated before the commit"
    );
    run(&b, &b_conn, "ROLLBACK", "ROLLBACK", TransactionState::Idle).await;
    assert!(matches!(cache.get_or_fill(&req, load).await.unwrap().source, Source::Cache(_)), "rolled back");
    run(&b, &b_conn, "BEGIN", "BEGIN", TransactionState::InTransaction).await;
    run(
        &b,
        &b_conn,
        "INSERT INTO strata_sessions_t VALUES (1)",
        "INSERT 0 1",
        TransactionState::InTransaction,
    )
    .await;
    run(&b, &b_conn, "COMMIT", "COMMIT", TransactionState::Idle).await;
    assert_eq!(cache.get_or_fill(&req, load).await.unwrap().source, Source::Database, "committed");

    // A read-back that fails turns caching off for that session only.
    let c = sessions.open("postgres", "postgres");
    c.verified(Err("connection lost"));
    assert!(matches!(c.scope(), ScopeStatus::Disabled(_)));
    assert!(matches!(a.scope(), ScopeStatus::Ready(_)));
    a_conn.batch_execute("DROP TABLE strata_sessions_t").await.unwrap();
}
