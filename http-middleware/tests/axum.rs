//! The axum integration (feature `axum`): `session: Session` as a handler argument, and engine
//! errors as responses through the one status table.

#![cfg(feature = "axum")]

use axum::{routing::get as get_route, Router};
use http::StatusCode;
use tessera_engine::{
    testing::{Fault, FaultStore},
    Error as EngineError, ErrorKind, MemoryStore, Session, SessionConfig, SessionStore,
};
use tessera_middleware::SessionLayer;

mod common;

use common::*;

async fn count(session: Session) -> Result<String, EngineError> {
    let views = session.get::<u64>("views").await?.unwrap_or(0) + 1;
    session.insert("views", &views).await?;
    Ok(format!("{views} views"))
}

/// A handler error of each kind answers with its status from the table, a text that leaks
/// nothing of the message, and Retry-After only when the store is unavailable.
#[tokio::test]
async fn handler_errors_answer_with_the_status_table() {
    use axum::response::IntoResponse;
    let cases = [
        (ErrorKind::Timeout, 503, Some("1")),
        (ErrorKind::Redis, 503, Some("1")),
        (ErrorKind::TooLarge, 413, None),
        (ErrorKind::InvalidField, 400, None),
        (ErrorKind::NotLoggedIn, 401, None),
        (ErrorKind::SessionCap, 409, None),
        (ErrorKind::Unsupported, 501, None),
        (ErrorKind::Decode, 500, None),
    ];
    for (kind, status, retry_after) in cases {
        let err = EngineError::new(kind, "secret detail: redis://10.0.0.7:6379 key abc");
        assert_eq!(err.status().as_u16(), status, "{kind:?}");
        let response = err.into_response();
        assert_eq!(response.status().as_u16(), status, "{kind:?}");
        let header = response.headers().get("retry-after");
        assert_eq!(header.map(|v| v.to_str().unwrap()), retry_after, "{kind:?}");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            !body.is_empty() && !body.contains("secret"),
            "{kind:?}: {body}"
        );
    }
}

/// A handler's "store unavailable" error answers with the layer's `with_retry_after`, not a
/// fixed `Retry-After: 1`.
#[tokio::test]
async fn handler_errors_honour_the_layers_retry_after() {
    async fn unavailable(_session: Session) -> Result<String, EngineError> {
        Err(EngineError::new(ErrorKind::Timeout, "the store timed out"))
    }
    async fn too_large(_session: Session) -> Result<String, EngineError> {
        Err(EngineError::new(ErrorKind::TooLarge, "over the limit"))
    }
    let engine = engine_on(MemoryStore::new(), SessionConfig::default());
    let router = Router::new()
        .route("/", get_route(unavailable))
        .route("/big", get_route(too_large))
        .layer(
            SessionLayer::builder(engine, keys(&[SECRET_A]))
                .with_secure(false)
                .with_retry_after(std::time::Duration::from_secs(7))
                .build()
                .unwrap(),
        );
    let r = call(&router, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers.get("retry-after").unwrap(), "7");
    let r = call(&router, get("/big", None)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.headers.get("retry-after").is_none());
}

#[tokio::test]
async fn extractor_gets_the_layer_session() {
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default());
    let router = Router::new().route("/", get_route(count)).layer(
        SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .build()
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
        SessionLayer::builder(
            engine_on(
                FaultStore::new(MemoryStore::new(), Fault::FailAll),
                SessionConfig::default(),
            ),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .build()
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
    assert_eq!(r.body, "no session layer is mounted on this route");
}

/// "Remember me" and "this computer only" at login, as a handler sets them: the cookie's
/// lifetime follows the session's rule over the layer's setting, on later renewals too.
#[tokio::test]
async fn a_sessions_expiry_rule_decides_its_cookie() {
    use std::time::Duration;
    use tessera_engine::Expiry;
    const MONTH: u64 = 30 * 86_400;

    async fn login(session: Session, uri: http::Uri) -> Result<&'static str, EngineError> {
        session.insert("user", "ada").await?;
        let rule = match uri.query() {
            Some("remember") => Some(Expiry::OnInactivity(Duration::from_secs(MONTH))),
            Some("shared") => Some(Expiry::OnSessionEnd),
            _ => None,
        };
        session.set_expiry(rule).await?;
        session.regenerate().await?;
        Ok("in")
    }

    let store = MemoryStore::new();
    let engine = engine_on(
        store.clone(),
        SessionConfig::default().with_renew_below(0.0),
    );
    let router = Router::new()
        .route("/login", get_route(login))
        .route("/", get_route(count))
        .layer(
            SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
                .with_secure(false)
                .build()
                .unwrap(),
        );

    let remembered = call(&router, get("/login?remember", None)).await;
    remembered.assert_ok("in");
    let c = remembered.cookie();
    let max_age = c.max_age().expect("persistent").whole_seconds() as u64;
    assert!((MONTH - 5..=MONTH).contains(&max_age), "{max_age}");
    let id = id_of(&c, &[SECRET_A]);
    let ttl = store.ttl(&engine.key(&id)).unwrap().as_secs();
    assert!((MONTH - 5..=MONTH).contains(&ttl), "{ttl}");
    // A later write renews by the month, not the configured hour. (Expiries count in
    // milliseconds: in the same millisecond as the login there is nothing to move.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = call(&router, get("/", Some(&c))).await;
    later.assert_ok("1 views");
    let max_age = later.cookie().max_age().unwrap().whole_seconds() as u64;
    assert!((MONTH - 5..=MONTH).contains(&max_age), "{max_age}");

    let shared = call(&router, get("/login?shared", None)).await;
    let c = shared.cookie();
    assert_eq!(
        (c.max_age(), c.expires()),
        (None, None),
        "a browser-session cookie"
    );
    let ttl = store.ttl(&engine.key(&id_of(&c, &[SECRET_A]))).unwrap();
    assert!(ttl <= Duration::from_secs(TTL_SECS as u64), "{ttl:?}");
}
