//! One tracked connection: its invalidation stream, its heartbeat and its health. An entry is
//! served only while the link that loaded it is confirmed healthy and unchanged since (its
//! generation), so every loss of the stream flushes that link's entries in O(1).

use std::{
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use fred::{
    interfaces::{ClientInterface, ClientLike, EventInterface, TrackingInterface},
    prelude::Client,
};
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use self::confirm::confirmed;
#[cfg(test)]
use self::confirm::{config_number, info_number, table_full, tracking_on};
use super::{FlushCause, Near};

/// Why a link stopped being healthy, and what brought it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// Tracking has not been confirmed on the current connection: nothing is cached or served.
    Unconfirmed,
    /// Tracking confirmed by the heartbeat sent at `confirmed_at`; entries serve until that
    /// moment plus the staleness bound.
    Confirmed,
}

/// A tracked fred client (one connection) of the store.
pub(in crate::store::redis) struct Link {
    pub(super) client: Client,
    /// The server it talks to, for metric labels.
    pub(super) node: String,
    /// Bumped at every loss of the stream and every flush: entries of older generations are dead.
    generation: AtomicU64,
    /// Invalidations handled so far: a load or write whose reply races one is not cached.
    seq: AtomicU64,
    /// Entries serve while `Near::clock()` is below this (milliseconds); 0 while unconfirmed.
    serve_until_ms: AtomicU64,
    /// The connection id (`CLIENT ID`) tracking was confirmed on; -1 while unconfirmed.
    tracked_conn: AtomicI64,
    /// The server's `evicted_keys` at the last confirmation, plus one (0: not read yet).
    evicted: AtomicU64,
    /// This link's marker key on its node, placed when tracking is enabled (see [`marker`]).
    marker: parking_lot::Mutex<Option<String>>,
}

/// What a load or write read of its link before it was sent. It may cache its reply only if the
/// link is still that generation, handled no invalidation meanwhile, and still talks over the
/// connection that was tracked.
#[derive(Debug, Clone, Copy)]
pub(in crate::store::redis) struct Ticket {
    generation: u64,
    seq: u64,
    conn: i64,
}

