//! The storage seam. A store persists one hash of fields per key with a TTL and offers the few
//! atomic operations the session rules need; it knows nothing about ids, meta or expiry policy.

use std::{collections::HashMap, fmt::Debug, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

mod memory;
mod memory_strings;
mod redis;
mod strings;
mod users;

pub(crate) use self::users::unsupported;
pub use self::{
    memory::MemoryStore,
    memory_strings::MemoryStringStore,
    redis::{NearCache, RedisStore, RedisStoreBuilder},
    strings::{Renamed, Replaced, StringStore},
    users::{BindOutcome, BindRequest, Listed, OldSession, Revoke},
};

/// A stored session: field name to encoded value, the meta field included.
pub type Fields = HashMap<String, Bytes>;

/// What [`SessionStore::regenerate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Regenerated {
    /// `old` existed and is gone; the session now lives under `new`.
    Moved,
    /// `old` no longer existed (destroyed or expired meanwhile): nothing was created.
    OldGone,
    /// `new` already exists (an id collision): nothing was created under it.
    NewTaken,
}

/// Persistence for session hashes.
///
/// The session methods act on one key, except `regenerate` (two) and `load_bound` (the session
/// and its user's index, under one hash tag); the per-user methods name a user's index and its
/// sessions, all under that user's hash tag. So in a cluster every call but `regenerate` stays in
/// one slot. Implementations
/// must make `create` and `update` atomic check-and-write steps: they are what keeps a create
/// from overwriting another session and a late save from resurrecting a destroyed one.
#[async_trait]
pub trait SessionStore: Debug + Send + Sync + 'static {
    /// All fields of `key`, or `None` when it does not exist (or has expired).
    async fn load(&self, key: &str) -> Result<Option<Fields>>;

    /// The fields of `key`, a session bound to a user, served only while the user's index
    /// `index` still names it: `None` also when no entry of the index holds `key`, so a session
    /// whose index was evicted (`maxmemory`) or rebuilt without it fails closed instead of
    /// escaping logout-everywhere and the cap. Read atomically with the session.
    ///
    /// The default is [`SessionStore::load`]: a store without per-user support has no bound
    /// sessions.
    async fn load_bound(&self, key: &str, index: &str) -> Result<Option<Fields>> {
        let _ = index;
        self.load(key).await
    }

    /// Writes `fields` under `key` with `ttl` only if `key` does not exist. Returns whether it was
    /// written.
    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool>;

    /// Only if `key` exists: sets `set`, deletes `delete`, and resets the TTL to `ttl` when one is
    /// given (`None` keeps the current TTL), atomically. Returns `false` (and leaves no key
    /// behind) when the key is gone. Field names in `set` must be distinct (the Redis store's
    /// existence check counts the fields HSET adds).
    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool>;

    /// Deletes `key`; returns whether it existed. Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Moves a session to a new key, failing closed: the hash `fields` is written under `new`
    /// with `ttl` only if `old` still exists at that moment, and `old` is deleted. Where both keys
    /// can be covered by one atomic step (one node) it is one; across cluster slots `old` is
    /// deleted first and `new` created only if the delete found it. [`Regenerated::NewTaken`]
    /// asks the caller to retry with another new key; `old` may already be gone by then, in which
    /// case the retry answers [`Regenerated::OldGone`].
    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<()>;

    /// Whether the layout stores the meta field as written, so a session's own expiry rule
    /// survives (`Session::set_expiry` is refused when it does not). The default: it does.
    fn keeps_meta(&self) -> bool {
        true
    }

    /// Checks one field as [`Session::insert`](crate::Session::insert) writes it (`value` in
    /// MessagePack), so a name or value the layout cannot store fails where it was written
    /// rather than at the save. The default accepts everything.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidField`] (or the layout's own kind) for a field it cannot store.
    fn check_field(&self, name: &str, value: &[u8]) -> Result<()> {
        let _ = (name, value);
        Ok(())
    }

    /// A login into a user's slot, in one atomic step with the cap and the index entry: prunes
    /// entries whose session expired, then refuses or evicts the least recently seen (by the
    /// `__tessera_seen` field) when the live count reaches the cap, creates the session only if
    /// its key is free and `old` still exists, adds the entry, keeps the index's TTL at least the
    /// new session's, and deletes `old` (and its entry). Where `old` lives in another slot of a
    /// cluster, it is deleted first, fail closed, as [`SessionStore::regenerate`] does.
    ///
    /// The default answers [`crate::ErrorKind::Unsupported`].
    async fn bind(&self, request: &BindRequest<'_>) -> Result<BindOutcome> {
        let _ = request;
        Err(unsupported("login"))
    }

    /// The live sessions of `index`, pruning entries whose session is gone.
    async fn list_user(&self, index: &str) -> Result<Vec<Listed>> {
        let _ = index;
        Err(unsupported("device list"))
    }

    /// Ends sessions of `index` with their entries; returns the handles of the sessions that
    /// existed. Deletes the index when no entry is left.
    async fn revoke(&self, index: &str, which: Revoke<'_>) -> Result<Vec<String>> {
        let _ = (index, which);
        Err(unsupported("revoke"))
    }

    /// A logout of a bound session: deletes `key` and its entry (found by `handle`, or by
    /// key when the handle is unknown); returns whether the session existed.
    async fn unbind(&self, index: &str, key: &str, handle: Option<&str>) -> Result<bool> {
        let _ = (index, key, handle);
        Err(unsupported("logout"))
    }

    /// Before a bound session's renewal: raises the index's TTL to at least `ttl`, only if the
    /// entry `handle` is still there (a revoked session's entry is never re-added). Returns
    /// whether it was.
    async fn touch_user(&self, index: &str, handle: &str, ttl: Duration) -> Result<bool> {
        let _ = (index, handle, ttl);
        Err(unsupported("renewal"))
    }

    /// [`SessionStore::regenerate`] within a user's slot: moves the session, only if `old` and
    /// its entry still exist, and points the entry `handle` at `new`.
    async fn rebind(
        &self,
        index: &str,
        handle: &str,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let _ = (index, handle, old, new, fields, ttl);
        Err(unsupported("regenerate"))
    }
}

