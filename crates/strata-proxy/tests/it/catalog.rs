//! Catalog-aware invalidation: writes whose SQL text does not show everything they change (views,
//! materialized views, cascading foreign keys, triggers, rules, partitions, inheritance, new DDL)
//! never leave a stale cached result, and writes stay precise when the catalog is known.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, CacheSettings, CatalogConfig, Invalidation, StrataCache};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::*;

/// Long enough that only a refresh the proxy triggers itself can explain a fresh map.
const NO_PERIODIC_REFRESH: Duration = Duration::from_secs(3600);

fn catalog(db: &str, user: &str) -> Invalidation {
    let pg = pg();
    let config = CatalogConfig::builder()
        .with_upstream(pg.host(), pg.port())
        .with_user(user)
        .with_database(db)
        .with_refresh_interval(NO_PERIODIC_REFRESH)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("catalog config");
    Invalidation::Catalog(config)
}

/// A caching proxy with the given invalidation mode, and its cache.
pub(crate) async fn proxy_with(invalidation: Invalidation) -> (TestProxy, Arc<StrataCache>) {
    let settings = CacheSettings::default();
    let query_cache = build_query_cache(&settings).await.expect("cache");
    let cache = Arc::new(
        StrataCache::builder(query_cache).with_invalidation(invalidation).build().expect("strata cache"),
    );
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    (proxy, cache)
}

/// A caching proxy following the catalog of `db` as `postgres`, with the catalog read.
pub(crate) async fn catalog_proxy(db: &str) -> (TestProxy, Arc<StrataCache>, Client, Client) {
    let (proxy, cache) = proxy_with(catalog(db, "postgres")).await;
    assert!(cache.wait_for_catalog(Duration::from_secs(30)).await, "the catalog of {db} was not read");
    let c = connect(proxy.port(), "postgres", db, None).await.expect("connect through the proxy");
    (proxy, cache, c, admin(db).await)
}

fn counters(cache: &StrataCache) -> (u64, u64) {
    let stats = cache.query_cache().tier_stats();
    (stats.iter().map(|(_, s)| s.hits).sum(), stats.iter().map(|(_, s)| s.misses).sum())
}

/// The first row's columns joined by `|` (simple protocol).
pub(crate) async fn value(c: &Client, sql: &str) -> String {
    for message in c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = message {
            let columns: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("<null>")).collect();
            return columns.join("|");
        }
    }
    panic!("no row for {sql}")
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
}

/// Reads through the proxy and says whether the cache answered. The relay skips the lookup of a
/// request that arrives while it is still finishing the previous response (neither a hit nor a
/// miss is counted); such a read is repeated.
pub(crate) async fn read(c: &Client, cache: &StrataCache, sql: &str) -> Outcome {
    for _ in 0..10 {
        let (hits, misses) = counters(cache);
        let _ = value(c, sql).await;
        let (hits_now, misses_now) = counters(cache);
        if hits_now > hits {
            return Outcome::Hit;
        }
        if misses_now > misses {
            return Outcome::Miss;
        }
    }
    panic!("the cache was never consulted for {sql}")
}

/// Reads until the cache serves the statement: it is cached from now on.
pub(crate) async fn warm(c: &Client, cache: &StrataCache, sql: &str) {
    for _ in 0..3 {
        if read(c, cache, sql).await == Outcome::Hit {
            return;
        }
    }
    panic!("{sql} is never served from cache");
}

/// Through the proxy and straight from PostgreSQL, the same answer (nothing stale).
pub(crate) async fn fresh(c: &Client, direct: &Client, sql: &str) -> String {
    let through = value(c, sql).await;
    assert_eq!(through, value(direct, sql).await, "stale result through the proxy for {sql}");
    through
}

/// A read of an unrelated table is still a hit: the write invalidated precisely.
pub(crate) async fn still_hits(c: &Client, cache: &StrataCache, sql: &str) {
    assert_eq!(read(c, cache, sql).await, Outcome::Hit, "{sql} should have survived an unrelated write");
}

