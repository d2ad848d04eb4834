//! L3 benchmarks: hybrid/HNSW lookups against an exact scan of the same vectors, sustained
//! inserts at 100k entries with lookup latency, and the local embedder's cost per text.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use strata_l3::{IndexConfig, LocalEmbedder, VectorIndex};

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/mod.rs"]
mod common;
use common::{near_duplicate, Mixture, Rng};

const DIM: usize = 128;

fn percentile(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort_unstable();
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

fn build(points: &[Vec<f32>], config: IndexConfig) -> (VectorIndex, Duration) {
    let index = VectorIndex::new(DIM, config).unwrap_or_else(|e| panic!("{e}"));
    for (i, p) in points.iter().enumerate() {
        index.insert(i as u64, p).unwrap_or_else(|e| panic!("{e}"));
    }
    let started = Instant::now();
    index.build_pending();
    (index, started.elapsed())
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

fn lookups(c: &mut Criterion) {
    let mut rng = Rng::new(42);
    let mixture = Mixture::new(&mut rng, DIM, 300, 16, 0.6);
    let all = mixture.points(&mut rng, 100_000);
    let mut group = c.benchmark_group("lookup");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    println!("size      hybrid_p50   hybrid_p99   exact_p50    exact_p99    speedup(p50)  build/s");
    for size in [1_000usize, 4_000, 16_000, 100_000] {
        let points = &all[..size];
        let (index, took) = build(points, IndexConfig::default());
        let queries: Vec<Vec<f32>> =
            (0..500).map(|_| near_duplicate(&mut rng, &points[rng.below(size)], 0.93)).collect();
        let hybrid = latencies(&index, &queries, false);
        let exact = latencies(&index, &queries, true);
        let (h50, h99) = (percentile(hybrid.clone(), 0.5), percentile(hybrid, 0.99));
        let (e50, e99) = (percentile(exact.clone(), 0.5), percentile(exact, 0.99));
        let rate = if took.is_zero() { f64::NAN } else { size as f64 / took.as_secs_f64() };
        println!(
            "{size:<9} {h50:>10.1?} {h99:>12.1?} {e50:>12.1?} {e99:>12.1?} {:>12.2}x {rate:>9.0}",
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
}

fn sustained_inserts(_c: &mut Criterion) {
    let mut rng = Rng::new(43);
    let mixture = Mixture::new(&mut rng, DIM, 300, 16, 0.6);
    let base = mixture.points(&mut rng, 100_000);
    let (index, _) = build(&base, IndexConfig::default());
    let index = Arc::new(index);
    let extra = mixture.points(&mut rng, 20_000);
    let queries: Vec<Vec<f32>> =
        (0..2000).map(|_| near_duplicate(&mut rng, &base[rng.below(base.len())], 0.93)).collect();
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
                if appended % 256 == 0 {
                    indexed.fetch_add(index.build_pending() as u64, Ordering::Relaxed);
                }
            }
            indexed.fetch_add(index.build_pending() as u64, Ordering::Relaxed);
            (appended, started.elapsed())
        })
    };
    let busy = latencies(&index, &queries, false);
    let busy2 = latencies(&index, &queries, false);
    stop.store(true, Ordering::Relaxed);
    let (appended, took) = writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    let busy: Vec<Duration> = busy.into_iter().chain(busy2).collect();
    println!(
        "sustained: {appended} inserts (append + graph) in {took:.2?} = {:.0}/s at 100k; lookup p99 quiet {:.1?}, during inserts {:.1?} (p50 {:.1?})",
        appended as f64 / took.as_secs_f64(),
        percentile(quiet, 0.99),
        percentile(busy.clone(), 0.99),
        percentile(busy, 0.5),
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

criterion_group!(benches, lookups, sustained_inserts, embedder);
criterion_main!(benches);
