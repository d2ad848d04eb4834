//! L3 benchmarks: hybrid/HNSW lookups against an exact scan of the same vectors, sustained
//! inserts at 100k entries with lookup latency, and the cost of embedding a question with the
//! local n-gram embedder and with the all-MiniLM-L6-v2 model (feature `minilm`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use strata_l3::{IndexConfig, LocalEmbedder, VectorIndex};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{near_duplicate, Mixture, Rng};

const DIM: usize = 128;

fn percentile(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort_unstable();
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

fn latencies(index: &VectorIndex, queries: &[Vec<f32>], exact: bool) -> Vec<Duration> {
    queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            let found = if exact { index.search_exact(q) } else { index.search(q) };
            black_box(found.ok());
            t.elapsed()
        })
        .collect()
}

/// The lookup comparison at growing sizes, then sustained inserts at 100k, on one index.
fn lookups_and_inserts(c: &mut Criterion) {
    let mut rng = Rng::new(42);
    let mixture = Mixture::new(&mut rng, DIM, 300, 16, 0.6);
    let all = mixture.points(&mut rng, 100_000);
    let index = Arc::new(VectorIndex::new(DIM, IndexConfig::default()).unwrap_or_else(|e| panic!("{e}")));
    let mut group = c.benchmark_group("lookup");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    println!("size      hybrid_p50   hybrid_p99    exact_p50    exact_p99  speedup(p50)  graph build/s");
    let mut inserted = 0;
    for size in [1_000usize, 4_000, 8_000, 16_000, 100_000] {
        for (i, p) in all.iter().enumerate().take(size).skip(inserted) {
            index.insert(i as u64, p).unwrap_or_else(|e| panic!("{e}"));
        }
        let started = Instant::now();
        let built = index.build_pending();
        let took = started.elapsed();
        let rate = if built == 0 { f64::NAN } else { built as f64 / took.as_secs_f64() };
        inserted = size;
        let queries: Vec<Vec<f32>> = (0..500)
            .map(|_| {
                let source = rng.below(size);
                near_duplicate(&mut rng, &all[source], 0.93)
            })
            .collect();
        let hybrid = latencies(&index, &queries, false);
        let exact = latencies(&index, &queries, true);
        let (h50, h99) = (percentile(hybrid.clone(), 0.5), percentile(hybrid, 0.99));
        let (e50, e99) = (percentile(exact.clone(), 0.5), percentile(exact, 0.99));
        println!(
            "{size:<9} {h50:>10.1?} {h99:>12.1?} {e50:>12.1?} {e99:>12.1?} {:>12.2}x {rate:>14.0}",
            e50.as_secs_f64() / h50.as_secs_f64()
        );
        let mut i = 0;
        group.bench_function(format!("hybrid/{size}"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(index.search(&queries[i]).ok())
            })
        });
        group.bench_function(format!("exact/{size}"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(index.search_exact(&queries[i]).ok())
            })
        });
    }
    group.finish();

    let extra = mixture.points(&mut rng, 10_000);
    let queries: Vec<Vec<f32>> = (0..1000)
        .map(|_| {
            let source = rng.below(all.len());
            near_duplicate(&mut rng, &all[source], 0.93)
        })
        .collect();
    let quiet = latencies(&index, &queries, false);
    let stop = Arc::new(AtomicBool::new(false));
    let indexed = Arc::new(AtomicU64::new(0));
    // Writer: appends (what an insert does) and indexes (what the background indexer does).
    let writer = {
        let (index, stop, indexed) = (index.clone(), stop.clone(), indexed.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut appended = 0u64;
            for (i, p) in extra.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                index.insert(200_000 + i as u64, p).unwrap_or_else(|e| panic!("{e}"));
                appended += 1;
                if appended.is_multiple_of(256) {
                    indexed.fetch_add(index.build_pending() as u64, Ordering::Relaxed);
                }
            }
            indexed.fetch_add(index.build_pending() as u64, Ordering::Relaxed);
            (appended, started.elapsed())
        })
    };
    let mut busy = Vec::new();
    while !writer.is_finished() {
        busy.extend(latencies(&index, &queries[..100], false));
    }
    stop.store(true, Ordering::Relaxed);
    let (appended, took) = writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    println!(
        "sustained at 100k: {appended} inserts (append + graph) in {took:.2?} = {:.0}/s; lookup p99 quiet {:.1?}, during inserts {:.1?} (p50 {:.1?}, {} lookups)",
        appended as f64 / took.as_secs_f64(),
        percentile(quiet, 0.99),
        percentile(busy.clone(), 0.99),
        percentile(busy.clone(), 0.5),
        busy.len(),
    );
}

fn embedder(c: &mut Criterion) {
    let embedder = LocalEmbedder::default();
    let mut rng = Rng::new(44);
    let texts: Vec<String> = (0..256).map(|_| common::question(&mut rng)).collect();
    let mut i = 0;
    c.bench_function("local_embedder/embed_one", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(embedder.embed_one(&texts[i]))
        })
    });
}

/// One short question through the model, the way the tier asks for it (`Embedder::embed`, so
/// the hop to a blocking thread is included), and a batch of 16.
#[cfg(feature = "minilm")]
fn minilm_embedder(c: &mut Criterion) {
    use strata_l3::{Embedder, MiniLmEmbedder};
    let Some(dir) = common::minilm_dir() else {
        println!(
            "minilm_embedder: skipped: STRATA_TEST_MINILM_DIR is not set (`cargo xtask bench` provides it)"
        );
        return;
    };
    let model = MiniLmEmbedder::load(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(45);
    let texts: Vec<String> = (0..256).map(|_| common::question(&mut rng)).collect();
    let embed = |text: &str| runtime.block_on(model.embed(&[text])).unwrap_or_else(|e| panic!("{e}"));
    let tokens: usize = texts.iter().map(|t| model.token_ids(t).len()).sum();
    let ngram = LocalEmbedder::default();
    let ngram_times: Vec<Duration> = texts
        .iter()
        .map(|t| {
            let started = Instant::now();
            black_box(ngram.embed_one(t));
            started.elapsed()
        })
        .collect();
    for t in texts.iter().take(16) {
        black_box(embed(t));
    }
    let times: Vec<Duration> = texts
        .iter()
        .map(|t| {
            let started = Instant::now();
            black_box(embed(t));
            started.elapsed()
        })
        .collect();
    let (p50, p99) = (percentile(times.clone(), 0.5), percentile(times, 0.99));
    println!(
        "RATIO minilm_embedder/embed_one: p50 {p50:.2?}, p99 {p99:.2?} per question ({:.1} tokens on average; goal p50 <= 5 ms); \
         n-gram embedder p50 {:.2?}",
        tokens as f64 / texts.len() as f64,
        percentile(ngram_times, 0.5),
    );

    let mut group = c.benchmark_group("minilm_embedder");
    group.sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    let mut i = 0;
    group.bench_function("embed_one", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(embed(&texts[i]))
        })
    });
    let batch: Vec<&str> = texts.iter().take(16).map(String::as_str).collect();
    group.bench_function("embed_batch_16", |b| {
        b.iter(|| black_box(runtime.block_on(model.embed(&batch)).unwrap_or_else(|e| panic!("{e}"))))
    });
    group.finish();
}

#[cfg(not(feature = "minilm"))]
fn minilm_embedder(_: &mut Criterion) {
    println!("minilm_embedder: skipped: built without the `minilm` feature");
}

criterion_group!(benches, embedder, minilm_embedder, lookups_and_inserts);
criterion_main!(benches);
