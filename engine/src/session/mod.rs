//! The per-request session handle: lazy load, change tracking by encoded bytes, destroy and
//! regenerate. Its lifecycle is an explicit state machine (`state`), its commit a pure plan
//! (`plan`) that a small executor runs (`execute`). All store I/O of a request goes through here;
//! nothing here knows about HTTP.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::{
    config::SessionConfig,
    error::{Error, ErrorKind, Result},
    id::SessionId,
    key::KeyDeriver,
    metrics,
    record::{DeviceRecord, Meta, DEVICE_FIELD, META_FIELD, SEEN_FIELD},
    store::SessionStore,
};

mod execute;
mod expiry;
mod fields;
mod plan;
mod state;
mod users;

pub use self::expiry::{CookieLifetime, Expiry};
use self::state::{Bound, DestroyedKey, Lifecycle, OnLoadError, State, Stored};

/// Shared, cheap-to-clone entry point: a store, its configuration and the key derivation.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
/// use tessera_engine::{CookieAction, MemoryStore, SessionConfig, SessionEngine};
///
/// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
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
#[derive(Clone)]
pub struct SessionEngine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for SessionEngine {
    // The store may hold sessions (the memory store does): show the configuration only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEngine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct EngineInner {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    keys: KeyDeriver,
    metrics: metrics::Handles,
}

impl SessionEngine {
    /// An engine over `store`.
    ///
    /// # Errors
    ///
    /// An [`ErrorKind::Config`](crate::ErrorKind::Config) error when `config` is invalid (see
    /// [`SessionConfig::validate`]).
    pub fn new(store: impl SessionStore, config: SessionConfig) -> Result<Self> {
        Self::from_arc(Arc::new(store), config)
    }

    /// An engine over a shared, type-erased store.
    ///
    /// # Errors
    ///
    /// As [`SessionEngine::new`].
    pub fn from_arc(store: Arc<dyn SessionStore>, config: SessionConfig) -> Result<Self> {
        config.validate()?;
        metrics::describe();
        let keys = KeyDeriver::for_config(&config);
        Ok(SessionEngine {
            inner: Arc::new(EngineInner {
                store,
                config,
                keys,
                metrics: metrics::Handles::default(),
            }),
        })
    }

    /// A handle for one request; `id` comes from the request's (verified) cookie. Nothing is read
    /// until the session is first used.
    pub fn session(&self, id: Option<SessionId>) -> Session {
        self.handle(id, OnLoadError::Fail)
    }

    /// Like [`SessionEngine::session`], but if the load fails the handle behaves as an empty new
    /// session instead of returning errors. Its commit still writes nothing and reports the load
    /// failure, so a wrongly empty session never overwrites the real one.
    pub fn session_fail_open(&self, id: Option<SessionId>) -> Session {
        self.handle(id, OnLoadError::ServeEmpty)
    }

