//! In-process tests of the session middleware's contract, driven through the tower service (no
//! sockets) on `MemoryStore`: cookie attributes and round trips, skip-unchanged, empty new
//! sessions, tampered cookies, key rotation, destroy, regenerate, fail-closed / fail-open, the
//! size limit, concurrent field merges, metrics and (with the `axum` feature) the axum extractor.

use std::{
    convert::Infallible,
    fmt::Debug,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use cookie::{time::OffsetDateTime, Cookie, SameSite};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tessera_demo::{build_app, DemoApp, DemoArgs};
use tessera_engine::{
    store::Fields, Error as EngineError, ErrorKind as EngineErrorKind, MemoryStore, Regenerated,
    SessionConfig, SessionEngine, SessionId, SessionStore, SESSION_ID_LEN,
};
use tessera_middleware::{FailurePolicy, Rejection, SessionLayer, SessionService, SigningKeys};
use tower::{Layer, Service, ServiceExt};

const COOKIE: &str = "koa:sess";
const SECRET_A: &str = "secret A: thirty-two bytes or more, for signing";
const SECRET_B: &str = "secret B: thirty-two bytes or more, the new key";
const TTL_SECS: i64 = 3600;

type App = SessionService<DemoApp>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A response with its body collected.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    /// The raw `Set-Cookie` header, asserting there is at most one.
    fn raw_set_cookie(&self) -> Option<String> {
        let all: Vec<_> = self.headers.get_all(header::SET_COOKIE).iter().collect();
        assert!(all.len() <= 1, "more than one Set-Cookie: {all:?}");
        all.first()
            .map(|v| v.to_str().expect("Set-Cookie is ASCII").to_owned())
    }

    /// The parsed `Set-Cookie`, if any.
    fn set_cookie(&self) -> Option<Cookie<'static>> {
        self.raw_set_cookie()
            .map(|raw| Cookie::parse(raw.clone()).unwrap_or_else(|e| panic!("{raw:?}: {e}")))
    }

    /// The parsed `Set-Cookie`, which must be there.
    fn cookie(&self) -> Cookie<'static> {
        self.set_cookie()
            .unwrap_or_else(|| panic!("expected a Set-Cookie, got {self:?}"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{:?}: {e}", self.body))
    }

    #[track_caller]
    fn assert_ok(&self, body: &str) {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert_eq!(self.body, body, "{self:?}");
    }

    #[track_caller]
    fn assert_no_cookie(&self) {
        assert_eq!(
            self.raw_set_cookie(),
            None,
            "unexpected Set-Cookie: {self:?}"
        );
    }
}

/// One request through a clone of `svc`.
async fn call<S, B>(svc: &S, req: Request<String>) -> Reply
where
    S: Service<Request<String>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
    B::Error: Debug,
{
    let response = match svc.clone().oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

fn request(method: Method, uri: &str, cookie: Option<&Cookie<'_>>, body: &str) -> Request<String> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        builder = builder.header(header::COOKIE, format!("{}={}", c.name(), c.value()));
    }
    builder.body(body.to_owned()).expect("valid request")
}

fn get(uri: &str, cookie: Option<&Cookie<'_>>) -> Request<String> {
    request(Method::GET, uri, cookie, "")
}

fn post(uri: &str, cookie: Option<&Cookie<'_>>) -> Request<String> {
    request(Method::POST, uri, cookie, "")
}

fn put(uri: &str, cookie: Option<&Cookie<'_>>, body: &str) -> Request<String> {
    request(Method::PUT, uri, cookie, body)
}

/// A GET carrying the given raw `Cookie` header values (one header each).
fn get_with_headers(uri: &str, values: Vec<HeaderValue>) -> Request<String> {
    let mut req = get(uri, None);
    for v in values {
        req.headers_mut().append(header::COOKIE, v);
    }
    req
}

fn keys(secrets: &[&str]) -> SigningKeys {
    SigningKeys::new(secrets).expect("valid secrets")
}

fn engine_on(store: impl SessionStore, config: SessionConfig) -> SessionEngine {
    SessionEngine::new(store, config)
}

/// The demo routes behind `layer`.
fn app_with(layer: &SessionLayer) -> App {
    let engine = layer.engine().clone();
    layer.layer(DemoApp::new(engine, None))
}

/// The demo routes behind a plain-http layer signing with `SECRET_A`.
fn app(engine: &SessionEngine) -> App {
    app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap(),
    )
}

/// The session id a cookie names (verified with `secrets`).
fn id_of(cookie: &Cookie<'_>, secrets: &[&str]) -> SessionId {
    keys(secrets)
        .verify(COOKIE, cookie.value())
        .unwrap_or_else(|r| panic!("cookie {:?} does not verify: {r:?}", cookie.value()))
        .id
}

/// A correctly signed cookie for a session id that was never stored.
fn cookie_for(id: &SessionId, secret: &str) -> Cookie<'static> {
    Cookie::new(COOKIE, keys(&[secret]).sign(COOKIE, id))
}

/// Creates a session with `views = 1` through `svc` and returns its cookie.
async fn establish(svc: &App) -> Cookie<'static> {
    let r = call(svc, get("/", None)).await;
    r.assert_ok("1 views");
    r.cookie()
}

#[track_caller]
fn assert_clearing(cookie: &Cookie<'_>) {
    assert_eq!(cookie.name(), COOKIE);
    assert_eq!(cookie.value(), "");
    assert_eq!(cookie.max_age(), Some(cookie::time::Duration::ZERO));
    let expires = cookie
        .expires_datetime()
        .expect("a clearing cookie has Expires");
    assert!(
        expires < OffsetDateTime::now_utc(),
        "Expires must be in the past: {expires}"
    );
    assert_eq!(cookie.path(), Some("/"));
}

// ---------------------------------------------------------------------------------------------
// A store wrapper that counts calls and injects failures
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward everything to the memory store.
    PassThrough,
    /// Every operation fails with a Redis error.
    FailAll,
    /// Loads fail; writes go through.
    FailLoad,
    /// Loads go through; create, update and delete fail.
    FailWrites,
    /// Loads go through; create, update and delete fail with an error of this kind.
    WriteError(EngineErrorKind),
}

