//! The near cache against real redis-server processes: every coherence rule, with two or more
//! engine instances that each have their own connections, and Redis changed behind their backs.
//! Topology changes with the cache on are in `near_cache_topologies.rs`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tessera_engine::{NearCache, RedisStore, SessionConfig, SessionEngine, SessionId};
use tessera_tests::{
    near::{
        cached_store, create, engine, read, session_commands, until, wait_confirmed, write, BOUND,
    },
    proxy::Blackhole,
    suite::Env,
    suite_tests,
    support::{
        command_stats, redis_cli, redis_cli_pipe, reset_stats, RedisCluster, RedisSentinelSet,
        RedisServer,
    },
};

// No command counts (the suite's expect one read per request; the budget with the cache is
// checked below): every behaviour must be the same as without the cache.
suite_tests!(suite_on_standalone_redis_with_the_near_cache, {
    let server = RedisServer::start();
    let store = cached_store(&server.url()).await;
    let port = server.port();
    Env::redis(
        "standalone+near-cache",
        Arc::new(store),
        vec![],
        move |_| port,
    )
    .keep_alive(server)
});

/// Rule 4 and the command budget: repeat reads cost nothing, a write is one script, and a read
/// after this instance's own write is served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_reads_cost_no_commands_and_a_write_costs_one() {
    let server = RedisServer::start();
    let port = server.port();
    let a = engine(&server.url()).await;
    let id = create(&a, 1).await;
    assert_eq!(read(&a, &id).await, Some(1));
    reset_stats(port);
    for _ in 0..100 {
        assert_eq!(read(&a, &id).await, Some(1));
    }
    assert_eq!(session_commands(port), 0, "repeat reads went to Redis");
    write(&a, &id, 2).await;
    assert_eq!(
        session_commands(port),
        1,
        "a cached write is one script: {:?}",
        command_stats(port)
    );
    assert_eq!(read(&a, &id).await, Some(2), "read your writes");
    assert_eq!(
        session_commands(port),
        1,
        "a read after the own write asked Redis"
    );
    // The entry was current, so the write answered its status only and the entry with the
    // write applied was cached: no read of the hash at all, and the next writes are the same.
    for n in 3..=20 {
        write(&a, &id, n).await;
        assert_eq!(read(&a, &id).await, Some(n));
    }
    let stats = command_stats(port);
    assert_eq!(stats.get("hgetall"), None, "{stats:?}");
    assert_eq!(session_commands(port), 19, "{stats:?}");
}

