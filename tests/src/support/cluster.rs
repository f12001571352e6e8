//! A 6-node Redis Cluster (three masters, one replica each), and the `CLUSTER NODES` parser its
//! readiness checks use.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::{
    info_field, poll,
    ports::free_cluster_port,
    redis_cli,
    server::{base_args, RedisServer},
    try_redis_cli, REDIS_CLI, TOPOLOGY_INTERVAL, TOPOLOGY_TIMEOUT,
};

const CLUSTER_SLOTS: usize = 16_384;
const CLUSTER_MASTERS: usize = 3;
const CLUSTER_NODES: usize = 6;
const DEFAULT_NODE_TIMEOUT_MS: u64 = 2_000;

/// One line of `CLUSTER NODES`, as seen by one node.
struct ClusterNode {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    link_connected: bool,
    /// Inclusive slot ranges this node serves; importing/migrating markers are ignored.
    slots: Vec<(usize, usize)>,
}

impl ClusterNode {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    /// Failed, suspected (`fail?`) or not yet fully known: not something to route to.
    fn is_unhealthy(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|flag| self.has_flag(flag))
    }

    fn serves(&self, slot: usize) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(parse_cluster_node)
        .collect()
}

fn parse_cluster_node(line: &str) -> Result<ClusterNode, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let bad = || format!("unexpected CLUSTER NODES line: {line:?}");
    if fields.len() < 8 {
        return Err(bad());
    }
    // `ip:port@cport[,hostname]`
    let port = fields[1]
        .split('@')
        .next()
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(bad)?;
    let mut slots = Vec::new();
    for token in fields[8..].iter().filter(|token| !token.starts_with('[')) {
        let (first, last) = token.split_once('-').unwrap_or((token, token));
        slots.push((
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        ));
    }
    Ok(ClusterNode {
        id: fields[0].to_owned(),
        port,
        flags: fields[2].split(',').map(str::to_owned).collect(),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        link_connected: fields[7] == "connected",
        slots,
    })
}

fn cluster_view(port: u16) -> Result<Vec<ClusterNode>, String> {
    parse_cluster_nodes(&try_redis_cli(port, &["CLUSTER", "NODES"])?)
}

fn require_cluster_state_ok(port: u16) -> Result<(), String> {
    let info = try_redis_cli(port, &["CLUSTER", "INFO"])?;
    if info.lines().any(|line| line.trim() == "cluster_state:ok") {
        Ok(())
    } else {
        Err(format!("node {port} does not report cluster_state:ok"))
    }
}

/// From one node's view: the sorted `(master port, replica port)` pairs, provided the view shows
/// exactly the healthy 3-master/3-replica layout with every slot served.
fn replication_pairs(view: &[ClusterNode]) -> Result<Vec<(u16, u16)>, String> {
    if view.len() != CLUSTER_NODES {
        return Err(format!(
            "knows {} nodes, expected {CLUSTER_NODES}",
            view.len()
        ));
    }
    if let Some(node) = view
        .iter()
        .find(|node| node.is_unhealthy() || !node.link_connected)
    {
        return Err(format!(
            "sees node {} as {} (link connected: {})",
            node.port,
            node.flags.join(","),
            node.link_connected
        ));
    }
    let masters: Vec<&ClusterNode> = view.iter().filter(|node| node.is_master()).collect();
    if masters.len() != CLUSTER_MASTERS || masters.iter().any(|master| master.slots.is_empty()) {
        return Err(format!(
            "sees {} masters (expected {CLUSTER_MASTERS}, all owning slots)",
            masters.len()
        ));
    }
    if let Some(slot) = (0..CLUSTER_SLOTS).find(|&slot| !masters.iter().any(|m| m.serves(slot))) {
        return Err(format!("sees slot {slot} unassigned"));
    }
    let mut pairs = Vec::new();
    for replica in view.iter().filter(|node| node.is_replica()) {
        let master = masters
            .iter()
            .find(|master| replica.master_id.as_deref() == Some(master.id.as_str()))
            .ok_or_else(|| format!("sees replica {} without a known master", replica.port))?;
        pairs.push((master.port, replica.port));
    }
    for master in &masters {
        let count = pairs.iter().filter(|(m, _)| *m == master.port).count();
        if count != 1 {
            return Err(format!("sees master {} with {count} replicas", master.port));
        }
    }
    pairs.sort_unstable();
    Ok(pairs)
}

