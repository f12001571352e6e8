//! Cluster routing with one connection set per primary, so a dead primary stalls only its own
//! slots. fred's own cluster client re-syncs by connecting to every node listed in CLUSTER SLOTS
//! and fails the whole sync (blocking every slot) while one listed primary is unreachable; here a
//! failed node only fails the commands routed to it, and a background task re-reads CLUSTER SLOTS
//! from any live node until the promoted replica shows up. MOVED is followed directly; ASK (slot
//! migration) too, on a connection of the target held exclusively for `ASKING` and the command
//! (fred 10.1's own cluster client sends ASKING to the target, then the command back to the slot
//! owner, and ends its connection task when its attempts run out, leaving a client that reports
//! itself connected and never answers). Every call carries its caller's deadline; no wait or
//! redirection here outlasts it.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::{
    clients::{ExclusivePool, Pool},
    interfaces::ClientLike,
    prelude::{Client, Config, ServerConfig},
    types::{cluster::ClusterRouting, config::Server, Value},
};
use parking_lot::{Mutex, RwLock};
use tokio::{sync::Notify, time::Instant};

use self::parse::{classify, Redirect};
use super::{
    connect::{connected, FredSettings},
    epoch::TopologyEpoch,
    exec::within_left,
};
use crate::error::{Error, ErrorKind, Result};

/// Least time between two CLUSTER SLOTS refreshes.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// Redirections (MOVED, ASK) one command may follow.
const MAX_REDIRECTIONS: usize = 5;
/// Longest wait for one node's CLUSTER SLOTS answer during a refresh.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Refresh even without errors this often, to notice planned topology changes.
const PERIODIC_REFRESH: Duration = Duration::from_secs(10);
/// How often a command held for a disconnected primary looks again at the slot map and the
/// connection.
const REROUTE_POLL: Duration = Duration::from_millis(10);

struct Topology {
    routing: ClusterRouting,
    nodes: HashMap<Server, Pool>,
}

/// How long a pool made for a MOVED target outside the slot map is kept although a refresh does
/// not list its node as a primary: the refresh may have read the map before the failover that
/// sent the MOVED. Older strays are quit, so at most one per address lingers, this long.
const STRAY_GRACE: Duration = Duration::from_secs(5);

/// How long an ASK target's connections are kept unused before a refresh quits them. Not tied to
/// the slot map: the target of a migration to a new node owns no slot yet.
const ASK_IDLE: Duration = Duration::from_secs(60);

/// Connections to one ASK target, each taken exclusively for `ASKING` and the command after it
/// (the flag holds for one command on one connection, so nothing else may be sent in between).
struct AskPool {
    pool: ExclusivePool,
    last_used: Mutex<std::time::Instant>,
    /// Set before the pool is quit: a caller that acquired one of its clients afterwards (quit
    /// waits for the lock, then the client never answers) takes a fresh pool instead.
    retired: AtomicBool,
}

/// Where the next attempt of a command goes.
enum Via {
    Node(Client),
    Asking(Server),
}

/// A pool for a node met through MOVED before the slot map named it.
struct Stray {
    pool: Pool,
    created: std::time::Instant,
}

pub(super) struct ClusterRouter {
    config: Config,
    settings: FredSettings,
    seeds: Vec<Server>,
    topology: RwLock<Arc<Topology>>,
    /// Pools for MOVED targets that the slot map does not list as primaries yet (a promoted
    /// replica before the next refresh). Cached so each such node gets one pool, however many
    /// redirections point at it; a refresh adopts it into the topology or quits it.
    strays: Mutex<HashMap<Server, Stray>>,
    /// Connections for ASK redirections during slot migration, per target, made at its first
    /// ASK and quit after [`ASK_IDLE`] unused.
    asking: Mutex<HashMap<Server, Arc<AskPool>>>,
    /// Its own Arc, so the refresh task can wait on it without keeping the router alive.
    wake: Arc<Notify>,
    /// Bumped whenever the slot map gives some slot a new owner.
    epoch: Arc<TopologyEpoch>,
}