/// Writes applied to a cached entry while another instance changes other fields of the same
/// session: Redis merges both (each write sends only its fields), and the writer's cache, built
/// from its entry plus its own change, never keeps missing the other's field past the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_applied_to_cached_entries_keep_the_other_instances_fields() {
    let server = RedisServer::start();
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;
    let id = create(&a, 0).await;
    let field = |engine: &SessionEngine, name: &'static str| {
        let session = engine.session(Some(id));
        async move { session.get::<u64>(name).await.unwrap() }
    };
    let set = |engine: &SessionEngine, name: &'static str, n: u64| {
        let session = engine.session(Some(id));
        async move {
            session.insert(name, &n).await.unwrap();
            session.commit().await.unwrap();
        }
    };
    for i in 1..=2000u64 {
        // B's entry is current before A writes; A's invalidation may still be on its way when
        // B's write goes out.
        assert_eq!(field(&b, "b").await, (i > 1).then(|| i - 1));
        set(&a, "a", i).await;
        set(&b, "b", i).await;
        let start = Instant::now();
        for (reader, name, writer) in [(&b, "a", "A"), (&a, "b", "B")] {
            while field(reader, name).await != Some(i) {
                assert!(
                    start.elapsed() < BOUND,
                    "round {i}: {writer}'s write still unseen after {BOUND:?}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Rule 3's neighbour: an acknowledged write on A is seen by B once the invalidation arrives.
/// Measures the window over many write→read pairs and asserts it stays under the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_instance_reach_the_others_within_the_bound() {
    let server = RedisServer::start();
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;
    let ids: Vec<SessionId> = {
        let mut ids = Vec::new();
        for _ in 0..16 {
            ids.push(create(&a, 0).await);
        }
        ids
    };
    for id in &ids {
        assert_eq!(read(&b, id).await, Some(0));
    }
    let pairs = 10_000u64;
    let mut windows = Vec::with_capacity(pairs as usize);
    for i in 1..=pairs {
        let id = &ids[(i as usize) % ids.len()];
        write(&a, id, i).await;
        windows.push(until(&b, id, BOUND * 2, |seen| seen == Some(i)).await);
    }
    windows.sort();
    let p = |q: f64| windows[((windows.len() - 1) as f64 * q) as usize];
    println!(
        "write→read window over {pairs} pairs: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        windows[windows.len() - 1]
    );
    assert!(windows[windows.len() - 1] < BOUND);
}

/// Destroy on A: B's next request gets no session; DEL, HSET, FLUSHALL and expiry done behind
/// both instances' backs evict too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_evict_cached_sessions() {
    let server = RedisServer::start();
    let port = server.port();
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;

    let id = create(&a, 1).await;
    assert_eq!(read(&b, &id).await, Some(1));
    let session = a.session(Some(id));
    session.destroy().await.unwrap();
    session.commit().await.unwrap();
    until(&b, &id, BOUND, |seen| seen.is_none()).await;

    // A field changed from redis-cli, then the key deleted.
    let id = create(&a, 1).await;
    assert_eq!(read(&b, &id).await, Some(1));
    redis_cli(port, &["HDEL", &a.key(&id), "n"]);
    until(&b, &id, BOUND, |seen| seen.is_none()).await;
    write(&a, &id, 2).await;
    until(&b, &id, BOUND, |seen| seen == Some(2)).await;
    redis_cli(port, &["DEL", &a.key(&id)]);
    until(&b, &id, BOUND, |seen| seen.is_none()).await;

    // FLUSHALL: one `invalidate null` for every tracked key.
    let id = create(&a, 3).await;
    assert_eq!(read(&b, &id).await, Some(3));
    assert_eq!(read(&a, &id).await, Some(3));
    redis_cli(port, &["FLUSHALL"]);
    until(&a, &id, BOUND, |seen| seen.is_none()).await;
    until(&b, &id, BOUND, |seen| seen.is_none()).await;

    // Expiry: Redis deletes the key late, but the entry dies at its TTL.
    let id = create(&a, 4).await;
    redis_cli(port, &["PEXPIRE", &a.key(&id), "300"]);
    until(&b, &id, BOUND, |seen| seen.is_none()).await;
    assert!(read(&b, &id).await.is_none());
}

/// Every way to empty the dataset ends the cached sessions within the bound, on fred as
/// published (which drops the `invalidate null` Redis sends for them): each link's marker key is
/// gone at its next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dataset_flush_evicts_within_the_bound() {
    let server = RedisServer::start();
    let port = server.port();
    let store = cached_store(&server.url()).await;
    let a = SessionEngine::new(store.clone(), SessionConfig::default()).unwrap();
    for flush in [
        &["FLUSHDB"][..],
        &["FLUSHDB", "ASYNC"],
        &["FLUSHALL", "ASYNC"],
        &["FLUSHALL", "SYNC"],
    ] {
        let id = create(&a, 7).await;
        assert_eq!(read(&a, &id).await, Some(7));
        reset_stats(port);
        assert_eq!(read(&a, &id).await, Some(7));
        assert_eq!(session_commands(port), 0, "cached before {flush:?}");
        redis_cli(port, flush);
        let took = until(&a, &id, BOUND, |seen| seen.is_none()).await;
        eprintln!("{flush:?}: evicted after {took:?}");
        // Tracking stays confirmed (a new marker was placed): the cache serves again. First let
        // every link's heartbeat run since the flush (its period is a quarter of the bound): one
        // that has not yet seen its marker gone still reads as confirmed, and its flush would
        // drop the entry cached below (a miss the bound allows, not a stale read).
        tokio::time::sleep(BOUND).await;
        wait_confirmed(&store).await;
        let id = create(&a, 8).await;
        assert_eq!(read(&a, &id).await, Some(8));
        reset_stats(port);
        assert_eq!(read(&a, &id).await, Some(8));
        assert_eq!(session_commands(port), 0, "cached again after {flush:?}");
    }
}

/// Rule 1: a killed connection loses its stream; after the reconnect nothing stale is served
/// (tracking is off on the new connection until confirmed again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_flushes_and_tracking_comes_back() {
    let server = RedisServer::start();
    let port = server.port();
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;
    let id = create(&a, 1).await;
    assert_eq!(read(&b, &id).await, Some(1));
    redis_cli(port, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    // Writes that B's (new) connection cannot have been told about.
    write(&a, &id, 2).await;
    until(&b, &id, BOUND * 2, |seen| seen == Some(2)).await;
    // Tracking is back: repeat reads are cached again.
    tokio::time::sleep(BOUND).await;
    assert_eq!(read(&b, &id).await, Some(2));
    reset_stats(port);
    assert_eq!(read(&b, &id).await, Some(2));
    assert_eq!(session_commands(port), 0, "tracking did not come back");
    write(&a, &id, 3).await;
    until(&b, &id, BOUND, |seen| seen == Some(3)).await;
}

/// Rule 3: loads racing writes from another instance, thousands of times: once writes stop and
/// the invalidations are in, no reader holds a stale value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_racing_invalidations_never_cache_a_stale_value() {
    let server = RedisServer::start();
    let a = Arc::new(engine(&server.url()).await);
    let b = Arc::new(engine(&server.url()).await);
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(create(&a, 0).await);
    }
    let ids = Arc::new(ids);
    for round in 1..=40u64 {
        let writer = {
            let (a, ids) = (a.clone(), ids.clone());
            tokio::spawn(async move {
                for id in ids.iter() {
                    write(&a, id, round).await;
                }
            })
        };
        let reader = {
            let (b, ids) = (b.clone(), ids.clone());
            tokio::spawn(async move {
                for id in ids.iter().rev() {
                    read(&b, id).await;
                }
            })
        };
        writer.await.unwrap();
        reader.await.unwrap();
        // The invalidations of the last writes are in flight for at most a few milliseconds.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for id in ids.iter() {
            assert_eq!(
                read(&b, id).await,
                Some(round),
                "round {round}: stale entry"
            );
        }
    }
}

