//! Cookies: the round trip and its attributes, renewal, unchanged sessions sending none, and
//! empty new sessions (tampered cookies and key rotation: `cookie_trust.rs`).

use std::time::Duration;

use cookie::{time::OffsetDateTime, Cookie, SameSite};
use http::StatusCode;
use tessera_demo::{build_app, DemoArgs};
use tessera_engine::testing::{Fault, FaultStore};
use tessera_engine::{MemoryStore, SessionConfig, SessionStore, SESSION_ID_LEN};
use tessera_middleware::SessionLayer;

mod common;

use common::*;

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
        &SessionLayer::builder(engine, keys(&[SECRET_A]))
            .with_secure(false)
            .build()
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
        &SessionLayer::builder(engine, keys(&[SECRET_A]))
            .with_secure(false)
            .with_persistent_cookie(false)
            .build()
            .unwrap(),
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
        SessionConfig::default().with_idle_ttl(Duration::from_secs(120)),
    );
    let layer = SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
        .with_cookie_name("sid")
        .with_path("/app")
        .with_domain(Some("example.test".into()))
        .with_same_site(SameSite::Strict)
        .with_http_only(false)
        .build()
        .expect("valid name");
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

    for bad in ["", "a b", "a=b", "a;b", "a,b", "a:b", "sess\u{e9}"] {
        let err = SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_cookie_name(bad)
            .build()
            .expect_err(bad);
        assert!(err.is_invalid_option(), "{bad:?}");
        assert!(err.to_string().contains("RFC 6265 token"), "{err}");
    }
}

#[tokio::test]
async fn host_prefixed_cookies_carry_what_their_prefix_requires() {
    let engine = engine_on(MemoryStore::new(), SessionConfig::default());
    let svc = app_with(
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_cookie_name("__Host-sid")
            .build()
            .unwrap(),
    );
    let r = call(&svc, get("/", None)).await;
    r.assert_ok("1 views");
    let c = r.cookie();
    assert_eq!(c.name(), "__Host-sid");
    assert_eq!(
        (c.secure(), c.path(), c.domain()),
        (Some(true), Some("/"), None)
    );
    call(&svc, get("/", Some(&c))).await.assert_ok("2 views");
    // Plain http is refused with the prefix, at build time.
    let err = SessionLayer::builder(engine, keys(&[SECRET_A]))
        .with_cookie_name("__Host-sid")
        .with_secure(false)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("__Host- prefix"), "{err}");
}

#[tokio::test]
async fn due_renewal_resends_the_cookie() {
    // With renew_below = 1.0 every read renews the expiry (one touch write, cookie re-sent).
    let probe = FaultStore::new(MemoryStore::new(), Fault::PassThrough);
    let engine = engine_on(
        probe.clone(),
        SessionConfig::default().with_renew_below(1.0),
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
    let probe = FaultStore::new(MemoryStore::new(), Fault::PassThrough);
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
    let probe = FaultStore::new(store.clone(), Fault::PassThrough);
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
