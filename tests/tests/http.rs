//! End-to-end: the demo service over real TCP against standalone, cluster and sentinel Redis.

use std::{sync::Arc, time::Duration};

use http::{Method, StatusCode};
use tessera_demo::DemoArgs;
use tessera_engine::{RedisStore, SessionConfig, SessionEngine, SessionId};
use tessera_tests::{
    http::{demo_exe, DemoServer, HttpClient},
    support::{engine_command_counts, redis_cli, RedisCluster, RedisSentinelSet, RedisServer},
};

const NAME: &str = "koa:sess";
const SECRET_A: &str = "secret A: long enough to sign session cookies";
const SECRET_B: &str = "secret B: the newer signing key for rotation!";

/// Where the demo's store lives, and how to count commands that reached it.
struct Topology {
    url: String,
    master_ports: Box<dyn Fn() -> Vec<u16> + Send + Sync>,
}

impl Topology {
    /// Top-level engine commands (reads, writes) summed over masters since the last call.
    fn counts(&self) -> (u64, u64) {
        engine_command_counts(&(self.master_ports)())
    }
}

async fn engine(url: &str, schema: &str) -> SessionEngine {
    let store = RedisStore::connect(url).await.unwrap();
    let config =
        SessionConfig::default().with_key_schema(tessera_engine::KeySchema::new(schema).unwrap());
    SessionEngine::new(store, config).unwrap()
}

fn args(secrets: &[&str]) -> DemoArgs {
    DemoArgs::for_tests().with_secrets(secrets.iter().map(|s| s.to_string()).collect())
}

fn cookie_header(value: &str) -> String {
    format!("{NAME}={value}")
}

fn id_of(value: &str) -> SessionId {
    value[..22].parse().unwrap()
}

