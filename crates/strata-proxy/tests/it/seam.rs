//! The caching seam with a small exact-match cache plugged in: replays stand in for the server,
//! statements first answered from cache are prepared upstream when needed, uncacheable responses
//! are not offered, and a cache's own verification query is never seen by the client.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use strata_proxy::{
    CacheMode, Dropped, ExtendedMessage, Fill, Lookup, NotCacheable, Request, RequestCache, RequestKind,
    RequestSession, Response, SessionView, Target, TransactionStatus,
};

use crate::{
    differential::{extended_workload, pgbench, psql, transaction_workload, PSQL_SCRIPT},
    support::{admin, connect, fresh_database, pg, start_proxy},
};

/// What a verification answered: rows of column values, or why it failed.
type Verification = Result<Vec<Vec<Option<Bytes>>>, String>;

/// A completed request: its key, why it was not cacheable, its command tags.
type Completion = (String, Option<NotCacheable>, Vec<String>);

/// Keys requests by their SQL, parameters and formats (ignoring statement names) and the
/// session's database and user, and the state a verification query read (when `verify` is set).
#[derive(Debug, Default)]
struct ReplayCache(Arc<Replay>);

#[derive(Debug, Default)]
struct Replay {
    entries: Mutex<HashMap<String, Bytes>>,
    log: Mutex<Vec<String>>,
    views: Mutex<Vec<SessionView>>,
    completions: Mutex<Vec<Completion>>,
    /// A query each session's first lookup asks to run before answering.
    verify: Option<String>,
    /// What verifications answered.
    verified: Mutex<Vec<Verification>>,
}

impl std::ops::Deref for ReplayCache {
    type Target = Replay;
    fn deref(&self) -> &Replay {
        &self.0
    }
}

#[derive(Debug)]
struct ReplaySession {
    shared: Arc<Replay>,
    view: SessionView,
    /// The state read by verification, part of the key.
    state: Mutex<Option<String>>,
}

fn key(view: &SessionView, state: &Option<String>, request: &Request) -> String {
    let mut k = format!("{}|{}|{state:?}|", view.database(), view.user());
    match request.kind() {
        RequestKind::Simple { sql } => k.push_str(&format!("Q:{sql}")),
        RequestKind::Extended { messages } => {
            for m in messages {
                match m {
                    ExtendedMessage::Parse(s) => k.push_str(&format!("P:{}:{:?};", s.sql(), s.param_types())),
                    ExtendedMessage::Bind(b) => k.push_str(&format!(
                        "B:{:?}:{:?}:{:?}:{:?};",
                        b.statement().map(|s| s.sql()),
                        b.params(),
                        b.param_formats(),
                        b.result_formats()
                    )),
                    ExtendedMessage::Describe(Target::Statement(_, s)) => {
                        k.push_str(&format!("DS:{:?};", s.as_ref().map(|s| s.sql().to_owned())))
                    }
                    ExtendedMessage::Describe(Target::Portal(_)) => k.push_str("DP;"),
                    ExtendedMessage::Execute { .. } => k.push_str("E;"),
                    ExtendedMessage::Close(_) => k.push_str("C;"),
                    ExtendedMessage::Sync => k.push_str("S;"),
                    other => k.push_str(&format!("{other:?};")),
                }
            }
        }
        other => k.push_str(&format!("{other:?}")),
    }
    k
}

impl RequestCache for ReplayCache {
    fn mode(&self) -> CacheMode {
        CacheMode::Active
    }

    fn open_session(&self, session: &SessionView) -> Option<Box<dyn RequestSession>> {
        Some(Box::new(ReplaySession {
            shared: self.0.clone(),
            view: session.clone(),
            state: Mutex::new(None),
        }))
    }
}

