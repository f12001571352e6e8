//! The koa-session-redis3 profile against the real seed: the Koa app in `tests/koa-app` and the
//! demo in `--compat koa-session-redis3` share one Redis and one browser's cookies.

use std::{collections::HashMap, net::SocketAddr};

use http::{Method, StatusCode};
use tessera_demo::DemoArgs;
use tessera_middleware::koa::Keygrip;
use tessera_tests::{
    http::{demo_exe, DemoServer, HttpClient},
    koa::{profile_args, Browser, KoaApp},
    support::{command_stats, redis_cli, reset_stats, RedisServer},
};

const SCHEMA: &str = "your:schema";
const TTL: u64 = 3600;
const OLD_KEY: &str = "the old app key, long enough";
const NEW_KEY: &str = "the new app key, also long enough";

fn args(url: &str, keys: &[&str]) -> DemoArgs {
    profile_args(url, keys, SCHEMA, TTL)
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
        redis_cli(p.redis.port(), &["GET", &b.key(SCHEMA)]),
        r#"{"views":3}"#
    );
    let ttl: u64 = redis_cli(p.redis.port(), &["TTL", &b.key(SCHEMA)])
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
        let key = b.key(SCHEMA);
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
    let stored = redis_cli(p.redis.port(), &["GET", &b.key(SCHEMA)]);
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
    assert_eq!(redis_cli(p.redis.port(), &["GET", &b.key(SCHEMA)]), stored);
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
    let fields = stored_fields(p.redis.port(), &b.key(SCHEMA));
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
    let fields = stored_fields(p.redis.port(), &b.key(SCHEMA));
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
