//! Test support: starts real `redis-server` processes (standalone, cluster, sentinel) on 127.0.0.1,
//! each in its own temporary directory, and kills them again on drop. Synchronous by design (std +
//! `tempfile` only); servers are driven through `redis-cli` subprocesses.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{LazyLock, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// Every server binds here and nowhere else.
const LOOPBACK: &str = "127.0.0.1";
const REDIS_SERVER: &str = "redis-server";
const REDIS_CLI: &str = "redis-cli";

/// How long a single process may take to answer its first PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_millis(20);
/// How long a whole topology (cluster / sentinel set) may take to converge.
const TOPOLOGY_TIMEOUT: Duration = Duration::from_secs(30);
/// Topology probes spawn several `redis-cli`s each, so poll less eagerly than single PINGs.
const TOPOLOGY_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 20;
/// Fresh starts that lose a bind race are retried on a new port this many times.
const PORT_ATTEMPTS: usize = 5;
const MAX_PORT_PROBES: usize = 1000;

/// Redis Cluster listens for its node-to-node bus on the client port plus this offset.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
const CLUSTER_SLOTS: usize = 16_384;
const CLUSTER_MASTERS: usize = 3;
const CLUSTER_NODES: usize = 6;
const DEFAULT_NODE_TIMEOUT_MS: u64 = 2_000;

const SENTINEL_SERVICE: &str = "mymaster";
const SENTINEL_COUNT: usize = 3;
const DEFAULT_DOWN_AFTER_MS: u64 = 1_000;

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Ports handed out by this process. Tests run on parallel threads, and the OS may return a port
/// again as soon as our probe listener is closed, before the server that wanted it has bound it.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);

/// A panicking test must not make every later test fail on a poisoned lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bind_ephemeral() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the port of a 127.0.0.1:0 listener: {e}"))
        .port();
    (listener, port)
}

/// Returns a currently free TCP port on 127.0.0.1 that this process has not handed out before.
///
/// The port is only reserved against other callers in this process; another process could still
/// take it before it is bound, which is why server start-up retries on "Address already in use".
pub fn free_port() -> u16 {
    for _ in 0..MAX_PORT_PROBES {
        let (_listener, port) = bind_ephemeral();
        if lock(&HANDED_OUT).insert(port) {
            return port;
        }
    }
    panic!("no unused port found on 127.0.0.1 after {MAX_PORT_PROBES} attempts");
}

/// Like [`free_port`], but also guarantees that the cluster bus port (`port + 10000`) is free,
/// and reserves both so that nothing else in this process is given the bus port.
fn free_cluster_port() -> u16 {
    for _ in 0..MAX_PORT_PROBES {
        // Keep the first listener open while probing the bus port so the pair is checked together.
        let (_listener, port) = bind_ephemeral();
        let Some(bus) = port
            .checked_add(CLUSTER_BUS_OFFSET)
            .filter(|bus| *bus < 65_535)
        else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_err() {
            continue;
        }
        let mut handed_out = lock(&HANDED_OUT);
        if handed_out.contains(&port) || handed_out.contains(&bus) {
            continue;
        }
        handed_out.insert(port);
        handed_out.insert(bus);
        return port;
    }
    panic!(
        "no free port pair (port, port+10000) found on 127.0.0.1 after {MAX_PORT_PROBES} attempts"
    );
}

// ---------------------------------------------------------------------------------------------
// Orphan protection
// ---------------------------------------------------------------------------------------------

/// Drop only runs when the test process unwinds. If it is killed instead (Ctrl-C, a harness
/// timeout, `panic = "abort"`), the servers would be orphaned. So every server PID is reported to
/// a tiny shell watchdog over a pipe (`+pid` on spawn, `-pid` once we have killed it); when the
/// pipe reaches EOF, i.e. when this process is gone however it died, the watchdog SIGKILLs every
/// PID still registered. It ignores terminal signals and runs in its own process group so a
/// Ctrl-C cannot take it down before it has done its job.
const REAPER_SCRIPT: &str = r#"
trap '' INT TERM HUP PIPE
live=' '
while IFS= read -r line; do
  case "$line" in
    +*) live="$live${line#+} " ;;
    -*) pid="${line#-}"
        case "$live" in *" $pid "*) live="${live%%" $pid "*} ${live#*" $pid "}" ;; esac ;;
  esac
done
for pid in $live; do kill -9 "$pid" 2>/dev/null; done
"#;

/// `None` if the watchdog could not be started; servers are then protected by Drop alone.
static REAPER: LazyLock<Mutex<Option<ChildStdin>>> = LazyLock::new(|| {
    let stdin = Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
        .and_then(|mut child| child.stdin.take());
    Mutex::new(stdin)
});

