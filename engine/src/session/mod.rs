//! The per-request session handle: lazy load, change tracking by encoded bytes, destroy and
//! regenerate. Its lifecycle is an explicit state machine (`state`), its commit a pure plan
//! (`plan`) that a small executor runs (`execute`). All store I/O of a request goes through here;
//! nothing here knows about HTTP.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::Mutex;

use crate::{
    error::{Error, ErrorKind, Result},
    id::SessionId,
};

mod engine;
mod execute;
mod expiry;
mod fields;
mod load;
mod plan;
mod state;
mod users;

use self::state::{Lifecycle, State};
pub use self::{
    engine::SessionEngine,
    expiry::{CookieLifetime, Expiry},
};

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

#[cfg(test)]
mod tests;
