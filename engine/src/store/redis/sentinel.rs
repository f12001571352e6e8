//! Sentinel failover awareness: one subscriber per sentinel, the parser for its events, and the
//! gate that holds session writes between "replica chosen" and "switch announced". It never sends
//! session commands itself; `RedisStore::run` consults the gate.

use std::{fmt, sync::Arc, time::Duration};

use fred::{
    clients::{Pool, SubscriberClient},
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    prelude::{Config, ServerConfig},
    types::config::Server,
};
use tokio::{task::JoinHandle, time::Instant};

use super::{
    connect::FredSettings,
    epoch::{Change, TopologyEpoch},
};
use crate::error::{Error, ErrorKind, Result};

/// Sentinel channels the store listens to.
const SENTINEL_CHANNELS: [&str; 5] = [
    "+switch-master",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "-failover-abort-no-good-slave",
    "-failover-abort-not-elected",
];

/// Longest a failover may hold writes before the gate reopens on its own.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub(super) enum SentinelEvent {
    Promoting,
    Aborted,
    /// The new master's address, when the payload names one.
    Switched(Option<(String, u16)>),
    Other,
}

/// Classifies a sentinel event for `service`. `+switch-master` carries
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`; the others carry instance details ending in
/// `@ <master-name> <master-ip> <master-port>`.
pub(super) fn sentinel_event(channel: &str, text: &str, service: &str) -> SentinelEvent {
    let master = if channel == "+switch-master" {
        text.split(' ').next()
    } else {
        text.split(" @ ").nth(1).and_then(|m| m.split(' ').next())
    };
    if master != Some(service) {
        return SentinelEvent::Other;
    }
    match channel {
        "+switch-master" => {
            let fields: Vec<&str> = text.split(' ').collect();
            let to = match fields[..] {
                [_, _, _, host, port] => port.parse().ok().map(|port| (host.to_owned(), port)),
                _ => None,
            };
            SentinelEvent::Switched(to)
        }
        "+selected-slave" | "+failover-state-send-slaveof-noone" => SentinelEvent::Promoting,
        c if c.starts_with("-failover-abort") => SentinelEvent::Aborted,
        _ => SentinelEvent::Other,
    }
}

/// Holds session writes while a sentinel failover is between "replica chosen" and "switch
/// announced". Bounded twice: it reopens by itself after [`MAX_PAUSE`], and each writer waits at
/// most until its call's deadline.
#[derive(Debug, Clone)]
pub(super) struct WriteGate {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
    /// Incremented at each pause, so a write can tell that a failover overlapped it.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// The store's topology epoch, bumped at each pause: the promoted replica knows nothing of
    /// the tracking on the old master.
    topology: Arc<TopologyEpoch>,
}

impl WriteGate {
    pub(super) fn new(topology: Arc<TopologyEpoch>) -> Self {
        WriteGate {
            tx: Arc::new(tokio::sync::watch::channel(false).0),
            epoch: Arc::default(),
            topology,
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn pause(&self) {
        // The flag is set before the epoch moves: a writer reads the epoch before looking at the
        // flag, so it either is held or sees the epoch change and re-applies.
        let was_paused = self.tx.send_replace(true);
        self.topology.bump(Change::Failover);
        if !was_paused {
            let this_pause = self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
            let tx = Arc::downgrade(&self.tx);
            let epoch = Arc::downgrade(&self.epoch);
            tokio::spawn(async move {
                tokio::time::sleep(MAX_PAUSE).await;
                // Only the pause that started this timer: a later one has its own.
                let current = epoch
                    .upgrade()
                    .map(|e| e.load(std::sync::atomic::Ordering::Acquire));
                if current != Some(this_pause) {
                    return;
                }
                if let Some(tx) = tx.upgrade() {
                    if tx.send_replace(false) {
                        tracing::warn!(
                            "no master switch within {MAX_PAUSE:?}; releasing held writes"
                        );
                    }
                }
            });
        }
    }

    pub(super) fn resume(&self) {
        self.tx.send_replace(false);
    }

    /// Returns `false` at once while open (one shared read lock, no allocation); while paused,
    /// waits for the gate to reopen and returns `true` (the caller then bounds what follows by
    /// the deadline too), failing with [`ErrorKind::Timeout`] if `deadline` comes first.
    pub(super) async fn wait(&self, deadline: Instant) -> Result<bool> {
        if !*self.tx.borrow() {
            return Ok(false);
        }
        // Boxed: the held path (a watch receiver and a timer) is rare, and inline it would make
        // every write's future larger.
        Box::pin(self.held(deadline)).await.map(|()| true)
    }

    async fn held(&self, deadline: Instant) -> Result<()> {
        let mut rx = self.tx.subscribe();
        let reopened = tokio::time::timeout_at(deadline, rx.wait_for(|paused| !paused))
            .await
            .is_ok();
        if reopened {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Timeout,
            "a sentinel failover held this session write until the command timeout; the \
                 new master was not announced in time, retry shortly",
        ))
    }
}

pub(super) struct Watcher {
    subscriber: SubscriberClient,
    tasks: [JoinHandle<()>; 2],
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let sub = self.subscriber.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = sub.quit().await;
            });
        }
    }
}

/// One subscriber per sentinel, so losing a sentinel does not lose the notification. fred's
/// sentinel client otherwise keeps sending to a demoted master until that connection breaks.
pub(super) fn watch_sentinels(
    settings: &FredSettings,
    config: &Config,
    hosts: Vec<Server>,
    service: &str,
    pool: &Pool,
    gate: &WriteGate,
) -> Vec<Watcher> {
    let last_switch = Arc::new(parking_lot::Mutex::new(String::new()));
    let mut watchers = Vec::new();
    for host in hosts {
        let mut sub_config = config.clone();
        sub_config.server = ServerConfig::Centralized { server: host };
        let Ok(subscriber) = settings.fred_builder(sub_config).build_subscriber_client() else {
            continue;
        };
        subscriber.connect();
        let mut rx = subscriber.message_rx();
        let resubscribe = subscriber.manage_subscriptions();
        let sub = subscriber.clone();
        let pool = pool.clone();
        let service = service.to_owned();
        let last_switch = last_switch.clone();
        let gate = gate.clone();
        let listener = tokio::spawn(async move {
            // Subscribing can wait for the sentinel to come up; the manager resubscribes later.
            let _ = super::connect::connected(std::slice::from_ref(&sub)).await;
            let _: std::result::Result<(), _> = sub.subscribe(SENTINEL_CHANNELS.to_vec()).await;
            while let Ok(message) = rx.recv().await {
                let Some(text) = message.value.as_str().map(|s| s.to_string()) else {
                    continue;
                };
                match sentinel_event(&message.channel, &text, &service) {
                    SentinelEvent::Promoting => {
                        // From here the old master may still accept writes that the promoted
                        // replica will never see: hold writes until the switch is announced.
                        tracing::info!(event = %message.channel, "sentinel failover started; holding session writes");
                        gate.pause();
                    }
                    SentinelEvent::Aborted => gate.resume(),
                    SentinelEvent::Switched(to) => {
                        {
                            let mut last = last_switch.lock();
                            if *last == text {
                                continue; // another sentinel already reported this switch
                            }
                            last.clone_from(&text);
                        }
                        tracing::info!(switch = %text, "sentinel reported a master switch; reconnecting");
                        follow_switch(&pool, &gate, to.as_ref()).await;
                    }
                    SentinelEvent::Other => {}
                }
            }
        });
        watchers.push(Watcher {
            subscriber,
            tasks: [listener, resubscribe],
        });
    }
    watchers
}

/// Whether `client` is connected, and only to `to`.
fn is_on(client: &fred::clients::Client, (host, port): &(String, u16)) -> bool {
    let servers = client.active_connections();
    !servers.is_empty()
        && servers
            .iter()
            .all(|s| s.port == *port && &*s.host == host.as_str())
}

/// Moves every client of `pool` to the announced master `to`, holding writes until they are all
/// there. The switch reaches us from the first sentinel that publishes it, and fred asks another
/// one where the master is: until that sentinel has heard of the switch (its hello messages, up
/// to about 2 s), it still names the old master, which keeps answering `role:master` until
/// sentinel demotes it, several seconds later. A write acknowledged there is lost with the
/// demotion, and a reader there never hears the new master's writes. So each client not on `to`
/// is reconnected again every 50 ms, for at most [`MAX_PAUSE`]; without an address in the
/// payload, one reconnection is all we can do.
async fn follow_switch(pool: &Pool, gate: &WriteGate, to: Option<&(String, u16)>) {
    // Held from here even if this watcher missed the start of the failover; a write that was in
    // flight sees the epoch move and is re-applied on the new master.
    gate.pause();
    let deadline = Instant::now() + MAX_PAUSE;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        for client in pool.clients() {
            if !to.is_some_and(|to| is_on(client, to)) {
                if let Err(err) = client.force_reconnection().await {
                    tracing::debug!(%err, "reconnecting after a master switch failed");
                }
            }
        }
        let Some(to) = to else { break };
        if pool.clients().iter().all(|client| is_on(client, to)) {
            if attempts > 1 {
                tracing::info!(
                    attempts,
                    "on the new master after asking the sentinels again"
                );
            }
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                host = %to.0,
                port = to.1,
                "the sentinels still name another master {MAX_PAUSE:?} after the switch; \
                 releasing held writes"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.resume();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sentinel_events() {
        use SentinelEvent::*;
        let s = "mymaster";
        let details = "slave 127.0.0.1:6381 127.0.0.1 6381 @ mymaster 127.0.0.1 6380";
        assert_eq!(sentinel_event("+selected-slave", details, s), Promoting);
        assert_eq!(
            sentinel_event("+failover-state-send-slaveof-noone", details, s),
            Promoting
        );
        assert_eq!(
            sentinel_event(
                "-failover-abort-not-elected",
                "master mymaster 127.0.0.1 6380 @ mymaster 127.0.0.1 6380",
                s
            ),
            Aborted
        );
        assert_eq!(
            sentinel_event(
                "-failover-abort-no-good-slave",
                "master mymaster 127.0.0.1 6380 @ mymaster 127.0.0.1 6380",
                s
            ),
            Aborted
        );
        assert_eq!(
            sentinel_event(
                "+switch-master",
                "mymaster 127.0.0.1 6380 127.0.0.1 6381",
                s
            ),
            Switched(Some(("127.0.0.1".to_owned(), 6381)))
        );
        // A switch whose address does not parse is still a switch.
        assert_eq!(
            sentinel_event("+switch-master", "mymaster 127.0.0.1 6380 127.0.0.1", s),
            Switched(None)
        );
        assert_eq!(
            sentinel_event("+switch-master", "other 127.0.0.1 6380 127.0.0.1 6381", s),
            Other
        );
        assert_eq!(
            sentinel_event("+selected-slave", "slave x 1 2 @ other 1 2", s),
            Other
        );
        // A service whose name is a prefix of ours is another service.
        assert_eq!(
            sentinel_event("+switch-master", "mymaster2 127.0.0.1 1 127.0.0.1 2", s),
            Other
        );
        // Malformed or unrelated payloads are ignored, never a pause.
        assert_eq!(sentinel_event("+selected-slave", "", s), Other);
        assert_eq!(sentinel_event("+selected-slave", "no at sign", s), Other);
        assert_eq!(sentinel_event("+sdown", details, s), Other);
    }

    #[tokio::test]
    async fn gate_holds_writes_until_resumed() {
        let gate = WriteGate::new(Default::default());
        let far = Instant::now() + Duration::from_secs(10);
        let t = Instant::now();
        gate.wait(far).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "open gate must not wait"
        );
        assert_eq!(gate.epoch(), 0);
        gate.pause();
        assert_eq!(gate.epoch(), 1);
        gate.pause();
        assert_eq!(
            gate.epoch(),
            1,
            "a second pause in one failover is one epoch"
        );
        let g = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            g.resume();
        });
        let t = Instant::now();
        gate.wait(far).await.unwrap();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_millis(1000),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn gate_honors_the_deadline() {
        let gate = WriteGate::new(Default::default());
        gate.pause();
        let t = Instant::now();
        let err = gate.wait(t + Duration::from_millis(100)).await.unwrap_err();
        let waited = t.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(
            waited >= Duration::from_millis(90) && waited < Duration::from_millis(400),
            "a writer waits at most until its deadline, waited {waited:?}"
        );
        // A deadline already passed fails at once.
        let t = Instant::now();
        assert!(gate.wait(t).await.unwrap_err().is_timeout());
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn gate_reopens_by_itself_after_max_pause() {
        let gate = WriteGate::new(Default::default());
        gate.pause();
        let t = Instant::now();
        gate.wait(t + MAX_PAUSE * 2).await.unwrap();
        assert!(t.elapsed() >= MAX_PAUSE && t.elapsed() < MAX_PAUSE * 2);
    }
}
