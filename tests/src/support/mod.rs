//! Test support: starts real `redis-server` processes (standalone, cluster, sentinel) on 127.0.0.1,
//! each in its own temporary directory, and kills them again on drop. Synchronous by design (std +
//! `tempfile` only); servers are driven through `redis-cli` subprocesses.
//!
//! Split by what it starts, as redis-rs's test support: [`ports`](free_port), the orphan
//! `reaper`, one [`RedisServer`], a [`RedisCluster`] and a [`RedisSentinelSet`]; this module keeps
//! the `redis-cli` helpers and the limits they share.

use std::{
    collections::HashMap,
    fs,
    io::{Read, Seek, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

mod cluster;
mod ports;
mod reaper;
mod sentinel;
mod server;

pub use self::{
    cluster::RedisCluster, ports::free_port, sentinel::RedisSentinelSet, server::RedisServer,
};

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

/// Redis Cluster listens for its node-to-node bus on the client port plus this offset.
const CLUSTER_BUS_OFFSET: u16 = 10_000;

// ---------------------------------------------------------------------------------------------
// redis-cli helpers
// ---------------------------------------------------------------------------------------------

/// `CLUSTER FAILOVER` on `replica`, waiting until it reports itself a master. Redis abandons a
/// manual failover its master does not acknowledge within 5 s (a busy 2-core machine), so the
/// command is sent again after 6 s, up to three times, before the test fails.
pub fn cluster_failover(replica: u16) {
    for _ in 0..3 {
        redis_cli(replica, &["CLUSTER", "FAILOVER"]);
        let sent = std::time::Instant::now();
        while sent.elapsed() < std::time::Duration::from_secs(6) {
            if redis_cli(replica, &["ROLE"]).starts_with("master") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    panic!("CLUSTER FAILOVER on port {replica}: no failover after three tries of 6 s");
}

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args...>` and returns its trimmed stdout.
///
/// Error replies count as failures (`redis-cli -e`). Panics with redis-cli's stderr on failure.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    try_redis_cli(port, args).unwrap_or_else(|e| {
        panic!("`redis-cli -p {port} {}` failed: {e}", args.join(" "));
    })
}

/// Sends `commands` (one per line) to the server on `port` through `redis-cli --pipe`: many
/// commands in one burst, as a busy client would.
pub fn redis_cli_pipe(port: u16, commands: &str) {
    use std::io::Write;
    let mut child = Command::new(REDIS_CLI)
        .args(["-h", LOOPBACK, "-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {REDIS_CLI} --pipe: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(commands.as_bytes())
        .expect("the pipe takes the commands");
    let status = child.wait().expect("redis-cli ends");
    assert!(status.success(), "{REDIS_CLI} --pipe on {port}: {status}");
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

/// A panicking test must not make every later test fail on a poisoned lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
