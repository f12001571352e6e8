//! The engine: a store, its configuration and the key derivation, shared by every request's
//! handle.

use std::{collections::HashMap, sync::Arc, time::Instant};

use bytes::Bytes;

use tokio::sync::Mutex;

use super::{
    state::{Bound, DestroyedKey, OnLoadError, State},
    Session, View,
};
use crate::{
    config::SessionConfig,
    error::Result,
    id::SessionId,
    key::KeyDeriver,
    metrics,
    record::{DeviceRecord, DEVICE_FIELD, SEEN_FIELD},
    store::SessionStore,
};

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
    pub(super) inner: Arc<EngineInner>,
}

impl std::fmt::Debug for SessionEngine {
    // The store may hold sessions (the memory store does): show the configuration only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEngine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(super) struct EngineInner {
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) config: SessionConfig,
    pub(super) keys: KeyDeriver,
    pub(super) metrics: metrics::Handles,
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
    pub(super) fn destroyed_key(&self, id: &SessionId) -> DestroyedKey {
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
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis) or [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when the store does not answer in time.
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

impl SessionEngine {
    /// Splits a logged-in session's device record and last-seen field off its loaded fields.
    /// A session is logged in when its id names a user slot and it has a device record.
    pub(super) fn split_binding(
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
