//! Key-level invalidation through the proxy, with the catalog's keys: a write to some rows of a
//! table leaves cached reads of its other keys served, in both protocols, whether the write's
//! keys come from its text, its bound parameters or the `RETURNING` rows it sends back; and a
//! write whose keys cannot be known reaches every read of the table.

use tokio_postgres::types::Type;

use crate::catalog::{catalog_proxy, fresh, read, still_hits, warm, Outcome};
use crate::support::*;

const SCHEMA: &str = "
CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acc SELECT g, g * 10 FROM generate_series(1, 3000) g;
CREATE TABLE items (id serial PRIMARY KEY, v int);
INSERT INTO items (v) VALUES (1), (2), (3);
CREATE TABLE tags (id uuid PRIMARY KEY, v int);
CREATE TABLE gen (x int, id int GENERATED ALWAYS AS (x * 2) STORED PRIMARY KEY);
INSERT INTO gen (x) VALUES (2);
INSERT INTO tags VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1), ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 2);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_literal_or_parameter_leave_reads_of_other_keys_cached() {
    let db = "strata_keys_rw";
    fresh_database(db).await;
    admin(db).await.batch_execute(SCHEMA).await.unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    let reads = [
        "SELECT v FROM acc WHERE id = 1",
        "SELECT v FROM acc WHERE id = 2",
        "SELECT sum(v) FROM acc WHERE id BETWEEN 1 AND 100",
        "SELECT sum(v) FROM acc WHERE id BETWEEN 2000 AND 2100",
        "SELECT v FROM tags WHERE id = 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    ];
    for sql in reads {
        warm(&c, &cache, sql).await;
    }

    // A literal key (simple protocol): its point and the range holding it miss, the rest hit.
    c.batch_execute("UPDATE acc SET v = -1 WHERE id = 1").await.unwrap();
    assert_eq!(fresh(&c, &direct, reads[0]).await, "-1");
    assert_eq!(fresh(&c, &direct, reads[2]).await, (50_500 - 10 - 1).to_string());
    still_hits(&c, &cache, reads[1]).await;
    still_hits(&c, &cache, reads[3]).await;

    // A bound parameter (extended protocol, binary int4).
    warm(&c, &cache, reads[0]).await;
    // Prepared without declared types (what tokio-postgres, asyncpg and others do): the server's
    // ParameterDescription says how it reads the binary parameter.
    c.execute("UPDATE acc SET v = v + 1 WHERE id = $1", &[&2050i32]).await.unwrap();
    assert_eq!(
        fresh(&c, &direct, reads[3]).await,
        ((2000..=2100).map(|i| i * 10).sum::<i32>() + 1).to_string()
    );
    still_hits(&c, &cache, reads[0]).await;
    still_hits(&c, &cache, reads[1]).await;

    // Prepared reads are key-level too.
    let prepared = c.prepare("SELECT v FROM acc WHERE id = $1").await.unwrap();
    let by_key = |id: i32| {
        let (c, prepared, cache) = (&c, &prepared, &cache);
        async move {
            // A request that comes while the relay finishes the previous answer (tokio-postgres
            // closes the statements `execute` prepared in the background) is not looked up.
            for _ in 0..10 {
                let (hits, misses) = hits_misses(cache);
                let v = c.query_one(prepared, &[&id]).await.unwrap().get::<_, i32>(0);
                let (hits_now, misses_now) = hits_misses(cache);
                if hits_now > hits {
                    return (v, Outcome::Hit);
                }
                if misses_now > misses {
                    return (v, Outcome::Miss);
                }
            }
            panic!("the prepared read of {id} was never looked up")
        }
    };
    by_key(3).await;
    assert_eq!(by_key(3).await, (30, Outcome::Hit), "a prepared read is cached");
    c.execute("UPDATE acc SET v = v + 1 WHERE id = $1", &[&2051i32]).await.unwrap();
    assert_eq!(
        by_key(3).await,
        (30, Outcome::Hit),
        "a write to key 2051 left the prepared read of key 3 cached"
    );
    c.execute("UPDATE acc SET v = v + 1 WHERE id = $1", &[&3i32]).await.unwrap();
    assert_eq!(by_key(3).await, (31, Outcome::Miss), "the prepared read of a key written");

    // A parameter of another integer type (int8 against an int4 key).
    warm(&c, &cache, reads[3]).await;
    c.query_typed("UPDATE acc SET v = v + 1 WHERE id = $1", &[(&2i64, Type::INT8)]).await.unwrap();
    assert_eq!(fresh(&c, &direct, reads[1]).await, "21");
    still_hits(&c, &cache, reads[3]).await;

    // A key that changes: the old and the new key's readers miss.
    warm(&c, &cache, "SELECT count(*), max(v) FROM acc WHERE id = 5000").await;
    c.batch_execute("UPDATE acc SET id = 5000 WHERE id = 2").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM acc WHERE id = 2").await, "0");
    assert_eq!(fresh(&c, &direct, "SELECT count(*), max(v) FROM acc WHERE id = 5000").await, "1|21");
    still_hits(&c, &cache, reads[3]).await;

    // `= ANY($1)` reads with an array parameter are key-level too.
    let any = "SELECT sum(v) FROM acc WHERE id = ANY($1)";
    let ids: Vec<i32> = vec![3, 4];
    let first: Option<i64> = c.query_one(any, &[&ids]).await.unwrap().get(0);
    let again: Option<i64> = c.query_one(any, &[&ids]).await.unwrap().get(0);
    assert_eq!(first, again);
    c.batch_execute("UPDATE acc SET v = 0 WHERE id = 7").await.unwrap();
    let (hits, _) = hits_misses(&cache);
    let _: Option<i64> = c.query_one(any, &[&ids]).await.unwrap().get(0);
    assert!(hits_misses(&cache).0 > hits, "a write to key 7 left the read of keys 3 and 4 cached");
    c.batch_execute("UPDATE acc SET v = 0 WHERE id = 4").await.unwrap();
    let after: Option<i64> = c.query_one(any, &[&ids]).await.unwrap().get(0);
    let truth: Option<i64> = direct.query_one(any, &[&ids]).await.unwrap().get(0);
    assert_eq!(after, truth, "stale = ANY($1) read after a write to one of its keys");

    // A write whose keys are unknown reaches every key-level read.
    warm(&c, &cache, reads[0]).await;
    warm(&c, &cache, reads[3]).await;
    c.batch_execute("UPDATE acc SET v = v + 1 WHERE v < 0").await.unwrap();
    assert_eq!(fresh(&c, &direct, reads[0]).await, "0");
    assert_eq!(read(&c, &cache, reads[3]).await, Outcome::Miss);
    // A generated key changes with the column it is computed from, though no write names it.
    warm(&c, &cache, "SELECT count(*) FROM gen WHERE id = 10").await;
    c.batch_execute("UPDATE gen SET x = 5 WHERE id = 4").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM gen WHERE id = 10").await, "1");
    // Uuid keys, and a write to another uuid.
    c.batch_execute("UPDATE tags SET v = 9 WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'").await.unwrap();
    still_hits(&c, &cache, reads[4]).await;
    c.batch_execute("UPDATE tags SET v = 8 WHERE id = '{B0EEBC999C0B4EF8BB6D6BB9BD380A11}'").await.unwrap();
    assert_eq!(fresh(&c, &direct, reads[4]).await, "8");
}

/// `strata_key_level_total{what="..."}`.
fn key_level(cache: &strata_proxy::StrataCache, what: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&cache.query_cache().registry().gather())
        .expect("metrics encode");
    let prefix = format!("strata_key_level_total{{what=\"{what}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0.0, |v| v.trim().parse().expect("a sample"))
}

fn hits_misses(cache: &strata_proxy::StrataCache) -> (u64, u64) {
    let stats = cache.query_cache().tier_stats();
    (stats.iter().map(|(_, s)| s.hits).sum(), stats.iter().map(|(_, s)| s.misses).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_are_keyed_by_the_rows_they_return() {
    let db = "strata_keys_returning";
    fresh_database(db).await;
    admin(db).await.batch_execute(SCHEMA).await.unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    let first = "SELECT v FROM items WHERE id = 1";
    let next = |id: i32| format!("SELECT count(*), max(v) FROM items WHERE id = {id}");
    warm(&c, &cache, first).await;

    // Simple protocol: the serial key comes back in the row; the empty read of that key misses.
    warm(&c, &cache, &next(4)).await;
    c.simple_query("INSERT INTO items (v) VALUES (40) RETURNING id").await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(4)).await, "1|40");
    still_hits(&c, &cache, first).await;

    // Extended protocol with a Describe (Parse/Bind/Describe/Execute/Sync, as query_typed sends).
    warm(&c, &cache, &next(5)).await;
    let rows = c
        .query_typed("INSERT INTO items (v) VALUES ($1) RETURNING id, v", &[(&50i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 5);
    assert_eq!(fresh(&c, &direct, &next(5)).await, "1|50");
    still_hits(&c, &cache, first).await;

    // Deletes and updates return their rows' keys too.
    warm(&c, &cache, &next(4)).await;
    c.simple_query("DELETE FROM items WHERE v = 40 RETURNING id").await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(4)).await, "0|<null>");
    still_hits(&c, &cache, first).await;
    warm(&c, &cache, &next(5)).await;
    c.simple_query("UPDATE items SET v = v + 1 WHERE v = 50 RETURNING *").await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(5)).await, "1|51");
    still_hits(&c, &cache, first).await;

    // A field named like the key that is not the key: keys unknown, every read misses.
    warm(&c, &cache, &next(6)).await;
    c.simple_query("INSERT INTO items (v) VALUES (6) RETURNING v AS id").await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(6)).await, "1|6");
    assert_eq!(read(&c, &cache, first).await, Outcome::Miss, "an alias must not pass for the key");

    // Without RETURNING, or without a Describe (a prepared statement executed again), the keys
    // are unknown: every read of the table misses, none is stale.
    warm(&c, &cache, first).await;
    warm(&c, &cache, &next(7)).await;
    c.batch_execute("INSERT INTO items (v) VALUES (7)").await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(7)).await, "1|7");
    assert_eq!(read(&c, &cache, first).await, Outcome::Miss);
    warm(&c, &cache, first).await;
    warm(&c, &cache, &next(8)).await;
    let insert = c.prepare("INSERT INTO items (v) VALUES ($1) RETURNING id").await.unwrap();
    c.query(&insert, &[&8i32]).await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(8)).await, "1|8");
    assert_eq!(read(&c, &cache, first).await, Outcome::Miss);

    // Inside a transaction: the returned keys are kept until COMMIT.
    warm(&c, &cache, first).await;
    warm(&c, &cache, &next(9)).await;
    c.batch_execute("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO items (v) VALUES (9) RETURNING id").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fresh(&c, &direct, &next(9)).await, "1|9");
    still_hits(&c, &cache, first).await;
    // Counted: the keyed and the table-wide writes, the key-level reads.
    for what in ["write_keyed", "write_wide", "read_keyed"] {
        assert!(key_level(&cache, what) > 0.0, "strata_key_level_total{{what={what:?}}}");
    }
}