suite_tests!(suite_on_cluster_with_the_near_cache, {
    let cluster = Arc::new(RedisCluster::start());
    let store = cached_store(&cluster.url()).await;
    Env::redis("cluster+near-cache", Arc::new(store), vec![], move |key| {
        cluster.master_of_key(key)
    })
});

suite_tests!(suite_on_sentinel_with_the_near_cache, {
    let set = RedisSentinelSet::start();
    let store = cached_store(&set.url()).await;
    let master = set.master_port();
    Env::redis("sentinel+near-cache", Arc::new(store), vec![], move |_| {
        master
    })
    .keep_alive(set)
});

/// Rule 2: a silently dead path (no FIN, no error) is caught by the heartbeat: past the bound no
/// cached read is served; reads then wait for Redis (and fail at the command timeout) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_connection_stops_serving_cached_reads_within_the_bound() {
    let server = RedisServer::start();
    let proxy = Blackhole::start(server.port()).await;
    let a = engine(&server.url()).await;
    let store = RedisStore::builder(format!("redis://{}", proxy.addr))
        .with_command_timeout(Duration::from_millis(300))
        .with_near_cache(NearCache::new(1000).with_max_stale(BOUND))
        .connect()
        .await
        .unwrap();
    wait_confirmed(&store).await;
    let b = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let id = create(&a, 1).await;
    assert_eq!(read(&b, &id).await, Some(1));
    assert_eq!(read(&b, &id).await, Some(1));
    proxy.freeze(true);
    let frozen_at = Instant::now();
    write(&a, &id, 2).await;
    // Keep reading: a cached answer may be the old value only until the bound has passed.
    loop {
        let seen = b.session(Some(id)).get::<u64>("n").await;
        let elapsed = frozen_at.elapsed();
        if let Ok(Some(1)) = seen {
            assert!(
                elapsed < BOUND + Duration::from_millis(100),
                "a stale cached read {elapsed:?} after the path went silent"
            );
        }
        if elapsed > BOUND * 2 {
            assert!(!matches!(seen, Ok(Some(1))));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.freeze(false);
    until(&b, &id, Duration::from_secs(5), |seen| seen == Some(2)).await;
}

/// A lagged invalidation stream (a tiny channel, a burst of invalidations at once): invalidations
/// dropped unseen flush the connection's entries, so no stale read follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_invalidation_stream_flushes_instead_of_going_stale() {
    let server = RedisServer::start();
    let port = server.port();
    let a = engine(&server.url()).await;
    let store = RedisStore::builder(server.url())
        .with_pool_size(1)
        .with_near_cache(
            NearCache::new(10_000)
                .with_max_stale(BOUND)
                .with_invalidation_capacity(1),
        )
        .connect()
        .await
        .unwrap();
    wait_confirmed(&store).await;
    let b = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(create(&a, 1).await);
    }
    for id in &ids {
        assert_eq!(read(&b, id).await, Some(1));
    }
    // One pipeline from redis-cli: 100 separate invalidations reach B's connection in a burst.
    let script: String = ids
        .iter()
        .map(|id| format!("HDEL {} n\n", a.key(id)))
        .collect();
    redis_cli_pipe(port, &script);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            read(&b, id).await,
            None,
            "session {i}: stale after a lagged stream"
        );
    }
}

