//! What a user of `QueryCache` relies on: single-flight, freshness, promotion, rules, isolation.

// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata::{
    BypassReason, KeyScope, Loaded, Lookup, Param, QueryCache, QueryCacheConfig, Request, SettingsDigest,
    Source, WriteEffect,
};
use strata_core::{CacheTier, Clock, Format, ManualClock, TableName, TypeOid};
use strata_l1::HotTier;
use strata_l2::{MemoryStorage, WarmTier};

fn scope() -> KeyScope {
    KeyScope::new("shop", "app", SettingsDigest::of([("search_path", "public")]))
}

fn l1(clock: &Arc<ManualClock>) -> HotTier {
    HotTier::builder().with_clock(clock.clone()).build().unwrap()
}

fn l2(clock: &Arc<ManualClock>) -> WarmTier {
    let storage = MemoryStorage::builder().with_clock(clock.clone()).build().unwrap();
    WarmTier::builder(Arc::new(storage))
        .with_clock(clock.clone())
        .with_deadline(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn loaded(text: &str) -> Result<Loaded, std::io::Error> {
    Ok(Loaded { payload: Bytes::from(text.to_owned()), row_count: 1 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_run_exactly_one_fill() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder().with_l1(l1(&clock)).with_clock(clock.clone()).build().unwrap();
    let fills = Arc::new(AtomicU64::new(0));
    let (release, gate) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, fills, mut gate) = (cache.clone(), fills.clone(), gate.clone());
            tokio::spawn(async move {
                let scope = scope();
                let req = Request::new(&scope, "SELECT * FROM items WHERE id = 7");
                cache
                    .get_or_fill(&req, || async move {
                        fills.fetch_add(1, SeqCst);
                        // Hold the fill until every task has looked up, so all of them miss.
                        let _ = gate.wait_for(|open| *open).await;
                        loaded("item 7")
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send_replace(true);
    for task in tasks {
        assert_eq!(task.await.unwrap().payload, Bytes::from_static(b"item 7"));
    }
    assert_eq!(fills.load(SeqCst), 1, "exactly one caller went to the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_one_fill_fails_every_waiter_still_gets_an_answer() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder().with_l1(l1(&clock)).with_clock(clock.clone()).build().unwrap();
    let attempts = Arc::new(AtomicU64::new(0));
    let (release, gate) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, attempts, mut gate) = (cache.clone(), attempts.clone(), gate.clone());
            tokio::spawn(async move {
                let scope = scope();
                let req = Request::new(&scope, "SELECT * FROM items WHERE id = 8");
                cache
                    .get_or_fill(&req, || async move {
                        // The first attempt fails; waiters then load themselves and succeed.
                        let n = attempts.fetch_add(1, SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        if n == 0 {
                            Err(std::io::Error::other("connection reset"))
                        } else {
                            loaded("item 8")
                        }
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send_replace(true);
    let mut failures = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(answer) => assert_eq!(answer.payload, Bytes::from_static(b"item 8")),
            Err(_) => failures += 1,
        }
    }
    assert_eq!(failures, 1, "only the caller whose load failed sees the error");
}

#[tokio::test]
async fn soft_ttl_serves_the_old_value_while_exactly_one_caller_refreshes() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder()
        .with_l1(l1(&clock))
        .with_clock(clock.clone())
        .with_default_ttl(Duration::from_secs(100))
        .with_ttl_jitter_ratio(0.0)
        .with_soft_ttl_ratio(0.5)
        .build()
        .unwrap();
    let scope = scope();
    let req = Request::new(&scope, "SELECT * FROM prices");
    assert_eq!(cache.get_or_fill(&req, || async { loaded("v1") }).await.unwrap().source, Source::Database);

    clock.advance(Duration::from_secs(49));
    assert!(matches!(cache.lookup(&req).await, Lookup::Hit(h) if !h.is_stale()));

    clock.advance(Duration::from_secs(2));
    // Past the soft TTL: the first caller is sent to refresh...
    let Lookup::Miss(refresh) = cache.lookup(&req).await else {
        panic!("the first caller past soft TTL refreshes")
    };
    // ...while the others are served the old value, marked stale.
    for _ in 0..3 {
        match cache.lookup(&req).await {
            Lookup::Hit(hit) => {
                assert!(hit.is_stale());
                assert_eq!(hit.payload(), &Bytes::from_static(b"v1"));
            }
            other => panic!("expected a stale hit, got {other:?}"),
        }
    }
    refresh.fill(Bytes::from_static(b"v2"), 1).await;
    match cache.lookup(&req).await {
        Lookup::Hit(hit) => {
            assert!(!hit.is_stale());
            assert_eq!(hit.payload(), &Bytes::from_static(b"v2"));
        }
        other => panic!("expected the refreshed value, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hit_in_l2_is_promoted_to_l1_with_its_remaining_ttl_not_a_fresh_one() {
    let clock = Arc::new(ManualClock::fixed());
    let hot = Arc::new(l1(&clock));
    let cache = QueryCache::builder()
        .with_tier("l1", strata::TierRole::Hot, hot.clone())
        .with_l2(l2(&clock))
        .with_clock(clock.clone())
        .with_default_ttl(Duration::from_secs(60))
        .with_ttl_jitter_ratio(0.0)
        .build()
        .unwrap();
    let scope = scope();
    let req = Request::new(&scope, "SELECT * FROM catalog WHERE sku = 'A-1'");
    cache.get_or_fill(&req, || async { loaded("sku A-1") }).await.unwrap();
    hot.clear_all();

    clock.advance(Duration::from_secs(40));
    let Lookup::Hit(hit) = cache.lookup(&req).await else { panic!("l2 still holds it") };
    assert_eq!(hit.tier(), "l2");
    assert_eq!(hit.age(), Duration::from_secs(40));

    let Lookup::Hit(hit) = cache.lookup(&req).await else { panic!("promoted to l1") };
    assert_eq!(hit.tier(), "l1");
    assert_eq!(hit.result().remaining_ttl(clock.now()), Duration::from_secs(20));

    clock.advance(Duration::from_secs(21));
    assert!(
        matches!(cache.lookup(&req).await, Lookup::Miss(_)),
        "the promoted copy expires with the original"
    );
}

#[tokio::test]
async fn ttl_comes_from_the_hint_then_the_table_then_the_default() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder()
        .with_l1(l1(&clock))
        .with_clock(clock.clone())
        .with_default_ttl(Duration::from_secs(60))
        .with_table_ttl("prices", Duration::from_secs(5))
        .with_ttl_jitter_ratio(0.0)
        .build()
        .unwrap();
    let scope = scope();
    for (sql, ttl) in [
        ("SELECT * FROM orders", 60),
        ("SELECT * FROM public.prices JOIN orders USING (id)", 5),
        ("/* strata: ttl=2m */ SELECT * FROM prices", 120),
    ] {
        let req = Request::new(&scope, sql);
        cache.get_or_fill(&req, || async { loaded("rows") }).await.unwrap();
        let Lookup::Hit(hit) = cache.lookup(&req).await else { panic!("{sql} was cached") };
        assert_eq!(hit.result().ttl(), Duration::from_secs(ttl), "{sql}");
    }
}

#[tokio::test]
async fn exclusions_size_limit_and_uncacheable_statements_are_never_served() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder()
        .with_l1(l1(&clock))
        .with_clock(clock.clone())
        .with_excluded_table("audit_log")
        .with_max_result_bytes(16)
        .build()
        .unwrap();
    let scope = scope();
    let excluded = Request::new(&scope, "SELECT * FROM audit.audit_log");
    assert!(
        matches!(cache.lookup(&excluded).await, Lookup::Bypass(b) if matches!(b.reason(), BypassReason::ExcludedTable(_)))
    );

    let big = Request::new(&scope, "SELECT * FROM blobs");
    let Lookup::Miss(ticket) = cache.lookup(&big).await else { panic!("miss") };
    assert_eq!(ticket.fill(Bytes::from(vec![0u8; 17]), 1).await, strata::FillOutcome::TooLarge);
    assert!(matches!(cache.lookup(&big).await, Lookup::Miss(_)));

    for sql in
        ["SELECT now()", "SELECT * FROM t FOR UPDATE", "/* strata: cache=off */ SELECT 1", "SELEC broken"]
    {
        let answer = cache.get_or_fill(&Request::new(&scope, sql), || async { loaded("x") }).await.unwrap();
        assert!(
            matches!(answer.source, Source::Bypassed(BypassReason::NotCacheable(_))),
            "{sql}: {:?}",
            answer.source
        );
    }
}

#[tokio::test]
async fn scope_parameters_and_result_formats_separate_results() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder().with_l1(l1(&clock)).with_clock(clock.clone()).build().unwrap();
    let alice = KeyScope::new("shop", "alice", SettingsDigest::default());
    let bob = KeyScope::new("shop", "bob", SettingsDigest::default());
    let tenant = |t: &str| KeyScope::new("shop", "alice", SettingsDigest::of([("app.tenant_id", t)]));
    let sql = "SELECT * FROM accounts WHERE id = $1";
    let one = [Param::text(TypeOid::INT4, b"1")];
    let two = [Param::text(TypeOid::INT4, b"2")];
    let cases: Vec<(KeyScope, &[Param<'_>], &[Format], &str)> = vec![
        (alice.clone(), &one, &[], "alice 1"),
        (bob.clone(), &one, &[], "bob 1"),
        (alice.clone(), &two, &[], "alice 2"),
        (alice.clone(), &one, &[Format::Binary], "alice 1 binary"),
        (tenant("a"), &one, &[], "tenant a 1"),
        (tenant("b"), &one, &[], "tenant b 1"),
    ];
    for (scope, params, formats, value) in &cases {
        let req = Request::new(scope, sql).with_params(params).with_result_formats(formats);
        let answer = cache.get_or_fill(&req, || async { loaded(value) }).await.unwrap();
        assert_eq!(answer.source, Source::Database, "{value} must not be served another key's result");
    }
    for (scope, params, formats, value) in &cases {
        let req = Request::new(scope, sql).with_params(params).with_result_formats(formats);
        let answer = cache.get_or_fill(&req, || async { loaded("wrong") }).await.unwrap();
        assert_eq!(answer.payload, Bytes::from(value.to_string()));
    }
    let missing = Request::new(&alice, sql);
    assert!(matches!(
        cache.lookup(&missing).await,
        Lookup::Bypass(b) if *b.reason() == BypassReason::ParameterCount { expected: 1, bound: 0 }
    ));
}

/// A tier that holds every put until released, like a slow network store.
#[derive(Debug)]
struct Gated {
    inner: WarmTier,
    open: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl strata_core::CacheTier for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    async fn get(
        &self,
        key: &strata_core::CacheKey,
    ) -> Result<Option<strata_core::CachedResult>, strata_core::Error> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &strata_core::CacheKey,
        value: strata_core::CachedResult,
    ) -> Result<strata_core::PutOutcome, strata_core::Error> {
        let _permit = self.open.acquire().await;
        self.inner.put(key, value).await
    }
    async fn remove(&self, key: &strata_core::CacheKey) -> Result<(), strata_core::Error> {
        self.inner.remove(key).await
    }
    async fn clear(&self) -> Result<(), strata_core::Error> {
        self.inner.clear().await
    }
    fn stats(&self) -> strata_core::TierStats {
        self.inner.stats()
    }
}

#[tokio::test]
async fn a_detached_fill_stores_in_process_tiers_at_once_and_the_others_in_the_background() {
    let clock = Arc::new(ManualClock::fixed());
    let gated = Arc::new(Gated { inner: l2(&clock), open: tokio::sync::Semaphore::new(0) });
    let cache = QueryCache::builder()
        .with_l1(l1(&clock))
        .with_tier("gated", strata::TierRole::Warm, gated.clone())
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let scope = scope();
    let req = Request::new(&scope, "SELECT * FROM users");
    let Lookup::Miss(ticket) = cache.lookup(&req).await else { panic!("expected a miss") };
    // Returns while the networked store is still blocked.
    let outcome = tokio::time::timeout(Duration::from_secs(5), ticket.fill_detached(Bytes::from("rows"), 1))
        .await
        .expect("a detached fill must not wait for a networked tier");
    assert_eq!(outcome, strata::FillOutcome::Stored);
    assert!(matches!(cache.lookup(&req).await, Lookup::Hit(h) if h.tier() == "l1"));
    assert_eq!(gated.stats().entries, 0, "the gated tier has not stored yet");
    gated.open.add_permits(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gated.stats().entries == 0 {
        assert!(std::time::Instant::now() < deadline, "the background store never landed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn time_dependent_parameters_are_never_cached() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder().with_l1(l1(&clock)).with_clock(clock.clone()).build().unwrap();
    let scope = scope();
    let sql = "SELECT * FROM events WHERE at > $1";
    let bypassed = |ty: u32, value: &'static [u8]| {
        let cache = &cache;
        let scope = &scope;
        async move {
            let params = [Param::text(TypeOid(ty), value)];
            let req = Request::new(scope, sql).with_params(&params);
            match cache.lookup(&req).await {
                Lookup::Bypass(b) => *b.reason() == BypassReason::TimeDependentParameter,
                Lookup::Miss(ticket) => {
                    ticket.abandon();
                    false
                }
                Lookup::Hit(_) => false,
            }
        }
    };
    // Unspecified, unknown, date, timestamp and timestamptz parameters spelling the time of
    // reading are read by the server when the query runs.
    for (ty, value) in
        [(0, &b"now"[..]), (705, b" Today"), (1082, b"tomorrow"), (1114, b"yesterday 10:00"), (1184, b"NOW")]
    {
        assert!(bypassed(ty, value).await, "type {ty} value {:?}", String::from_utf8_lossy(value));
    }
    // A fixed instant, or the same word as text, is an ordinary value.
    assert!(!bypassed(1184, b"2026-11-24 10:00:00+00").await);
    assert!(!bypassed(25, b"now").await);
    let binary = [Param::binary(TypeOid(1184), &[0, 0, 0, 0, 0, 0, 0, 1])];
    assert!(matches!(cache.lookup(&Request::new(&scope, sql).with_params(&binary)).await, Lookup::Miss(_)));
}

#[tokio::test]
async fn writes_invalidate_the_tables_they_touch_and_unknown_effects_invalidate_everything() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder()
        .with_l1(l1(&clock))
        .with_l2(l2(&clock))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let scope = scope();
    let users = Request::new(&scope, "SELECT * FROM users");
    let orders = Request::new(&scope, "SELECT * FROM shop.orders");
    for req in [&users, &orders] {
        cache.get_or_fill(req, || async { loaded("old") }).await.unwrap();
    }
    cache.invalidate_sql("UPDATE public.users SET name = 'x'").await.unwrap();
    assert!(matches!(cache.lookup(&users).await, Lookup::Miss(_)), "users changed");
    assert!(matches!(cache.lookup(&orders).await, Lookup::Hit(_)), "orders did not");

    cache.get_or_fill(&users, || async { loaded("new") }).await.unwrap();
    cache.invalidate(&WriteEffect::Unknown).await.unwrap();
    assert!(matches!(cache.lookup(&users).await, Lookup::Miss(_)));
    assert!(matches!(cache.lookup(&orders).await, Lookup::Miss(_)));
}

#[tokio::test]
async fn explain_says_why_and_metrics_count_what_happened() {
    let cache = QueryCacheConfig::from_toml(
        "default_ttl_ms = 30000\n[l2.storage]\nbackend = \"memory\"\n[tables.audit_log]\ncache = false\n",
    )
    .unwrap()
    .build()
    .unwrap();
    let scope = scope();
    let explained = cache.explain(&Request::new(&scope, "SELECT * FROM users WHERE id = 1"));
    assert!(explained.verdict.is_ok(), "{explained}");
    assert_eq!(explained.tables, vec![("users".to_owned(), 0)]);
    assert_eq!(explained.tiers, vec!["l1", "l2"]);
    assert!(explained.to_string().contains("cacheable"), "{explained}");
    let refused = cache.explain(&Request::new(&scope, "SELECT * FROM audit_log"));
    assert_eq!(refused.verdict, Err("table audit_log is excluded from caching".to_owned()));

    let req = Request::new(&scope, "SELECT * FROM users WHERE id = 1");
    cache.get_or_fill(&req, || async { loaded("u1") }).await.unwrap();
    cache.get_or_fill(&req, || async { loaded("u1") }).await.unwrap();
    cache.get_or_fill(&Request::new(&scope, "SELECT random()"), || async { loaded("r") }).await.unwrap();
    let text = prometheus::TextEncoder::new().encode_to_string(&cache.registry().gather()).unwrap();
    for line in [
        "strata_tier_hits_total{tier=\"l1\"} 1",
        "strata_fills_total{outcome=\"stored\"} 1",
        "strata_bypass_total{reason=\"volatile_function\"} 1",
        "strata_tier_entries{tier=\"l1\"} 1",
        "strata_versions_synchronized 1",
        "strata_l2_breaker_state 0",
        "strata_l2_failures{kind=\"errors\"} 0",
    ] {
        assert!(text.contains(line), "metrics lack `{line}`:\n{text}");
    }
    let stats = cache.tier_stats();
    assert_eq!(stats[0].0, "l1");
    assert_eq!(stats[0].1.hits, 1);
}

#[test]
fn invalid_configuration_is_refused_with_a_reason() {
    let err = QueryCache::builder().with_soft_ttl_ratio(0.0).build().unwrap_err();
    assert_eq!(err.kind(), strata::ErrorKind::Config);
    assert!(QueryCache::builder().with_default_ttl(Duration::ZERO).build().is_err());
    let err = QueryCacheConfig::from_toml("default_ttl_ms = \"soon\"").unwrap_err();
    assert!(err.to_string().contains("invalid cache configuration"), "{err}");
    assert!(QueryCacheConfig::from_toml("unknown_field = 1").is_err());
}

#[test]
fn public_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<QueryCache>();
    check::<strata::QueryCacheBuilder>();
    check::<strata::QueryCacheConfig>();
    check::<strata::FillTicket>();
    check::<strata::Hit>();
    check::<strata::Lookup>();
    check::<strata::Explanation>();
    check::<strata::Error>();
    check::<strata::LocalVersions>();
    check::<Request<'static>>();
    check::<Param<'static>>();
    let _: &dyn CacheTier = &HotTier::builder().build().unwrap();
    let _ = TableName::new("x");
}

fn semantic_cache() -> QueryCache {
    let l3 = strata_l3::SemanticTier::builder().build().unwrap();
    QueryCache::builder().with_l1(HotTier::builder().build().unwrap()).with_l3(l3).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_similar_question_is_answered_by_l3_but_never_across_a_literal_or_a_write() {
    let cache = semantic_cache();
    let scope = scope();
    let asked = "/* strata: semantic, intent=\"how many orders did alice place in week 47\" */ \
                 SELECT count(*) FROM orders WHERE customer = 'alice' AND week = 47";
    let answer = cache.get_or_fill(&Request::new(&scope, asked), || async { loaded("12") }).await.unwrap();
    assert_eq!(answer.source, Source::Database);

    // Another text (another exact key), the same meaning and the same literals: served by L3.
    let rephrased = "/* strata: semantic, intent=\"how many orders did alice place during week 47\" */ \
                     SELECT count(*) FROM orders WHERE week = 47 AND customer = 'alice'";
    let answer =
        cache.get_or_fill(&Request::new(&scope, rephrased), || async { loaded("wrong") }).await.unwrap();
    assert_eq!(answer.source, Source::Cache("l3".into()));
    assert_eq!(answer.payload, Bytes::from_static(b"12"));

    // A different name in the literals: a different question, whatever the similarity.
    let bob = "/* strata: semantic, intent=\"how many orders did bob place during week 47\" */ \
               SELECT count(*) FROM orders WHERE week = 47 AND customer = 'bob'";
    let answer = cache.get_or_fill(&Request::new(&scope, bob), || async { loaded("3") }).await.unwrap();
    assert_eq!(answer.source, Source::Database);

    // After a write to orders the old answer is unservable, in every tier.
    cache.invalidate_sql("INSERT INTO orders (customer, week) VALUES ('alice', 47)").await.unwrap();
    let again = "/* strata: semantic, intent=\"how many orders has alice placed in week 47\" */ \
                 SELECT count(*) AS n FROM orders WHERE customer = 'alice' AND week = 47";
    let answer = cache.get_or_fill(&Request::new(&scope, again), || async { loaded("13") }).await.unwrap();
    assert_eq!(answer.source, Source::Database);
    assert_eq!(answer.payload, Bytes::from_static(b"13"));

    // Without the hint, L3 is never consulted.
    let plain = "SELECT count(*) FROM orders WHERE week = 47 AND customer = 'alice' AND week > 0";
    let answer = cache.get_or_fill(&Request::new(&scope, plain), || async { loaded("13") }).await.unwrap();
    assert_eq!(answer.source, Source::Database);
}

#[tokio::test]
async fn relations_carry_writes_the_text_does_not_show_to_the_reads_they_change() {
    let clock = Arc::new(ManualClock::fixed());
    let cache = QueryCache::builder().with_l1(l1(&clock)).with_clock(clock.clone()).build().unwrap();
    let scope = scope();
    let view = Request::new(&scope, "SELECT * FROM order_totals");
    let children = Request::new(&scope, "SELECT * FROM order_lines");
    let audit = Request::new(&scope, "SELECT * FROM audit_log");
    for req in [&view, &children, &audit] {
        cache.get_or_fill(req, || async { loaded("before") }).await.unwrap();
        assert!(matches!(cache.lookup(req).await, Lookup::Hit(_)));
    }
    // Without the catalog's knowledge a write to the base table misses the view: the limit the
    // relations exist for.
    cache.invalidate_sql("UPDATE orders SET total = 0").await.unwrap();
    assert!(matches!(cache.lookup(&view).await, Lookup::Hit(_)));

    cache.set_relations(
        strata::Relations::builder()
            .reads_through("public.order_totals", "orders")
            .writes_also("orders", "order_lines")
            .writes_unknown("payments")
            .build(),
    );
    // The view's plan now depends on orders: its new key was never filled.
    assert!(matches!(cache.lookup(&view).await, Lookup::Miss(_)));
    cache.get_or_fill(&view, || async { loaded("after") }).await.unwrap();
    assert!(matches!(cache.lookup(&view).await, Lookup::Hit(_)));
    assert!(matches!(cache.lookup(&children).await, Lookup::Hit(_)));

    // A write to the base table reaches the view, and the cascade reaches the children.
    cache.invalidate_sql("DELETE FROM orders WHERE id = 1").await.unwrap();
    assert!(matches!(cache.lookup(&view).await, Lookup::Miss(_)));
    assert!(matches!(cache.lookup(&children).await, Lookup::Miss(_)));
    assert!(matches!(cache.lookup(&audit).await, Lookup::Hit(_)));

    // A table with a trigger: its writes may change anything.
    cache.invalidate_sql("INSERT INTO payments VALUES (1)").await.unwrap();
    assert!(matches!(cache.lookup(&audit).await, Lookup::Miss(_)));
}
