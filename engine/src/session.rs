//! The per-request session handle and the commit rules: lazy load, change tracking by encoded
//! bytes, skip-unchanged writes, throttled renewal, destroy and regenerate. All store I/O of a
//! request goes through here; nothing here knows about HTTP.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Mutex;

use crate::{
    config::SessionConfig,
    error::{Error, ErrorKind, Result},
    id::SessionId,
    key::KeyDeriver,
    metrics,
    record::{decode_value, encode_value, Meta, FORMAT_VERSION, META_FIELD},
    store::SessionStore,
};

/// How many fresh ids to try when a create collides with an existing session.
const CREATE_ATTEMPTS: usize = 3;

/// Shared, cheap-to-clone entry point: a store, its configuration and the key derivation.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
/// use tessera_engine::{CookieAction, MemoryStore, SessionConfig, SessionEngine};
///
/// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default());
///
/// // A request without a cookie gets a new, empty session.
/// let session = engine.session(None);
/// session.insert("views", &1u32).await?;
/// let committed = session.commit().await?;
/// let CookieAction::Set { id, .. } = committed.cookie else { panic!("a new session sets a cookie") };
///
/// // The next request names it by its id.
/// let session = engine.session(Some(id));
/// assert_eq!(session.get::<u32>("views").await?, Some(1));
/// assert!(!session.is_new().await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SessionEngine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
struct EngineInner {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    keys: KeyDeriver,
    metrics: metrics::Handles,
}

impl SessionEngine {
    /// An engine over `store`.
    pub fn new(store: impl SessionStore, config: SessionConfig) -> Self {
        Self::from_arc(Arc::new(store), config)
    }

    /// An engine over a shared, type-erased store.
    pub fn from_arc(store: Arc<dyn SessionStore>, config: SessionConfig) -> Self {
        metrics::describe();
        let keys = KeyDeriver::new(config.key_schema.clone(), config.hash_ids_at_rest);
        SessionEngine {
            inner: Arc::new(EngineInner {
                store,
                config,
                keys,
                metrics: metrics::Handles::default(),
            }),
        }
    }

    /// A handle for one request; `id` comes from the request's (verified) cookie. Nothing is read
    /// until the session is first used.
    pub fn session(&self, id: Option<SessionId>) -> Session {
        Session {
            engine: self.clone(),
            state: Arc::new(Mutex::new(State::new(id))),
        }
    }

    /// Like [`SessionEngine::session`], but if the load fails the handle behaves as an empty new
    /// session instead of returning errors. Its commit still writes nothing and reports the load
    /// failure, so a wrongly empty session never overwrites the real one.
    pub fn session_fail_open(&self, id: Option<SessionId>) -> Session {
        let mut state = State::new(id);
        state.fail_open = true;
        Session {
            engine: self.clone(),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The Redis key that holds session `id`.
    pub fn key(&self, id: &SessionId) -> String {
        self.inner.keys.key(id)
    }

    /// Checks that the store answers (for health endpoints).
    pub async fn ping(&self) -> Result<()> {
        self.timed("ping", self.inner.store.ping()).await
    }

    fn metrics(&self) -> &metrics::Handles {
        &self.inner.metrics
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let result = fut.await;
        self.metrics().store_op(op, result.is_ok(), start.elapsed());
        result
    }
}

/// What the caller (the HTTP layer) should do with the session cookie after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieAction {
    /// Leave the client's cookie as it is (or send none).
    Keep,
    /// Send a cookie naming `id`; the store expires it at `expires`.
    Set {
        /// The session id to put into the cookie.
        id: SessionId,
        /// When the stored session expires, for a persistent cookie's Max-Age and Expires.
        expires: SystemTime,
    },
    /// Clear the client's cookie: the session was destroyed or no longer exists.
    Clear,
}

/// The result of [`Session::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Committed {
    /// What to do with the cookie.
    pub cookie: CookieAction,
    /// Number of store writes the commit made (0 for an unchanged session).
    pub writes: u8,
    /// When the stored session expires, if it exists after the commit.
    pub expires: Option<SystemTime>,
}