#[derive(Debug, Default)]
struct Calls {
    load: AtomicUsize,
    create: AtomicUsize,
    update: AtomicUsize,
    delete: AtomicUsize,
    ping: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Probe {
    inner: MemoryStore,
    mode: Mode,
    calls: Arc<Calls>,
}

impl Probe {
    fn new(inner: MemoryStore, mode: Mode) -> Self {
        Probe {
            inner,
            mode,
            calls: Arc::default(),
        }
    }

    fn loads(&self) -> usize {
        self.calls.load.load(Ordering::SeqCst)
    }

    fn creates(&self) -> usize {
        self.calls.create.load(Ordering::SeqCst)
    }

    fn updates(&self) -> usize {
        self.calls.update.load(Ordering::SeqCst)
    }

    fn deletes(&self) -> usize {
        self.calls.delete.load(Ordering::SeqCst)
    }

    /// Create, update and delete calls, failed ones included.
    fn writes(&self) -> usize {
        self.creates() + self.updates() + self.deletes()
    }

    fn total(&self) -> usize {
        self.loads() + self.writes() + self.calls.ping.load(Ordering::SeqCst)
    }

    fn fails(&self, write: bool) -> bool {
        match self.mode {
            Mode::PassThrough => false,
            Mode::FailAll => true,
            Mode::FailLoad => !write,
            Mode::FailWrites | Mode::WriteError(_) => write,
        }
    }

