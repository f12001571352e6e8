//! The real seed for the koa-session-redis3 interop suites: the Koa app in `tests/koa-app`
//! (koa 1.7.1, koa-session-redis3 1.3.4 from its lockfile) run by `node` on a free loopback port,
//! killed on drop, plus a browser-like cookie jar shared by requests to both apps.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::Duration,
};

use http::{Method, StatusCode};

use crate::http::{Answer, HttpClient};

/// The Koa app's directory.
pub fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("koa-app")
}

/// Runs `npm ci` once per process when the app's dependencies are missing (`tests/run.sh`
/// normally does it first).
fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    DONE.get_or_init(|| {
        if app_dir().join("node_modules/koa-session-redis3").is_dir() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(app_dir())
            .status()
            .unwrap_or_else(|e| panic!("cannot run npm (install nodejs and npm): {e}"));
        assert!(status.success(), "npm ci failed in {}", app_dir().display());
    });
}

/// The Koa app, killed on drop.
pub struct KoaApp {
    child: Child,
    addr: SocketAddr,
}

impl KoaApp {
    /// Starts the app on Redis `redis_port` with the seed's options; `keys` are `app.keys`.
    pub fn start(redis_port: u16, key_schema: &str, ttl_secs: u64, keys: &[&str]) -> Self {
        ensure_installed();
        let mut child = Command::new("node")
            .arg("app.js")
            .current_dir(app_dir())
            .env("REDIS_PORT", redis_port.to_string())
            .env("PORT", "0")
            .env("KEY_SCHEMA", key_schema)
            .env("TTL", ttl_secs.to_string())
            .env("APP_KEYS", keys.join("\n"))
            // The seed passes the deprecated `maxage` option to cookies on every write.
            .env("NO_DEPRECATION", "cookies")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (install nodejs): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                panic!("the Koa app did not print its address within 20 s");
            }
        };
        KoaApp { child, addr }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for KoaApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cookies as a browser keeps them for one site: set by any answer, sent with every request.
/// A cookie set empty or with an expiry in the past is removed.
#[derive(Debug, Clone, Default)]
pub struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    /// An empty jar.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the answer's `Set-Cookie` headers in order.
    pub fn update(&mut self, answer: &Answer) {
        for raw in &answer.set_cookies {
            let Ok(c) = cookie::Cookie::parse(raw.clone()) else {
                continue;
            };
            let expired = c
                .expires_datetime()
                .is_some_and(|at| at.unix_timestamp() < 86_400);
            if c.value().is_empty() || expired {
                self.cookies.remove(c.name());
            } else {
                self.cookies
                    .insert(c.name().to_owned(), c.value().to_owned());
            }
        }
    }

    /// The `Cookie` header, if any cookie is held.
    pub fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// One cookie's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sets a cookie by hand (tampering, replaying).
    pub fn set(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_owned(), value.to_owned());
    }

    /// Drops a cookie.
    pub fn remove(&mut self, name: &str) {
        self.cookies.remove(name);
    }
}

/// One browser: requests carry and update its jar.
pub struct Browser {
    client: HttpClient,
    /// Its cookies.
    pub jar: Jar,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A browser with no cookies.
    pub fn new() -> Self {
        Browser {
            client: HttpClient::new(),
            jar: Jar::new(),
        }
    }

    /// Sends a request with the jar's cookies and keeps what the answer sets.
    pub async fn send(
        &mut self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: &str,
    ) -> Answer {
        let cookie = self.jar.header();
        let answer = self
            .client
            .send(addr, method, path, cookie.as_deref(), body)
            .await
            .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"));
        self.jar.update(&answer);
        answer
    }

    /// GET that must answer 200; the body.
    pub async fn get(&mut self, addr: SocketAddr, path: &str) -> String {
        let a = self.send(addr, Method::GET, path, "").await;
        assert_eq!(a.status, StatusCode::OK, "{path} on {addr}: {}", a.body);
        a.body
    }

    /// The Redis key of the seed-layout session its `koa:sess` cookie names under `schema`.
    pub fn key(&self, schema: &str) -> String {
        let sid = self.jar.get("koa:sess").expect("a session cookie");
        format!("{schema}:{sid}")
    }
}

/// The demo's arguments for the koa-session-redis3 profile on `url`, `keys` as `app.keys`.
pub fn profile_args(
    url: &str,
    keys: &[&str],
    key_schema: &str,
    ttl: u64,
) -> tessera_demo::DemoArgs {
    let mut args = tessera_demo::DemoArgs::for_tests()
        .with_redis(url)
        .with_secrets(keys.iter().map(|k| k.to_string()).collect())
        .with_ttl(ttl)
        .with_koa_session_redis3(key_schema, false);
    // A merged save may re-read and retry many times under the concurrent-writer cases, all
    // within one command timeout; with the whole suite running on 2 cores, 1 s was measured too
    // short once (a 503). These tests are about what is saved, not how fast.
    args.redis_timeout_ms = 5000;
    args
}
