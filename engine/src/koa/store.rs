//! [`KoaJsonStore`]: the koa-session-redis3 layout behind the engine's [`SessionStore`] seam.
//! The engine keeps its hash-of-MessagePack view; this turns it into one JSON string per key and
//! back. Saves merge only the fields the request changed into the current stored document with
//! a compare-and-set, so nothing another writer (Node or Rust) stored meanwhile is erased.
//! Saves of one session from one process take turns (a striped lock), so the compare-and-set
//! only ever races other processes; a lost race is retried after a short random pause.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    json::{parse, stringify, JsValue},
    msgpack::{from_msgpack, to_msgpack},
};
use crate::{
    error::{Error, ErrorKind, Result},
    record::{Meta, FORMAT_VERSION, META_FIELD},
    store::{Fields, Regenerated, Renamed, Replaced, SessionStore, StringStore},
    time::now_ms,
};

/// How often a save re-reads and re-merges after losing a compare-and-set to another writer
/// before it gives up (each attempt is bounded by the store's command timeout).
const MAX_ATTEMPTS: usize = 32;

/// How many locks the saves of this process share out by key: saves of one session wait for
/// each other, saves of different sessions almost never do.
const STRIPES: usize = 64;

/// The longest pause before a retry, in microseconds: long enough for the other writer's
/// request to finish, short against the command timeout that bounds the whole save.
const MAX_PAUSE_US: u64 = 2_000;

/// Top-level names the seed's `Session` object owns (its context, methods and getters): a
/// stored field with one of these names breaks every later Node request.
pub const NODE_RESERVED: [&str; 8] = [
    "_ctx",
    "length",
    "populated",
    "save",
    "changed",
    "inspect",
    "__proto__",
    "toJSON",
];

/// Checks that a top-level field name survives the Node side: its reserved names are refused,
/// and so are the names its `toJSON` drops (`isNew`, any `_`-prefixed name), which would vanish
/// on the next Node write.
///
/// # Errors
///
/// [`ErrorKind::InvalidField`](crate::ErrorKind::InvalidField) for a name the Node side breaks on
/// or drops.
pub fn check_field_name(name: &str) -> Result<()> {
    if NODE_RESERVED.contains(&name) {
        return Err(Error::new(
            ErrorKind::InvalidField,
            format!(
                "the session field name {name:?} is reserved by koa-session-redis3's Session \
                 object (Node would fail on every later request); use another name"
            ),
        ));
    }
    if name == "isNew" || name.starts_with('_') {
        return Err(Error::new(
            ErrorKind::InvalidField,
            format!(
                "koa-session-redis3 drops the session field {name:?} (isNew and names starting \
                 with '_') on its next write; use another name"
            ),
        ));
    }
    Ok(())
}

/// A [`SessionStore`] storing the koa-session-redis3 1.3.4 layout over any [`StringStore`]
/// (e.g. [`RedisStore`](crate::RedisStore)): the key's value is `JSON.stringify` of the session's
/// own fields, byte for byte, and every write resets the TTL. Use it with
/// [`SessionConfig::koa_session_redis3`](crate::SessionConfig::koa_session_redis3).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
/// use std::time::Duration;
/// use tessera_engine::{
///     store::{MemoryStringStore, StringStore},
///     CookieAction, KeySchema, KoaJsonStore, SessionConfig, SessionEngine,
/// };
///
/// let ttl = Duration::from_secs(3600);
/// let strings = MemoryStringStore::new();
/// let config = SessionConfig::koa_session_redis3(KeySchema::new("app")?, ttl);
/// let engine = SessionEngine::new(KoaJsonStore::new(strings.clone(), ttl), config)?;
/// let session = engine.session(None);
/// session.insert("views", &1u32).await?;
/// let CookieAction::Set { id, .. } = session.commit().await?.cookie else { unreachable!() };
/// let stored = strings.get(&format!("app:{id}")).await?.unwrap();
/// assert_eq!(&stored[..], br#"{"views":1}"#);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct KoaJsonStore<S> {
    strings: S,
    ttl: Duration,
    turns: Arc<Turns>,
}

/// The striped locks that make this process's saves of one key take turns. Without them, a
/// burst of concurrent saves of one session pipelined on one connection each read the same
/// document, and every one but the first loses its compare-and-set, round after round.
#[derive(Debug)]
struct Turns {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
}

