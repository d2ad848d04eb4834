//! Benchmarks of the warm tier, each against a reference measured in the same run, printing the ratio.
//!
//! - L2-Redis hit vs a raw `redis` GET of the same payload (1 KiB, 64 KiB) on the same server.
//! - 64 concurrent tasks on one multiplexed connection vs `redis-benchmark -P 16 -t get` on the same server.
//! - Memory-backend hit vs a raw `quick_cache` get of the same bytes.
//!
//! Redis: the bench starts its own redis-server (`STRATA_TEST_REDIS_SERVER`, else `redis-server` on
//! the PATH) so `redis-benchmark` writes nowhere shared; without one it uses `STRATA_TEST_REDIS_URL`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_core::{CacheKey, CacheTier, CachedResult, Clock, KeyScope, NowLookup, SettingsDigest};
use strata_l2::{MemoryStorage, RedisStorage, WarmTier};

/// Every (elapsed, iterations) criterion asked for, per benchmark, to print ratios at the end.
type Samples = Vec<(Duration, u64)>;
static MEASURED: Mutex<Vec<(String, Samples)>> = Mutex::new(Vec::new());
/// Criterion's default number of measurement samples.
const SAMPLES: usize = 100;

fn record(id: &str, elapsed: Duration, iters: u64) {
    let mut m = MEASURED.lock().unwrap();
    match m.iter_mut().find(|(name, _)| name == id) {
        Some((_, samples)) => samples.push((elapsed, iters)),
        None => m.push((id.to_owned(), vec![(elapsed, iters)])),
    }
}

/// Mean time per iteration over the last `samples` calls: criterion's measurement phase, after
/// its warm-up calls.
fn mean_ns_of_last(id: &str, samples: usize) -> f64 {
    let m = MEASURED.lock().unwrap();
    let Some((_, all)) = m.iter().find(|(name, _)| name == id) else { return f64::NAN };
    let last = &all[all.len().saturating_sub(samples)..];
    let (time, iters) = last.iter().fold((0u128, 0u64), |(t, n), (d, i)| (t + d.as_nanos(), n + i));
    time as f64 / iters as f64
}

fn mean_ns(id: &str) -> f64 {
    mean_ns_of_last(id, SAMPLES)
}

struct Server {
    url: String,
    host: String,
    port: u16,
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn server() -> Server {
    let binary = std::env::var("STRATA_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spawned = Command::new(&binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(child) = spawned {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        return Server {
            url: format!("redis://127.0.0.1:{port}/"),
            host: "127.0.0.1".into(),
            port,
            child: Some(child),
        };
    }
    let url = std::env::var("STRATA_TEST_REDIS_URL").expect(
        "no redis-server to start and STRATA_TEST_REDIS_URL unset: run `cargo xtask test` or install redis",
    );
    let info = redis::Client::open(url.as_str()).unwrap().get_connection_info().clone();
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        other => panic!("unsupported redis address {other:?}"),
    };
    Server { url, host, port, child: None }
}

fn key(n: u64) -> CacheKey {
    let scope = KeyScope::new("shop", "app", SettingsDigest::default());
    CacheKey::builder(&scope, b"SELECT * FROM orders WHERE customer = $1")
        .param(strata_core::TypeOid::INT8, strata_core::Format::Text, n.to_string().as_bytes())
        .build()
}

/// Incompressible bytes, so the stored value is as large as the raw one and the comparison is fair.
fn payload(len: usize) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn result(payload: Bytes) -> CachedResult {
    CachedResult::builder(payload)
        .with_created_at(SystemTime::now())
        .with_ttl(Duration::from_secs(3600))
        .build()
}

fn redis_tier(url: &str, prefix: &str) -> WarmTier {
    let storage = RedisStorage::standalone(url).with_key_prefix(prefix).build().unwrap();
    // A generous deadline: the bench measures speed, not the fail-open path.
    WarmTier::builder(Arc::new(storage)).with_deadline(Duration::from_secs(1)).build().unwrap()
}

