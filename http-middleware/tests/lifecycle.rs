//! The session's lifecycle through the layer: destroy, regenerate, the size limit and
//! concurrent field merges.

use http::StatusCode;
use serde_json::{json, Value};
use tessera_engine::{MemoryStore, SessionConfig, SessionStore};

mod common;

use common::*;

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
