//! The engine's behavioural suite on every store and topology, plus topology-specific checks.

use std::{sync::Arc, time::Duration};

use tessera_engine::{CookieAction, RedisStore, SessionConfig, SessionEngine};
use tessera_tests::{
    suite::Env,
    suite_tests,
    support::{redis_cli, RedisCluster, RedisSentinelSet, RedisServer},
};

suite_tests!(suite_on_memory_store, Env::memory());

suite_tests!(suite_on_standalone_redis, {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let port = server.port();
    Env::redis("standalone", Arc::new(store), vec![port], move |_| port).keep_alive(server)
});

/// A server that lost its scripts (restart, failover, `SCRIPT FLUSH`) answers NOSCRIPT; the store
/// falls back to EVAL, which also caches the script again. Many writes in flight at once share the
/// pool's few connections and all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_survive_a_script_flush_and_concurrent_writes() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let engine = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let session = engine.session(None);
    session.insert("n", &0u32).await.unwrap();
    let CookieAction::Set { id, .. } = session.commit().await.unwrap().cookie else {
        panic!("a new session sets a cookie");
    };
    redis_cli(server.port(), &["SCRIPT", "FLUSH"]);
    let session = engine.session(Some(id));
    session.insert("n", &1u32).await.unwrap();
    assert_eq!(session.commit().await.unwrap().writes, 1);
    redis_cli(server.port(), &["SCRIPT", "FLUSH"]);
    let fresh = engine.session(None);
    fresh.insert("n", &1u32).await.unwrap();
    assert!(matches!(
        fresh.commit().await.unwrap().cookie,
        CookieAction::Set { .. }
    ));

    // 200 sessions, each updated by its own task at the same time.
    let mut ids = Vec::new();
    for _ in 0..200 {
        let s = engine.session(None);
        s.insert("n", &0u32).await.unwrap();
        let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
            panic!("a new session sets a cookie");
        };
        ids.push(id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let engine = engine.clone();
            let id = *id;
            tokio::spawn(async move {
                let s = engine.session(Some(id));
                s.insert("n", &7u32).await.unwrap();
                s.commit().await.unwrap().writes
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 1);
    }
    for id in &ids {
        let s = engine.session(Some(*id));
        assert_eq!(s.get::<u32>("n").await.unwrap(), Some(7));
    }
    assert_eq!(
        engine.session(Some(id)).get::<u32>("n").await.unwrap(),
        Some(1)
    );
}

suite_tests!(suite_on_cluster, {
    let cluster = Arc::new(RedisCluster::start());
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    let masters = cluster.master_ports();
    Env::redis("cluster", Arc::new(store), masters, move |key| {
        cluster.master_of_key(key)
    })
});

suite_tests!(suite_on_sentinel, {
    let set = RedisSentinelSet::start();
    let store = RedisStore::connect(&set.url()).await.unwrap();
    let master = set.master_port();
    Env::redis("sentinel", Arc::new(store), vec![master], move |_| master).keep_alive(set)
});

