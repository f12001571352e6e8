//! Upgrade mode against the real seed: sessions the Koa app made (or documents written as it
//! writes them) move to Tessera's native layout on their next request, under load.

use std::{net::SocketAddr, time::Duration};

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
/// The forward window of the upgrade tests that replay an old pair after it.
const FORWARD: Duration = Duration::from_secs(2);

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

    let mut args = args(url, &[OLD_KEY]).with_koa_session_redis3(SCHEMA, true);
    args.upgrade_forward = Some(FORWARD);
    let rust = DemoServer::start_from_args(&args).await;
    let addr = rust.addr();
    let mut tasks = Vec::new();
    let mut chunks: Vec<Vec<(Jar, String)>> = (0..32).map(|_| Vec::new()).collect();
    for (i, s) in sessions.into_iter().enumerate() {
        chunks[i % 32].push(s);
    }
    for chunk in chunks {
        tasks.push(tokio::spawn(async move {
            let (mut failed, mut lost, mut old_pairs) = (0usize, Vec::new(), Vec::new());
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
                // Within the forward window the old pair still leads to the moved session.
                let mut replay = Browser::new();
                replay.jar = old.clone();
                let r = replay.send(addr, Method::GET, "/views", "").await;
                failed += usize::from(r.status != StatusCode::OK);
                old_pairs.push(old);
            }
            (failed, lost, old_pairs)
        }));
    }
    let (mut failed, mut lost, mut old_pairs) = (0, Vec::new(), Vec::new());
    for t in tasks {
        let (f, l, o) = t.await.unwrap();
        failed += f;
        lost.extend(l);
        old_pairs.extend(o);
    }
    // After it, an old pair finds nothing.
    tokio::time::sleep(FORWARD + Duration::from_millis(200)).await;
    for old in old_pairs {
        let mut replay = Browser::new();
        replay.jar = old;
        let r = replay.send(addr, Method::GET, "/views", "").await;
        failed += usize::from(r.status != StatusCode::OK || r.body != "0 views");
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

/// A seed document at `key` (on the node at `port`) and a browser holding its signed pair.
fn seeded_browser(port: u16, sid: &str, doc: &str) -> Browser {
    let key = format!("{SCHEMA}:{sid}");
    redis_cli(port, &["SET", &key, doc, "EX", "3600"]);
    let grip = Keygrip::new([OLD_KEY]).unwrap();
    let mut b = Browser::new();
    b.jar.set("koa:sess", sid);
    b.jar.set(
        "koa:sess.sig",
        &grip.sign(format!("koa:sess={sid}").as_bytes()),
    );
    b
}

fn kept_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("tessera_koa_upgrade_total{outcome=\"kept\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A seed session that the native layout cannot hold (over its 64 KiB, nested deeper than its
/// decoder takes) is served in its seed form on every request, reads and writes, never refused,
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_session_the_native_layout_cannot_hold_keeps_being_served() {
    let redis = RedisServer::start();
    let args = args(&redis.url(), &[OLD_KEY]).with_koa_session_redis3(SCHEMA, true);
    let rust = DemoServer::start_from_args(&args).await;
    let addr = rust.addr();
    let big = "x".repeat(70_000);
    let mut docs = vec![format!(r#"{{"views":5,"cart":"{big}"}}"#)];
    for depth in 120..=128 {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        docs.push(format!(r#"{{"views":5,"deep":{nested}}}"#));
    }
    let mut kept = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let sid = format!("mx5kckqa0ohc9584335n{i:04}");
        let mut b = seeded_browser(redis.port(), &sid, doc);
        for round in 0..3 {
            let views = b.send(addr, Method::GET, "/", "").await;
            assert_eq!(views.status, StatusCode::OK, "doc {i}, round {round}");
            assert_eq!(views.body, format!("{} views", 6 + round), "doc {i}");
        }
        let put = b.send(addr, Method::PUT, "/session/note", "\"hi\"").await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "doc {i}: {}", put.body);
        // Kept: the seed key holds it (a handler that reads the too-deep value itself gets a
        // decode error, as in the profile); moved: the native session does.
        let key = format!("{SCHEMA}:{sid}");
        let body = match redis_cli(redis.port(), &["GET", &key]) {
            stored if !stored.is_empty() => stored,
            _ => b.get(addr, "/session").await,
        };
        // Deeper than serde_json's own recursion limit: checked as text.
        for part in [r#""views":8"#, r#""note":"hi""#] {
            assert!(body.contains(part), "doc {i}: {part} in {:.200}", body);
        }
        if b.jar.get("koa:sess.sig").is_some() {
            kept.push(i);
        }
        if i == 0 {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            // Kept as it is: the seed pair, the seed key, every byte of the big field.
            assert_eq!(doc["cart"].as_str().map(str::len), Some(70_000));
            assert_eq!(b.jar.get("koa:sess"), Some(sid.as_str()));
            assert!(b.jar.get("koa:sess.sig").is_some());
            assert_eq!(redis_cli(redis.port(), &["EXISTS", &key]), "1");
        }
    }
    // The big one and the one nested as deep as the seed's parser takes stay in the seed's
    // form; the others move.
    assert_eq!(kept, [0, docs.len() - 1]);
    let metrics = Browser::new().get(addr, "/metrics").await;
    assert!(kept_count(&metrics) >= 8, "counted as kept:\n{metrics}");
}

/// A page and its XHRs carry one seed pair: parallel first requests, held together behind a
/// paused server, land in one native session holding every field each of them wrote.
async fn parallel_first_requests_land_in_one_session(url: &str, seed_port: u16, nodes: &[u16]) {
    const N: usize = 8;
    let args = args(url, &[OLD_KEY]).with_koa_session_redis3(SCHEMA, true);
    let rust = DemoServer::start_from_args(&args).await;
    let addr = rust.addr();
    let sid = "mx5kckqa0ohc9584335n9999";
    let seed = seeded_browser(seed_port, sid, r#"{"views":3,"user":"ada"}"#);
    for port in nodes {
        redis_cli(*port, &["CLIENT", "PAUSE", "300", "WRITE"]);
    }
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut b = Browser::new();
        b.jar = seed.jar.clone();
        tasks.push(tokio::spawn(async move {
            let a = b
                .send(addr, Method::PUT, &format!("/session/f{i}"), &i.to_string())
                .await;
            (a.status, b.jar.get("koa:sess").map(str::to_owned), a.body)
        }));
    }
    let mut cookies = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, cookie, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let cookie = cookie.expect("a session cookie");
        assert_eq!(cookie.len(), 66, "a native cookie: {cookie}");
        cookies.insert(cookie);
    }
    assert_eq!(cookies.len(), 1, "one native session: {cookies:?}");
    let mut b = Browser::new();
    b.jar.set("koa:sess", cookies.first().unwrap());
    let doc: serde_json::Value = serde_json::from_str(&b.get(addr, "/session").await).unwrap();
    let mut expected = serde_json::json!({"views": 3, "user": "ada"});
    for i in 0..N {
        expected[format!("f{i}")] = serde_json::json!(i);
    }
    assert_eq!(
        doc, expected,
        "every acknowledged write is in the one session"
    );
    let key = format!("{SCHEMA}:{sid}");
    assert_eq!(
        redis_cli(seed_port, &["EXISTS", &key]),
        "0",
        "seed key gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_first_requests_with_one_seed_pair_land_in_one_session() {
    let redis = RedisServer::start();
    parallel_first_requests_land_in_one_session(&redis.url(), redis.port(), &[redis.port()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_first_requests_with_one_seed_pair_land_in_one_session_on_a_cluster() {
    let cluster = RedisCluster::start();
    let key = format!("{SCHEMA}:mx5kckqa0ohc9584335n9999");
    let seed_port = cluster.master_of_key(&key);
    parallel_first_requests_land_in_one_session(&cluster.url(), seed_port, &cluster.ports()).await;
}
