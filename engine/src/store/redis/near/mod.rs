//! The near cache: session hashes kept in this process and kept coherent by Redis itself
//! (server-assisted client-side caching, `CLIENT TRACKING` in default mode over RESP3, with
//! `NOLOOP`). The rules, each enforced here or in [`link`]:
//!
//! 1. An entry serves only while the link (connection) that loaded it is confirmed healthy and
//!    of the same generation; any loss of its stream bumps the generation, which kills every
//!    entry of that link at once, and nothing is cached again until tracking is confirmed on
//!    the new connection.
//! 2. A heartbeat confirms each stream; entries serve until the last answered heartbeat's send
//!    time plus `max_stale`, so a silently dead connection stops serving within that bound.
//! 3. A reply is cached only if its link handled no invalidation between the request's send and
//!    the insert (checked again after the insert, so a racing invalidation always wins).
//! 4. A key's loads and writes go through one connection (`NOLOOP` is per connection); a write
//!    ends by re-reading the hash, which re-tracks it and gives the exact state to cache. Every
//!    write call registers each key it touches as in flight and drops its entry when it ends
//!    ([`Writes`], held by the store's one write path), so a load that overlapped it is never
//!    cached and nothing it may have changed stays cached, even if its future was dropped.
//! 5. An entry never outlives the key's TTL as Redis reported it; the engine's own deadline
//!    checks run on every hit exactly as on a load.
//!
//! Topology changes reach the cache only through the store's topology epoch, which it reads;
//! dataset flushes through each link's marker key (`link/marker.rs`).

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use fred::{interfaces::ClientLike, prelude::Client};
use std::collections::HashMap;

use parking_lot::{Mutex, RwLock};
use quick_cache::{sync::Cache, Weighter};
use tokio::{sync::Notify, time::Instant};

pub(super) use self::{
    link::{Link, Ticket},
    writes::Writes,
};
use super::epoch::{Change, TopologyEpoch};
use crate::store::Fields;

mod config;
#[cfg(test)]
mod heartbeat_tests;
mod link;
mod metrics;
mod writes;

pub use self::config::NearCache;
pub(super) use self::{config::FlushCause, metrics::NearMetrics};

#[derive(Clone)]
struct Entry {
    fields: Arc<Fields>,
    link: Arc<Link>,
    generation: u64,
    /// The link's invalidation count when it was admitted: while the link's count is still
    /// this, no invalidation of any key reached the link since, so the entry is the key's
    /// current state as far as this connection heard.
    seq: u64,
    /// The topology epoch it was loaded in.
    epoch: u64,
    /// Milliseconds on [`Near::clock`]: the key's TTL as Redis reported it.
    expires_ms: u64,
    weight: u64,
}

/// Weighs an entry by its bytes, but never below the average the entry bound allows, so the
/// one weight capacity enforces both bounds: at most `max_entries` entries and `max_bytes`
/// bytes.
#[derive(Clone)]
struct ByBytes;

impl Weighter<String, Entry> for ByBytes {
    fn weight(&self, _key: &String, entry: &Entry) -> u64 {
        entry.weight
    }
}

/// How long an admitted entry may serve.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lifetime {
    /// Redis's remaining TTL in milliseconds, from the reply (`<= 0`: no TTL or no key).
    Pttl(i64),
    /// An expiry already on [`Near::clock`]: the base entry's, kept as it was.
    Until(u64),
}

/// The near cache of one store.
pub(super) struct Near {
    cache: Cache<String, Entry, ByBytes>,
    min_weight: u64,
    max_stale: Duration,
    links: RwLock<HashMap<String, Arc<Link>>>,
    /// Bumped by topology changes: entries of older epochs are dead.
    epoch: Arc<TopologyEpoch>,
    wake_heartbeats: Arc<Notify>,
    metrics: NearMetrics,
    /// When an admit last set the size gauges, on [`Near::clock`] (0: never).
    sized_at_ms: std::sync::atomic::AtomicU64,
    /// This instance's loads and writes in flight, per key (sharded): a reply may be cached only
    /// if its request overlapped no other one of the same key, since their replies reach the
    /// cache in any order.
    ops: [Mutex<HashMap<String, Ops>>; OP_SHARDS],
}

const OP_SHARDS: usize = 32;

/// How often admits update the entries and bytes gauges (flushes always do).
const SIZE_EVERY_MS: u64 = 250;

#[derive(Debug, Default)]
struct Ops {
    in_flight: u32,
    started: u64,
}

/// One request of a key in the in-flight register: its number among the key's requests, and
/// whether no other was in flight when it started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Registered {
    started: u64,
    alone: bool,
}

/// One load of a key in flight; see [`Near::begin`]. Writes register through [`Writes`].
pub(super) struct Op<'a> {
    near: &'a Near,
    key: &'a str,
    registered: Registered,
}

impl Op<'_> {
    pub(super) fn registered(&self) -> Registered {
        self.registered
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.near.unregister(self.key);
    }
}

impl std::fmt::Debug for Near {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("entries", &self.cache.len())
            .field("max_stale", &self.max_stale)
            .finish_non_exhaustive()
    }
}