#[async_trait]
impl RequestSession for ReplaySession {
    async fn lookup(&self, request: &Request) -> Lookup {
        let shared = &self.shared;
        if let Some(sql) = &shared.verify {
            if self.state.lock().unwrap().is_none() {
                return Lookup::Verify(sql.clone());
            }
        }
        shared.views.lock().unwrap().push(self.view.clone());
        let k = key(&self.view, &self.state.lock().unwrap(), request);
        let hit = shared.entries.lock().unwrap().get(&k).cloned();
        shared.log.lock().unwrap().push(format!("{} {k}", if hit.is_some() { "hit" } else { "miss" }));
        match hit {
            Some(bytes) => Lookup::Hit(bytes),
            None => Lookup::Miss(Fill::new(k)),
        }
    }

    fn verified(&self, rows: Result<&[Vec<Option<Bytes>>], &str>) {
        self.shared.verified.lock().unwrap().push(rows.map(<[_]>::to_vec).map_err(str::to_owned));
        *self.state.lock().unwrap() = Some(format!("{rows:?}"));
    }

    async fn complete(&self, request: &Request, response: &Response, fill: Option<Fill>) {
        let summary = response.summary();
        self.shared.completions.lock().unwrap().push((
            key(&self.view, &self.state.lock().unwrap(), request),
            summary.not_cacheable(),
            summary.command_tags().to_vec(),
        ));
        if let (Some(bytes), Some(fill)) = (response.cacheable_bytes(), fill) {
            let k = *fill.downcast::<String>().expect("our ticket");
            assert_eq!(bytes.last(), Some(&b'I'), "a cacheable response ends with ReadyForQuery(I)");
            self.shared.entries.lock().unwrap().insert(k, bytes.clone());
        }
    }

    async fn abandoned(&self, _request: Option<&Request>) {}

    fn drops_statements(&self, _sql: &str) -> Dropped {
        Dropped::Nothing
    }

    fn parameter_changed(&self) {}
}

