//! `l1_get_hit` against a raw `quick_cache::sync::Cache::get` on the same keys and payloads.
//!
//! Criterion measures both; then an interleaved run of the two prints their ratio, so the ratio
//! comes from one run on one machine state rather than from two numbers taken minutes apart.

// A bench is not input-facing: a broken fixture should stop it loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_core::{CacheKey, CachedResult, Format, KeyScope, SettingsDigest, TableName, TypeOid};
use strata_l1::HotTier;

const KEYS: u64 = 10_000;
const PAYLOAD_BYTES: usize = 1024;

struct Fixture {
    keys: Vec<CacheKey>,
    digests: Vec<u128>,
    l1: HotTier,
    raw: quick_cache::sync::Cache<u128, Bytes>,
}

fn fixture() -> Fixture {
    let scope = KeyScope::new("bench", "bench", SettingsDigest::default());
    let keys: Vec<CacheKey> = (0..KEYS)
        .map(|n| {
            CacheKey::builder(&scope, b"SELECT * FROM t WHERE id = $1")
                .param(TypeOid::INT8, Format::Text, n.to_string().as_bytes())
                .build()
        })
        .collect();
    let digests: Vec<u128> = keys.iter().map(|k| k.digest().as_u128()).collect();
    let l1 = HotTier::builder().with_capacity_bytes(256 << 20).build().expect("valid config");
    let raw = quick_cache::sync::Cache::new(KEYS as usize * 2);
    for (key, digest) in keys.iter().zip(&digests) {
        let payload = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
        raw.insert(*digest, payload.clone());
        let result = CachedResult::builder(payload)
            .with_row_count(1)
            .with_dependency(TableName::new("t"), 1)
            .with_created_at(SystemTime::now())
            .with_ttl(Duration::from_secs(3600))
            .build();
        l1.insert(key, result);
    }
    Fixture { keys, digests, l1, raw }
}

fn l1_hit(f: &Fixture, i: usize) -> usize {
    f.l1.lookup(&f.keys[i % f.keys.len()]).map_or(0, |r| r.payload().len())
}

fn raw_hit(f: &Fixture, i: usize) -> usize {
    f.raw.get(&f.digests[i % f.digests.len()]).map_or(0, |p| p.len())
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    assert_eq!(l1_hit(&f, 1), PAYLOAD_BYTES, "the l1 fixture must hit");
    assert_eq!(raw_hit(&f, 1), PAYLOAD_BYTES, "the raw fixture must hit");
    let mut group = c.benchmark_group("l1");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("l1_get_hit_1KiB", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            black_box(l1_hit(&f, i))
        })
    });
    group.bench_function("raw_quick_cache_get_1KiB", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            black_box(raw_hit(&f, i))
        })
    });
    group.finish();
    print_ratio(&f);
}

/// Interleaves the two loops in short rounds and compares their medians.
fn print_ratio(f: &Fixture) {
    const ROUNDS: usize = 41;
    const OPS: usize = 200_000;
    let mut l1 = Vec::with_capacity(ROUNDS);
    let mut raw = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        l1.push(time_per_op(OPS, |i| l1_hit(f, i)));
        raw.push(time_per_op(OPS, |i| raw_hit(f, i)));
    }
    let (l1, raw) = (median(l1), median(raw));
    println!(
        "RATIO l1_get_hit_1KiB / raw_quick_cache_get_1KiB = {:.2} (l1 {:.1} ns, raw {:.1} ns; goal <= 1.5 and <= 100 ns)",
        l1 / raw,
        l1,
        raw
    );
}

fn time_per_op(ops: usize, mut f: impl FnMut(usize) -> usize) -> f64 {
    let start = Instant::now();
    let mut sum = 0usize;
    for i in 0..ops {
        sum = sum.wrapping_add(f(i.wrapping_mul(7919)));
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group!(benches, bench);
criterion_main!(benches);
