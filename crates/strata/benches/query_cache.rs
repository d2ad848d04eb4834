//! End-to-end L1 hit through `QueryCache` (SQL text and parameters in, payload out, including the
//! memoized analysis and the key derivation) against a raw `quick_cache` get of the same payload.

// A bench is not input-facing: a broken fixture should stop it loudly.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata::{KeyScope, Lookup, Param, QueryCache, Request, SettingsDigest};
use strata_core::TypeOid;
use strata_l1::HotTier;

const KEYS: usize = 1_000;
const SQL: &str = "SELECT id, name, email FROM users WHERE id = $1";

struct Fixture {
    cache: QueryCache,
    scope: KeyScope,
    ids: Vec<String>,
    raw: quick_cache::sync::Cache<u128, Bytes>,
    /// What an application would write by hand: a cache keyed by the SQL text and the values.
    by_text: quick_cache::sync::Cache<String, Bytes>,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cache = QueryCache::builder()
        .with_l1(HotTier::builder().with_capacity_bytes(64 << 20).build().expect("l1"))
        .with_default_ttl(Duration::from_secs(3600))
        .build()
        .expect("cache");
    let scope = KeyScope::new("bench", "app", SettingsDigest::of([("search_path", "public")]));
    let ids: Vec<String> = (0..KEYS).map(|i| i.to_string()).collect();
    let raw = quick_cache::sync::Cache::new(KEYS * 2);
    let by_text = quick_cache::sync::Cache::new(KEYS * 2);
    rt.block_on(async {
        for (i, id) in ids.iter().enumerate() {
            let params = [Param::text(TypeOid::INT4, id.as_bytes())];
            let req = Request::new(&scope, SQL).with_params(&params);
            let payload = Bytes::from(vec![b'r'; 256]);
            raw.insert(i as u128 * 0x9e37_79b9_7f4a_7c15, payload.clone());
            by_text.insert(text_key(id), payload.clone());
            match cache.lookup(&req).await {
                Lookup::Miss(ticket) => {
                    ticket.fill(payload, 1).await;
                }
                other => panic!("expected a miss while filling, got {other:?}"),
            }
        }
    });
    Fixture { cache, scope, ids, raw, by_text }
}

fn cache_hit(f: &Fixture, i: usize) -> usize {
    let params = [Param::text(TypeOid::INT4, f.ids[i % KEYS].as_bytes())];
    let req = Request::new(&f.scope, SQL).with_params(&params);
    // The L1 path never awaits: the first poll completes it, as inside any async caller. Polling
    // with a no-op waker measures the cache rather than an executor's enter/exit.
    let mut lookup = std::pin::pin!(f.cache.lookup(&req));
    match lookup.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Lookup::Hit(hit)) => hit.payload().len(),
        Poll::Ready(_) => 0,
        Poll::Pending => panic!("an L1 hit must complete on the first poll"),
    }
}

fn text_key(id: &str) -> String {
    let mut key = String::with_capacity(SQL.len() + 1 + id.len());
    key.push_str(SQL);
    key.push('\0');
    key.push_str(id);
    key
}

fn by_text_hit(f: &Fixture, i: usize) -> usize {
    f.by_text.get(&text_key(&f.ids[i % KEYS])).map_or(0, |p| p.len())
}

fn raw_hit(f: &Fixture, i: usize) -> usize {
    f.raw.get(&((i % KEYS) as u128 * 0x9e37_79b9_7f4a_7c15)).map_or(0, |p| p.len())
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    assert_eq!(cache_hit(&f, 3), 256, "the cache fixture must hit");
    assert_eq!(raw_hit(&f, 3), 256, "the raw fixture must hit");
    assert_eq!(by_text_hit(&f, 3), 256, "the by-text fixture must hit");
    let mut group = c.benchmark_group("query_cache");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("e2e_l1_hit", |b| {
        b.iter(|| {
            i = i.wrapping_add(7);
            black_box(cache_hit(&f, i))
        })
    });
    group.bench_function("raw_quick_cache_get_by_sql_text", |b| {
        b.iter(|| {
            i = i.wrapping_add(7);
            black_box(by_text_hit(&f, i))
        })
    });
    group.bench_function("raw_quick_cache_get", |b| {
        b.iter(|| {
            i = i.wrapping_add(7);
            black_box(raw_hit(&f, i))
        })
    });
    group.finish();

    const ROUNDS: usize = 31;
    const OPS: usize = 50_000;
    let (mut hit, mut by_text, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        hit.push(per_op(OPS, |i| cache_hit(&f, i)));
        by_text.push(per_op(OPS, |i| by_text_hit(&f, i)));
        raw.push(per_op(OPS, |i| raw_hit(&f, i)));
    }
    let (hit, by_text, raw) = (median(hit), median(by_text), median(raw));
    println!(
        "RATIO query_cache e2e_l1_hit / raw_quick_cache_get_by_sql_text = {:.2} (e2e {:.0} ns = {:.2} M lookups/s on one core, by text {:.0} ns; goal <= 3 and >= 2 M/s)",
        hit / by_text,
        hit,
        1e3 / hit,
        by_text
    );
    println!(
        "RATIO query_cache e2e_l1_hit / raw_quick_cache_get_precomputed_u128 = {:.2} (raw {:.0} ns: no key derivation at all)",
        hit / raw,
        raw
    );
}

fn per_op(ops: usize, mut f: impl FnMut(usize) -> usize) -> f64 {
    let start = Instant::now();
    let mut sum = 0;
    for i in 0..ops {
        sum += f(i.wrapping_mul(7));
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
