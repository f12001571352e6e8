//! The concurrency cases: field merges, last writer wins, no resurrection, destroy and
//! regenerate racing other requests, the field limit.

use super::*;

pub(super) async fn concurrent_distinct_fields_merge(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "seed", 0).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let s = engine.session(Some(id));
                s.insert(format!("f{i}"), &i).await.unwrap();
                s.commit().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = engine.session(Some(id));
    for i in 0..50u64 {
        assert_eq!(
            s.get::<u64>(&format!("f{i}")).await.unwrap(),
            Some(i),
            "field f{i}"
        );
    }
    assert_eq!(s.keys().await.unwrap().len(), 51);
}

pub(super) async fn same_field_last_writer_wins(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "x", 0).await;
    let (a, b) = (engine.session(Some(id)), engine.session(Some(id)));
    a.get::<u64>("x").await.unwrap();
    b.get::<u64>("x").await.unwrap();
    a.insert("x", &1u64).await.unwrap();
    b.insert("x", &2u64).await.unwrap();
    a.insert("only_a", &true).await.unwrap();
    b.commit().await.unwrap();
    a.commit().await.unwrap();
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u64>("x").await.unwrap(),
        Some(1),
        "last writer wins"
    );
    assert_eq!(s.get::<bool>("only_a").await.unwrap(), Some(true));
}

pub(super) async fn no_resurrection_after_destroy(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "v", 1).await;
    let slow = engine.session(Some(id));
    slow.get::<u64>("v").await.unwrap();

    let logout = engine.session(Some(id));
    logout.destroy().await.unwrap();
    assert_eq!(logout.commit().await.unwrap().cookie, CookieAction::Clear);

    slow.insert("late", &true).await.unwrap();
    let committed = slow.commit().await.unwrap();
    assert_eq!(
        committed.cookie,
        CookieAction::Clear,
        "late save sees the destroy"
    );
    assert!(
        env.store.load(&engine.key(&id)).await.unwrap().is_none(),
        "resurrected"
    );
    // A read-renewal racing the destroy must not recreate it either.
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap());

    // Late saves that change an existing field, or only remove one, are refused the same way.
    for change in ["overwrite", "remove"] {
        let id = new_session(&engine, "v", 1).await;
        let slow = engine.session(Some(id));
        slow.get::<u64>("v").await.unwrap();
        let logout = engine.session(Some(id));
        logout.destroy().await.unwrap();
        logout.commit().await.unwrap();
        if change == "overwrite" {
            slow.insert("v", &2u64).await.unwrap();
        } else {
            slow.remove::<u64>("v").await.unwrap();
        }
        assert_eq!(
            slow.commit().await.unwrap().cookie,
            CookieAction::Clear,
            "{change}"
        );
        assert!(
            env.store.load(&engine.key(&id)).await.unwrap().is_none(),
            "{change}: resurrected"
        );
    }
}

pub(super) async fn destroy_costs_one_command(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "v", 1).await;
    let _ = env.counts();
    let s = engine.session(Some(id));
    s.destroy().await.unwrap();
    assert!(s.is_new().await.unwrap());
    let committed = s.commit().await.unwrap();
    assert_eq!(
        (committed.writes, committed.cookie),
        (1, CookieAction::Clear)
    );
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 1
            }
        );
    }
    assert!(env.store.load(&engine.key(&id)).await.unwrap().is_none());

    // Fields set after a destroy start a new session under a new id.
    let id = new_session(&engine, "v", 1).await;
    let s = engine.session(Some(id));
    s.destroy().await.unwrap();
    s.insert("fresh", &1u64).await.unwrap();
    let CookieAction::Set { id: new_id, .. } = s.commit().await.unwrap().cookie else {
        panic!("new session after destroy must set a cookie")
    };
    assert_ne!(new_id, id);
    let s = engine.session(Some(new_id));
    assert_eq!(s.get::<u64>("fresh").await.unwrap(), Some(1));
    assert_eq!(
        s.get::<u64>("v").await.unwrap(),
        None,
        "old data must not leak"
    );
}

/// Request B loads the session, request A logs out (destroy, committed), then B logs in
/// (regenerate) and commits: no session may come back with B's data, and B's cookie is cleared.
pub(super) async fn regenerate_fails_closed_after_concurrent_destroy(
    env: &Env,
    config: SessionConfig,
) {
    let engine = env.engine(config);
    let id = new_session(&engine, "cart", 3).await;
    let b = engine.session(Some(id));
    assert_eq!(b.get::<u64>("cart").await.unwrap(), Some(3));

    let a = engine.session(Some(id));
    a.destroy().await.unwrap();
    assert_eq!(a.commit().await.unwrap().cookie, CookieAction::Clear);

    b.insert("user", "ada").await.unwrap();
    b.regenerate().await.unwrap();
    let new_id = b.id().unwrap();
    assert_ne!(new_id, id);
    let committed = b.commit().await.unwrap();
    assert_eq!(
        committed.cookie,
        CookieAction::Clear,
        "a regenerate after a logout must not hand out a session"
    );
    assert_eq!(committed.expires, None);
    for key in [engine.key(&id), engine.key(&new_id)] {
        assert!(
            env.store.load(&key).await.unwrap().is_none(),
            "nothing stored under either id"
        );
    }
    // Committing again does not bring the data back either, and still clears the cookie.
    assert_eq!(b.commit().await.unwrap().cookie, CookieAction::Clear);
    assert!(env
        .store
        .load(&engine.key(&new_id))
        .await
        .unwrap()
        .is_none());
    assert!(
        !b.is_new().await.unwrap(),
        "is_new tells what the load found at the start of the request"
    );
    assert_eq!(b.get::<String>("user").await.unwrap(), None);
}

/// A session with as many fields as the configuration may allow is written and read back whole
/// (the Lua scripts pass every field to one HSET).
pub(super) async fn sessions_at_the_field_limit_save(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.with_max_fields(tessera_engine::MAX_FIELDS_LIMIT));
    let s = engine.session(None);
    for i in 0..tessera_engine::MAX_FIELDS_LIMIT {
        s.insert(format!("f{i}"), &i).await.unwrap();
    }
    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!("a new session sets a cookie")
    };
    let s = engine.session(Some(id));
    assert_eq!(
        s.keys().await.unwrap().len(),
        tessera_engine::MAX_FIELDS_LIMIT
    );
    s.regenerate().await.unwrap();
    assert!(matches!(
        s.commit().await.unwrap().cookie,
        CookieAction::Set { .. }
    ));
    assert_eq!(
        engine.session(s.id()).keys().await.unwrap().len(),
        tessera_engine::MAX_FIELDS_LIMIT
    );
}

pub(super) async fn regenerate_moves_data_to_new_key(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "cart", 3).await;
    let s = engine.session(Some(id));
    s.insert("user", "ada").await.unwrap();
    s.regenerate().await.unwrap();
    let new_id = s.id().unwrap();
    assert_ne!(new_id, id);
    let CookieAction::Set { id: cookie_id, .. } = s.commit().await.unwrap().cookie else {
        panic!("regenerate must set a cookie")
    };
    assert_eq!(cookie_id, new_id);
    assert!(
        env.store.load(&engine.key(&id)).await.unwrap().is_none(),
        "old key deleted"
    );
    let s = engine.session(Some(new_id));
    assert!(!s.is_new().await.unwrap());
    assert_eq!(s.get::<u64>("cart").await.unwrap(), Some(3));
    assert_eq!(
        s.get::<String>("user").await.unwrap().as_deref(),
        Some("ada")
    );
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap(), "old id no longer works");
}