const VIEWS: &str = "
CREATE TABLE base (id int PRIMARY KEY, v int);
CREATE TABLE other (id int);
INSERT INTO base VALUES (1, 10), (2, 20);
INSERT INTO other VALUES (1);
CREATE VIEW v_base AS SELECT id, v FROM base;
CREATE VIEW v_top AS SELECT sum(v) AS total FROM v_base;
CREATE VIEW \"Mixed Case\" AS SELECT v FROM base WHERE id = 1;
CREATE MATERIALIZED VIEW mv AS SELECT sum(v) AS total FROM base;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_reads_are_fresh_after_a_write_to_their_base_table() {
    let db = "strata_cat_view";
    fresh_database(db).await;
    admin(db).await.batch_execute(VIEWS).await.unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    for sql in [
        "SELECT v FROM v_base WHERE id = 1",
        "SELECT total FROM v_top",
        "SELECT v FROM \"Mixed Case\"",
        "SELECT count(*) FROM other",
    ] {
        warm(&c, &cache, sql).await;
    }
    c.batch_execute("UPDATE base SET v = 11 WHERE id = 1").await.unwrap();
    // Names are matched as PostgreSQL stores them (quoted identifiers keep their case).
    assert_eq!(fresh(&c, &direct, "SELECT v FROM \"Mixed Case\"").await, "11");
    assert_eq!(fresh(&c, &direct, "SELECT v FROM v_base WHERE id = 1").await, "11");
    // Through a view of a view.
    assert_eq!(fresh(&c, &direct, "SELECT total FROM v_top").await, "31");
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;

    // A view calling a user function may read any table through it: a write anywhere counts.
    direct
        .batch_execute(
            "CREATE FUNCTION other_count() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM other';
             CREATE VIEW v_fn AS SELECT id, other_count() AS n FROM base WHERE id = 1;",
        )
        .await
        .unwrap();
    assert!(cache.refresh_catalog(Duration::from_secs(30)).await, "catalog refresh");
    warm(&c, &cache, "SELECT n FROM v_fn").await;
    c.batch_execute("INSERT INTO other VALUES (2)").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT n FROM v_fn").await, "2");

    // A write through an auto-updatable view reaches its base table (extended protocol).
    warm(&c, &cache, "SELECT count(*) FROM other").await;
    warm(&c, &cache, "SELECT v FROM base WHERE id = 2").await;
    c.execute("UPDATE v_base SET v = $1 WHERE id = 2", &[&21i32]).await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT v FROM base WHERE id = 2").await, "21");
    assert_eq!(fresh(&c, &direct, "SELECT total FROM v_top").await, "32");
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_materialized_view_changes_only_when_refreshed() {
    let db = "strata_cat_matview";
    fresh_database(db).await;
    admin(db).await.batch_execute(VIEWS).await.unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    warm(&c, &cache, "SELECT total FROM mv").await;
    c.batch_execute("UPDATE base SET v = v + 100").await.unwrap();
    // PostgreSQL still shows the old snapshot, and so does the proxy.
    assert_eq!(fresh(&c, &direct, "SELECT total FROM mv").await, "30");
    c.batch_execute("REFRESH MATERIALIZED VIEW mv").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT total FROM mv").await, "230");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_foreign_keys_refresh_the_referencing_tables() {
    let db = "strata_cat_cascade";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (pid int REFERENCES parent ON DELETE CASCADE);
             CREATE TABLE child_null (pid int REFERENCES parent ON DELETE SET NULL);
             CREATE TABLE child_upd (pid int REFERENCES parent ON UPDATE CASCADE);
             CREATE TABLE child_plain (pid int REFERENCES parent);
             CREATE TABLE other (id int);
             INSERT INTO parent VALUES (1), (2), (3), (4);
             INSERT INTO child VALUES (1), (1), (2);
             INSERT INTO child_null VALUES (1), (2);
             INSERT INTO child_upd VALUES (4);
             INSERT INTO child_plain VALUES (3);",
        )
        .await
        .unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    for sql in [
        "SELECT count(*) FROM child",
        "SELECT count(pid) FROM child_null",
        "SELECT pid FROM child_upd",
        "SELECT count(*) FROM other",
    ] {
        warm(&c, &cache, sql).await;
    }
    c.batch_execute("DELETE FROM parent WHERE id = 1").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM child").await, "1");
    assert_eq!(fresh(&c, &direct, "SELECT count(pid) FROM child_null").await, "1");
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;
    c.execute("UPDATE parent SET id = $1 WHERE id = 4", &[&40i32]).await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT pid FROM child_upd").await, "40");

    // TRUNCATE ... CASCADE empties referencing tables whatever their actions.
    warm(&c, &cache, "SELECT count(*) FROM child_plain").await;
    c.batch_execute("TRUNCATE parent CASCADE").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM child_plain").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_and_rules_invalidate_what_they_write() {
    let db = "strata_cat_trigger";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE t1 (x int);
             CREATE TABLE ruled (x int);
             CREATE TABLE audit (x int);
             CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN INSERT INTO audit VALUES (NEW.x); RETURN NEW; END$$;
             CREATE TRIGGER t1_audit AFTER INSERT ON t1 FOR EACH ROW EXECUTE FUNCTION audit_it();
             CREATE RULE ruled_audit AS ON INSERT TO ruled DO ALSO INSERT INTO audit VALUES (NEW.x * 100);",
        )
        .await
        .unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    let audit = "SELECT count(*), coalesce(sum(x), 0) FROM audit";
    warm(&c, &cache, audit).await;
    c.batch_execute("INSERT INTO t1 VALUES (1)").await.unwrap();
    assert_eq!(fresh(&c, &direct, audit).await, "1|1");
    warm(&c, &cache, audit).await;
    c.execute("INSERT INTO t1 VALUES ($1)", &[&2i32]).await.unwrap();
    assert_eq!(fresh(&c, &direct, audit).await, "2|3");
    warm(&c, &cache, audit).await;
    c.batch_execute("INSERT INTO ruled VALUES (3)").await.unwrap();
    assert_eq!(fresh(&c, &direct, audit).await, "3|303");
    // In a transaction the invalidation waits for COMMIT, and still covers the trigger's write.
    warm(&c, &cache, audit).await;
    c.batch_execute("BEGIN; INSERT INTO t1 VALUES (4); COMMIT").await.unwrap();
    assert_eq!(fresh(&c, &direct, audit).await, "4|307");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_and_inheritance_children_and_parents_stay_fresh() {
    let db = "strata_cat_partitions";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE m (k int, v int) PARTITION BY RANGE (k);
             CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (10);
             CREATE TABLE m_high PARTITION OF m FOR VALUES FROM (10) TO (20);
             INSERT INTO m VALUES (1, 1), (11, 1);
             CREATE TABLE ip (x int);
             CREATE TABLE ic (y int) INHERITS (ip);
             INSERT INTO ic VALUES (1, 1);
             CREATE TABLE other (id int);",
        )
        .await
        .unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    let (low, parent) = ("SELECT count(*), sum(v) FROM m_low", "SELECT count(*), sum(v) FROM m");
    warm(&c, &cache, low).await;
    warm(&c, &cache, parent).await;
    warm(&c, &cache, "SELECT count(*) FROM other").await;
    // Through the parent: the partition's cached result goes.
    c.batch_execute("INSERT INTO m VALUES (2, 5)").await.unwrap();
    assert_eq!(fresh(&c, &direct, low).await, "2|6");
    assert_eq!(fresh(&c, &direct, parent).await, "3|7");
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;
    // Through a partition: the parent's cached result goes.
    warm(&c, &cache, low).await;
    warm(&c, &cache, parent).await;
    c.batch_execute("UPDATE m_low SET v = v + 1").await.unwrap();
    assert_eq!(fresh(&c, &direct, parent).await, "3|9");
    warm(&c, &cache, parent).await;
    c.execute("INSERT INTO m_high VALUES ($1, 1)", &[&12i32]).await.unwrap();
    assert_eq!(fresh(&c, &direct, parent).await, "4|10");
    // UPDATE through the parent reaches a partition.
    warm(&c, &cache, "SELECT sum(v) FROM m_high").await;
    c.batch_execute("UPDATE m SET v = 7 WHERE k >= 10").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT sum(v) FROM m_high").await, "14");

    // Classic inheritance, both ways.
    warm(&c, &cache, "SELECT count(*) FROM ip").await;
    c.batch_execute("INSERT INTO ic VALUES (2, 2)").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM ip").await, "2");
    warm(&c, &cache, "SELECT count(*) FROM ic").await;
    c.batch_execute("DELETE FROM ip WHERE x = 1").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM ic").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_through_the_proxy_is_followed_without_waiting_for_the_periodic_refresh() {
    let db = "strata_cat_ddl";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE base (id int PRIMARY KEY, v int); INSERT INTO base VALUES (1, 10);
             CREATE TABLE other (id int);",
        )
        .await
        .unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    c.batch_execute("CREATE VIEW nv AS SELECT sum(v) AS total FROM base").await.unwrap();
    // The periodic refresh is an hour away: only the refresh the DDL triggered makes it current.
    assert!(cache.wait_for_catalog(Duration::from_secs(30)).await, "the DDL did not trigger a catalog read");
    // The DDL also bumped the shared schema epoch, which this proxy's own watcher sees within
    // 200 ms and answers with one more read; a write during that read invalidates everything
    // (the map may be stale), so let it pass before checking that writes are precise.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(cache.wait_for_catalog(Duration::from_secs(30)).await, "the epoch's catalog read did not end");
    warm(&c, &cache, "SELECT total FROM nv").await;
    warm(&c, &cache, "SELECT count(*) FROM other").await;
    c.batch_execute("UPDATE base SET v = 12").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT total FROM nv").await, "12");
    // Precise, not "invalidate everything": the map knows the new view.
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;

    // A trigger added in a transaction is followed from its COMMIT on.
    c.batch_execute(
        "BEGIN;
         CREATE TABLE audit (x int);
         CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN INSERT INTO audit VALUES (NEW.v); RETURN NEW; END$$;
         CREATE TRIGGER base_audit AFTER UPDATE ON base FOR EACH ROW EXECUTE FUNCTION audit_it();
         COMMIT;",
    )
    .await
    .unwrap();
    assert!(
        cache.wait_for_catalog(Duration::from_secs(30)).await,
        "the COMMIT did not trigger a catalog read"
    );
    warm(&c, &cache, "SELECT count(*) FROM audit").await;
    c.batch_execute("UPDATE base SET v = 13").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT count(*) FROM audit").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_is_read_when_a_client_first_uses_it_and_refreshed_periodically() {
    let db = "strata_cat_observed";
    fresh_database(db).await;
    admin(db).await.batch_execute(COMBINED).await.unwrap();
    let pg = pg();
    // No database listed: the first session on `db` starts its read. A short period picks up
    // DDL that bypassed the proxy.
    let config = CatalogConfig::builder()
        .with_upstream(pg.host(), pg.port())
        .with_user("postgres")
        .with_refresh_interval(Duration::from_millis(200))
        .build()
        .expect("catalog config");
    let (proxy, cache) = proxy_with(Invalidation::Catalog(config)).await;
    let (c, direct) = (connect(proxy.port(), "postgres", db, None).await.unwrap(), admin(db).await);
    let _ = value(&c, "SELECT 1").await;
    assert!(cache.wait_for_catalog(Duration::from_secs(30)).await, "the first session did not start a read");
    warm(&c, &cache, "SELECT v FROM v_base").await;
    warm(&c, &cache, "SELECT count(*) FROM other").await;
    c.batch_execute("UPDATE base SET v = 11").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT v FROM v_base").await, "11");
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;

    // A view created straight on PostgreSQL shows up with the next periodic read.
    direct.batch_execute("CREATE VIEW v_direct AS SELECT sum(v) AS total FROM base").await.unwrap();
    let scope = strata::KeyScope::new(db, "postgres", strata::SettingsDigest::of([("x", "y")]));
    let explained =
        || cache.query_cache().explain(&strata::Request::new(&scope, "SELECT total FROM v_direct")).tables;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !explained().iter().any(|(t, _)| t == "base") {
        assert!(tokio::time::Instant::now() < deadline, "the periodic refresh never learned v_direct");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warm(&c, &cache, "SELECT total FROM v_direct").await;
    c.batch_execute("UPDATE base SET v = 12").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT total FROM v_direct").await, "12");
}

