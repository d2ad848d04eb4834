//! The concurrent checker: writers commit and bump, readers look up and fill, and no lookup may
//! return a result older than a write whose bump completed before the lookup began.

// A test reports failure by panicking: unwrap is how it says "this must work".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata::{KeyScope, Loaded, QueryCache, Request, SettingsDigest, Source, WriteEffect};
use strata_core::TableName;
use strata_l1::HotTier;
use strata_l2::{MemoryStorage, WarmTier};

const TABLES: usize = 3;

/// A model database: each table holds one counter, changed by committed writes.
struct ModelDb {
    tables: Vec<Mutex<u64>>,
}

/// A small deterministic generator per task, so a failing seed reproduces its schedule choices.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

async fn yield_a_few(rng: &mut Lcg) {
    for _ in 0..rng.next() % 4 {
        tokio::task::yield_now().await;
    }
}

fn cache() -> QueryCache {
    let l2 = WarmTier::builder(Arc::new(MemoryStorage::builder().build().unwrap()))
        .with_deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    QueryCache::builder()
        .with_l1(HotTier::builder().with_capacity_bytes(1 << 20).build().unwrap())
        .with_l2(l2)
        .with_default_ttl(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// One run of the checker. Returns (hits, reads, writes) so callers can see it was not vacuous.
async fn run(seed: u64) -> (u64, u64, u64) {
    let cache = cache();
    let db = Arc::new(ModelDb { tables: (0..TABLES).map(|_| Mutex::new(0)).collect() });
    // The highest value of each table whose write's bump has completed.
    let bumped: Arc<Vec<AtomicU64>> = Arc::new((0..TABLES).map(|_| AtomicU64::new(0)).collect());
    let hits = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    for w in 0..2u64 {
        let (cache, db, bumped) = (cache.clone(), db.clone(), bumped.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed * 1000 + w);
            for _ in 0..60 {
                let t = (rng.next() % TABLES as u64) as usize;
                let value = {
                    let mut v = db.tables[t].lock().unwrap();
                    *v += 1;
                    *v
                };
                // The write is committed; the bump comes after it, as the proxy does.
                yield_a_few(&mut rng).await;
                cache.invalidate(&WriteEffect::Tables(vec![TableName::new(format!("t{t}"))])).await.unwrap();
                bumped[t].fetch_max(value, SeqCst);
                yield_a_few(&mut rng).await;
            }
        }));
    }

    for r in 0..6u64 {
        let (cache, db, bumped, hits, reads) =
            (cache.clone(), db.clone(), bumped.clone(), hits.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed * 1000 + 100 + r);
            let scope = KeyScope::new("db", "app", SettingsDigest::default());
            for _ in 0..150 {
                let t = (rng.next() % TABLES as u64) as usize;
                let sql = format!("SELECT v FROM public.t{t}");
                let required = bumped[t].load(SeqCst);
                let mut load_rng = Lcg(rng.next());
                let db = db.clone();
                let answer = cache
                    .get_or_fill(&Request::new(&scope, &sql), || async move {
                        let value = *db.tables[t].lock().unwrap();
                        // A slow query: the value read may be overtaken by writes before the fill lands.
                        yield_a_few(&mut load_rng).await;
                        yield_a_few(&mut load_rng).await;
                        Ok::<_, std::convert::Infallible>(Loaded {
                            payload: Bytes::from(value.to_string()),
                            row_count: 1,
                        })
                    })
                    .await
                    .unwrap();
                let seen: u64 = std::str::from_utf8(&answer.payload).unwrap().parse().unwrap();
                assert!(
                    seen >= required,
                    "seed {seed}: table t{t} returned {seen} from {:?}, but the write of {required} was bumped before the lookup began",
                    answer.source
                );
                if matches!(answer.source, Source::Cache(_)) {
                    hits.fetch_add(1, SeqCst);
                }
                reads.fetch_add(1, SeqCst);
                yield_a_few(&mut rng).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("no task panicked");
    }
    (hits.load(SeqCst), reads.load(SeqCst), 120)
}

#[test]
fn no_lookup_returns_a_result_older_than_a_completed_bump_over_many_seeds() {
    let mut total_hits = 0;
    for seed in 0..64 {
        // A multi-threaded runtime: tasks really run in parallel on the two cores, and the
        // scheduler interleaves them differently on every seed.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(3).enable_all().build().unwrap();
        let (hits, reads, _) = rt.block_on(run(seed));
        assert_eq!(reads, 6 * 150);
        total_hits += hits;
    }
    // The check is only meaningful if the cache really served results.
    assert!(total_hits > 64 * 100, "too few hits to exercise the cache: {total_hits}");
}