/// A shared store is a store: `FaultStore<Arc<dyn SessionStore>>` and the like wrap a store that
/// an engine also holds.
#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for std::sync::Arc<T> {
    async fn load(&self, key: &str) -> Result<Option<Fields>> {
        (**self).load(key).await
    }

    async fn load_bound(&self, key: &str, index: &str) -> Result<Option<Fields>> {
        (**self).load_bound(key, index).await
    }

    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool> {
        (**self).create(key, fields, ttl).await
    }

    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        (**self).update(key, set, delete, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        (**self).delete(key).await
    }

    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        (**self).regenerate(old, new, fields, ttl).await
    }

    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }

    fn keeps_meta(&self) -> bool {
        (**self).keeps_meta()
    }

    fn check_field(&self, name: &str, value: &[u8]) -> Result<()> {
        (**self).check_field(name, value)
    }

    async fn bind(&self, request: &BindRequest<'_>) -> Result<BindOutcome> {
        (**self).bind(request).await
    }

    async fn list_user(&self, index: &str) -> Result<Vec<Listed>> {
        (**self).list_user(index).await
    }

    async fn revoke(&self, index: &str, which: Revoke<'_>) -> Result<Vec<String>> {
        (**self).revoke(index, which).await
    }

    async fn unbind(&self, index: &str, key: &str, handle: Option<&str>) -> Result<bool> {
        (**self).unbind(index, key, handle).await
    }

    async fn touch_user(&self, index: &str, handle: &str, ttl: Duration) -> Result<bool> {
        (**self).touch_user(index, handle, ttl).await
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
        (**self).rebind(index, handle, old, new, fields, ttl).await
    }
}
