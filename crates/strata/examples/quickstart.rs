//! `cargo run -p strata --example quickstart`: the cache at work with no external service
//! (L1, the in-memory L2, and L3 with the local embedder), printing what it does.

use std::time::Duration;

use bytes::Bytes;
use strata::{KeyScope, Loaded, QueryCache, Request, SettingsDigest, Source};
use strata_l1::HotTier;
use strata_l2::{MemoryStorage, WarmTier};
use strata_l3::SemanticTier;

/// Stands in for PostgreSQL: counts the queries it is asked.
struct FakeDatabase {
    queries: std::sync::atomic::AtomicU64,
}

impl FakeDatabase {
    async fn run(&self, sql: &str, answer: &str) -> Result<Loaded, std::convert::Infallible> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        println!("    database ran: {}", sql.lines().last().unwrap_or(sql).trim());
        Ok(Loaded { payload: Bytes::from(answer.to_owned()), row_count: 1 })
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Cache(tier) => format!("served from {tier}"),
        Source::Database => "went to the database".to_owned(),
        Source::Bypassed(reason) => format!("bypassed the cache ({reason})"),
        other => format!("{other:?}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l2 = WarmTier::builder(std::sync::Arc::new(MemoryStorage::builder().build()?)).build()?;
    let cache = QueryCache::builder()
        .with_l1(HotTier::builder().with_capacity_bytes(64 << 20).build()?)
        .with_l2(l2)
        .with_l3(SemanticTier::builder().build()?)
        .with_default_ttl(Duration::from_secs(60))
        .build()?;
    let db = FakeDatabase { queries: Default::default() };
    let scope = KeyScope::new("shop", "app_user", SettingsDigest::of([("search_path", "public")]));

    let ask = |label: &'static str, sql: &'static str, answer: &'static str| {
        let (cache, db, scope) = (&cache, &db, &scope);
        async move {
            let req = Request::new(scope, sql);
            let got = cache.get_or_fill(&req, || db.run(sql, answer)).await.unwrap_or_else(|e| match e {});
            println!("{label:<44} -> {:?}: {}", String::from_utf8_lossy(&got.payload), describe(&got.source));
        }
    };

    println!("Exact caching, invalidated by writes:");
    ask("first read of user 42", "SELECT name FROM users WHERE id = 42", "alice").await;
    ask("same read again", "SELECT name FROM users WHERE id = 42", "alice").await;
    ask("another parameter value", "SELECT name FROM users WHERE id = 43", "bob").await;
    cache.invalidate_sql("UPDATE users SET name = 'alicia' WHERE id = 42").await?;
    println!("  (UPDATE users ... committed: every cached read of users is now unreachable)");
    ask("read after the write", "SELECT name FROM users WHERE id = 42", "alicia").await;
    ask("a volatile function", "SELECT name, now() FROM users WHERE id = 42", "alicia, 12:00").await;

    println!("\nSemantic caching (opt-in with the `semantic` hint):");
    ask(
        "question asked",
        "/* strata: semantic, intent=\"how many orders did alice place in week 47\" */\nSELECT count(*) FROM orders WHERE customer = 'alice' AND week = 47",
        "12",
    )
    .await;
    ask(
        "same question, other words",
        "/* strata: semantic, intent=\"how many orders did alice place during week 47\" */\nSELECT count(*) FROM orders WHERE week = 47 AND customer = 'alice'",
        "12",
    )
    .await;
    ask(
        "similar words, another customer",
        "/* strata: semantic, intent=\"how many orders did bob place during week 47\" */\nSELECT count(*) FROM orders WHERE week = 47 AND customer = 'bob'",
        "3",
    )
    .await;

    println!(
        "\nThe database ran {} queries for 8 requests.",
        db.queries.load(std::sync::atomic::Ordering::SeqCst)
    );
    for (tier, stats) in cache.tier_stats() {
        println!(
            "  {tier}: {} hits, {} misses, {} entries, {} bytes",
            stats.hits, stats.misses, stats.entries, stats.bytes
        );
    }
    Ok(())
}
