//! The heartbeat against a real `redis-server`, with the link's reconnect/error watcher left
//! out: the heartbeat alone must catch a connection fred replaced before any event of it
//! reached the link (the events travel on their own tasks and may come late).

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use fred::{
    interfaces::{ClientInterface as _, ClientLike as _},
    prelude::{Client, Config, ServerConfig},
    types::RespVersion,
};

use super::{link, Lifetime, Link, Near, NearCache};
use crate::store::{redis::connect::FredSettings, Fields};

/// A throwaway `redis-server` on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (the README's test setup installs it)");
        let server = Server { child, port };
        for _ in 0..300 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {port} never listened");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(port: u16) -> Client {
    let settings = FredSettings {
        pool_size: 1,
        command_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        reconnect_max_delay: Duration::from_millis(50),
        broadcast_capacity: 64,
    };
    let config = Config {
        version: RespVersion::RESP3,
        server: ServerConfig::new_centralized("127.0.0.1", port),
        ..Default::default()
    };
    let client = settings.fred_builder(config).build().expect("a client");
    client
        .init()
        .await
        .expect("a connection to the test's redis-server");
    client
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_replaced_unheard_kills_its_entries() {
    let server = Server::start();
    // Heartbeats 500 ms apart: the kill below lands just after one and fred has reconnected
    // long before the next, so no heartbeat sees the old connection fail under it.
    let max_stale = Duration::from_secs(2);
    let near = Near::new(
        &NearCache::new(100).with_max_stale(max_stale),
        Default::default(),
    );
    let link = Arc::new(Link::new(client(server.port).await));
    // The reader and the heartbeat, but no watcher: fred's reconnect and error events never
    // reach this link, as when they are still queued behind other tasks.
    link::spawn_reader(&near, &link);
    tokio::spawn(link::heartbeat(
        Arc::downgrade(&near),
        Arc::downgrade(&link),
        max_stale / 4,
    ));
    until("tracking confirmed", || near.ticket(&link).is_some()).await;

    let key = "{t}:s";
    let fields: Fields = [("n".to_owned(), Bytes::from_static(b"1"))].into();
    let ticket = near.ticket(&link);
    let op = near.begin(key);
    near.admit(
        key,
        &link,
        ticket,
        op.registered(),
        Arc::new(fields.clone()),
        Lifetime::Pttl(60_000),
    );
    drop(op);
    assert_eq!(near.get(key), Some(fields), "the entry serves");

    // Another connection kills the tracked one; fred reconnects on its own.
    let old: i64 = link.client.client_id().await.expect("CLIENT ID");
    let killer = client(server.port).await;
    let _: i64 = killer
        .custom(
            fred::cmd!("CLIENT"),
            vec!["KILL".to_owned(), "ID".to_owned(), old.to_string()],
        )
        .await
        .expect("CLIENT KILL");
    until("fred on a new connection", || {
        link.client
            .connection_ids()
            .values()
            .any(|&id| id >= 0 && id != old)
    })
    .await;

    // The old connection's tracking is gone with it: what it loaded must stop serving by the
    // next heartbeat, and stay dead after tracking is confirmed on the new connection.
    until("the old connection's entry dead", || {
        near.get(key).is_none()
    })
    .await;
    until("tracking confirmed again", || near.ticket(&link).is_some()).await;
    assert_eq!(near.get(key), None);
    let _ = killer.quit().await;
    let _ = link.client.quit().await;
}