/// Process-wide origin of the millisecond clock the links and entries share.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Near {
    pub(super) fn new(config: &NearCache, epoch: Arc<TopologyEpoch>) -> Arc<Self> {
        let min_weight = (config.max_bytes / config.max_entries as u64).max(1);
        let capacity = config.max_bytes.max(min_weight);
        let near = Arc::new(Near {
            cache: Cache::with_weighter(config.max_entries, capacity, ByBytes),
            min_weight,
            max_stale: config.max_stale,
            links: RwLock::new(Default::default()),
            epoch,
            wake_heartbeats: Arc::new(Notify::new()),
            metrics: NearMetrics::default(),
            sized_at_ms: Default::default(),
            ops: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        });
        tokio::spawn(follow_epoch(Arc::downgrade(&near)));
        near
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Ops>> {
        let slot = usize::from(fred::util::redis_keyslot(key.as_bytes()));
        &self.ops[slot % OP_SHARDS]
    }

    /// Registers a load of `key` about to be sent.
    pub(super) fn begin<'a>(&'a self, key: &'a str) -> Op<'a> {
        Op {
            near: self,
            key,
            registered: self.register(key),
        }
    }

    /// Counts a request of `key` in flight (rule 4).
    fn register(&self, key: &str) -> Registered {
        let mut shard = self.shard(key).lock();
        let ops = shard.entry(key.to_owned()).or_default();
        ops.in_flight += 1;
        ops.started += 1;
        Registered {
            started: ops.started,
            alone: ops.in_flight == 1,
        }
    }

    /// Ends a request that [`Near::register`] counted.
    fn unregister(&self, key: &str) {
        let mut shard = self.shard(key).lock();
        if let Some(ops) = shard.get_mut(key) {
            ops.in_flight -= 1;
            if ops.in_flight == 0 {
                shard.remove(key);
            }
        }
    }

    /// A guard for the keys of one write call; see [`Writes`].
    pub(super) fn writes(&self) -> Writes<'_> {
        Writes::new(self)
    }

    /// Milliseconds since the process's origin (never 0 after the first call).
    pub(super) fn clock() -> u64 {
        Self::clock_at(Instant::now())
    }

    fn clock_at(at: Instant) -> u64 {
        at.saturating_duration_since(origin()).as_millis() as u64 + 1
    }

    /// The link of `client`, created (and its tracking started) on first use.
    pub(super) fn link(self: &Arc<Self>, client: &Client) -> Arc<Link> {
        if let Some(link) = self.links.read().get(client.id()) {
            return link.clone();
        }
        let mut links = self.links.write();
        links
            .entry(client.id().to_owned())
            .or_insert_with(|| {
                let link = Arc::new(Link::new(client.clone()));
                link::spawn(self, &link);
                link
            })
            .clone()
    }

    /// Starts links for these clients now (rather than on first use), so their tracking is
    /// confirmed before traffic arrives.
    pub(super) fn warm(self: &Arc<Self>, clients: &[Client]) {
        for client in clients {
            self.link(client);
        }
    }

    /// Whether every link's stream is confirmed now (and there is at least one).
    pub(super) fn confirmed(&self) -> bool {
        let now = Self::clock();
        let links = self.links.read();
        !links.is_empty()
            && links
                .values()
                .all(|l| l.health(now) == link::Health::Confirmed)
    }

    /// Forgets a link whose client was quit. Answers whether it was still registered.
    fn retire(&self, link: &Link) -> bool {
        self.links.write().remove(link.client.id()).is_some()
    }

    /// The cached fields of `key`, if an entry may serve now.
    pub(super) fn get(&self, key: &str) -> Option<Fields> {
        let Some(entry) = self.cache.get(key) else {
            self.metrics.miss();
            return None;
        };
        let now = Self::clock();
        if now >= entry.expires_ms
            || entry.epoch != self.epoch.current()
            || !entry.link.serves(entry.generation, now)
        {
            self.cache.remove(key);
            self.metrics.miss();
            return None;
        }
        self.metrics.hit();
        Some((*entry.fields).clone())
    }

    /// The entry of `key` as the base of a write about to go out on `link` under `ticket`
    /// (taken before this call): its fields and when it expires on [`Near::clock`], only when
    /// it may serve now, was admitted through `link` in the ticket's generation and epoch, and
    /// no invalidation reached `link` since it was admitted. Then the entry with the write
    /// applied is the state the write leaves, unless something changes the key meanwhile, and
    /// that is an invalidation `admit`'s ticket check sees. (An invalidation bumps the link's
    /// count before it removes its keys, so an entry still present but invalidated fails the
    /// count check.)
    pub(super) fn base(
        &self,
        key: &str,
        link: &Arc<Link>,
        ticket: &(Ticket, u64),
    ) -> Option<(Arc<Fields>, u64)> {
        let entry = self.cache.get(key)?;
        let now = Self::clock();
        let (ticket, epoch) = ticket;
        let current = Arc::ptr_eq(&entry.link, link)
            && entry.generation == ticket.generation()
            && entry.seq == ticket.seq()
            && entry.epoch == *epoch
            && *epoch == self.epoch.current()
            && now < entry.expires_ms
            && link.serves(entry.generation, now);
        current.then(|| (entry.fields.clone(), entry.expires_ms))
    }

    /// A ticket for a request about to go out on `link`; `None` when its reply must not be
    /// cached (the link is not confirmed).
    pub(super) fn ticket(&self, link: &Link) -> Option<(Ticket, u64)> {
        let epoch = self.epoch.current();
        link.ticket(Self::clock()).map(|t| (t, epoch))
    }

    /// Caches `fields` for `key` as read through `link` under `ticket`, expiring as `lifetime`
    /// says (a key without TTL is not cached). Removes any entry instead when the reply may be
    /// stale.
    pub(super) fn admit(
        &self,
        key: &str,
        link: &Arc<Link>,
        ticket: Option<(Ticket, u64)>,
        op: Registered,
        fields: Arc<Fields>,
        lifetime: Lifetime,
    ) {
        let Some((ticket, epoch)) = ticket else {
            self.cache.remove(key);
            return;
        };
        let now = Self::clock();
        let fresh = |now, reconnected| {
            link.still(&ticket, now, reconnected) && epoch == self.epoch.current()
        };
        let expires_ms = match lifetime {
            Lifetime::Pttl(pttl) if pttl > 0 => now.saturating_add(pttl as u64),
            Lifetime::Pttl(_) => 0,
            Lifetime::Until(at) => at,
        };
        if expires_ms <= now || !fresh(now, true) {
            self.cache.remove(key);
            return;
        }
        let bytes: u64 = fields
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>()
            + key.len() as u64;
        let entry = Entry {
            fields,
            link: link.clone(),
            generation: ticket.generation(),
            seq: ticket.seq(),
            epoch,
            expires_ms,
            weight: bytes.max(self.min_weight),
        };
        {
            // Under the key's shard lock: no other request of this key may start or finish
            // between the check and the insert.
            let shard = self.shard(key).lock();
            let alone = op.alone
                && shard
                    .get(key)
                    .is_some_and(|ops| ops.in_flight == 1 && ops.started == op.started);
            if !alone {
                drop(shard);
                self.cache.remove(key);
                return;
            }
            self.cache.insert(key.to_owned(), entry);
        }
        // An invalidation handled between the check and the insert found nothing to remove:
        // look again, and let it win.
        let now = Self::clock();
        if !fresh(now, false) {
            self.cache.remove(key);
        }
        // Counting walks every shard, too dear for each admit: at most every SIZE_EVERY_MS.
        let last = self.sized_at_ms.load(std::sync::atomic::Ordering::Relaxed);
        if (last == 0 || now >= last + SIZE_EVERY_MS)
            && self
                .sized_at_ms
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            self.report_size();
        }
    }

    /// Sets the entries and bytes gauges.
    fn report_size(&self) {
        self.metrics.size(self.cache.len(), self.cache.weight());
    }

    /// Drops `key`'s entry (an invalidation, or this instance changed or deleted it).
    pub(super) fn invalidate(&self, key: &str) {
        self.cache.remove(key);
    }

    /// The topology epoch moved (`flushes` times for `cause`): every entry is already dead (it
    /// records an older epoch); frees their memory, counts the flush and wakes the heartbeats,
    /// so each link checks its node's role again at once.
    fn topology_moved(&self, flushes: &[(FlushCause, u64)]) {
        self.cache.clear();
        for (cause, n) in flushes {
            for _ in 0..*n {
                self.metrics.flush(*cause);
            }
        }
        self.metrics.size(0, 0);
        self.wake_heartbeats.notify_waiters();
    }

    /// Records that `link`'s entries were killed (its generation moved) and frees their memory.
    fn flushed(&self, link: &Arc<Link>, cause: FlushCause) {
        self.metrics.flush(cause);
        let current = link.generation();
        self.cache
            .retain(|_, entry| !Arc::ptr_eq(&entry.link, link) || entry.generation == current);
        self.report_size();
    }
}

/// Follows the topology epoch for as long as the cache lives: see [`Near::topology_moved`].
async fn follow_epoch(near: std::sync::Weak<Near>) {
    let Some(epoch) = near.upgrade().map(|n| n.epoch.clone()) else {
        return;
    };
    let mut seen = epoch.bumps();
    loop {
        // Woken at least every second to notice that the cache is gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), epoch.changed()).await;
        let Some(near) = near.upgrade() else { return };
        let now = epoch.bumps();
        let flushes: Vec<(FlushCause, u64)> = now
            .iter()
            .zip(seen.iter())
            .filter(|((_, a), (_, b))| a > b)
            .map(|((change, a), (_, b))| {
                let cause = match change {
                    Change::Redirect => FlushCause::Redirect,
                    Change::Failover | Change::SlotMap => FlushCause::Topology,
                };
                (cause, a - b)
            })
            .collect();
        if !flushes.is_empty() {
            near.topology_moved(&flushes);
        }
        seen = now;
    }
}
