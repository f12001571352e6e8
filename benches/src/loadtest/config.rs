//! What a run measures and how: the scenarios, the systems, the command line and the
//! validated configuration, and the harness's error type.

use std::{fmt, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// A request pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// No cookie: `GET /` makes the handler populate a new session.
    New,
    /// An established cookie: `GET /views` reads the counter.
    Read,
    /// An established cookie: `GET /` increments the counter.
    Write,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 3] = [Scenario::New, Scenario::Read, Scenario::Write];

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::New => "new",
            Scenario::Read => "read",
            Scenario::Write => "write",
        }
    }

    pub(super) fn path(self) -> &'static str {
        match self {
            Scenario::New | Scenario::Write => "/",
            Scenario::Read => "/views",
        }
    }

    pub(super) fn uses_cookies(self) -> bool {
        !matches!(self, Scenario::New)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum System {
    /// The Tessera demo service.
    Tessera,
    /// The Tessera demo service with the near cache on.
    #[value(name = "tessera-cached")]
    TesseraCached,
    /// One raw Redis command per request.
    Rawget,
    /// `tower-sessions` with `tower-sessions-redis-store`.
    #[value(name = "tower-sessions")]
    TowerSessions,
    /// The same server stack with no Redis and no session at all: the ceiling.
    Hello,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 5] = [
        System::Tessera,
        System::TesseraCached,
        System::Rawget,
        System::TowerSessions,
        System::Hello,
    ];

    /// Whether this is one of Tessera's configurations (the ratios put them over the others).
    pub fn is_tessera(self) -> bool {
        matches!(self, System::Tessera | System::TesseraCached)
    }

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            System::Tessera => "tessera",
            System::Rawget => "rawget",
            System::TowerSessions => "tower-sessions",
            System::TesseraCached => "tessera-cached",
            System::Hello => "hello",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The command line of the `loadtest` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadtest",
    about = "Load benchmark: Tessera's demo vs one raw Redis command per request vs tower-sessions"
)]
pub struct Args {
    /// Use the standalone Redis at this URL instead of starting a redis-server (it is not
    /// flushed; INFO commandstats is read from it).
    #[arg(long)]
    pub redis: Option<String>,
    /// Concurrent keep-alive connections (one client task each).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Measured seconds per scenario and system.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "new,read,write"
    )]
    pub scenarios: Vec<Scenario>,
    /// Systems to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tessera,tessera-cached,rawget,tower-sessions,hello"
    )]
    pub systems: Vec<System>,
    /// Sessions created beforehand for `read` and `write` to rotate over.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Measure every scenario and system this many times (the systems in a rotating order) and
    /// report the median req/s.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Short smoke run: 1 s per scenario after 0.5 s of warm-up, 8 connections, 500 sessions,
    /// one round.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the SVG chart of req/s.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/out/loadtest.svg"))]
    pub svg: PathBuf,
    /// Worker threads of the servers' tokio runtime.
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Worker threads of the load client's tokio runtime.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Do not install the Prometheus recorder that the demo binary installs.
    #[arg(long)]
    pub no_metrics: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Measure nothing: serve every listed system on its own loopback port, write `--sessions`
    /// established cookies per system to `DIR/cookies-<system>.txt` (one `name=value` per line),
    /// print the addresses, and run until Ctrl-C. For driving the systems with an outside load
    /// tool; `benches/wrk/rotate.lua` rotates wrk over such a file.
    #[arg(long, value_name = "DIR")]
    pub serve: Option<PathBuf>,
}

/// What to run; see [`Args`] for the meaning of each field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Use this Redis instead of starting one.
    pub redis: Option<String>,
    /// Concurrent connections.
    pub connections: usize,
    /// Measured time per scenario and system.
    pub duration: Duration,
    /// Warm-up before each measurement.
    pub warmup: Duration,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Systems, in order.
    pub systems: Vec<System>,
    /// Pre-created sessions for `read` and `write`.
    pub sessions: usize,
    /// Repetitions of the whole matrix.
    pub rounds: usize,
    /// Server runtime worker threads.
    pub server_threads: usize,
    /// Client runtime worker threads.
    pub client_threads: usize,
    /// Install the Prometheus recorder (as the demo binary does).
    pub metrics: bool,
    /// Show a progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Where to write the SVG chart, if anywhere.
    pub svg: Option<PathBuf>,
    /// Serve instead of measuring, writing cookie files here (see [`serve`]).
    pub serve: Option<PathBuf>,
}

