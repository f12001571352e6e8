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
