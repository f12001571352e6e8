//! One master, one replica and three sentinels, and the sentinel probes their readiness checks use.

use std::{
    collections::HashMap,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use super::{
    cluster::nodes_report,
    info_field, poll,
    ports::free_port,
    server::{base_args, path_arg, RedisServer},
    try_redis_cli, write_file, LOOPBACK, STARTUP_TIMEOUT, TOPOLOGY_INTERVAL, TOPOLOGY_TIMEOUT,
};

const SENTINEL_SERVICE: &str = "mymaster";
const SENTINEL_COUNT: usize = 3;
const DEFAULT_DOWN_AFTER_MS: u64 = 1_000;

/// Data-node arguments for the sentinel set. `replicaof` lives in a config file instead of on the
/// command line: sentinels persist role changes with `CONFIG REWRITE`, so a node restarted after a
/// failover comes back in the role sentinel last gave it, not its original one.
fn data_node_args(port: u16, dir: &Path, replica_of: Option<u16>) -> Vec<String> {
    let conf = dir.join("redis.conf");
    let contents = match replica_of {
        Some(master) => format!("replicaof {LOOPBACK} {master}\n"),
        None => "# role managed by sentinel\n".to_owned(),
    };
    write_file(&conf, &contents);
    let mut args = vec![path_arg(&conf)];
    args.extend(base_args(port, dir));
    args
}

fn sentinel_args(port: u16, dir: &Path, master_port: u16, down_after_ms: u64) -> Vec<String> {
    let conf = dir.join("sentinel.conf");
    let dir = path_arg(dir);
    write_file(
        &conf,
        &format!(
            "port {port}\n\
             bind {LOOPBACK}\n\
             daemonize no\n\
             dir \"{dir}\"\n\
             sentinel monitor {SENTINEL_SERVICE} {LOOPBACK} {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} {down_after_ms}\n\
             sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
             sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
        ),
    );
    vec![path_arg(&conf), "--sentinel".to_owned()]
}

fn sentinel_master_fields(sentinel: u16) -> Result<HashMap<String, String>, String> {
    let reply = try_redis_cli(sentinel, &["SENTINEL", "MASTER", SENTINEL_SERVICE])?;
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    Ok(lines
        .chunks_exact(2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect())
}

fn sentinel_master_port(sentinel: u16) -> Result<u16, String> {
    let reply = try_redis_cli(
        sentinel,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
    )?;
    reply
        .lines()
        .last()
        .and_then(|port| port.trim().parse().ok())
        .ok_or_else(|| format!("sentinel {sentinel} gave no master address: {reply:?}"))
}

fn check_replication(master: u16, replica: u16) -> Result<(), String> {
    let slaves = info_field(master, "replication", "connected_slaves")?;
    if slaves != "1" {
        return Err(format!("master {master} has connected_slaves:{slaves}"));
    }
    let link = info_field(replica, "replication", "master_link_status")?;
    if link != "up" {
        return Err(format!("replica {replica} has master_link_status:{link}"));
    }
    Ok(())
}

/// One master, one replica and three sentinels monitoring them as `mymaster` (quorum 2), all on
/// 127.0.0.1 in their own temporary directories. Everything is killed on drop.
pub struct RedisSentinelSet {
    /// `[initial master, initial replica]`; roles change with failovers.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinelSet {
    /// Starts the set with `down-after-milliseconds` 1000 and waits until replication is up and
    /// every sentinel knows the replica and both other sentinels.
    pub fn start() -> Self {
        Self::start_with_down_after(DEFAULT_DOWN_AFTER_MS)
    }

    /// Like [`RedisSentinelSet::start`] with a custom `down-after-milliseconds` (how long the
    /// master must be unreachable before sentinels consider it down).
    pub fn start_with_down_after(down_after_ms: u64) -> Self {
        let master =
            RedisServer::spawn_fresh(free_port, &|port, dir| data_node_args(port, dir, None));
        let master_port = master.port();
        let replica = RedisServer::spawn_fresh(free_port, &|port, dir| {
            data_node_args(port, dir, Some(master_port))
        });
        // Sentinels learn about replicas from the master's INFO, which they re-read only every
        // 10 s; starting them after the replica is attached makes their first INFO complete.
        if let Err(reason) = poll(TOPOLOGY_TIMEOUT, TOPOLOGY_INTERVAL, || {
            check_replication(master_port, replica.port())
        }) {
            panic!(
                "replication did not come up: {reason}\n{}",
                nodes_report(&[master, replica])
            );
        }
        let data = vec![master, replica];
        let sentinels: Vec<RedisServer> = (0..SENTINEL_COUNT)
            .map(|_| {
                RedisServer::spawn_fresh(free_port, &|port, dir| {
                    sentinel_args(port, dir, master_port, down_after_ms)
                })
            })
            .collect();
        let set = Self { data, sentinels };
        if let Err(reason) = poll(TOPOLOGY_TIMEOUT, TOPOLOGY_INTERVAL, || {
            set.check_sentinels()
        }) {
            panic!(
                "sentinels did not converge: {reason}\n{}",
                set.logs_report()
            );
        }
        set
    }

    /// The monitored service name, `"mymaster"`.
    pub fn service_name(&self) -> &str {
        SENTINEL_SERVICE
    }

    /// `redis-sentinel://127.0.0.1:s1?node=127.0.0.1:s2&node=127.0.0.1:s3&sentinelServiceName=mymaster`.
    pub fn url(&self) -> String {
        let (first, rest) = self
            .sentinels
            .split_first()
            .expect("a sentinel set has sentinels");
        let extra: String = rest.iter().fold(String::new(), |mut extra, sentinel| {
            extra.push_str("node=");
            extra.push_str(&sentinel.addr());
            extra.push('&');
            extra
        });
        format!(
            "redis-sentinel://{}?{extra}sentinelServiceName={SENTINEL_SERVICE}",
            first.addr()
        )
    }

    /// The current master's port according to the first live sentinel that answers
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME mymaster`).
    pub fn master_port(&self) -> u16 {
        let mut errors = Vec::new();
        for port in self.live_sentinel_ports() {
            match sentinel_master_port(port) {
                Ok(master) => return master,
                Err(e) => errors.push(e),
            }
        }
        panic!("no sentinel reported the master address: {errors:?}");
    }

    /// Ports of the two data nodes: `[initial master, initial replica]` (not current roles).
    pub fn data_ports(&self) -> [u16; 2] {
        [self.data[0].port(), self.data[1].port()]
    }

    /// Ports of the three sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// Forces a failover with `SENTINEL FAILOVER mymaster` on a live sentinel. Retries for up to
    /// 10 s while the sentinel has no eligible replica yet (`NOGOODSLAVE`); returns immediately if
    /// a failover is already in progress. Use [`RedisSentinelSet::wait_master_change`] to wait for
    /// the result.
    pub fn failover(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let sentinel = *self
            .live_sentinel_ports()
            .first()
            .expect("no sentinel is running");
        loop {
            match try_redis_cli(sentinel, &["SENTINEL", "FAILOVER", SENTINEL_SERVICE]) {
                Ok(_) => return,
                Err(e) if e.contains("INPROG") => return,
                Err(e) if e.contains("NOGOODSLAVE") && Instant::now() < deadline => {
                    thread::sleep(TOPOLOGY_INTERVAL);
                }
                Err(e) => panic!(
                    "SENTINEL FAILOVER on {sentinel} failed: {e}\n{}",
                    self.logs_report()
                ),
            }
        }
    }

    /// Waits until every live sentinel reports the same master, different from `old_port`, and
    /// that node says `role:master`; returns its port. Panics after `timeout`.
    pub fn wait_master_change(&self, old_port: u16, timeout: Duration) -> u16 {
        let probe = || {
            let mut agreed = None;
            for sentinel in self.live_sentinel_ports() {
                let master = sentinel_master_port(sentinel)?;
                if master == old_port {
                    return Err(format!(
                        "sentinel {sentinel} still reports master {old_port}"
                    ));
                }
                if agreed.is_some_and(|port| port != master) {
                    return Err(format!("sentinels disagree: {agreed:?} vs {master}"));
                }
                agreed = Some(master);
            }
            let master = agreed.ok_or("no sentinel is running")?;
            let role = info_field(master, "replication", "role")?;
            if role == "master" {
                Ok(master)
            } else {
                Err(format!("new master {master} still reports role:{role}"))
            }
        };
        poll(timeout, TOPOLOGY_INTERVAL, probe).unwrap_or_else(|reason| {
            panic!(
                "master did not change from {old_port} within {timeout:?}: {reason}\n{}",
                self.logs_report()
            )
        })
    }

    /// SIGKILLs the data node (master or replica) on `port`.
    pub fn kill_data_node(&mut self, port: u16) {
        self.data_node(port).kill();
    }

    /// Restarts the data node on `port` in its old directory; its role is whatever sentinel last
    /// wrote into its config file (a demoted master comes back as a replica).
    pub fn restart_data_node(&mut self, port: u16) {
        self.data_node(port).restart();
    }

    fn data_node(&mut self, port: u16) -> &mut RedisServer {
        self.data
            .iter_mut()
            .find(|node| node.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    fn live_sentinel_ports(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .map(RedisServer::port)
            .collect()
    }

    fn check_sentinels(&self) -> Result<(), String> {
        let expected_others = (SENTINEL_COUNT - 1).to_string();
        for sentinel in self.sentinel_ports() {
            let fields = sentinel_master_fields(sentinel)?;
            let field = |name: &str| fields.get(name).map_or("?", String::as_str);
            if field("flags") != "master"
                || field("num-slaves") != "1"
                || field("num-other-sentinels") != expected_others
            {
                return Err(format!(
                    "sentinel {sentinel}: flags={} num-slaves={} num-other-sentinels={}",
                    field("flags"),
                    field("num-slaves"),
                    field("num-other-sentinels")
                ));
            }
        }
        Ok(())
    }

    fn logs_report(&self) -> String {
        format!(
            "{}\n{}",
            nodes_report(&self.data),
            nodes_report(&self.sentinels)
        )
    }
}

impl Drop for RedisSentinelSet {
    fn drop(&mut self) {
        // Sentinels first, so they do not start reacting to the data nodes disappearing.
        for sentinel in &mut self.sentinels {
            sentinel.kill();
        }
        for node in &mut self.data {
            node.kill();
        }
    }
}
