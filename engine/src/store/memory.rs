//! In-process store with the same semantics as Redis (atomic create/update, TTL expiry). The
//! embedded default for development and single-instance deployments; not shared across processes.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    users::apply_cap, BindOutcome, BindRequest, Fields, Listed, Regenerated, Revoke, SessionStore,
};
use crate::{
    error::Result,
    record::{LISTED_FIELDS, SEEN_FIELD},
};

/// The smallest map that is swept. Expired entries are swept out once the map has doubled since
/// the last sweep, so memory stays within twice the live entries (plus this) without a
/// background task (which would tie the store to a runtime), and a sweep's cost per write stays
/// constant however large the store grows. A sweep every fixed number of writes cost each write
/// a share of the whole map: a third of a new session's time at a million entries.
const SWEEP_MIN: usize = 1024;

struct Entry {
    fields: Fields,
    expires_at: Instant,
}

/// An in-memory [`SessionStore`].
///
/// ```
/// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
///
/// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
/// # let _ = engine;
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    // Entries are sessions (and, with unhashed ids, their keys are cookie values): count them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.map.lock().len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    map: Mutex<HashMap<String, Entry>>,
    /// The map size that starts the next sweep; read and written under the map's lock.
    next_sweep: AtomicUsize,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live (unexpired) sessions.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.inner
            .map
            .lock()
            .values()
            .filter(|e| e.expires_at > now)
            .count()
    }

    /// Whether no live session is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remaining lifetime of `key`, like Redis `PTTL` (for tests and tools).
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.inner
            .map
            .lock()
            .get(key)
            .and_then(|e| e.expires_at.checked_duration_since(now))
    }

    fn after_write(&self, map: &mut HashMap<String, Entry>) {
        let next = &self.inner.next_sweep;
        if map.len() >= next.load(Ordering::Relaxed).max(SWEEP_MIN) {
            let now = Instant::now();
            map.retain(|_, e| e.expires_at > now);
            next.store(map.len().saturating_mul(2), Ordering::Relaxed);
        }
    }
}

/// `now + ttl`, saturating: a TTL too long for `Instant` (`Duration::MAX`) means "practically
/// never" rather than a panic.
fn expires_at(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(FOREVER))
        .unwrap_or(now)
}

/// What an overlong TTL is cut to (about a century).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn live<'a>(map: &'a mut HashMap<String, Entry>, key: &str, now: Instant) -> Option<&'a mut Entry> {
    if map.get(key).is_some_and(|e| e.expires_at <= now) {
        map.remove(key);
    }
    map.get_mut(key)
}

/// The live entries `handle → key` of index `index`, pruning those whose session is gone (and
/// the index itself once empty).
fn index_entries(
    map: &mut HashMap<String, Entry>,
    index: &str,
    now: Instant,
) -> Vec<(String, String)> {
    let Some(entry) = live(map, index, now) else {
        return Vec::new();
    };
    let entries: Vec<(String, String)> = entry
        .fields
        .iter()
        .map(|(h, k)| (h.clone(), String::from_utf8_lossy(k).into_owned()))
        .collect();
    let mut kept = Vec::with_capacity(entries.len());
    for (handle, key) in entries {
        if live(map, &key, now).is_some() {
            kept.push((handle, key));
        } else if let Some(index) = map.get_mut(index) {
            index.fields.remove(&handle);
        }
    }
    drop_if_empty(map, index);
    kept
}

fn drop_if_empty(map: &mut HashMap<String, Entry>, index: &str) {
    if map.get(index).is_some_and(|e| e.fields.is_empty()) {
        map.remove(index);
    }
}

/// Raises `index`'s expiry to at least `now + ttl`.
fn extend(map: &mut HashMap<String, Entry>, index: &str, now: Instant, ttl: Duration) {
    if let Some(entry) = map.get_mut(index) {
        entry.expires_at = entry.expires_at.max(expires_at(now, ttl));
    }
}

