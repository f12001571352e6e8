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

use parking_lot::Mutex;

use crate::{
    store::{BindOutcome, BindRequest, Fields, Listed, Regenerated, Revoke, SessionStore},
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
    /// Per-user operations (login, list, revoke, logout, renewal, regenerate).
    user: AtomicUsize,
    /// The one operation to fail next, whatever the fault (see [`FaultStore::fail_next`]).
    next: Mutex<Option<&'static str>>,
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
/// let engine = SessionEngine::new(store.clone(), SessionConfig::default()).unwrap();
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

    /// Per-user operation calls (`bind`, `list_user`, `revoke`, `unbind`, `touch_user`,
    /// `rebind`).
    pub fn user_ops(&self) -> usize {
        self.calls.user.load(Ordering::SeqCst)
    }

    /// Every call.
    pub fn total(&self) -> usize {
        self.loads() + self.writes() + self.pings() + self.user_ops()
    }

    /// Fails the next call of `op` (a [`SessionStore`] method name, e.g. `"update"`,
    /// `"touch_user"`, `"bind"`) once with a Redis error, whatever the fault: to stop a
    /// multi-step operation between two steps.
    pub fn fail_next(&self, op: &'static str) {
        *self.calls.next.lock() = Some(op);
    }

    /// A per-user call: counted, failed when it is the one [`FaultStore::fail_next`] named or the
    /// fault fails every call (writes: all but `list_user`).
    fn user_call(&self, op: &'static str) -> Result<()> {
        self.calls.user.fetch_add(1, Ordering::SeqCst);
        self.armed(op)?;
        if self.fails(op != "list_user") {
            return Err(self.injected(op));
        }
        Ok(())
    }

    fn armed(&self, op: &'static str) -> Result<()> {
        let mut next = self.calls.next.lock();
        if *next == Some(op) {
            *next = None;
            return Err(Error::new(
                ErrorKind::Redis,
                format!("injected {op} failure"),
            ));
        }
        Ok(())
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

    fn count(&self, counter: &AtomicUsize, write: bool, op: &'static str) -> Result<()> {
        counter.fetch_add(1, Ordering::SeqCst);
        self.armed(op)?;
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

    async fn load_bound(&self, key: &str, index: &str) -> Result<Option<Fields>> {
        self.count(&self.calls.load, false, "load")?;
        self.inner.load_bound(key, index).await
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

    fn keeps_meta(&self) -> bool {
        self.inner.keeps_meta()
    }

    fn check_field(&self, name: &str, value: &[u8]) -> Result<()> {
        self.inner.check_field(name, value)
    }

    async fn bind(&self, request: &BindRequest<'_>) -> Result<BindOutcome> {
        self.user_call("bind")?;
        self.inner.bind(request).await
    }

    async fn list_user(&self, index: &str) -> Result<Vec<Listed>> {
        self.user_call("list_user")?;
        self.inner.list_user(index).await
    }

    async fn revoke(&self, index: &str, which: Revoke<'_>) -> Result<Vec<String>> {
        self.user_call("revoke")?;
        self.inner.revoke(index, which).await
    }

    async fn unbind(&self, index: &str, key: &str, handle: Option<&str>) -> Result<bool> {
        self.user_call("unbind")?;
        self.inner.unbind(index, key, handle).await
    }

    async fn touch_user(&self, index: &str, handle: &str, ttl: Duration) -> Result<bool> {
        self.user_call("touch_user")?;
        self.inner.touch_user(index, handle, ttl).await
    }

    async fn rebind(
        &self,
        index: &str,
        handle: &str,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        self.user_call("rebind")?;
        self.inner
            .rebind(index, handle, old, new, fields, ttl)
            .await
    }
}