fn reaper_note(sign: char, pid: u32) {
    let mut reaper = lock(&REAPER);
    if let Some(stdin) = reaper.as_mut() {
        if writeln!(stdin, "{sign}{pid}").is_err() {
            *reaper = None;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redis-cli helpers
// ---------------------------------------------------------------------------------------------

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args...>` and returns its trimmed stdout.
///
/// Error replies count as failures (`redis-cli -e`). Panics with redis-cli's stderr on failure.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    try_redis_cli(port, args).unwrap_or_else(|e| {
        panic!("`redis-cli -p {port} {}` failed: {e}", args.join(" "));
    })
}

/// Like [`redis_cli`], but returns the failure instead of panicking; meant for probing servers
/// that may be down.
///
/// # Errors
///
/// redis-cli's stderr and exit status if it cannot connect or the server replies with an error.
pub fn try_redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let output = Command::new(REDIS_CLI)
        .args(["-h", LOOPBACK, "-p", &port.to_string(), "-e"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {REDIS_CLI}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{} ({}) {stdout}", stderr.trim(), output.status)
            .trim_end()
            .to_owned())
    }
}

/// Per-command call counts from `INFO commandstats`, keyed by command name as Redis reports it
/// (e.g. `"hgetall"`, `"client|setname"`). Commands never called since the last reset are absent.
pub fn command_stats(port: u16) -> HashMap<String, u64> {
    parse_command_stats(&redis_cli(port, &["INFO", "commandstats"]))
}

/// Parses the text of `INFO commandstats` (`cmdstat_<name>:calls=<n>,…` lines) into call counts.
pub fn parse_command_stats(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Top-level commands the session engine sent to `ports` (the masters) since the last call, as
/// `(reads, writes)`: reads are `HGETALL`; writes are script calls (`EVALSHA`, `EVAL`) and `DEL`.
/// Commands run inside scripts are not counted. Resets the statistics of every port.
pub fn engine_command_counts(ports: &[u16]) -> (u64, u64) {
    let (mut reads, mut writes) = (0, 0);
    for &port in ports {
        let stats = command_stats(port);
        let calls = |name: &str| stats.get(name).copied().unwrap_or(0);
        reads += calls("hgetall");
        writes += calls("evalsha") + calls("eval") + calls("del") + calls("unlink");
        reset_stats(port);
    }
    (reads, writes)
}

/// Resets the server's statistics (`CONFIG RESETSTAT`), including the command stats.
pub fn reset_stats(port: u16) {
    redis_cli(port, &["CONFIG", "RESETSTAT"]);
}

/// One `field:value` line from `INFO <section>`.
fn info_field(port: u16, section: &str, field: &str) -> Result<String, String> {
    try_redis_cli(port, &["INFO", section])?
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix(field)?
                .strip_prefix(':')
                .map(str::to_owned)
        })
        .ok_or_else(|| format!("INFO {section} on port {port} has no {field}"))
}

/// Calls `probe` until it succeeds or `timeout` passes; on timeout returns the last failure reason
/// so the caller's panic explains *what* never became true.
fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => return Err(reason),
            Err(_) => thread::sleep(interval),
        }
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------------------------

/// Flags every server gets: loopback only, no persistence to slow things down, no fork delay
/// before diskless replication, and in the foreground so that the child PID *is* the server.
fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        &path_arg(dir),
        "--daemonize",
        "no",
    ]
    .map(str::to_owned)
    .into()
}

fn path_arg(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("temporary path {} is not UTF-8", path.display()))
        .to_owned()
}

/// Why a launch failed; `port_in_use` tells a fresh start that trying another port may help.
struct LaunchFailure {
    message: String,
    port_in_use: bool,
}

impl LaunchFailure {
    fn other(message: String) -> Self {
        Self {
            message,
            port_in_use: false,
        }
    }
}

/// One `redis-server` process (data node or sentinel) on 127.0.0.1 in its own temporary
/// directory, with stdout/stderr going to `redis.log` there. Killed (SIGKILL) on drop.
pub struct RedisServer {
    port: u16,
    /// Full argument list, kept so that [`RedisServer::restart`] is an exact re-run.
    args: Vec<String>,
    child: Option<Child>,
    /// Declared last so the directory is only removed after the process is gone.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a standalone server with `extra_args` appended to the default command line
    /// (e.g. `&["--maxmemory", "10mb"]`) and waits until it answers PING.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::spawn_fresh(free_port, &|port, dir| {
            let mut args = base_args(port, dir);
            args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
            args
        })
    }

    /// Starts a new server on a port from `pick_port` in a new temporary directory; `prepare`
    /// builds the argument list (and may write config files into the directory). If the port is
    /// lost to another process between picking and binding, retries with a new port and dir.
    fn spawn_fresh(pick_port: fn() -> u16, prepare: &dyn Fn(u16, &Path) -> Vec<String>) -> Self {
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = pick_port();
            let dir = tempfile::Builder::new()
                .prefix("tessera-redis-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
            let args = prepare(port, dir.path());
            let mut server = Self {
                port,
                args,
                child: None,
                dir,
            };
            match server.launch() {
                Ok(()) => return server,
                Err(failure) if failure.port_in_use => last_failure = failure.message,
                Err(failure) => panic!("{}", failure.message),
            }
        }
        panic!("redis-server lost the race for its port {PORT_ATTEMPTS} times; last failure: {last_failure}");
    }

    /// Spawns the process with the stored arguments and waits for PONG from *our* PID.
    fn launch(&mut self) -> Result<(), LaunchFailure> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                LaunchFailure::other(format!("cannot open {}: {e}", log_path.display()))
            })?;
        // The log is shared across restarts; only this launch's part decides "port in use".
        let log_start = log.metadata().map_or(0, |meta| meta.len());
        let log_for_stderr = log
            .try_clone()
            .map_err(|e| LaunchFailure::other(format!("cannot duplicate log handle: {e}")))?;
        let child = Command::new(REDIS_SERVER)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .map_err(|e| LaunchFailure::other(format!("cannot spawn {REDIS_SERVER}: {e}")))?;
        let pid = child.id();
        reaper_note('+', pid);
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                reaper_note('-', pid);
                let port_in_use =
                    read_from(&log_path, log_start).contains("Address already in use");
                let message = format!(
                    "redis-server on {} exited during start-up ({status}); args: {:?}\n{}",
                    self.addr(),
                    self.args,
                    self.log_report()
                );
                return Err(LaunchFailure {
                    message,
                    port_in_use,
                });
            }
            // Another process might own the port while ours is failing to bind, so a PONG only
            // counts if the answering server is the child we just spawned.
            if try_redis_cli(self.port, &["PING"]).is_ok_and(|reply| reply == "PONG")
                && info_field(self.port, "server", "process_id")
                    .is_ok_and(|id| id == pid.to_string())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(LaunchFailure::other(format!(
                    "redis-server on {} did not answer PING with PONG within {STARTUP_TIMEOUT:?}; \
                     args: {:?}\n{}",
                    self.addr(),
                    self.args,
                    self.log_report()
                )));
            }
            thread::sleep(PING_INTERVAL);
        }
    }

    fn log_report(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path().display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("{LOOPBACK}:{}", self.port)
    }

    /// `"redis://127.0.0.1:<port>"`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// PID of the running process, or `None` after [`RedisServer::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and not yet killed or stopped through this handle.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's private temporary directory (working dir, `--dir`, log, config files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the file receiving the server's stdout and stderr (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last `lines` lines of the server log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&read_from(&self.log_path(), 0), lines)
    }

    /// SIGKILLs the process and reaps it. The port stays reserved for [`RedisServer::restart`].
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors only mean it already exited; either way `wait` below reaps it.
            let _ = child.kill();
            // Deregister while the PID is still held by the unreaped child and cannot be reused.
            reaper_note('-', child.id());
            let _ = child.wait();
        }
    }

    /// Asks the server to exit (`SHUTDOWN NOSAVE`) and waits up to 10 s, then falls back to
    /// [`RedisServer::kill`]. Does nothing if it is not running.
    pub fn stop_graceful(&mut self) {
        if self.child.is_none() {
            return;
        }
        // The connection drops as the server exits, so redis-cli may report an error; the exit
        // of the process is what counts.
        let _ = try_redis_cli(self.port, &["SHUTDOWN", "NOSAVE"]);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => thread::sleep(PING_INTERVAL),
                _ => break,
            }
        }
        self.kill();
    }

    /// Starts the server again on the same port, in the same directory, with the same arguments
    /// (killing it first if it is still running), and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.launch() {
                Ok(()) => return,
                // The port cannot change here, so give a transient owner a moment to let go.
                Err(failure) if failure.port_in_use && attempt < PORT_ATTEMPTS => {
                    thread::sleep(Duration::from_secs(1));
                }
                Err(failure) => panic!("restart failed: {}", failure.message),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// RedisCluster
// ---------------------------------------------------------------------------------------------

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
        let prepare = |port: u16, dir: &Path| {
            let mut args = base_args(port, dir);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    node_timeout.as_str(),
                ]
                .map(str::to_owned),
            );
            args
        };
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
fn nodes_report(nodes: &[RedisServer]) -> String {
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

// ---------------------------------------------------------------------------------------------
// RedisSentinelSet
// ---------------------------------------------------------------------------------------------

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
