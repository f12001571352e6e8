//! A `+switch-master` can reach the store before the sentinel that fred asks for the master has
//! heard of it; that sentinel then still names the old master, which still answers
//! `role:master`. The store must not take that answer: writes stay held until every connection
//! is on the announced master.

use std::time::{Duration, Instant};

use tessera_engine::{CookieAction, RedisStore, SessionConfig, SessionEngine};
use tessera_tests::support::{redis_cli, RedisSentinelSet, RedisServer};

/// The announcement comes first from a fourth "sentinel" (a plain `redis-server` the store
/// subscribes to like the others, on which the test publishes the event), while the three real
/// sentinels still name the old master; only a second later does the failover really happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_until_the_store_is_on_the_announced_master() {
    let set = RedisSentinelSet::start();
    let herald = RedisServer::start();
    let url = set.url().replace(
        "sentinelServiceName=",
        &format!("node={}&sentinelServiceName=", herald.addr()),
    );
    let engine = SessionEngine::new(
        RedisStore::builder(url)
            .with_command_timeout(Duration::from_secs(8))
            .connect()
            .await
            .unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let session = engine.session(None);
    session.insert("n", &1u64).await.unwrap();
    let CookieAction::Set { id, .. } = session.commit().await.unwrap().cookie else {
        panic!("a new session sets a cookie");
    };
    let old = set.master_port();
    let new = set
        .data_ports()
        .into_iter()
        .find(|p| *p != old)
        .expect("two data nodes");
    // The store's watcher listens on the herald before the event is sent.
    let start = Instant::now();
    while !redis_cli(herald.port(), &["PUBSUB", "NUMSUB", "+switch-master"]).contains("\n1") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the store never subscribed to the fourth sentinel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let event = format!("mymaster 127.0.0.1 {old} 127.0.0.1 {new}");
    redis_cli(herald.port(), &["PUBLISH", "+switch-master", &event]);

    let writer = engine.clone();
    let write = tokio::spawn(async move {
        let session = writer.session(Some(id));
        session.insert("n", &2u64).await?;
        session.commit().await.map(|_| Instant::now())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !write.is_finished(),
        "a write was acknowledged while the sentinels still named the old master: {:?}",
        write.await
    );
    let failover = Instant::now();
    let promoted = tokio::task::spawn_blocking(move || {
        set.failover();
        let promoted = set.wait_master_change(old, Duration::from_secs(20));
        (set, promoted)
    });
    let (set, promoted) = promoted.await.unwrap();
    assert_eq!(promoted, new);
    let done = write.await.unwrap().expect("the held write succeeds");
    assert!(done > failover, "the write ended before the failover began");

    // Read back through a store that connected after the switch: the write is on the new master.
    let fresh = SessionEngine::new(
        RedisStore::builder(set.url()).connect().await.unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    assert_eq!(
        fresh.session(Some(id)).get::<u64>("n").await.unwrap(),
        Some(2)
    );
    assert_eq!(set.master_port(), new);
}