impl Default for Config {
    /// The defaults of the command line.
    fn default() -> Self {
        Config::from_args(Args::parse_from(["loadtest"]))
    }
}

impl Config {
    /// The `--quick` configuration: every scenario and system, 1 s each, 8 connections, no SVG.
    pub fn quick() -> Self {
        let mut config = Config::from_args(Args::parse_from(["loadtest", "--quick"]));
        config.svg = None;
        config
    }

    /// The configuration a command line describes.
    pub fn from_args(args: Args) -> Self {
        let mut config = Config {
            redis: args.redis,
            connections: args.connections,
            duration: secs(args.duration),
            warmup: secs(args.warmup),
            scenarios: dedup(args.scenarios),
            systems: dedup(args.systems),
            sessions: args.sessions,
            rounds: args.rounds,
            server_threads: args.server_threads,
            client_threads: args.client_threads,
            metrics: !args.no_metrics,
            progress: !args.no_progress,
            svg: Some(args.svg),
            serve: args.serve,
        };
        if args.quick {
            config.duration = Duration::from_secs(1);
            config.warmup = Duration::from_millis(500);
            config.connections = 8;
            config.sessions = config.sessions.min(500);
            config.rounds = 1;
        }
        config
    }

    /// Only these scenarios.
    pub fn with_scenarios(mut self, scenarios: &[Scenario]) -> Self {
        self.scenarios = dedup(scenarios.to_vec());
        self
    }

    /// Only these systems.
    pub fn with_systems(mut self, systems: &[System]) -> Self {
        self.systems = dedup(systems.to_vec());
        self
    }

    /// Measured time and warm-up per scenario.
    pub fn with_timing(mut self, duration: Duration, warmup: Duration) -> Self {
        self.duration = duration;
        self.warmup = warmup;
        self
    }

    /// Connection count and pre-created session count.
    pub fn with_load(mut self, connections: usize, sessions: usize) -> Self {
        self.connections = connections;
        self.sessions = sessions;
        self
    }

    /// Progress bar on or off.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Where the SVG goes (`None`: no SVG).
    pub fn with_svg(mut self, path: Option<PathBuf>) -> Self {
        self.svg = path;
        self
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        let problem = if self.connections == 0 {
            "--connections must be at least 1"
        } else if self.duration.is_zero() {
            "--duration must be positive"
        } else if self.scenarios.is_empty() {
            "--scenarios names no scenario"
        } else if self.systems.is_empty() {
            "--systems names no system"
        } else if self.sessions == 0 && self.scenarios.iter().any(|s| s.uses_cookies()) {
            "--sessions must be at least 1 for the read and write scenarios"
        } else if self.rounds == 0 {
            "--rounds must be at least 1"
        } else if self.server_threads == 0 || self.client_threads == 0 {
            "--server-threads and --client-threads must be at least 1"
        } else {
            return Ok(());
        };
        Err(Error::new(problem))
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// A set-up or run failure, with a message meant for the person running the benchmark.
#[derive(Debug, Clone)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let args = Args::try_parse_from([
            "loadtest",
            "--scenarios",
            "read,write,read",
            "--systems",
            "tower-sessions,rawget",
            "--connections",
            "16",
        ])
        .unwrap();
        let config = Config::from_args(args);
        assert_eq!(config.scenarios, [Scenario::Read, Scenario::Write]);
        assert_eq!(config.systems, [System::TowerSessions, System::Rawget]);
        assert_eq!(config.connections, 16);
        assert_eq!(config.duration, Duration::from_secs(10));
        assert!(Args::try_parse_from(["loadtest", "--systems", "redis"]).is_err());

        let quick = Config::quick();
        assert_eq!(quick.connections, 8);
        assert_eq!(quick.duration, Duration::from_secs(1));
        assert_eq!(quick.systems.len(), System::ALL.len());
        assert!(quick.svg.is_none());
        assert!(Config::quick().with_load(0, 1).validate().is_err());
    }
}
