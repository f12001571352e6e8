//! The koa-session-redis3 profile against the real seed: the Koa app in `tests/koa-app` and the
//! demo in `--compat koa-session-redis3` share one Redis and one browser's cookies.

use std::{collections::HashMap, net::SocketAddr};

use http::{Method, StatusCode};
use tessera_middleware::{demo::DemoArgs, koa::Keygrip};
use tessera_tests::{
    http::{demo_exe, Answer, DemoServer, HttpClient},
    koa::{Jar, KoaApp},
    support::{command_stats, redis_cli, reset_stats, RedisCluster, RedisSentinelSet, RedisServer},
};

const SCHEMA: &str = "your:schema";
const TTL: u64 = 3600;
const OLD_KEY: &str = "the old app key, long enough";
const NEW_KEY: &str = "the new app key, also long enough";

fn args(url: &str, keys: &[&str]) -> DemoArgs {
    DemoArgs::for_tests()
        .with_redis(url)
        .with_secrets(keys.iter().map(|k| k.to_string()).collect())
        .with_ttl(TTL)
        .with_koa_session_redis3(SCHEMA, false)
}

/// One browser: requests carry and update its jar.
struct Browser {
    client: HttpClient,
    jar: Jar,
}

impl Browser {
    fn new() -> Self {
        Browser {
            client: HttpClient::new(),
            jar: Jar::new(),
        }
    }

    async fn send(&mut self, addr: SocketAddr, method: Method, path: &str, body: &str) -> Answer {
        let cookie = self.jar.header();
        let answer = self
            .client
            .send(addr, method, path, cookie.as_deref(), body)
            .await
            .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"));
        self.jar.update(&answer);
        answer
    }

    async fn get(&mut self, addr: SocketAddr, path: &str) -> String {
        let a = self.send(addr, Method::GET, path, "").await;
        assert_eq!(a.status, StatusCode::OK, "{path} on {addr}: {}", a.body);
        a.body
    }

    fn key(&self) -> String {
        format!(
            "{SCHEMA}:{}",
            self.jar.get("koa:sess").expect("a session cookie")
        )
    }
}

/// Redis, the Koa app and the demo in the profile, on the same Redis.
struct Pair {
    redis: RedisServer,
    node: KoaApp,
    rust: DemoServer,
}