    fn handle(&self, id: Option<SessionId>, on_load_error: OnLoadError) -> Session {
        Session {
            engine: self.clone(),
            state: Arc::new(Mutex::new(State::new(id, on_load_error))),
            view: Arc::new(parking_lot::Mutex::new(View {
                id,
                modified: false,
            })),
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

    /// What a destroy of `id` deletes when nothing was loaded: its key and, for a logged-in
    /// session, its user's index (the handle is unknown: the store finds the entry by key).
    fn destroyed_key(&self, id: &SessionId) -> DestroyedKey {
        DestroyedKey {
            key: self.key(id),
            bound: id
                .slot()
                .map(|slot| (self.inner.keys.index_key(&slot), None)),
        }
    }

    /// Checks that the store answers (for health endpoints).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Redis`] or [`ErrorKind::Timeout`] when the store does not answer in time.
    pub async fn ping(&self) -> Result<()> {
        self.timed("ping", self.inner.store.ping()).await
    }

    pub(crate) fn metrics(&self) -> &metrics::Handles {
        &self.inner.metrics
    }

    pub(crate) async fn timed<T>(
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
        /// Whether the cookie should be persistent, as the session's [`Expiry`] decides.
        lifetime: CookieLifetime,
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
    /// The lifetime a cookie naming the stored session should have (re-issuing one that the
    /// commit kept, for example).
    pub lifetime: CookieLifetime,
}

/// One request's view of a session. Cheap to clone; clones share state.
///
/// Reads decode from the loaded bytes; writes are kept in memory until [`Session::commit`], which
/// sends only what changed.
#[derive(Clone)]
pub struct Session {
    engine: SessionEngine,
    state: Arc<Mutex<State>>,
    /// What the synchronous accessors read: published after every change of `state`, so they
    /// need neither the async lock nor a store call.
    view: Arc<parking_lot::Mutex<View>>,
}

/// The part of a handle's state its synchronous accessors answer from.
#[derive(Debug, Clone, Copy)]
struct View {
    id: Option<SessionId>,
    modified: bool,
}

impl View {
    fn of(st: &State) -> Self {
        let id = match &st.life {
            Lifecycle::Unloaded => st.requested,
            Lifecycle::Loaded(stored) => Some(stored.id),
            Lifecycle::Regenerated { id, .. } => Some(*id),
            Lifecycle::Fresh { id, .. }
            | Lifecycle::Destroyed { id, .. }
            | Lifecycle::Failed { id, .. } => *id,
        };
        let moved = match &st.life {
            Lifecycle::Regenerated { .. } => true,
            Lifecycle::Destroyed { old, .. } => old.is_some(),
            _ => false,
        };
        let changed = st
            .original
            .iter()
            .any(|(field, before)| before.as_ref() != st.data.get(field));
        View {
            id,
            modified: moved || changed,
        }
    }
}

impl std::fmt::Debug for Session {
    // `State`'s own Debug shows field names and redacted ids only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Session");
        match self.state.try_lock() {
            Ok(state) => d.field("state", &*state),
            Err(_) => d.field("state", &"<in use>"),
        };
        d.finish_non_exhaustive()
    }
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

    /// The session's id, if it has one yet; no store call, and asking never mints one. Before
    /// the first read or write it is the id the cookie named; after that, the stored session's
    /// (`None` for a new session until [`Session::ensure_id`] or the commit that creates it;
    /// the new id after [`Session::regenerate`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let session = engine.session(None);
    /// session.insert("views", &1u32).await?;
    /// assert_eq!(session.id(), None, "a new session has no id until its commit");
    /// session.commit().await?;
    /// assert!(session.id().is_some());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> Option<SessionId> {
        self.view.lock().id
    }

    /// Whether this request changed the session (a field set to a different value or removed,
    /// a regenerate, a destroy) since it was loaded or last committed; no store call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let session = engine.session(None);
    /// assert!(!session.is_modified());
    /// session.insert("views", &1u32).await?;
    /// assert!(session.is_modified());
    /// session.commit().await?;
    /// assert!(!session.is_modified());
    /// # Ok(()) }
    /// ```
    pub fn is_modified(&self) -> bool {
        self.view.lock().modified
    }

    fn publish(&self, st: &State) {
        *self.view.lock() = View::of(st);
    }

    /// The state after the lazy load: `Unloaded` becomes `Loaded`, `Fresh` or `Failed`.
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let result = self.load_once().await;
        if let Ok(st) = &result {
            self.publish(st);
        }
        result
    }

    async fn load_once(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut st = self.state.lock().await;
        match &st.life {
            Lifecycle::Unloaded => {}
            Lifecycle::Failed { .. } if st.on_load_error == OnLoadError::ServeEmpty => {
                return Ok(st)
            }
            Lifecycle::Failed { error: err, .. } => {
                return Err(Error::new(
                    ErrorKind::LoadFailed,
                    format!("the session could not be loaded earlier in this request: {err}"),
                ))
            }
            _ => return Ok(st),
        }
        let Some(id) = st.requested else {
            st.life = Lifecycle::Fresh {
                id: None,
                stale_cookie: false,
            };
            return Ok(st);
        };
        let key = self.engine.key(&id);
        let config = &self.engine.inner.config;
        let result = self
            .engine
            .timed("load", self.engine.inner.store.load(&key))
            .await
            .and_then(|fields| fields.map(|f| split_meta(f, config)).transpose())
            .and_then(|loaded| {
                loaded
                    .map(|(meta, mut fields)| {
                        let bound = self.engine.split_binding(&id, &mut fields)?;
                        Ok((meta, fields, bound))
                    })
                    .transpose()
            });
        match result {
            Err(err) => {
                self.engine.metrics().load("error");
                tracing::warn!(error = %err, "session load failed");
                st.life = Lifecycle::Failed {
                    error: err.shallow_clone(),
                    id: None,
                };
                match st.on_load_error {
                    OnLoadError::ServeEmpty => Ok(st),
                    OnLoadError::Fail => Err(err),
                }
            }
            Ok(Some((meta, fields, bound))) if meta.is_live(plan::epoch_ms(SystemTime::now())) => {
                self.engine.metrics().load("hit");
                st.life = Lifecycle::Loaded(Stored {
                    id,
                    key,
                    meta,
                    bound,
                });
                st.found_at_load = true;
                st.expiry = meta.expiry;
                st.data = fields;
                Ok(st)
            }
            Ok(_) => {
                self.engine.metrics().load("miss");
                st.life = Lifecycle::Fresh {
                    id: None,
                    stale_cookie: true,
                };
                Ok(st)
            }
        }
    }

