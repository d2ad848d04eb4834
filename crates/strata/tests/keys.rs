//! Key-level invalidation (experimental, `with_key_level(true)`) against the harness's
//! PostgreSQL: a write to one key makes reads of that key miss and leaves reads of other keys
//! reachable; writes whose keys are unknown reach every key-level read.
// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use strata::{KeyKind, KeyScope, Lookup, QueryCache, Relations, Request, SettingsDigest};
use strata_l1::HotTier;
use tokio_postgres::{Client, NoTls};

async fn connect() -> Client {
    let url = std::env::var("STRATA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_DATABASE_URL is unset: run `cargo xtask test`"));
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The rows PostgreSQL gives, as text.
async fn truth(pg: &Client, sql: &str) -> String {
    let rows = pg.simple_query(sql).await.unwrap();
    let mut out = String::new();
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                out.push_str(r.get(i).unwrap_or("NULL"));
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

/// Whether the read hits, and what the cache answers (filled from PostgreSQL on a miss).
async fn read(cache: &QueryCache, pg: &Client, sql: &str) -> (bool, String) {
    let scope = KeyScope::new("postgres", "app", SettingsDigest::of([("search_path", "public")]));
    let req = Request::new(&scope, sql);
    match cache.lookup(&req).await {
        Lookup::Hit(hit) => (true, String::from_utf8(hit.result().payload().to_vec()).unwrap()),
        Lookup::Miss(ticket) => {
            let rows = truth(pg, sql).await;
            ticket.fill(Bytes::from(rows.clone()), 1).await;
            (false, rows)
        }
        Lookup::Bypass(b) => panic!("{sql} bypassed: {}", b.reason()),
    }
}

/// Writes on PostgreSQL, then invalidates as a proxy does.
async fn write(cache: &QueryCache, pg: &Client, sql: &str) {
    pg.batch_execute(sql).await.unwrap();
    cache.invalidate_sql(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_one_key_leaves_reads_of_other_keys_cached_and_nothing_stale() {
    let pg = connect().await;
    let t = format!("keyed_{}", std::process::id());
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int PRIMARY KEY, v int);
         INSERT INTO {t} SELECT g, g * 10 FROM generate_series(1, 3000) g"
    ))
    .await
    .unwrap();
    let cache = QueryCache::builder()
        .with_l1(HotTier::builder().build().unwrap())
        .with_key_level(true)
        .build()
        .unwrap();
    cache.set_relations(Relations::builder().key_column(&t, "id", KeyKind::Int).build());

    let reads = [
        format!("SELECT v FROM {t} WHERE id = 1"),
        format!("SELECT v FROM {t} WHERE id = 2"),
        format!("SELECT v FROM {t} WHERE id = 2500"),
        format!("SELECT sum(v) FROM {t} WHERE id IN (1, 7)"),
        format!("SELECT count(*), sum(v) FROM {t} WHERE id BETWEEN 1 AND 100"),
        format!("SELECT count(*) FROM {t} WHERE id >= 2000 AND id < 2600"),
        format!("SELECT sum(v) FROM {t}"),
    ];
    let check = |what: &'static str| {
        let (cache, pg, reads) = (&cache, &pg, &reads);
        async move {
            let mut hits = Vec::new();
            for sql in reads {
                let (hit, answer) = read(cache, pg, sql).await;
                assert_eq!(answer, truth(pg, sql).await, "{what}: {sql} was served stale");
                hits.push(hit);
            }
            hits
        }
    };
    check("fill").await;
    assert!(check("cached").await.iter().all(|h| *h), "everything is cached");

    // One key: its point read, the IN list and the range holding it, and the whole-table read
    // miss; the other keys stay cached.
    write(&cache, &pg, &format!("UPDATE {t} SET v = -1 WHERE id = 1")).await;
    let hits = check("after a write to id 1").await;
    assert_eq!(hits, [false, true, true, false, false, true, false], "{hits:?}");

    // A key that changes: both the old and the new key.
    write(&cache, &pg, &format!("UPDATE {t} SET id = 5000 WHERE id = 2500")).await;
    let hits = check("after id 2500 became 5000").await;
    assert_eq!(hits, [true, true, false, true, true, false, false], "{hits:?}");

    // Insert and delete by key.
    write(&cache, &pg, &format!("DELETE FROM {t} WHERE id IN (7, 2)")).await;
    let hits = check("after deleting 7 and 2").await;
    assert_eq!(hits, [true, false, true, false, false, true, false], "{hits:?}");
    write(&cache, &pg, &format!("INSERT INTO {t} (id, v) VALUES (2, 22)")).await;
    let hits = check("after inserting 2").await;
    assert!(!hits[1] && hits[0] && !hits[4], "{hits:?}");

    // Unknown keys reach every key-level read.
    write(&cache, &pg, &format!("UPDATE {t} SET v = v + 1 WHERE v > 1000")).await;
    let hits = check("after a table-wide write").await;
    assert!(hits.iter().all(|h| !h), "{hits:?}");
    write(&cache, &pg, &format!("UPDATE {t} SET id = id + 10000 WHERE id = 1")).await;
    let hits = check("after a key changed by an expression").await;
    assert!(hits.iter().all(|h| !h), "{hits:?}");

    pg.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}
