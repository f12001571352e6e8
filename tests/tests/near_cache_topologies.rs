//! The near cache through topology changes, against real redis-server processes: resharding,
//! graceful and forced failovers, a primary demoted into a replica's full resync. Every session
//! holds a counter that only grows; no reader goes back and no acknowledged write is lost.

use std::{sync::Arc, time::Duration};

use tessera_engine::{NearCache, RedisStore, SessionConfig, SessionEngine};
use tessera_tests::{
    near::{counters_survive, create, engine, read, until, wait_confirmed, write, Loss, BOUND},
    support::{redis_cli, RedisCluster, RedisSentinelSet, RedisServer},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_with_the_near_cache_loses_nothing_and_never_goes_back() {
    let cluster = RedisCluster::start();
    let a = engine(&cluster.url()).await;
    let b = engine(&cluster.url()).await;
    let masters = cluster.master_ports();
    let id_of = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]);
    let (from, to, seed) = (id_of(masters[0]), id_of(masters[1]), masters[0]);
    counters_survive(&a, &b, Loss::None, move || {
        let output = std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{seed}")])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "3000", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_with_the_near_cache_loses_nothing_and_never_goes_back() {
    let cluster = RedisCluster::start();
    let a = engine(&cluster.url()).await;
    let b = engine(&cluster.url()).await;
    let replica = cluster.replica_ports()[0];
    counters_survive(&a, &b, Loss::None, move || {
        redis_cli(replica, &["CLUSTER", "FAILOVER"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_with_the_near_cache_loses_nothing_and_never_goes_back() {
    let set = RedisSentinelSet::start();
    let a = SessionEngine::new(
        RedisStore::builder(set.url())
            .with_command_timeout(Duration::from_secs(3))
            .with_near_cache(NearCache::new(10_000).with_max_stale(BOUND))
            .connect()
            .await
            .unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let b = engine(&set.url()).await;
    let set = Arc::new(set);
    let failing = set.clone();
    counters_survive(&a, &b, Loss::None, move || failing.failover()).await;
}

/// SIGKILL of a cluster master under the cache: its connections die, so its entries stop
/// serving at once; its replica is promoted. The writer waits for one replica (`WAIT 1`), so an
/// acknowledged write survives the kill; a reader may go back only from a write that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_sigkill_with_the_near_cache_loses_nothing_acknowledged() {
    let cluster = RedisCluster::start_with_node_timeout(1000);
    for port in cluster.ports() {
        redis_cli(
            port,
            &["CONFIG", "SET", "cluster-require-full-coverage", "no"],
        );
    }
    let connect = |wait: bool| {
        let mut builder = RedisStore::builder(cluster.url())
            .with_command_timeout(Duration::from_millis(800))
            .with_near_cache(NearCache::new(10_000).with_max_stale(BOUND));
        if wait {
            builder = builder.with_wait_replicas(1, Duration::from_millis(500));
        }
        async move {
            let store = builder.connect().await.unwrap();
            wait_confirmed(&store).await;
            SessionEngine::new(store, SessionConfig::default()).unwrap()
        }
    };
    let a = connect(true).await;
    let b = connect(false).await;
    let victim = cluster.master_ports()[0];
    let heir = cluster
        .replica_ports()
        .into_iter()
        .find(|p| {
            redis_cli(*p, &["INFO", "replication"]).contains(&format!("master_port:{victim}"))
        })
        .expect("the victim has a replica");
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let moving = cluster.clone();
    let went_back = counters_survive(&a, &b, Loss::Unacknowledged, move || {
        let mut cluster = moving.lock().expect("one user");
        cluster.kill_node(victim);
        let start = std::time::Instant::now();
        while !redis_cli(heir, &["ROLE"]).starts_with("master") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no replica was promoted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Back as the heir's replica, so `WAIT 1` can be met on that shard again.
        cluster.restart_node(victim);
    })
    .await;
    eprintln!(
        "master {victim} killed, {heir} promoted; reads back from a failed write: {went_back}"
    );
}

/// A primary made a replica of another server full-resyncs: Redis empties its dataset, sends
/// every tracking client `invalidate null` (which fred 10.1 drops), and loads the new one.
/// Cached entries must not survive that past the bound: the heartbeat finds the node a replica
/// and its marker key gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resync_evicts_every_cached_session() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let store = RedisStore::builder(old.url())
        .with_near_cache(NearCache::new(10_000).with_max_stale(BOUND))
        .connect()
        .await
        .unwrap();
    wait_confirmed(&store).await;
    let a = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let on_new = engine(&new.url()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(create(&a, i).await);
    }
    for (i, id) in ids.iter().enumerate() {
        // The same sessions on the other server, with other values; `old` is not changed.
        let key = a.key(id);
        let moved = redis_cli(
            old.port(),
            &[
                "MIGRATE",
                "127.0.0.1",
                &new.port().to_string(),
                &key,
                "0",
                "5000",
                "COPY",
            ],
        );
        assert_eq!(moved, "OK");
        write(&on_new, id, 1000 + i as u64).await;
        assert_eq!(
            read(&a, id).await,
            Some(i as u64),
            "cached on the old primary"
        );
    }
    redis_cli(
        old.port(),
        &["REPLICAOF", "127.0.0.1", &new.port().to_string()],
    );
    let start = std::time::Instant::now();
    while !redis_cli(old.port(), &["INFO", "replication"]).contains("master_link_status:up") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the resync never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resyncs = redis_cli(new.port(), &["INFO", "stats"]);
    assert!(
        resyncs.contains("sync_full:1"),
        "a full resync, not a partial one"
    );
    for (i, id) in ids.iter().enumerate() {
        let want = Some(1000 + i as u64);
        until(&a, id, BOUND, |seen| seen == want).await;
    }
}