#[derive(Debug)]
enum Phase {
    Unloaded,
    Loaded,
    Failed(Error),
}

#[derive(Debug)]
struct State {
    /// The id the client presented, if any.
    requested: Option<SessionId>,
    phase: Phase,
    /// The session's current id (`None` for a new session until it needs one).
    id: Option<SessionId>,
    /// Whether `id` exists in the store as loaded (false for new, regenerated and destroyed).
    stored: bool,
    /// The Redis key of the loaded session, kept for its update (derivation hashes the id).
    key: Option<String>,
    /// Whether the client presented an id that the store did not have.
    stale_cookie: bool,
    /// The value each field had before its first change since the load (`None`: absent); a
    /// field that was never changed is not here, so loading costs no copy.
    original: HashMap<String, Option<Bytes>>,
    data: HashMap<String, Bytes>,
    meta: Option<Meta>,
    /// A stored session to delete at commit (after a destroy or regenerate).
    delete_old: Option<SessionId>,
    destroyed: bool,
    regenerated: bool,
    was_new: bool,
    /// Serve an empty session (never saved) when the load fails.
    fail_open: bool,
}

impl State {
    /// Records a field's value before its first change.
    fn remember(&mut self, field: &str) {
        if !self.original.contains_key(field) {
            let before = self.data.get(field).cloned();
            self.original.insert(field.to_owned(), before);
        }
    }

    fn new(requested: Option<SessionId>) -> Self {
        State {
            requested,
            phase: Phase::Unloaded,
            id: None,
            stored: false,
            key: None,
            stale_cookie: false,
            original: HashMap::new(),
            data: HashMap::new(),
            meta: None,
            delete_old: None,
            destroyed: false,
            regenerated: false,
            was_new: true,
            fail_open: false,
        }
    }
}

/// One request's view of a session. Cheap to clone; clones share state.
///
/// Reads decode from the loaded bytes; writes are kept in memory until [`Session::commit`], which
/// sends only what changed.
#[derive(Debug, Clone)]
pub struct Session {
    engine: SessionEngine,
    state: Arc<Mutex<State>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Session {
    /// The engine this session belongs to.
    pub fn engine(&self) -> &SessionEngine {
        &self.engine
    }

    /// The id the client presented (from its cookie), whether or not it exists.
    pub async fn requested_id(&self) -> Option<SessionId> {
        self.state.lock().await.requested
    }

    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut st = self.state.lock().await;
        match &st.phase {
            Phase::Loaded => return Ok(st),
            Phase::Failed(_) if st.fail_open => return Ok(st),
            Phase::Failed(err) => {
                return Err(Error::new(
                    ErrorKind::LoadFailed,
                    format!("the session could not be loaded earlier in this request: {err}"),
                ))
            }
            Phase::Unloaded => {}
        }
        let Some(id) = st.requested else {
            st.phase = Phase::Loaded;
            return Ok(st);
        };
        let key = self.engine.key(&id);
        let result = self
            .engine
            .timed("load", self.engine.inner.store.load(&key))
            .await
            .and_then(|fields| fields.map(split_meta).transpose());
        match result {
            Err(err) => {
                self.engine.metrics().load("error");
                tracing::warn!(error = %err, "session load failed");
                st.phase = Phase::Failed(err.shallow_clone());
                if st.fail_open {
                    Ok(st)
                } else {
                    Err(err)
                }
            }
            Ok(Some((meta, fields))) if meta.is_live(now_ms()) => {
                self.engine.metrics().load("hit");
                st.id = Some(id);
                st.stored = true;
                st.key = Some(key);
                st.was_new = false;
                st.meta = Some(meta);
                st.data = fields;
                st.phase = Phase::Loaded;
                Ok(st)
            }
            Ok(_) => {
                self.engine.metrics().load("miss");
                st.stale_cookie = true;
                st.phase = Phase::Loaded;
                Ok(st)
            }
        }
    }