async fn e2e(topology: &Topology, tag: &str) {
    let client = HttpClient::new();
    let server = DemoServer::start(engine(&topology.url, tag).await, &args(&[SECRET_A])).await;
    let addr = server.addr();

    // Cookie round trip.
    let a = client.get(addr, "/", None).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "1 views"));
    let raw = a
        .raw_cookie(NAME)
        .expect("a new session sets the cookie")
        .to_owned();
    for attr in [
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=3600",
        "Expires=",
    ] {
        assert!(raw.contains(attr), "{attr} missing in {raw}");
    }
    assert!(
        !raw.contains("Secure"),
        "the demo defaults to --cookie-secure false"
    );
    let (_, value) = a.cookie(NAME).unwrap();
    let jar = cookie_header(&value);
    let a = client.get(addr, "/", Some(&jar)).await;
    assert_eq!(a.body, "2 views");

    // A read-only request: one read, zero writes, no Set-Cookie.
    topology.counts();
    let a = client.get(addr, "/views", Some(&jar)).await;
    assert_eq!(a.body, "2 views");
    assert!(a.set_cookies.is_empty(), "{:?}", a.set_cookies);
    assert_eq!(
        topology.counts(),
        (1, 0),
        "read-only request costs one read"
    );

    // Tampered cookie: fresh session, no store call.
    let mut forged = value.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    topology.counts();
    let a = client
        .get(addr, "/views", Some(&cookie_header(&forged)))
        .await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "0 views"));
    assert_eq!(
        topology.counts(),
        (0, 0),
        "a forged cookie never reaches Redis"
    );

    // 50 parallel PUTs of distinct fields on one session all land.
    let puts: Vec<_> = (0..50)
        .map(|i| {
            let (client, jar) = (client.clone(), jar.clone());
            tokio::spawn(async move {
                client
                    .send(
                        addr,
                        Method::PUT,
                        &format!("/session/f{i}"),
                        Some(&jar),
                        &i.to_string(),
                    )
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    for p in puts {
        assert_eq!(p.await.unwrap(), StatusCode::NO_CONTENT);
    }
    let a = client.get(addr, "/session", Some(&jar)).await;
    let data: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    for i in 0..50 {
        assert_eq!(data[format!("f{i}")], i, "field f{i} lost: {}", a.body);
    }
    assert_eq!(data["views"], 2);

    // Regenerate: new cookie, data carried, old cookie stops working.
    let a = client
        .send(addr, Method::POST, "/login?user=ada", Some(&jar), "")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let (_, new_value) = a.cookie(NAME).expect("login re-issues the cookie");
    assert_ne!(id_of(&new_value), id_of(&value));
    let new_jar = cookie_header(&new_value);
    let a = client.get(addr, "/session", Some(&new_jar)).await;
    let data: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (data["user"].as_str(), data["views"].as_u64()),
        (Some("ada"), Some(2))
    );
    let a = client.get(addr, "/views", Some(&jar)).await;
    assert_eq!(a.body, "0 views", "the pre-login id must be dead");
    let old_key = server.engine().key(&id_of(&value));
    assert!(server
        .engine()
        .store()
        .load(&old_key)
        .await
        .unwrap()
        .is_none());

    // Key rotation: a server signing with B and still accepting A re-issues the cookie under B.
    let rotated = DemoServer::start(
        engine(&topology.url, tag).await,
        &args(&[SECRET_B, SECRET_A]),
    )
    .await;
    let a = client.get(rotated.addr(), "/views", Some(&new_jar)).await;
    assert_eq!(a.body, "2 views");
    let (_, reissued) = a
        .cookie(NAME)
        .expect("a cookie signed by an old key is re-issued");
    assert_eq!(id_of(&reissued), id_of(&new_value));
    assert_ne!(reissued, new_value);
    let only_b = DemoServer::start(engine(&topology.url, tag).await, &args(&[SECRET_B])).await;
    assert_eq!(
        client
            .get(only_b.addr(), "/views", Some(&cookie_header(&reissued)))
            .await
            .body,
        "2 views"
    );
    assert_eq!(
        client
            .get(only_b.addr(), "/views", Some(&new_jar))
            .await
            .body,
        "0 views"
    );

    // Destroy: the key is deleted and the cookie cleared.
    let new_key = server.engine().key(&id_of(&new_value));
    assert!(server
        .engine()
        .store()
        .load(&new_key)
        .await
        .unwrap()
        .is_some());
    let a = client
        .send(addr, Method::POST, "/logout", Some(&new_jar), "")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let raw = a.raw_cookie(NAME).expect("logout clears the cookie");
    assert!(raw.contains("Max-Age=0") && raw.contains("1970"), "{raw}");
    assert!(server
        .engine()
        .store()
        .load(&new_key)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        client.get(addr, "/views", Some(&new_jar)).await.body,
        "0 views"
    );

    // Health.
    let a = client.get(addr, "/healthz", None).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_standalone() {
    let server = RedisServer::start();
    let port = server.port();
    let topology = Topology {
        url: server.url(),
        master_ports: Box::new(move || vec![port]),
    };
    e2e(&topology, "e2e-standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_cluster() {
    let cluster = Arc::new(RedisCluster::start());
    let c = cluster.clone();
    let topology = Topology {
        url: cluster.url(),
        master_ports: Box::new(move || c.master_ports()),
    };
    e2e(&topology, "e2e-cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_sentinel() {
    let set = Arc::new(RedisSentinelSet::start());
    let s = set.clone();
    let topology = Topology {
        url: set.url(),
        master_ports: Box::new(move || vec![s.master_port()]),
    };
    e2e(&topology, "e2e-sentinel").await;
}

/// The demo binary itself, driven by its documented flags and environment variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_binary_contract() {
    use std::io::{BufRead, BufReader};
    let server = RedisServer::start();
    let demo = demo_exe();
    let mut child = std::process::Command::new(&demo)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--secret",
            SECRET_A,
            "--ttl",
            "120",
        ])
        .env("TESSERA_REDIS_URL", server.url())
        .env("TESSERA_KEY_SCHEMA", "bin")
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
    let child = Kill(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let client = HttpClient::new();
    let a = client.get(addr, "/", None).await;
    assert_eq!(a.body, "1 views");
    let raw = a.raw_cookie(NAME).unwrap().to_owned();
    assert!(raw.contains("Max-Age=120"), "{raw}");
    let keys = redis_cli(server.port(), &["KEYS", "bin:{*"]);
    assert_eq!(
        keys.lines().count(),
        1,
        "one session under the key schema: {keys}"
    );
    let metrics = client.get(addr, "/metrics", None).await;
    assert!(
        metrics.body.contains("tessera_http_requests_total"),
        "{}",
        metrics.body
    );
    assert_eq!(
        client.get(addr, "/healthz", None).await.status,
        StatusCode::OK
    );
    drop(child);
}

/// Huge, repeated, non-UTF-8 and forged cookies over real TCP: a fresh session, never a 500, and
/// never a Redis command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cookies_never_reach_redis() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let port = server.port();
    let topology = Topology {
        url: server.url(),
        master_ports: Box::new(move || vec![port]),
    };
    let demo = DemoServer::start(engine(&topology.url, "hostile").await, &args(&[SECRET_A])).await;
    let client = HttpClient::new();
    let a = client.get(demo.addr(), "/", None).await;
    let (_, good) = a.cookie(NAME).unwrap();
    let forged_id = format!("{}{}", SessionId::generate(), &good[22..]);
    let cases: Vec<(&str, String)> = vec![
        ("huge", cookie_header(&"A".repeat(6000))),
        ("repeated", vec![cookie_header("x"); 200].join("; ")),
        ("forged", cookie_header(&forged_id)),
        ("unsigned id", cookie_header(&good[..22])),
        ("wrong name binding", format!("other={good}; {NAME}=")),
    ];
    topology.counts();
    for (what, header) in &cases {
        let a = client.get(demo.addr(), "/views", Some(header)).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::OK, "0 views"),
            "{what}"
        );
        assert!(
            a.set_cookies.is_empty(),
            "{what}: a fresh empty session sends no cookie"
        );
    }
    // Non-UTF-8 bytes need a raw socket: no client library sends them.
    let mut raw = tokio::net::TcpStream::connect(demo.addr()).await.unwrap();
    raw.write_all(b"GET /views HTTP/1.1\r\nHost: x\r\nCookie: koa:sess=\xff\xfe\xfd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("0 views"),
        "{reply}"
    );
    assert_eq!(topology.counts(), (0, 0), "hostile cookies reached Redis");
    // The genuine cookie still works afterwards.
    let a = client
        .get(demo.addr(), "/views", Some(&cookie_header(&good)))
        .await;
    assert_eq!(a.body, "1 views");
}

