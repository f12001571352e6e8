//! Upgrade mode against the real seed: sessions the Koa app made (or documents written as it
//! writes them) move to Tessera's native layout on their next request, under load.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use tessera_demo::DemoArgs;
use tessera_middleware::koa::Keygrip;
use tessera_tests::{
    http::DemoServer,
    koa::{profile_args, Browser, Jar, KoaApp},
    support::{redis_cli, RedisCluster, RedisServer},
};

const SCHEMA: &str = "your:schema";
const TTL: u64 = 3600;
const OLD_KEY: &str = "the old app key, long enough";

fn args(url: &str, keys: &[&str]) -> DemoArgs {
    profile_args(url, keys, SCHEMA, TTL)
}

/// Node-made sessions for the upgrade test: `(cookie jar, user)` each, with three fields.
async fn seed_sessions(node: SocketAddr, n: usize) -> Vec<(Jar, String)> {
    let mut tasks = Vec::new();
    for chunk in 0..16 {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (chunk..n).step_by(16) {
                let mut b = Browser::new();
                b.get(node, "/").await;
                let user = format!("\"u{i} é\"");
                for (field, body) in [("user", user.as_str()), ("cart", &format!("[{i},\"x\"]"))] {
                    let a = b
                        .send(node, Method::PUT, &format!("/session/{field}"), body)
                        .await;
                    assert_eq!(a.status, StatusCode::NO_CONTENT);
                }
                out.push((b.jar, format!("u{i} é")));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_mode_moves_a_thousand_live_seed_sessions_under_load() {
    let redis = RedisServer::start();
    upgrade_under_load(&redis.url(), redis.port()).await;
}

/// The same on cluster-mode Redis: a one-node cluster, where the seed itself made the sessions
/// and Tessera speaks the cluster protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_mode_moves_a_thousand_live_seed_sessions_under_load_on_a_cluster() {
    let cluster = RedisCluster::start_one_shard();
    upgrade_under_load(&cluster.url(), cluster.ports()[0]).await;
}

/// 1,000 sessions made by the Node app on the server at `port`, then upgraded by the demo at
/// `url` from 32 concurrent browsers: 0 failed requests, 0 lost fields, every seed key gone.
async fn upgrade_under_load(url: &str, port: u16) {
    const N: usize = 1000;
    let node = KoaApp::start(port, SCHEMA, TTL, &[OLD_KEY]);
    let sessions = seed_sessions(node.addr(), N).await;
    drop(node);
    let keys = |pattern: &str| -> usize {
        redis_cli(port, &["--scan", "--pattern", pattern])
            .lines()
            .count()
    };
    assert_eq!(keys(&format!("{SCHEMA}:*")), N);

    let args = args(url, &[OLD_KEY]).with_koa_session_redis3(SCHEMA, true);
    let rust = DemoServer::start_from_args(&args).await;
    let addr = rust.addr();
    let mut tasks = Vec::new();
    let mut chunks: Vec<Vec<(Jar, String)>> = (0..32).map(|_| Vec::new()).collect();
    for (i, s) in sessions.into_iter().enumerate() {
        chunks[i % 32].push(s);
    }
    for chunk in chunks {
        tasks.push(tokio::spawn(async move {
            let (mut failed, mut lost) = (0usize, Vec::new());
            for (jar, user) in chunk {
                let old = jar.clone();
                let mut b = Browser::new();
                b.jar = jar;
                let first = b.send(addr, Method::GET, "/", "").await;
                failed += usize::from(first.status != StatusCode::OK || first.body != "2 views");
                let native = b.jar.get("koa:sess").unwrap_or_default().to_owned();
                failed += usize::from(native.len() != 66 || b.jar.get("koa:sess.sig").is_some());
                let again = b.send(addr, Method::GET, "/session", "").await;
                failed += usize::from(again.status != StatusCode::OK);
                let doc: serde_json::Value = serde_json::from_str(&again.body).unwrap_or_default();
                let expected = serde_json::json!({"views": 2, "user": user, "cart": [doc["cart"][0].clone(), "x"]});
                if doc != expected || !doc["cart"][0].is_u64() {
                    lost.push(again.body.clone());
                }
                // The old pair finds nothing any more.
                let mut replay = Browser::new();
                replay.jar = old;
                let r = replay.send(addr, Method::GET, "/views", "").await;
                failed += usize::from(r.status != StatusCode::OK || r.body != "0 views");
            }
            (failed, lost)
        }));
    }
    let (mut failed, mut lost) = (0, Vec::new());
    for t in tasks {
        let (f, l) = t.await.unwrap();
        failed += f;
        lost.extend(l);
    }
    assert_eq!(failed, 0, "failed requests");
    assert!(
        lost.is_empty(),
        "{} sessions lost fields, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(keys(&format!("{SCHEMA}:*")), 0, "every seed key is deleted");
    assert_eq!(keys("tessera:sess:*"), N, "one native session each");
}

/// Upgrade mode on a cluster: seed documents (written as the seed writes them, signed as
/// keygrip signs them) move to native sessions spread over the slots, old keys deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_mode_on_a_cluster() {
    let cluster = RedisCluster::start();
    let grip = Keygrip::new([OLD_KEY]).unwrap();
    let mut browsers = Vec::new();
    for i in 0..50 {
        let sid = format!("mx5kckqa0ohc9584335n{i:04}");
        let key = format!("{SCHEMA}:{sid}");
        let doc = format!(r#"{{"views":{i},"user":"u{i}"}}"#);
        redis_cli(
            cluster.master_of_key(&key),
            &["SET", &key, &doc, "EX", "3600"],
        );
        let mut b = Browser::new();
        b.jar.set("koa:sess", &sid);
        b.jar.set(
            "koa:sess.sig",
            &grip.sign(format!("koa:sess={sid}").as_bytes()),
        );
        browsers.push((b, key, i));
    }
    let args = args(&cluster.url(), &[OLD_KEY]).with_koa_session_redis3(SCHEMA, true);
    let rust = DemoServer::start_from_args(&args).await;
    for (mut b, key, i) in browsers {
        assert_eq!(b.get(rust.addr(), "/").await, format!("{} views", i + 1));
        assert_eq!(
            b.jar.get("koa:sess").map(str::len),
            Some(66),
            "native cookie"
        );
        assert_eq!(b.jar.get("koa:sess.sig"), None, "old .sig cleared");
        assert_eq!(
            redis_cli(cluster.master_of_key(&key), &["EXISTS", &key]),
            "0"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&b.get(rust.addr(), "/session").await).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"views": i + 1, "user": format!("u{i}")})
        );
    }
}
