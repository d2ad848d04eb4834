//! The caching seam with a small exact-match cache plugged in: replays stand in for the server,
//! statements first answered from cache are prepared upstream when needed, uncacheable responses
//! are not offered, and the session view follows SET/RESET/ROLE and transactions.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use strata_proxy::{
    CacheMode, ExtendedMessage, Fill, Lookup, NotCacheable, Request, RequestCache, RequestKind, Response,
    SessionView, Target, Tracking, TransactionStatus,
};

use crate::{
    differential::{extended_workload, pgbench, psql, transaction_workload, PSQL_SCRIPT},
    support::{admin, connect, fresh_database, pg, start_proxy},
};

/// A completed request: its key, why it was not cacheable, its command tags.
type Completion = (String, Option<NotCacheable>, Vec<String>);

/// Keys requests by their SQL, parameters and formats (ignoring statement names) and the session's
/// database, user, role and settings.
#[derive(Debug, Default)]
struct ReplayCache {
    entries: Mutex<HashMap<String, Bytes>>,
    log: Mutex<Vec<String>>,
    views: Mutex<Vec<SessionView>>,
    completions: Mutex<Vec<Completion>>,
}

fn key(view: &SessionView, request: &Request) -> String {
    let mut k = format!(
        "{}|{}|{:?}|{:?}|{:?}|",
        view.database(),
        view.user(),
        view.role(),
        view.session_authorization(),
        view.settings().collect::<Vec<_>>()
    );
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

#[async_trait]
impl RequestCache for ReplayCache {
    fn mode(&self) -> CacheMode {
        CacheMode::Active
    }

    async fn lookup(&self, session: &SessionView, request: &Request) -> Lookup {
        self.views.lock().unwrap().push(session.clone());
        let k = key(session, request);
        let hit = self.entries.lock().unwrap().get(&k).cloned();
        self.log.lock().unwrap().push(format!("{} {k}", if hit.is_some() { "hit" } else { "miss" }));
        match hit {
            Some(bytes) => Lookup::Hit(bytes),
            None => Lookup::Miss(Fill::new(k)),
        }
    }

    async fn complete(
        &self,
        session: &SessionView,
        request: &Request,
        response: &Response,
        fill: Option<Fill>,
    ) {
        let summary = response.summary();
        self.completions.lock().unwrap().push((
            key(session, request),
            summary.not_cacheable(),
            summary.command_tags().to_vec(),
        ));
        if let (Some(bytes), Some(fill)) = (response.cacheable_bytes(), fill) {
            let k = *fill.downcast::<String>().expect("our ticket");
            assert_eq!(bytes.last(), Some(&b'I'), "a cacheable response ends with ReadyForQuery(I)");
            self.entries.lock().unwrap().insert(k, bytes.clone());
        }
    }
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
    assert_eq!((v1, v2), (102, 102), "the second execution is replayed");
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
async fn session_view_follows_settings_roles_and_transactions() {
    let a = admin("postgres").await;
    a.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_proxy_reader') THEN
           CREATE ROLE strata_proxy_reader; END IF; END $$;",
    )
    .await
    .expect("role");
    let cache = Arc::new(ReplayCache::default());
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let c = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let last = || cache.views.lock().unwrap().last().cloned().expect("a lookup happened");

    c.simple_query("SELECT 1").await.expect("q");
    let v = last();
    assert_eq!((v.database(), v.user()), ("postgres", "postgres"));
    assert_eq!(v.transaction_status(), TransactionStatus::Idle);
    assert_eq!(v.server_parameter("client_encoding"), Some("UTF8"));

    c.batch_execute("SET search_path TO public, pg_catalog").await.expect("set");
    c.batch_execute("SET app.tenant_id = '7'").await.expect("set");
    c.batch_execute("SET ROLE strata_proxy_reader").await.expect("role");
    c.batch_execute("SET TimeZone = 'Asia/Tokyo'").await.expect("tz");
    c.simple_query("SELECT 2").await.expect("q");
    let v = last();
    assert_eq!(v.setting("search_path"), Some("public, pg_catalog"));
    assert_eq!(v.setting("app.tenant_id"), Some("'7'"));
    assert_eq!(v.role(), Some("strata_proxy_reader"));
    assert_eq!(v.server_parameter("TimeZone"), Some("Asia/Tokyo"), "ParameterStatus tracked");

    // A SET rolled back is forgotten; a SET committed is kept; a failed SET stops tracking.
    c.batch_execute("BEGIN; SET app.tenant_id = '8'; ROLLBACK").await.expect("rollback");
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("SET app.region = 'eu'").await.expect("set in tx");
    c.batch_execute("COMMIT").await.expect("commit");
    c.batch_execute("RESET ROLE").await.expect("reset role");
    c.simple_query("SELECT 3").await.expect("q");
    let v = last();
    assert_eq!(v.setting("app.tenant_id"), Some("'7'"));
    assert_eq!(v.setting("app.region"), Some("'eu'"));
    assert_eq!(v.role(), None);
    assert_eq!(*v.tracking(), Tracking::Tracked);

    // Settings are part of this test cache's key: the same text under other settings is a miss.
    let hits = cache.hits();
    c.simple_query("SELECT 3").await.expect("q");
    assert_eq!(cache.hits(), hits + 1);
    c.batch_execute("SET app.tenant_id = '9'").await.expect("set");
    c.simple_query("SELECT 3").await.expect("q");
    assert_eq!(cache.hits(), hits + 1);

    // State the proxy cannot follow turns lookups off for the session.
    let lookups = cache.views.lock().unwrap().len();
    c.batch_execute("SELECT set_config('app.tenant_id', '10', false)").await.expect("set_config");
    c.simple_query("SELECT 3").await.expect("q");
    c.query("SELECT $1::int", &[&1i32]).await.expect("q");
    assert_eq!(cache.views.lock().unwrap().len(), lookups, "no lookups once untracked");
}

/// Active mode with a cache that never hits: every request is looked up (when eligible), recorded
/// and completed, and clients must not notice.
#[derive(Debug, Default)]
struct AlwaysMiss {
    lookups: Mutex<usize>,
    recorded: Mutex<usize>,
    completions: Mutex<usize>,
}

#[async_trait]
impl RequestCache for AlwaysMiss {
    fn mode(&self) -> CacheMode {
        CacheMode::Active
    }

    async fn lookup(&self, _session: &SessionView, _request: &Request) -> Lookup {
        *self.lookups.lock().unwrap() += 1;
        Lookup::Miss(Fill::new(()))
    }

    async fn complete(
        &self,
        _session: &SessionView,
        _request: &Request,
        response: &Response,
        _fill: Option<Fill>,
    ) {
        *self.completions.lock().unwrap() += 1;
        if response.cacheable_bytes().is_some() {
            *self.recorded.lock().unwrap() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_mode_without_hits_is_transparent_to_every_client() {
    let db = "strata_proxy_active";
    fresh_database(db).await;
    let cache = Arc::new(AlwaysMiss::default());
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;

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
