//! The seam under document layouts that keep a whole session in one string value (the
//! koa-session-redis3 JSON layout): read, create-if-absent, compare-and-set, delete and a guarded
//! move. The layout decides what the string holds; this only stores it atomically.

use std::{fmt::Debug, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// What [`StringStore::replace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replaced {
    /// The value was still `expected` and is now the new one.
    Done,
    /// The key no longer exists: nothing was written.
    Gone,
    /// Someone else changed the value meanwhile: nothing was written; this is the current one.
    Changed(Bytes),
}

/// What [`StringStore::rename`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renamed {
    /// `old` held `expected`; it is gone and `new` holds the value.
    Done,
    /// `old` no longer existed: nothing was written.
    OldGone,
    /// `old` holds something else now (this): nothing was written.
    OldChanged(Bytes),
    /// `new` already exists: nothing was written.
    NewTaken,
}

/// String values with a TTL under keys, with atomic guarded writes. Every call but `rename`
/// names one key.
#[async_trait]
pub trait StringStore: Debug + Send + Sync + 'static {
    /// The value of `key` (`GET`); never touches its TTL.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Sets `key` only if it does not exist (`SET NX PX`); returns whether it was written.
    async fn set_new(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool>;

    /// Sets `key` to `value` with a new TTL only while it still holds `expected`.
    async fn replace(
        &self,
        key: &str,
        expected: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Replaced>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Moves a value, failing closed: `new` gets `value` only if `old` still holds `expected`,
    /// and `old` is deleted. Atomic on one node; across cluster slots `old` is deleted first
    /// (only if it still holds `expected`) and `new` created only then.
    async fn rename(
        &self,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<()>;

    /// The bound on one call (the Redis store's command timeout), if any. A layout that needs
    /// several calls for one session operation (a read, then a compare-and-set, retried) bounds
    /// the whole operation by it, so no number of retries outlasts it.
    fn call_timeout(&self) -> Option<Duration> {
        None
    }
}

/// A shared string store is a string store: one store can back a layout and, beside it, the
/// caller's own guarded keys (upgrade mode's claims).
#[async_trait]
impl<T: StringStore + ?Sized> StringStore for std::sync::Arc<T> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        (**self).get(key).await
    }

    async fn set_new(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        (**self).set_new(key, value, ttl).await
    }

    async fn replace(
        &self,
        key: &str,
        expected: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Replaced> {
        (**self).replace(key, expected, value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        (**self).delete(key).await
    }

    async fn rename(
        &self,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed> {
        (**self).rename(old, expected, new, value, ttl).await
    }

    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }

    fn call_timeout(&self) -> Option<Duration> {
        (**self).call_timeout()
    }
}
