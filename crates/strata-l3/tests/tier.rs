//! Behavior of the semantic tier: exact keys, guards, tombstones, rebuilds, TTL, invalidation,
//! embedder failures and timeouts, and inserts that never hold up lookups.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CacheKey, CacheTier, CachedResult, Clock, KeyScope, ManualClock, NowLookup, PutOutcome, Rejection,
    SettingsDigest, TableName,
};
use strata_l3::{
    CosineSimilarity, Embedder, EmbeddingApi, Error, HttpEmbedder, IndexConfig, Indexing, Literal,
    LocalEmbedder, SemanticRequest, SemanticTier,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"))
}

fn scope(role: &str) -> KeyScope {
    KeyScope::new("shop", role, SettingsDigest::default())
}

fn key(scope: &KeyScope, text: &str) -> CacheKey {
    CacheKey::builder(scope, text.as_bytes()).build()
}

fn value(clock: &ManualClock, ttl: Duration, table: &str) -> CachedResult {
    CachedResult::builder(Bytes::from_static(b"rows"))
        .with_created_at(clock.now())
        .with_ttl(ttl)
        .with_dependency(TableName::new(table), 1)
        .build()
}

fn manual_tier(clock: &Arc<ManualClock>) -> SemanticTier {
    SemanticTier::builder()
        .with_clock(clock.clone())
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Distinct questions that share their shape, so they land in one partition and are close.
fn question(i: usize) -> String {
    const W: &[&str] = &[
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
        "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform",
        "victor", "whiskey", "xray", "yankee", "zulu",
    ];
    format!("orders tagged {} {} {} region", W[i % 26], W[(i / 26) % 26], W[(i / 676) % 26])
}

const TABLES: &[&str] = &["orders"];

fn tables() -> Vec<TableName> {
    TABLES.iter().map(|t| TableName::new(*t)).collect()
}

#[test]
fn exact_keys_get_put_remove_clear_and_stats() {
    let clock = Arc::new(ManualClock::fixed());
    let tier = manual_tier(&clock);
    let s = scope("app");
    let k = key(&s, "SELECT 1");
    rt().block_on(async {
        assert!(tier.get(&k).await.unwrap_or_else(|e| panic!("{e}")).is_none());
        let stored = tier.put(&k, value(&clock, Duration::from_secs(30), "t")).await;
        assert_eq!(stored.ok(), Some(PutOutcome::Stored));
        assert!(tier.get(&k).await.ok().flatten().is_some());
        assert!(matches!(tier.get_now(&k), NowLookup::Hit(_)));
        let stats = tier.stats();
        assert_eq!((stats.entries, stats.inserts, stats.hits, stats.misses), (1, 1, 2, 1));
        assert!(stats.bytes > 0);
        tier.remove(&k).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(tier.get_now(&k), NowLookup::Miss));
        let stored = tier.put(&k, value(&clock, Duration::from_secs(30), "t")).await;
        assert_eq!(stored.ok(), Some(PutOutcome::Stored));
        tier.clear().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(tier.get(&k).await.ok().flatten().is_none());
        assert_eq!((tier.stats().entries, tier.stats().bytes), (0, 0));
    });
}

