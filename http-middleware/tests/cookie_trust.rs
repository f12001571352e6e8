//! Trust in cookies: tampered and foreign cookies get a fresh session without store calls, and
//! signing-key rotation accepts the old key and reissues under the new one.

use cookie::SameSite;
use http::{HeaderValue, StatusCode};
use tessera_engine::testing::{Fault, FaultStore};
use tessera_engine::{MemoryStore, SessionConfig, SessionId, SessionStore, SESSION_ID_LEN};
use tessera_middleware::{signing::Rejection, SessionLayer, SigningKeys};

mod common;

use common::*;
// ---------------------------------------------------------------------------------------------
// 1. Tampered cookies
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
// 2. Key rotation
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
