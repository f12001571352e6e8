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

pub use self::{
    memory::MemoryStore,
    memory_strings::MemoryStringStore,
    redis::{NearCache, RedisStore, RedisStoreBuilder},
    strings::{Renamed, Replaced, StringStore},
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
/// Every method but `regenerate` acts on one key, so in a cluster those calls stay in one slot. Implementations
/// must make `create` and `update` atomic check-and-write steps: they are what keeps a create
/// from overwriting another session and a late save from resurrecting a destroyed one.
#[async_trait]
pub trait SessionStore: Debug + Send + Sync + 'static {
    /// All fields of `key`, or `None` when it does not exist (or has expired).
    async fn load(&self, key: &str) -> Result<Option<Fields>>;

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
}