/// Store-level writes with the cache on: a write whose future is dropped after it was sent
/// (the client went away) leaves no entry that a later write builds on; a field both set and
/// deleted by one write ends as Redis has it (HSET, then HDEL); deletes that empty the hash
/// leave no session.
///
/// One thread: the connection's task cannot run between the write's first poll and its drop,
/// so the reply can never arrive inside that poll (on two threads it sometimes did).
#[tokio::test(flavor = "current_thread")]
async fn store_writes_with_the_cache_match_redis() {
    use std::future::Future as _;

    use bytes::Bytes;
    use tessera_engine::SessionStore;

    let server = RedisServer::start();
    let port = server.port();
    let store = cached_store(&server.url()).await;
    let ttl = Duration::from_secs(600);
    let value = |v: &'static str| Bytes::from_static(v.as_bytes());
    let key = "tessera:sess:{store-level}";
    assert!(store
        .create(key, &[("a".into(), value("1"))], ttl)
        .await
        .unwrap());
    assert!(store.load(key).await.unwrap().is_some());
    assert!(store.load(key).await.unwrap().is_some(), "cached");

    // Polled once (sent), then dropped before its reply.
    let set = [("gone".to_string(), value("w1"))];
    let mut write = Box::pin(store.update(key, &set, &[], None));
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    assert!(polled.is_pending(), "the write answered on its first poll");
    drop(write);
    let start = Instant::now();
    while redis_cli(port, &["HEXISTS", key, "gone"]) != "1" {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the dropped write never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let set = [("b".to_string(), value("w2"))];
    assert!(store.update(key, &set, &[], None).await.unwrap());
    let fields = store.load(key).await.unwrap().unwrap();
    assert_eq!(fields.get("gone"), Some(&value("w1")), "{fields:?}");

    // One write that sets and deletes the same field: Redis runs HSET, then HDEL.
    assert!(store.load(key).await.unwrap().is_some());
    let set = [("x".to_string(), value("1"))];
    assert!(store.update(key, &set, &["x".into()], None).await.unwrap());
    assert_eq!(redis_cli(port, &["HEXISTS", key, "x"]), "0");
    assert!(!store.load(key).await.unwrap().unwrap().contains_key("x"));

    // Deleting every field removes the key: no session, cached or not.
    let all: Vec<String> = store
        .load(key)
        .await
        .unwrap()
        .unwrap()
        .into_keys()
        .collect();
    assert!(store.update(key, &[], &all, None).await.unwrap());
    assert_eq!(redis_cli(port, &["EXISTS", key]), "0");
    assert_eq!(store.load(key).await.unwrap(), None);
}