#[test]
fn lookup_returns_score_and_matched_text_and_respects_the_per_request_threshold() {
    let clock = Arc::new(ManualClock::fixed());
    let tier = manual_tier(&clock);
    let s = scope("app");
    let t = tables();
    let lit = [Literal::identifier("Alice")];
    rt().block_on(async {
        let stored =
            SemanticRequest::new(&s, "How many orders did Alice place?").with_tables(&t).with_literals(&lit);
        let k = key(&s, "q1");
        assert_eq!(
            tier.insert(&stored, k.clone(), value(&clock, Duration::from_secs(60), "orders")).await,
            PutOutcome::Stored
        );
        assert!(tier.get(&k).await.ok().flatten().is_some(), "semantic entries are reachable by exact key");

        let asked =
            SemanticRequest::new(&s, "number of orders placed by Alice").with_tables(&t).with_literals(&lit);
        let hit = tier.lookup(&asked).await.unwrap_or_else(|| panic!("paraphrase should hit"));
        assert_eq!(hit.matched_text(), "How many orders did Alice place?");
        assert_eq!(hit.key(), &k);
        assert!(hit.similarity() >= CosineSimilarity::DEFAULT_THRESHOLD && hit.similarity().get() < 1.0);

        let strict =
            asked.clone().with_threshold(CosineSimilarity::new(0.999).unwrap_or_else(|e| panic!("{e}")));
        assert!(
            tier.lookup(&strict).await.is_none(),
            "a stricter per-request threshold turns it into a miss"
        );
        let loose = SemanticRequest::new(&s, "weather in Paris")
            .with_tables(&t)
            .with_literals(&lit)
            .with_threshold(CosineSimilarity::new(0.0).unwrap_or_else(|e| panic!("{e}")));
        assert!(tier.lookup(&loose).await.is_some(), "threshold 0 admits anything in the partition");
    });
}

#[test]
fn guards_keep_tenants_tables_and_literals_apart_even_for_identical_text() {
    let clock = Arc::new(ManualClock::fixed());
    let tier = manual_tier(&clock);
    let owner = scope("tenant_a");
    let t = tables();
    let five = [Literal::number("5")];
    let text = "SELECT * FROM orders WHERE customer_id = $1";
    rt().block_on(async {
        let stored = SemanticRequest::new(&owner, text).with_tables(&t).with_literals(&five);
        assert_eq!(
            tier.insert(&stored, key(&owner, text), value(&clock, Duration::from_secs(60), "orders")).await,
            PutOutcome::Stored
        );
        assert!(tier.lookup(&stored).await.is_some());

        let other_role = scope("tenant_b");
        let other_db = KeyScope::new("shop_eu", "tenant_a", SettingsDigest::default());
        let other_settings = KeyScope::new("shop", "tenant_a", SettingsDigest::of([("search_path", "eu")]));
        for s in [&other_role, &other_db, &other_settings] {
            let asked = SemanticRequest::new(s, text).with_tables(&t).with_literals(&five);
            assert!(tier.lookup(&asked).await.is_none(), "{s:?}");
        }
        let six = [Literal::number("6")];
        let asked = SemanticRequest::new(&owner, text).with_tables(&t).with_literals(&six);
        assert!(tier.lookup(&asked).await.is_none(), "other literal");
        let archive = [TableName::new("orders_archive")];
        let asked = SemanticRequest::new(&owner, text).with_tables(&archive).with_literals(&five);
        assert!(tier.lookup(&asked).await.is_none(), "other table");
        let asked = SemanticRequest::new(&owner, "SELECT * FROM orders WHERE customer_id <> $1")
            .with_tables(&t)
            .with_literals(&five);
        assert!(tier.lookup(&asked).await.is_none(), "other operator");
    });
}