fn hit_vs_raw_get(c: &mut Criterion, rt: &tokio::runtime::Runtime, srv: &Server) {
    let l2 = rt.block_on(async { redis_tier(&srv.url, "strata-bench:l2:") });
    let mut raw = rt.block_on(async {
        redis::Client::open(srv.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
    });
    let mut group = c.benchmark_group("l2_redis_hit");
    for size in [1024usize, 64 * 1024] {
        let k = key(size as u64);
        let p = payload(size);
        rt.block_on(async {
            assert!(l2.put(&k, result(p.clone())).await.unwrap() == strata_core::PutOutcome::Stored);
            assert!(l2.get(&k).await.unwrap().is_some());
            let () = redis::cmd("SET")
                .arg(format!("strata-bench:raw:{size}"))
                .arg(p.as_ref())
                .query_async(&mut raw)
                .await
                .unwrap();
        });
        group.throughput(Throughput::Bytes(size as u64));
        let id_l2 = format!("strata_l2_get/{size}");
        group.bench_function(BenchmarkId::new("strata_l2_get", size), |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let hit = l2.get(&k).await.unwrap();
                        assert!(hit.is_some());
                    }
                    start.elapsed()
                });
                record(&id_l2, elapsed, iters);
                elapsed
            })
        });
        let id_raw = format!("raw_redis_get/{size}");
        let raw_key = format!("strata-bench:raw:{size}");
        group.bench_function(BenchmarkId::new("raw_redis_get", size), |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let v: Option<Bytes> =
                            redis::cmd("GET").arg(&raw_key).query_async(&mut raw).await.unwrap();
                        assert!(v.is_some());
                    }
                    start.elapsed()
                });
                record(&id_raw, elapsed, iters);
                elapsed
            })
        });
    }
    group.finish();
    for size in [1024usize, 64 * 1024] {
        let (a, b) = (mean_ns(&format!("strata_l2_get/{size}")), mean_ns(&format!("raw_redis_get/{size}")));
        if a.is_nan() || b.is_nan() {
            continue; // filtered out on the command line
        }
        // Criterion measures the two one after the other, while the load of a shared machine drifts;
        // a paired run alternating small blocks of each gives a steadier ratio.
        let k = key(size as u64);
        let (mut ours, mut theirs) = (Duration::ZERO, Duration::ZERO);
        rt.block_on(async {
            for _ in 0..40 {
                let start = Instant::now();
                for _ in 0..50 {
                    assert!(l2.get(&k).await.unwrap().is_some());
                }
                ours += start.elapsed();
                let start = Instant::now();
                for _ in 0..50 {
                    let v: Option<Bytes> = redis::cmd("GET")
                        .arg(format!("strata-bench:raw:{size}"))
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    assert!(v.is_some());
                }
                theirs += start.elapsed();
            }
        });
        println!(
            "RATIO l2_redis_hit/{size}: criterion strata_l2_get {:.1} us / raw_redis_get {:.1} us = {:.3}x; \
             paired 2000 each: {:.1} us / {:.1} us = {:.3}x (goal <= 1.2x)",
            a / 1e3,
            b / 1e3,
            a / b,
            ours.as_nanos() as f64 / 2000.0 / 1e3,
            theirs.as_nanos() as f64 / 2000.0 / 1e3,
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
}

fn redis_benchmark_binary() -> PathBuf {
    if let Ok(cli) = std::env::var("STRATA_TEST_REDIS_CLI") {
        let beside = PathBuf::from(cli).with_file_name("redis-benchmark");
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("redis-benchmark")
}

/// Runs `redis-benchmark -P 16 -t get` against the server and returns its GET requests per second.
fn redis_benchmark_get_rps(srv: &Server, size: usize) -> Option<f64> {
    let out = Command::new(redis_benchmark_binary())
        .args(["-h", &srv.host, "-p", &srv.port.to_string(), "-P", "16", "-t", "set,get", "-n", "200000"])
        .args(["-d", &size.to_string(), "-q"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    // Lines look like `GET: 1234567.89 requests per second, p50=0.311 msec`.
    text.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("GET: "))
        .find_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
}

fn concurrent_throughput(c: &mut Criterion, rt: &tokio::runtime::Runtime, srv: &Server) {
    const TASKS: u64 = 64;
    const GETS_PER_TASK: u64 = 200;
    const SIZE: usize = 1024;
    let l2 = Arc::new(rt.block_on(async { redis_tier(&srv.url, "strata-bench:tput:") }));
    let keys: Arc<Vec<CacheKey>> = Arc::new((0..TASKS).map(key).collect());
    rt.block_on(async {
        for k in keys.iter() {
            l2.put(k, result(payload(SIZE))).await.unwrap();
        }
    });
    // redis-benchmark runs right before and right after our measurement, on the same server, and
    // the two are averaged: on a shared machine the load drifts during a run.
    let before = redis_benchmark_get_rps(srv, SIZE);
    let mut group = c.benchmark_group("l2_redis_throughput");
    group.throughput(Throughput::Elements(TASKS * GETS_PER_TASK));
    group.sample_size(20);
    group.bench_function("64_tasks_one_connection_1KiB", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = Vec::with_capacity(TASKS as usize);
                    for t in 0..TASKS as usize {
                        let (l2, keys) = (l2.clone(), keys.clone());
                        tasks.push(tokio::spawn(async move {
                            for i in 0..GETS_PER_TASK as usize {
                                let hit = l2.get(&keys[(t + i) % keys.len()]).await.unwrap();
                                assert!(hit.is_some());
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            });
            record("throughput", elapsed, iters * TASKS * GETS_PER_TASK);
            elapsed
        })
    });
    // For context only: the same workload with raw GETs through the redis crate (no tier), which
    // shows how much of the gap to redis-benchmark is the client library's own.
    let raw_conn = rt.block_on(async {
        let mut conn =
            redis::Client::open(srv.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        for t in 0..TASKS {
            let () = redis::cmd("SET")
                .arg(format!("strata-bench:tput-raw:{t}"))
                .arg(payload(SIZE).as_ref())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        conn
    });
    group.bench_function("raw_redis_64_tasks_one_connection_1KiB", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = Vec::with_capacity(TASKS as usize);
                    for t in 0..TASKS {
                        let mut conn = raw_conn.clone();
                        tasks.push(tokio::spawn(async move {
                            for i in 0..GETS_PER_TASK {
                                let v: Option<Bytes> = redis::cmd("GET")
                                    .arg(format!("strata-bench:tput-raw:{}", (t + i) % TASKS))
                                    .query_async(&mut conn)
                                    .await
                                    .unwrap();
                                assert!(v.is_some());
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            });
            record("throughput_raw", elapsed, iters * TASKS * GETS_PER_TASK);
            elapsed
        })
    });
    group.finish();
    let ours = 1e9 / mean_ns_of_last("throughput", 20);
    if ours.is_nan() {
        return; // filtered out on the command line
    }
    let after = redis_benchmark_get_rps(srv, SIZE);
    match before.zip(after) {
        Some((b, a)) => println!(
            "RATIO l2_redis_throughput: strata_l2 64 tasks {ours:.0} gets/s / redis-benchmark -P 16 -t get -d {SIZE} {:.0} gets/s \
             (before {b:.0}, after {a:.0}) = {:.3} (goal >= 0.5)",
            (a + b) / 2.0,
            ours / ((a + b) / 2.0)
        ),
        None => println!("RATIO l2_redis_throughput: strata_l2 {ours:.0} gets/s; redis-benchmark could not be run"),
    }
    let raw = 1e9 / mean_ns_of_last("throughput_raw", 20);
    println!(
        "CONTEXT l2_redis_throughput: raw redis crate GETs, same 64 tasks on one connection: {raw:.0} gets/s; strata_l2 / raw = {:.3}",
        ours / raw
    );
}

/// A clock read from an atomic that a thread refreshes every millisecond, as the integration
/// crate's coarse clock does (reading the OS clock costs about as much as a whole memory hit).
/// Written here because a tier's bench must not depend on another tier.
#[derive(Debug)]
struct TickingClock(Arc<AtomicU64>);

impl TickingClock {
    fn start() -> Self {
        let nanos = Arc::new(AtomicU64::new(epoch_nanos()));
        let ticker = Arc::downgrade(&nanos);
        std::thread::spawn(move || {
            while let Some(n) = ticker.upgrade() {
                n.store(epoch_nanos(), Relaxed);
                drop(n);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self(nanos)
    }
}

fn epoch_nanos() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Clock for TickingClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.0.load(Relaxed))
    }
}

fn memory_hit_vs_quick_cache(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    const SIZE: usize = 1024;
    let l2 = WarmTier::builder(Arc::new(MemoryStorage::builder().build().unwrap())).build().unwrap();
    let ticking: Arc<dyn Clock> = Arc::new(TickingClock::start());
    let storage = MemoryStorage::builder().with_clock(ticking.clone()).build().unwrap();
    let l2_ticking = WarmTier::builder(Arc::new(storage)).with_clock(ticking).build().unwrap();
    let k = key(1);
    let p = payload(SIZE);
    rt.block_on(async { l2.put(&k, result(p.clone())).await.unwrap() });
    rt.block_on(async { l2_ticking.put(&k, result(p.clone())).await.unwrap() });
    let raw: quick_cache::sync::Cache<String, Bytes> = quick_cache::sync::Cache::new(1024);
    let raw_key = k.digest().to_string();
    raw.insert(raw_key.clone(), p.clone());
    // The same keyed by the digest as a number, as the memory storage keys the tier's values.
    let raw_u128: quick_cache::sync::Cache<u128, Bytes> = quick_cache::sync::Cache::new(1024);
    raw_u128.insert(k.digest().as_u128(), p);

    let mut group = c.benchmark_group("l2_memory_hit");
    group.bench_function("strata_l2_memory_get", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let hit = l2.get(std::hint::black_box(&k)).await.unwrap();
                    assert!(hit.is_some());
                }
                start.elapsed()
            });
            record("memory", elapsed, iters);
            elapsed
        })
    });
    for (id, tier) in [("memory_now", &l2), ("memory_now_ticking", &l2_ticking)] {
        let name = match id {
            "memory_now" => "strata_l2_memory_get_now_system_clock",
            _ => "strata_l2_memory_get_now_ticking_clock",
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let hit = tier.get_now(std::hint::black_box(&k));
                    assert!(matches!(hit, NowLookup::Hit(_)));
                }
                let elapsed = start.elapsed();
                record(id, elapsed, iters);
                elapsed
            })
        });
    }
    group.bench_function("raw_quick_cache_get", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let hit = raw.get(std::hint::black_box(raw_key.as_str()));
                assert!(hit.is_some());
            }
            let elapsed = start.elapsed();
            record("quick_cache", elapsed, iters);
            elapsed
        })
    });
    group.bench_function("raw_quick_cache_get_u128_key", |b| {
        b.iter_custom(|iters| {
            let digest = k.digest().as_u128();
            let start = Instant::now();
            for _ in 0..iters {
                let hit = raw_u128.get(&std::hint::black_box(digest));
                assert!(hit.is_some());
            }
            let elapsed = start.elapsed();
            record("quick_cache_u128", elapsed, iters);
            elapsed
        })
    });
    group.finish();
    let (a, now, ticking, b) =
        (mean_ns("memory"), mean_ns("memory_now"), mean_ns("memory_now_ticking"), mean_ns("quick_cache"));
    let b128 = mean_ns("quick_cache_u128");
    if now.is_nan() || ticking.is_nan() || b.is_nan() {
        return; // filtered out on the command line
    }
    // The lead measured an L1 hit at 1.36-1.48x a raw quick_cache get of the same 1 KiB value.
    println!(
        "RATIO l2_memory_hit: get_now (ticking clock) {ticking:.0} ns / raw_quick_cache_get {b:.0} ns = {:.2}x \
         (= {:.2}-{:.2}x an L1 hit at 1.48-1.36x raw; goal <= 2x); get_now (system clock) {now:.0} ns = {:.2}x; \
         async get (system clock) {a:.0} ns = {:.2}x; get_now (ticking clock) / raw get with a u128 key {b128:.0} ns = {:.2}x",
        ticking / b,
        ticking / b / 1.48,
        ticking / b / 1.36,
        now / b,
        a / b,
        ticking / b128
    );
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let srv = server();
    hit_vs_raw_get(c, &rt, &srv);
    concurrent_throughput(c, &rt, &srv);
    memory_hit_vs_quick_cache(c, &rt);
}

criterion_group!(l2, benches);
criterion_main!(l2);