impl ReplayCache {
    fn hits(&self) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.starts_with("hit")).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_responses_stand_in_for_the_server_in_both_protocols() {
    let a = admin("postgres").await;
    a.batch_execute("DROP SEQUENCE IF EXISTS strata_proxy_seam_seq; CREATE SEQUENCE strata_proxy_seam_seq")
        .await
        .expect("sequence");
    let cache = Arc::new(ReplayCache::default());
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");

    // Simple protocol: the second identical query is answered from cache (the sequence does not move).
    let first = c.simple_query("SELECT nextval('strata_proxy_seam_seq')").await.expect("q1");
    let second = c.simple_query("SELECT nextval('strata_proxy_seam_seq')").await.expect("q2");
    let value = |m: &[tokio_postgres::SimpleQueryMessage]| {
        m.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    };
    assert_eq!(value(&first), Some("1".into()));
    assert_eq!(value(&second), Some("1".into()));
    assert_eq!(cache.hits(), 1);

    // Extended protocol: tokio-postgres prepares (Parse/Describe/Sync) then executes (Bind/Execute/Sync).
    let sql = "SELECT nextval('strata_proxy_seam_seq') + $1::int8";
    let v1: i64 = c.query_one(sql, &[&100i64]).await.expect("e1").get(0);
    let v2: i64 = c.query_one(sql, &[&100i64]).await.expect("e2").get(0);
    assert_eq!((v1, v2), (102, 102), "the second execution is replayed: {:#?}", cache.log.lock().unwrap());
    // New parameters: the statement (prepared only from cache under a new name) must be prepared
    // upstream before the Bind goes there; the injected ParseComplete never reaches the client.
    let v3: i64 = c.query_one(sql, &[&1000i64]).await.expect("e3").get(0);
    assert_eq!(v3, 1003);
    // A named statement prepared from cache, executed twice with new parameters.
    let stmt = c.prepare(sql).await.expect("prepare (replayed)");
    let v4: i64 = c.query_one(&stmt, &[&10_000i64]).await.expect("e4").get(0);
    let v5: i64 = c.query_one(&stmt, &[&20_000i64]).await.expect("e5").get(0);
    assert_eq!((v4, v5), (10_004, 20_005));
    assert!(cache.hits() >= 4, "{:#?}", cache.log.lock().unwrap());
    // Statements the client closed in replayed batches are closed upstream too (no leak): only
    // the live named statement and the one running this query remain.
    let upstream_statements: i64 =
        c.query_one("SELECT count(*) FROM pg_prepared_statements", &[]).await.expect("count").get(0);
    assert!(upstream_statements <= 2, "{upstream_statements} statements left upstream");

    // Errors and notices are never stored; transactions are never looked up.
    for _ in 0..2 {
        assert!(c.simple_query("SELECT 1/0").await.is_err());
        c.batch_execute("DO $$ BEGIN RAISE NOTICE 'n'; END $$").await.expect("notice");
    }
    let hits_before = cache.hits();
    c.batch_execute("BEGIN").await.expect("begin");
    let in_tx: i64 = c.query_one(sql, &[&100i64]).await.expect("in tx").get(0);
    assert_eq!(in_tx, 106, "inside a transaction the server answers");
    c.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(cache.hits(), hits_before);
    let completions = cache.completions.lock().unwrap().clone();
    assert!(completions.iter().any(|(_, r, _)| *r == Some(NotCacheable::Error)));
    assert!(completions.iter().any(|(_, r, _)| *r == Some(NotCacheable::Notice)));
    assert!(completions.iter().any(|(_, _, tags)| tags == &["COMMIT".to_owned()]));

    // The same statement on a second connection is served from the shared cache too.
    let c2 = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let other: i64 = c2.query_one(sql, &[&100i64]).await.expect("c2").get(0);
    assert_eq!(other, 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_query_is_invisible_to_the_client() {
    let verify = "SELECT current_user::text, current_setting('search_path'), NULL::text".to_owned();
    let cache = Arc::new(ReplayCache(Arc::new(Replay { verify: Some(verify), ..Replay::default() })));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let last = || cache.views.lock().unwrap().last().cloned().expect("a lookup happened");

    // libpq's pattern: an unnamed statement prepared in one batch and bound in the next. The
    // verification runs between them (a simple Query destroys the unnamed statement upstream);
    // the proxy prepares it again before the Bind.
    let (mut raw, _) = crate::support::RawClient::startup(proxy.port(), "postgres", "postgres").await;
    use crate::support::{cstr, message};
    let mut parse = cstr("");
    parse.extend(cstr("SELECT 40 + 2"));
    parse.extend(0i16.to_be_bytes());
    let mut batch = message(b'P', &parse);
    batch.extend(message(b'S', &[]));
    raw.send(&batch).await;
    let prepared = raw.read_until_ready().await;
    assert_eq!(prepared.iter().map(|m| m.0).collect::<Vec<_>>(), [b'1', b'Z']);
    let mut bind = cstr("");
    bind.extend(cstr(""));
    bind.extend([0, 0, 0, 0, 0, 0]);
    let mut batch = message(b'B', &bind);
    let mut exec = cstr("");
    exec.extend(0u32.to_be_bytes());
    batch.extend(message(b'E', &exec));
    batch.extend(message(b'S', &[]));
    raw.send(&batch).await;
    let answer = raw.read_until_ready().await;
    assert_eq!(answer.iter().map(|m| m.0).collect::<Vec<_>>(), [b'2', b'D', b'C', b'Z'], "{answer:?}");
    assert_eq!(answer.last().map(|m| m.1.clone()), Some(vec![b'I']));

    // A simple query: the client sees its own answer only.
    let rows = c.simple_query("SELECT 'mine'").await.expect("q");
    let texts: Vec<&str> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["mine"]);
    let verified = cache.verified.lock().unwrap().clone();
    assert!(verified.len() >= 2, "each session verified once: {verified:?}");
    let first = verified[0].as_ref().expect("verification rows");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0][0].as_deref(), Some(&b"postgres"[..]));
    assert_eq!(first[0][2], None, "NULL kept apart from an empty string");
    let v = last();
    assert_eq!((v.database(), v.user()), ("postgres", "postgres"));
    assert_eq!(v.transaction_status(), TransactionStatus::Idle);
    // Transactions still work, and a cached answer is served to the verified session.
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.expect("transaction");
    let hits = cache.hits();
    c.simple_query("SELECT 'mine'").await.expect("q");
    assert_eq!(cache.hits(), hits + 1);

    // A verification that fails is reported to the cache, not to the client.
    let failing = Arc::new(ReplayCache(Arc::new(Replay {
        verify: Some("SELECT 1/0".to_owned()),
        ..Replay::default()
    })));
    let proxy = start_proxy(|b| b.with_cache(failing.clone())).await;
    let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let one: i32 = c.query_one("SELECT 1", &[]).await.expect("client unaffected").get(0);
    assert_eq!(one, 1);
    c.batch_execute("SELECT 2").await.expect("client unaffected");
    let verified = failing.verified.lock().unwrap().clone();
    assert!(verified.iter().all(|v| v.as_ref().is_err_and(|e| e.contains("22012"))), "{verified:?}");
}