    /// The error an injected failure of `op` returns.
    fn injected(&self, op: &str) -> EngineError {
        let kind = match self.mode {
            Mode::WriteError(kind) => kind,
            _ => EngineErrorKind::Redis,
        };
        EngineError::new(kind, format!("injected {op} failure"))
    }
}

/// What `#[async_trait]` expands a trait method's return type to (this crate does not depend on
/// async-trait, so the impl is written out by hand).
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = tessera_engine::Result<T>> + Send + 'a>>;

impl SessionStore for Probe {
    fn load<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 str,
    ) -> StoreFuture<'async_trait, Option<Fields>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.calls.load.fetch_add(1, Ordering::SeqCst);
            if self.fails(false) {
                return Err(self.injected("load"));
            }
            self.inner.load(key).await
        })
    }

    fn create<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        key: &'life1 str,
        fields: &'life2 [(String, Bytes)],
        ttl: Duration,
    ) -> StoreFuture<'async_trait, bool>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.calls.create.fetch_add(1, Ordering::SeqCst);
            if self.fails(true) {
                return Err(self.injected("create"));
            }
            self.inner.create(key, fields, ttl).await
        })
    }

    fn update<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        key: &'life1 str,
        set: &'life2 [(String, Bytes)],
        delete: &'life3 [String],
        ttl: Option<Duration>,
    ) -> StoreFuture<'async_trait, bool>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.calls.update.fetch_add(1, Ordering::SeqCst);
            if self.fails(true) {
                return Err(self.injected("update"));
            }
            self.inner.update(key, set, delete, ttl).await
        })
    }

    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 str,
    ) -> StoreFuture<'async_trait, bool>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.calls.delete.fetch_add(1, Ordering::SeqCst);
            if self.fails(true) {
                return Err(self.injected("delete"));
            }
            self.inner.delete(key).await
        })
    }

    fn regenerate<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        old: &'life1 str,
        new: &'life2 str,
        fields: &'life3 [(String, Bytes)],
        ttl: Duration,
    ) -> StoreFuture<'async_trait, Regenerated>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.calls.create.fetch_add(1, Ordering::SeqCst);
            if self.fails(true) {
                return Err(self.injected("regenerate"));
            }
            self.inner.regenerate(old, new, fields, ttl).await
        })
    }

    fn ping<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.calls.ping.fetch_add(1, Ordering::SeqCst);
            if self.mode == Mode::FailAll {
                return Err(self.injected("ping"));
            }
            self.inner.ping().await
        })
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Cookie round trip and attributes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cookie_round_trip_with_default_attributes() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    // The layer's defaults: Secure included.
    let svc = app_with(&SessionLayer::new(engine.clone(), keys(&[SECRET_A])));

    let first = call(&svc, get("/", None)).await;
    first.assert_ok("1 views");
    let raw = first.raw_set_cookie().expect("a new session sets a cookie");
    let c = first.cookie();
    assert_eq!(c.name(), COOKIE);
    assert_eq!(c.path(), Some("/"), "{raw}");
    assert_eq!(c.http_only(), Some(true), "{raw}");
    assert_eq!(c.same_site(), Some(SameSite::Lax), "{raw}");
    assert_eq!(c.secure(), Some(true), "Secure is on by default: {raw}");
    assert_eq!(c.domain(), None, "host-only by default: {raw}");
    let max_age = c
        .max_age()
        .expect("persistent cookie has Max-Age")
        .whole_seconds();
    assert!(
        (TTL_SECS - 5..=TTL_SECS).contains(&max_age),
        "Max-Age {max_age}"
    );
    let expires = c.expires_datetime().expect("persistent cookie has Expires");
    let expected = OffsetDateTime::now_utc() + cookie::time::Duration::seconds(TTL_SECS);
    assert!(
        (expires - expected).abs() < cookie::time::Duration::seconds(5),
        "Expires {expires}, expected about {expected}"
    );
    // The value is `<id>.<signature>` naming the session that was stored.
    let id = id_of(&c, &[SECRET_A]);
    assert_eq!(c.value().len(), SESSION_ID_LEN + 1 + 43);
    assert!(c.value().starts_with(&format!("{id}.")));
    assert!(store.load(&engine.key(&id)).await.unwrap().is_some());
    assert_eq!(store.len(), 1);

    let second = call(&svc, get("/", Some(&c))).await;
    second.assert_ok("2 views");
    // A changed session is saved under the same id; with no renewal due (more than half of the
    // idle TTL left) its cookie is not re-sent.
    second.assert_no_cookie();
    let third = call(&svc, get("/", Some(&c))).await;
    third.assert_ok("3 views");
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn secure_can_be_turned_off() {
    let engine = engine_on(MemoryStore::new(), SessionConfig::default());
    let svc = app_with(
        &SessionLayer::new(engine, keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap(),
    );
    let r = call(&svc, get("/", None)).await;
    r.assert_ok("1 views");
    let raw = r.raw_set_cookie().expect("Set-Cookie");
    assert!(!raw.to_ascii_lowercase().contains("secure"), "{raw}");
    let c = r.cookie();
    assert_ne!(c.secure(), Some(true));
    assert_eq!(c.http_only(), Some(true));
    assert_eq!(c.same_site(), Some(SameSite::Lax));
    call(&svc, get("/", Some(&c))).await.assert_ok("2 views");
}

#[tokio::test]
async fn demo_build_app_round_trip() {
    let args = DemoArgs::for_tests();
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let svc = build_app(engine.clone(), &args, None).expect("app");
    let c = establish(&svc).await;
    assert_ne!(c.secure(), Some(true), "the demo serves plain http");
    // The demo signs with the first configured secret.
    let id = id_of(&c, &[args.secrets[0].as_str()]);
    assert_eq!(store.len(), 1);
    let r = call(&svc, get("/", Some(&c))).await;
    r.assert_ok("2 views");
    r.assert_no_cookie();
    let stored = engine.session(Some(id));
    assert_eq!(
        stored.get::<u64>("views").await.unwrap(),
        Some(2),
        "the write was saved"
    );
}

#[tokio::test]
async fn browser_session_cookie_has_no_max_age_or_expires() {
    let engine = engine_on(MemoryStore::new(), SessionConfig::default());
    let svc = app_with(
        &SessionLayer::new(engine, keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap()
            .with_persistent_cookie(false),
    );
    let c = establish(&svc).await;
    assert_eq!(c.max_age(), None);
    assert_eq!(c.expires(), None);
    call(&svc, get("/", Some(&c))).await.assert_ok("2 views");
}

#[tokio::test]
async fn custom_cookie_options_are_applied() {
    let engine = engine_on(
        MemoryStore::new(),
        SessionConfig::default()
            .with_idle_ttl(Duration::from_secs(120))
            .unwrap(),
    );
    let layer = SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
        .with_cookie_name("sid")
        .expect("valid name")
        .with_path("/app")
        .unwrap()
        .with_domain(Some("example.test".into()))
        .unwrap()
        .with_same_site(SameSite::Strict)
        .unwrap()
        .with_http_only(false);
    let svc = app_with(&layer);
    let r = call(&svc, get("/", None)).await;
    r.assert_ok("1 views");
    let c = r.cookie();
    assert_eq!(c.name(), "sid");
    assert_eq!(c.path(), Some("/app"));
    assert_eq!(c.domain(), Some("example.test"));
    assert_eq!(c.same_site(), Some(SameSite::Strict));
    assert_ne!(c.http_only(), Some(true));
    assert_eq!(c.secure(), Some(true));
    let max_age = c.max_age().expect("Max-Age").whole_seconds();
    assert!(
        (115..=120).contains(&max_age),
        "Max-Age follows the idle TTL: {max_age}"
    );
    call(&svc, get("/", Some(&c))).await.assert_ok("2 views");

    // The signature binds the cookie name: the same value under the default name is rejected
    // by a default-named layer signing with the same key.
    let renamed = Cookie::new(COOKIE, c.value().to_owned());
    call(&app(&engine), get("/views", Some(&renamed)))
        .await
        .assert_ok("0 views");

    for bad in ["", "a b", "a=b", "a;b", "a,b", "sess\u{e9}"] {
        let err = SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
            .with_cookie_name(bad)
            .expect_err(bad);
        assert!(err.is_config(), "{bad:?}");
    }
}

#[tokio::test]
async fn due_renewal_resends_the_cookie() {
    // With renew_below = 1.0 every read renews the expiry (one touch write, cookie re-sent).
    let probe = Probe::new(MemoryStore::new(), Mode::PassThrough);
    let engine = engine_on(
        probe.clone(),
        SessionConfig::default().with_renew_below(1.0).unwrap(),
    );
    let svc = app(&engine);
    let c = establish(&svc).await;
    let id = id_of(&c, &[SECRET_A]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = call(&svc, get("/views", Some(&c))).await;
    r.assert_ok("1 views");
    let renewed = r.cookie();
    assert_eq!(id_of(&renewed, &[SECRET_A]), id);
    let max_age = renewed.max_age().expect("Max-Age").whole_seconds();
    assert!(
        (TTL_SECS - 5..=TTL_SECS).contains(&max_age),
        "Max-Age {max_age}"
    );
    assert_eq!(probe.updates(), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Unchanged sessions send no cookie and write nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unchanged_session_sends_no_set_cookie() {
    let probe = Probe::new(MemoryStore::new(), Mode::PassThrough);
    let engine = engine_on(probe.clone(), SessionConfig::default());
    let svc = app(&engine);
    let c = establish(&svc).await;
    assert_eq!((probe.creates(), probe.updates()), (1, 0));

    let loads = probe.loads();
    let r = call(&svc, get("/views", Some(&c))).await;
    r.assert_ok("1 views");
    r.assert_no_cookie();
    assert_eq!(probe.loads(), loads + 1, "the read loads the session once");
    assert_eq!(probe.writes(), 1, "renewal not due: no write");

    // Routes that never touch the session cost nothing at all.
    let before = probe.total();
    let r = call(&svc, get("/nowhere", Some(&c))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.assert_no_cookie();
    assert_eq!(probe.total(), before);
}

// ---------------------------------------------------------------------------------------------
// 3. Empty new sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn empty_new_session_is_not_saved_by_default() {
    let store = MemoryStore::new();
    let probe = Probe::new(store.clone(), Mode::PassThrough);
    let svc = app(&engine_on(probe.clone(), SessionConfig::default()));
    let r = call(&svc, get("/views", None)).await;
    r.assert_ok("0 views");
    r.assert_no_cookie();
    assert_eq!(store.len(), 0);
    assert_eq!(
        probe.total(),
        0,
        "no cookie and nothing to save: no store call"
    );
}

#[tokio::test]
async fn empty_new_session_is_saved_with_save_new_empty() {
    let store = MemoryStore::new();
    let engine = engine_on(
        store.clone(),
        SessionConfig::default().with_save_new_empty(true),
    );
    let svc = app(&engine);
    let r = call(&svc, get("/views", None)).await;
    r.assert_ok("0 views");
    let c = r.cookie();
    assert_eq!(store.len(), 1);
    let id = id_of(&c, &[SECRET_A]);
    assert!(store.load(&engine.key(&id)).await.unwrap().is_some());
    // It is a real session now: the cookie is recognised and nothing more is written.
    let r = call(&svc, get("/views", Some(&c))).await;
    r.assert_ok("0 views");
    r.assert_no_cookie();
    call(&svc, get("/", Some(&c))).await.assert_ok("1 views");
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. Tampered cookies
// ---------------------------------------------------------------------------------------------

/// Replaces the character at `at` with a different base64url character.
fn flip(value: &str, at: usize) -> String {
    let mut bytes = value.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn tampered_cookies_get_a_fresh_session_without_store_calls() {
    let store = MemoryStore::new();
    let probe = Probe::new(store.clone(), Mode::PassThrough);
    let engine = engine_on(probe.clone(), SessionConfig::default());
    let svc = app(&engine);
    let good = establish(&svc).await;
    let value = good.value().to_owned();
    let other_id = SessionId::generate().to_string();
    let sig_start = SESSION_ID_LEN + 1;

    let bad_values: Vec<(&str, String)> = vec![
        ("signature char changed", flip(&value, sig_start + 10)),
        ("last signature char changed", flip(&value, value.len() - 1)),
        ("id char changed", flip(&value, 3)),
        (
            "id swapped",
            format!("{other_id}{}", &value[SESSION_ID_LEN..]),
        ),
        ("bare id", value[..SESSION_ID_LEN].to_owned()),
        ("signature only", value[sig_start..].to_owned()),
        ("garbage", "garbage".to_owned()),
        ("empty", String::new()),
        ("separator replaced", value.replace('.', "_")),
        ("one char short", value[..value.len() - 1].to_owned()),
        ("one char long", format!("{value}A")),
        ("oversized 10 KB", "A".repeat(10 * 1024)),
        ("signed for another cookie name", {
            let id = id_of(&good, &[SECRET_A]);
            keys(&[SECRET_A]).sign("other", &id)
        }),
        ("signed with another key", {
            let id = id_of(&good, &[SECRET_A]);
            keys(&[SECRET_B]).sign(COOKIE, &id)
        }),
    ];
    for (what, bad) in &bad_values {
        let loads = probe.loads();
        let header = HeaderValue::from_str(&format!("{COOKIE}={bad}")).unwrap();
        let r = call(&svc, get_with_headers("/views", vec![header])).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {r:?}");
        assert_eq!(r.body, "0 views", "{what}");
        r.assert_no_cookie();
        assert_eq!(probe.loads(), loads, "{what}: the store must not be asked");
        // Writing to the fresh session creates a new id; the presented one is never adopted.
        let header = HeaderValue::from_str(&format!("{COOKIE}={bad}")).unwrap();
        let r = call(&svc, get_with_headers("/", vec![header])).await;
        r.assert_ok("1 views");
        assert_eq!(probe.loads(), loads, "{what}: the store must not be asked");
        let fresh = id_of(&r.cookie(), &[SECRET_A]);
        assert_ne!(fresh, id_of(&good, &[SECRET_A]), "{what}");
        assert!(!bad.contains(&fresh.to_string()), "{what}");
    }

    // Repeated cookies: a flood of bad duplicates is ignored without store calls.
    let loads = probe.loads();
    let flood = vec![format!("{COOKIE}={}", flip(&value, sig_start + 3)); 50].join("; ");
    let header = HeaderValue::from_str(&flood).unwrap();
    let r = call(&svc, get_with_headers("/views", vec![header.clone()])).await;
    r.assert_ok("0 views");
    r.assert_no_cookie();
    // ... also spread over many Cookie headers.
    let r = call(&svc, get_with_headers("/views", vec![header; 20])).await;
    r.assert_ok("0 views");
    assert_eq!(probe.loads(), loads);

    // A session cookie with non-ASCII bytes is ignored, without a 500.
    let raw = HeaderValue::from_bytes(b"koa:sess=\xff\xfe\xfd; other=1").unwrap();
    let r = call(&svc, get_with_headers("/views", vec![raw])).await;
    r.assert_ok("0 views");
    r.assert_no_cookie();
    assert_eq!(probe.loads(), loads);

    // The genuine cookie still works (and is found among bad duplicates and other cookies).
    let mixed = format!(
        "theme=dark; {COOKIE}={}; {COOKIE}={value}",
        flip(&value, sig_start + 3)
    );
    let r = call(
        &svc,
        get_with_headers("/views", vec![HeaderValue::from_str(&mixed).unwrap()]),
    )
    .await;
    r.assert_ok("1 views");
    let non_utf8 = HeaderValue::from_bytes(b"junk=\xff").unwrap();
    let good_header = HeaderValue::from_str(&format!("{COOKIE}={value}")).unwrap();
    let r = call(
        &svc,
        get_with_headers("/views", vec![non_utf8, good_header]),
    )
    .await;
    r.assert_ok("1 views");
    assert_eq!(probe.loads(), loads + 2);
}

#[tokio::test]
async fn signed_cookie_for_unknown_session_is_replaced_not_adopted() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let svc = app(&engine);
    let planted = SessionId::generate();
    let c = cookie_for(&planted, SECRET_A);
    let r = call(&svc, get("/", Some(&c))).await;
    r.assert_ok("1 views");
    let id = id_of(&r.cookie(), &[SECRET_A]);
    assert_ne!(id, planted, "a client-chosen id must never be adopted");
    assert!(store.load(&engine.key(&planted)).await.unwrap().is_none());
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Key rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn key_rotation_accepts_old_key_and_reissues_under_new_one() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let old = app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap(),
    );
    let rotated = app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_B, SECRET_A]))
            .with_secure(false)
            .unwrap(),
    );
    let only_new = app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_B]))
            .with_secure(false)
            .unwrap(),
    );

    let cookie_a = establish(&old).await;
    let id = id_of(&cookie_a, &[SECRET_A]);

    // [B, A] accepts the A-signed cookie and re-issues it signed with B, even though the session
    // itself did not change.
    let r = call(&rotated, get("/views", Some(&cookie_a))).await;
    r.assert_ok("1 views");
    let cookie_b = r.cookie();
    assert_eq!(cookie_b.name(), COOKIE);
    assert_ne!(cookie_b.value(), cookie_a.value());
    let verified = SigningKeys::new([SECRET_B])
        .unwrap()
        .verify(COOKIE, cookie_b.value())
        .expect("re-issued under the new key");
    assert_eq!(verified.id, id);
    assert!(!verified.stale_key);
    assert_eq!(
        keys(&[SECRET_A]).verify(COOKIE, cookie_b.value()),
        Err(Rejection::BadSignature)
    );
    assert_eq!(cookie_b.path(), Some("/"));
    assert_eq!(cookie_b.http_only(), Some(true));
    assert_eq!(cookie_b.same_site(), Some(SameSite::Lax));
    let max_age = cookie_b.max_age().expect("Max-Age").whole_seconds();
    assert!((1..=TTL_SECS).contains(&max_age), "Max-Age {max_age}");

    // The B cookie is current: no further re-issue, and writes keep working.
    let r = call(&rotated, get("/views", Some(&cookie_b))).await;
    r.assert_ok("1 views");
    r.assert_no_cookie();
    let r = call(&rotated, get("/", Some(&cookie_b))).await;
    r.assert_ok("2 views");
    r.assert_no_cookie();
    // A write with the old key's cookie re-issues it under the new key too.
    let r = call(&rotated, get("/", Some(&cookie_a))).await;
    r.assert_ok("3 views");
    assert_eq!(id_of(&r.cookie(), &[SECRET_B]), id);
    let max_age = r.cookie().max_age().expect("Max-Age").whole_seconds();
    assert!((1..=TTL_SECS).contains(&max_age), "Max-Age {max_age}");

    // A layer that dropped A rejects the A cookie: fresh session. B's cookie still works there.
    let r = call(&only_new, get("/views", Some(&cookie_a))).await;
    r.assert_ok("0 views");
    r.assert_no_cookie();
    call(&only_new, get("/views", Some(&cookie_b)))
        .await
        .assert_ok("3 views");
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Destroy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn logout_destroys_session_and_clears_cookie() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let svc = app(&engine);
    let c = establish(&svc).await;
    let id = id_of(&c, &[SECRET_A]);
    let key = engine.key(&id);
    assert!(store.load(&key).await.unwrap().is_some());

    let r = call(&svc, post("/logout", Some(&c))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_clearing(&r.cookie());
    assert!(store.load(&key).await.unwrap().is_none());
    assert_eq!(store.len(), 0);

    // The old cookie now names nothing: a fresh session, and the client is told to drop it.
    let r = call(&svc, get("/views", Some(&c))).await;
    r.assert_ok("0 views");
    assert_clearing(&r.cookie());
    // Using it to write starts a new session under a new id; the old one is not resurrected.
    let r = call(&svc, get("/", Some(&c))).await;
    r.assert_ok("1 views");
    assert_ne!(id_of(&r.cookie(), &[SECRET_A]), id);
    assert!(store.load(&key).await.unwrap().is_none());
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn logout_without_cookie_sets_no_cookie() {
    let store = MemoryStore::new();
    let svc = app(&engine_on(store.clone(), SessionConfig::default()));
    let r = call(&svc, post("/logout", None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    r.assert_no_cookie();
    assert_eq!(store.len(), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Regenerate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_regenerates_id_and_carries_data() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let svc = app(&engine);
    let c = establish(&svc).await;
    call(&svc, get("/", Some(&c))).await.assert_ok("2 views");
    let old_id = id_of(&c, &[SECRET_A]);

    let r = call(&svc, post("/login?user=ada", Some(&c))).await;
    r.assert_ok("logged in as ada\n");
    let new = r.cookie();
    let new_id = id_of(&new, &[SECRET_A]);
    assert_ne!(new_id, old_id);
    assert!(store.load(&engine.key(&old_id)).await.unwrap().is_none());
    assert!(store.load(&engine.key(&new_id)).await.unwrap().is_some());
    assert_eq!(store.len(), 1);

    let r = call(&svc, get("/session", Some(&new))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"views": 2, "user": "ada"}));
    call(&svc, get("/views", Some(&new)))
        .await
        .assert_ok("2 views");

    // The pre-login cookie is dead: no data, no user.
    let r = call(&svc, get("/session", Some(&c))).await;
    assert_eq!(r.json(), json!({}));
    call(&svc, get("/views", Some(&c)))
        .await
        .assert_ok("0 views");
}

#[tokio::test]
async fn login_on_new_session_sets_a_cookie() {
    let store = MemoryStore::new();
    let svc = app(&engine_on(store.clone(), SessionConfig::default()));
    let r = call(&svc, post("/login?user=bob", None)).await;
    r.assert_ok("logged in as bob\n");
    let c = r.cookie();
    let r = call(&svc, get("/session", Some(&c))).await;
    assert_eq!(r.json(), json!({"user": "bob"}));
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 8. Fail-closed and fail-open
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fail_closed_answers_503_with_retry_after() {
    let probe = Probe::new(MemoryStore::new(), Mode::FailAll);
    let engine = engine_on(probe.clone(), SessionConfig::default());
    let svc = app(&engine);
    let c = cookie_for(&SessionId::generate(), SECRET_A);

    // With a cookie: the load fails.
    let r = call(&svc, get("/", Some(&c))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "1");
    r.assert_no_cookie();
    assert!(!r.body.contains("views"), "{r:?}");
    assert_eq!(probe.loads(), 1);
    assert_eq!(
        probe.writes(),
        0,
        "a failed load is never followed by a write"
    );

    // Without a cookie: the handler succeeds, the create fails, and the success is replaced.
    let r = call(&svc, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    r.assert_no_cookie();
    assert_eq!(r.body, "", "the handler's body must not leak: {r:?}");
    assert_eq!(probe.creates(), 1);

    // Retry-After is configurable.
    let svc = app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap()
            .with_retry_after(Duration::from_secs(7)),
    );
    let r = call(&svc, get("/", Some(&c))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "7");
    r.assert_no_cookie();
}

#[tokio::test]
async fn fail_open_serves_handler_answer_without_cookie_or_writes() {
    let probe = Probe::new(MemoryStore::new(), Mode::FailAll);
    let engine = engine_on(probe.clone(), SessionConfig::default());
    let svc = app_with(
        &SessionLayer::new(engine, keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap()
            .with_failure_policy(FailurePolicy::FailOpen),
    );
    let c = cookie_for(&SessionId::generate(), SECRET_A);

    let r = call(&svc, get("/", Some(&c))).await;
    r.assert_ok("1 views");
    r.assert_no_cookie();
    assert_eq!(probe.loads(), 1);
    assert_eq!(
        probe.writes(),
        0,
        "fail-open must not write the empty session back"
    );

    // Without a cookie nothing is loaded; the failed create still yields the handler's answer.
    let r = call(&svc, get("/", None)).await;
    r.assert_ok("1 views");
    r.assert_no_cookie();
    assert_eq!(probe.loads(), 1);
    assert_eq!((probe.updates(), probe.deletes()), (0, 0));
}

#[tokio::test]
async fn fail_open_never_overwrites_the_real_session() {
    // Loads fail but writes would succeed: the empty stand-in session must not be saved.
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let c = establish(&app(&engine)).await;
    let key = engine.key(&id_of(&c, &[SECRET_A]));
    let before = store.load(&key).await.unwrap().unwrap();

    let probe = Probe::new(store.clone(), Mode::FailLoad);
    let svc = app_with(
        &SessionLayer::new(
            engine_on(probe.clone(), SessionConfig::default()),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .unwrap()
        .with_failure_policy(FailurePolicy::FailOpen),
    );
    let r = call(&svc, get("/", Some(&c))).await;
    r.assert_ok("1 views");
    r.assert_no_cookie();
    let r = call(&svc, put("/session/x", Some(&c), "42")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    r.assert_no_cookie();
    assert_eq!(probe.writes(), 0);
    assert_eq!(store.load(&key).await.unwrap().unwrap(), before);
    call(&app(&engine), get("/", Some(&c)))
        .await
        .assert_ok("2 views");
}

// ---------------------------------------------------------------------------------------------
// 9. A failed save never yields success under fail-closed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_save_is_503_under_fail_closed() {
    let store = MemoryStore::new();
    let good = app(&engine_on(store.clone(), SessionConfig::default()));
    let c = establish(&good).await;

    let probe = Probe::new(store.clone(), Mode::FailWrites);
    let svc = app(&engine_on(probe.clone(), SessionConfig::default()));

    // Reads still work: nothing to save.
    call(&svc, get("/views", Some(&c)))
        .await
        .assert_ok("1 views");

    // Update fails.
    let r = call(&svc, get("/", Some(&c))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    r.assert_no_cookie();
    assert_eq!(probe.updates(), 1);

    // Create fails.
    let r = call(&svc, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    r.assert_no_cookie();
    assert_eq!(probe.creates(), 1);

    // Delete (logout) fails: not a success, but the cookie is cleared all the same (see
    // `failed_logout_is_503_and_clears_the_cookie_under_both_policies`).
    let r = call(&svc, post("/logout", Some(&c))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_clearing(&r.cookie());
    assert_eq!(probe.deletes(), 1);

    // Regenerate (create + delete) fails.
    let r = call(&svc, post("/login?user=ada", Some(&c))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    r.assert_no_cookie();

    // The stored session is untouched.
    assert_eq!(store.len(), 1);
    let r = call(&good, get("/session", Some(&c))).await;
    assert_eq!(r.json(), json!({"views": 1}));
}

#[tokio::test]
async fn failed_logout_is_503_and_clears_the_cookie_under_both_policies() {
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
        let store = MemoryStore::new();
        let c = establish(&app(&engine_on(store.clone(), SessionConfig::default()))).await;
        let probe = Probe::new(store.clone(), Mode::FailWrites);
        let svc = app_with(
            &SessionLayer::new(
                engine_on(probe.clone(), SessionConfig::default()),
                keys(&[SECRET_A]),
            )
            .with_secure(false)
            .unwrap()
            .with_failure_policy(policy),
        );
        // The DEL fails: a logout that did not happen must not look like one that did, whatever
        // the policy; the browser still drops its cookie.
        let r = call(&svc, post("/logout", Some(&c))).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{policy:?}: {r:?}"
        );
        assert_eq!(
            r.headers.get(header::RETRY_AFTER).unwrap(),
            "1",
            "{policy:?}"
        );
        assert_eq!(
            r.headers.get(header::CACHE_CONTROL).unwrap(),
            "no-store",
            "{policy:?}"
        );
        assert_clearing(&r.cookie());
        assert_eq!(probe.deletes(), 1, "{policy:?}");
        assert_eq!(store.len(), 1, "{policy:?}: the session is still stored");
    }
}

// ---------------------------------------------------------------------------------------------
// 9b. One table from engine errors to statuses
// ---------------------------------------------------------------------------------------------

#[test]
fn error_status_table() {
    use EngineErrorKind as K;
    for (kind, status) in [
        (K::Redis, StatusCode::SERVICE_UNAVAILABLE),
        (K::Timeout, StatusCode::SERVICE_UNAVAILABLE),
        (K::LoadFailed, StatusCode::SERVICE_UNAVAILABLE),
        (K::NotDurable, StatusCode::SERVICE_UNAVAILABLE),
        (K::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
        (K::InvalidField, StatusCode::BAD_REQUEST),
        (K::InvalidId, StatusCode::BAD_REQUEST),
        (K::Decode, StatusCode::INTERNAL_SERVER_ERROR),
        (K::Encode, StatusCode::INTERNAL_SERVER_ERROR),
        (K::Config, StatusCode::INTERNAL_SERVER_ERROR),
        (K::IdCollision, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let err = EngineError::new(kind, "x");
        assert_eq!(tessera_middleware::error_status(&err), status, "{kind:?}");
    }
}

#[tokio::test]
async fn not_durable_commit_is_a_store_failure() {
    // Under fail-closed: 503 with Retry-After, like any unavailable store.
    let probe = Probe::new(
        MemoryStore::new(),
        Mode::WriteError(EngineErrorKind::NotDurable),
    );
    let svc = app(&engine_on(probe.clone(), SessionConfig::default()));
    let r = call(&svc, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "1");
    r.assert_no_cookie();
    // Under fail-open: the handler's answer, without a cookie.
    let svc = app_with(
        &SessionLayer::new(
            engine_on(probe.clone(), SessionConfig::default()),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .unwrap()
        .with_failure_policy(FailurePolicy::FailOpen),
    );
    let r = call(&svc, get("/", None)).await;
    r.assert_ok("1 views");
    r.assert_no_cookie();
}

#[tokio::test]
async fn decode_errors_are_500_under_both_policies() {
    for policy in [FailurePolicy::FailClosed, FailurePolicy::FailOpen] {
        // In a handler: a field of another type than asked for is a bug, not an outage.
        let store = MemoryStore::new();
        let layer = SessionLayer::new(
            engine_on(store.clone(), SessionConfig::default()),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .unwrap()
        .with_failure_policy(policy);
        let svc = app_with(&layer);
        let r = call(&svc, put("/session/views", None, "\"many\"")).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{policy:?}: {r:?}");
        let c = r.cookie();
        let r = call(&svc, get("/views", Some(&c))).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{policy:?}: {r:?}"
        );
        assert!(!r.headers.contains_key(header::RETRY_AFTER), "{r:?}");

        // At commit: a non-store error keeps its status; fail-open does not hide it.
        let probe = Probe::new(
            MemoryStore::new(),
            Mode::WriteError(EngineErrorKind::Decode),
        );
        let svc = app_with(
            &SessionLayer::new(
                engine_on(probe.clone(), SessionConfig::default()),
                keys(&[SECRET_A]),
            )
            .with_secure(false)
            .unwrap()
            .with_failure_policy(policy),
        );
        let r = call(&svc, get("/", None)).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{policy:?}: {r:?}"
        );
        assert!(!r.headers.contains_key(header::RETRY_AFTER), "{r:?}");
        assert_eq!(r.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(r.body, "", "the handler's body must not leak: {r:?}");
        r.assert_no_cookie();
        assert_eq!(probe.creates(), 1);
    }
}

#[tokio::test]
async fn foreign_non_ascii_cookies_do_not_hide_the_session_cookie() {
    let svc = app(&engine_on(MemoryStore::new(), SessionConfig::default()));
    let c = establish(&svc).await;
    let ours = format!("{COOKIE}={}", c.value());
    for raw in [
        format!("theme=d\u{e9}j\u{e0}; {ours}"),
        format!("{ours}; theme=d\u{e9}j\u{e0}"),
    ] {
        // `d\xc3\xa9j\xc3\xa0`: UTF-8 bytes, which `HeaderValue::to_str` refuses.
        let header = HeaderValue::from_bytes(raw.as_bytes()).unwrap();
        assert!(header.to_str().is_err());
        let r = call(&svc, get_with_headers("/views", vec![header])).await;
        r.assert_ok("1 views");
        r.assert_no_cookie();
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Size limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_session_is_413_and_not_saved() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default().with_max_size(100));
    let svc = app(&engine);
    let c = establish(&svc).await;
    let key = engine.key(&id_of(&c, &[SECRET_A]));
    let before = store.load(&key).await.unwrap().unwrap();

    let big = serde_json::to_string(&"x".repeat(1024)).unwrap();
    let r = call(&svc, put("/session/big", Some(&c), &big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    r.assert_no_cookie();
    assert_eq!(store.load(&key).await.unwrap().unwrap(), before);
    let r = call(&svc, get("/session", Some(&c))).await;
    assert_eq!(r.json(), json!({"views": 1}));

    // A new oversized session is not created either.
    let r = call(&svc, put("/session/big", None, &big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    r.assert_no_cookie();
    assert_eq!(store.len(), 1);

    // Small values still fit.
    let r = call(&svc, put("/session/small", Some(&c), "\"ok\"")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&svc, get("/session", Some(&c))).await;
    assert_eq!(r.json(), json!({"views": 1, "small": "ok"}));
}

// ---------------------------------------------------------------------------------------------
// 11. Concurrent writes to one session merge field by field
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_of_distinct_fields_all_land() {
    let store = MemoryStore::new();
    let svc = app(&engine_on(store.clone(), SessionConfig::default()));
    let c = establish(&svc).await;

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let svc = svc.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let r = call(
                    &svc,
                    put(&format!("/session/f{i}"), Some(&c), &i.to_string()),
                )
                .await;
                (i, r.status)
            })
        })
        .collect();
    for task in tasks {
        let (i, status) = task.await.expect("task");
        assert_eq!(status, StatusCode::NO_CONTENT, "PUT f{i}");
    }

    let r = call(&svc, get("/session", Some(&c))).await;
    let mut expected = serde_json::Map::new();
    expected.insert("views".into(), json!(1));
    for i in 0..50 {
        expected.insert(format!("f{i}"), json!(i));
    }
    assert_eq!(r.json(), Value::Object(expected));
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 12. Metrics
// ---------------------------------------------------------------------------------------------

/// The value of one series in Prometheus text, 0 when absent.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn metrics_count_requests_and_rejected_cookies() {
    let handle = tessera_middleware::install_prometheus_recorder().expect("recorder");
    // Idempotent.
    tessera_middleware::install_prometheus_recorder().expect("second install");

    const BAD_SIG: &str = "tessera_http_rejected_cookies_total{reason=\"bad_signature\"}";
    const OVERSIZED: &str = "tessera_http_rejected_cookies_total{reason=\"oversized\"}";
    const NON_ASCII: &str = "tessera_http_rejected_cookies_total{reason=\"non_ascii_value\"}";
    const OK: &str = "tessera_http_requests_total{outcome=\"ok\"}";
    const STORE_ERROR: &str = "tessera_http_requests_total{outcome=\"store_error\"}";
    const TOO_LARGE: &str = "tessera_http_requests_total{outcome=\"too_large\"}";
    const FAIL_OPEN: &str = "tessera_http_requests_total{outcome=\"fail_open\"}";

    let before = handle.render();
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default().with_max_size(100));
    let svc = app(&engine);
    let c = establish(&svc).await;
    let sig_start = SESSION_ID_LEN + 1;
    let tampered = Cookie::new(COOKIE, flip(c.value(), sig_start + 10));
    call(&svc, get("/views", Some(&tampered)))
        .await
        .assert_ok("0 views");
    let oversized = Cookie::new(COOKIE, "A".repeat(500));
    call(&svc, get("/views", Some(&oversized)))
        .await
        .assert_ok("0 views");
    let raw = HeaderValue::from_bytes(b"koa:sess=\xff").unwrap();
    call(&svc, get_with_headers("/views", vec![raw]))
        .await
        .assert_ok("0 views");
    let r = call(
        &svc,
        put(
            "/session/big",
            Some(&c),
            &format!("\"{}\"", "x".repeat(500)),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let failing = app(&engine_on(
        Probe::new(MemoryStore::new(), Mode::FailAll),
        SessionConfig::default(),
    ));
    let r = call(&failing, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let fail_open = app_with(
        &SessionLayer::new(
            engine_on(
                Probe::new(MemoryStore::new(), Mode::FailAll),
                SessionConfig::default(),
            ),
            keys(&[SECRET_A]),
        )
        .with_failure_policy(FailurePolicy::FailOpen),
    );
    call(&fail_open, get("/", None)).await.assert_ok("1 views");

    let after = handle.render();
    for (series_name, at_least) in [
        (BAD_SIG, 1.0),
        (OVERSIZED, 1.0),
        (NON_ASCII, 1.0),
        (OK, 4.0),
        (STORE_ERROR, 1.0),
        (TOO_LARGE, 1.0),
        (FAIL_OPEN, 1.0),
    ] {
        let (b, a) = (series(&before, series_name), series(&after, series_name));
        assert!(a >= b + at_least, "{series_name}: {b} -> {a}\n{after}");
    }
    assert!(
        after.contains("tessera_http_middleware_duration_seconds_bucket"),
        "{after}"
    );

    // The demo's /metrics route renders the same registry.
    let with_metrics = SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
        .with_secure(false)
        .unwrap()
        .layer(DemoApp::new(engine, Some(handle)));
    let r = call(&with_metrics, get("/metrics", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("tessera_http_requests_total"), "{}", r.body);
    assert!(r.body.contains(BAD_SIG), "{}", r.body);
}

// ---------------------------------------------------------------------------------------------
// 13. The axum extractor
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "axum")]
mod axum_extractor {
    use axum::{routing::get as get_route, Router};
    use tessera_middleware::axum::SessionExtractor;

    use super::*;

    async fn count(
        SessionExtractor(session): SessionExtractor,
    ) -> Result<String, (StatusCode, String)> {
        let internal = |e: EngineError| (tessera_middleware::error_status(&e), e.to_string());
        let views = session
            .get::<u64>("views")
            .await
            .map_err(internal)?
            .unwrap_or(0)
            + 1;
        session.insert("views", &views).await.map_err(internal)?;
        Ok(format!("{views} views"))
    }

    #[tokio::test]
    async fn extractor_gets_the_layer_session() {
        let store = MemoryStore::new();
        let engine = engine_on(store.clone(), SessionConfig::default());
        let router = Router::new().route("/", get_route(count)).layer(
            SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
                .with_secure(false)
                .unwrap(),
        );

        let r = call(&router, get("/", None)).await;
        r.assert_ok("1 views");
        let c = r.cookie();
        assert_eq!(c.name(), COOKIE);
        let id = id_of(&c, &[SECRET_A]);
        assert!(store.load(&engine.key(&id)).await.unwrap().is_some());
        call(&router, get("/", Some(&c))).await.assert_ok("2 views");

        // The failure policy applies under axum too.
        let failing = Router::new().route("/", get_route(count)).layer(
            SessionLayer::new(
                engine_on(
                    Probe::new(MemoryStore::new(), Mode::FailAll),
                    SessionConfig::default(),
                ),
                keys(&[SECRET_A]),
            )
            .with_secure(false)
            .unwrap(),
        );
        let r = call(&failing, get("/", None)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        r.assert_no_cookie();
    }

    #[tokio::test]
    async fn extractor_without_layer_is_500() {
        let router = Router::new().route("/", get_route(count));
        let r = call(&router, get("/", None)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.body, "SessionLayer is not mounted on this route");
    }
}

#[tokio::test]
async fn rotation_reissue_follows_the_stored_expiry() {
    let engine = engine_on(
        MemoryStore::new(),
        SessionConfig::default()
            .with_absolute_ttl(Some(std::time::Duration::from_secs(60)))
            .unwrap(),
    );
    let old = app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .unwrap(),
    );
    let rotated = app_with(
        &SessionLayer::new(engine.clone(), keys(&[SECRET_B, SECRET_A]))
            .with_secure(false)
            .unwrap(),
    );
    let cookie_a = establish(&old).await;
    let r = call(&rotated, get("/healthz", Some(&cookie_a))).await;
    let max_age = r.cookie().max_age().expect("Max-Age").whole_seconds();
    assert!(
        (55..=60).contains(&max_age),
        "re-issued Max-Age {max_age} must follow the 60 s absolute lifetime"
    );
    // A rotated cookie whose session is gone is cleared, not re-issued.
    let gone = cookie_for(&SessionId::generate(), SECRET_A);
    let r = call(&rotated, get("/healthz", Some(&gone))).await;
    assert_clearing(&r.cookie());
}
