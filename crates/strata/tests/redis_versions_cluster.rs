//! `RedisVersions` on a 3-node Redis Cluster these tests start: the scripts' keys share a slot,
//! bumps reach stores subscribed on other nodes, and a store whose subscriber's node dies moves to
//! another node and synchronizes again.

#[path = "support/redis_cluster.rs"]
mod redis_cluster;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_cluster::{cli, cluster, Node};
use strata::RedisVersions;
use strata_core::{TableName, VersionHealth, VersionStore, VersionView};

const LIVENESS: Duration = Duration::from_secs(10);

fn slot_of(nodes: &[Node], key: &str) -> u16 {
    let out = cli(&["-p", &nodes[0].port.to_string(), "cluster", "keyslot", key]);
    out.trim().parse().unwrap_or_else(|_| panic!("cluster keyslot {key}: {out:?}"))
}

/// A prefix no other run uses whose hash tag hashes to a slot the first node serves.
fn prefix_on_first_node(nodes: &[Node]) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (0..)
        .map(|i| format!("strata-test:cv:{}:{nanos}:{i}:", std::process::id()))
        .find(|p| slot_of(nodes, &format!("{{{p}}}seq")) <= 5460)
        .unwrap_or_default()
}

async fn store(seeds: &[String], prefix: &str) -> RedisVersions {
    RedisVersions::cluster_builder(seeds.to_vec())
        .with_prefix(prefix)
        .with_deadline(Duration::from_secs(2))
        .with_heartbeat(Duration::from_millis(100))
        .with_grace(Duration::from_millis(200))
        .with_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}"))
}

async fn synchronized(store: &RedisVersions) {
    assert!(
        store.wait_for(VersionHealth::Synchronized, LIVENESS).await,
        "store did not synchronize within {LIVENESS:?}: {:?}",
        store.stats()
    );
}

fn read1(store: &RedisVersions, table: &TableName) -> (u64, VersionView) {
    let mut out = Vec::new();
    let view = store.read(std::slice::from_ref(table), &mut out);
    (out[0], view)
}

/// Waits until `store` reads `table` at `want` or above, as current.
async fn sees(store: &RedisVersions, table: &TableName, want: u64) {
    let start = Instant::now();
    loop {
        let (v, view) = read1(store, table);
        if v >= want && view == VersionView::Current {
            return;
        }
        assert!(start.elapsed() < LIVENESS, "never saw version {want} of {table}: {:?}", store.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bumps_reach_stores_subscribed_on_other_nodes_and_survive_a_subscriber_node_dying() {
    let mut nodes = cluster().await;
    let prefix = prefix_on_first_node(&nodes);
    // The three keys the scripts touch share the prefix's slot.
    let slot = slot_of(&nodes, &format!("{{{prefix}}}versions"));
    for name in ["seq", "epoch"] {
        assert_eq!(slot_of(&nodes, &format!("{{{prefix}}}{name}")), slot);
    }
    // A subscribes on the node serving the keys; B on the third node, then the second.
    let a = store(&[nodes[0].url()], &prefix).await;
    let b = Arc::new(store(&[nodes[2].url(), nodes[1].url()], &prefix).await);
    synchronized(&a).await;
    synchronized(&b).await;
    let table = TableName::new("accounts");
    for _ in 0..20 {
        let target = read1(&a, &table).0 + 1;
        a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("bump: {e}"));
        sees(&b, &table, target).await;
    }
    let stats = b.stats();
    assert!(stats.messages_received >= 20, "the bumps did not come through the channel: {stats:?}");
    assert_eq!((stats.gaps_detected, stats.malformed_messages), (0, 0), "{stats:?}");
    // The bump script wrote the hash in the first node's slot.
    let stored =
        cli(&["-c", "-p", &nodes[1].port.to_string(), "hget", &format!("{{{prefix}}}versions"), "accounts"]);
    assert_eq!(stored.trim().parse::<u64>().ok(), Some(read1(&a, &table).0), "{stored:?}");

    // B's subscriber's node dies (it serves other slots): B stops vouching, then subscribes on
    // the second node, synchronizes, and follows bumps again.
    nodes[2].kill();
    let start = Instant::now();
    while read1(&b, &table).1 == VersionView::Current {
        assert!(start.elapsed() < LIVENESS, "B kept vouching after its subscriber's node died");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    synchronized(&b).await;
    let target = read1(&a, &table).0 + 1;
    a.bump(std::slice::from_ref(&table)).await.unwrap_or_else(|e| panic!("bump after the kill: {e}"));
    sees(&b, &table, target).await;
    // Both stores bumping the same table get distinct versions.
    let (x, y) = tokio::join!(
        a.bump_returning(std::slice::from_ref(&table)),
        b.bump_returning(std::slice::from_ref(&table))
    );
    let (x, y) = (x.unwrap_or_else(|e| panic!("{e}"))[0], y.unwrap_or_else(|e| panic!("{e}"))[0]);
    assert_ne!(x, y);
}
