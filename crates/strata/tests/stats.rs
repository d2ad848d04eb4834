//! What a running cache tells about itself: statistics per query shape and per table, explain
//! with whether a result is cached now, and table rules replaced while it runs.
// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use strata::{KeyScope, Lookup, QueryCache, Request, SettingsDigest, TableRuleSet, WriteEffect};
use strata_core::TableName;
use strata_l1::HotTier;

fn cache() -> QueryCache {
    QueryCache::builder().with_l1(HotTier::builder().build().unwrap()).build().unwrap()
}

fn scope() -> KeyScope {
    KeyScope::new("app", "alice", SettingsDigest::of([("search_path", "public")]))
}

async fn look(cache: &QueryCache, sql: &str) -> &'static str {
    let scope = scope();
    match cache.lookup(&Request::new(&scope, sql)).await {
        Lookup::Hit(_) => "hit",
        Lookup::Miss(ticket) => {
            tokio::time::sleep(Duration::from_millis(2)).await;
            ticket.fill(Bytes::from_static(b"rows"), 1).await;
            "miss"
        }
        Lookup::Bypass(_) => "bypass",
    }
}

#[tokio::test]
async fn shapes_count_their_lookups_by_outcome_and_tables_their_invalidations() {
    let cache = cache();
    // Two literals, one shape.
    assert_eq!(look(&cache, "SELECT v FROM orders WHERE id = 1").await, "miss");
    assert_eq!(look(&cache, "SELECT v FROM orders WHERE id = 1").await, "hit");
    assert_eq!(look(&cache, "select v from orders where id = 2").await, "miss");
    assert_eq!(look(&cache, "SELECT now()").await, "bypass");
    let stats = cache.query_stats();
    let orders = &stats[0];
    assert!(orders.normalized.contains("orders"), "{orders:?}");
    assert_eq!((orders.calls, orders.misses, orders.fills), (3, 2, 2), "{orders:?}");
    assert_eq!(orders.hits, vec![("l1".to_owned(), 1)]);
    assert!(orders.mean_fill_cost >= Duration::from_millis(1) && orders.time_saved >= orders.mean_fill_cost);
    assert_eq!(orders.bytes_stored, 8);
    assert_eq!(orders.last_invalidation, None);
    let now = stats.iter().find(|s| s.normalized.contains("now")).unwrap();
    assert_eq!((now.calls, now.bypasses.len()), (1, 1), "{now:?}");

    cache.invalidate(&WriteEffect::Tables(vec![TableName::new("public.orders")])).await.unwrap();
    let tables = cache.table_stats();
    let row = tables.iter().find(|t| t.table == "orders").unwrap();
    assert_eq!((row.invalidations, row.entries), (1, 0), "{row:?}");
    assert!(row.version > 0 && row.last_invalidation.is_some());
    assert!(cache.query_stats()[0].last_invalidation.is_some());
    assert_eq!(look(&cache, "SELECT v FROM orders WHERE id = 1").await, "miss");
    let tables = cache.table_stats();
    assert_eq!(tables.iter().find(|t| t.table == "orders").unwrap().entries, 1);
    cache.flush().await.unwrap();
    assert_eq!(cache.table_stats()[0].invalidations, 1, "everything, once");
}

#[tokio::test]
async fn explain_says_where_a_result_is_and_table_rules_change_while_running() {
    let cache = cache();
    let scope = scope();
    let sql = "SELECT v FROM orders WHERE id = 1";
    let req = Request::new(&scope, sql);
    assert_eq!(cache.cached_in(&req).await, None);
    look(&cache, sql).await;
    assert_eq!(cache.cached_in(&req).await.as_deref(), Some("l1"));
    assert_eq!(cache.explain(&req).ttl, Duration::from_secs(60));

    let rules = |ttls: Vec<(String, Duration)>, excluded: Vec<String>| TableRuleSet {
        default_ttl: Duration::from_secs(5),
        ttls,
        excluded,
        semantic: Vec::new(),
    };
    cache.set_table_rules(&rules(vec![("orders".to_owned(), Duration::from_secs(2))], vec![]));
    assert_eq!(cache.explain(&req).ttl, Duration::from_secs(2));
    assert_eq!(cache.table_rules().ttls, vec![("orders".to_owned(), Duration::from_secs(2))]);
    cache.set_table_rules(&rules(vec![], vec!["Orders".to_owned()]));
    assert!(cache.explain(&req).verdict.is_err());
    assert_eq!(look(&cache, sql).await, "bypass", "an excluded table's result is no longer served");
    cache.invalidate_table("orders").await.unwrap();
    cache.set_table_rules(&rules(vec![], vec![]));
    assert_eq!(look(&cache, sql).await, "miss", "FLUSH of one table");
}
