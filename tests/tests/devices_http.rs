//! The demo's per-user contract over HTTP, on every topology: `POST /login?user=`, `GET
//! /devices`, `DELETE /devices/{handle}`, `POST /logout-everywhere[?keep=current]`, and a login
//! refused by the cap (409, one line).

use http::{Method, StatusCode};
use tessera_demo::DemoArgs;
use tessera_tests::{
    http::{DemoServer, HttpClient},
    support::{RedisCluster, RedisSentinelSet, RedisServer},
};

const NAME: &str = "koa:sess";

struct Client {
    http: HttpClient,
    demo: DemoServer,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
    ) -> tessera_tests::http::Answer {
        self.http
            .send(self.demo.addr(), method, path, cookie, "")
            .await
            .unwrap()
    }

    /// Logs in as `user`; the `Cookie` header value to send afterwards.
    async fn login(&self, user: &str) -> String {
        let a = self
            .send(Method::POST, &format!("/login?user={user}"), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let (name, value) = a.cookie(NAME).expect("a login sets the cookie");
        format!("{name}={value}")
    }

    async fn devices(&self, cookie: &str) -> (StatusCode, Vec<serde_json::Value>) {
        let a = self.send(Method::GET, "/devices", Some(cookie)).await;
        let list = serde_json::from_str(&a.body).unwrap_or_default();
        (a.status, list)
    }
}

async fn contract(args: DemoArgs) {
    let c = Client {
        http: HttpClient::new(),
        demo: DemoServer::start_from_args(&args).await,
    };
    let first = c.login("alice").await;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = c.login("alice").await;
    let bob = c.login("bob").await;
    assert_eq!(
        c.send(Method::GET, "/devices", None).await.status,
        StatusCode::UNAUTHORIZED
    );

    let (status, list) = c.devices(&second).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.len(), 2, "{list:?}");
    for d in &list {
        assert!(d["handle"].is_string() && d["user_agent"].is_string());
        assert!(d["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(d["last_seen"].as_u64().unwrap() >= d["created"].as_u64().unwrap());
    }
    assert!(
        list[0]["created"].as_u64() > list[1]["created"].as_u64(),
        "newest first"
    );
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[1]["current"], false);
    let first_handle = list[1]["handle"].as_str().unwrap().to_owned();
    let (_, bobs) = c.devices(&bob).await;
    let bob_handle = bobs[0]["handle"].as_str().unwrap().to_owned();

    let delete = |handle: String, cookie: String| {
        let c = &c;
        async move {
            c.send(Method::DELETE, &format!("/devices/{handle}"), Some(&cookie))
                .await
                .status
        }
    };
    assert_eq!(
        delete(bob_handle, second.clone()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete("nonsense".into(), second.clone()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete(first_handle.clone(), second.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(first_handle, second.clone()).await,
        StatusCode::NO_CONTENT,
        "already gone"
    );
    assert_eq!(
        c.devices(&first).await.0,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );

    let third = c.login("alice").await;
    let a = c
        .send(
            Method::POST,
            "/logout-everywhere?keep=current",
            Some(&second),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(c.devices(&third).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(c.devices(&second).await.1.len(), 1);
    let a = c
        .send(Method::POST, "/logout-everywhere", Some(&second))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        a.cookie(NAME).map(|(_, v)| v),
        Some(String::new()),
        "the cookie is cleared"
    );
    assert_eq!(c.devices(&second).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.devices(&bob).await.1.len(),
        1,
        "another user is untouched"
    );

    // The cap, refusing: the second login is a 409 with a one-line reason.
    let capped = Client {
        http: HttpClient::new(),
        demo: DemoServer::start_from_args(&args.with_session_cap(1, true)).await,
    };
    capped.login("carol").await;
    let a = capped.send(Method::POST, "/login?user=carol", None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.body.trim_end().lines().count(), 1, "{}", a.body);
    assert!(a.body.contains("sessions"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_devices_on_memory() {
    contract(DemoArgs::for_tests()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_devices_on_standalone() {
    let server = RedisServer::start();
    contract(DemoArgs::for_tests().with_redis(server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_devices_on_cluster() {
    let cluster = RedisCluster::start();
    contract(DemoArgs::for_tests().with_redis(cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_devices_on_sentinel() {
    let set = RedisSentinelSet::start();
    contract(DemoArgs::for_tests().with_redis(set.url())).await;
}

/// The review's black-box case: alice logged in on two devices, both read (cached); Redis holds
/// writes for 400 ms; device 1 revokes device 2 and its client goes away after 150 ms, so the
/// server drops the request mid-call while Redis still holds the revoke. Once Redis applied
/// it, device 2 must stop being alice within the near cache's bound (1 s after the pause), in
/// every one of 20 tries; before the guarded write path it stayed logged in until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_whose_client_went_away_logs_the_device_out_within_the_bound() {
    use tokio::io::AsyncWriteExt as _;

    let server = RedisServer::start();
    let c = Client {
        http: HttpClient::new(),
        demo: DemoServer::start_from_args(
            &DemoArgs::for_tests()
                .with_redis(server.url())
                .with_near_cache(1000),
        )
        .await,
    };
    let bound = std::time::Duration::from_millis(1000);
    let mut stale = Vec::new();
    for attempt in 0..20 {
        let user = format!("alice{attempt}");
        let dev1 = c.login(&user).await;
        let dev2 = c.login(&user).await;
        let (_, list) = c.devices(&dev2).await;
        let dev2_handle = list
            .iter()
            .find(|d| d["current"] == true)
            .and_then(|d| d["handle"].as_str())
            .unwrap()
            .to_owned();
        for cookie in [&dev1, &dev2, &dev1, &dev2] {
            let a = c.send(Method::GET, "/session", Some(cookie)).await;
            assert!(a.body.contains(&user), "{}", a.body);
        }
        tessera_tests::support::redis_cli(server.port(), &["CLIENT", "PAUSE", "400", "WRITE"]);
        let paused = std::time::Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(c.demo.addr()).await.unwrap();
        let request = format!(
            "DELETE /devices/{dev2_handle} HTTP/1.1\r\nHost: demo\r\nCookie: {dev1}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        drop(tcp);
        // Redis applies the revoke when the pause ends; from then on, the bound.
        loop {
            let a = c.send(Method::GET, "/session", Some(&dev2)).await;
            if !a.body.contains(&user) {
                break;
            }
            if paused.elapsed() > std::time::Duration::from_millis(400) + bound {
                stale.push(format!(
                    "try {attempt}: device 2 still {} {:?} after the pause began",
                    a.body,
                    paused.elapsed()
                ));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The revoked device cannot revoke the one that revoked it.
        let (_, list) = c.devices(&dev1).await;
        assert_eq!(list.len(), 1, "try {attempt}: {list:?}");
    }
    assert!(stale.is_empty(), "{stale:#?}");
}
