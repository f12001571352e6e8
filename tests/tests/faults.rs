//! Fault tolerance, measured: failover, resharding, outages and durability against real servers.
//! Every test prints its figures (run with `--nocapture` to see them).

use std::{sync::Arc, time::Duration};

use tessera_engine::{RedisStore, SessionConfig, SessionEngine};
use tessera_tests::{
    load::{create_sessions, recovered_at, success_ratio, Driver},
    support::RedisCluster,
};

const NODE_TIMEOUT_MS: u64 = 2000;

/// Kill one of three masters (SIGKILL) under load, then restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_loss_stays_local() {
    let mut cluster = RedisCluster::start_with_node_timeout(NODE_TIMEOUT_MS);
    let store = RedisStore::builder(cluster.url())
        .with_command_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let engine = SessionEngine::new(store, SessionConfig::default());
    let ids = create_sessions(&engine, 300).await;
    let masters = cluster.master_ports();
    let victim = masters[0];
    let (on_victim, healthy): (Vec<_>, Vec<_>) = ids
        .iter()
        .map(|id| {
            let port = cluster.master_of_key(&engine.key(id));
            (*id, usize::from(port == victim))
        })
        .partition(|(_, g)| *g == 1);
    // Separate workers per group, so workers stuck on the dead master cannot starve the others.
    let driver = Driver::start(
        engine.clone(),
        Arc::new(healthy),
        6,
        Duration::from_secs(30),
    );
    let driver_v = Driver::start(
        engine.clone(),
        Arc::new(on_victim),
        2,
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = driver.elapsed();
    cluster.kill_node(victim);
    let t = std::time::Instant::now();
    tokio::task::block_in_place(|| cluster.wait_ok(Duration::from_secs(20)));
    eprintln!("cluster ok again after {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let promoted_at = driver.elapsed();
    tokio::task::block_in_place(|| cluster.restart_node(victim));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = driver.finish().await;
    samples.extend(driver_v.finish().await);

    let healthy = success_ratio(&samples, killed_at, promoted_at, |s| s.group == 0);
    let victims_back = recovered_at(&samples, killed_at, |s| s.group == 1) - killed_at;
    let before = success_ratio(&samples, Duration::ZERO, killed_at, |_| true);
    eprintln!("before kill: {before:?}");
    eprintln!("healthy masters' sessions during the outage: {healthy:?}");
    eprintln!("dead master's sessions back after {victims_back:?}");
    let mut buckets = std::collections::BTreeMap::<u64, (usize, usize, usize, usize)>::new();
    for s in &samples {
        let b = buckets.entry(s.at.as_millis() as u64 / 500).or_default();
        if s.group == 0 {
            b.0 += 1;
            if s.ok {
                b.1 += 1
            }
        } else {
            b.2 += 1;
            if s.ok {
                b.3 += 1
            }
        }
    }
    for (b, (h, hok, v, vok)) in buckets {
        eprintln!("{:>5} ms  healthy {hok}/{h}  victim {vok}/{v}", b * 500);
    }
}