async fn pair(keys: &[&str]) -> Pair {
    let redis = RedisServer::start();
    let node = KoaApp::start(redis.port(), SCHEMA, TTL, keys);
    let rust = DemoServer::start_from_args(&args(&redis.url(), keys)).await;
    Pair { redis, node, rust }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_crosses_from_node_to_rust_and_back() {
    let p = pair(&[OLD_KEY]).await;
    let mut b = Browser::new();
    assert_eq!(b.get(p.node.addr(), "/").await, "1 views");
    assert_eq!(b.get(p.rust.addr(), "/").await, "2 views");
    assert_eq!(b.get(p.node.addr(), "/").await, "3 views");
    assert_eq!(b.get(p.rust.addr(), "/views").await, "3 views");
    assert_eq!(
        redis_cli(p.redis.port(), &["GET", &b.key()]),
        r#"{"views":3}"#
    );
    let ttl: u64 = redis_cli(p.redis.port(), &["TTL", &b.key()])
        .parse()
        .unwrap();
    assert!(ttl > TTL - 5 && ttl <= TTL, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_started_on_rust_continues_on_node() {
    let p = pair(&[OLD_KEY]).await;
    let mut b = Browser::new();
    let first = b.send(p.rust.addr(), Method::GET, "/", "").await;
    assert_eq!(first.body, "1 views");
    let raw = first
        .raw_cookie("koa:sess")
        .expect("the session cookie")
        .to_owned();
    assert!(
        raw.ends_with("; httponly") && raw.contains("; path=/; expires="),
        "{raw}"
    );
    assert!(first.raw_cookie("koa:sess.sig").is_some());
    assert_eq!(b.get(p.node.addr(), "/").await, "2 views");
    assert_eq!(b.get(p.rust.addr(), "/").await, "3 views");
    assert_eq!(b.get(p.node.addr(), "/views").await, "3 views");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_on_either_side_ends_the_session_on_both() {
    let p = pair(&[OLD_KEY]).await;
    for (start, logout) in [
        (p.node.addr(), p.rust.addr()),
        (p.rust.addr(), p.node.addr()),
    ] {
        let mut b = Browser::new();
        b.get(start, "/").await;
        b.get(logout, "/").await;
        let key = b.key();
        let out = b.send(logout, Method::POST, "/logout", "").await;
        assert_eq!(out.status, StatusCode::NO_CONTENT);
        for name in ["koa:sess", "koa:sess.sig"] {
            let raw = out
                .raw_cookie(name)
                .unwrap_or_else(|| panic!("{name} cleared"));
            assert!(
                raw.contains("expires=Thu, 01 Jan 1970 00:00:00 GMT"),
                "{raw}"
            );
        }
        assert_eq!(redis_cli(p.redis.port(), &["EXISTS", &key]), "0");
        assert!(
            b.jar.header().is_none(),
            "the browser holds no session cookie"
        );
        assert_eq!(b.get(start, "/views").await, "0 views");
        assert_eq!(b.get(logout, "/views").await, "0 views");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_missing_sig_is_refused_by_both() {
    let p = pair(&[OLD_KEY]).await;
    let mut b = Browser::new();
    b.get(p.node.addr(), "/").await;
    b.get(p.node.addr(), "/").await;
    let good = b.jar.clone();
    for addr in [p.node.addr(), p.rust.addr()] {
        let mut tampered = Browser::new();
        tampered.jar = good.clone();
        let sig = good.get("koa:sess.sig").unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        tampered
            .jar
            .set("koa:sess.sig", &format!("{flipped}{}", &sig[1..]));
        let a = tampered.send(addr, Method::GET, "/views", "").await;
        assert_eq!(a.body, "0 views", "{addr}");
        let raw = a
            .raw_cookie("koa:sess.sig")
            .expect("the wrong .sig is expired");
        assert!(raw.starts_with("koa:sess.sig=;"), "{raw}");
        assert!(
            raw.contains("expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            "{raw}"
        );

        let mut missing = Browser::new();
        missing.jar = good.clone();
        missing.jar.remove("koa:sess.sig");
        let a = missing.send(addr, Method::GET, "/views", "").await;
        assert_eq!(
            (a.body.as_str(), a.set_cookies.len()),
            ("0 views", 0),
            "{addr}"
        );
    }
    // The real session is untouched.
    assert_eq!(b.get(p.rust.addr(), "/views").await, "2 views");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_works_across_both() {
    let redis = RedisServer::start();
    let node_old = KoaApp::start(redis.port(), SCHEMA, TTL, &[OLD_KEY]);
    let node_new = KoaApp::start(redis.port(), SCHEMA, TTL, &[NEW_KEY, OLD_KEY]);
    let rust = DemoServer::start_from_args(&args(&redis.url(), &[NEW_KEY, OLD_KEY])).await;
    let new = Keygrip::new([NEW_KEY]).unwrap();
    let old = Keygrip::new([OLD_KEY]).unwrap();

    let mut b = Browser::new();
    b.get(node_old.addr(), "/").await;
    let sid = b.jar.get("koa:sess").unwrap().to_owned();
    let data = format!("koa:sess={sid}");
    assert_eq!(
        old.index(data.as_bytes(), b.jar.get("koa:sess.sig").unwrap()),
        Some(0)
    );
    // Rust verifies the older key and re-issues the signature under the first, even on a read.
    let a = b.send(rust.addr(), Method::GET, "/views", "").await;
    assert_eq!(a.body, "1 views");
    assert!(
        a.raw_cookie("koa:sess.sig").is_some(),
        "re-issued: {:?}",
        a.set_cookies
    );
    assert_eq!(
        new.index(data.as_bytes(), b.jar.get("koa:sess.sig").unwrap()),
        Some(0)
    );
    // The rotated Node app and Rust accept it; the old-key-only Node app no longer does.
    assert_eq!(b.get(node_new.addr(), "/").await, "2 views");
    assert_eq!(b.get(rust.addr(), "/").await, "3 views");
    let mut stale = Browser::new();
    stale.jar = b.jar.clone();
    assert_eq!(stale.get(node_old.addr(), "/views").await, "0 views");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_does_not_rewrite_a_session_tessera_wrote_when_it_only_reads_it() {
    let p = pair(&[OLD_KEY]).await;
    let mut b = Browser::new();
    b.get(p.rust.addr(), "/").await;
    let profile = r#"{"name":"Zoë \"z\"\n\u0001","10":[1.5,-0,1e21,1e-7,123456789012],"2":{"b":true,"a":null},"tags":["x","y"]}"#;
    for (field, body) in [
        ("profile", profile),
        ("ratio", "0.1"),
        ("big", "9007199254740991"),
    ] {
        let a = b
            .send(
                p.rust.addr(),
                Method::PUT,
                &format!("/session/{field}"),
                body,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    }
    let stored = redis_cli(p.redis.port(), &["GET", &b.key()]);
    reset_stats(p.redis.port());
    for path in ["/views", "/session", "/views"] {
        let a = b.send(p.node.addr(), Method::GET, path, "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            a.set_cookies.is_empty(),
            "Node re-sent cookies: {:?}",
            a.set_cookies
        );
    }
    let stats = command_stats(p.redis.port());
    assert!(stats.get("get").copied().unwrap_or(0) >= 3, "{stats:?}");
    assert_eq!(
        stats.get("set"),
        None,
        "Node rewrote the session: {stats:?}"
    );
    assert_eq!(stats.get("expire"), None, "{stats:?}");
    assert_eq!(redis_cli(p.redis.port(), &["GET", &b.key()]), stored);
}

/// Rust writes `r{task}_{j}` from `tasks` tasks at once, `per_task` each.
async fn rust_writers(addr: SocketAddr, cookie: &str, tasks: usize, per_task: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let cookie = cookie.to_owned();
        handles.push(tokio::spawn(async move {
            let client = HttpClient::new();
            for j in 0..per_task {
                let path = format!("/session/r{t}_{j}");
                let a = client
                    .send(addr, Method::PUT, &path, Some(&cookie), &j.to_string())
                    .await
                    .unwrap();
                assert_eq!(a.status, StatusCode::NO_CONTENT, "{path}: {}", a.body);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

fn stored_fields(port: u16, key: &str) -> HashMap<String, serde_json::Value> {
    serde_json::from_str(&redis_cli(port, &["GET", key])).expect("a JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_disjoint_field_writes_lose_nothing() {
    let p = pair(&[OLD_KEY]).await;
    let mut b = Browser::new();
    b.get(p.rust.addr(), "/").await;
    let cookie = b.jar.header().unwrap();
    let node = p.node.addr();

    // Phase 1: Node writes its fields one after another while Rust writes its own from 8 tasks.
    // Every Rust save merges into the current document, so none erases a Node field.
    let node_writer = {
        let cookie = cookie.clone();
        tokio::spawn(async move {
            let client = HttpClient::new();
            for i in 0..40 {
                let path = format!("/session/n{i}");
                let a = client
                    .send(node, Method::PUT, &path, Some(&cookie), &i.to_string())
                    .await
                    .unwrap();
                assert_eq!(a.status, StatusCode::NO_CONTENT);
            }
        })
    };
    rust_writers(p.rust.addr(), &cookie, 8, 10).await;
    node_writer.await.unwrap();
    let fields = stored_fields(p.redis.port(), &b.key());
    let node_lost: Vec<_> = (0..40)
        .filter(|i| !fields.contains_key(&format!("n{i}")))
        .collect();
    assert!(
        node_lost.is_empty(),
        "Rust saves erased Node fields {node_lost:?}"
    );

    // Phase 2: Rust writes from 8 tasks while Node reads the session over and over. Node only
    // reads, so it never writes back, and no Rust save erases another's field.
    reset_stats(p.redis.port());
    let node_reader = {
        let cookie = cookie.clone();
        tokio::spawn(async move {
            let client = HttpClient::new();
            for _ in 0..60 {
                let a = client
                    .send(node, Method::GET, "/session", Some(&cookie), "")
                    .await
                    .unwrap();
                assert_eq!(a.status, StatusCode::OK);
            }
        })
    };
    rust_writers(p.rust.addr(), &cookie, 8, 10).await;
    node_reader.await.unwrap();
    let fields = stored_fields(p.redis.port(), &b.key());
    let rust_lost: Vec<_> = (0..8)
        .flat_map(|t| (0..10).map(move |j| format!("r{t}_{j}")))
        .filter(|name| !fields.contains_key(name))
        .collect();
    assert!(rust_lost.is_empty(), "lost Rust fields {rust_lost:?}");
    assert_eq!(fields.len(), 1 + 40 + 80, "views, n*, r*");
    // The seed follows each SET with an EXPIRE; Tessera never sends one (SET … EX in a script).
    assert_eq!(
        command_stats(p.redis.port()).get("expire"),
        None,
        "Node wrote back"
    );
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
    const N: usize = 1000;
    let redis = RedisServer::start();
    let node = KoaApp::start(redis.port(), SCHEMA, TTL, &[OLD_KEY]);
    let sessions = seed_sessions(node.addr(), N).await;
    drop(node);
    let keys = |pattern: &str| -> usize {
        redis_cli(redis.port(), &["--scan", "--pattern", pattern])
            .lines()
            .count()
    };
    assert_eq!(keys(&format!("{SCHEMA}:*")), N);

    let args = args(&redis.url(), &[OLD_KEY]).with_koa_session_redis3(SCHEMA, true);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_crosses_both_ways_on_sentinel() {
    let set = RedisSentinelSet::start();
    let node = KoaApp::start(set.master_port(), SCHEMA, TTL, &[OLD_KEY]);
    let rust = DemoServer::start_from_args(&args(&set.url(), &[OLD_KEY])).await;
    let mut b = Browser::new();
    assert_eq!(b.get(node.addr(), "/").await, "1 views");
    assert_eq!(b.get(rust.addr(), "/").await, "2 views");
    assert_eq!(b.get(node.addr(), "/").await, "3 views");
    assert_eq!(b.get(rust.addr(), "/views").await, "3 views");
}

/// The seed's Redis client speaks to one node only, so on a cluster the profile is checked from
/// the Rust side: the JSON layout under `<keySchema><sid>` (no hash tag: sessions spread over
/// slots), merges, and a cross-slot regenerate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_on_a_cluster() {
    let cluster = RedisCluster::start();
    let rust = DemoServer::start_from_args(&args(&cluster.url(), &[OLD_KEY])).await;
    let mut b = Browser::new();
    assert_eq!(b.get(rust.addr(), "/").await, "1 views");
    let a = b
        .send(rust.addr(), Method::PUT, "/session/cart", "[1,2]")
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let key = b.key();
    let port = cluster.master_of_key(&key);
    assert_eq!(
        redis_cli(port, &["GET", &key]),
        r#"{"views":1,"cart":[1,2]}"#
    );
    let a = b
        .send(rust.addr(), Method::POST, "/login?user=ada", "")
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let new_key = b.key();
    assert_ne!(new_key, key);
    assert_eq!(
        redis_cli(cluster.master_of_key(&key), &["EXISTS", &key]),
        "0"
    );
    assert_eq!(
        redis_cli(cluster.master_of_key(&new_key), &["GET", &new_key]),
        r#"{"views":1,"cart":[1,2],"user":"ada"}"#
    );
    assert_eq!(b.get(rust.addr(), "/").await, "2 views");
}

/// The demo binary in the profile, configured through its environment variables, next to the
/// Koa app: the documented `listening on` line, and a counter that crosses both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_binary_in_the_profile() {
    use std::io::{BufRead, BufReader};
    let redis = RedisServer::start();
    let node = KoaApp::start(redis.port(), SCHEMA, TTL, &[OLD_KEY]);
    let mut child = std::process::Command::new(demo_exe())
        .args(["--listen", "127.0.0.1:0", "--secret", OLD_KEY])
        .env("TESSERA_COMPAT", "koa-session-redis3")
        .env("TESSERA_REDIS_URL", redis.url())
        .env("TESSERA_KEY_SCHEMA", SCHEMA)
        .env("TESSERA_TTL", TTL.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let mut b = Browser::new();
    assert_eq!(b.get(node.addr(), "/").await, "1 views");
    assert_eq!(b.get(addr, "/").await, "2 views");
    assert_eq!(b.get(node.addr(), "/").await, "3 views");
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
