//! [`StringStore`] in process memory, for tests and the demo without Redis: one mutex, so every
//! guarded write is trivially atomic.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::strings::{Renamed, Replaced, StringStore};
use crate::error::Result;

/// Strings with expiry in a shared map. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStringStore {
    map: Arc<Mutex<HashMap<String, (Bytes, Instant)>>>,
}

impl MemoryStringStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many live keys it holds.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.map.lock().values().filter(|(_, at)| *at > now).count()
    }

    /// Whether it holds no live key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets `key` unconditionally (for tests: another writer).
    pub fn put(&self, key: &str, value: impl Into<Bytes>, ttl: Duration) {
        self.map
            .lock()
            .insert(key.to_owned(), (value.into(), expiry(ttl)));
    }
}

fn expiry(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(400 * 24 * 3600))
}

fn live(map: &HashMap<String, (Bytes, Instant)>, key: &str) -> Option<Bytes> {
    map.get(key)
        .filter(|(_, at)| *at > Instant::now())
        .map(|(v, _)| v.clone())
}

#[async_trait]
impl StringStore for MemoryStringStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(live(&self.map.lock(), key))
    }

    async fn set_new(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let mut map = self.map.lock();
        if live(&map, key).is_some() {
            return Ok(false);
        }
        map.insert(key.to_owned(), (value, expiry(ttl)));
        Ok(true)
    }

    async fn replace(
        &self,
        key: &str,
        expected: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Replaced> {
        let mut map = self.map.lock();
        match live(&map, key) {
            None => Ok(Replaced::Gone),
            Some(cur) if cur != expected => Ok(Replaced::Changed(cur)),
            Some(_) => {
                map.insert(key.to_owned(), (value, expiry(ttl)));
                Ok(Replaced::Done)
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut map = self.map.lock();
        let existed = live(&map, key).is_some();
        map.remove(key);
        Ok(existed)
    }

    async fn rename(
        &self,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed> {
        let mut map = self.map.lock();
        if live(&map, new).is_some() {
            return Ok(Renamed::NewTaken);
        }
        match live(&map, old) {
            None => Ok(Renamed::OldGone),
            Some(cur) if cur != expected => Ok(Renamed::OldChanged(cur)),
            Some(_) => {
                map.remove(old);
                map.insert(new.to_owned(), (value, expiry(ttl)));
                Ok(Renamed::Done)
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