impl Turns {
    fn new() -> Self {
        Turns {
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn of(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let at = self.hasher.hash_one(key) as usize % self.stripes.len();
        &self.stripes[at]
    }
}

/// A short random pause after a lost compare-and-set, so two processes racing for one session
/// do not retry in lockstep.
async fn pause() {
    let us = rand::random_range(MAX_PAUSE_US / 4..=MAX_PAUSE_US);
    tokio::time::sleep(Duration::from_micros(us)).await;
}

impl<S: StringStore> KoaJsonStore<S> {
    /// The layout over `strings`; `ttl` is the seed's `ttl` option (the engine's idle TTL).
    pub fn new(strings: S, ttl: Duration) -> Self {
        KoaJsonStore {
            strings,
            ttl,
            turns: Arc::new(Turns::new()),
        }
    }

    /// The string store underneath.
    pub fn strings(&self) -> &S {
        &self.strings
    }
}

/// The stored document as an object, or `None` for what the seed treats as no session
/// (unparsable JSON; a non-object, which Tessera does not adopt either).
fn document(raw: &[u8]) -> Option<Vec<(String, JsValue)>> {
    let text = std::str::from_utf8(raw).ok()?;
    match parse(text) {
        Ok(JsValue::Obj(entries)) => Some(entries),
        Ok(_) | Err(_) => None,
    }
}

/// One field of a write, converted and checked.
fn field(name: &str, bytes: &[u8]) -> Result<JsValue> {
    check_field_name(name)?;
    from_msgpack(name, bytes)
}

/// The changes of one save applied to a document: set fields replace in place or are appended,
/// deleted ones removed. Every other field stays where it was.
fn merge(
    mut doc: Vec<(String, JsValue)>,
    set: &[(String, JsValue)],
    delete: &HashSet<&str>,
) -> Vec<(String, JsValue)> {
    doc.retain(|(k, _)| !delete.contains(k.as_str()));
    for (k, v) in set {
        match doc.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => doc.push((k.clone(), v.clone())),
        }
    }
    doc
}

fn converted(fields: &[(String, Bytes)]) -> Result<Vec<(String, JsValue)>> {
    fields
        .iter()
        .filter(|(k, _)| k != META_FIELD)
        .map(|(k, v)| Ok((k.clone(), field(k, v)?)))
        .collect()
}

fn encode(doc: Vec<(String, JsValue)>) -> Bytes {
    Bytes::from(stringify(&JsValue::Obj(doc)))
}

/// Runs a multi-call operation under one deadline, the store's call timeout taken once.
async fn bounded<T>(
    timeout: Option<Duration>,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the session save did not finish within the store's command timeout \
                 ({timeout:?}, every re-read and retry included); check Redis health"
                ),
            ))
        })
}

fn lost_races() -> Error {
    Error::new(
        ErrorKind::Redis,
        format!(
            "the session changed under this save {MAX_ATTEMPTS} times in a row (another writer \
             keeps rewriting it); nothing was saved, retry the request"
        ),
    )
}

#[async_trait]
impl<S: StringStore> SessionStore for KoaJsonStore<S> {
    async fn load(&self, key: &str) -> Result<Option<Fields>> {
        let Some(raw) = self.strings.get(key).await? else {
            return Ok(None);
        };
        let Some(doc) = document(&raw) else {
            tracing::warn!("a stored session is not a JSON object; treating it as absent");
            return Ok(None);
        };
        let mut fields = Fields::with_capacity(doc.len() + 1);
        for (k, v) in doc {
            if k != META_FIELD {
                fields.insert(k, to_msgpack(&v));
            }
        }
        // The seed keeps no metadata: the meta is made up so that every write renews (a full TTL
        // later than the expiry it claims) and the session counts as live.
        let now = now_ms();
        let ttl_ms = (self.ttl.as_millis() as u64).max(2);
        let meta = Meta {
            version: FORMAT_VERSION,
            created_ms: now,
            deadline_ms: None,
            expires_ms: now + ttl_ms - 1,
            expiry: None,
        };
        fields.insert(META_FIELD.to_owned(), meta.encode());
        Ok(Some(fields))
    }

    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool> {
        let mut doc = converted(fields)?;
        // Any order reads back unchanged in Node; sorted, so equal sessions store equal bytes.
        doc.sort_by(|a, b| a.0.cmp(&b.0));
        self.strings.set_new(key, encode(doc), ttl).await
    }

    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let set = converted(set)?;
        let delete: HashSet<&str> = delete.iter().map(String::as_str).collect();
        // The seed resets the TTL on every write; so does the profile.
        let ttl = ttl.unwrap_or(self.ttl);
        let merged = async {
            let _turn = self.turns.of(key).lock().await;
            let mut current = self.strings.get(key).await?;
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 {
                    pause().await;
                }
                let Some(raw) = current else {
                    return Ok(false);
                };
                let Some(doc) = document(&raw) else {
                    // Unparsable: the seed would start over; this save finds no session.
                    return Ok(false);
                };
                let next = encode(merge(doc, &set, &delete));
                match self.strings.replace(key, raw, next, ttl).await? {
                    Replaced::Done => return Ok(true),
                    Replaced::Gone => return Ok(false),
                    Replaced::Changed(now) => current = Some(now),
                }
            }
            Err(lost_races())
        };
        bounded(self.strings.call_timeout(), merged).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.strings.delete(key).await
    }

    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let wanted = converted(fields)?;
        let names: HashSet<&str> = wanted.iter().map(|(k, _)| k.as_str()).collect();
        let moved = async {
            let _turn = self.turns.of(old).lock().await;
            let mut current = self.strings.get(old).await?;
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 {
                    pause().await;
                }
                let Some(raw) = current else {
                    return Ok(Regenerated::OldGone);
                };
                // The handle's fields, in the stored document's order where they were there.
                let kept: Vec<(String, JsValue)> = document(&raw)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, _)| names.contains(k.as_str()))
                    .collect();
                let next = encode(merge(kept, &wanted, &HashSet::new()));
                match self.strings.rename(old, raw, new, next, ttl).await? {
                    Renamed::Done => return Ok(Regenerated::Moved),
                    Renamed::OldGone => return Ok(Regenerated::OldGone),
                    Renamed::NewTaken => return Ok(Regenerated::NewTaken),
                    Renamed::OldChanged(now) => current = Some(now),
                }
            }
            Err(lost_races())
        };
        bounded(self.strings.call_timeout(), moved).await
    }

    async fn ping(&self) -> Result<()> {
        self.strings.ping().await
    }

    /// The seed's document holds the session's own fields only.
    fn keeps_meta(&self) -> bool {
        false
    }

    /// A name Node breaks on or drops, or a value JSON cannot carry as Node reads it (an
    /// integer beyond 2^53, bytes, a non-string map key), fails at `insert`.
    fn check_field(&self, name: &str, value: &[u8]) -> Result<()> {
        field(name, value).map(drop)
    }
}

#[cfg(test)]
mod tests;