    /// The value of `field`, decoded as `T`; `None` when absent.
    pub async fn get<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>> {
        let st = self.loaded().await?;
        st.data
            .get(field)
            .map(|bytes| decode_value(field, bytes))
            .transpose()
    }

    /// Sets `field` to `value`. Setting a value equal to the stored one is no change.
    pub async fn insert<T: Serialize + ?Sized>(
        &self,
        field: impl Into<String>,
        value: &T,
    ) -> Result<()> {
        let field = field.into();
        if field == META_FIELD {
            return Err(Error::new(
                ErrorKind::InvalidField,
                format!("the field name {META_FIELD:?} is reserved by the engine; use another"),
            ));
        }
        let bytes = encode_value(value)?;
        let mut st = self.loaded().await?;
        st.remember(&field);
        st.data.insert(field, bytes);
        Ok(())
    }

    /// Removes `field`; returns whether it was present.
    pub async fn remove(&self, field: &str) -> Result<bool> {
        let mut st = self.loaded().await?;
        st.remember(field);
        Ok(st.data.remove(field).is_some())
    }

    /// Removes every field; the session itself stays (see [`Session::destroy`]).
    pub async fn clear(&self) -> Result<()> {
        let mut st = self.loaded().await?;
        let keys: Vec<String> = st.data.keys().cloned().collect();
        for key in &keys {
            st.remember(key);
        }
        st.data.clear();
        Ok(())
    }

    /// The field names, in no particular order.
    pub async fn keys(&self) -> Result<Vec<String>> {
        Ok(self.loaded().await?.data.keys().cloned().collect())
    }

