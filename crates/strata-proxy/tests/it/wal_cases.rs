//! Kinds of direct writes the WAL invalidator must make the proxy forget, each in both
//! invalidation modes: plain writes, TRUNCATE, cascading foreign keys, triggers, partitions,
//! inheritance, views, COPY and a large transaction. Each step caches reads through the proxy,
//! writes straight on PostgreSQL, and expects the new answer within a bound.

use std::{pin::pin, time::Duration};

use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};

use crate::wal::{in_both_modes, Mode, WalProxy, FRESH_WITHIN};

/// A large transaction is decoded and sent only at its commit: it may take longer to arrive.
const LARGE_FRESH_WITHIN: Duration = Duration::from_secs(30);

async fn plain_writes(mode: Mode) {
    let mut w = WalProxy::start(
        "plain",
        mode,
        "CREATE TABLE t (k int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g * 10 FROM generate_series(1, 10) g",
    )
    .await;
    let total = "SELECT count(*), sum(v) FROM t";
    w.step("INSERT", &["SELECT v FROM t WHERE k = 11", total], "INSERT INTO t VALUES (11, 110)").await;
    w.step("UPDATE", &["SELECT v FROM t WHERE k = 1", total], "UPDATE t SET v = 15 WHERE k = 1").await;
    w.step("DELETE", &["SELECT v FROM t WHERE k = 2", total], "DELETE FROM t WHERE k = 2").await;
    w.finish().await;
}

async fn truncate(mode: Mode) {
    let mut w = WalProxy::start(
        "truncate",
        mode,
        "CREATE TABLE t (k int PRIMARY KEY);
         CREATE TABLE p (id int PRIMARY KEY);
         CREATE TABLE c (id int PRIMARY KEY, p int REFERENCES p);
         INSERT INTO t SELECT generate_series(1, 5);
         INSERT INTO p SELECT generate_series(1, 5);
         INSERT INTO c SELECT g, g FROM generate_series(1, 5) g",
    )
    .await;
    w.step("TRUNCATE", &["SELECT count(*) FROM t"], "TRUNCATE t").await;
    w.step(
        "TRUNCATE ... CASCADE of a referenced table",
        &["SELECT count(*) FROM c", "SELECT count(*) FROM p"],
        "TRUNCATE p CASCADE",
    )
    .await;
    w.finish().await;
}

async fn cascading_delete(mode: Mode) {
    let mut w = WalProxy::start(
        "cascade",
        mode,
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent ON DELETE CASCADE);
         INSERT INTO parent VALUES (1), (2);
         INSERT INTO child VALUES (1, 1), (2, 1), (3, 2)",
    )
    .await;
    w.step(
        "DELETE of a parent row cascading to the child table",
        &["SELECT count(*) FROM child", "SELECT id FROM child WHERE parent = 1 ORDER BY id"],
        "DELETE FROM parent WHERE id = 1",
    )
    .await;
    w.finish().await;
}

async fn trigger(mode: Mode) {
    let mut w = WalProxy::start(
        "trigger",
        mode,
        "CREATE TABLE a (id int PRIMARY KEY);
         CREATE TABLE audit (id serial PRIMARY KEY, a_id int);
         CREATE FUNCTION audit_a() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO audit (a_id) VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER a_audit AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION audit_a();
         INSERT INTO a VALUES (1)",
    )
    .await;
    w.step(
        "INSERT into a whose trigger inserts into audit",
        &["SELECT count(*), max(a_id) FROM audit"],
        "INSERT INTO a VALUES (2)",
    )
    .await;
    w.finish().await;
}

