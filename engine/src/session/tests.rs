//! The handle's unit tests.

use super::*;
use crate::config::SessionConfig;

mod redaction {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn debug_output_redacts_contents_and_keys() {
        let config = SessionConfig::default().with_hash_ids_at_rest(false);
        let engine = SessionEngine::new(MemoryStore::new(), config).unwrap();
        let session = engine.session(None);
        session.insert("token", "hunter2-secret").await.unwrap();
        let CookieAction::Set { id, .. } = session.commit().await.unwrap().cookie else {
            panic!("a new session sets a cookie")
        };
        let session = engine.session(Some(id));
        assert!(session.get::<String>("token").await.unwrap().is_some());
        session.regenerate().await.unwrap();
        let new_id = session.id().unwrap();
        let debug = format!("{session:?}");
        assert!(debug.contains("token"), "field names are shown: {debug}");
        for secret in ["hunter2", &id.to_string(), &new_id.to_string()] {
            assert!(!debug.contains(secret), "{secret:?} leaked into {debug}");
        }
        session.destroy().await.unwrap();
        let debug = format!("{session:?}");
        assert!(!debug.contains(&id.to_string()), "{debug}");
    }
}

mod commit {
    use super::*;
    use crate::MemoryStore;

    async fn stored(engine: &SessionEngine) -> SessionId {
        let s = engine.session(None);
        s.insert("user", "ada").await.unwrap();
        let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
            panic!("a new session sets a cookie")
        };
        id
    }

    #[tokio::test]
    async fn a_save_that_finds_the_session_gone_never_brings_it_back() {
        let store = MemoryStore::new();
        let engine = SessionEngine::new(store.clone(), SessionConfig::default()).unwrap();
        let id = stored(&engine).await;
        let b = engine.session(Some(id));
        assert!(!b.is_new().await.unwrap());
        let a = engine.session(Some(id));
        a.destroy().await.unwrap();
        a.commit().await.unwrap();
        b.insert("cart", &1u32).await.unwrap();
        assert_eq!(b.commit().await.unwrap().cookie, CookieAction::Clear);
        // A second commit (a handler committing before the layer does) stays destroyed.
        assert_eq!(b.commit().await.unwrap().cookie, CookieAction::Clear);
        assert!(store.is_empty(), "nothing recreated");
        assert_eq!(b.get::<String>("user").await.unwrap(), None);
        assert!(
            !b.is_new().await.unwrap(),
            "is_new tells what the load found"
        );
    }

    #[tokio::test]
    async fn a_destroyed_session_stays_destroyed_across_commits() {
        let store = MemoryStore::new();
        let config = SessionConfig::default().with_save_new_empty(true);
        let engine = SessionEngine::new(store.clone(), config).unwrap();
        let id = stored(&engine).await;
        let s = engine.session(Some(id));
        s.destroy().await.unwrap();
        let first = s.commit().await.unwrap();
        assert_eq!((first.cookie, first.writes), (CookieAction::Clear, 1));
        let second = s.commit().await.unwrap();
        assert_eq!(
            (second.cookie, second.writes),
            (CookieAction::Clear, 0),
            "no second delete, no empty session, the cookie still cleared"
        );
        assert!(s.is_destroyed().await);
        assert!(s.is_new().await.unwrap());
        assert!(store.is_empty());
        // Fields inserted after the destroy start a new session.
        s.insert("fresh", &1u32).await.unwrap();
        assert!(matches!(
            s.commit().await.unwrap().cookie,
            CookieAction::Set { .. }
        ));
        assert!(!s.is_destroyed().await);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn id_and_is_modified_answer_without_a_store_call_or_a_mint() {
        let store = MemoryStore::new();
        let engine = SessionEngine::new(store.clone(), SessionConfig::default()).unwrap();
        let id = stored(&engine).await;

        let s = engine.session(Some(id));
        assert_eq!((s.id(), s.is_modified()), (Some(id), false));
        s.insert("user", "ada").await.unwrap();
        assert!(!s.is_modified(), "the same value is no change");
        assert_eq!(
            s.remove::<String>("user").await.unwrap().as_deref(),
            Some("ada")
        );
        assert!(s.is_modified());
        s.insert("user", "ada").await.unwrap();
        assert!(!s.is_modified(), "back to the loaded value");
        s.regenerate().await.unwrap();
        let new_id = s.id().unwrap();
        assert_ne!(new_id, id);
        assert!(s.is_modified());
        s.commit().await.unwrap();
        assert_eq!((s.id(), s.is_modified()), (Some(new_id), false));
        s.destroy().await.unwrap();
        assert_eq!((s.id(), s.is_modified()), (None, true));
        s.commit().await.unwrap();
        assert!(!s.is_modified());

        // A stale cookie: the id is the cookie's until the load finds nothing.
        let stale = SessionId::generate();
        let s = engine.session(Some(stale));
        assert_eq!(s.id(), Some(stale));
        assert_eq!(s.take::<String>("user").await.unwrap(), None);
        assert_eq!(s.id(), None);
        assert!(!s.is_modified(), "removing an absent field is no change");
    }

    #[tokio::test]
    async fn is_new_survives_the_commit_that_creates_the_session() {
        let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
        let s = engine.session(None);
        s.insert("a", &1u32).await.unwrap();
        s.commit().await.unwrap();
        assert!(s.is_new().await.unwrap());
    }
}