#[test]
fn exact_bytes_keep_requests_apart_whatever_the_guards() {
    let clock = Arc::new(ManualClock::fixed());
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_indexing(Indexing::Manual)
        .with_guards(strata_l3::Guards::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let owner = scope("app");
    let text = "how many orders are open";
    rt().block_on(async {
        let stored = SemanticRequest::new(&owner, text).with_exact(b"text rows");
        assert_eq!(
            tier.insert(&stored, key(&owner, text), value(&clock, Duration::from_secs(60), "orders")).await,
            PutOutcome::Stored
        );
        assert!(tier.lookup(&SemanticRequest::new(&owner, text).with_exact(b"text rows")).await.is_some());
        for other in [&b"binary rows"[..], b""] {
            let asked = SemanticRequest::new(&owner, text).with_exact(other);
            assert!(tier.lookup(&asked).await.is_none(), "{other:?}");
        }
    });
}

#[test]
fn ttl_follows_the_injected_clock() {
    let clock = Arc::new(ManualClock::fixed());
    let tier = manual_tier(&clock);
    let s = scope("app");
    let t = tables();
    rt().block_on(async {
        let req = SemanticRequest::new(&s, "orders in region north").with_tables(&t);
        let k = key(&s, "q");
        tier.insert(&req, k.clone(), value(&clock, Duration::from_secs(30), "orders")).await;
        clock.advance(Duration::from_secs(29));
        assert!(tier.lookup(&req).await.is_some());
        clock.advance(Duration::from_secs(1));
        assert!(tier.lookup(&req).await.is_none(), "expired entries are filtered during the search");
        assert!(tier.get(&k).await.ok().flatten().is_none());
        assert_eq!(tier.stats().expirations, 1);
        let late = value(&clock, Duration::from_secs(30), "orders");
        clock.advance(Duration::from_secs(31));
        assert_eq!(tier.insert(&req, k, late).await, PutOutcome::Rejected(Rejection::Expired));
    });
}

#[test]
fn table_invalidation_makes_dependents_unreachable_and_refuses_stale_fills() {
    let clock = Arc::new(ManualClock::fixed());
    let tier = manual_tier(&clock);
    let s = scope("app");
    let orders = [TableName::new("orders")];
    let users = [TableName::new("users")];
    rt().block_on(async {
        let on_orders = SemanticRequest::new(&s, "orders per day").with_tables(&orders);
        let on_users = SemanticRequest::new(&s, "users per day").with_tables(&users);
        let filled_before = value(&clock, Duration::from_secs(60), "orders");
        tier.insert(&on_orders, key(&s, "a"), value(&clock, Duration::from_secs(60), "orders")).await;
        tier.insert(&on_users, key(&s, "b"), value(&clock, Duration::from_secs(60), "users")).await;
        clock.advance(Duration::from_millis(5));
        tier.invalidate_tables(&orders).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(tier.lookup(&on_orders).await.is_none());
        assert!(tier.get(&key(&s, "a")).await.ok().flatten().is_none());
        assert!(tier.lookup(&on_users).await.is_some(), "other tables are untouched");
        assert_eq!(
            tier.insert(&on_orders, key(&s, "a"), filled_before).await,
            PutOutcome::Rejected(Rejection::Expired),
            "a result filled before the change must not enter after it"
        );
        assert_eq!(
            tier.insert(&on_orders, key(&s, "a"), value(&clock, Duration::from_secs(60), "orders")).await,
            PutOutcome::Stored
        );
        assert!(tier.lookup(&on_orders).await.is_some());
    });
}

#[test]
fn capacity_in_entries_and_bytes_evicts_the_oldest() {
    let clock = Arc::new(ManualClock::fixed());
    let s = scope("app");
    let t = tables();
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_indexing(Indexing::Manual)
        .with_max_entries(10)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        for i in 0..15 {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            tier.insert(&req, key(&s, &q), value(&clock, Duration::from_secs(60), "orders")).await;
        }
        assert_eq!((tier.stats().entries, tier.stats().evictions), (10, 5));
        for i in 0..15 {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            let hit = tier.lookup(&req).await.map(|h| h.matched_text().to_owned());
            if i < 5 {
                assert_ne!(hit.as_deref(), Some(q.as_str()), "evicted entry {i} was served");
            } else {
                assert_eq!(hit.as_deref(), Some(q.as_str()));
            }
        }
    });
    let one = value(&clock, Duration::from_secs(60), "orders").weight_bytes();
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_indexing(Indexing::Manual)
        .with_max_bytes(one * 40)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        for i in 0..40 {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            tier.insert(&req, key(&s, &q), value(&clock, Duration::from_secs(60), "orders")).await;
        }
        let stats = tier.stats();
        assert!(stats.bytes <= one * 40 && stats.evictions > 0, "{stats:?}");
        let big = CachedResult::builder(Bytes::from(vec![0u8; (one * 41) as usize]))
            .with_created_at(clock.now())
            .build();
        let req = SemanticRequest::new(&s, "big").with_tables(&t);
        assert!(matches!(
            tier.insert(&req, key(&s, "big"), big).await,
            PutOutcome::Rejected(Rejection::TooLarge { .. })
        ));
    });
}

