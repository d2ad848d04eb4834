//! psycopg 3 as applications use it (server-side parameters, automatic prepares, binary results,
//! named cursors, COPY, pipeline mode, transactions, isolation levels, session state, roles,
//! row-level security, encodings, cancel, notifications), through a caching proxy and checked
//! against PostgreSQL (session mode with and without a catalog, and transaction pooling):
//! `psycopg_scenarios.py`, run with the psycopg `cargo xtask test` installs.

use std::path::Path;

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, AuthType, CacheSettings, Invalidation, PoolMode, StrataCache};

use crate::{
    catalog::{catalog_proxy, proxy_with},
    support::*,
};

/// `python3 psycopg_scenarios.py <args>` with the harness's psycopg; panics with its output
/// unless it succeeds.
async fn scenarios(args: &[&str]) {
    let python = std::env::var("STRATA_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PYTHON is unset: run `cargo xtask test`"));
    let path = std::env::var("STRATA_TEST_PYTHONPATH")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PYTHONPATH is unset: run `cargo xtask test`"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/psycopg_scenarios.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args(args)
        .env("PYTHONPATH", path)
        .output()
        .await
        .expect("python3 runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "psycopg_scenarios.py {}:\n{text}", args[0]);
    println!("{text}");
}

fn direct_dsn(db: &str) -> String {
    let pg = pg();
    format!("host={} port={} user=postgres dbname={db}", pg.host(), pg.port())
}

fn proxy_dsn(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname={db}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_applications_get_postgres_answers_with_a_catalog() {
    let db = "strata_psycopg_catalog";
    fresh_database(db).await;
    scenarios(&["setup", &direct_dsn(db)]).await;
    let (proxy, _cache, _c, _direct) = catalog_proxy(db).await;
    scenarios(&["run", &proxy_dsn(proxy.port(), db), &direct_dsn(db)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_applications_get_postgres_answers_without_a_catalog() {
    let db = "strata_psycopg_everything";
    fresh_database(db).await;
    scenarios(&["setup", &direct_dsn(db)]).await;
    let (proxy, _cache) = proxy_with(Invalidation::Everything).await;
    scenarios(&["run", &proxy_dsn(proxy.port(), db), &direct_dsn(db)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_applications_get_postgres_answers_through_transaction_pooling() {
    let db = "strata_psycopg_pooled";
    fresh_database(db).await;
    scenarios(&["setup", &direct_dsn(db)]).await;
    let settings = CacheSettings::default();
    let cache =
        Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata cache"));
    // Fewer connections than the scenarios' concurrent clients: they share backends.
    let proxy = start_proxy(|b| {
        b.with_pool_mode(PoolMode::Transaction)
            .with_pool_size(2)
            .with_auth_type(AuthType::Trust)
            .with_pool_timeout(Duration::from_secs(30))
            .with_cache(cache.clone())
    })
    .await;
    scenarios(&["run", &proxy_dsn(proxy.port(), db), &direct_dsn(db), "pooled"]).await;
}
