//! What every test of the layer shares: requests and replies through the tower service (no
//! sockets), the demo's routes as the inner service, cookie and signing helpers. The
//! fault-injecting store is `tessera_engine::testing::FaultStore` (feature `test-util`).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::{convert::Infallible, fmt::Debug};

use cookie::{time::OffsetDateTime, Cookie};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::Value;
use tessera_demo::DemoApp;
use tessera_engine::{SessionConfig, SessionEngine, SessionId, SessionStore};
use tessera_middleware::{SessionLayer, SessionService, SigningKeys};
use tower::{Layer, Service, ServiceExt};

pub(crate) const COOKIE: &str = "koa:sess";
pub(crate) const SECRET_A: &str = "secret A: thirty-two bytes or more, for signing";
pub(crate) const SECRET_B: &str = "secret B: thirty-two bytes or more, the new key";
pub(crate) const TTL_SECS: i64 = 3600;

pub(crate) type App = SessionService<DemoApp>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A response with its body collected.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    /// The raw `Set-Cookie` header, asserting there is at most one.
    pub(crate) fn raw_set_cookie(&self) -> Option<String> {
        let all: Vec<_> = self.headers.get_all(header::SET_COOKIE).iter().collect();
        assert!(all.len() <= 1, "more than one Set-Cookie: {all:?}");
        all.first()
            .map(|v| v.to_str().expect("Set-Cookie is ASCII").to_owned())
    }

    /// The parsed `Set-Cookie`, if any.
    pub(crate) fn set_cookie(&self) -> Option<Cookie<'static>> {
        self.raw_set_cookie()
            .map(|raw| Cookie::parse(raw.clone()).unwrap_or_else(|e| panic!("{raw:?}: {e}")))
    }

    /// The parsed `Set-Cookie`, which must be there.
    pub(crate) fn cookie(&self) -> Cookie<'static> {
        self.set_cookie()
            .unwrap_or_else(|| panic!("expected a Set-Cookie, got {self:?}"))
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{:?}: {e}", self.body))
    }

    #[track_caller]
    pub(crate) fn assert_ok(&self, body: &str) {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert_eq!(self.body, body, "{self:?}");
    }

    #[track_caller]
    pub(crate) fn assert_no_cookie(&self) {
        assert_eq!(
            self.raw_set_cookie(),
            None,
            "unexpected Set-Cookie: {self:?}"
        );
    }
}

/// One request through a clone of `svc`.
pub(crate) async fn call<S, B>(svc: &S, req: Request<String>) -> Reply
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

pub(crate) fn request(
    method: Method,
    uri: &str,
    cookie: Option<&Cookie<'_>>,
    body: &str,
) -> Request<String> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        builder = builder.header(header::COOKIE, format!("{}={}", c.name(), c.value()));
    }
    builder.body(body.to_owned()).expect("valid request")
}

pub(crate) fn get(uri: &str, cookie: Option<&Cookie<'_>>) -> Request<String> {
    request(Method::GET, uri, cookie, "")
}

pub(crate) fn post(uri: &str, cookie: Option<&Cookie<'_>>) -> Request<String> {
    request(Method::POST, uri, cookie, "")
}

pub(crate) fn put(uri: &str, cookie: Option<&Cookie<'_>>, body: &str) -> Request<String> {
    request(Method::PUT, uri, cookie, body)
}

/// A GET carrying the given raw `Cookie` header values (one header each).
pub(crate) fn get_with_headers(uri: &str, values: Vec<HeaderValue>) -> Request<String> {
    let mut req = get(uri, None);
    for v in values {
        req.headers_mut().append(header::COOKIE, v);
    }
    req
}

pub(crate) fn keys(secrets: &[&str]) -> SigningKeys {
    SigningKeys::new(secrets).expect("valid secrets")
}

pub(crate) fn engine_on(store: impl SessionStore, config: SessionConfig) -> SessionEngine {
    SessionEngine::new(store, config).unwrap()
}

/// The demo routes behind `layer`.
pub(crate) fn app_with(layer: &SessionLayer) -> App {
    let engine = layer.engine().clone();
    layer.layer(DemoApp::new(engine, None))
}

/// The demo routes behind a plain-http layer signing with `SECRET_A`.
pub(crate) fn app(engine: &SessionEngine) -> App {
    app_with(
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .build()
            .unwrap(),
    )
}

/// The session id a cookie names (verified with `secrets`).
pub(crate) fn id_of(cookie: &Cookie<'_>, secrets: &[&str]) -> SessionId {
    keys(secrets)
        .verify(COOKIE, cookie.value())
        .unwrap_or_else(|r| panic!("cookie {:?} does not verify: {r:?}", cookie.value()))
        .id
}

/// A correctly signed cookie for a session id that was never stored.
pub(crate) fn cookie_for(id: &SessionId, secret: &str) -> Cookie<'static> {
    Cookie::new(COOKIE, keys(&[secret]).sign(COOKIE, id))
}

/// Creates a session with `views = 1` through `svc` and returns its cookie.
pub(crate) async fn establish(svc: &App) -> Cookie<'static> {
    let r = call(svc, get("/", None)).await;
    r.assert_ok("1 views");
    r.cookie()
}

#[track_caller]
pub(crate) fn assert_clearing(cookie: &Cookie<'_>) {
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

/// Replaces the character at `at` with a different base64url character.
pub(crate) fn flip(value: &str, at: usize) -> String {
    let mut bytes = value.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}