#[test]
fn tombstones_are_filtered_and_a_rebuild_drops_them() {
    let clock = Arc::new(ManualClock::fixed());
    let s = scope("app");
    let t = tables();
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_indexing(Indexing::Manual)
        .with_index(IndexConfig::default().with_exact_below(64))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        for i in 0..400 {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            tier.insert(&req, key(&s, &q), value(&clock, Duration::from_secs(600), "orders")).await;
        }
        assert!(tier.maintain().indexed >= 400 - 1, "the graph was built");
        for i in (0..400).step_by(2) {
            tier.remove(&key(&s, &question(i))).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(tier.pending_tombstones(), 200);
        for i in 0..400 {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            let hit = tier.lookup(&req).await.map(|h| h.matched_text().to_owned());
            if i % 2 == 0 {
                assert_ne!(hit.as_deref(), Some(q.as_str()), "tombstoned entry {i} was served");
            } else {
                assert_eq!(hit.as_deref(), Some(q.as_str()), "live entry {i} was not found");
            }
        }
        let done = tier.maintain();
        assert_eq!(done.rebuilt, 1);
        assert_eq!(tier.pending_tombstones(), 0);
        assert_eq!(tier.semantic_stats().rebuilds, 1);
        for i in (1..400).step_by(2) {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            assert_eq!(
                tier.lookup(&req).await.map(|h| h.matched_text().to_owned()).as_deref(),
                Some(q.as_str())
            );
        }
    });
}

#[test]
fn rebuild_under_concurrent_lookups_never_fails_or_serves_a_removed_entry() {
    let clock = Arc::new(ManualClock::fixed());
    let s = scope("app");
    let t = tables();
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_indexing(Indexing::Manual)
        .with_index(IndexConfig::default().with_exact_below(256))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    const N: usize = 2000;
    rt().block_on(async {
        for i in 0..N {
            let q = question(i);
            let req = SemanticRequest::new(&s, &q).with_tables(&t);
            tier.insert(&req, key(&s, &q), value(&clock, Duration::from_secs(600), "orders")).await;
        }
    });
    tier.maintain();
    // Kept: i % 3 != 0. Removed: i % 3 == 0, once `removed` is set.
    let removed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let lookups = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (tier, s, removed, stop, failures, lookups) =
                (tier.clone(), s.clone(), removed.clone(), stop.clone(), failures.clone(), lookups.clone());
            std::thread::spawn(move || {
                let t = tables();
                let rt = rt();
                let mut i = r;
                while !stop.load(Ordering::Acquire) {
                    i = (i + 7) % N;
                    let q = question(i);
                    let was_removed = removed.load(Ordering::Acquire);
                    let req = SemanticRequest::new(&s, &q).with_tables(&t);
                    let hit = rt.block_on(tier.lookup(&req)).map(|h| h.matched_text().to_owned());
                    lookups.fetch_add(1, Ordering::Relaxed);
                    let served_removed = hit.as_deref().is_some_and(|m| {
                        let j = (0..N).find(|&j| question(j) == m).unwrap_or(usize::MAX);
                        j % 3 == 0
                    });
                    if was_removed && served_removed {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("served removed for {i}"));
                    }
                    if i % 3 != 0 && hit.as_deref() != Some(q.as_str()) {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("kept {i} missed: {hit:?}"));
                    }
                }
            })
        })
        .collect();
    rt().block_on(async {
        for i in (0..N).step_by(3) {
            tier.remove(&key(&s, &question(i))).await.unwrap_or_else(|e| panic!("{e}"));
        }
    });
    removed.store(true, Ordering::Release);
    let before = lookups.load(Ordering::Relaxed);
    let done = tier.maintain();
    assert_eq!(done.rebuilt, 1, "removing a third passes the default 25% share");
    // Keep the readers going on the new generation for a while, too.
    while lookups.load(Ordering::Relaxed) < before + 200 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap_or_else(|_| panic!("a reader panicked"));
    }
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    assert_eq!(tier.pending_tombstones(), 0);
}

