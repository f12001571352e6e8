//! Cluster routing with one connection set per primary, so a dead primary stalls only its own
//! slots. fred's own cluster client re-syncs by connecting to every node listed in CLUSTER SLOTS
//! and fails the whole sync (blocking every slot) while one listed primary is unreachable; here a
//! failed node only fails the commands routed to it, and a background task re-reads CLUSTER SLOTS
//! from any live node until the promoted replica shows up. MOVED is followed directly; ASK (slot
//! migration) is handed to a regular fred cluster pool, which sends ASKING for us.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Weak},
    time::Duration,
};

use fred::{
    clients::Pool,
    interfaces::{ClientLike, ClusterInterface},
    prelude::{Builder, Client, Config, ServerConfig},
    types::{cluster::ClusterRouting, config::Server, Value},
};
use parking_lot::RwLock;
use tokio::sync::Notify;

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

pub(crate) struct ClusterRouter {
    config: Config,
    make_builder: Box<dyn Fn(Config) -> Builder + Send + Sync>,
    pool_size: usize,
    /// The longest a command waits for a disconnected primary to come back or be replaced.
    command_timeout: Duration,
    seeds: Vec<Server>,
    topology: RwLock<Arc<Topology>>,
    /// For ASK redirections during slot migration.
    fallback: Pool,
    wake: Notify,
}

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = self.topology.read();
        f.debug_struct("ClusterRouter")
            .field("primaries", &topology.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What an error from a node asks the router to do.
enum Redirect {
    Moved(Server),
    Ask,
    /// fred gave up following redirections for us (a slot moved again while it followed ASK):
    /// route afresh from our own slot map.
    Reroute,
    /// The node may be gone or demoted: refresh the topology in the background.
    Refresh,
    None,
}

fn classify(err: &fred::error::Error) -> Redirect {
    let details = err.details();
    if let Some(rest) = details.strip_prefix("MOVED ") {
        if let Some(server) = rest
            .split(' ')
            .nth(1)
            .and_then(|a| Server::try_from(a).ok())
        {
            return Redirect::Moved(server);
        }
        return Redirect::Refresh;
    }
    if details.starts_with("ASK ") {
        return Redirect::Ask;
    }
    if details.contains("Too many failed write attempts") {
        return Redirect::Reroute;
    }
    use fred::error::ErrorKind as F;
    match err.kind() {
        F::IO | F::Timeout | F::Canceled | F::NotFound => Redirect::Refresh,
        _ if [
            "CLUSTERDOWN",
            "TRYAGAIN",
            "READONLY",
            "MASTERDOWN",
            "LOADING",
        ]
        .iter()
        .any(|p| details.starts_with(p)) =>
        {
            Redirect::Refresh
        }
        _ => Redirect::None,
    }
}

impl ClusterRouter {
    pub(crate) async fn connect(
        config: Config,
        pool_size: usize,
        connect_timeout: Duration,
        command_timeout: Duration,
        make_builder: impl Fn(Config) -> Builder + Send + Sync + 'static,
    ) -> Result<Arc<Self>> {
        let seeds = match &config.server {
            ServerConfig::Clustered { hosts, .. } => hosts.clone(),
            _ => unreachable!("the cluster router is only built for cluster URLs"),
        };
        let fallback = make_builder(config.clone())
            .build_pool(pool_size)
            .map_err(Error::from)?;
        fallback.connect_pool();
        let router = Arc::new(ClusterRouter {
            config,
            make_builder: Box::new(make_builder),
            pool_size,
            command_timeout,
            seeds,
            topology: RwLock::new(Arc::new(Topology {
                routing: ClusterRouting::new(),
                nodes: HashMap::new(),
            })),
            fallback,
            wake: Notify::new(),
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
            tokio::time::timeout(connect_timeout, pool.wait_for_connect())
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        "a cluster primary did not accept a connection",
                    )
                })?
                .map_err(Error::from)?;
        }
        tokio::spawn(refresh_loop(Arc::downgrade(&router)));
        Ok(router)
    }

    fn node_pool(&self, server: &Server) -> Pool {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        let pool = (self.make_builder)(config)
            .build_pool(self.pool_size)
            .expect("a centralized copy of a valid cluster config is valid");
        // Connecting in the background: commands queue until connected, bounded by the command
        // timeout, so a node that is down never blocks the caller for longer than that.
        pool.connect_pool();
        pool
    }

    /// Re-reads CLUSTER SLOTS from the first live node and reconciles the per-node pools.
    async fn refresh(&self) -> Result<()> {
        let current = self.topology.read().clone();
        // Connected primaries first: a dead node would only make this wait for its timeout.
        let mut candidates: Vec<Server> = current.nodes.keys().cloned().collect();
        candidates.sort_by_key(|server| !current.nodes[server].next().is_connected());
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut last_err = None;
        let mut found = None;
        for server in candidates {
            let probe = match current.nodes.get(&server) {
                Some(pool) => pool.next().clone(),
                None => {
                    let mut config = self.config.clone();
                    config.server = ServerConfig::Centralized {
                        server: server.clone(),
                    };
                    let client = (self.make_builder)(config).build().map_err(Error::from)?;
                    client.connect();
                    let connected =
                        tokio::time::timeout(PROBE_TIMEOUT * 4, client.wait_for_connect()).await;
                    if !matches!(connected, Ok(Ok(()))) {
                        last_err = Some(match connected {
                            Ok(Err(err)) => Error::from(err),
                            _ => Error::new(
                                ErrorKind::Timeout,
                                format!("seed {server} did not connect"),
                            ),
                        });
                        let _ = client.quit().await;
                        continue;
                    }
                    client
                }
            };
            let slots: std::result::Result<Value, _> =
                match tokio::time::timeout(PROBE_TIMEOUT, probe.cluster_slots()).await {
                    Ok(result) => result,
                    Err(_) => Err(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        "CLUSTER SLOTS probe timed out",
                    )),
                };
            if !current.nodes.contains_key(&server) {
                let _ = probe.quit().await;
            }
            match slots.map(|v| ClusterRouting::from_cluster_slots(v, server.host.clone())) {
                Ok(Ok(routing)) if !routing.slots().is_empty() => {
                    found = Some(routing);
                    break;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(err)) | Err(err) => last_err = Some(Error::from(err)),
            }
        }
        let Some(routing) = found else {
            return Err(last_err.unwrap_or_else(|| {
                Error::new(ErrorKind::Redis, "no cluster node returned a slot map")
            }));
        };
        let primaries = routing.unique_primary_nodes();
        let mut nodes = HashMap::with_capacity(primaries.len());
        for server in primaries {
            let pool = current
                .nodes
                .get(&server)
                .cloned()
                .unwrap_or_else(|| self.node_pool(&server));
            nodes.insert(server, pool);
        }
        for (server, pool) in &current.nodes {
            if !nodes.contains_key(server) {
                // No longer a primary (failed or demoted): stop reconnecting to it.
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _ = pool.quit().await;
                });
            }
        }
        *self.topology.write() = Arc::new(Topology { routing, nodes });
        Ok(())
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

    fn pool_at(&self, server: &Server) -> Pool {
        if let Some(pool) = self.topology.read().nodes.get(server) {
            return pool.clone();
        }
        self.refresh_soon();
        self.node_pool(server)
    }

    /// A connected client of the primary that serves `slot`. When that primary's connections are
    /// down, the command is not queued behind its reconnection: it waits (at most the command
    /// timeout) until either the connection is back or a refresh names a new primary, so the
    /// dead master's slots are served from the moment its replica is promoted.
    async fn client_for(&self, slot: u16) -> Result<Client> {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
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
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the cluster primary for slot {slot} stayed unreachable for {:?} and no \
                         replica has taken over yet",
                        self.command_timeout
                    ),
                ));
            }
            tokio::time::sleep(REROUTE_POLL).await;
        }
    }

    /// Runs `f` on a client of the primary that owns `key`, following up to five redirections.
    pub(crate) async fn call<R, F, Fut>(&self, key: &str, f: F) -> Result<R>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<R, fred::error::Error>>,
    {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let mut client = self.client_for(slot).await?;
        // During a slot migration one command may meet MOVED and then ASK (or the reverse):
        // follow a few redirections before giving up.
        let mut attempts = 0;
        loop {
            let err = match f(client).await {
                Ok(v) => return Ok(v),
                Err(err) => err,
            };
            attempts += 1;
            client = match classify(&err) {
                _ if attempts > MAX_REDIRECTIONS => return Err(err.into()),
                Redirect::Moved(server) => {
                    self.refresh_soon();
                    self.pool_at(&server).next().clone()
                }
                Redirect::Ask => self.fallback.next().clone(),
                Redirect::Reroute => {
                    self.refresh_soon();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    match self.pool_for(slot) {
                        Some(pool) => pool.next().clone(),
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
    pub(crate) fn primaries(&self) -> Vec<Client> {
        self.topology
            .read()
            .nodes
            .values()
            .map(|p| p.next().clone())
            .collect()
    }

    pub(crate) async fn quit(&self) {
        let nodes: Vec<Pool> = self.topology.read().nodes.values().cloned().collect();
        for pool in nodes {
            let _ = pool.quit().await;
        }
        let _ = self.fallback.quit().await;
    }
}

async fn refresh_loop(router: Weak<ClusterRouter>) {
    loop {
        let Some(strong) = router.upgrade() else {
            return;
        };
        // Hold only a weak reference while waiting, so dropping the store ends this task.
        let wake = async {
            let _ = tokio::time::timeout(PERIODIC_REFRESH, strong.wake.notified()).await;
        };
        wake.await;
        if let Err(err) = strong.refresh().await {
            tracing::debug!(%err, "cluster topology refresh failed; retrying");
            strong.refresh_soon();
        }
        drop(strong);
        tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
    }
}
