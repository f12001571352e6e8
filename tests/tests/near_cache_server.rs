//! The near cache against the server's own limits, with real redis-server processes: what a
//! cached session costs the server, eviction under `maxmemory`, and a full tracking table.

use std::time::Duration;

use tessera_engine::{CookieAction, NearCache, RedisStore, SessionConfig, SessionEngine};
use tessera_tests::{
    near::{create, engine, read, until, wait_confirmed, write, BOUND},
    support::{redis_cli, redis_cli_pipe, RedisServer},
};

/// Eviction under `maxmemory`: Redis deletes cached sessions to make room for other keys and
/// invalidates them; the instance that cached them serves none of them afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_evicted_by_maxmemory_are_evicted_from_the_cache() {
    let server = RedisServer::start();
    let port = server.port();
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(create(&a, i).await);
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(read(&b, id).await, Some(i as u64));
    }
    let used: u64 = redis_cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let limit = (used + 2 * 1024 * 1024).to_string();
    redis_cli(
        port,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-random"],
    );
    redis_cli(port, &["CONFIG", "SET", "maxmemory", &limit]);
    // 20 MB of other keys through a 2 MB headroom: most sessions are evicted.
    let filler = "x".repeat(10_000);
    let script: String = (0..2_000)
        .map(|i| format!("SET filler:{i} {filler}\n"))
        .collect();
    redis_cli_pipe(port, &script);
    let evicted: Vec<_> = ids
        .iter()
        .filter(|id| redis_cli(port, &["EXISTS", &a.key(id)]) == "0")
        .collect();
    assert!(
        evicted.len() >= 25,
        "only {} of 50 sessions were evicted",
        evicted.len()
    );
    for id in evicted {
        until(&b, id, BOUND, |seen| seen.is_none()).await;
    }
}

/// An eviction made for the tracking connection's own command: under `NOLOOP`, Redis sends that
/// connection no invalidation for the keys it evicts while serving it. The cached instance has
/// one connection, the memory goes over `maxmemory` with one command from elsewhere, and the
/// next command the server sees is the cached instance's own heartbeat, so the evictions are
/// made for it. Its entries of the evicted sessions must still go within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_made_for_the_cached_instances_own_command_are_seen() {
    let server = RedisServer::start();
    let port = server.port();
    let plain = SessionEngine::new(
        RedisStore::builder(server.url()).connect().await.unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let store = RedisStore::builder(server.url())
        .with_pool_size(1)
        .with_near_cache(NearCache::new(1_000).with_max_stale(BOUND))
        .connect()
        .await
        .unwrap();
    wait_confirmed(&store).await;
    let b = SessionEngine::new(store, SessionConfig::default()).unwrap();
    // 20 sessions of about 50 KB each, cached by B.
    let pad = "p".repeat(50_000);
    let mut ids = Vec::new();
    for i in 0..20u64 {
        let session = plain.session(None);
        session.insert("n", &i).await.unwrap();
        session.insert("pad", &pad).await.unwrap();
        match session.commit().await.unwrap().cookie {
            CookieAction::Set { id, .. } => ids.push(id),
            other => panic!("a new session sets a cookie, not {other:?}"),
        }
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(read(&b, id).await, Some(i as u64));
    }
    let used: u64 = redis_cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    // Only keys with a TTL (the sessions) may be evicted; 100 KB of headroom.
    redis_cli(
        port,
        &["CONFIG", "SET", "maxmemory-policy", "volatile-random"],
    );
    redis_cli(
        port,
        &["CONFIG", "SET", "maxmemory", &(used + 100_000).to_string()],
    );
    // One command, run while the memory is still under the limit, leaves it about 100 KB over:
    // nothing is evicted until the next command, and the next one is B's heartbeat (every
    // quarter of the bound). Freeing 100 KB takes two or three sessions.
    redis_cli(port, &["SETRANGE", "filler", "199999", "x"]);
    tokio::time::sleep(BOUND).await;
    let evicted: Vec<_> = ids
        .iter()
        .filter(|id| redis_cli(port, &["EXISTS", &b.key(id)]) == "0")
        .collect();
    assert!(!evicted.is_empty(), "no session was evicted");
    assert!(evicted.len() < ids.len(), "every session was evicted");
    for id in evicted {
        until(&b, id, BOUND, |seen| seen.is_none()).await;
    }
}

/// A tiny tracking table makes Redis evict tracked keys by invalidating them: that must stay
/// safe, with 0 stale reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tracking_table_invalidates_safely() {
    let server = RedisServer::start();
    let port = server.port();
    redis_cli(port, &["CONFIG", "SET", "tracking-table-max-keys", "10"]);
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(create(&a, i).await);
    }
    for round in 1..=3u64 {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(read(&b, id).await, Some(round * 1000 - 1000 + i as u64));
        }
        for (i, id) in ids.iter().enumerate() {
            write(&a, id, round * 1000 + i as u64).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Server memory a cached session costs: `used_memory` before and after 10,000 sessions are
/// first read through one cached instance (the tracking table gains one key each), then through
/// a second one (each key gains one more client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_memory_per_cached_session() {
    const SESSIONS: u64 = 10_000;
    let server = RedisServer::start();
    let port = server.port();
    let plain = SessionEngine::new(
        RedisStore::builder(server.url()).connect().await.unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let a = engine(&server.url()).await;
    let b = engine(&server.url()).await;
    let mut ids = Vec::new();
    for i in 0..SESSIONS {
        ids.push(create(&plain, i).await);
    }
    let memory = || {
        let info = redis_cli(port, &["INFO", "memory"]);
        let stats = redis_cli(port, &["INFO", "stats"]);
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in INFO"))
        };
        (
            field(&info, "used_memory"),
            field(&stats, "tracking_total_keys"),
        )
    };
    let (before, keys_before) = memory();
    for id in &ids {
        read(&a, id).await;
    }
    let (one, keys_one) = memory();
    for id in &ids {
        read(&b, id).await;
    }
    let (two, keys_two) = memory();
    // Before any read, only the connections' marker keys are tracked (each heartbeat reads its
    // own): one per tracked connection, two connections per instance.
    assert!(
        keys_before <= 4,
        "only the markers of 2 instances × 2 connections, not {keys_before}"
    );
    assert_eq!(
        keys_one - keys_before,
        SESSIONS,
        "every cached session is tracked once"
    );
    assert_eq!(
        keys_two, keys_one,
        "a second tracking client adds no tracked key"
    );
    let first = one.saturating_sub(before) as f64 / SESSIONS as f64;
    let further = two.saturating_sub(one) as f64 / SESSIONS as f64;
    eprintln!(
        "server memory per cached session: {first:.0} B for the first tracking instance, \
         {further:.0} B for each further one ({SESSIONS} sessions)"
    );
    assert!(
        (16.0..2048.0).contains(&first),
        "{first} B per tracked key is out of any plausible range"
    );
    assert!(
        further < first,
        "a further client costs less than a new key"
    );
}
