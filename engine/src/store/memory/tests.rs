//! The memory store's unit tests.

use super::*;

fn f(k: &str, v: &str) -> (String, Bytes) {
    (k.to_owned(), Bytes::copy_from_slice(v.as_bytes()))
}

#[tokio::test]
async fn create_is_nx_and_update_needs_existence() {
    let s = MemoryStore::new();
    let ttl = Duration::from_secs(60);
    assert!(!s.update("k", &[f("a", "1")], &[], Some(ttl)).await.unwrap());
    assert!(
        s.load("k").await.unwrap().is_none(),
        "update must not create"
    );
    assert!(s.create("k", &[f("a", "1")], ttl).await.unwrap());
    assert!(!s.create("k", &[f("a", "2")], ttl).await.unwrap());
    assert!(s
        .update("k", &[f("b", "2")], &["a".into()], None)
        .await
        .unwrap());
    assert!(
        s.ttl("k").unwrap() > Duration::from_secs(59),
        "None keeps the TTL"
    );
    let got = s.load("k").await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got["b"], Bytes::from_static(b"2"));
}

#[tokio::test]
async fn overlong_ttls_do_not_overflow() {
    let s = MemoryStore::new();
    assert!(s.create("k", &[f("a", "1")], Duration::MAX).await.unwrap());
    assert!(s
        .update("k", &[f("a", "2")], &[], Some(Duration::MAX))
        .await
        .unwrap());
    assert!(s.ttl("k").unwrap() > Duration::from_secs(365 * 24 * 3600));
    assert_eq!(
        s.regenerate("k", "k2", &[f("a", "2")], Duration::MAX)
            .await
            .unwrap(),
        Regenerated::Moved
    );
}

#[tokio::test]
async fn regenerate_needs_the_old_key_and_a_free_new_one() {
    let s = MemoryStore::new();
    let ttl = Duration::from_secs(60);
    assert_eq!(
        s.regenerate("old", "new", &[f("a", "1")], ttl)
            .await
            .unwrap(),
        Regenerated::OldGone
    );
    assert!(s.load("new").await.unwrap().is_none(), "fails closed");
    s.create("old", &[f("a", "1")], ttl).await.unwrap();
    s.create("taken", &[f("b", "1")], ttl).await.unwrap();
    assert_eq!(
        s.regenerate("old", "taken", &[f("a", "1")], ttl)
            .await
            .unwrap(),
        Regenerated::NewTaken
    );
    assert!(
        s.load("old").await.unwrap().is_some(),
        "a collision keeps the old key"
    );
    assert_eq!(
        s.regenerate("old", "new", &[f("a", "1")], ttl)
            .await
            .unwrap(),
        Regenerated::Moved
    );
    assert!(s.load("old").await.unwrap().is_none());
    assert!(s.load("new").await.unwrap().is_some());
    assert!(!s.delete("old").await.unwrap());
    assert!(s.delete("new").await.unwrap());
}

#[tokio::test]
async fn entries_expire() {
    let s = MemoryStore::new();
    assert!(s
        .create("k", &[f("a", "1")], Duration::from_millis(30))
        .await
        .unwrap());
    assert!(s.ttl("k").unwrap() <= Duration::from_millis(30));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(s.load("k").await.unwrap().is_none());
    assert!(!s
        .update("k", &[], &[], Some(Duration::from_secs(1)))
        .await
        .unwrap());
    assert!(s.is_empty());
}

#[tokio::test]
async fn a_bound_load_needs_its_index_entry() {
    let s = MemoryStore::new();
    let fields = [f("a", "1")];
    let request = BindRequest {
        index: "idx",
        key: "idx:k",
        handle: "h",
        fields: &fields,
        ttl: Duration::from_secs(60),
        cap: None,
        old: None,
    };
    s.bind(&request).await.unwrap();
    assert!(s.load_bound("idx:k", "idx").await.unwrap().is_some());
    assert!(
        s.load_bound("idx:k", "gone").await.unwrap().is_none(),
        "no index: refused"
    );
    // An index rebuilt without the session (its entry names another key): refused, while the
    // plain load still finds the record.
    s.inner
        .map
        .lock()
        .get_mut("idx")
        .unwrap()
        .fields
        .insert("h".into(), Bytes::from_static(b"idx:other"));
    assert!(s.load_bound("idx:k", "idx").await.unwrap().is_none());
    assert!(s.load("idx:k").await.unwrap().is_some());
}

#[tokio::test]
async fn expired_entries_are_swept_once_the_map_doubles() {
    let s = MemoryStore::new();
    let short = Duration::from_millis(1);
    let long = Duration::from_secs(60);
    let mut peak = 0;
    for round in 0..4 {
        for i in 0..3_000 {
            let key = format!("k{round}:{i}");
            // One in ten outlives the test; the rest expire at once.
            let ttl = if i % 10 == 0 { long } else { short };
            assert!(s.create(&key, &[f("a", "1")], ttl).await.unwrap());
            peak = peak.max(s.inner.map.lock().len());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = s.len();
    assert_eq!(live, 1_200);
    assert!(
        peak <= 2 * live + SWEEP_MIN + 1,
        "{peak} entries held for {live} live"
    );
}
