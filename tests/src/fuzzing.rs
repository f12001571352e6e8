//! Fuzz entry points, shared by the cargo-fuzz targets in `tests/fuzz/` and by the ordinary test
//! that replays their regression corpus. Each panics only when an invariant breaks.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use tessera_engine::{
    record::{decode_value, Meta, META_FIELD},
    ErrorKind, MemoryStore, SessionConfig, SessionEngine, SessionId, SessionStore,
};
use tessera_middleware::{signing::find_session_cookie, SigningKeys};

const NAME: &str = "koa:sess";

fn keys() -> &'static SigningKeys {
    static KEYS: OnceLock<SigningKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        SigningKeys::new([
            "fuzzing key one: long enough for HMAC-SHA256",
            "fuzzing key two: accepted, never signs",
        ])
        .unwrap()
    })
}

/// Cookie parsing and verification on arbitrary header bytes: never panics, and accepts only a
/// value that one of the keys really signed for this cookie name.
pub fn cookie_header(data: &[u8]) {
    let mut headers = HeaderMap::new();
    // Split on NUL into several Cookie headers, as repeated headers arrive.
    for part in data.split(|b| *b == 0) {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(http::header::COOKIE, value);
        }
    }
    if let Ok(Some(verified)) = find_session_cookie(keys(), NAME, &headers) {
        let signed = keys().sign(NAME, &verified.id);
        let text = String::from_utf8_lossy(data);
        assert!(
            text.contains(&signed) || verified.stale_key,
            "accepted a cookie that was never signed: {text:?}"
        );
    }
    // The value path alone, too.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(verified) = keys().verify(NAME, text) {
            assert!(verified.stale_key || keys().sign(NAME, &verified.id) == text);
        }
        if let Ok(id) = text.parse::<SessionId>() {
            assert_eq!(id.to_string(), text, "ids have one spelling");
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The stack a tokio worker thread gets by default: decoding runs on one of these in production.
const WORKER_STACK: usize = 2 * 1024 * 1024;

/// The stored-record decoder on arbitrary bytes: meta and values decode or fail with a decode
/// error, never a panic and never a stack overflow on a worker-sized stack, and a session built
/// from them never writes anything back.
pub fn stored_record(data: &[u8]) {
    let data = data.to_vec();
    let outcome = std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || stored_record_on_this_thread(&data))
        .expect("spawn a worker-sized thread")
        .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn stored_record_on_this_thread(data: &[u8]) {
    if let Ok(meta) = Meta::decode(data) {
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
    }
    let _ = decode_value::<serde_json::Value>("v", data);
    let _ = decode_value::<Vec<String>>("v", data);
    let _ = decode_value::<u64>("v", data);

    // Through the engine: first byte splits meta from one value field.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (meta, value) = data.split_at(split);
    runtime().block_on(async {
        let store = MemoryStore::new();
        let engine = SessionEngine::new(store.clone(), SessionConfig::default()).unwrap();
        let id = SessionId::from_bytes([7; 16]);
        let key = engine.key(&id);
        let fields = vec![
            (META_FIELD.to_owned(), bytes::Bytes::copy_from_slice(meta)),
            ("v".to_owned(), bytes::Bytes::copy_from_slice(value)),
        ];
        store
            .create(&key, &fields, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let session = engine.session(Some(id));
        match session.get::<serde_json::Value>("v").await {
            Ok(_) => {}
            Err(err) => assert_eq!(err.kind(), ErrorKind::Decode, "{err}"),
        }
        if let Err(err) = session.commit().await {
            assert_eq!(err.kind(), ErrorKind::LoadFailed, "{err}");
            let stored = store.load(&key).await.unwrap().unwrap();
            assert_eq!(
                stored.len(),
                2,
                "a failed load must leave the record as it was"
            );
        }
    });
}