/// 10,000 sessions spread over the three masters, none holding more than 40%, and a regenerate
/// that crosses slots works without CROSSSLOT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_sessions_and_regenerates_across_slots() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    let engine = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let mut tasks = Vec::new();
    for chunk in 0..20 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500u64 {
                let s = engine.session(None);
                s.insert("n", &(chunk * 500 + i)).await.unwrap();
                s.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sizes = cluster.dbsize_by_master();
    let total: u64 = sizes.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 10_000, "{sizes:?}");
    for (port, n) in &sizes {
        let share = *n as f64 / total as f64;
        eprintln!("master {port}: {n} sessions ({:.1}%)", share * 100.0);
        assert!(share <= 0.40, "master {port} holds {:.1}%", share * 100.0);
    }

    // Regenerate until the new id lands on another master than the old one.
    let mut crossed = false;
    for _ in 0..20 {
        let s = engine.session(None);
        s.insert("user", "ada").await.unwrap();
        let CookieAction::Set { id: old, .. } = s.commit().await.unwrap().cookie else {
            panic!()
        };
        let s = engine.session(Some(old));
        s.regenerate().await.unwrap();
        let CookieAction::Set { id: new, .. } = s.commit().await.unwrap().cookie else {
            panic!()
        };
        let (old_key, new_key) = (engine.key(&old), engine.key(&new));
        let slot = |k: &str| redis_cli(cluster.ports()[0], &["CLUSTER", "KEYSLOT", k]);
        assert_ne!(slot(&old_key), slot(&new_key));
        let s = engine.session(Some(new));
        assert_eq!(
            s.get::<String>("user").await.unwrap().as_deref(),
            Some("ada")
        );
        assert!(engine.session(Some(old)).is_new().await.unwrap());
        if cluster.master_of_key(&old_key) != cluster.master_of_key(&new_key) {
            crossed = true;
            break;
        }
    }
    assert!(crossed, "no regenerate crossed masters in 20 tries");
    let _ = Duration::ZERO;
}

/// The store's `regenerate` on each topology: Moved moves the hash and its TTL, NewTaken leaves
/// both keys alone, OldGone creates nothing. On a single node (and for cluster keys sharing a
/// slot) it is one script; across cluster slots it deletes first and creates only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_regenerate_fails_closed_on_every_topology() {
    use tessera_engine::{Regenerated, SessionStore};

    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let stores = [
        (
            "standalone",
            RedisStore::connect(&server.url()).await.unwrap(),
        ),
        (
            "cluster",
            RedisStore::connect(&cluster.url()).await.unwrap(),
        ),
    ];
    let ttl = Duration::from_secs(600);
    let fields = [("user".to_owned(), bytes::Bytes::from_static(b"ada"))];
    for (name, store) in &stores {
        // Same slot (one hash tag) and, in the cluster, different slots.
        for (old, new) in [
            (format!("{name}:{{a}}:old"), format!("{name}:{{a}}:new")),
            (format!("{name}:{{a}}:old2"), format!("{name}:{{b}}:new2")),
        ] {
            assert!(store.create(&old, &fields, ttl).await.unwrap());
            assert!(store.create(&new, &fields, ttl).await.unwrap());
            assert_eq!(
                store.regenerate(&old, &new, &fields, ttl).await.unwrap(),
                Regenerated::NewTaken,
                "{name} {old} -> {new}"
            );
            if new.contains("{a}") {
                // The script checks the new key before touching the old one.
                assert!(
                    store.load(&old).await.unwrap().is_some(),
                    "{name}: old kept"
                );
            }
            assert!(store.delete(&new).await.unwrap());
            store.delete(&old).await.unwrap();
            assert!(store.create(&old, &fields, ttl).await.unwrap());
            assert_eq!(
                store.regenerate(&old, &new, &fields, ttl).await.unwrap(),
                Regenerated::Moved,
                "{name} {old} -> {new}"
            );
            assert!(store.load(&old).await.unwrap().is_none(), "{name}");
            let moved = store.load(&new).await.unwrap().expect("moved");
            assert_eq!(moved["user"].as_ref(), b"ada");
            if *name == "standalone" {
                let pttl: i64 = redis_cli(server.port(), &["PTTL", &new]).parse().unwrap();
                assert!(pttl > 0 && pttl <= 600_000, "{name}: TTL {pttl}");
            }
            assert!(store.delete(&new).await.unwrap());
            assert_eq!(
                store.regenerate(&old, &new, &fields, ttl).await.unwrap(),
                Regenerated::OldGone,
                "{name} {old} -> {new}"
            );
            assert!(
                store.load(&new).await.unwrap().is_none(),
                "{name}: nothing created"
            );
            assert!(!store.delete(&new).await.unwrap());
        }
    }
}
