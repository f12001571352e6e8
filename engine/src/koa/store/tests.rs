//! The koa-session-redis3 store's unit tests.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use super::*;
use crate::{
    store::MemoryStringStore, CookieAction, KeySchema, SessionConfig, SessionEngine, SessionId,
};

const TTL: Duration = Duration::from_secs(60);

fn engine() -> (MemoryStringStore, SessionEngine) {
    let strings = MemoryStringStore::new();
    let config = SessionConfig::koa_session_redis3(KeySchema::new("s").unwrap(), TTL);
    let engine = SessionEngine::new(KoaJsonStore::new(strings.clone(), TTL), config).unwrap();
    (strings, engine)
}

async fn stored(strings: &MemoryStringStore, key: &str) -> String {
    let raw = strings.get(key).await.unwrap().expect("stored");
    String::from_utf8(raw.to_vec()).unwrap()
}

#[tokio::test]
async fn a_seed_session_loads_and_a_save_merges_into_the_current_document() {
    let (strings, engine) = engine();
    let sid = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
    let key = format!("s:{sid}");
    strings.put(&key, r#"{"views":3,"user":{"name":"ada","1":true}}"#, TTL);
    let s = engine.session(Some(sid));
    assert_eq!(s.get::<u64>("views").await.unwrap(), Some(3));
    s.insert("views", &4u64).await.unwrap();
    // Meanwhile Node writes another field.
    strings.put(
        &key,
        r#"{"views":3,"user":{"name":"ada","1":true},"cart":[1]}"#,
        TTL,
    );
    let committed = s.commit().await.unwrap();
    assert!(matches!(committed.cookie, CookieAction::Set { id, .. } if id == sid));
    assert_eq!(
        stored(&strings, &key).await,
        r#"{"views":4,"user":{"1":true,"name":"ada"},"cart":[1]}"#
    );
    // Unchanged: no write at all.
    let s = engine.session(Some(sid));
    assert_eq!(s.get::<u64>("views").await.unwrap(), Some(4));
    assert_eq!(s.commit().await.unwrap().writes, 0);
}

/// A store where another writer changes the document right before each of the first
/// `races` compare-and-sets.
#[derive(Debug, Clone)]
struct Racing {
    inner: MemoryStringStore,
    races: Arc<AtomicUsize>,
}

#[async_trait]
impl StringStore for Racing {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn set_new(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        self.inner.set_new(key, value, ttl).await
    }
    async fn replace(
        &self,
        key: &str,
        expected: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Replaced> {
        let n = self.races.fetch_sub(1, Ordering::SeqCst);
        if n > 0 {
            self.inner
                .put(key, format!(r#"{{"views":1,"node{n}":{n}}}"#), TTL);
        }
        self.inner.replace(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn rename(
        &self,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed> {
        self.inner.rename(old, expected, new, value, ttl).await
    }
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_save_that_loses_the_compare_and_set_merges_again() {
    let inner = MemoryStringStore::new();
    let races = Arc::new(AtomicUsize::new(1));
    let store = KoaJsonStore::new(
        Racing {
            inner: inner.clone(),
            races: races.clone(),
        },
        TTL,
    );
    let key = "s:mx5kckqa0ohc9584335nwbg1";
    inner.put(key, r#"{"views":1}"#, TTL);
    let set = [("cart".to_owned(), to_msgpack(&JsValue::Int(2)))];
    assert!(store.update(key, &set, &[], None).await.unwrap());
    assert_eq!(
        stored(&inner, key).await,
        r#"{"views":1,"node1":1,"cart":2}"#
    );
    // A writer that never stops changing it: a clear error, nothing written.
    races.store(usize::MAX / 2, Ordering::SeqCst);
    let err = store.update(key, &set, &[], None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
    assert!(!stored(&inner, key).await.contains("cart"));
}

/// A store whose compare-and-set answers after a pause, as a Redis round trip does: saves
/// in flight together read the same document, and all but one lose.
#[derive(Debug, Clone)]
struct Slow(MemoryStringStore);

#[async_trait]
impl StringStore for Slow {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.0.get(key).await
    }
    async fn set_new(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        self.0.set_new(key, value, ttl).await
    }
    async fn replace(
        &self,
        key: &str,
        expected: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Replaced> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.replace(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.0.delete(key).await
    }
    async fn rename(
        &self,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed> {
        self.0.rename(old, expected, new, value, ttl).await
    }
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_of_one_session_from_one_process_never_exhaust_their_retries() {
    let inner = MemoryStringStore::new();
    let store = KoaJsonStore::new(Slow(inner.clone()), TTL);
    let key = "s:mx5kckqa0ohc9584335nwbg1";
    inner.put(key, r#"{"views":1}"#, TTL);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for j in 0..10 {
                    let set = [(format!("r{t}_{j}"), to_msgpack(&JsValue::Int(j)))];
                    store.update(key, &set, &[], None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let doc = document(stored(&inner, key).await.as_bytes()).unwrap();
    assert_eq!(doc.len(), 1 + 16 * 10, "every save landed");
}

#[tokio::test]
async fn names_node_breaks_on_and_unsafe_integers_are_errors() {
    let (strings, engine) = engine();
    // Refused where they are written, by every writing call; the session stays as it was.
    for name in ["length", "_ctx", "__proto__", "toJSON", "isNew", "_private"] {
        let s = engine.session(None);
        s.insert("kept", &1u32).await.unwrap();
        let err = s.insert(name, &1u32).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidField, "{name}: {err}");
        let err = s.update(name, |n: &mut u32| *n += 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidField, "{name}: {err}");
        let err = s.get_or_insert_with(name, || 1u32).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidField, "{name}: {err}");
        assert_eq!(s.keys().await.unwrap(), vec!["kept".to_string()]);
    }
    let s = engine.session(None);
    let err = s.insert("big", &(1u64 << 60)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(s.is_empty().await.unwrap());
    s.insert("safe", &((1u64 << 53) - 1)).await.unwrap();
    assert!(strings.is_empty(), "nothing was written before the commit");
    s.commit().await.unwrap();
    assert_eq!(strings.len(), 1);
}

#[tokio::test]
async fn unparsable_documents_are_no_session_and_destroy_deletes() {
    let (strings, engine) = engine();
    let sid = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
    strings.put(&format!("s:{sid}"), "{not json", TTL);
    assert!(engine.session(Some(sid)).is_new().await.unwrap());
    strings.put(&format!("s:{sid}"), r#"{"a":1}"#, TTL);
    let s = engine.session(Some(sid));
    s.destroy().await.unwrap();
    assert_eq!(s.commit().await.unwrap().cookie, CookieAction::Clear);
    assert!(strings.is_empty());
}

#[tokio::test]
async fn regenerate_moves_the_document_keeping_its_order() {
    let (strings, engine) = engine();
    let sid = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
    strings.put(&format!("s:{sid}"), r#"{"z":1,"a":2}"#, TTL);
    let s = engine.session(Some(sid));
    s.insert("user", "ada").await.unwrap();
    s.regenerate().await.unwrap();
    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!("regenerate sets a cookie")
    };
    assert!(id.is_native());
    assert_eq!(
        stored(&strings, &format!("s:{id}")).await,
        r#"{"z":1,"a":2,"user":"ada"}"#
    );
    assert_eq!(strings.len(), 1);
}
