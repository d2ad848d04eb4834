//! The admin console (`psql -d strata` as an admin user) and `EXPLAIN LAST STATEMENT`, with psql
//! and tokio-postgres against a running proxy: each command, a non-admin refused, the extended
//! protocol refused clearly, and ordinary sessions untouched.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::catalog::{read, warm, Outcome};
use crate::differential::psql;
use crate::support::*;

/// Rows of a simple query as `column=value` maps, in order.
async fn rows(c: &Client, sql: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = m {
            out.push(
                (0..row.len())
                    .map(|i| (row.columns()[i].name().to_owned(), row.get(i).unwrap_or("<null>").to_owned()))
                    .collect(),
            );
        }
    }
    out
}

fn field<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter().find(|(k, _)| k == name).map_or_else(|| panic!("no column {name} in {row:?}"), |(_, v)| v)
}

/// The value of a `property`/`setting` row.
fn property<'a>(rows: &'a [Vec<(String, String)>], name: &str) -> &'a str {
    rows.iter()
        .find(|r| r[0].1 == name)
        .map_or_else(|| panic!("no row {name} in {rows:?}"), |r| r[1].1.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_every_command_and_only_to_admins() {
    let db = "strata_console";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v int);
             INSERT INTO items SELECT g, g FROM generate_series(1, 10) g;
             DROP ROLE IF EXISTS console_nonadmin; CREATE ROLE console_nonadmin LOGIN;",
        )
        .await
        .unwrap();
    let config = std::env::temp_dir().join(format!("strata-console-{}.toml", std::process::id()));
    std::fs::write(&config, "[cache]\ndefault_ttl_ms = 60000\n").unwrap();
    let settings = CacheSettings::default();
    let cache = Arc::new(StrataCache::new(build_query_cache(&settings).await.unwrap()).unwrap());
    let proxy = start_proxy(|b| {
        b.with_cache(cache.clone())
            .with_admin_users(vec!["postgres".to_owned(), "console_ghost".to_owned()])
            .with_config_file(config.clone())
    })
    .await;
    let app = connect(proxy.port(), "postgres", db, None).await.unwrap();
    let console = connect(proxy.port(), "postgres", "strata", None).await.expect("the console");

    // An ordinary session: a miss, a hit, a write; then its last statement.
    let read_one = "SELECT v FROM items WHERE id = 1";
    warm(&app, &cache, read_one).await;
    let last = rows(&app, "EXPLAIN LAST STATEMENT").await;
    assert_eq!((field(&last[0], "statement"), field(&last[0], "outcome")), (read_one, "hit"), "{last:?}");
    app.batch_execute("UPDATE items SET v = 0 WHERE id = 2").await.unwrap();
    let last = rows(&app, "explain last statement;").await;
    assert_eq!(field(&last[0], "outcome"), "bypass", "{last:?}");
    app.batch_execute("BEGIN; SELECT 1").await.unwrap();
    app.batch_execute("SELECT v FROM items WHERE id = 3").await.unwrap();
    let last = rows(&app, "EXPLAIN LAST STATEMENT").await;
    assert_eq!(field(&last[0], "outcome"), "not looked up", "{last:?}");
    app.batch_execute("COMMIT").await.unwrap();

    let help = rows(&console, "SHOW HELP").await;
    assert!(help.len() >= 7, "{help:?}");
    let queries = rows(&console, "show queries;").await;
    let q =
        queries.iter().find(|r| field(r, "query").contains("items")).unwrap_or_else(|| panic!("{queries:?}"));
    assert!(field(q, "calls").parse::<u64>().unwrap() >= 2, "{q:?}");
    assert!(field(q, "hits_by_tier").contains("l1="), "{q:?}");
    assert_eq!(field(q, "fills"), "1", "{q:?}");
    let tables = rows(&console, "SHOW TABLES").await;
    assert!(tables.iter().any(|r| field(r, "table") == "items"), "{tables:?}");
    // Without a catalog user a write invalidates everything: counted on `*`.
    let all = tables.iter().find(|r| field(r, "table") == "*").unwrap_or_else(|| panic!("{tables:?}"));
    assert!(field(all, "invalidations").parse::<u64>().unwrap() >= 1, "{all:?}");

    // EXPLAIN under the scope the ordinary session verified: cached now, in l1.
    warm(&app, &cache, read_one).await;
    let explain = rows(&console, &format!("EXPLAIN FOR USER postgres DATABASE {db} {read_one}")).await;
    assert_eq!(property(&explain, "cacheable"), "yes", "{explain:?}");
    assert_eq!(property(&explain, "cached now (simple query)"), "l1", "{explain:?}");
    assert!(property(&explain, "depends on").contains("items"), "{explain:?}");
    let explain = rows(&console, "EXPLAIN SELECT now()").await;
    assert!(property(&explain, "cacheable").starts_with("no:"), "{explain:?}");

    // FLUSH of one table, then of everything.
    console.simple_query("FLUSH public.items").await.unwrap();
    assert_eq!(read(&app, &cache, read_one).await, Outcome::Miss);
    warm(&app, &cache, read_one).await;
    console.simple_query("FLUSH").await.unwrap();
    assert_eq!(read(&app, &cache, read_one).await, Outcome::Miss);

    // RELOAD reads the file again: a table excluded there is no longer cached.
    std::fs::write(&config, "[cache]\ndefault_ttl_ms = 5000\n[cache.tables.items]\ncache = false\n").unwrap();
    let reloaded = rows(&console, "RELOAD").await;
    assert_eq!(property(&reloaded, "cache.excluded_tables"), "items", "{reloaded:?}");
    let explain = rows(&console, &format!("EXPLAIN {read_one}")).await;
    assert!(property(&explain, "cacheable").contains("excluded"), "{explain:?}");
    let config_rows = rows(&console, "SHOW CONFIG").await;
    assert_eq!(property(&config_rows, "cache.default_ttl_ms"), "5000");
    assert_eq!(property(&config_rows, "admin_users"), "postgres,console_ghost");

    // Errors: an unknown command, the extended protocol; the console goes on after both.
    let err = console.simple_query("SHOW POOLS").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err}");
    let err = console.query("SHOW QUERIES", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    assert!(!rows(&console, "SHOW TABLES").await.is_empty());

    // psql, as people use it.
    let out = psql(proxy.port(), "strata", "SHOW QUERIES;\nSHOW TABLES;\n").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("time_saved_ms") && stdout.contains("items"), "{stdout}");

    // Not an admin: refused before any password is asked for. An admin the server does not know:
    // refused by the server.
    let err = connect(proxy.port(), "console_nonadmin", "strata", None).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    let err = connect(proxy.port(), "console_ghost", "strata", None).await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("console_ghost"), "{err:?}");

    // The ordinary session never noticed.
    assert_eq!(rows(&app, "SELECT v FROM items WHERE id = 5").await[0][0].1, "5");
    let _ = std::fs::remove_file(&config);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_users_strata_is_an_ordinary_database_name() {
    let proxy = start_proxy(|b| b).await;
    let err = connect(proxy.port(), "postgres", "strata", None).await.unwrap_err();
    // PostgreSQL itself answers: there is no such database.
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
}
