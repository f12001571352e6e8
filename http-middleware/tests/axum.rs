//! The axum extractor (feature `axum`).

#![cfg(feature = "axum")]

use axum::{routing::get as get_route, Router};
use http::StatusCode;
use tessera_engine::{
    testing::{Fault, FaultStore},
    Error as EngineError, MemoryStore, SessionConfig, SessionStore,
};
use tessera_middleware::{axum::SessionExtractor, SessionLayer};

mod common;

use common::*;

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
                FaultStore::new(MemoryStore::new(), Fault::FailAll),
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
