//! Connecting to a server that runs: every attempt connects, and quickly.

use std::time::Duration;

use tessera_engine::RedisStore;
use tessera_tests::support::RedisServer;

/// fred's `wait_for_connect` reads the client's state, then subscribes to the connect
/// notification: a connection made between the two is missed, and the wait lasts until the
/// connect timeout. A store connecting to a running server must never wait for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_running_server_never_times_out() {
    let redis = RedisServer::start();
    let mut slow = 0;
    for attempt in 0..300 {
        let connected = RedisStore::builder(redis.url())
            .with_pool_size(8)
            .with_connect_timeout(Duration::from_secs(1))
            .connect()
            .await;
        match connected {
            Ok(store) => drop(store),
            Err(err) => {
                eprintln!("attempt {attempt}: {err}");
                slow += 1;
            }
        }
    }
    assert_eq!(slow, 0, "connects that missed their notification");
}
