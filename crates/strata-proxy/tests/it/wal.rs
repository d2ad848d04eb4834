//! Writes made directly on PostgreSQL, bypassing the proxy, stop being served from the proxy's
//! cache once the WAL invalidator has seen them commit.

use std::{sync::Arc, time::Duration};

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};
use tokio::time::Instant;

use crate::support::{admin, connect, fresh_database, pg, start_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_directly_on_postgres_is_not_served_from_cache() {
    let db = "strata_proxy_wal";
    fresh_database(db).await;
    let direct = admin(db).await;
    direct
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')")
        .await
        .expect("table");
    let settings = CacheSettings { table: None, redis: None, enabled: true, custom_settings: Vec::new() };
    let query_cache = build_query_cache(&settings).await.expect("cache");
    let publication = format!("strata_proxy_wal_{}", std::process::id());
    let pg = pg();
    let config = strata::WalConfig::builder()
        .with_upstream(pg.host(), pg.port())
        .with_user("postgres")
        .with_database(db)
        .with_publication(publication.clone())
        .with_application_name(format!("strata-proxy-wal-test-{}", std::process::id()))
        .with_lag_bound(Duration::from_secs(10))
        .build()
        .expect("wal config");
    let wal = strata::WalInvalidator::start(config, query_cache.clone()).expect("invalidator");
    let cache = Arc::new(StrataCache::new(query_cache.clone()).expect("strata cache"));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    let c = connect(proxy.port(), "postgres", db, None).await.expect("connect");
    let read = || async {
        c.query_one("SELECT v FROM kv WHERE k = 1", &[]).await.expect("read").get::<_, String>(0)
    };
    let hits = || cache.query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum::<u64>();

    for round in 1..=5 {
        // Cached: the stream must be up for lookups to take part, so wait (bounded) for a hit.
        let start = Instant::now();
        loop {
            let before = hits();
            let _ = read().await;
            if hits() > before {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "round {round}: reads never hit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let new = format!("v{round}");
        direct.execute("UPDATE kv SET v = $1 WHERE k = 1", &[&new]).await.expect("direct write");
        let start = Instant::now();
        loop {
            if read().await == new {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: the direct write was still served stale"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    drop(wal);
    let _ = direct.batch_execute(&format!("DROP PUBLICATION IF EXISTS {publication}")).await;
}
