//! A user's index evicted under real `maxmemory` pressure: its sessions fail closed at their
//! next load, so logout-everywhere and the cap keep their promise (the index is touched far less
//! often than its sessions, so an LRU policy picks it first).

use tessera_engine::NearCache;
use tessera_tests::support::redis_cli_pipe;

use super::*;

fn used_memory(port: u16) -> u64 {
    redis_cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Fills the server under `volatile-lru` until `index` is evicted, keeping `sessions` freshly
/// used all along; the limit is lifted again afterwards. The filler keys have no TTL, so the
/// policy picks only among the sessions and the index, and small values make each eviction end
/// one key.
fn evict_index(port: u16, index: &str, sessions: &[String]) {
    redis_cli(port, &["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    // Headroom for the connections a redis-cli run opens, which count as used memory.
    let limit = used_memory(port) + 400_000;
    redis_cli(port, &["CONFIG", "SET", "maxmemory", &limit.to_string()]);
    let filler = "x".repeat(32);
    // Volatile decoys younger than the index and older than the sessions: what an eviction
    // takes after the index (the one that ends it may need more room: with the near cache on,
    // the invalidation it pushes grows a client buffer, which counts as used memory).
    let decoys: String = (0..300)
        .map(|i| format!("SET decoy:{i} {filler} EX 3600\n"))
        .collect();
    redis_cli_pipe(port, &decoys);
    let mut evicted = false;
    for chunk in 0..20_000 {
        let mut touch = vec!["TOUCH"];
        touch.extend(sessions.iter().map(String::as_str));
        redis_cli(port, &touch);
        // Large steps far from the limit, then a few keys at a time.
        let n = if used_memory(port) + 100_000 < limit {
            200
        } else {
            3
        };
        let script: String = (0..n)
            .map(|i| format!("SET filler:{chunk}:{i} {filler}\n"))
            .collect();
        redis_cli_pipe(port, &script);
        if redis_cli(port, &["EXISTS", index]) == "0" {
            evicted = true;
            break;
        }
    }
    redis_cli(port, &["CONFIG", "SET", "maxmemory", "0"]);
    assert!(evicted, "the index was never evicted");
    // The case needs one survivor.
    let surviving = sessions
        .iter()
        .filter(|key| redis_cli(port, &["EXISTS", key]) == "1")
        .count();
    assert!(
        surviving > 0,
        "every session was evicted with its index: the case did not happen"
    );
}

async fn an_evicted_index_leaves_no_session_usable(near: bool) {
    let server = RedisServer::start();
    let port = server.port();
    let mut builder =
        RedisStore::builder(server.url()).with_command_timeout(Duration::from_secs(3));
    let bound = Duration::from_millis(500);
    if near {
        builder = builder.with_near_cache(NearCache::new(1_000).with_max_stale(bound));
    }
    let store: Arc<dyn SessionStore> = Arc::new(builder.connect().await.unwrap());
    let engine = SessionEngine::from_arc(
        store,
        config().with_session_cap(cap(3, CapPolicy::EvictLeastRecent)),
    )
    .unwrap();
    let user = "ada";
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(
            login(&engine, user, &format!("old device {i}"))
                .await
                .unwrap(),
        );
    }
    let index = {
        let keys = KeyDeriver::for_config(&config());
        keys.index_key(&UserKey::new(USER_KEY).unwrap().slot(user))
    };
    for id in &old {
        assert!(usable(&engine, *id).await, "logged in");
    }
    // The LRU clock counts whole seconds: the index must be idle longer than anything else
    // (a load reads it too; the eviction loop then keeps only the sessions fresh).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let keys: Vec<String> = old.iter().map(|id| engine.key(id)).collect();
    blocking({
        let index = index.clone();
        move || evict_index(port, &index, &keys)
    })
    .await;
    // A cached entry is seen again within the near cache's bound (the heartbeat reads
    // `evicted_keys`).
    if near {
        tokio::time::sleep(bound + Duration::from_millis(500)).await;
    }
    for (i, id) in old.iter().enumerate() {
        assert!(
            !usable(&engine, *id).await,
            "old device {i} is still logged in with its user's index evicted"
        );
    }
    // The cap holds: three new devices, and with the old ones refused, three usable in all.
    let mut new = Vec::new();
    for i in 0..3 {
        new.push(
            login(&engine, user, &format!("new device {i}"))
                .await
                .unwrap(),
        );
    }
    let mut live = 0;
    for id in old.iter().chain(&new) {
        live += usize::from(usable(&engine, *id).await);
    }
    assert_eq!(
        live, 3,
        "usable sessions after three new logins under a cap of 3"
    );
    // Logging out everywhere leaves nothing usable.
    let s = engine.session(Some(new[0]));
    s.logout_everywhere(false).await.unwrap();
    s.commit().await.unwrap();
    for id in old.iter().chain(&new) {
        assert!(
            !usable(&engine, *id).await,
            "usable after logout everywhere"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_index_leaves_no_session_usable_standalone() {
    an_evicted_index_leaves_no_session_usable(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_index_leaves_no_session_usable_with_the_near_cache() {
    an_evicted_index_leaves_no_session_usable(true).await;
}
