//! A demo server on a real loopback socket and a small cookie-carrying HTTP client, for the
//! end-to-end suites.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tessera_demo::{build_app, serve, DemoArgs};
use tessera_engine::SessionEngine;
use tokio::{net::TcpListener, task::JoinHandle};

/// The demo app served in-process on `127.0.0.1:<free port>`; stops on drop.
pub struct DemoServer {
    addr: SocketAddr,
    engine: SessionEngine,
    task: JoinHandle<()>,
}

impl DemoServer {
    /// Serves the demo on `engine` with `args` (secrets, cookie flags).
    pub async fn start(engine: SessionEngine, args: &DemoArgs) -> Self {
        let metrics = tessera_middleware::install_prometheus_recorder().ok();
        let app = build_app(engine.clone(), args, metrics).expect("valid demo arguments");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, app));
        DemoServer { addr, engine, task }
    }

    /// Serves the demo as its command line would: every mode (`--compat`, `--upgrade`) included.
    pub async fn start_from_args(args: &DemoArgs) -> Self {
        let metrics = tessera_middleware::install_prometheus_recorder().ok();
        let (engine, app) = tessera_demo::build_service(args, metrics)
            .await
            .expect("valid demo arguments");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, app));
        DemoServer { addr, engine, task }
    }

    /// Serves the demo routes behind a caller-built `layer` (for other policies and options).
    pub async fn start_with_layer(
        engine: SessionEngine,
        layer: tessera_middleware::SessionLayer,
    ) -> Self {
        use tower::Layer as _;
        let metrics = tessera_middleware::install_prometheus_recorder().ok();
        let app = layer.layer(tessera_demo::DemoApp::new(engine.clone(), metrics));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, app));
        DemoServer { addr, engine, task }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine behind it.
    pub fn engine(&self) -> &SessionEngine {
        &self.engine
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One answer: status, the `Set-Cookie` values and the body text.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Every `Set-Cookie` header.
    pub set_cookies: Vec<String>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The `name=value` pair of the session cookie set by this answer, if any (an empty value
    /// means cleared).
    pub fn cookie(&self, name: &str) -> Option<(String, String)> {
        self.set_cookies.iter().find_map(|raw| {
            let c = cookie::Cookie::parse(raw.clone()).ok()?;
            (c.name() == name).then(|| (c.name().to_owned(), c.value().to_owned()))
        })
    }

    /// The raw `Set-Cookie` header for cookie `name`.
    pub fn raw_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .find(|raw| raw.starts_with(&format!("{name}=")))
            .map(String::as_str)
    }
}

/// A keep-alive HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client with a connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// Sends one request; `cookie` is a whole `Cookie` header value.
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = res.status();
        let set_cookies = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            set_cookies,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    }

    /// GET, panicking on transport errors.
    pub async fn get(&self, addr: SocketAddr, path: &str, cookie: Option<&str>) -> Answer {
        self.send(addr, Method::GET, path, cookie, "")
            .await
            .unwrap()
    }
}

/// The demo binary (`tessera-demo`'s `demo`) next to the running test binary: `cargo test
/// --workspace` builds it for the demo crate's own tests, `cargo build -p tessera-demo` does too.
pub fn demo_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("demo"))
        .filter(|p| p.exists())
        .expect("the demo binary is built by `cargo test --workspace` (target/*/demo)")
}
