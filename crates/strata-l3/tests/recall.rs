//! Recall of the hybrid index at 10k and 100k entries: near-duplicate queries must find their
//! source (recall@1 >= 0.99) and fresh queries must agree with an exact scan (>= 0.95), on a
//! Gaussian mixture of 300 clusters and on the local embedder's vectors of generated questions.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::{near_duplicate, Mixture, Rng};
use strata_l3::{IndexConfig, LocalEmbedder, VectorIndex};

const QUERIES: usize = 300;

struct Figures {
    recall_at_1: f64,
    agreement: f64,
}

/// Recall@1 of near-duplicates (a tie in similarity with the source counts as found) and
/// top-1 agreement with the exact scan (the same similarity counts as agreeing).
fn measure(
    index: &VectorIndex,
    size: usize,
    rng: &mut Rng,
    near: &dyn Fn(&mut Rng, usize) -> Vec<f32>,
    fresh: &dyn Fn(&mut Rng) -> Vec<f32>,
) -> Figures {
    let mut found = 0;
    let mut agree = 0;
    for _ in 0..QUERIES {
        let source = rng.below(size);
        let q = near(rng, source);
        let hybrid = index.search(&q).unwrap_or_else(|e| panic!("{e}"));
        let exact = index.search_exact(&q).unwrap_or_else(|e| panic!("{e}"));
        if let (Some((id, s)), Some((_, best))) = (hybrid, exact) {
            if id == source as u64 || s.get() >= best.get() - 1e-6 {
                found += 1;
            }
        }
        let q = fresh(rng);
        let hybrid = index.search(&q).unwrap_or_else(|e| panic!("{e}"));
        let exact = index.search_exact(&q).unwrap_or_else(|e| panic!("{e}"));
        if let (Some((_, s)), Some((_, best))) = (hybrid, exact) {
            if s.get() >= best.get() - 1e-6 {
                agree += 1;
            }
        }
    }
    Figures { recall_at_1: found as f64 / QUERIES as f64, agreement: agree as f64 / QUERIES as f64 }
}

fn run(
    name: &str,
    dim: usize,
    points: &[Vec<f32>],
    near: &dyn Fn(&mut Rng, usize) -> Vec<f32>,
    fresh: &dyn Fn(&mut Rng) -> Vec<f32>,
) {
    // A small exact-scan size so the graph answers at 10k too (the default would scan 10k exactly).
    let index = VectorIndex::new(dim, IndexConfig::default().with_exact_below(1024))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(99);
    let mut inserted = 0;
    let mut failures = Vec::new();
    for size in [10_000usize, 100_000] {
        for (i, p) in points.iter().enumerate().take(size).skip(inserted) {
            index.insert(i as u64, p).unwrap_or_else(|e| panic!("{e}"));
        }
        inserted = size;
        let started = Instant::now();
        index.build_pending();
        let built = started.elapsed();
        let f = measure(&index, size, &mut rng, near, fresh);
        println!(
            "{name} at {size}: recall@1 (near-duplicates) {:.3}, top-1 agreement with exact {:.3}, graph build {built:.1?}",
            f.recall_at_1, f.agreement
        );
        if f.recall_at_1 < 0.99 || f.agreement < 0.95 {
            failures
                .push(format!("{name} at {size}: recall {:.3} agreement {:.3}", f.recall_at_1, f.agreement));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn gaussian_mixture_recall_at_10k_and_100k() {
    let mut rng = Rng::new(1);
    let mixture = Mixture::new(&mut rng, 128, 300, 16, 0.6);
    let points = mixture.points(&mut rng, 100_000);
    run("mixture", 128, &points, &|rng, i| near_duplicate(rng, &points[i], 0.93), &|rng| mixture.point(rng));
}

/// The question reworded: the two names swapped and filler words added, which the local
/// embedder sees as a near duplicate (the same words, different bigrams).
fn reworded(q: &str) -> String {
    let mut words: Vec<&str> = q.split(' ').collect();
    let n = words.len();
    words.swap(n - 6, n - 5);
    format!("please show me the {}?", words.join(" "))
}

#[test]
fn local_embedder_question_recall_at_10k_and_100k() {
    let embedder = LocalEmbedder::default();
    let mut rng = Rng::new(2);
    let mut seen = HashSet::new();
    let mut questions = Vec::with_capacity(100_000);
    while questions.len() < 100_000 {
        let q = common::question(&mut rng);
        if seen.insert(q.clone()) {
            questions.push(q);
        }
    }
    let points: Vec<Vec<f32>> = questions.iter().map(|q| embedder.embed_one(q)).collect();
    run(
        "questions",
        LocalEmbedder::DEFAULT_DIMENSION,
        &points,
        &|_, i| embedder.embed_one(&reworded(&questions[i])),
        &|rng| loop {
            let q = common::question(rng);
            if !seen.contains(&q) {
                break embedder.embed_one(&q);
            }
        },
    );
}