    /// Whether the session did not exist in the store when this request began (the seed's
    /// `isNew`), or was destroyed during it.
    ///
    /// # Errors
    ///
    /// The load's error.
    pub async fn is_new(&self) -> Result<bool> {
        Ok(self.loaded().await?.is_new())
    }

    /// The session's id, minting one for a new session (the id its commit will create it
    /// under). [`Session::id`] asks without minting.
    ///
    /// # Errors
    ///
    /// The load's error; [`ErrorKind::LoadFailed`] when a fail-open handle's load failed.
    pub async fn ensure_id(&self) -> Result<SessionId> {
        let mut st = self.loaded().await?;
        let id = st.id();
        self.publish(&st);
        id.ok_or_else(|| {
            Error::new(
                ErrorKind::LoadFailed,
                "the session could not be loaded, so it has no id in this request",
            )
        })
    }

    /// Ends the session: its stored data is deleted at commit and the cookie cleared. Fields
    /// inserted afterwards start a new session with a new id.
    ///
    /// Needs no load: destroying costs one store command, and works while loads fail.
    ///
    /// # Errors
    ///
    /// None today: the store command runs at commit, whose result tells. The `Result` leaves
    /// room for a check that needs the store.
    pub async fn destroy(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        st.destroy(|id| self.engine.destroyed_key(id));
        self.publish(&st);
        Ok(())
    }

    /// Whether [`Session::destroy`] was called in this request and no new session was stored
    /// since (fields inserted after a destroy start one at commit).
    /// A failed commit of a destroyed session must never look like a success: the HTTP layer
    /// clears the cookie and answers 503 whatever its failure policy.
    ///
    /// A destroy with nothing to end (no cookie presented, nothing stored) does not count.
    pub async fn is_destroyed(&self) -> bool {
        let st = self.state.lock().await;
        matches!(&st.life, Lifecycle::Destroyed { old, .. } if old.is_some() || st.requested.is_some())
    }

    /// Moves the session's data to a new id (call it on login or privilege change: the defence
    /// against session fixation). At commit the old id stops working, and the new session is
    /// created only if the old one still exists then: a session destroyed meanwhile (a logout in
    /// another request) stays destroyed, and this commit clears the cookie instead.
    ///
    /// # Errors
    ///
    /// The load's error (the data to move must be read first).
    pub async fn regenerate(&self) -> Result<()> {
        let mut st = self.loaded().await?;
        st.regenerate();
        self.publish(&st);
        Ok(())
    }

