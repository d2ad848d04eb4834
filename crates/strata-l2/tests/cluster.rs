//! The warm tier on a 3-node Redis Cluster these tests start: keys spread over slots, and one node killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{key, raw_connection, redis_cli, result, RedisServer};
use strata_core::{CacheTier, PutOutcome};
use strata_l2::{BreakerState, RedisStorage, WarmTier};

const KEYS: u64 = 90;
const DEADLINE: Duration = Duration::from_millis(50);
const SLACK: Duration = Duration::from_millis(150);
/// The tier's default breaker cool-down.
const COOLDOWN: Duration = Duration::from_secs(1);

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
    // The default breaker settings (5 consecutive failures, 1 s cool-down): the tier keeps one
    // breaker per node, so the dead node's run of failures must not touch the others' keys.
    let l2 = WarmTier::builder(Arc::new(storage)).with_deadline(DEADLINE).build().unwrap();

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

    // The tier learns the slot map in the background; wait until every key's node is known
    // (one breaker per node shows in the health report).
    let start = Instant::now();
    while l2.health().nodes.len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "slot map never loaded: {:?}", l2.health());
        for n in 0..KEYS {
            l2.get(&key(n)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = l2.health();
    let node_names: Vec<String> = health.nodes.iter().map(|n| n.node.to_string()).collect();
    let mut expected: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    expected.sort();
    assert_eq!(node_names, expected, "one breaker per primary");
    assert!(health.nodes.iter().all(|n| n.breaker == BreakerState::Closed), "{health:?}");

    let victim = 1;
    let victim_node = format!("127.0.0.1:{}", nodes[victim].port);
    nodes[victim].kill();
    let killed_at = Instant::now();
    let keys: Vec<_> = (0..KEYS).map(key).collect();
    let lost_keys = owner.iter().filter(|&&o| o == victim).count();
    let mut order: Vec<u64> = (0..KEYS).collect();
    order.sort_by_key(|&n| owner[n as usize] != victim);
    let (mut passes, mut slowest, mut slowest_batch) = (0, Duration::ZERO, Duration::ZERO);
    // Passes over every key for more than three cool-downs: the dead node's breaker opens after
    // five failures, probes after each cool-down and reopens, while every other key hits.
    while passes < 4 || killed_at.elapsed() < 3 * COOLDOWN {
        passes += 1;
        // The dead node's keys first: a run of failures far longer than the threshold, right
        // before the live nodes' keys (one breaker for all would now turn them into misses).
        for n in order.iter().copied() {
            let start = Instant::now();
            let found = l2.get(&keys[n as usize]).await.unwrap();
            slowest = slowest.max(start.elapsed());
            if owner[n as usize] == victim {
                assert!(found.is_none(), "pass {passes}: key {n} lived on the dead node");
            } else {
                assert!(found.is_some(), "pass {passes}: key {n} lives on a live node: {:?}", l2.health());
            }
        }
        // A batch is split by node: the dead node's part misses, the rest hits.
        let start = Instant::now();
        let batch = l2.get_many(&keys).await.unwrap();
        slowest_batch = slowest_batch.max(start.elapsed());
        for (n, found) in batch.iter().enumerate() {
            assert_eq!(
                found.is_some(),
                owner[n] != victim,
                "pass {passes}: batch key {n}: {:?}",
                l2.health()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = l2.health();
    eprintln!(
        "[l2 cluster] node killed, default breaker: {passes} passes over {:?}; each pass {lost_keys} keys missed, \
         {} still hit; slowest get {slowest:?}, slowest batch {slowest_batch:?}; {health:?}",
        killed_at.elapsed(),
        KEYS as usize - lost_keys,
    );
    assert!(slowest <= DEADLINE + SLACK, "{slowest:?}");
    assert!(slowest_batch <= DEADLINE + SLACK, "{slowest_batch:?}");
    for node in &health.nodes {
        if node.node.as_str() == victim_node {
            assert_ne!(node.breaker, BreakerState::Closed, "the dead node's breaker is open: {health:?}");
            assert!(node.breaker_opens >= 2, "it reopened after a failed probe: {health:?}");
        } else {
            assert_eq!((node.breaker, node.breaker_opens), (BreakerState::Closed, 0), "{health:?}");
        }
    }
    assert_eq!((health.breaker, health.breaker_opens), (BreakerState::Closed, 0), "{health:?}");
    assert!(health.short_circuited > 0, "the dead node's keys short-circuit: {health:?}");
}