async fn partitions(mode: Mode) {
    let mut w = WalProxy::start(
        "partitions",
        mode,
        "CREATE TABLE m (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
         CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (100);
         CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM (100) TO (200);
         INSERT INTO m VALUES (1, 10), (2, 20), (101, 1010)",
    )
    .await;
    let reads = ["SELECT count(*), sum(v) FROM m", "SELECT count(*), sum(v) FROM m_1"];
    w.step("INSERT through the parent", &reads, "INSERT INTO m VALUES (3, 30)").await;
    w.step("UPDATE through the parent", &reads, "UPDATE m SET v = v + 1 WHERE id = 1").await;
    w.step("UPDATE of the partition itself", &reads, "UPDATE m_1 SET v = v + 1 WHERE id = 2").await;
    w.finish().await;
}

async fn inheritance(mode: Mode) {
    let mut w = WalProxy::start(
        "inheritance",
        mode,
        // Keys: tables without a replica identity are left out of the publication (PostgreSQL
        // would refuse their UPDATEs and DELETEs), hence never cached.
        "CREATE TABLE parent (id int PRIMARY KEY, v int);
         CREATE TABLE child (PRIMARY KEY (id)) INHERITS (parent);
         INSERT INTO parent VALUES (1, 10);
         INSERT INTO child VALUES (2, 20)",
    )
    .await;
    let reads = ["SELECT count(*), sum(v) FROM parent"];
    w.step("INSERT into the child", &reads, "INSERT INTO child VALUES (3, 30)").await;
    w.step("UPDATE of the child", &reads, "UPDATE child SET v = v + 1 WHERE id = 2").await;
    w.finish().await;
}

async fn view(mode: Mode) {
    let mut w = WalProxy::start(
        "view",
        mode,
        "CREATE TABLE t (k int PRIMARY KEY, v int);
         CREATE VIEW tv AS SELECT k, v FROM t WHERE v > 0;
         INSERT INTO t VALUES (1, 10), (2, 20)",
    )
    .await;
    let total = "SELECT count(*), sum(v) FROM tv";
    w.step(
        "UPDATE of the base table",
        &["SELECT v FROM tv WHERE k = 1", total],
        "UPDATE t SET v = 11 WHERE k = 1",
    )
    .await;
    w.step("INSERT into the base table", &[total], "INSERT INTO t VALUES (3, 30)").await;
    w.finish().await;
}

async fn copy_from_stdin(mode: Mode) {
    let mut w = WalProxy::start(
        "copy",
        mode,
        "CREATE TABLE t (k int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10)",
    )
    .await;
    let before = w.cache_reads(&["SELECT count(*), sum(v) FROM t"]).await;
    let sink = w.direct.copy_in("COPY t (k, v) FROM STDIN (FORMAT binary)").await.expect("COPY FROM STDIN");
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &[Type::INT4, Type::INT4]));
    for k in 2..=50i32 {
        writer.as_mut().write(&[&k, &(k * 10)]).await.expect("a COPY row");
    }
    assert_eq!(writer.finish().await.expect("end of COPY"), 49);
    w.expect_fresh("COPY FROM STDIN", before, FRESH_WITHIN).await;
    w.finish().await;
}

async fn large_transaction(mode: Mode) {
    let mut w = WalProxy::start(
        "large",
        mode,
        "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'before');
         CREATE TABLE bulk (id int PRIMARY KEY, payload text)",
    )
    .await;
    let before = w.cache_reads(&["SELECT v FROM kv WHERE k = 1", "SELECT count(*) FROM bulk"]).await;
    // The cached row first: its change reaches the invalidator only after the 200,000 inserts.
    w.direct
        .batch_execute(
            "BEGIN;
             UPDATE kv SET v = 'after' WHERE k = 1;
             INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 200000) g;
             COMMIT",
        )
        .await
        .expect("the large transaction");
    w.expect_fresh("a transaction of 200,000 inserts and an update", before, LARGE_FRESH_WITHIN).await;
    w.finish().await;
}