/// A 6-node Redis Cluster (3 masters, 3 replicas) on 127.0.0.1, each node in its own temporary
/// directory. All nodes are killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts a cluster with the default 2000 ms `cluster-node-timeout` and waits until it is
    /// fully healthy (see [`RedisCluster::wait_healthy`]).
    pub fn start() -> Self {
        Self::start_with_node_timeout(DEFAULT_NODE_TIMEOUT_MS)
    }

    /// Starts a cluster with the given `cluster-node-timeout` (which bounds how fast failures are
    /// detected and replicas promoted) and waits until it is fully healthy.
    pub fn start_with_node_timeout(node_timeout_ms: u64) -> Self {
        let node_timeout = node_timeout_ms.to_string();
        let prepare = |port: u16, dir: &Path| cluster_args(port, dir, &node_timeout);
        // If a later node fails to start, unwinding drops the nodes collected so far.
        let nodes: Vec<RedisServer> = (0..CLUSTER_NODES)
            .map(|_| RedisServer::spawn_fresh(free_cluster_port, &prepare))
            .collect();
        let cluster = Self { nodes };

        let output = Command::new(REDIS_CLI)
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(RedisServer::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {REDIS_CLI} --cluster create: {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            cluster.logs_report()
        );
        cluster.wait_healthy(TOPOLOGY_TIMEOUT);
        cluster
    }

    /// A one-node cluster (cluster mode on, that node serving all 16384 slots, no replica): what
    /// a client that speaks to one node only can still use, and cluster-aware clients treat as
    /// any cluster. Most methods assume the six-node layout; use [`RedisCluster::url`] and
    /// [`RedisCluster::ports`].
    pub fn start_one_shard() -> Self {
        let timeout = DEFAULT_NODE_TIMEOUT_MS.to_string();
        // A lone node never learns its own address from a peer: CLUSTER SLOTS lists it with an
        // empty host, which clients must read as "the host that answered".
        let node = RedisServer::spawn_fresh(free_cluster_port, &|port: u16, dir: &Path| {
            cluster_args(port, dir, &timeout)
        });
        let port = node.port();
        let last = (CLUSTER_SLOTS - 1).to_string();
        assert_eq!(
            redis_cli(port, &["CLUSTER", "ADDSLOTSRANGE", "0", &last]),
            "OK"
        );
        let ready = poll(TOPOLOGY_TIMEOUT, TOPOLOGY_INTERVAL, || {
            let info = try_redis_cli(port, &["CLUSTER", "INFO"])?;
            if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                Ok(())
            } else {
                Err("cluster_state is not ok".to_owned())
            }
        });
        if let Err(reason) = ready {
            panic!("one-node cluster not ok: {reason}\n{}", node.log_tail(30));
        }
        Self { nodes: vec![node] }
    }

    /// Cluster URL listing all six nodes:
    /// `redis-cluster://127.0.0.1:p1?node=127.0.0.1:p2&...&node=127.0.0.1:p6`.
    pub fn url(&self) -> String {
        let (first, rest) = self.nodes.split_first().expect("a cluster has nodes");
        let extra: Vec<String> = rest
            .iter()
            .map(|node| format!("node={}", node.addr()))
            .collect();
        format!("redis-cluster://{}?{}", first.addr(), extra.join("&"))
    }

    /// Client ports of all nodes, in node-index order (independent of current roles).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Node by index (`0..6`, same order as [`RedisCluster::ports`]).
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// Mutable node by index, e.g. to kill or restart it directly.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// Ports of the current slot-owning, non-failed masters (sorted), as seen by a live node.
    /// After a topology change, call [`RedisCluster::wait_ok`] first so the views have settled.
    pub fn master_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .live_view()
            .iter()
            .filter(|node| node.is_master() && !node.is_unhealthy() && !node.slots.is_empty())
            .map(|node| node.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Ports of the current non-failed replicas (sorted), as seen by a live node.
    pub fn replica_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .live_view()
            .iter()
            .filter(|node| node.is_replica() && !node.is_unhealthy())
            .map(|node| node.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Port of the master currently serving `key`'s slot (`CLUSTER KEYSLOT` + `CLUSTER NODES`).
    pub fn master_of_key(&self, key: &str) -> u16 {
        let port = self.live_port();
        let slot: usize = redis_cli(port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT returned a non-number: {e}"));
        self.live_view()
            .iter()
            .find(|node| node.is_master() && !node.is_unhealthy() && node.serves(slot))
            .map_or_else(
                || panic!("no healthy master serves slot {slot} (key {key:?})"),
                |node| node.port,
            )
    }

    /// SIGKILLs the node listening on `port`.
    pub fn kill_node(&mut self, port: u16) {
        self.node_by_port(port).kill();
    }

    /// Restarts the node on `port` with its old directory, so it rejoins with its `nodes.conf`
    /// (a former master comes back as a replica if it was failed over meanwhile).
    pub fn restart_node(&mut self, port: u16) {
        self.node_by_port(port).restart();
    }

    /// Waits until every live node reports `cluster_state:ok` and routes all 16384 slots to live,
    /// non-failed masters — so after killing a master this also waits for the replica promotion.
    /// Panics after `timeout`.
    pub fn wait_ok(&self, timeout: Duration) {
        if let Err(reason) = poll(timeout, TOPOLOGY_INTERVAL, || self.check_serving()) {
            panic!(
                "cluster not ok after {timeout:?}: {reason}\n{}",
                self.logs_report()
            );
        }
    }

    /// Waits until all six nodes run, report `cluster_state:ok`, agree on 3 masters covering all
    /// slots with one connected replica each, and every replica's link is up (`INFO replication`).
    /// Use after [`RedisCluster::restart_node`] to get back to the start-up state. Panics after
    /// `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) {
        if let Err(reason) = poll(timeout, TOPOLOGY_INTERVAL, || self.check_healthy()) {
            panic!(
                "cluster not healthy after {timeout:?}: {reason}\n{}",
                self.logs_report()
            );
        }
    }

    /// `(master port, DBSIZE)` for every current master, sorted by port.
    pub fn dbsize_by_master(&self) -> Vec<(u16, u64)> {
        self.master_ports()
            .into_iter()
            .map(|port| {
                let size = redis_cli(port, &["DBSIZE"])
                    .parse()
                    .unwrap_or_else(|e| panic!("DBSIZE on {port} returned a non-number: {e}"));
                (port, size)
            })
            .collect()
    }

    fn node_by_port(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(RedisServer::port)
            .collect()
    }

    fn live_port(&self) -> u16 {
        *self
            .live_ports()
            .first()
            .expect("no cluster node is running")
    }

    /// The `CLUSTER NODES` view of the first live node that answers.
    fn live_view(&self) -> Vec<ClusterNode> {
        let mut errors = Vec::new();
        for port in self.live_ports() {
            match cluster_view(port) {
                Ok(view) => return view,
                Err(e) => errors.push(e),
            }
        }
        panic!("no live cluster node answered CLUSTER NODES: {errors:?}");
    }

    fn check_serving(&self) -> Result<(), String> {
        let live = self.live_ports();
        if live.is_empty() {
            return Err("no node is running".to_owned());
        }
        for &port in &live {
            require_cluster_state_ok(port)?;
            let view = cluster_view(port)?;
            let mut covered = vec![false; CLUSTER_SLOTS];
            for master in view
                .iter()
                .filter(|node| node.is_master() && !node.slots.is_empty())
            {
                if master.is_unhealthy() || !live.contains(&master.port) {
                    return Err(format!(
                        "node {port} still routes slots to dead/failing master {}",
                        master.port
                    ));
                }
                for &(first, last) in &master.slots {
                    covered[first..=last.min(CLUSTER_SLOTS - 1)].fill(true);
                }
            }
            if let Some(slot) = covered.iter().position(|covered| !covered) {
                return Err(format!("node {port} sees slot {slot} unassigned"));
            }
        }
        Ok(())
    }

    fn check_healthy(&self) -> Result<(), String> {
        let mut agreed: Option<Vec<(u16, u16)>> = None;
        for node in &self.nodes {
            let port = node.port();
            if !node.is_running() {
                return Err(format!("node {port} is not running"));
            }
            require_cluster_state_ok(port)?;
            let pairs =
                replication_pairs(&cluster_view(port)?).map_err(|e| format!("node {port} {e}"))?;
            match &agreed {
                None => agreed = Some(pairs),
                Some(first) if *first == pairs => {}
                Some(first) => {
                    return Err(format!(
                        "views disagree: {first:?} vs node {port}: {pairs:?}"
                    ))
                }
            }
        }
        // CLUSTER NODES can say "connected" before the initial sync is done; an unsynced replica
        // would refuse to fail over (replica validity check), so insist on a live replication link.
        for (master, replica) in agreed.unwrap_or_default() {
            let slaves = info_field(master, "replication", "connected_slaves")?;
            if slaves != "1" {
                return Err(format!("master {master} has connected_slaves:{slaves}"));
            }
            let link = info_field(replica, "replication", "master_link_status")?;
            if link != "up" {
                return Err(format!("replica {replica} has master_link_status:{link}"));
            }
        }
        Ok(())
    }

    fn logs_report(&self) -> String {
        nodes_report(&self.nodes)
    }
}

/// Short log tails of several servers, for topology timeouts where any node may be the culprit.
pub(super) fn nodes_report(nodes: &[RedisServer]) -> String {
    nodes
        .iter()
        .map(|node| {
            format!(
                "--- {} ({}) last 10 log lines ---\n{}",
                node.addr(),
                if node.is_running() {
                    "running"
                } else {
                    "killed"
                },
                node.log_tail(10)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The arguments of one cluster node in `dir`.
fn cluster_args(port: u16, dir: &Path, node_timeout_ms: &str) -> Vec<String> {
    let mut args = base_args(port, dir);
    args.extend(
        [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            node_timeout_ms,
        ]
        .map(str::to_owned),
    );
    args
}
