//! How long a commit made directly on PostgreSQL stays invisible through a proxy that follows the
//! WAL, under a background load of direct commits. Run by `cargo xtask bench wal`, which starts
//! the servers and the proxy; not a test.
//!
//! Each probe caches a row through the proxy (checked on the proxy's `/metrics`: the last read was
//! a hit), commits a new value directly, and reads through the proxy until it is served: the time
//! from the commit's acknowledgement to that read. Prints one `STALENESS` line.
//!
//! Usage: `wal_staleness PROXY_PORT HTTP_PORT PG_PORT RATE PROBES`

// A measurement that cannot go on reports it by panicking, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

async fn connect(port: u16) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=bench"), NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to port {port}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The sum of `strata_tier_hits_total` on the proxy's metrics endpoint.
fn hits(http_port: u16) -> u64 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("metrics request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("metrics answer");
    body.lines()
        .filter(|l| l.starts_with("strata_tier_hits_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or_else(|_| panic!("numeric arguments, not {a:?}")))
        .collect();
    let [proxy, http, pg, rate, probes] = args[..] else {
        panic!("usage: wal_staleness PROXY_PORT HTTP_PORT PG_PORT RATE PROBES");
    };
    let port = |p: u64| u16::try_from(p).expect("a port");
    let (proxy, http, pg) = (port(proxy), port(http), port(pg));
    let direct = connect(pg).await;
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS wal_probe, wal_load;
             CREATE TABLE wal_probe (k int PRIMARY KEY, v bigint);
             INSERT INTO wal_probe VALUES (1, 0);
             CREATE TABLE wal_load (k int PRIMARY KEY, v bigint);
             INSERT INTO wal_load SELECT g, 0 FROM generate_series(1, 10000) g",
        )
        .await
        .expect("setup");

    // The background load: `rate` single-row commits per second over four connections.
    let writers = 4u64;
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..writers {
        let client = connect(pg).await;
        let committed = committed.clone();
        let period = Duration::from_secs_f64(writers as f64 / rate.max(1) as f64);
        load.push(tokio::spawn(async move {
            let update = client.prepare("UPDATE wal_load SET v = v + 1 WHERE k = $1").await.expect("prepare");
            let mut tick = tokio::time::interval(period);
            let mut k = (w as i32) * 2_500;
            loop {
                tick.tick().await;
                k = k % 10_000 + 1;
                client.execute(&update, &[&k]).await.expect("load commit");
                committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }

    let through = connect(proxy).await;
    let read = through.prepare("SELECT v FROM wal_probe WHERE k = 1").await.expect("prepare read");
    let write = direct.prepare("UPDATE wal_probe SET v = $1 WHERE k = 1").await.expect("prepare write");
    let started = Instant::now();
    let load_before = committed.load(std::sync::atomic::Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut value = 0i64;
    let mut uncached = 0u32;
    while samples.len() < probes as usize {
        // Cached: the last read must have been a hit.
        let mut attempts = 0;
        loop {
            let seen: i64 = through.query_one(&read, &[]).await.expect("read").get(0);
            assert_eq!(seen, value, "the proxy served another value before the write");
            let before = hits(http);
            let seen: i64 = through.query_one(&read, &[]).await.expect("read").get(0);
            assert_eq!(seen, value);
            if hits(http) > before {
                break;
            }
            attempts += 1;
            if attempts > 200 {
                uncached += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        value += 1;
        direct.execute(&write, &[&value]).await.expect("direct write");
        let committed_at = Instant::now();
        loop {
            let seen: i64 = through.query_one(&read, &[]).await.expect("read").get(0);
            if seen == value {
                break;
            }
            assert!(committed_at.elapsed() < Duration::from_secs(30), "never saw the direct write");
        }
        samples.push(committed_at.elapsed().as_secs_f64() * 1e3);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let load_rate = (committed.load(std::sync::atomic::Ordering::Relaxed) - load_before) as f64 / elapsed;
    for task in load {
        task.abort();
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "STALENESS target_rate={rate} load_commits_per_s={load_rate:.0} probes={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} never_cached={uncached}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(0.0),
    );
}
