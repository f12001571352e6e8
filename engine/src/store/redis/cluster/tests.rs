//! The router's unit tests.

use super::*;

#[tokio::test]
async fn a_moved_target_gets_one_cached_pool() {
    // Nothing listens on these ports; pools connect in the background and are never used.
    let config = Config::from_url("redis-cluster://127.0.0.1:1?node=127.0.0.1:2").unwrap();
    let settings = FredSettings {
        pool_size: 1,
        command_timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(100),
        reconnect_max_delay: Duration::from_millis(100),
        broadcast_capacity: 32,
    };
    let router = ClusterRouter {
        config,
        settings,
        seeds: Vec::new(),
        topology: RwLock::new(Arc::new(Topology {
            routing: ClusterRouting::new(),
            nodes: HashMap::new(),
        })),
        strays: Mutex::new(HashMap::new()),
        asking: Mutex::new(HashMap::new()),
        wake: Arc::new(Notify::new()),
        epoch: Default::default(),
    };
    let target = Server::new("127.0.0.1", 3);
    let first = router.pool_at(&target).next().id().to_owned();
    for _ in 0..5 {
        // The same pool each time, not a new one replacing the cached entry.
        assert_eq!(router.pool_at(&target).next().id(), first);
    }
    let _ = router.pool_at(&Server::new("127.0.0.1", 4));
    assert_eq!(router.stray_count(), 2);
    router.quit().await;
    assert_eq!(router.stray_count(), 0);
}