/// With the catalog, the stream's row keys make direct writes key-level: a write to one key leaves
/// cached reads of other keys served, and a write whose rows are not all known reaches them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_are_key_level() {
    let mut w = WalProxy::start(
        "keys",
        Mode::Catalog,
        "CREATE TABLE t (k int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g * 10 FROM generate_series(1, 3000) g",
    )
    .await;
    let other = ["SELECT v FROM t WHERE k = 2", "SELECT sum(v) FROM t WHERE k BETWEEN 2000 AND 2100"];
    w.cache_reads(&other).await;
    w.step(
        "UPDATE by key",
        &["SELECT v FROM t WHERE k = 1", "SELECT sum(v) FROM t WHERE k < 100"],
        "UPDATE t SET v = -1 WHERE k = 1",
    )
    .await;
    still_cached(&w, &other).await;
    w.step(
        "a key that changes",
        &["SELECT count(*) FROM t WHERE k = 5000"],
        "UPDATE t SET k = 5000 WHERE k = 3",
    )
    .await;
    still_cached(&w, &other).await;
    w.step(
        "INSERT and DELETE",
        &["SELECT count(*) FROM t WHERE k = 3500"],
        "INSERT INTO t VALUES (3500, 1); DELETE FROM t WHERE k = 4",
    )
    .await;
    still_cached(&w, &other).await;
    // 300 rows: more than the stream keeps keys for, so the table is written table-wide.
    w.step("many rows", &other, "UPDATE t SET v = v + 1 WHERE k BETWEEN 1 AND 300 OR k = 2 OR k = 2050")
        .await;
    w.finish().await;
}

/// Each of `reads` is answered from the cache, and rightly so. A read the relay did not look up
/// (it came while the previous answer was still being finished) is asked again, and so is one
/// that missed because everything was invalidated meanwhile (another test changed a role: the
/// role catalogs, which the stream's fingerprint reads, are shared by every database).
async fn still_cached(w: &WalProxy, reads: &[&str]) {
    let counts = || {
        let stats = w.cache.query_cache().tier_stats();
        (stats.iter().map(|(_, s)| s.hits).sum::<u64>(), stats.iter().map(|(_, s)| s.misses).sum::<u64>())
    };
    let everything = || w.metric("strata_invalidations_total{kind=\"everything\"} ").unwrap_or(0.0);
    for sql in reads {
        let mut hit = false;
        for _ in 0..10 {
            let (hits, misses) = counts();
            let invalidated = everything();
            assert_eq!(w.served(sql).await, w.truth(sql).await, "{sql}");
            let (hits_now, misses_now) = counts();
            if misses_now != misses && hits_now == hits && everything() > invalidated {
                continue;
            }
            assert!(misses_now == misses || hits_now > hits, "{sql} should have stayed cached");
            if hits_now > hits {
                hit = true;
                break;
            }
        }
        assert!(hit, "the cache was never consulted for {sql}");
    }
}

/// A sequence changes by `nextval`, which the WAL does not carry, also when a column default
/// calls it on an insert: its reads are never cached, so a direct `nextval` shows at once.
async fn sequence(mode: Mode) {
    let mut w = WalProxy::start(
        "sequence",
        mode,
        "CREATE SEQUENCE s; CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) VALUES (1)",
    )
    .await;
    // Caching works (the stream is up) before the sequence is read.
    w.cached("SELECT count(*) FROM t").await;
    let steps = [
        ("SELECT last_value, is_called FROM s", "SELECT nextval('s')"),
        ("SELECT last_value FROM t_id_seq", "INSERT INTO t (v) VALUES (2)"),
    ];
    for (read, write) in steps {
        for _ in 0..3 {
            assert_eq!(w.served(read).await, w.truth(read).await, "{read}");
        }
        w.direct.batch_execute(write).await.unwrap();
        assert_eq!(w.served(read).await, w.truth(read).await, "{read} after a direct {write}");
    }
    w.finish().await;
}

/// What `client` is served for `sql`: the rows, or the SQLSTATE of the error.
async fn answer(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("<null>").to_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(";")),
        Err(e) => Err(e.code().map_or_else(|| e.to_string(), |c| c.code().to_owned())),
    }
}

