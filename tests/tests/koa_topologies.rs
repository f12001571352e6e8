//! The koa-session-redis3 profile on sentinel and cluster Redis. The seed's Redis client speaks
//! to one node only: on sentinel the Koa app talks to the current master; on cluster-mode Redis
//! both apps share sessions on a one-node cluster, and a three-master cluster is checked from
//! the Rust side.

use std::time::Duration;

use http::{Method, StatusCode};
use tessera_demo::DemoArgs;
use tessera_tests::{
    http::DemoServer,
    koa::{profile_args, Browser, KoaApp},
    support::{redis_cli, RedisCluster, RedisSentinelSet},
};

const SCHEMA: &str = "your:schema";
const TTL: u64 = 3600;
const OLD_KEY: &str = "the old app key, long enough";

fn args(url: &str, keys: &[&str]) -> DemoArgs {
    profile_args(url, keys, SCHEMA, TTL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_crosses_both_ways_on_sentinel() {
    let set = RedisSentinelSet::start();
    let node = KoaApp::start(set.master_port(), SCHEMA, TTL, &[OLD_KEY]);
    let rust = DemoServer::start_from_args(&args(&set.url(), &[OLD_KEY])).await;
    let mut b = Browser::new();
    assert_eq!(b.get(node.addr(), "/").await, "1 views");
    assert_eq!(b.get(rust.addr(), "/").await, "2 views");
    assert_eq!(b.get(node.addr(), "/").await, "3 views");
    assert_eq!(b.get(rust.addr(), "/views").await, "3 views");
}

/// The seed's Redis client speaks to one node only, so on a cluster the profile is checked from
/// the Rust side: the JSON layout under `<keySchema><sid>` (no hash tag: sessions spread over
/// slots), merges, and a cross-slot regenerate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_on_a_cluster() {
    let cluster = RedisCluster::start();
    let rust = DemoServer::start_from_args(&args(&cluster.url(), &[OLD_KEY])).await;
    let mut b = Browser::new();
    assert_eq!(b.get(rust.addr(), "/").await, "1 views");
    let a = b
        .send(rust.addr(), Method::PUT, "/session/cart", "[1,2]")
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let key = b.key(SCHEMA);
    let port = cluster.master_of_key(&key);
    assert_eq!(
        redis_cli(port, &["GET", &key]),
        r#"{"views":1,"cart":[1,2]}"#
    );
    let a = b
        .send(rust.addr(), Method::POST, "/login?user=ada", "")
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let new_key = b.key(SCHEMA);
    assert_ne!(new_key, key);
    assert_eq!(
        redis_cli(cluster.master_of_key(&key), &["EXISTS", &key]),
        "0"
    );
    assert_eq!(
        redis_cli(cluster.master_of_key(&new_key), &["GET", &new_key]),
        r#"{"views":1,"cart":[1,2],"user":"ada"}"#
    );
    assert_eq!(b.get(rust.addr(), "/").await, "2 views");
}

/// A `SENTINEL FAILOVER` while eight browsers keep counting in the profile: the string scripts
/// are held by the write gate and re-applied like the hash ones, so no request fails (the
/// command timeout is above the switch time) and no acknowledged increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_through_a_sentinel_failover() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let set = RedisSentinelSet::start();
    let mut args = args(&set.url(), &[OLD_KEY]);
    args.redis_timeout_ms = 3000;
    let rust = DemoServer::start_from_args(&args).await;
    let addr = rust.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = Browser::new();
            let (mut counted, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let a = b.send(addr, Method::GET, "/", "").await;
                if a.status == StatusCode::OK && a.body == format!("{} views", counted + 1) {
                    counted += 1;
                } else {
                    failed.push((a.status, a.body));
                }
            }
            (b, counted, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = set.master_port();
    let new = tokio::task::block_in_place(|| {
        set.failover();
        set.wait_master_change(old, Duration::from_secs(20))
    });
    assert_ne!(old, new);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let (mut b, counted, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(counted > 0);
        assert_eq!(
            b.get(addr, "/views").await,
            format!("{counted} views"),
            "lost increments"
        );
    }
}

/// The seed on cluster-mode Redis: a one-node cluster serves every slot, so the seed's
/// single-node client works there, while Tessera speaks the cluster protocol to it. A counter
/// crosses both ways, a destroy on either side ends the session on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_crosses_both_ways_on_a_one_node_cluster() {
    let cluster = RedisCluster::start_one_shard();
    let port = cluster.ports()[0];
    assert!(redis_cli(port, &["INFO", "cluster"]).contains("cluster_enabled:1"));
    let node = KoaApp::start(port, SCHEMA, TTL, &[OLD_KEY]);
    let rust = DemoServer::start_from_args(&args(&cluster.url(), &[OLD_KEY])).await;
    let mut b = Browser::new();
    assert_eq!(b.get(node.addr(), "/").await, "1 views");
    assert_eq!(b.get(rust.addr(), "/").await, "2 views");
    assert_eq!(b.get(node.addr(), "/").await, "3 views");
    assert_eq!(b.get(rust.addr(), "/").await, "4 views");
    let key = b.key(SCHEMA);
    assert_eq!(redis_cli(port, &["GET", &key]), r#"{"views":4}"#);
    let mut c = Browser::new();
    assert_eq!(c.get(rust.addr(), "/").await, "1 views");
    assert_eq!(c.get(node.addr(), "/").await, "2 views");
    // A destroy on either side ends the session on both.
    for (browser, side, other) in [
        (&mut b, rust.addr(), node.addr()),
        (&mut c, node.addr(), rust.addr()),
    ] {
        let key = browser.key(SCHEMA);
        let out = browser.send(side, Method::POST, "/logout", "").await;
        assert_eq!(out.status, StatusCode::NO_CONTENT);
        assert_eq!(redis_cli(port, &["EXISTS", &key]), "0");
        assert_eq!(browser.get(other, "/views").await, "0 views");
        assert_eq!(browser.get(side, "/views").await, "0 views");
    }
}
