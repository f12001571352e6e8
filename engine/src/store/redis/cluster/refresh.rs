//! Re-reading the slot map: which node to ask, reconciling the per-primary pools with what it
//! says (adopting strays, retiring nodes that left), bumping the topology epoch when a slot
//! changed owner, and the background task that does it on demand or every 10 s.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use fred::{
    interfaces::{ClientLike, ClusterInterface},
    types::{cluster::ClusterRouting, config::Server, Value},
};

use super::{
    parse::slot_map, ClusterRouter, Topology, MIN_REFRESH_INTERVAL, PERIODIC_REFRESH,
    PROBE_TIMEOUT, STRAY_GRACE,
};
use crate::{
    error::{Error, ErrorKind, Result},
    store::redis::{connect::connected, epoch::Change},
};
impl ClusterRouter {
    /// Re-reads CLUSTER SLOTS from the first live node and reconciles the per-node pools.
    pub(super) async fn refresh(&self) -> Result<()> {
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
                    let client = self.node_builder(&server).build().map_err(Error::from)?;
                    client.connect();
                    let connected = tokio::time::timeout(
                        PROBE_TIMEOUT * 4,
                        connected(std::slice::from_ref(&client)),
                    )
                    .await;
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
            match slots.and_then(|v| slot_map(v, &server.host)) {
                Ok(Some(routing)) => {
                    found = Some(routing);
                    break;
                }
                Ok(None) => continue,
                Err(err) => last_err = Some(Error::from(err)),
            }
        }
        let Some(routing) = found else {
            return Err(last_err.unwrap_or_else(|| {
                Error::new(ErrorKind::Redis, "no cluster node returned a slot map")
            }));
        };
        let primaries = routing.unique_primary_nodes();
        let mut nodes = HashMap::with_capacity(primaries.len());
        let mut retired = Vec::new();
        {
            // Held across the swap, so `pool_at` cannot add a stray for a node this refresh is
            // about to list as a primary.
            let mut strays = self.strays.lock();
            for server in primaries {
                let pool = match current.nodes.get(&server) {
                    Some(pool) => pool.clone(),
                    // A node first met through MOVED keeps its pool once it is a known primary.
                    None => strays
                        .remove(&server)
                        .map_or_else(|| self.node_pool(&server), |stray| stray.pool),
                };
                nodes.insert(server, pool);
            }
            // Strays the slot map does not list as primaries, and primaries that are no longer
            // (failed or demoted): stop reconnecting to them. A young stray is kept: the map this
            // refresh read may predate the MOVED that created it (a failover in progress), and
            // quitting it would strand the command it is serving until its deadline.
            let now = std::time::Instant::now();
            let (old, young): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut *strays)
                .into_iter()
                .partition(|(_, stray)| now.duration_since(stray.created) >= STRAY_GRACE);
            *strays = young;
            retired.extend(old.into_values().map(|stray| stray.pool));
            retired.extend(
                current
                    .nodes
                    .iter()
                    .filter(|(server, _)| !nodes.contains_key(*server))
                    .map(|(_, pool)| pool.clone()),
            );
            let changed = !same_slots(&current.routing, &routing);
            *self.topology.write() = Arc::new(Topology { routing, nodes });
            if changed {
                // Some slot has a new owner, whose writes the old owner's tracking never hears.
                self.epoch.bump(Change::SlotMap);
            }
        }
        for pool in retired {
            tokio::spawn(async move {
                let _ = pool.quit().await;
            });
        }
        self.retire_idle_ask_pools();
        Ok(())
    }
}

pub(super) async fn refresh_loop(router: Weak<ClusterRouter>) {
    let Some(wake) = router.upgrade().map(|r| r.wake.clone()) else {
        return;
    };
    loop {
        // Hold only a weak reference while waiting, so dropping the store ends this task (the
        // router's Drop wakes it).
        let _ = tokio::time::timeout(PERIODIC_REFRESH, wake.notified()).await;
        let Some(strong) = router.upgrade() else {
            return;
        };
        if let Err(err) = strong.refresh().await {
            tracing::debug!(%err, "cluster topology refresh failed; retrying");
            strong.refresh_soon();
        }
        drop(strong);
        tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
    }
}

/// Whether two slot maps give every slot the same primary.
fn same_slots(a: &ClusterRouting, b: &ClusterRouting) -> bool {
    let ranges = |r: &ClusterRouting| {
        let mut v: Vec<(u16, u16, Server)> = r
            .slots()
            .iter()
            .map(|s| (s.start, s.end, s.primary.clone()))
            .collect();
        v.sort_by_key(|(start, _, _)| *start);
        v
    };
    ranges(a) == ranges(b)
}