/// Bad configuration makes the demo binary exit 1 with a message, never panic.
#[test]
fn demo_binary_refuses_bad_configuration() {
    let demo = demo_exe();
    for (args, expected) in [
        (&["--ttl", "300000000000"][..], "400 days"),
        (&["--secret", "short"][..], "cookie secret #1 is 5 bytes"),
    ] {
        let out = std::process::Command::new(&demo)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TESSERA_REDIS_URL")
            .env_remove("TESSERA_SECRETS")
            .env_remove("TESSERA_TTL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Every method over crafted paths (overlapping route prefixes and suffixes, empty and doubled
/// segments, encodings, NUL, `..`, an 8 KiB segment) is answered with a status: none drops the
/// connection. `POST /account/devices/revoke` once panicked the worker (the route sliced
/// `&p[17..16]`). Per-user routes on, so every route is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_paths_are_answered_never_dropped() {
    let demo = DemoServer::start_from_args(&DemoArgs::for_tests().with_session_cap(3, false)).await;
    let client = HttpClient::new();
    let long = "x".repeat(8192);
    let mut paths: Vec<String> = [
        "/account/devices/revoke",
        "/account/devices//revoke",
        "/account/devices/revoke/revoke",
        "/account/devices/",
        "/account/devices",
        "/devices/",
        "/devices//",
        "/devices/%00",
        "/session/",
        "/session//",
        "/session/%",
        "/session/%00",
        "/session/%FF%FE",
        "/session/..",
        "/..",
        "//",
        "/",
        "/%2e%2e/session",
        "/login/",
        "/metrics/",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    paths.push(format!("/session/{long}"));
    paths.push(format!("/devices/{long}"));
    paths.push(format!("/account/devices/{long}/revoke"));
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::HEAD,
    ];
    let mut dropped = Vec::new();
    for path in &paths {
        for method in &methods {
            let body = if *method == Method::PUT { "1" } else { "" };
            match client
                .send(demo.addr(), method.clone(), path, None, body)
                .await
            {
                Ok(answer) => assert!(
                    answer.status.as_u16() >= 200,
                    "{method} {path}: {}",
                    answer.status
                ),
                Err(err) => {
                    dropped.push(format!("{method} {}: {err}", &path[..path.len().min(60)]))
                }
            }
        }
    }
    assert!(dropped.is_empty(), "{dropped:#?}");
}