/// The view-and-trigger schema the no-catalog tests use.
const COMBINED: &str = "
CREATE TABLE base (id int PRIMARY KEY, v int); INSERT INTO base VALUES (1, 10);
CREATE VIEW v_base AS SELECT id, v FROM base;
CREATE TABLE other (id int);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catalog_every_write_invalidates_everything() {
    let db = "strata_cat_none";
    fresh_database(db).await;
    admin(db).await.batch_execute(COMBINED).await.unwrap();
    // The default of `StrataCache::new` and of the binary without a catalog user.
    let (proxy, cache) = proxy_with(Invalidation::Everything).await;
    let (c, direct) = (connect(proxy.port(), "postgres", db, None).await.unwrap(), admin(db).await);
    warm(&c, &cache, "SELECT v FROM v_base").await;
    warm(&c, &cache, "SELECT count(*) FROM other").await;
    c.batch_execute("UPDATE base SET v = 11").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT v FROM v_base").await, "11");
    assert_eq!(
        read(&c, &cache, "SELECT count(*) FROM other").await,
        Outcome::Miss,
        "coarse: the unrelated result went too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_catalog_falls_back_to_invalidating_everything() {
    let db = "strata_cat_unreadable";
    fresh_database(db).await;
    admin(db).await.batch_execute(COMBINED).await.unwrap();
    let (proxy, cache) = proxy_with(catalog(db, "strata_no_such_role")).await;
    assert!(
        !cache.wait_for_catalog(Duration::from_millis(500)).await,
        "a missing role cannot read the catalog"
    );
    let (c, direct) = (connect(proxy.port(), "postgres", db, None).await.unwrap(), admin(db).await);
    warm(&c, &cache, "SELECT v FROM v_base").await;
    c.batch_execute("UPDATE base SET v = 11").await.unwrap();
    assert_eq!(fresh(&c, &direct, "SELECT v FROM v_base").await, "11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_text_invalidation_is_stale_for_views_as_documented() {
    // What the opt-in `sql-text` mode gives up, shown on the same schema: the test setup does
    // detect a stale answer.
    let db = "strata_cat_sqltext";
    fresh_database(db).await;
    admin(db).await.batch_execute(COMBINED).await.unwrap();
    let (proxy, cache) = proxy_with(Invalidation::SqlText).await;
    let (c, direct) = (connect(proxy.port(), "postgres", db, None).await.unwrap(), admin(db).await);
    warm(&c, &cache, "SELECT v FROM v_base").await;
    c.batch_execute("UPDATE base SET v = 11").await.unwrap();
    assert_eq!(value(&c, "SELECT v FROM v_base").await, "10", "sql-text mode serves the view's old answer");
    assert_eq!(value(&direct, "SELECT v FROM v_base").await, "11");
}

const SEQUENCES: &str = "
CREATE SEQUENCE s;
CREATE TABLE serial_t (id serial PRIMARY KEY, v int);
CREATE VIEW s_view AS SELECT last_value FROM s;
CREATE TABLE other (id int);
INSERT INTO other VALUES (1);
";

/// Reads the statement through the proxy three times, each the same as PostgreSQL's answer.
async fn fresh_thrice(c: &Client, direct: &Client, sql: &str) {
    for _ in 0..3 {
        fresh(c, direct, sql).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_changes_without_a_write_naming_it_so_its_reads_are_never_cached() {
    let db = "strata_cat_sequence";
    fresh_database(db).await;
    admin(db).await.batch_execute(SEQUENCES).await.unwrap();
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    warm(&c, &cache, "SELECT count(*) FROM other").await;
    let reads = [
        "SELECT last_value, is_called FROM s",
        "SELECT last_value FROM public.s",
        "SELECT * FROM s_view",
        "SELECT last_value FROM serial_t_id_seq",
    ];
    // Through the proxy, straight on PostgreSQL (which no stream reports), and through a column
    // default on an insert.
    let writes = [
        (&c, "SELECT nextval('s')"),
        (&direct, "SELECT nextval('s')"),
        (&c, "SELECT setval('public.s', 100)"),
        (&c, "INSERT INTO serial_t (v) VALUES (1)"),
        (&direct, "INSERT INTO serial_t (v) VALUES (2)"),
    ];
    for (client, write) in writes {
        for sql in reads {
            fresh_thrice(&c, &direct, sql).await;
        }
        client.batch_execute(write).await.unwrap();
        for sql in reads {
            fresh(&c, &direct, sql).await;
        }
    }
    // Precise: a nextval through the proxy changes its sequence, not every cached result.
    still_hits(&c, &cache, "SELECT count(*) FROM other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catalog_nextval_and_setval_through_the_proxy_are_writes() {
    let db = "strata_cat_sequence_none";
    fresh_database(db).await;
    admin(db).await.batch_execute(SEQUENCES).await.unwrap();
    for invalidation in [Invalidation::Everything, Invalidation::SqlText] {
        let (proxy, cache) = proxy_with(invalidation).await;
        let (c, direct) = (connect(proxy.port(), "postgres", db, None).await.unwrap(), admin(db).await);
        let read = "SELECT last_value, is_called FROM s";
        for write in ["SELECT nextval('s')", "SELECT pg_catalog.setval('S'::regclass, 7, false)"] {
            warm(&c, &cache, read).await;
            c.batch_execute(write).await.unwrap();
            fresh(&c, &direct, read).await;
        }
        // A sequence named by a parameter may be any sequence.
        warm(&c, &cache, read).await;
        c.query_one("SELECT nextval($1::text::regclass)", &[&"s"]).await.unwrap();
        fresh(&c, &direct, read).await;
    }
}

/// User functions overloading built-in names: a volatile `upper(integer)` counting its calls, a
/// `lower(integer)` that writes `t`, and an immutable `length(integer)`.
const OVERLOADS: &str = "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10);
     CREATE SEQUENCE calls;
     CREATE FUNCTION public.upper(integer) RETURNS text LANGUAGE sql VOLATILE
       AS $$ SELECT 'u' || nextval('calls') $$;
     CREATE FUNCTION public.lower(integer) RETURNS int LANGUAGE sql VOLATILE
       AS $$ UPDATE t SET v = v + $1 WHERE id = 1 RETURNING v $$;
     CREATE FUNCTION public.length(integer) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;";

/// A user function that overloads a built-in's name for other argument types is what the call
/// runs, whatever the `search_path` (`upper(5)` calls `public.upper(integer)`): with a catalog,
/// calls of that name are never cached and count as writes of unknown effect. Before, the
/// analysis took the call for the built-in: a volatile overload was answered from the cache, and
/// one that writes left stale rows. An immutable overload (as `citext` has) changes nothing. A
/// user-defined operator (`1 ### 2`) was cached the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_overload_of_a_builtin_name_is_user_code() {
    let db = "strata_catalog_overloads";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(&format!(
            "{OVERLOADS}
                 CREATE FUNCTION next_call(int, int) RETURNS bigint LANGUAGE sql VOLATILE
                   AS $$ SELECT nextval('calls') $$;
                 CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = next_call);"
        ))
        .await
        .expect("schema");
    let (_proxy, cache, c, direct) = catalog_proxy(db).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(value(&c, "SELECT upper(5)").await);
    }
    assert_eq!(seen, ["u1", "u2", "u3"], "a volatile overload was answered from the cache");
    let read_t = "SELECT v FROM t WHERE id = 1";
    warm(&c, &cache, read_t).await;
    assert_eq!(value(&c, "SELECT lower(5)").await, "15");
    assert_eq!(fresh(&c, &direct, read_t).await, "15", "a write by an overload left the old row cached");
    // An immutable overload is what a built-in is: cached as usual.
    warm(&c, &cache, "SELECT length(7)").await;
    // An operator PostgreSQL does not ship calls a user function too (catalog or not).
    let first = value(&c, "SELECT 1 ### 2").await;
    assert_ne!(value(&c, "SELECT 1 ### 2").await, first, "a user operator was answered from the cache");
    // So does a user operator that reuses a shipped name for other argument types (`5 = 'a'`
    // runs it), once the catalog shows it; then statements naming `=` are not cached.
    direct.batch_execute(USER_EQUALS).await.unwrap();
    assert!(cache.refresh_catalog(Duration::from_secs(30)).await, "the catalog was not read again");
    let first = value(&c, "SELECT 5 = 'a'::text").await;
    assert_ne!(value(&c, "SELECT 5 = 'a'::text").await, first, "a user `=` was answered from the cache");
}

/// A user `=` for `int = text`, which no built-in has, running a volatile function: consecutive
/// calls alternate between true and false.
const USER_EQUALS: &str = "CREATE FUNCTION eq_call(int, text) RETURNS bool LANGUAGE sql VOLATILE
       AS $$ SELECT nextval('calls') % 2 = 0 $$;
     CREATE OPERATOR = (LEFTARG = int, RIGHTARG = text, FUNCTION = eq_call);";

/// Without a catalog, the same overloads are found by reading `pg_proc` with the session's state
/// (believed for 30 s, forgotten by DDL through the proxy): a call of a name a non-immutable user
/// function has is never looked up and counts as a write of unknown effect, in a transaction
/// block too. Before, both modes cached the volatile overload (u1, u1, u1) and kept the row the
/// writing overload changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catalog_a_user_overload_of_a_builtin_name_is_user_code() {
    let db = "strata_cat_overloads_none";
    fresh_database(db).await;
    admin(db).await.batch_execute(OVERLOADS).await.expect("schema");
    for (round, invalidation) in [Invalidation::Everything, Invalidation::SqlText].into_iter().enumerate() {
        let (proxy, cache) = proxy_with(invalidation).await;
        let (c, direct) = (connect(proxy.port(), "postgres", db, None).await.unwrap(), admin(db).await);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(value(&c, "SELECT upper(5)").await);
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "a volatile overload was answered from the cache: {seen:?}");
        let read_t = "SELECT v FROM t WHERE id = 1";
        warm(&c, &cache, read_t).await;
        value(&c, "SELECT lower(5)").await;
        fresh(&c, &direct, read_t).await;
        // Inside a transaction block, where nothing is looked up.
        warm(&c, &cache, read_t).await;
        c.batch_execute("BEGIN; SELECT lower(5); COMMIT").await.unwrap();
        fresh(&c, &direct, read_t).await;
        // An immutable overload is what a built-in is: cached as usual.
        warm(&c, &cache, "SELECT length(7)").await;
        // An overload made through the proxy is seen at once.
        c.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION public.reverse(integer) RETURNS text LANGUAGE sql VOLATILE \
               AS $$ SELECT 'r{round}-' || nextval('calls') $$"
        ))
        .await
        .unwrap();
        let first = value(&c, "SELECT reverse(5)").await;
        assert_ne!(
            value(&c, "SELECT reverse(5)").await,
            first,
            "an overload made through the proxy was cached"
        );
        // A user operator reusing a shipped name, made through the proxy (and dropped, since
        // while it exists no statement naming `=` is cached).
        c.batch_execute(USER_EQUALS).await.unwrap();
        let first = value(&c, "SELECT 5 = 'a'::text").await;
        assert_ne!(value(&c, "SELECT 5 = 'a'::text").await, first, "a user `=` was answered from the cache");
        c.batch_execute("DROP OPERATOR = (int, text); DROP FUNCTION eq_call(int, text)").await.unwrap();
    }
}
