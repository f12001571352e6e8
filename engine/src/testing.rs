//! Test support for code built on the engine (feature `test-util`): [`FaultStore`], a
//! [`SessionStore`] wrapper that counts calls and injects failures, so the middleware's tests and
//! a service's own tests can drive every failure path without a real Redis.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    store::{Fields, Regenerated, SessionStore},
    Error, ErrorKind, Result,
};

/// Which calls a [`FaultStore`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Forward everything to the inner store.
    PassThrough,
    /// Every operation fails with a Redis error.
    FailAll,
    /// Loads fail; writes go through.
    FailLoad,
    /// Loads go through; create, update, delete and regenerate fail.
    FailWrites,
    /// Loads go through; create, update, delete and regenerate fail with an error of this kind.
    WriteError(ErrorKind),
}

#[derive(Debug, Default)]
struct Calls {
    load: AtomicUsize,
    create: AtomicUsize,
    update: AtomicUsize,
    delete: AtomicUsize,
    ping: AtomicUsize,
}

/// A store wrapper that counts calls (failed ones included) and fails them as its [`Fault`] says.
/// Clones share the counters.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tessera_engine::{
///     testing::{Fault, FaultStore},
///     MemoryStore, SessionConfig, SessionEngine, SessionId,
/// };
///
/// let store = FaultStore::new(MemoryStore::new(), Fault::FailLoad);
/// let engine = SessionEngine::new(store.clone(), SessionConfig::default());
/// let session = engine.session(Some(SessionId::generate()));
/// assert!(session.get::<u64>("views").await.is_err());
/// assert_eq!(store.loads(), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FaultStore<S> {
    inner: S,
    fault: Fault,
    calls: Arc<Calls>,
}

impl<S> FaultStore<S> {
    /// Wraps `inner`, failing calls as `fault` says.
    pub fn new(inner: S, fault: Fault) -> Self {
        FaultStore {
            inner,
            fault,
            calls: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Load calls.
    pub fn loads(&self) -> usize {
        self.calls.load.load(Ordering::SeqCst)
    }

    /// Create calls, regenerates included (a regenerate creates the new key).
    pub fn creates(&self) -> usize {
        self.calls.create.load(Ordering::SeqCst)
    }

    /// Update calls.
    pub fn updates(&self) -> usize {
        self.calls.update.load(Ordering::SeqCst)
    }

    /// Delete calls.
    pub fn deletes(&self) -> usize {
        self.calls.delete.load(Ordering::SeqCst)
    }

    /// Ping calls.
    pub fn pings(&self) -> usize {
        self.calls.ping.load(Ordering::SeqCst)
    }

    /// Create, update and delete calls, failed ones included.
    pub fn writes(&self) -> usize {
        self.creates() + self.updates() + self.deletes()
    }

    /// Every call.
    pub fn total(&self) -> usize {
        self.loads() + self.writes() + self.pings()
    }

    fn fails(&self, write: bool) -> bool {
        match self.fault {
            Fault::PassThrough => false,
            Fault::FailAll => true,
            Fault::FailLoad => !write,
            Fault::FailWrites | Fault::WriteError(_) => write,
        }
    }

    /// The error an injected failure of `op` returns.
    fn injected(&self, op: &str) -> Error {
        let kind = match self.fault {
            Fault::WriteError(kind) => kind,
            _ => ErrorKind::Redis,
        };
        Error::new(kind, format!("injected {op} failure"))
    }

    fn count(&self, counter: &AtomicUsize, write: bool, op: &str) -> Result<()> {
        counter.fetch_add(1, Ordering::SeqCst);
        if self.fails(write) {
            return Err(self.injected(op));
        }
        Ok(())
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for FaultStore<S> {
    async fn load(&self, key: &str) -> Result<Option<Fields>> {
        self.count(&self.calls.load, false, "load")?;
        self.inner.load(key).await
    }

    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool> {
        self.count(&self.calls.create, true, "create")?;
        self.inner.create(key, fields, ttl).await
    }

    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.count(&self.calls.update, true, "update")?;
        self.inner.update(key, set, delete, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.count(&self.calls.delete, true, "delete")?;
        self.inner.delete(key).await
    }

    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        self.count(&self.calls.create, true, "regenerate")?;
        self.inner.regenerate(old, new, fields, ttl).await
    }

    async fn ping(&self) -> Result<()> {
        self.calls.ping.fetch_add(1, Ordering::SeqCst);
        if self.fault == Fault::FailAll {
            return Err(self.injected("ping"));
        }
        self.inner.ping().await
    }
}