    /// Gives this session its own expiry rule instead of the configured idle TTL (`None`: back
    /// to the configuration). The rule is stored with the session at commit, so every later
    /// renewal and cookie follows it; the configured absolute lifetime still caps it. Setting a
    /// rule writes the session at commit even when nothing else changed, and takes effect then
    /// even when it ends the session sooner than its current expiry.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use std::time::Duration;
    /// use tessera_engine::{CookieAction, CookieLifetime, Expiry, MemoryStore, SessionConfig, SessionEngine};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let session = engine.session(None);
    /// session.insert("user", "ada").await?;
    /// // The login form's "remember me" box was ticked.
    /// session.set_expiry(Some(Expiry::OnInactivity(Duration::from_secs(30 * 86_400)))).await?;
    /// let CookieAction::Set { lifetime, .. } = session.commit().await?.cookie else { unreachable!() };
    /// assert_eq!(lifetime, CookieLifetime::Persistent);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a rule out of range (an idle TTL under one second or over
    /// [`MAX_TTL`](crate::MAX_TTL), a deadline not in the future or more than `MAX_TTL` ahead);
    /// [`ErrorKind::Unsupported`] when the store's layout keeps no per-session data beside the
    /// fields (the koa-session-redis3 profile); the load's error otherwise.
    pub async fn set_expiry(&self, expiry: Option<Expiry>) -> Result<()> {
        let rule = expiry.map(|e| e.checked(SystemTime::now())).transpose()?;
        if rule.is_some() && !self.engine.inner.store.keeps_meta() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this store's layout has no place for a per-session expiry (the \
                 koa-session-redis3 profile stores only the session's own fields); every session \
                 follows the configured TTL",
            ));
        }
        let mut st = self.loaded().await?;
        st.expiry = rule;
        self.publish(&st);
        Ok(())
    }

    /// The session's own expiry rule, if it has one ([`Session::set_expiry`]).
    ///
    /// # Errors
    ///
    /// The load's error.
    pub async fn expiry(&self) -> Result<Option<Expiry>> {
        Ok(self.loaded().await?.expiry.map(Expiry::from_stored))
    }

    /// Writes what changed to the store. The HTTP middleware calls this once the handler has
    /// answered; call it yourself when using the engine directly.
    ///
    /// An unused session, or an unchanged one whose renewal is not due, costs no store command.
    /// A session whose load failed is never written (that could wipe the real one): its commit
    /// returns the [`ErrorKind::LoadFailed`] error.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LoadFailed`] as above; [`ErrorKind::TooLarge`] for a session over its limits
    /// (nothing written); [`ErrorKind::InvalidField`] or [`ErrorKind::Encode`] when the store's
    /// layout refuses a field (the koa-session-redis3 profile's name and number rules);
    /// [`ErrorKind::Redis`], [`ErrorKind::Timeout`] or [`ErrorKind::NotDurable`] from the store;
    /// [`ErrorKind::IdCollision`] when new ids kept colliding. A failed commit may have written
    /// some of its steps (a regenerate across cluster slots deletes before it creates), never a
    /// session the handle did not mean to store.
    pub async fn commit(&self) -> Result<Committed> {
        let mut st = self.state.lock().await;
        let plan = plan::plan(&st, &self.engine.inner.config, SystemTime::now());
        let result = execute::execute(&self.engine, &mut st, plan).await;
        self.publish(&st);
        result
    }
}

impl SessionEngine {
    /// Splits a logged-in session's device record and last-seen field off its loaded fields.
    /// A session is logged in when its id names a user slot and it has a device record.
    fn split_binding(
        &self,
        id: &SessionId,
        fields: &mut HashMap<String, Bytes>,
    ) -> Result<Option<Bound>> {
        // A guest session never holds the reserved fields (`insert` refuses their names), so
        // its load pays nothing here.
        let Some(slot) = id.slot() else {
            return Ok(None);
        };
        fields.remove(SEEN_FIELD);
        match fields.remove(DEVICE_FIELD) {
            Some(device) => Ok(Some(Bound {
                index: self.inner.keys.index_key(&slot),
                device: DeviceRecord::decode(&device)?,
            })),
            None => Ok(None),
        }
    }
}

/// Splits the meta field off a loaded hash; a hash without one is not ours.
fn split_meta(
    mut fields: HashMap<String, Bytes>,
    config: &SessionConfig,
) -> Result<(Meta, HashMap<String, Bytes>)> {
    check_loaded(&fields, config)?;
    let raw = fields.remove(META_FIELD).ok_or_else(|| {
        Error::new(
            ErrorKind::Decode,
            "the stored session has no meta field; something other than this engine wrote \
             under this keySchema",
        )
    })?;
    Ok((Meta::decode(&raw)?, fields))
}

/// How much more than the configured limits a stored hash may hold before it is refused at load:
/// a limit lowered after sessions were written must not lock their owners out, but a hash far
/// over it was not written by this engine's rules and is not decoded.
const LOAD_SLACK: usize = 4;

/// Refuses a loaded hash with far more fields or bytes than the limits allow.
fn check_loaded(fields: &HashMap<String, Bytes>, config: &SessionConfig) -> Result<()> {
    let max_fields = config
        .max_fields
        .saturating_add(1)
        .saturating_mul(LOAD_SLACK);
    let max_bytes = config
        .max_size
        .saturating_add(1024)
        .saturating_mul(LOAD_SLACK);
    let bytes: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    if fields.len() > max_fields || bytes > max_bytes {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "the stored session has {} fields and {bytes} bytes, far over the limits ({} \
                 fields, {} bytes); it was not decoded. Check what writes under this keySchema",
                fields.len(),
                config.max_fields,
                config.max_size
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

#[cfg(test)]
mod commit_tests {
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