    /// Whether the session has no fields.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.loaded().await?.data.is_empty())
    }

    /// Whether the session did not exist in the store when this request began (the seed's
    /// `isNew`), or was destroyed during it.
    pub async fn is_new(&self) -> Result<bool> {
        Ok(self.loaded().await?.was_new)
    }

    /// The session's id, minting one for a new session.
    pub async fn id(&self) -> Result<SessionId> {
        let mut st = self.loaded().await?;
        Ok(*st.id.get_or_insert_with(SessionId::generate))
    }

    /// Ends the session: its stored data is deleted at commit and the cookie cleared. Fields
    /// inserted afterwards start a new session with a new id.
    ///
    /// Needs no load: destroying costs one store command.
    pub async fn destroy(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let old = match st.phase {
            Phase::Loaded if st.stored => st.id,
            Phase::Loaded => st.delete_old,
            _ => st.requested,
        };
        // After a failed load the requested id is deleted blindly: logging out must still work.
        let (requested, fail_open) = (st.requested, st.fail_open);
        *st = State::new(requested);
        st.fail_open = fail_open;
        // Whatever happens next, a cookie the client holds must not outlive this destroy.
        st.stale_cookie = requested.is_some();
        st.phase = Phase::Loaded;
        st.delete_old = old;
        st.destroyed = old.is_some();
        Ok(())
    }

    /// Whether [`Session::destroy`] was called in this request (and not undone by a later
    /// commit). A failed commit of a destroyed session must never look like a success: the HTTP
    /// layer clears the cookie and answers 503 whatever its failure policy.
    pub async fn is_destroyed(&self) -> bool {
        self.state.lock().await.destroyed
    }

    /// Moves the session's data to a new id (call it on login or privilege change: the defence
    /// against session fixation). The old id stops working at commit.
    pub async fn regenerate(&self) -> Result<()> {
        let mut st = self.loaded().await?;
        if st.stored {
            st.delete_old = st.id;
            st.stored = false;
            st.regenerated = true;
            st.original.clear();
        }
        st.id = Some(SessionId::generate());
        Ok(())
    }

    /// Writes what changed to the store. The HTTP middleware calls this once the handler has
    /// answered; call it yourself when using the engine directly.
    ///
    /// An unused session, or an unchanged one whose renewal is not due, costs no store command.
    /// A session whose load failed is never written (that could wipe the real one): its commit
    /// returns the [`ErrorKind::LoadFailed`] error.
    pub async fn commit(&self) -> Result<Committed> {
        let mut st = self.state.lock().await;
        match &st.phase {
            Phase::Unloaded => {
                return Ok(Committed {
                    cookie: CookieAction::Keep,
                    writes: 0,
                    expires: None,
                })
            }
            Phase::Failed(err) => {
                return Err(Error::new(
                    ErrorKind::LoadFailed,
                    format!("the session was not saved because its load failed: {err}"),
                ))
            }
            Phase::Loaded => {}
        }
        let st = &mut *st;
        let config = &self.engine.inner.config;
        let now = now_ms();
        let mut cookie = CookieAction::Keep;
        let mut writes = 0u8;

        if st.stored {
            let id = st.id.expect("a stored session has an id");
            let meta = st.meta.expect("a stored session has meta");
            let (set, delete) = diff(&st.original, &st.data);
            let changed = !set.is_empty() || !delete.is_empty();
            let new_expiry = expiry(config, now, meta.deadline_ms);
            // Reads and writes renew alike: once less than `renew_below` of the idle TTL remains
            // (with `0.0`, writes renew every time and reads never).
            let renew_due = new_expiry > meta.expires_ms
                && if config.renew_below > 0.0 {
                    (meta.expires_ms.saturating_sub(now) as f64)
                        < config.renew_below * ms(config.idle_ttl) as f64
                } else {
                    changed
                };
            if !changed && !renew_due {
                self.engine.metrics().skipped();
            } else {
                let op = if changed { "update" } else { "touch" };
                let size = check_limits(config, self.engine.metrics(), &st.data, op)?;
                let new_meta = Meta {
                    expires_ms: new_expiry,
                    ..meta
                };
                let mut set = set;
                if renew_due {
                    set.push((META_FIELD.to_owned(), new_meta.encode()));
                }
                let key = st.key.clone().unwrap_or_else(|| self.engine.key(&id));
                let ttl = renew_due.then(|| Duration::from_millis(new_expiry.saturating_sub(now)));
                let updated = self
                    .engine
                    .timed(
                        "update",
                        self.engine.inner.store.update(&key, &set, &delete, ttl),
                    )
                    .await
                    .inspect_err(|_| self.engine.metrics().write(op, "error"))?;
                writes += 1;
                if updated {
                    self.engine.metrics().write(op, "ok");
                    if op == "update" {
                        self.engine.metrics().size(size);
                    }
                    st.original.clear();
                    if renew_due {
                        st.meta = Some(new_meta);
                        cookie = CookieAction::Set {
                            id,
                            expires: to_time(new_expiry),
                        };
                    }
                } else {
                    // Destroyed (or expired) by someone else since we loaded it: stay destroyed.
                    self.engine.metrics().write(op, "gone");
                    st.stored = false;
                    cookie = CookieAction::Clear;
                }
            }
        } else if !st.data.is_empty() || st.regenerated || (config.save_new_empty && !st.destroyed)
        {
            let op = if st.regenerated {
                "regenerate"
            } else {
                "create"
            };
            let size = check_limits(config, self.engine.metrics(), &st.data, op)?;
            let meta = st.meta.unwrap_or_else(|| Meta {
                version: FORMAT_VERSION,
                created_ms: now,
                deadline_ms: config.absolute_ttl.map(|t| now.saturating_add(ms(t))),
                expires_ms: 0,
            });
            let expires_ms = expiry(config, now, meta.deadline_ms);
            let meta = Meta { expires_ms, ..meta };
            let mut fields: Vec<(String, Bytes)> = st
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            fields.push((META_FIELD.to_owned(), meta.encode()));
            let ttl = Duration::from_millis(expires_ms.saturating_sub(now));
            let mut id = *st.id.get_or_insert_with(SessionId::generate);
            let mut attempts = 0;
            loop {
                attempts += 1;
                let key = self.engine.key(&id);
                let created = self
                    .engine
                    .timed("create", self.engine.inner.store.create(&key, &fields, ttl))
                    .await
                    .inspect_err(|_| self.engine.metrics().write(op, "error"))?;
                writes += 1;
                if created {
                    break;
                }
                if attempts == CREATE_ATTEMPTS {
                    self.engine.metrics().write(op, "error");
                    return Err(Error::new(
                        ErrorKind::IdCollision,
                        format!("{CREATE_ATTEMPTS} fresh session ids all collided; check the OS random source"),
                    ));
                }
                tracing::warn!("new session id collided with an existing session; minting another");
                id = SessionId::generate();
            }
            self.engine.metrics().write(op, "ok");
            self.engine.metrics().size(size);
            st.id = Some(id);
            st.stored = true;
            st.meta = Some(meta);
            st.original.clear();
            cookie = CookieAction::Set {
                id,
                expires: to_time(expires_ms),
            };
        } else if st.destroyed || st.stale_cookie {
            cookie = CookieAction::Clear;
        }

        if let Some(old) = st.delete_old.take() {
            let op = if st.destroyed {
                "destroy"
            } else {
                "regenerate"
            };
            let key = self.engine.key(&old);
            self.engine
                .timed("delete", self.engine.inner.store.delete(&key))
                .await
                .inspect_err(|_| self.engine.metrics().write(op, "error"))?;
            writes += 1;
            if st.destroyed {
                self.engine.metrics().write(op, "ok");
            }
        }
        let expires = st.meta.filter(|_| st.stored).map(|m| to_time(m.expires_ms));
        Ok(Committed {
            cookie,
            writes,
            expires,
        })
    }
}