/// An embedder that parks texts starting with "slow" until released.
#[derive(Debug)]
struct GatedEmbedder {
    local: LocalEmbedder,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Embedder for GatedEmbedder {
    fn dimension(&self) -> usize {
        self.local.dimension()
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        if texts.iter().any(|t| t.starts_with("slow")) {
            let _permit = self.gate.acquire().await;
        }
        self.local.embed(texts).await
    }
}

#[test]
fn an_insert_never_holds_up_a_lookup() {
    let clock = Arc::new(ManualClock::fixed());
    let s = scope("app");
    let t = tables();
    let embedder =
        Arc::new(GatedEmbedder { local: LocalEmbedder::default(), gate: tokio::sync::Semaphore::new(0) });
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(embedder.clone())
        .with_embed_deadline(Duration::from_secs(3600))
        .with_indexing(Indexing::Manual)
        .with_index(IndexConfig::default().with_exact_below(512))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        let req = SemanticRequest::new(&s, "orders per region").with_tables(&t);
        tier.insert(&req, key(&s, "a"), value(&clock, Duration::from_secs(60), "orders")).await;
        // An insert stuck in its embedder...
        let slow = SemanticRequest::new(&s, "slow orders per region").with_tables(&t);
        let stuck = tier.insert(&slow, key(&s, "slow"), value(&clock, Duration::from_secs(60), "orders"));
        tokio::pin!(stuck);
        assert!(futures_poll_once(&mut stuck).await.is_none(), "the insert is parked");
        // ...does not hold up lookups.
        assert!(tier.lookup(&req).await.is_some());
        embedder.gate.add_permits(1);
        assert_eq!(stuck.await, PutOutcome::Stored);

        // Entries are findable as soon as insert returns, before any graph contains them.
        for i in 0..2000 {
            let q = question(i);
            let r = SemanticRequest::new(&s, &q).with_tables(&t);
            tier.insert(&r, key(&s, &q), value(&clock, Duration::from_secs(60), "orders")).await;
            if i % 250 == 0 {
                let hit = tier.lookup(&r).await.map(|h| h.matched_text().to_owned());
                assert_eq!(hit.as_deref(), Some(q.as_str()), "fresh insert {i} not findable");
            }
        }
        assert!(tier.maintain().indexed > 1500, "graph building happens in maintenance, not in insert");
    });
}

/// Polls a future once; `Some` if it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[derive(Debug)]
struct ZeroEmbedder;

#[async_trait]
impl Embedder for ZeroEmbedder {
    fn dimension(&self) -> usize {
        16
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        Ok(texts.iter().map(|_| vec![0.0; 16]).collect())
    }
}

#[test]
fn a_zero_vector_is_a_failed_embedding_never_a_match() {
    let clock = Arc::new(ManualClock::fixed());
    let s = scope("app");
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(Arc::new(ZeroEmbedder))
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        let req = SemanticRequest::new(&s, "anything");
        assert_eq!(
            tier.insert(&req, key(&s, "a"), value(&clock, Duration::from_secs(60), "t")).await,
            PutOutcome::Rejected(Rejection::Degraded)
        );
        assert!(tier.lookup(&req).await.is_none());
        assert_eq!(tier.semantic_stats().embedder_failures, 1);
    });
}

/// A one-thread HTTP server on 127.0.0.1 that answers embedding requests. `mode` decides per
/// request number: answer as OpenAI, as Ollama, with a 500, or never.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reply {
    OpenAi,
    Ollama,
    Status500,
    Hang,
}

struct TestServer {
    url: String,
    requests: Arc<AtomicUsize>,
}

