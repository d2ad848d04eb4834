//! Pipelining clients with the cache on: nothing PostgreSQL would already be running is held
//! back, so a client that sends Execute without Sync gets what PostgreSQL sends at once (an
//! error), in a transaction or not, cached statement or not.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};

use crate::support::{
    admin, fresh_database, message, parse_bind_execute, sqlstate, start_proxy, Msg, RawClient,
};

/// Reads until an ErrorResponse (bounded by the client's read timeout: a hang fails the test).
async fn until_error(c: &mut RawClient) -> (Vec<Msg>, String) {
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.read_msg())
            .await
            .expect("the error PostgreSQL sends at once never came")
            .expect("connection closed");
        if m.0 == b'E' {
            let code = sqlstate(&m.1);
            return (seen, code);
        }
        seen.push(m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_a_pipelining_client_without_a_sync() {
    let db = "strata_pipelining";
    fresh_database(db).await;
    admin(db).await.batch_execute("CREATE TABLE u (id int PRIMARY KEY)").await.expect("table");
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("cache"));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let (mut c, _) = RawClient::startup(proxy.port(), "postgres", db).await;

    // A cacheable read that fails, outside a transaction, no Sync.
    for _ in 0..2 {
        c.send(&parse_bind_execute("SELECT 1/0", &[])).await;
        let (_, code) = until_error(&mut c).await;
        assert_eq!(code, "22012");
        c.send(&message(b'S', &[])).await;
        let rest = c.read_until_ready().await;
        assert_eq!(rest.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
    }

    // A unique violation inside a transaction (psycopg's test_pipeline_communicate_uniqviol).
    assert!(c.query("BEGIN").await.iter().any(|m| m.0 == b'Z'));
    let mut batch = parse_bind_execute("INSERT INTO u VALUES (1)", &[]);
    batch.extend(parse_bind_execute("INSERT INTO u VALUES (1)", &[]));
    c.send(&batch).await;
    let (before, code) = until_error(&mut c).await;
    assert_eq!(code, "23505");
    assert!(before.iter().any(|m| m.0 == b'C'), "the first INSERT completed: {before:?}");
    c.send(&message(b'S', &[])).await;
    let rest = c.read_until_ready().await;
    assert_eq!(rest.last().map(|m| m.1.clone()), Some(b"E".to_vec()), "the transaction failed");
    c.query("ROLLBACK").await;

    // A cached read pipelined without a Sync, then a Flush: the answer comes (from the server or
    // the cache), and the Sync that follows ends the batch.
    for round in 0..3 {
        let mut batch = parse_bind_execute("SELECT 42", &[]);
        batch.extend(message(b'H', &[]));
        c.send(&batch).await;
        let mut got = Vec::new();
        while !got.iter().any(|m: &Msg| m.0 == b'C') {
            let m = tokio::time::timeout(Duration::from_secs(10), c.read_msg())
                .await
                .unwrap_or_else(|_| panic!("round {round}: no answer after Flush"))
                .expect("open");
            got.push(m);
        }
        assert!(got.iter().any(|m| m.0 == b'D'), "{got:?}");
        c.send(&message(b'S', &[])).await;
        assert_eq!(c.read_until_ready().await.last().map(|m| m.0), Some(b'Z'));
    }
}
