//! Faults around writes and unusual input: a writer that leaves while its write runs (both
//! protocols), a shutdown with a write running, clients in other encodings, texts PostgreSQL
//! refuses. Every read through the cache must show what the database holds.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};
use tokio::time::Instant;

use crate::support::{
    admin, connect, cstr, fresh_database, message, parse_bind_execute, pg, sqlstate, start_proxy, Msg,
    RawClient, TestProxy,
};

async fn strata_cache() -> Arc<StrataCache> {
    let settings = CacheSettings::default();
    Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"))
}

async fn caching_proxy(cache: &Arc<StrataCache>) -> TestProxy {
    let cache = cache.clone();
    start_proxy(move |b| b.with_cache(cache).with_drain_timeout(Duration::from_secs(20))).await
}

fn hits(cache: &StrataCache) -> u64 {
    cache.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum()
}

/// The value column of row 1, through a client.
async fn value(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT v FROM t WHERE id = 1", &[]).await.expect("read").get(0)
}

async fn table(db: &str) {
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')")
        .await
        .expect("table");
}

/// Waits (bounded) until PostgreSQL itself shows the write committed.
async fn committed(db: &str, want: &str) {
    let direct = admin(db).await;
    let start = Instant::now();
    while value(&direct).await != want {
        assert!(start.elapsed() < Duration::from_secs(30), "the write never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads through the proxy until it shows `want`; the answer a cache gives right after the
/// server committed may lag by the time the proxy takes to read the server's answer, never more.
async fn eventually_through(c: &tokio_postgres::Client, want: &str) {
    let start = Instant::now();
    loop {
        let got = value(c).await;
        if got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still {got:?} through the proxy, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw client sends a slow write and leaves at once, without waiting for its answer.
async fn write_and_leave(port: u16, db: &str, extended: bool, new: &str) {
    let (mut raw, _) = RawClient::startup(port, "postgres", db).await;
    let sql = format!("UPDATE t SET v = '{new}' WHERE id = 1 AND pg_sleep(0.5) IS NOT NULL");
    if extended {
        let mut batch = parse_bind_execute(&sql, &[]);
        batch.extend(message(b'S', &[]));
        raw.send(&batch).await;
    } else {
        raw.send(&message(b'Q', &cstr(&sql))).await;
    }
    // Give the request time to reach the server, then vanish without a Terminate.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_leaves_mid_write_leaves_no_stale_read() {
    let db = "strata_writer_leaves";
    table(db).await;
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    let reader = connect(proxy.port(), "postgres", db, None).await.expect("connect");
    let mut expected = "old".to_owned();
    for (round, extended) in [false, true, false, true].into_iter().enumerate() {
        // Cached, and served from cache.
        assert_eq!(value(&reader).await, expected);
        let before = hits(&cache);
        assert_eq!(value(&reader).await, expected);
        assert!(hits(&cache) > before, "round {round}: the read was not served from cache");
        let new = format!("new-{round}");
        write_and_leave(proxy.port(), db, extended, &new).await;
        committed(db, &new).await;
        eventually_through(&reader, &new).await;
        expected = new;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_write_running_leaves_no_stale_read() {
    let db = "strata_shutdown_write";
    table(db).await;
    let cache = strata_cache().await;
    for (round, grace) in [Duration::from_secs(10), Duration::from_millis(200)].into_iter().enumerate() {
        let proxy = {
            let cache = cache.clone();
            start_proxy(move |b| b.with_cache(cache).with_shutdown_grace(grace)).await
        };
        let reader = connect(proxy.port(), "postgres", db, None).await.expect("connect");
        let now = value(&reader).await;
        assert_eq!(value(&reader).await, now, "cached");
        let writer = connect(proxy.port(), "postgres", db, None).await.expect("connect");
        let new = format!("shutdown-{round}");
        let sql = format!("UPDATE t SET v = '{new}' WHERE id = 1 AND pg_sleep(1) IS NOT NULL");
        let write = tokio::spawn(async move { writer.batch_execute(&sql).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.shutdown.shutdown();
        let _ = write.await;
        tokio::time::timeout(Duration::from_secs(30), proxy.task)
            .await
            .expect("proxy stops")
            .expect("join")
            .expect("run");
        // Whether the write won (a long grace) or was cancelled (a short one), a proxy sharing the
        // cache reads what PostgreSQL holds.
        let truth = value(&admin(db).await).await;
        let next = caching_proxy(&cache).await;
        let c = connect(next.port(), "postgres", db, None).await.expect("connect");
        assert_eq!(value(&c).await, truth, "round {round}");
        if round == 0 {
            assert_eq!(truth, new, "a write that finishes within the grace commits");
        }
    }
}

/// Starts a raw session with extra startup parameters.
async fn raw_session(port: u16, db: &str, params: &[(&str, &str)]) -> RawClient {
    let mut c = RawClient::connect(port).await;
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", "postgres"), ("database", db)].iter().chain(params) {
        body.extend(cstr(k));
        body.extend(cstr(v));
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    c.send(&packet).await;
    let msgs = c.read_until_ready().await;
    assert!(msgs.iter().any(|(t, _)| *t == b'Z'), "startup failed: {msgs:?}");
    c
}

/// Sends a Query of raw bytes and returns the first column of its rows, or the SQLSTATE.
async fn raw_query(c: &mut RawClient, sql: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut body = sql.to_vec();
    body.push(0);
    c.send(&message(b'Q', &body)).await;
    rows_of(c.read_until_ready().await)
}

fn rows_of(msgs: Vec<Msg>) -> Result<Vec<Vec<u8>>, String> {
    let mut rows = Vec::new();
    for (tag, body) in msgs {
        match tag {
            b'E' => return Err(sqlstate(&body)),
            b'D' => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                rows.push(if len < 0 { b"NULL".to_vec() } else { body[6..6 + len as usize].to_vec() });
            }
            _ => {}
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_other_encodings_get_their_own_rows() {
    let db = "strata_encodings";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute("CREATE TABLE names (id int, name text); INSERT INTO names VALUES (1, 'José'), (2, 'Josè'), (3, 'Jos?')")
        .await
        .expect("table");
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    for encoding in ["LATIN1", "WIN1252", "SQL_ASCII"] {
        let mut c = raw_session(proxy.port(), db, &[("client_encoding", encoding)]).await;
        let mut direct = raw_session(pg().port(), db, &[("client_encoding", encoding)]).await;
        // Latin-1 bytes for é (0xE9) and è (0xE8): not UTF-8, and different literals.
        for _ in 0..2 {
            for name in [&b"Jos\xe9"[..], &b"Jos\xe8"[..], &b"Jos?"[..]] {
                let mut sql = b"SELECT id FROM names WHERE name = '".to_vec();
                sql.extend_from_slice(name);
                sql.extend_from_slice(b"'");
                assert_eq!(
                    raw_query(&mut c, &sql).await,
                    raw_query(&mut direct, &sql).await,
                    "{encoding}: {}",
                    String::from_utf8_lossy(&sql)
                );
            }
        }
    }
    // A client encoding whose characters hold ASCII bytes (Shift-JIS: 0x5C, a backslash, as a
    // second byte) is relayed uncached, with the server's answers.
    let mut sjis = raw_session(proxy.port(), db, &[("client_encoding", "SJIS")]).await;
    let mut direct = raw_session(pg().port(), db, &[("client_encoding", "SJIS")]).await;
    let sql = b"SELECT '\x95\x5c' AS s, count(*) FROM names";
    for _ in 0..2 {
        assert_eq!(raw_query(&mut sjis, sql).await, raw_query(&mut direct, sql).await);
    }
}

/// With `standard_conforming_strings = off`, PostgreSQL reads `\'` inside a string as a quote,
/// where the parser the proxy uses sees the string's end: a text can then hide a write or a
/// volatile call inside what the proxy reads as a quoted identifier. Such texts (a backslash while
/// the setting is off, in either protocol) are relayed and never analyzed: not cached, and counted
/// as writes of unknown effect. Before, the hidden UPDATE left a stale row cached and the hidden
/// `nextval` was answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslashes_without_standard_conforming_strings_are_never_read_by_the_proxy() {
    let db = "strata_nonstandard_strings";
    table(db).await;
    admin(db).await.batch_execute("CREATE SEQUENCE s").await.expect("sequence");
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    let c = connect(proxy.port(), "postgres", db, None).await.expect("connect");
    c.batch_execute("SET standard_conforming_strings = off; SET escape_string_warning = off").await.unwrap();
    let read = "SELECT v FROM t WHERE id = 1";
    let before = hits(&cache);
    for _ in 0..3 {
        assert_eq!(c.simple_query(read).await.unwrap().len(), 3);
    }
    assert!(hits(&cache) > before, "the read was never cached: the test would prove nothing");
    // Read as PostgreSQL reads it: a string, then `UPDATE ...;`, then a comment. Read with
    // standard strings: one SELECT whose second column has a quoted name.
    let hidden_write = r#"SELECT 'a\' AS x, 1 AS "'; UPDATE t SET v = 'new' WHERE id = 1; --""#;
    c.simple_query(hidden_write).await.expect("the hidden write");
    assert_eq!(value(&c).await, "new", "a write hidden from the parser left the old row cached");
    let hidden_call = r#"SELECT 'a\' AS x, 1 AS "' AS y, nextval('s') AS z --""#;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let rows = c.query(hidden_call, &[]).await.expect("the hidden call");
        seen.push(rows[0].get::<_, i64>(1));
    }
    assert_eq!(seen, [1, 2, 3], "a nextval hidden from the parser was answered from the cache");
    // Without a backslash the text reads the same either way, and is cached as usual.
    // (The session verifies its state first, after texts the proxy could not read.)
    let before = hits(&cache);
    for _ in 0..4 {
        c.simple_query("SELECT v FROM t WHERE id = 1 AND v <> 'x'").await.unwrap();
    }
    assert!(hits(&cache) > before, "a text without a backslash is read as usual");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_postgres_refuses_get_its_error_not_a_cached_row() {
    let db = "strata_refused_texts";
    fresh_database(db).await;
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    let mut c = raw_session(proxy.port(), db, &[]).await;
    // A valid text with the replacement character, cached.
    let valid = "SELECT '\u{FFFD}' AS x".as_bytes();
    for _ in 0..2 {
        assert_eq!(raw_query(&mut c, valid).await, Ok(vec!["\u{FFFD}".as_bytes().to_vec()]));
    }
    // The same text with an invalid UTF-8 byte where the replacement character was: a lossy
    // decoding would key it like the cached one; PostgreSQL refuses it.
    let invalid = b"SELECT '\xff' AS x";
    for _ in 0..2 {
        assert_eq!(raw_query(&mut c, invalid).await, Err("22021".to_owned()));
    }
    // A NUL inside a Query: PostgreSQL refuses the message; the part before it is cached.
    let cached = b"SELECT 1 AS one";
    for _ in 0..2 {
        assert_eq!(raw_query(&mut c, cached).await, Ok(vec![b"1".to_vec()]));
    }
    let mut with_nul = cached.to_vec();
    with_nul.extend_from_slice(b"\0; SELECT 2");
    let refused = raw_query(&mut c, &with_nul).await;
    assert_eq!(refused, Err("08P01".to_owned()), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_with_an_unknown_format_code_gets_postgres_error_and_the_session_goes_on() {
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    for port in [pg().port(), proxy.port()] {
        let (mut c, _) = RawClient::startup(port, "postgres", "postgres").await;
        let mut parse = cstr("");
        parse.extend(cstr("SELECT 1"));
        parse.extend(0i16.to_be_bytes());
        let mut bind = cstr("");
        bind.extend(cstr(""));
        bind.extend(0i16.to_be_bytes());
        bind.extend(0i16.to_be_bytes());
        // One result format code, 7: neither text (0) nor binary (1).
        bind.extend(1i16.to_be_bytes());
        bind.extend(7i16.to_be_bytes());
        let mut exec = cstr("");
        exec.extend(0u32.to_be_bytes());
        let mut batch = message(b'P', &parse);
        batch.extend(message(b'B', &bind));
        batch.extend(message(b'E', &exec));
        batch.extend(message(b'S', &[]));
        c.send(&batch).await;
        let answer = c.read_until_ready().await;
        let error = answer.iter().find(|m| m.0 == b'E').map(|m| sqlstate(&m.1));
        assert_eq!(error.as_deref(), Some("22023"), "port {port}: {answer:?}");
        assert_eq!(raw_query(&mut c, b"SELECT 2").await, Ok(vec![b"2".to_vec()]), "port {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ssl_request_is_refused_as_postgres_refuses_it() {
    // PostgreSQL (ProcessStartupPacket) answers one SSLRequest and one GSSENCRequest, and takes a
    // second of either for an unknown protocol version (0A000). The harness PostgreSQL now
    // answers S and G (it has TLS and GSSAPI built in), so it cannot show the second request in
    // plain text; the proxy without a certificate answers N to both.
    let proxy = start_proxy(|b| b).await;
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    let mut answers = Vec::new();
    for (port, request) in [(proxy.port(), gss), (proxy.port(), ssl)] {
        let mut c = RawClient::connect(port).await;
        let mut first = [0u8; 1];
        c.send(&request).await;
        tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut first).await.expect("first answer");
        assert_eq!(&first, b"N", "port {port}");
        c.send(&request).await;
        let refused = c.read_msg().await.expect("an error, then the end");
        assert_eq!(refused.0, b'E', "port {port}");
        answers.push(sqlstate(&refused.1));
    }
    assert_eq!(answers, ["0A000", "0A000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_megabyte_statement_gets_its_answer_and_leaves_a_bystander_alone() {
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    let mut big = String::with_capacity(21 << 20);
    big.push_str("SELECT count(*), sum(x) FROM (VALUES ");
    let mut n = 0u64;
    while big.len() < 20 << 20 {
        if n > 0 {
            big.push(',');
        }
        big.push_str(&format!("({})", n % 1000));
        n += 1;
    }
    big.push_str(") v(x)");
    let want: u64 = (0..n).map(|i| i % 1000).sum();
    let client = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let bystander = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let running = tokio::spawn(async move { client.simple_query(&big).await });
    // While the big statement is relayed, parsed by PostgreSQL and answered, the other session's
    // queries keep being answered; the bound is far above a query's time and far below the
    // seconds the unbounded analysis used to stall every session.
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !running.is_finished() {
        let start = Instant::now();
        bystander.simple_query("SELECT 1").await.expect("bystander query");
        slowest = slowest.max(start.elapsed());
        asked += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = running.await.expect("join").expect("the big statement is answered");
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
            }
            _ => None,
        })
        .expect("a row");
    assert_eq!(row, (Some(n.to_string()), Some(want.to_string())));
    assert!(asked > 0 && slowest < Duration::from_secs(2), "bystander waited {slowest:?} ({asked} queries)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_to_store_does_not_make_others_wait_for_it() {
    let cache = strata_cache().await;
    let proxy = caching_proxy(&cache).await;
    // A cacheable read whose answer (about 300 MB) passes the largest result stored (1 MiB) early.
    let sql = b"SELECT g, repeat('x', 1000) FROM generate_series(1, 300000) g";
    let mut first = raw_session(proxy.port(), "postgres", &[]).await;
    let mut body = sql.to_vec();
    body.push(0);
    first.send(&message(b'Q', &body)).await;
    // The first client reads one message and then nothing: its response stalls in the proxy,
    // long after the proxy knew it would not be stored.
    let _ = first.read_msg().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another client asks the same: it must not wait for the first one's fill (5 s single-flight
    // wait) but get its own answer from the server at once.
    let mut second = raw_session(proxy.port(), "postgres", &[]).await;
    let start = Instant::now();
    second.send(&message(b'Q', &body)).await;
    let answer = second.read_msg().await.expect("an answer");
    assert_eq!(answer.0, b'T', "{answer:?}");
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the second client waited {waited:?} for a fill that could not happen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_the_recording_budget_are_relayed_unrecorded() {
    let cache = strata_cache().await;
    let budget_cache = cache.clone();
    // A budget smaller than one answer: it is relayed whole and correct, and never stored.
    let proxy = start_proxy(move |b| b.with_cache(budget_cache).with_max_recording_bytes(1024)).await;
    let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let sql = "SELECT g, repeat('y', 100) FROM generate_series(1, 50) g";
    let before = hits(&cache);
    for _ in 0..3 {
        let rows = c.query(sql, &[]).await.expect("query");
        assert_eq!(rows.len(), 50);
    }
    assert_eq!(hits(&cache), before, "nothing over the budget was recorded, so nothing hits");
    // Small answers still fit and are cached.
    for _ in 0..3 {
        c.query("SELECT 1", &[]).await.expect("query");
    }
    assert!(hits(&cache) > before, "answers within the budget are cached");
}