fn serve(dimension: usize, plan: impl Fn(usize) -> Reply + Send + 'static) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        let mut parked = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let body = read_request(&mut stream);
            let texts: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("input").cloned())
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let vectors: Vec<Vec<f32>> = texts
                .iter()
                .map(|t| LocalEmbedder::new(dimension).map(|e| e.embed_one(t)).unwrap_or_default())
                .collect();
            let (status, json) = match plan(n) {
                Reply::OpenAi => {
                    let data: Vec<_> = vectors
                        .iter()
                        .enumerate()
                        .rev()
                        .map(|(i, v)| serde_json::json!({"object": "embedding", "index": i, "embedding": v}))
                        .collect();
                    ("200 OK", serde_json::json!({"object": "list", "data": data}).to_string())
                }
                Reply::Ollama => {
                    ("200 OK", serde_json::json!({"model": "m", "embeddings": vectors}).to_string())
                }
                Reply::Status500 => ("500 Internal Server Error", "{}".to_owned()),
                Reply::Hang => {
                    parked.push(stream);
                    continue;
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            );
        }
    });
    TestServer { url: format!("http://{addr}"), requests }
}

fn read_request(stream: &mut std::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk) else { return Vec::new() };
        if n == 0 {
            return Vec::new();
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let Ok(n) = stream.read(&mut chunk) else { return Vec::new() };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return buf[end + 4..].to_vec();
        }
    }
}

#[test]
fn http_embedder_batches_caches_and_speaks_both_apis() {
    let server = serve(64, |_| Reply::OpenAi);
    let openai =
        HttpEmbedder::builder(&format!("{}/v1/embeddings", server.url), EmbeddingApi::OpenAi, "m", 64)
            .with_batch_size(32)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = (0..70).map(question).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    rt().block_on(async {
        let vectors = openai.embed(&refs).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vectors.len(), 70);
        let local = LocalEmbedder::new(64).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vectors[69], local.embed_one(&texts[69]), "answers are put back in input order");
        assert_eq!(server.requests.load(Ordering::SeqCst), 3, "70 texts in batches of 32");
        let again = openai.embed(&refs[..10]).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again[3], vectors[3]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 3, "cached texts cost no request");
    });
    let server = serve(64, |_| Reply::Ollama);
    let ollama = HttpEmbedder::builder(&format!("{}/api/embed", server.url), EmbeddingApi::Ollama, "m", 64)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        let vectors = ollama.embed(&["a", "b"]).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vectors.len(), 2);
        let wrong_dim =
            HttpEmbedder::builder(&format!("{}/api/embed", server.url), EmbeddingApi::Ollama, "m", 65)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
        let err = wrong_dim.embed(&["c"]).await.err().map(|e| e.kind());
        assert_eq!(err, Some(strata_l3::ErrorKind::Embedder));
    });
}

#[test]
fn embedder_errors_and_timeouts_are_misses_within_the_deadline() {
    // Request 0 (the insert) is answered; request 1 gets a 500; request 2 never gets an answer.
    let server = serve(64, |n| match n {
        0 => Reply::OpenAi,
        1 => Reply::Status500,
        _ => Reply::Hang,
    });
    let embedder =
        HttpEmbedder::builder(&format!("{}/v1/embeddings", server.url), EmbeddingApi::OpenAi, "m", 64)
            .with_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(ManualClock::fixed());
    let s = scope("app");
    let deadline = Duration::from_millis(1500);
    let tier = SemanticTier::builder()
        .with_clock(clock.clone())
        .with_embedder(Arc::new(embedder))
        .with_embed_deadline(deadline)
        .with_indexing(Indexing::Manual)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        let req = SemanticRequest::new(&s, "orders per region");
        assert_eq!(
            tier.insert(&req, key(&s, "a"), value(&clock, Duration::from_secs(60), "t")).await,
            PutOutcome::Stored
        );
        let asked = SemanticRequest::new(&s, "orders per regions");
        assert!(tier.lookup(&asked).await.is_none(), "http 500 is a miss");
        assert_eq!(tier.semantic_stats().embedder_failures, 1);
        let started = Instant::now();
        let asked = SemanticRequest::new(&s, "order per region");
        assert!(tier.lookup(&asked).await.is_none(), "a hung embedder is a miss");
        let took = started.elapsed();
        // The embedder's own timeout is 30 s: only the tier's deadline can end the wait this early.
        assert!(took >= deadline && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(tier.semantic_stats().embedder_timeouts, 1);
    });
}