/// Active mode with a cache that never hits: every request is looked up (when eligible), recorded
/// and completed, and clients must not notice.
#[derive(Debug, Default)]
struct AlwaysMiss {
    lookups: Mutex<usize>,
    recorded: Mutex<usize>,
    completions: Mutex<usize>,
}

#[derive(Debug, Default, Clone)]
struct AlwaysMissCache(Arc<AlwaysMiss>);

impl RequestCache for AlwaysMissCache {
    fn mode(&self) -> CacheMode {
        CacheMode::Active
    }

    fn open_session(&self, _session: &SessionView) -> Option<Box<dyn RequestSession>> {
        Some(Box::new(self.clone()))
    }
}

#[async_trait]
impl RequestSession for AlwaysMissCache {
    async fn lookup(&self, _request: &Request) -> Lookup {
        *self.0.lookups.lock().unwrap() += 1;
        Lookup::Miss(Fill::new(()))
    }

    fn verified(&self, _rows: Result<&[Vec<Option<Bytes>>], &str>) {}

    async fn complete(&self, _request: &Request, response: &Response, _fill: Option<Fill>) {
        *self.0.completions.lock().unwrap() += 1;
        if response.cacheable_bytes().is_some() {
            *self.0.recorded.lock().unwrap() += 1;
        }
    }

    async fn abandoned(&self, _request: Option<&Request>) {}

    fn drops_statements(&self, _sql: &str) -> Dropped {
        Dropped::Nothing
    }

    fn parameter_changed(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_mode_without_hits_is_transparent_to_every_client() {
    let db = "strata_proxy_active";
    fresh_database(db).await;
    let misses = AlwaysMissCache::default();
    let cache = misses.0.clone();
    let proxy = start_proxy(|b| b.with_cache(Arc::new(misses))).await;

    let direct = psql(pg().port(), db, PSQL_SCRIPT).await;
    let proxied = psql(proxy.port(), db, PSQL_SCRIPT).await;
    assert_eq!(String::from_utf8_lossy(&proxied.stdout), String::from_utf8_lossy(&direct.stdout));
    assert_eq!(String::from_utf8_lossy(&proxied.stderr), String::from_utf8_lossy(&direct.stderr));

    let mut d = connect(pg().port(), "postgres", db, None).await.expect("direct");
    let mut p = connect(proxy.port(), "postgres", db, None).await.expect("proxied");
    assert_eq!(extended_workload(&p).await, extended_workload(&d).await);
    assert_eq!(transaction_workload(&mut p).await, transaction_workload(&mut d).await);

    pgbench(pg().port(), db, &["-i", "-s", "1", "-q"]).await;
    for mode in ["simple", "extended", "prepared"] {
        let text =
            pgbench(proxy.port(), db, &["-M", mode, "-c", "2", "-j", "1", "-T", "1", "-n", "-S"]).await;
        assert!(text.contains("number of failed transactions: 0"), "{text}");
    }
    let (lookups, recorded, completions) =
        (*cache.lookups.lock().unwrap(), *cache.recorded.lock().unwrap(), *cache.completions.lock().unwrap());
    assert!(lookups > 100 && recorded > 100 && completions >= lookups, "{lookups} {recorded} {completions}");
}
