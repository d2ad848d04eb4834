//! Fail-open under faults, against redis-server processes these tests start, kill, restart and pause themselves.
//!
//! Timings are printed (run with `--nocapture` to see them); the only timing asserted is the
//! deadline bound itself, with slack for a loaded debug build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{key, noise, raw_connection, result, RedisServer};
use strata_core::{CacheTier, PutOutcome, Rejection};
use strata_l2::{BreakerState, RedisStorage, WarmTier};

const DEADLINE: Duration = Duration::from_millis(20);
/// Scheduling slack on a shared 2-core machine running a debug build.
const SLACK: Duration = Duration::from_millis(150);
const KEYS: u64 = 64;

fn tier(url: &str, prefix: &str) -> WarmTier {
    let storage = RedisStorage::standalone(url).with_key_prefix(prefix).build().unwrap();
    WarmTier::builder(Arc::new(storage))
        .with_deadline(DEADLINE)
        .with_breaker_failure_threshold(5)
        .with_breaker_cooldown(Duration::from_millis(100))
        .build()
        .unwrap()
}

#[derive(Clone, Copy)]
struct Call {
    start: Instant,
    elapsed: Duration,
    hit: bool,
}

fn summarize(label: &str, calls: &[Call]) -> Duration {
    let mut times: Vec<Duration> = calls.iter().map(|c| c.elapsed).collect();
    times.sort();
    let max = times.last().copied().unwrap_or_default();
    let p50 = times.get(times.len() / 2).copied().unwrap_or_default();
    let p99 = times.get(times.len() * 99 / 100).copied().unwrap_or_default();
    let hits = calls.iter().filter(|c| c.hit).count();
    eprintln!(
        "[l2 faults] {label}: {} calls, {hits} hits, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        calls.len()
    );
    max
}