impl Drop for ClusterRouter {
    fn drop(&mut self) {
        // Wakes the refresh task, which then finds the router gone and ends.
        self.wake.notify_one();
    }
}

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = self.topology.read();
        f.debug_struct("ClusterRouter")
            .field("primaries", &topology.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

mod parse;
mod refresh;

impl ClusterRouter {
    pub(super) async fn connect(
        config: Config,
        settings: FredSettings,
        epoch: Arc<TopologyEpoch>,
    ) -> Result<Arc<Self>> {
        let seeds = match &config.server {
            ServerConfig::Clustered { hosts, .. } => hosts.clone(),
            _ => unreachable!("the cluster router is only built for cluster URLs"),
        };
        let connect_timeout = settings.connect_timeout;
        // Checked now, so the lazily built ASK pool cannot fail later.
        settings
            .fred_builder(config.clone())
            .build_pool(1)
            .map_err(Error::from)?;
        let router = Arc::new(ClusterRouter {
            config,
            settings,
            seeds,
            topology: RwLock::new(Arc::new(Topology {
                routing: ClusterRouting::new(),
                nodes: HashMap::new(),
            })),
            strays: Mutex::new(HashMap::new()),
            asking: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            epoch,
        });
        tokio::time::timeout(connect_timeout, router.refresh())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no cluster node answered CLUSTER SLOTS within {connect_timeout:?}; check \
                         that the seed nodes run and the URL is right"
                    ),
                )
            })??;
        let pools: Vec<Pool> = router.topology.read().nodes.values().cloned().collect();
        for pool in pools {
            tokio::time::timeout(connect_timeout, connected(pool.clients()))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        "a cluster primary did not accept a connection",
                    )
                })?
                .map_err(Error::from)?;
        }
        tokio::spawn(refresh::refresh_loop(Arc::downgrade(&router)));
        Ok(router)
    }

    /// The ASK connections to `server`, made (and connecting in the background) at first use.
    fn ask_pool(&self, server: &Server) -> Arc<AskPool> {
        let mut asking = self.asking.lock();
        let ask = asking.entry(server.clone()).or_insert_with(|| {
            let pool = self
                .node_builder(server)
                .build_exclusive_pool(self.settings.pool_size)
                .expect("a centralized copy of a valid cluster config is valid");
            for client in pool.clients() {
                // Nobody else holds the new pool's clients yet.
                if let Ok(client) = client.try_lock() {
                    client.connect();
                }
            }
            Arc::new(AskPool {
                pool,
                last_used: Mutex::new(std::time::Instant::now()),
                retired: AtomicBool::new(false),
            })
        });
        *ask.last_used.lock() = std::time::Instant::now();
        ask.clone()
    }

    /// Runs `f` on the ASK target `server`: `ASKING`, then `f`'s command, on a connection no one
    /// else sends on meanwhile, within `deadline`. Only `f`'s first command carries the flag; a
    /// later one the target answers with MOVED (back to the slot owner), which `call` follows.
    async fn asking<R, F, Fut>(
        &self,
        server: &Server,
        deadline: Instant,
        f: &F,
    ) -> Result<std::result::Result<R, fred::error::Error>>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<R, fred::error::Error>>,
    {
        let timed_out = || {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "no connection to the slot migration target {server} was free or connected \
                     within the command timeout"
                ),
            )
        };
        let client = loop {
            let ask = self.ask_pool(server);
            let client = tokio::time::timeout_at(deadline, ask.pool.acquire())
                .await
                .map_err(|_| timed_out())?;
            if !ask.retired.load(Ordering::SeqCst) {
                break client;
            }
        };
        if !client.is_connected() {
            // A new pool, or fred reconnecting: commands would queue for fred's timeout.
            tokio::time::timeout_at(deadline, connected(std::slice::from_ref(&*client)))
                .await
                .map_err(|_| timed_out())?
                .map_err(Error::from)?;
        }
        let asked: std::result::Result<Value, _> = within_left(&client, deadline)
            .custom(fred::cmd!("ASKING"), Vec::<Value>::new())
            .await;
        if let Err(err) = asked {
            return Ok(Err(err));
        }
        Ok(f(client.clone()).await)
    }

    /// Quits the ASK connections unused for [`ASK_IDLE`] (a migration target that is done or
    /// left the cluster), once whoever holds one of their clients lets go.
    fn retire_idle_ask_pools(&self) {
        let now = std::time::Instant::now();
        let idle: Vec<Arc<AskPool>> = {
            let mut asking = self.asking.lock();
            let servers: Vec<Server> = asking
                .iter()
                .filter(|(_, ask)| now.duration_since(*ask.last_used.lock()) >= ASK_IDLE)
                .map(|(server, _)| server.clone())
                .collect();
            servers
                .iter()
                .filter_map(|server| asking.remove(server))
                .collect()
        };
        for ask in idle {
            ask.retired.store(true, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = ask.pool.quit().await;
            });
        }
    }

    /// A fred builder for one node of the cluster (a centralized copy of the cluster config).
    fn node_builder(&self, server: &Server) -> fred::prelude::Builder {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        self.settings.fred_builder(config)
    }

    fn node_pool(&self, server: &Server) -> Pool {
        let pool = self
            .node_builder(server)
            .build_pool(self.settings.pool_size)
            .expect("a centralized copy of a valid cluster config is valid");
        // Connecting in the background: commands queue until connected, bounded by the command
        // timeout, so a node that is down never blocks the caller for longer than that.
        pool.connect_pool();
        pool
    }

    /// Asks the background task to re-read the topology soon.
    fn refresh_soon(&self) {
        self.wake.notify_one();
    }

    fn pool_for(&self, slot: u16) -> Option<Pool> {
        let topology = self.topology.read();
        let server = topology.routing.get_server(slot)?;
        topology.nodes.get(server).cloned()
    }

    /// A pool for the MOVED target `server`: the topology's, or the one cached for a node the
    /// slot map does not name yet (never one per redirection: fred keeps every pool it connects
    /// reconnecting until it is quit).
    fn pool_at(&self, server: &Server) -> Pool {
        if let Some(pool) = self.topology.read().nodes.get(server) {
            return pool.clone();
        }
        self.refresh_soon();
        let mut strays = self.strays.lock();
        // A refresh may have adopted it between the two locks.
        if let Some(pool) = self.topology.read().nodes.get(server) {
            return pool.clone();
        }
        strays
            .entry(server.clone())
            .or_insert_with(|| Stray {
                pool: self.node_pool(server),
                created: std::time::Instant::now(),
            })
            .pool
            .clone()
    }

    /// How many stray pools are cached (for tests).
    #[cfg(test)]
    fn stray_count(&self) -> usize {
        self.strays.lock().len()
    }

    /// A connected client of the primary that serves `slot`. When that primary's connections are
    /// down, the command is not queued behind its reconnection: it waits (at most until
    /// `deadline`) until either the connection is back or a refresh names a new primary, so the
    /// dead master's slots are served from the moment its replica is promoted.
    async fn client_for(&self, slot: u16, deadline: Instant) -> Result<Client> {
        loop {
            let Some(pool) = self.pool_for(slot) else {
                self.refresh_soon();
                return Err(Error::new(
                    ErrorKind::Redis,
                    format!("no cluster primary currently serves slot {slot}; retry shortly"),
                ));
            };
            let client = pool.next();
            if client.is_connected() {
                return Ok(client.clone());
            }
            // Keeps the background refresh going (at most every 100 ms) while anyone waits.
            self.refresh_soon();
            if Instant::now() + REROUTE_POLL >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the cluster primary for slot {slot} stayed unreachable for the whole \
                         command timeout ({:?}) and no replica has taken over yet",
                        self.settings.command_timeout
                    ),
                ));
            }
            tokio::time::sleep(REROUTE_POLL).await;
        }
    }

    /// Runs `f` on a client of the primary that owns `key`, following up to five redirections,
    /// none started after `deadline` (the caller also drops the call at the deadline).
    pub(super) async fn call<R, F, Fut>(&self, key: &str, deadline: Instant, f: F) -> Result<R>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<R, fred::error::Error>>,
    {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let mut via = Via::Node(self.client_for(slot, deadline).await?);
        // During a slot migration one command may meet MOVED and then ASK (or the reverse):
        // follow a few redirections before giving up.
        let mut attempts = 0;
        loop {
            let result = match via {
                Via::Node(client) => f(client).await,
                Via::Asking(server) => self.asking(&server, deadline, &f).await?,
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(err) => err,
            };
            attempts += 1;
            via = match classify(&err) {
                _ if attempts > MAX_REDIRECTIONS || Instant::now() >= deadline => {
                    return Err(err.into())
                }
                Redirect::Moved(server) => {
                    self.refresh_soon();
                    Via::Node(self.pool_at(&server).next().clone())
                }
                // Not a slot-map change: the slot's owner keeps the rest of its keys until the
                // migration ends.
                Redirect::Ask(server) => Via::Asking(server),
                Redirect::Reroute => {
                    self.refresh_soon();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    match self.pool_for(slot) {
                        Some(pool) => Via::Node(pool.next().clone()),
                        None => return Err(err.into()),
                    }
                }
                Redirect::Refresh => {
                    self.refresh_soon();
                    return Err(err.into());
                }
                Redirect::None => return Err(err.into()),
            };
        }
    }

    /// Every current primary's first client, for health checks and script loading.
    /// The one connection that carries `key`'s loads and writes while the near cache is on
    /// (tracking with NOLOOP is per connection): a fixed client of its primary's pool, if that
    /// primary is known and connected.
    pub(super) fn pinned(&self, key: &str) -> Option<Client> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let pool = self.pool_for(slot)?;
        let clients = pool.clients();
        let client = &clients[usize::from(slot) % clients.len()];
        client.is_connected().then(|| client.clone())
    }

    /// Whether `err` says the command belongs on another node (or the node may be gone).
    pub(super) fn is_redirect(err: &fred::error::Error) -> bool {
        !matches!(classify(err), Redirect::None)
    }

    /// Every client of every primary's pool.
    pub(super) fn all_clients(&self) -> Vec<Client> {
        self.topology
            .read()
            .nodes
            .values()
            .flat_map(|p| p.clients().to_vec())
            .collect()
    }

    pub(super) fn primaries(&self) -> Vec<Client> {
        self.topology
            .read()
            .nodes
            .values()
            .map(|p| p.next().clone())
            .collect()
    }

    pub(super) async fn quit(&self) {
        let mut pools: Vec<Pool> = self.topology.read().nodes.values().cloned().collect();
        pools.extend(self.strays.lock().drain().map(|(_, stray)| stray.pool));
        for pool in pools {
            let _ = pool.quit().await;
        }
        let asking: Vec<Arc<AskPool>> = self.asking.lock().drain().map(|(_, a)| a).collect();
        for ask in asking {
            ask.retired.store(true, Ordering::SeqCst);
            let _ = ask.pool.quit().await;
        }
    }
}

#[cfg(test)]
mod tests;
