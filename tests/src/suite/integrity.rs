//! The integrity cases: no overwrite on create, limits, corrupt and foreign data, malformed
//! ids, hashed keys.

use super::*;

pub(super) async fn create_never_overwrites(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let s = engine.session(None);
    s.insert("mine", &1u64).await.unwrap();
    assert_eq!(s.id(), None, "asking does not mint");
    let minted = s.ensure_id().await.unwrap();
    assert_eq!(s.id(), Some(minted));
    // Someone else's session already sits under the minted id.
    let key = engine.key(&minted);
    let theirs = engine.session(None);
    theirs.insert("theirs", &2u64).await.unwrap();
    let CookieAction::Set { id: their_id, .. } = theirs.commit().await.unwrap().cookie else {
        panic!()
    };
    let their_fields = env
        .store
        .load(&engine.key(&their_id))
        .await
        .unwrap()
        .unwrap();
    let pairs: Vec<(String, Bytes)> = their_fields.into_iter().collect();
    assert!(env
        .store
        .create(&key, &pairs, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(
        !env.store
            .create(&key, &pairs, Duration::from_secs(60))
            .await
            .unwrap(),
        "NX"
    );

    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!()
    };
    assert_ne!(id, minted, "collision must mint a new id");
    let occupant = engine.session(Some(minted));
    assert_eq!(
        occupant.get::<u64>("theirs").await.unwrap(),
        Some(2),
        "overwritten"
    );
    assert_eq!(occupant.get::<u64>("mine").await.unwrap(), None);
    let mine = engine.session(Some(id));
    assert_eq!(mine.get::<u64>("mine").await.unwrap(), Some(1));
}

pub(super) async fn limits_leave_stored_session_unchanged(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.with_max_size(256).with_max_fields(3));
    let id = new_session(&engine, "a", 1).await;
    let before = env.store.load(&engine.key(&id)).await.unwrap();
    let _ = env.counts();

    let s = engine.session(Some(id));
    s.insert("big", &"x".repeat(300)).await.unwrap();
    let err = s.commit().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(
        err.to_string().contains("256"),
        "message names the limit: {err}"
    );

    let s = engine.session(Some(id));
    for f in ["b", "c", "d"] {
        s.insert(f, &0u8).await.unwrap();
    }
    assert_eq!(s.commit().await.unwrap_err().kind(), ErrorKind::TooLarge);
    if let Some(c) = env.counts() {
        assert_eq!(c.writes, 0, "nothing written over the limit");
    }
    assert_eq!(env.store.load(&engine.key(&id)).await.unwrap(), before);

    // A new session over the limit is not created either.
    let s = engine.session(None);
    s.insert("big", &"x".repeat(300)).await.unwrap();
    assert!(s.commit().await.unwrap_err().is_too_large());
}

pub(super) async fn corrupt_data_is_a_decode_error(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let ttl = Duration::from_secs(60);
    let pairs = |items: &[(&str, &[u8])]| -> Vec<(String, Bytes)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
            .collect()
    };
    // Corrupt meta, and a foreign hash with no meta at all.
    for (i, fields) in [
        pairs(&[(META_FIELD, &b"\xc1garbage"[..]), ("v", &b"\x01"[..])]),
        pairs(&[("name", &b"written by someone else"[..])]),
    ]
    .into_iter()
    .enumerate()
    {
        let id = SessionId::generate();
        let key = engine.key(&id);
        assert!(env.store.create(&key, &fields, ttl).await.unwrap());
        let s = engine.session(Some(id));
        let err = s.get::<u64>("v").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "case {i}: {err}");
        s.insert("v", &5u64).await.unwrap_err();
        let err = s.commit().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LoadFailed, "case {i}");
        let stored = env.store.load(&key).await.unwrap().unwrap();
        assert_eq!(
            stored.len(),
            fields.len(),
            "case {i}: stored data untouched"
        );
    }
    // Valid meta but a field that is not MessagePack of the asked type.
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    assert!(env
        .store
        .update(&key, &pairs(&[("v", &b"\xc1"[..])]), &[], Some(ttl))
        .await
        .unwrap());
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u64>("v").await.unwrap_err().kind(),
        ErrorKind::Decode
    );
}

pub(super) async fn malformed_ids_never_reach_the_store(env: &Env, _config: SessionConfig) {
    let _ = env.counts();
    for bad in [
        "",
        "x",
        "../../etc/passwd",
        "AAAAAAAAAAAAAAAAAAAAA=",
        &"A".repeat(5000),
    ] {
        assert_eq!(
            bad.parse::<SessionId>().unwrap_err().kind(),
            ErrorKind::InvalidId
        );
    }
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 0
            }
        );
    }
}

pub(super) async fn hashed_keys_hide_ids(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.clone());
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    assert!(!key.contains(&id.to_string()), "{key}");
    assert!(env.store.load(&key).await.unwrap().is_some());
    let plain = env.engine(config.with_hash_ids_at_rest(false));
    let id = new_session(&plain, "v", 1).await;
    assert!(plain.key(&id).contains(&format!("{{{id}}}")));
    assert!(env.store.load(&plain.key(&id)).await.unwrap().is_some());
}