/// Waits until a write then a read through the tier hit again; returns how long that took.
async fn time_to_recover(l2: &WarmTier, since: Instant) -> Duration {
    loop {
        if l2.put(&key(10_000), result(&b"probe"[..])).await.unwrap() == PutOutcome::Stored
            && l2.get(&key(10_000)).await.unwrap().is_some()
        {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(15), "the tier did not recover: {:?}", l2.health());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_workload_gives_misses_within_the_deadline_then_recovers() {
    let mut server = RedisServer::start();
    let l2 = Arc::new(tier(&server.url(), "strata-test:faults:"));
    for n in 0..KEYS {
        assert_eq!(l2.put(&key(n), result(vec![n as u8; 512])).await.unwrap(), PutOutcome::Stored);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let (l2, stop, calls) = (l2.clone(), stop.clone(), calls.clone());
        workers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(SeqCst) {
                n = (n + 7) % KEYS;
                let start = Instant::now();
                // Any error reaching the caller fails the test here.
                let hit = l2.get(&key(n)).await.unwrap().is_some();
                calls.lock().unwrap().push(Call { start, elapsed: start.elapsed(), hit });
                if !hit {
                    // Fill on a miss, as a caller would after asking the database.
                    let start = Instant::now();
                    l2.put(&key(n), result(vec![n as u8; 512])).await.unwrap();
                    calls.lock().unwrap().push(Call { start, elapsed: start.elapsed(), hit: false });
                }
                tokio::task::yield_now().await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let down_health = l2.health();
    let restarted_at = Instant::now();
    server.restart();
    let restart_took = restarted_at.elapsed();
    // The restarted server is empty (no persistence): recovery means writes and reads work again.
    let recovered = time_to_recover(&l2, restarted_at).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let calls = calls.lock().unwrap().clone();
    let before: Vec<Call> = calls.iter().copied().filter(|c| c.start + c.elapsed < killed_at).collect();
    let down: Vec<Call> =
        calls.iter().copied().filter(|c| c.start > killed_at && c.start + c.elapsed < restarted_at).collect();
    let after: Vec<Call> = calls.iter().copied().filter(|c| c.start > restarted_at + recovered).collect();
    summarize("healthy", &before);
    let down_max = summarize("redis killed", &down);
    summarize("after recovery", &after);
    eprintln!("[l2 faults] while down: {down_health:?}");
    eprintln!("[l2 faults] redis-server restart took {restart_took:?}; tier recovered {recovered:?} after restart began");

    assert!(before.iter().any(|c| c.hit), "hits before the fault");
    assert!(down.len() > 100, "the workload kept running while redis was down: {}", down.len());
    assert!(down.iter().all(|c| !c.hit), "nothing is served from a dead redis");
    assert!(down_max <= DEADLINE + SLACK, "a call took {down_max:?} while redis was down");
    assert_ne!(
        down_health.breaker,
        BreakerState::Closed,
        "open, or half-open with a probe in flight: {down_health:?}"
    );
    assert!(down_health.short_circuited > 0 && down_health.errors > 0, "{down_health:?}");
    assert!(after.iter().any(|c| c.hit), "hits again after recovery");
    assert_eq!(l2.health().breaker, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_times_calls_out_at_the_deadline() {
    let server = RedisServer::start();
    let l2 = tier(&server.url(), "strata-test:pause:");
    l2.put(&key(1), result(&b"one"[..])).await.unwrap();
    assert!(l2.get(&key(1)).await.unwrap().is_some());

    let mut admin = raw_connection(&server.url()).await;
    let pause = Duration::from_millis(1500);
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let paused_at = Instant::now();

    let mut timed_out = Vec::new();
    let mut short_circuited = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        assert_eq!(l2.get(&key(1)).await.unwrap(), None);
        let elapsed = start.elapsed();
        if l2.health().timeouts as usize > timed_out.len() {
            timed_out.push(elapsed);
        } else {
            short_circuited.push(elapsed);
        }
    }
    eprintln!("[l2 faults] CLIENT PAUSE: timed-out calls took {timed_out:?}; short-circuited calls took {short_circuited:?}");
    assert_eq!(timed_out.len(), 5, "the breaker opens after 5 timeouts");
    for t in &timed_out {
        assert!(*t >= DEADLINE && *t <= DEADLINE + SLACK, "a paused call took {t:?}");
    }
    assert!(short_circuited.iter().all(|t| *t < DEADLINE), "{short_circuited:?}");
    assert_eq!(l2.health().breaker, BreakerState::Open);

    // Once the pause ends, a probe closes the breaker and the value is served again.
    loop {
        if l2.get(&key(1)).await.unwrap().is_some() {
            break;
        }
        assert!(paused_at.elapsed() < pause + Duration::from_secs(10), "no recovery: {:?}", l2.health());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "[l2 faults] CLIENT PAUSE {pause:?}: served again {:?} after the pause began",
        paused_at.elapsed()
    );
    assert_eq!(l2.health().breaker, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_drops_writes_but_keeps_serving_reads() {
    let server = RedisServer::start_with_args(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let l2 = tier(&server.url(), "strata-test:oom:");
    assert_eq!(l2.put(&key(0), result(noise(1000, 1))).await.unwrap(), PutOutcome::Stored);
    let mut refused = 0;
    for n in 1..400u64 {
        let outcome = l2.put(&key(n), result(noise(64 * 1024, n))).await.unwrap();
        if outcome == PutOutcome::Rejected(Rejection::Degraded) {
            refused += 1;
            if refused == 20 {
                break;
            }
        }
    }
    let health = l2.health();
    eprintln!("[l2 faults] redis OOM: {refused} writes refused; {health:?}");
    assert_eq!(refused, 20, "a full redis refuses writes: {health:?}");
    assert_eq!(health.breaker, BreakerState::Closed, "a refusing redis is up: reads keep going");
    assert_eq!(health.breaker_opens, 0);
    assert!(health.errors >= 20 && health.dropped_writes >= 20, "{health:?}");
    assert!(l2.get(&key(0)).await.unwrap().is_some(), "reads are still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_build_gives_counted_misses_then_serves_once_it_starts() {
    let mut server = RedisServer::start();
    // Nothing listens on the port until the server is restarted there.
    server.kill();
    let storage =
        RedisStorage::standalone(server.url()).with_key_prefix("strata-test:down-at-build:").build();
    let storage = match storage {
        Ok(storage) => storage,
        Err(e) => panic!("building against a redis that is down must not fail: {e}"),
    };
    let l2 = WarmTier::builder(Arc::new(storage))
        .with_deadline(DEADLINE)
        .with_breaker_failure_threshold(5)
        .with_breaker_cooldown(Duration::from_millis(100))
        .build()
        .unwrap();

    let mut calls = Vec::new();
    for n in 0..20 {
        let start = Instant::now();
        let found = l2.get(&key(n)).await.unwrap();
        calls.push(Call { start, elapsed: start.elapsed(), hit: found.is_some() });
        let start = Instant::now();
        let outcome = l2.put(&key(n), result(&b"value"[..])).await.unwrap();
        calls.push(Call { start, elapsed: start.elapsed(), hit: false });
        assert_eq!(outcome, PutOutcome::Rejected(Rejection::Degraded));
    }
    let down_max = summarize("redis down at build", &calls);
    let health = l2.health();
    let stats = l2.stats();
    eprintln!("[l2 faults] redis down at build: {health:?}; {stats:?}");
    assert!(calls.iter().all(|c| !c.hit));
    assert!(down_max <= DEADLINE + SLACK, "a call took {down_max:?} while redis was down");
    assert_eq!(stats.misses, 20, "every failed read is a miss: {stats:?}");
    assert!(health.errors >= 5 && health.dropped_writes == 20, "{health:?}");
    assert!(health.breaker_opens >= 1, "{health:?}");

    let started_at = Instant::now();
    server.restart();
    let recovered = time_to_recover(&l2, started_at).await;
    eprintln!("[l2 faults] redis started after the build: served {recovered:?} after it began to start");
    assert_eq!(l2.health().breaker, BreakerState::Closed);
}