/// Asks `sql` as `client` until the answer is `want` and comes from the cache, within `within`.
async fn served_from_cache(
    w: &WalProxy,
    client: &tokio_postgres::Client,
    sql: &str,
    want: &str,
    within: Duration,
) {
    let started = std::time::Instant::now();
    loop {
        let before = w.hits();
        let got = answer(client, sql).await;
        if got.as_deref() == Ok(want) && w.hits() > before {
            return;
        }
        assert!(started.elapsed() < within, "`{sql}` was not served {want:?} from the cache: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until `client` gets `want` for `sql`, within [`FRESH_WITHIN`].
async fn becomes(client: &tokio_postgres::Client, sql: &str, want: &Result<String, String>, what: &str) {
    let started = std::time::Instant::now();
    loop {
        let got = answer(client, sql).await;
        if got == *want {
            return;
        }
        assert!(started.elapsed() < FRESH_WITHIN, "{what}: `{sql}` still answers {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Role membership and role attributes live in catalogs shared by every database, which the WAL
/// does not carry and event triggers do not report: a direct `REVOKE role FROM member` or
/// `ALTER ROLE ... [NO]BYPASSRLS` must still reach the member's cached results within the bound
/// (before, the member kept reading rows it had lost the right to until the TTL).
async fn roles(mode: Mode) {
    let mode_name = format!("{mode:?}").to_lowercase();
    let (reader, member) =
        (format!("strata_wal_reader_{mode_name}"), format!("strata_wal_member_{mode_name}"));
    let w = WalProxy::start(
        "roles",
        mode,
        &format!(
            "CREATE TABLE docs (id int PRIMARY KEY, body text); INSERT INTO docs VALUES (1, 'one'), (2, 'two');
             DROP ROLE IF EXISTS {member}; DROP ROLE IF EXISTS {reader};
             CREATE ROLE {reader}; GRANT SELECT ON docs TO {reader};
             CREATE ROLE {member} LOGIN IN ROLE {reader};"
        ),
    )
    .await;
    let db = format!("strata_proxy_wal_roles_{mode_name}");
    let client = crate::support::connect(w.port(), &member, &db, None).await.expect("connect as the member");
    let read = "SELECT body FROM docs WHERE id = 1";
    let long = Duration::from_secs(20);
    served_from_cache(&w, &client, read, "one", long).await;
    // The stream's first fingerprint read after its start may invalidate everything (it brings
    // the publication in step): cache again after it, so that only the REVOKE can.
    tokio::time::sleep(Duration::from_secs(2)).await;
    served_from_cache(&w, &client, read, "one", long).await;
    w.direct.batch_execute(&format!("REVOKE {reader} FROM {member}")).await.unwrap();
    becomes(&client, read, &Err("42501".to_owned()), "a direct REVOKE of the role").await;

    w.direct
        .batch_execute(&format!(
            "GRANT {reader} TO {member}; ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY only_two ON docs USING (id = 2)"
        ))
        .await
        .unwrap();
    served_from_cache(&w, &client, read, "", long).await;
    w.direct.batch_execute(&format!("ALTER ROLE {member} BYPASSRLS")).await.unwrap();
    becomes(&client, read, &Ok("one".to_owned()), "a direct ALTER ROLE ... BYPASSRLS").await;
    served_from_cache(&w, &client, read, "one", long).await;
    w.direct.batch_execute(&format!("ALTER ROLE {member} NOBYPASSRLS")).await.unwrap();
    becomes(&client, read, &Ok(String::new()), "a direct ALTER ROLE ... NOBYPASSRLS").await;
    drop(client);
    w.direct
        .batch_execute(&format!("DROP OWNED BY {member}, {reader}; DROP ROLE {member}; DROP ROLE {reader}"))
        .await
        .unwrap();
    w.finish().await;
}

in_both_modes!(
    roles,
    sequence,
    plain_writes,
    truncate,
    cascading_delete,
    trigger,
    partitions,
    inheritance,
    view,
    copy_from_stdin,
    large_transaction,
);
