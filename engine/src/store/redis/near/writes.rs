//! The guard every write call holds while the near cache is on: each key the call may create,
//! change or delete counts as a request in flight (rule 4: a load answered meanwhile is not
//! cached), and each key's entry is dropped when the call ends, whatever its outcome, even when
//! its future is dropped mid-flight (the script may still run, and `NOLOOP` sends this
//! connection no invalidation for it). A key whose entry the call itself settles (a tracked
//! update caching the state it left) is only unregistered.
//!
//! The store's script and `DEL` helpers register their keys here before sending, so an
//! operation cannot write a key the guard does not know of.

use parking_lot::Mutex;

use super::{Near, Registered};

pub(in crate::store::redis) struct Writes<'a> {
    near: &'a Near,
    /// Every key registered, with its registration and whether the call settled its entry.
    keys: Mutex<Vec<Touched>>,
}

struct Touched {
    key: String,
    registered: Registered,
    settled: bool,
}

impl<'a> Writes<'a> {
    pub(super) fn new(near: &'a Near) -> Self {
        Writes {
            near,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// Registers `key` (once per call, however many attempts touch it); answers its
    /// registration.
    pub(in crate::store::redis) fn touch(&self, key: &str) -> Registered {
        let mut keys = self.keys.lock();
        if let Some(t) = keys.iter().find(|t| t.key == key) {
            return t.registered;
        }
        let registered = self.near.register(key);
        keys.push(Touched {
            key: key.to_owned(),
            registered,
            settled: false,
        });
        registered
    }

    /// The call decided `key`'s entry itself (cached what it left, or dropped it): the guard
    /// only unregisters it.
    pub(in crate::store::redis) fn settle(&self, key: &str) {
        if let Some(t) = self.keys.lock().iter_mut().find(|t| t.key == key) {
            t.settled = true;
        }
    }
}

impl Drop for Writes<'_> {
    fn drop(&mut self) {
        for t in self.keys.get_mut().drain(..) {
            // Dropped while still registered: no load that overlapped this call can be admitted
            // between the two steps.
            if !t.settled {
                self.near.invalidate(&t.key);
            }
            self.near.unregister(&t.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Entry, Link, Near, NearCache};

    #[tokio::test]
    async fn a_guard_registers_each_key_once_and_drops_every_key_it_touched() {
        let near = Near::new(&NearCache::new(10), Default::default());
        let link = Arc::new(Link::new(fred::prelude::Client::default()));
        let put = |key: &str| {
            near.cache.insert(
                key.to_owned(),
                Entry {
                    fields: Arc::default(),
                    link: link.clone(),
                    generation: 0,
                    seq: 0,
                    epoch: 0,
                    expires_ms: u64::MAX,
                    weight: 1,
                },
            )
        };
        for key in ["a", "b", "c"] {
            put(key);
        }
        {
            let writes = near.writes();
            let first = writes.touch("a");
            assert!(first.alone);
            // A retry of the same call touches the key again: still one registration.
            assert_eq!(writes.touch("a").started, first.started);
            writes.touch("b");
            writes.settle("b");
            // A load overlapping the call may not be cached.
            let load = near.begin("a");
            assert!(!load.registered().alone);
        }
        assert!(
            near.cache.get("a").is_none(),
            "touched: its entry is dropped"
        );
        assert!(near.cache.get("b").is_some(), "settled: the call decided");
        assert!(near.cache.get("c").is_some(), "untouched");
        assert!(near.shard("a").lock().is_empty(), "nothing left in flight");
    }
}