impl Ticket {
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The link's invalidation count when the ticket was taken.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.node)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(super) fn new(client: Client) -> Self {
        // The connected server, else the configured one (a sentinel client names its master
        // only once connected).
        let node = client
            .active_connections()
            .first()
            .map(|s| s.to_string())
            .or_else(|| match &client.client_config().server {
                fred::types::config::ServerConfig::Centralized { server } => {
                    Some(server.to_string())
                }
                _ => None,
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Link {
            client,
            node,
            generation: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            serve_until_ms: AtomicU64::new(0),
            tracked_conn: AtomicI64::new(-1),
            evicted: AtomicU64::new(0),
            marker: parking_lot::Mutex::new(None),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(super) fn health(&self, now_ms: u64) -> Health {
        if now_ms < self.serve_until_ms.load(Ordering::SeqCst) {
            Health::Confirmed
        } else {
            Health::Unconfirmed
        }
    }

    /// Whether an entry of `generation` may be served at `now_ms`.
    pub(super) fn serves(&self, generation: u64, now_ms: u64) -> bool {
        self.generation() == generation && self.health(now_ms) == Health::Confirmed
    }

    /// The current connection's id, as fred last read it.
    fn conn_id(&self) -> i64 {
        self.client
            .connection_ids()
            .into_values()
            .next()
            .unwrap_or(-1)
    }

    /// A ticket for a load or write about to be sent, if the link is healthy.
    pub(super) fn ticket(&self, now_ms: u64) -> Option<Ticket> {
        let generation = self.generation();
        if self.health(now_ms) != Health::Confirmed {
            return None;
        }
        let conn = self.tracked_conn.load(Ordering::SeqCst);
        Some(Ticket {
            generation,
            seq: self.seq.load(Ordering::SeqCst),
            conn,
        })
    }

    /// Whether the reply to a request sent under `ticket` may be cached now. `reconnected`
    /// also compares fred's current connection id (a lock and a copy, so once per admit): a
    /// command fred retried on a new connection before the link heard of it must not count.
    pub(super) fn still(&self, ticket: &Ticket, now_ms: u64, reconnected: bool) -> bool {
        self.seq.load(Ordering::SeqCst) == ticket.seq
            && self.serves(ticket.generation, now_ms)
            && self.tracked_conn.load(Ordering::SeqCst) == ticket.conn
            && (!reconnected || self.conn_id() == ticket.conn)
    }

    /// Every entry of this link is dead from now on, and nothing is served until tracking is
    /// confirmed again.
    fn lose(&self) {
        self.serve_until_ms.store(0, Ordering::SeqCst);
        self.tracked_conn.store(-1, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Every entry of this link is dead from now on (a null invalidation, a lagged stream), but
    /// the stream itself is fine.
    fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Turns tracking on for the current connection (default mode, `NOLOOP`, invalidations on
    /// the same connection) and confirms it. Answers the connection id it is on.
    async fn enable(&self, timeout: Duration, marker_ttl: Duration) -> Option<i64> {
        let on = async {
            self.client
                .client_tracking::<(), _, _>(
                    "on",
                    None,
                    Vec::<String>::new(),
                    false,
                    false,
                    false,
                    true,
                )
                .await?;
            // The checks (a primary among them) come first: a replica refuses the marker's write,
            // and fred takes READONLY as a reason to reconnect, failing whatever else is in
            // flight on the connection (seen: a read during a full-resync test).
            let Some(evicted) = confirmed(&self.client).await? else {
                return Ok(None);
            };
            // Placed before anything is cached: a flush from here on removes it.
            let Some(key) = marker::place(&self.client, marker_ttl).await? else {
                return Ok(None);
            };
            *self.marker.lock() = Some(key);
            Ok::<_, fred::error::Error>(Some(evicted))
        };
        match tokio::time::timeout(timeout, on).await {
            Ok(Ok(Some(evicted))) => {
                // The baseline for the heartbeats, read before anything is cached.
                self.evicted.store(evicted + 1, Ordering::SeqCst);
                Some(self.conn_id())
            }
            _ => None,
        }
    }

    /// Whether the marker key is still there; if it is not, a new one is placed. A missing
    /// marker means the node's dataset was flushed since the last heartbeat. The check is a
    /// read (`PTTL`), so `CLIENT PAUSE WRITE` (a manual failover's first step) does not hold
    /// the heartbeat; the renewal, a write, runs on its own task once half the marker's
    /// lifetime has passed, and a renewal that never lands only costs one needless flush.
    async fn marker_kept(&self, ttl: Duration) -> std::result::Result<bool, fred::error::Error> {
        let Some(key) = self.marker.lock().clone() else {
            return Ok(false);
        };
        let left = marker::left(&self.client, &key).await?;
        match left {
            Some(left) if left > ttl / 2 => Ok(true),
            Some(_) => {
                let client = self.client.clone();
                tokio::spawn(async move {
                    let _ = marker::renew(&client, &key, ttl).await;
                });
                Ok(true)
            }
            None => {
                marker::set(&self.client, &key, ttl).await?;
                Ok(false)
            }
        }
    }

    /// Records the server's `evicted_keys` read by a heartbeat; answers whether keys were
    /// evicted since the last confirmation.
    fn evicted_since(&self, evicted: u64) -> bool {
        let before = self.evicted.swap(evicted + 1, Ordering::SeqCst);
        before != 0 && before != evicted + 1
    }
}

/// Starts the link's tasks: the invalidation reader, the reconnect/error watcher and the
/// heartbeat. They hold the cache weakly and end once it is dropped.
pub(super) fn spawn(near: &Arc<Near>, link: &Arc<Link>) {
    // Subscribed before tracking is enabled, so no invalidation can be missed.
    spawn_reader(near, link);
    spawn_watcher(near, link);
    tokio::spawn(heartbeat(
        Arc::downgrade(near),
        Arc::downgrade(link),
        near.max_stale / 4,
    ));
}

/// The invalidation reader: drops invalidated keys, and flushes the link when the stream says
/// anything may be stale.
pub(super) fn spawn_reader(near: &Arc<Near>, link: &Arc<Link>) {
    let mut invalidations = link.client.invalidation_rx();
    let (weak_near, weak_link) = (Arc::downgrade(near), Arc::downgrade(link));
    tokio::spawn(async move {
        loop {
            let event = invalidations.recv().await;
            let (Some(near), Some(link)) = (weak_near.upgrade(), weak_link.upgrade()) else {
                return;
            };
            match event {
                Ok(inv) if inv.keys.is_empty() => {
                    // `invalidate null`: FLUSHALL, FLUSHDB, a full resync.
                    link.flush();
                    near.flushed(&link, FlushCause::NullInvalidation);
                }
                Ok(inv) => {
                    link.seq.fetch_add(1, Ordering::SeqCst);
                    for key in &inv.keys {
                        if let Some(key) = key.as_str() {
                            near.invalidate(key);
                        }
                    }
                    near.metrics.invalidations(inv.keys.len() as u64);
                }
                Err(RecvError::Lagged(_)) => {
                    // Invalidations were dropped unseen: anything may be stale.
                    link.flush();
                    near.flushed(&link, FlushCause::Lagged);
                }
                Err(RecvError::Closed) => {
                    link.lose();
                    near.flushed(&link, FlushCause::StreamClosed);
                    return;
                }
            }
        }
    });
}

/// The reconnect/error watcher: loses the link at once when fred reports either, and wakes the
/// heartbeat to turn tracking back on for the new connection.
fn spawn_watcher(near: &Arc<Near>, link: &Arc<Link>) {
    let mut reconnects = link.client.reconnect_rx();
    let mut errors = link.client.error_rx();
    let (weak_near, weak_link) = (Arc::downgrade(near), Arc::downgrade(link));
    tokio::spawn(async move {
        loop {
            let cause = tokio::select! {
                r = reconnects.recv() => match r {
                    Err(RecvError::Closed) => return,
                    _ => FlushCause::Reconnect,
                },
                r = errors.recv() => match r {
                    Err(RecvError::Closed) => return,
                    _ => FlushCause::ConnectionError,
                },
            };
            let (Some(near), Some(link)) = (weak_near.upgrade(), weak_link.upgrade()) else {
                return;
            };
            link.lose();
            near.flushed(&link, cause);
            near.wake_heartbeats.notify_waiters();
        }
    });
}

/// Confirms the stream every `period`: a heartbeat answered proves that every invalidation sent
/// before it has arrived (one connection, in order), so entries serve until the heartbeat's send
/// time plus the bound. A heartbeat that fails or says tracking is off loses the link, and the
/// next one turns tracking back on.
pub(super) async fn heartbeat(near: Weak<Near>, link: Weak<Link>, period: Duration) {
    let mut failures = 0u32;
    loop {
        let (wake, max_stale, timeout) = {
            let Some(near) = near.upgrade() else { return };
            (
                near.wake_heartbeats.clone(),
                near.max_stale,
                near.max_stale / 2,
            )
        };
        let marker_ttl = marker::ttl(max_stale);
        let Some(this) = link.upgrade() else { return };
        let sent = Instant::now();
        let sent_ms = Near::clock_at(sent);
        let confirmed_conn = this.tracked_conn.load(Ordering::SeqCst);
        let ok = if confirmed_conn >= 0 && this.conn_id() == confirmed_conn {
            // The marker only once the node is known a primary (its renewal is a write; see
            // `enable`).
            let check = async {
                let Some(evicted) = confirmed(&this.client).await? else {
                    return Ok(None);
                };
                let kept = this.marker_kept(marker_ttl).await?;
                Ok::<_, fred::error::Error>(Some((kept, evicted)))
            };
            match tokio::time::timeout(timeout, check).await {
                Ok(Ok(Some((kept, evicted)))) if this.conn_id() == confirmed_conn => {
                    if !kept {
                        // FLUSHALL, FLUSHDB or a full resync removed every key, and fred
                        // 10.1 drops the `invalidate null` Redis sent for it.
                        this.flush();
                        if let Some(near) = near.upgrade() {
                            near.flushed(&this, FlushCause::DatasetFlushed);
                        }
                    }
                    if this.evicted_since(evicted) {
                        // Some of those may have been evicted by this connection's own
                        // commands, which Redis does not invalidate to it.
                        this.flush();
                        if let Some(near) = near.upgrade() {
                            near.flushed(&this, FlushCause::Eviction);
                        }
                    }
                    true
                }
                _ => false,
            }
        } else {
            if confirmed_conn >= 0 {
                // fred reconnected (a sentinel switch, a dropped connection) before its event
                // reached the link: the confirmed connection is gone, and with it whatever it
                // did not deliver. Its entries die before tracking is confirmed on the new one.
                this.lose();
                if let Some(near) = near.upgrade() {
                    near.flushed(&this, FlushCause::Reconnect);
                }
            }
            match this.enable(timeout, marker_ttl).await {
                Some(conn) if conn >= 0 => {
                    this.tracked_conn.store(conn, Ordering::SeqCst);
                    true
                }
                _ => false,
            }
        };
        let Some(near) = near.upgrade() else { return };
        if ok {
            failures = 0;
            let until = sent_ms + max_stale.as_millis() as u64;
            this.serve_until_ms.fetch_max(until, Ordering::SeqCst);
            near.metrics.stream_health(&this.node, true);
        } else {
            failures += 1;
            if this.tracked_conn.load(Ordering::SeqCst) >= 0
                || this.serve_until_ms.load(Ordering::SeqCst) > 0
            {
                this.lose();
                near.flushed(&this, FlushCause::Heartbeat);
            }
            near.metrics.stream_health(&this.node, false);
            // A quit client (a retired cluster pool) never comes back: stop watching it.
            if failures > 20 && !this.client.is_connected() && near.retire(&this) {
                return;
            }
        }
        drop((this, near));
        let next = sent + period;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = wake.notified() => {}
        }
    }
}

mod confirm;
mod marker;
#[cfg(test)]
mod tests;
