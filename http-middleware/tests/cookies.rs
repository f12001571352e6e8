//! Cookies: the round trip and its attributes, renewal, unchanged sessions sending none, empty
//! new sessions, tampered and foreign cookies, key rotation.

use std::time::Duration;

use cookie::{time::OffsetDateTime, Cookie, SameSite};
use http::{HeaderValue, StatusCode};
use tessera_demo::{build_app, DemoArgs};
use tessera_engine::testing::{Fault, FaultStore};
use tessera_engine::{MemoryStore, SessionConfig, SessionId, SessionStore, SESSION_ID_LEN};
use tessera_middleware::{signing::Rejection, SessionLayer, SigningKeys};

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

// ---------------------------------------------------------------------------------------------
// 4. Tampered cookies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tampered_cookies_get_a_fresh_session_without_store_calls() {
    let store = MemoryStore::new();
    let probe = FaultStore::new(store.clone(), Fault::PassThrough);
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
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .build()
            .unwrap(),
    );
    let rotated = app_with(
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_B, SECRET_A]))
            .with_secure(false)
            .build()
            .unwrap(),
    );
    let only_new = app_with(
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_B]))
            .with_secure(false)
            .build()
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

#[tokio::test]
async fn rotation_reissue_follows_the_stored_expiry() {
    let engine = engine_on(
        MemoryStore::new(),
        SessionConfig::default().with_absolute_ttl(Some(std::time::Duration::from_secs(60))),
    );
    let old = app_with(
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
            .with_secure(false)
            .build()
            .unwrap(),
    );
    let rotated = app_with(
        &SessionLayer::builder(engine.clone(), keys(&[SECRET_B, SECRET_A]))
            .with_secure(false)
            .build()
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
