//! Two proxies on one Redis with the WAL stream: a write through a proxy that cannot reach Redis
//! (so its own invalidation is lost) stops being served stale by the other proxy within the lag
//! bound, whichever of them holds the WAL lease.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use strata_proxy::{build_query_cache, CacheSettings, StrataCache};
use tokio::{net::TcpListener, sync::watch, time::Instant};

use crate::support::{admin, connect, fresh_database, pg, start_proxy};

fn redis_url() -> String {
    std::env::var("STRATA_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_URL is unset: run `cargo xtask test`"))
}

/// A TCP forwarder to Redis that can be cut: while cut, open connections are dropped and new
/// ones closed at once, as when a network path fails.
struct Cuttable {
    port: u16,
    cut: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl Cuttable {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (flag, notify) = (cut.clone(), cuts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let mut cut_seen = notify.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_seen.changed() => {}
                    }
                });
            }
        });
        Self { port, cut, cuts }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.cuts.send_modify(|n| *n += 1);
        }
    }
}

fn gauge(cache: &StrataCache, name: &str) -> f64 {
    cache
        .query_cache()
        .registry()
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_proxy_cut_off_from_redis_is_not_served_stale_by_the_other_holder() {
    // The other proxy streams: it sees the commit in the WAL and bumps the versions in Redis.
    fleet("strata_proxy_wal_fleet_a", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_proxy_cut_off_from_redis_is_not_served_stale_when_it_held_the_lease() {
    // The cut-off proxy streamed: its bumps fail, its health goes stale, the other bypasses and
    // takes over.
    fleet("strata_proxy_wal_fleet_b", 0).await;
}

/// Proxy 0 reaches Redis through a forwarder that is cut; proxy `holder` takes the lease first.
async fn fleet(db: &str, holder: usize) {
    fresh_database(db).await;
    let direct = admin(db).await;
    direct
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'v0')")
        .await
        .expect("table");
    let redis = redis_url();
    let hostport = redis.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let forwarder = Cuttable::start(hostport).await;
    let urls = [format!("redis://127.0.0.1:{}/", forwarder.port), redis.clone()];
    let lease_prefix = format!("strata_test:{db}:{}:", std::process::id());
    let pg = pg();
    let mut caches = Vec::new();
    let mut configs = Vec::new();
    let mut proxies = Vec::new();
    for url in &urls {
        let settings = CacheSettings { redis: Some(url.clone()), ..CacheSettings::default() };
        let cache =
            Arc::new(StrataCache::new(build_query_cache(&settings).await.expect("cache")).expect("strata"));
        let config = strata::WalConfig::builder()
            .with_upstream(pg.host(), pg.port())
            .with_user("postgres")
            .with_database(db)
            .with_publication(format!("{db}_{}", std::process::id()))
            .with_application_name(format!("{db}-{}", std::process::id()))
            .with_lag_bound(Duration::from_secs(1))
            .with_heartbeat_interval(Duration::from_millis(100))
            .with_redis_lease(url.clone(), lease_prefix.clone())
            // Longer than the lag bound, so that the followers' gate, not the takeover, is what
            // stops the other proxy in time.
            .with_lease_ttl(Duration::from_secs(5))
            .build()
            .expect("wal config");
        configs.push(config);
        let c = cache.clone();
        proxies.push(start_proxy(move |b| b.with_cache(c)).await);
        caches.push(cache);
    }
    // The chosen holder starts first and takes the lease; the other follows.
    let mut invalidators = Vec::new();
    for i in [holder, 1 - holder] {
        let config = configs[i].clone();
        invalidators
            .push(strata::WalInvalidator::start_for_sessions(config, caches[i].sessions()).expect("wal"));
        if i == holder {
            let start = Instant::now();
            while gauge(&caches[i], "strata_wal_lease_held") != 1.0 {
                assert!(start.elapsed() < Duration::from_secs(20), "proxy {i} never took the lease");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let clients = [
        connect(proxies[0].port(), "postgres", db, None).await.expect("connect a"),
        connect(proxies[1].port(), "postgres", db, None).await.expect("connect b"),
    ];
    let read = |i: usize| {
        let c = &clients[i];
        async move { c.query_one("SELECT v FROM kv WHERE k = 1", &[]).await.expect("read").get::<_, String>(0) }
    };
    let hits = |i: usize| caches[i].query_cache().tier_stats().iter().map(|(_, s)| s.hits).sum::<u64>();
    // Both cache the row (the stream must be up somewhere for lookups to take part).
    for i in 0..2 {
        let start = Instant::now();
        loop {
            let before = hits(i);
            assert_eq!(read(i).await, "v0");
            if hits(i) > before {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "proxy {i} never hit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let held = [gauge(&caches[0], "strata_wal_lease_held"), gauge(&caches[1], "strata_wal_lease_held")];
    assert_eq!(held[holder], 1.0, "proxy {holder} streams for both: {held:?}");
    assert_eq!(held[1 - holder], 0.0, "one stream for both: {held:?}");

    // Proxy 0 loses Redis; a write through it commits, but its own invalidation cannot land.
    forwarder.set_cut(true);
    // Timed from before the write: the proxy relays its completion only after its own (failing)
    // invalidation attempt.
    let written = Instant::now();
    clients[0]
        .execute("UPDATE kv SET v = 'v1' WHERE k = 1", &[])
        .await
        .expect("write through the cut-off proxy");
    eprintln!("the write through the cut-off proxy completed after {:?}", written.elapsed());
    loop {
        let seen = read(1).await;
        if seen == "v1" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_millis(2500),
            "the other proxy still served {seen:?} {:?} after the write (lag bound 1 s)",
            written.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("the other proxy stopped serving the old row after {:?}", written.elapsed());
    assert_eq!(read(0).await, "v1", "the cut-off proxy bypasses its cache");
    // It never comes back while the write is unapplied: keep reading for a while.
    for _ in 0..50 {
        assert_eq!(read(1).await, "v1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Redis is back: both serve the new row, and cache again.
    forwarder.set_cut(false);
    for i in 0..2 {
        let start = Instant::now();
        loop {
            let before = hits(i);
            assert_eq!(read(i).await, "v1", "proxy {i} after the outage");
            if hits(i) > before {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "proxy {i} never hit again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(invalidators);
    let _ = direct.batch_execute(&format!("DROP PUBLICATION IF EXISTS {db}_{}", std::process::id())).await;
}