/// Splits the meta field off a loaded hash; a hash without one is not ours.
fn split_meta(mut fields: HashMap<String, Bytes>) -> Result<(Meta, HashMap<String, Bytes>)> {
    let raw = fields.remove(META_FIELD).ok_or_else(|| {
        Error::new(
            ErrorKind::Decode,
            "the stored session has no meta field; something other than this engine wrote \
             under this keySchema",
        )
    })?;
    Ok((Meta::decode(&raw)?, fields))
}

/// The expiry to set now: a full idle TTL, capped by the absolute deadline.
fn expiry(config: &SessionConfig, now: u64, deadline: Option<u64>) -> u64 {
    let sliding = now.saturating_add(ms(config.idle_ttl));
    deadline.map_or(sliding, |d| sliding.min(d))
}

/// Fields whose encoded bytes changed, and fields that disappeared, among those touched.
fn diff(
    original: &HashMap<String, Option<Bytes>>,
    data: &HashMap<String, Bytes>,
) -> (Vec<(String, Bytes)>, Vec<String>) {
    let mut set = Vec::new();
    let mut delete = Vec::new();
    for (field, before) in original {
        match (data.get(field), before) {
            (Some(now), Some(before)) if now == before => {}
            (Some(now), _) => set.push((field.clone(), now.clone())),
            (None, Some(_)) => delete.push(field.clone()),
            (None, None) => {}
        }
    }
    (set, delete)
}

/// Checks the size and field-count limits; returns the encoded size.
fn check_limits(
    config: &SessionConfig,
    metrics: &metrics::Handles,
    data: &HashMap<String, Bytes>,
    op: &'static str,
) -> Result<usize> {
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if data.len() > config.max_fields {
        metrics.write(op, "too_large");
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "the session has {} fields, over the limit of {}; nothing was saved",
                data.len(),
                config.max_fields
            ),
        ));
    }
    if size > config.max_size {
        metrics.write(op, "too_large");
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "the session encodes to {size} bytes, over the limit of {}; nothing was saved",
                config.max_size
            ),
        ));
    }
    Ok(size)
}
