//! The Redis the benchmark runs against (started here through `tessera-tests`' support module, or
//! given by URL) and its `INFO commandstats` counters.

use std::{
    collections::{BTreeMap, HashMap},
    panic::{catch_unwind, AssertUnwindSafe},
    process::{Command, Stdio},
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::ClientLike,
    prelude::{Builder, Config},
    types::InfoKind,
};
use tessera_tests::support::{parse_command_stats, RedisServer};

use super::Error;

/// Commands the harness and the client libraries issue for themselves (connection set-up,
/// statistics, flushing, script preloading). They are left out of the commands-per-request
/// counts. Matched on the command name before any `|subcommand`.
pub const HARNESS_COMMANDS: &[&str] = &[
    "info", "config", "ping", "client", "cluster", "script", "hello", "command", "select", "auth",
    "flushall", "flushdb", "quit", "role", "readonly",
];

/// Commands that, in this benchmark, run only inside the session engine's Lua scripts (its
/// create and update steps). `INFO commandstats` counts commands a script calls as well as the
/// `EVALSHA` itself, so the round trips per request are the commands minus these, whenever a
/// script ran. No system under test sends them at top level: Tessera's own commands are
/// `HGETALL`, `EVALSHA`/`EVAL` and `DEL`; tower-sessions sends `GET`, `SET` and `DEL`; rawget
/// sends `GET` and `SET`. `PTTL` runs only in the near cache's scripts, each followed by one
/// `HGETALL` (see `SCRIPT_READS`).
pub const SCRIPT_BODY_COMMANDS: &[&str] = &["exists", "hset", "hdel", "pexpire", "pttl"];

/// The near cache's scripts read the hash after `PTTL`: that many `HGETALL`s (at most one per
/// `PTTL`) ran inside scripts, not at top level.
pub(crate) const SCRIPT_READS: (&str, &str) = ("pttl", "hgetall");

/// Where Redis is.
pub(crate) enum Target {
    /// Started by us; killed on drop.
    Owned(RedisServer),
    /// Given on the command line.
    External(String),
}

impl Target {
    /// Uses `url`, or starts a fresh `redis-server` on a free loopback port.
    pub(crate) fn start(url: Option<&str>) -> Result<Self, Error> {
        if let Some(url) = url {
            return Ok(Target::External(url.to_owned()));
        }
        let probe = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|status| status.success()) {
            return Err(Error::new(
                "cannot run redis-server: install it (e.g. `apt-get install redis-server`) so \
                 that redis-server and redis-cli are on PATH, or pass --redis URL",
            ));
        }
        // The support module reports start-up failures by panicking (it is test code); turn that
        // into an error without printing the panic twice.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let started = catch_unwind(AssertUnwindSafe(RedisServer::start));
        std::panic::set_hook(hook);
        started.map(Target::Owned).map_err(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown failure".to_owned());
            Error::new(format!("could not start redis-server: {reason}"))
        })
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Target::Owned(server) => server.url(),
            Target::External(url) => url.clone(),
        }
    }

    pub(crate) fn is_owned(&self) -> bool {
        matches!(self, Target::Owned(_))
    }

    pub(crate) fn describe(&self) -> String {
        let version = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
            })
            .unwrap_or_else(|| "?".to_owned());
        match self {
            Target::Owned(server) => {
                format!(
                    "own redis-server {version} on {} (no persistence)",
                    server.addr()
                )
            }
            Target::External(_) => "external Redis from --redis".to_owned(),
        }
    }
}

/// Redis's counters at one moment.
pub(crate) struct Snapshot {
    /// Calls per command since the server started.
    pub(crate) commands: HashMap<String, u64>,
    /// CPU time the server has used (user plus system; its main thread and helpers).
    pub(crate) cpu: Duration,
}

/// `used_cpu_sys` plus `used_cpu_user` from `INFO cpu`.
fn parse_cpu(info: &str) -> Duration {
    let secs: f64 = info
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user").then(|| value.parse::<f64>().ok())?
        })
        .sum();
    Duration::from_secs_f64(secs.max(0.0))
}

/// A connection for reading counters.
pub(crate) struct Stats {
    client: Client,
}

impl Stats {
    pub(crate) async fn connect(url: &str) -> Result<Self, Error> {
        let config = Config::from_url(url)
            .map_err(|err| Error::new(format!("invalid Redis URL {url:?}: {err}")))?;
        let client = Builder::from_config(config)
            .build()
            .map_err(|err| Error::new(format!("cannot build a Redis client: {err}")))?;
        client.connect();
        tokio::time::timeout(Duration::from_secs(5), client.wait_for_connect())
            .await
            .map_err(|_| Error::new(format!("could not connect to Redis at {url} within 5 s")))?
            .map_err(|err| Error::new(format!("could not connect to Redis at {url}: {err}")))?;
        Ok(Stats { client })
    }

    /// Calls per command since the server started (or its last `CONFIG RESETSTAT`).
    pub(crate) async fn snapshot(&self) -> Result<Snapshot, Error> {
        let text: String = self
            .client
            .info(Some(InfoKind::CommandStats))
            .await
            .map_err(|err| Error::new(format!("INFO commandstats failed: {err}")))?;
        let cpu: String = self
            .client
            .info(Some(InfoKind::Cpu))
            .await
            .map_err(|err| Error::new(format!("INFO cpu failed: {err}")))?;
        Ok(Snapshot {
            commands: parse_command_stats(&text),
            cpu: parse_cpu(&cpu),
        })
    }

    pub(crate) async fn flushall(&self) -> Result<(), Error> {
        self.client
            .flushall::<()>(false)
            .await
            .map_err(|err| Error::new(format!("FLUSHALL failed: {err}")))
    }

    pub(crate) async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}

/// Calls per command between two snapshots, without the harness's own commands and without
/// commands that were not called.
pub(crate) fn delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| {
            let base = name.split('|').next().unwrap_or(name);
            !HARNESS_COMMANDS.contains(&base)
        })
        .filter_map(|(name, &calls)| {
            let diff = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
            (diff > 0).then(|| (name.clone(), diff))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_leave_out_the_harness() {
        let before = parse_command_stats(
            "# Commandstats\r\ncmdstat_get:calls=10,usec=1\r\ncmdstat_info:calls=1,usec=1\r\n",
        );
        let after = parse_command_stats(
            "cmdstat_get:calls=25,usec=1\r\ncmdstat_info:calls=3,usec=1\r\n\
             cmdstat_client|setname:calls=2,usec=1\r\ncmdstat_evalsha:calls=4,usec=1\r\n",
        );
        let d = delta(&before, &after);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![("evalsha".to_owned(), 4), ("get".to_owned(), 15)]
        );
    }
}
