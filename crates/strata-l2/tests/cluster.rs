//! The warm tier on a 3-node Redis Cluster these tests start: keys spread over slots, and one node killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{key, raw_connection, redis_cli, result, RedisServer};
use strata_core::{CacheTier, PutOutcome};
use strata_l2::{RedisStorage, WarmTier};

const KEYS: u64 = 90;
const DEADLINE: Duration = Duration::from_millis(50);
const SLACK: Duration = Duration::from_millis(150);

async fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    redis_cli(&args);
    // Wait until every node agrees the cluster is up.
    let start = Instant::now();
    for node in &nodes {
        loop {
            let info = redis_cli(&["-p", &node.port.to_string(), "cluster", "info"]);
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "cluster did not come up: {info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_slots_and_a_dead_node_only_loses_its_own() {
    let mut nodes = start_cluster().await;
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let prefix = "strata-test:cluster:";
    let storage = RedisStorage::cluster(urls.clone()).with_key_prefix(prefix).build().unwrap();
    // The breaker counts consecutive failures; with a third of the keys on a dead node a run of
    // failures can open it and turn healthy keys into misses for a cool-down. This test checks
    // routing, so it sets the threshold above the key count (see the crate docs on the breaker).
    let l2 = WarmTier::builder(Arc::new(storage))
        .with_deadline(DEADLINE)
        .with_breaker_failure_threshold(KEYS as u32 + 1)
        .build()
        .unwrap();

    // Warm-up: the first calls discover the slot map.
    let start = Instant::now();
    while l2.put(&key(0), result(&b"0"[..])).await.unwrap() != PutOutcome::Stored {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cluster never accepted a write: {:?}",
            l2.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..KEYS {
        assert_eq!(l2.put(&key(n), result(vec![n as u8; 256])).await.unwrap(), PutOutcome::Stored, "key {n}");
    }
    for n in 0..KEYS {
        assert!(l2.get(&key(n)).await.unwrap().is_some(), "key {n}");
    }
    let batch = l2.get_many(&(0..KEYS).map(key).collect::<Vec<_>>()).await.unwrap();
    assert!(batch.iter().all(Option::is_some), "MGET across slots");

    // Which node holds which key, asked of each node directly.
    let mut owner = vec![usize::MAX; KEYS as usize];
    for (i, url) in urls.iter().enumerate() {
        let mut conn = raw_connection(url).await;
        for n in 0..KEYS {
            let exists: bool = redis::cmd("EXISTS")
                .arg(format!("{prefix}{}", key(n).digest()))
                .query_async(&mut conn)
                .await
                .unwrap_or(false);
            if exists {
                owner[n as usize] = i;
            }
        }
    }
    assert!(owner.iter().all(|&o| o < 3), "every key lives on one node: {owner:?}");
    for i in 0..3 {
        assert!(owner.iter().filter(|&&o| o == i).count() >= 10, "keys spread over the nodes: {owner:?}");
    }

    // Clearing walks every primary's keys under the prefix.
    l2.clear().await.unwrap();
    for n in 0..KEYS {
        assert!(l2.get(&key(n)).await.unwrap().is_none(), "key {n} cleared");
    }
    for n in 0..KEYS {
        assert_eq!(l2.put(&key(n), result(vec![n as u8; 256])).await.unwrap(), PutOutcome::Stored, "key {n}");
    }

    let victim = 1;
    nodes[victim].kill();
    let killed_at = Instant::now();
    let (mut lost, mut kept, mut slowest) = (0, 0, Duration::ZERO);
    for n in 0..KEYS {
        let start = Instant::now();
        let found = l2.get(&key(n)).await.unwrap();
        slowest = slowest.max(start.elapsed());
        if owner[n as usize] == victim {
            assert!(found.is_none(), "key {n} lived on the dead node");
            lost += 1;
        } else {
            assert!(found.is_some(), "key {n} lives on a live node: {:?}", l2.health());
            kept += 1;
        }
    }
    eprintln!(
        "[l2 cluster] node killed: {lost} keys missed, {kept} still hit, slowest call {slowest:?}, pass took {:?}; {:?}",
        killed_at.elapsed(),
        l2.health()
    );
    assert!(slowest <= DEADLINE + SLACK, "{slowest:?}");
}
