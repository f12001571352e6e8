//! Store failures: fail-closed and fail-open, failed saves and logouts, and the one table from
//! engine errors to statuses.

use std::time::Duration;

use http::{header, StatusCode};
use serde_json::json;
use tessera_engine::testing::{Fault, FaultStore};
use tessera_engine::{
    Error as EngineError, ErrorKind as EngineErrorKind, MemoryStore, SessionConfig, SessionId,
    SessionStore,
};
use tessera_middleware::{FailurePolicy, SessionLayer};

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// 8. Fail-closed and fail-open
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fail_closed_answers_503_with_retry_after() {
    let probe = FaultStore::new(MemoryStore::new(), Fault::FailAll);
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
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .with_retry_after(Duration::from_secs(7))
            .build()
            .unwrap(),
    );
    let r = call(&svc, get("/", Some(&c))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "7");
    r.assert_no_cookie();
}

#[tokio::test]
async fn fail_open_serves_handler_answer_without_cookie_or_writes() {
    let probe = FaultStore::new(MemoryStore::new(), Fault::FailAll);
    let engine = engine_on(probe.clone(), SessionConfig::default());
    let svc = app_with(
        &SessionLayer::builder(engine, keys(&[SECRET_A]))
            .with_secure(false)
            .with_failure_policy(FailurePolicy::FailOpen)
            .build()
            .unwrap(),
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

    let probe = FaultStore::new(store.clone(), Fault::FailLoad);
    let svc = app_with(
        &SessionLayer::builder(
            engine_on(probe.clone(), SessionConfig::default()),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .with_failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap(),
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

    let probe = FaultStore::new(store.clone(), Fault::FailWrites);
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
        let probe = FaultStore::new(store.clone(), Fault::FailWrites);
        let svc = app_with(
            &SessionLayer::builder(
                engine_on(probe.clone(), SessionConfig::default()),
                keys(&[SECRET_A]),
            )
            .with_secure(false)
            .with_failure_policy(policy)
            .build()
            .unwrap(),
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
        assert_eq!(err.status(), status, "{kind:?}");
    }
}

#[tokio::test]
async fn not_durable_commit_is_a_store_failure() {
    // Under fail-closed: 503 with Retry-After, like any unavailable store.
    let probe = FaultStore::new(
        MemoryStore::new(),
        Fault::WriteError(EngineErrorKind::NotDurable),
    );
    let svc = app(&engine_on(probe.clone(), SessionConfig::default()));
    let r = call(&svc, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "1");
    r.assert_no_cookie();
    // Under fail-open: the handler's answer, without a cookie.
    let svc = app_with(
        &SessionLayer::builder(
            engine_on(probe.clone(), SessionConfig::default()),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .with_failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap(),
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
        let layer = SessionLayer::builder(
            engine_on(store.clone(), SessionConfig::default()),
            keys(&[SECRET_A]),
        )
        .with_secure(false)
        .with_failure_policy(policy)
        .build()
        .unwrap();
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
        let probe = FaultStore::new(
            MemoryStore::new(),
            Fault::WriteError(EngineErrorKind::Decode),
        );
        let svc = app_with(
            &SessionLayer::builder(
                engine_on(probe.clone(), SessionConfig::default()),
                keys(&[SECRET_A]),
            )
            .with_secure(false)
            .with_failure_policy(policy)
            .build()
            .unwrap(),
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
