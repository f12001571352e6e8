//! The lifecycle cases: round trips, lazy loads and skipped writes, sliding expiry and its
//! throttled renewal, the absolute lifetime.

use super::*;

pub(super) async fn round_trip_and_types(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let profile = Profile {
        name: "Ada".into(),
        roles: vec!["admin".into()],
        age: None,
    };
    let s = engine.session(None);
    assert!(s.is_new().await.unwrap());
    assert!(s.is_empty().await.unwrap());
    s.insert("n", &42u64).await.unwrap();
    s.insert("text", "héllo").await.unwrap();
    s.insert("profile", &profile).await.unwrap();
    s.insert("map", &HashMap::from([("a".to_string(), 1.5f64)]))
        .await
        .unwrap();
    s.insert("gone", &true).await.unwrap();
    assert_eq!(s.remove::<bool>("gone").await.unwrap(), Some(true));
    assert!(s.is_modified());
    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!("expected a cookie")
    };

    let s = engine.session(Some(id));
    assert!(!s.is_new().await.unwrap());
    assert_eq!(s.id(), Some(id), "the cookie's id, before any load");
    assert_eq!(s.get::<u64>("n").await.unwrap(), Some(42));
    assert_eq!(
        s.get::<String>("text").await.unwrap().as_deref(),
        Some("héllo")
    );
    assert_eq!(s.get::<Profile>("profile").await.unwrap(), Some(profile));
    assert_eq!(s.get::<bool>("gone").await.unwrap(), None);
    let mut keys = s.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["map", "n", "profile", "text"]);
    let err = s.get::<String>("n").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let err = s.insert(META_FIELD, &1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidField);
    // clear() empties the session but keeps it.
    s.clear().await.unwrap();
    s.commit().await.unwrap();
    let s = engine.session(Some(id));
    assert!(!s.is_new().await.unwrap());
    assert!(s.is_empty().await.unwrap());
}

pub(super) async fn lazy_load_and_skip_unchanged(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "views", 1).await;
    let _ = env.counts();

    // Never used: no command at all.
    let committed = engine.session(Some(id)).commit().await.unwrap();
    assert_eq!(committed.writes, 0);
    assert_eq!(committed.cookie, CookieAction::Keep);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 0
            },
            "unused session"
        );
    }

    // Read-only: exactly one read, no write.
    let s = engine.session(Some(id));
    assert_eq!(s.get::<u64>("views").await.unwrap(), Some(1));
    assert_eq!(s.commit().await.unwrap().writes, 0);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 0
            },
            "read-only request"
        );
    }

    // Inserting an equal value is no change.
    let s = engine.session(Some(id));
    s.insert("views", &1u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(committed.writes, 0);
    assert_eq!(committed.cookie, CookieAction::Keep);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 0
            },
            "equal value"
        );
    }

    // A change is one read and one atomic write.
    let s = engine.session(Some(id));
    s.insert("views", &2u64).await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 1);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 1
            },
            "changed session"
        );
    }

    // A new session that stays empty costs nothing and gets no cookie.
    let s = engine.session(None);
    assert!(s.is_empty().await.unwrap());
    let committed = s.commit().await.unwrap();
    assert_eq!(
        (committed.writes, committed.cookie),
        (0, CookieAction::Keep)
    );
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 0
            },
            "empty new session"
        );
    }
}

pub(super) async fn sliding_ttl_and_throttled_renewal(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.with_idle_ttl(Duration::from_millis(1600)));
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    let ttl = env.pttl(&key).expect("a TTL is set");
    assert!(
        ttl <= Duration::from_millis(1600) && ttl > Duration::from_millis(1000),
        "{ttl:?}"
    );

    // Early read: more than half the TTL remains, so no renewal.
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 0, "renewal not due yet");

    // An early write sends its field but leaves the TTL and the cookie alone: 300 ms later the
    // TTL has run down by at least that much (a reset would put it back near 1600 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = engine.session(Some(id));
    s.insert("w", &1u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(
        (committed.writes, committed.cookie),
        (1, CookieAction::Keep),
        "write without renewal"
    );
    let after_write = env.pttl(&key).unwrap();
    assert!(
        after_write + Duration::from_millis(250) < ttl,
        "the TTL was not reset: {ttl:?} then {after_write:?}"
    );

    // Past half the TTL a read renews it (one write, cookie re-sent).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = env.counts();
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(committed.writes, 1, "renewal due");
    assert!(matches!(committed.cookie, CookieAction::Set { .. }));
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 1
            }
        );
    }
    let ttl = env.pttl(&key).unwrap();
    assert!(ttl > Duration::from_millis(1200), "renewed TTL {ttl:?}");

    // The renewal stamp is in the meta: the next read does not renew again.
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 0, "just renewed");

    // Past the original expiry, the session lives on.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u64>("v").await.unwrap(),
        Some(1),
        "renewed session alive"
    );
    s.commit().await.unwrap();

    // Left alone, it expires.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap(), "expired");
    assert_eq!(
        s.commit().await.unwrap().cookie,
        CookieAction::Clear,
        "stale cookie cleared"
    );
}

pub(super) async fn writes_renew_like_reads(env: &Env, config: SessionConfig) {
    // Default throttle: a write past half the TTL renews it, in the same single command.
    let engine = env.engine(config.clone().with_idle_ttl(Duration::from_millis(1600)));
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = env.counts();
    let s = engine.session(Some(id));
    s.insert("v", &2u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(committed.writes, 1);
    assert!(
        matches!(committed.cookie, CookieAction::Set { .. }),
        "renewed cookie"
    );
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 1
            }
        );
    }
    assert!(
        env.pttl(&key).unwrap() > Duration::from_millis(1200),
        "TTL reset"
    );

    // `0.0`: every write renews, no read does.
    let engine = env.engine(
        config
            .with_idle_ttl(Duration::from_millis(1600))
            .with_renew_below(0.0),
    );
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    // Past half the TTL, where the default would renew.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 0, "reads never renew");
    let before = env.pttl(&key).unwrap();
    let s = engine.session(Some(id));
    s.insert("v", &2u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert!(matches!(committed.cookie, CookieAction::Set { .. }));
    let after = env.pttl(&key).unwrap();
    assert!(
        after > before + Duration::from_millis(200),
        "{before:?} -> {after:?}"
    );
}

pub(super) async fn absolute_lifetime_caps_ttl(env: &Env, config: SessionConfig) {
    let engine = env.engine(
        config
            .with_idle_ttl(Duration::from_millis(2000))
            .with_absolute_ttl(Some(Duration::from_millis(2500))),
    );
    let id = new_session(&engine, "v", 0).await;
    let key = engine.key(&id);
    for i in 1..=3u64 {
        tokio::time::sleep(Duration::from_millis(650)).await;
        let s = engine.session(Some(id));
        assert_eq!(s.get::<u64>("v").await.unwrap(), Some(i - 1));
        s.insert("v", &i).await.unwrap();
        s.commit().await.unwrap();
    }
    // ~1950 ms after creation: a full idle TTL would be 2000 ms, but only ~550 ms remain.
    let ttl = env.pttl(&key).expect("still alive");
    assert!(
        ttl <= Duration::from_millis(600),
        "TTL {ttl:?} passes the absolute deadline"
    );
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap(), "past the absolute lifetime");
}