fn seen_ms(fields: &Fields) -> u64 {
    fields
        .get(SEEN_FIELD)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Deletes the session `handle` of `index`; returns whether its session existed.
fn end(map: &mut HashMap<String, Entry>, index: &str, handle: &str, now: Instant) -> bool {
    let Some(key) = map
        .get_mut(index)
        .and_then(|e| e.fields.remove(handle))
        .map(|k| String::from_utf8_lossy(&k).into_owned())
    else {
        return false;
    };
    let existed = live(map, &key, now).is_some();
    map.remove(&key);
    existed
}

impl MemoryStore {
    fn bind_in(&self, req: &BindRequest<'_>) -> BindOutcome {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        if live(&mut map, req.key, now).is_some() {
            return BindOutcome::NewTaken;
        }
        if let Some(old) = &req.old {
            if live(&mut map, old.key, now).is_none() {
                return BindOutcome::OldGone;
            }
        }
        let replaced = req
            .old
            .and_then(|o| o.bound)
            .filter(|(index, _)| *index == req.index)
            .map(|(_, handle)| handle);
        let entries: Vec<(String, u64)> = index_entries(&mut map, req.index, now)
            .into_iter()
            .filter(|(h, _)| Some(h.as_str()) != replaced)
            .map(|(h, k)| {
                let seen = map.get(&k).map_or(0, |e| seen_ms(&e.fields));
                (h, seen)
            })
            .collect();
        let evicted = match apply_cap(req.cap, entries) {
            Ok(evicted) => evicted,
            Err(live) => return BindOutcome::Refused { live },
        };
        for handle in &evicted {
            end(&mut map, req.index, handle, now);
        }
        if let Some(old) = &req.old {
            match old.bound {
                Some((index, handle)) => {
                    end(&mut map, index, handle, now);
                    map.remove(old.key);
                    drop_if_empty(&mut map, index);
                }
                None => {
                    map.remove(old.key);
                }
            }
        }
        map.insert(
            req.key.to_owned(),
            Entry {
                fields: req.fields.iter().cloned().collect(),
                expires_at: expires_at(now, req.ttl),
            },
        );
        let index = map.entry(req.index.to_owned()).or_insert_with(|| Entry {
            fields: Fields::new(),
            expires_at: now,
        });
        index.fields.insert(
            req.handle.to_owned(),
            Bytes::copy_from_slice(req.key.as_bytes()),
        );
        extend(&mut map, req.index, now, req.ttl);
        self.after_write(&mut map);
        BindOutcome::Bound { evicted }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &str) -> Result<Option<Fields>> {
        let mut map = self.inner.map.lock();
        Ok(live(&mut map, key, Instant::now()).map(|e| e.fields.clone()))
    }

    async fn load_bound(&self, key: &str, index: &str) -> Result<Option<Fields>> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let indexed = live(&mut map, index, now)
            .is_some_and(|e| e.fields.values().any(|k| k.as_ref() == key.as_bytes()));
        if !indexed {
            return Ok(None);
        }
        Ok(live(&mut map, key, now).map(|e| e.fields.clone()))
    }

    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        if live(&mut map, key, now).is_some() {
            return Ok(false);
        }
        map.insert(
            key.to_owned(),
            Entry {
                fields: fields.iter().cloned().collect(),
                expires_at: expires_at(now, ttl),
            },
        );
        self.after_write(&mut map);
        Ok(true)
    }

    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let Some(entry) = live(&mut map, key, now) else {
            return Ok(false);
        };
        for (k, v) in set {
            entry.fields.insert(k.clone(), v.clone());
        }
        for k in delete {
            entry.fields.remove(k);
        }
        if let Some(ttl) = ttl {
            entry.expires_at = expires_at(now, ttl);
        }
        self.after_write(&mut map);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut map = self.inner.map.lock();
        let existed = live(&mut map, key, Instant::now()).is_some();
        map.remove(key);
        Ok(existed)
    }

    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        if live(&mut map, new, now).is_some() {
            return Ok(Regenerated::NewTaken);
        }
        if live(&mut map, old, now).is_none() {
            return Ok(Regenerated::OldGone);
        }
        map.remove(old);
        map.insert(
            new.to_owned(),
            Entry {
                fields: fields.iter().cloned().collect(),
                expires_at: expires_at(now, ttl),
            },
        );
        self.after_write(&mut map);
        Ok(Regenerated::Moved)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn bind(&self, request: &BindRequest<'_>) -> Result<BindOutcome> {
        Ok(self.bind_in(request))
    }

    async fn list_user(&self, index: &str) -> Result<Vec<Listed>> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let entries = index_entries(&mut map, index, now);
        Ok(entries
            .into_iter()
            .filter_map(|(handle, key)| {
                let entry = map.get(&key)?;
                let fields = LISTED_FIELDS
                    .into_iter()
                    .filter_map(|f| Some((f.to_owned(), entry.fields.get(f)?.clone())))
                    .collect();
                Some(Listed::new(handle, fields))
            })
            .collect())
    }

    async fn revoke(&self, index: &str, which: Revoke<'_>) -> Result<Vec<String>> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let handles: Vec<String> = match which {
            Revoke::One(handle) => vec![handle.to_owned()],
            Revoke::All { keep } => live(&mut map, index, now)
                .map(|e| e.fields.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|h| Some(h.as_str()) != keep)
                .collect(),
        };
        let revoked = handles
            .into_iter()
            .filter(|h| end(&mut map, index, h, now))
            .collect();
        drop_if_empty(&mut map, index);
        Ok(revoked)
    }

    async fn unbind(&self, index: &str, key: &str, handle: Option<&str>) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let existed = live(&mut map, key, now).is_some();
        map.remove(key);
        if let Some(entry) = map.get_mut(index) {
            entry
                .fields
                .retain(|h, k| Some(h.as_str()) != handle && k != key.as_bytes());
        }
        drop_if_empty(&mut map, index);
        Ok(existed)
    }

    async fn touch_user(&self, index: &str, handle: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let present = live(&mut map, index, now).is_some_and(|e| e.fields.contains_key(handle));
        if present {
            extend(&mut map, index, now, ttl);
        }
        Ok(present)
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
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        if live(&mut map, new, now).is_some() {
            return Ok(Regenerated::NewTaken);
        }
        let listed = live(&mut map, index, now)
            .and_then(|e| e.fields.get(handle))
            .is_some_and(|k| k == old.as_bytes());
        if !listed || live(&mut map, old, now).is_none() {
            return Ok(Regenerated::OldGone);
        }
        map.remove(old);
        map.insert(
            new.to_owned(),
            Entry {
                fields: fields.iter().cloned().collect(),
                expires_at: expires_at(now, ttl),
            },
        );
        if let Some(entry) = map.get_mut(index) {
            entry
                .fields
                .insert(handle.to_owned(), Bytes::copy_from_slice(new.as_bytes()));
        }
        extend(&mut map, index, now, ttl);
        self.after_write(&mut map);
        Ok(Regenerated::Moved)
    }
}

#[cfg(test)]
mod tests;
