//! Statements too large to analyze and long statements planned off the worker threads: what a
//! user of `QueryCache` sees (bypass reasons, invalidation, the same answers as for short texts).

// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use strata::{
    BypassReason, KeyScope, Loaded, Lookup, QueryCache, QueryCacheConfig, Request, SessionEffect,
    SettingsDigest, Source,
};
use strata_l1::HotTier;
use strata_normalizer::NotCacheable;

/// The normalizer's default limit, 256 KiB.
const DEFAULT_LIMIT: usize = 256 * 1024;

fn scope() -> KeyScope {
    KeyScope::new("shop", "app", SettingsDigest::of([("search_path", "public")]))
}

fn cache() -> QueryCache {
    QueryCache::builder().with_l1(HotTier::builder().build().unwrap()).build().unwrap()
}

fn loaded(text: &'static str) -> Result<Loaded, std::io::Error> {
    Ok(Loaded { payload: Bytes::from_static(text.as_bytes()), row_count: 1 })
}

/// `SELECT ... WHERE id IN (...)` over `table` of at least `bytes` bytes; `seed` varies the
/// values, so texts of one size can differ.
fn in_list(table: &str, bytes: usize, seed: u64) -> String {
    let mut sql = format!("SELECT * FROM {table} WHERE id IN ({seed}");
    let mut i = seed + 1;
    while sql.len() < bytes {
        sql.push_str(&format!(",{i}"));
        i += 1;
    }
    sql.push(')');
    sql
}

/// `INSERT INTO table VALUES ...` of at least `bytes` bytes.
fn bulk_insert(table: &str, bytes: usize) -> String {
    let mut sql = format!("INSERT INTO {table} VALUES (0, 'x')");
    let mut i = 1u64;
    while sql.len() < bytes {
        sql.push_str(&format!(", ({i}, 'x')"));
        i += 1;
    }
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_statement_bypasses_as_too_large() {
    let cache = cache();
    let scope = scope();
    let sql = in_list("users", 5 << 20, 0);
    let Lookup::Bypass(bypass) = cache.lookup(&Request::new(&scope, &sql)).await else {
        panic!("a statement too large to analyze must bypass")
    };
    let expected = NotCacheable::TooLarge { bytes: sql.len(), limit: DEFAULT_LIMIT };
    assert_eq!(bypass.reason(), &BypassReason::NotCacheable(expected));
    assert_eq!(bypass.reason().label(), "too_large");
    assert_eq!(
        bypass.reason().to_string(),
        format!(
            "not cacheable: text of {} bytes exceeds the analysis limit of {DEFAULT_LIMIT} bytes",
            sql.len()
        )
    );
    assert!(!cache.is_cacheable(&sql).await);
    let unknown = vec![SessionEffect::ServerCode(Arc::from("text too large to analyze"))];
    assert_eq!(cache.session_effects(&sql).await, unknown);
    // Callers that cannot await get no answer for a long text and must assume the worst.
    assert_eq!(cache.session_effects_now(&sql), None);
    // The same text through `get_or_fill` runs the loader and caches nothing.
    let answer = cache.get_or_fill(&Request::new(&scope, &sql), || async { loaded("rows") }).await.unwrap();
    assert!(matches!(
        answer.source,
        Source::Bypassed(BypassReason::NotCacheable(NotCacheable::TooLarge { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_text_too_large_to_analyze_invalidates_everything() {
    let cache = cache();
    let scope = scope();
    let users = Request::new(&scope, "SELECT name FROM users WHERE id = 1");
    assert_eq!(
        cache.get_or_fill(&users, || async { loaded("alice") }).await.unwrap().source,
        Source::Database
    );
    // A write the normalizer reads leaves other tables' results alone...
    cache.invalidate_sql(&bulk_insert("orders", 1024)).await.unwrap();
    assert!(matches!(cache.lookup(&users).await, Lookup::Hit(_)), "a write to orders keeps users");
    // ...one too large to read may have written anything.
    cache.invalidate_sql(&bulk_insert("orders", 1 << 20)).await.unwrap();
    assert!(matches!(cache.lookup(&users).await, Lookup::Miss(_)), "everything was invalidated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_statements_planned_off_the_worker_threads_get_the_answers_short_ones_get() {
    let cache = cache();
    let scope = scope();
    // Long texts (over 16 KiB, under the limit), memoized (up to 64 KiB) or not, and short ones,
    // looked up concurrently: each misses once, then hits.
    let texts: Vec<String> = (0..12u64)
        .map(|i| match i % 3 {
            0 => in_list("users", 20 * 1024, i * 100_000),
            1 => in_list("users", 100 * 1024, i * 100_000),
            _ => format!("SELECT * FROM users WHERE id = {i}"),
        })
        .collect();
    let tasks: Vec<_> = texts
        .iter()
        .cloned()
        .map(|sql| {
            let (cache, scope) = (cache.clone(), scope.clone());
            tokio::spawn(async move {
                let req = Request::new(&scope, &sql);
                let first = match cache.lookup(&req).await {
                    Lookup::Miss(ticket) => {
                        ticket.fill(Bytes::from_static(b"rows"), 1).await;
                        "miss"
                    }
                    Lookup::Hit(_) => "hit",
                    Lookup::Bypass(b) => panic!("{}: {}", sql.len(), b.reason()),
                };
                let second = match cache.lookup(&req).await {
                    Lookup::Hit(hit) => {
                        assert_eq!(hit.payload(), &Bytes::from_static(b"rows"));
                        "hit"
                    }
                    _ => "not a hit",
                };
                (first, second, cache.is_cacheable(&sql).await)
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), ("miss", "hit", true));
    }
    // A long write is planned off-thread too, and reads as a write.
    let write = bulk_insert("orders", 40 * 1024);
    let Lookup::Bypass(bypass) = cache.lookup(&Request::new(&scope, &write)).await else {
        panic!("a write must bypass")
    };
    assert_eq!(bypass.reason().label(), "not_a_read");
    assert_eq!(cache.session_effects(&write).await, Vec::<SessionEffect>::new());
}

#[tokio::test]
async fn the_limit_is_configurable_in_the_toml_configuration() {
    assert_eq!(QueryCacheConfig::default().max_analyzed_bytes, DEFAULT_LIMIT as u64);
    let cache =
        QueryCacheConfig::from_toml("max_analyzed_bytes = 2048\n[l2.storage]\nbackend = \"memory\"\n")
            .unwrap()
            .build()
            .unwrap();
    let scope = scope();
    let long = in_list("users", 4096, 0);
    let Lookup::Bypass(bypass) = cache.lookup(&Request::new(&scope, &long)).await else {
        panic!("over the configured limit")
    };
    let expected = NotCacheable::TooLarge { bytes: long.len(), limit: 2048 };
    assert_eq!(bypass.reason(), &BypassReason::NotCacheable(expected));
    let short = Request::new(&scope, "SELECT * FROM users WHERE id = 1");
    assert!(matches!(cache.lookup(&short).await, Lookup::Miss(_)));
    let err = QueryCacheConfig::from_toml("max_analyzed_bytes = 10").unwrap().build().unwrap_err();
    assert!(err.to_string().contains("max analyzed bytes must be at least 1024"), "{err}");
}
