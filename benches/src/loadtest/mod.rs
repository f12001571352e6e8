//! The load benchmark: Tessera's demo service on a real `redis-server`, measured over keep-alive
//! HTTP/1.1 next to two baselines in the same process and with the same client.
//!
//! * `tessera`: [`tessera_demo::build_app`] served by
//!   [`tessera_demo::serve`], on a Redis engine built by
//!   [`tessera_demo::build_engine`].
//! * `rawget`: the same hyper server with a handler that does exactly one Redis command per
//!   request (`GET` for `read`, `SET` for `write` and `new`): the one-round-trip limit.
//! * `tower-sessions`: `tower-sessions` 0.14 with `tower-sessions-redis-store` 0.16 (signed
//!   cookies, inactivity expiry) on the same server; its `read` never renews the expiry.
//!
//! Scenarios: `new` (no cookie, `GET /` creates a session), `read` (an established cookie,
//! `GET /views`) and `write` (an established cookie, `GET /` increments a counter). `read` and
//! `write` rotate over a pool of sessions created through the system's own `GET /` beforehand;
//! every connection owns a disjoint share of the pool, so no two requests race on one session.
//!
//! Redis commands per request come from `INFO commandstats` deltas taken at the start and the end
//! of the measured window; the harness's own commands are left out (see [`HARNESS_COMMANDS`]).
//!
//! ```no_run
//! use tessera_benches::loadtest::{run, Config};
//!
//! let report = run(&Config::quick()).unwrap();
//! print!("{}", report.table());
//! ```

mod client;
mod config;
mod redis;
mod report;
mod systems;

pub use systems::tower_sessions_handler;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use self::report::Cpu;
pub use self::{
    config::{Args, Config, Error, Scenario, System},
    redis::{HARNESS_COMMANDS, SCRIPT_BODY_COMMANDS},
    report::{Measurement, Report},
};

/// Runs every configured system through every configured scenario and returns the measurements.
/// Starts (and always stops again) its own `redis-server` unless `config.redis` is set. Writes
/// the SVG chart when `config.svg` is set.
pub fn run(config: &Config) -> Result<Report, Error> {
    config.validate()?;
    // Declared first so it is dropped (the server killed) last, after the runtimes that talk to it.
    let redis = redis::Target::start(config.redis.as_deref())?;
    let server_rt = runtime(SERVER_THREADS, config.server_threads)?;
    let client_rt = runtime("lt-client", config.client_threads)?;
    let result = run_on(config, &redis, &server_rt, &client_rt);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    let report = result?;
    if let Some(path) = &config.svg {
        report.write_svg(path)?;
    }
    drop(redis);
    Ok(report)
}

/// Serves every configured system until `shutdown` completes (the binary passes Ctrl-C), for an
/// outside load tool: each on its own loopback port, on the same Redis, server runtime and
/// recorder setting as [`run`] uses, with `config.sessions` established cookies per system
/// written to `dir/cookies-<system>.txt`. `on_ready` gets one line per system (name, base URL,
/// cookie file) once all are up; `shutdown` is awaited after that, on the server runtime.
pub fn serve<F>(
    config: &Config,
    dir: &std::path::Path,
    on_ready: impl FnOnce(&[String]),
    shutdown: F,
) -> Result<(), Error>
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    config.validate()?;
    let redis = redis::Target::start(config.redis.as_deref())?;
    let server_rt = runtime(SERVER_THREADS, config.server_threads)?;
    let result = server_rt.block_on(async {
        std::fs::create_dir_all(dir)
            .map_err(|err| Error::new(format!("cannot create {}: {err}", dir.display())))?;
        let mut lines = Vec::new();
        let mut servers = Vec::new();
        for &system in &config.systems {
            let server = systems::start(system, &redis.url(), config.metrics).await?;
            let cookies = client::prime(server.addr, config.sessions, config.connections)
                .await
                .map_err(|err| Error::new(format!("{system}: creating sessions failed: {err}")))?;
            let file = dir.join(format!("cookies-{system}.txt"));
            std::fs::write(&file, cookies.join("\n") + "\n")
                .map_err(|err| Error::new(format!("cannot write {}: {err}", file.display())))?;
            lines.push(format!(
                "{system} http://{} {}",
                server.addr,
                file.display()
            ));
            servers.push(server);
        }
        on_ready(&lines);
        let stopped = shutdown.await;
        for server in servers {
            server.stop();
        }
        stopped
    });
    server_rt.shutdown_timeout(Duration::from_secs(2));
    drop(redis);
    result
}

fn runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|err| Error::new(format!("cannot start a tokio runtime: {err}")))
}

fn run_on(
    config: &Config,
    redis: &redis::Target,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> Result<Report, Error> {
    let url = redis.url();
    let stats = server_rt.block_on(redis::Stats::connect(&url))?;
    if redis.is_owned() {
        // Start from an empty keyspace on our own server (a given server is never flushed).
        server_rt.block_on(stats.flushall())?;
    }
    // Every system serves at once (idle ones cost nothing), so each scenario measures the systems
    // back to back and slow drifts of the machine hit them alike.
    let mut servers = Vec::new();
    for &system in &config.systems {
        let server = server_rt.block_on(systems::start(system, &url, config.metrics))?;
        let cookies = if config.scenarios.iter().any(|s| s.uses_cookies()) {
            client_rt
                .block_on(client::prime(
                    server.addr,
                    config.sessions,
                    config.connections,
                ))
                .map_err(|err| {
                    Error::new(format!(
                        "{system}: creating {} sessions before the run failed: {err}",
                        config.sessions
                    ))
                })?
        } else {
            Vec::new()
        };
        servers.push((system, server, cookies));
    }
    let mut measurements = Vec::new();
    for round in 0..config.rounds {
        for &scenario in &config.scenarios {
            // Later rounds rotate the order, so no system always goes first.
            for i in 0..servers.len() {
                let (system, server, cookies) = &servers[(i + round) % servers.len()];
                let mut measurement = measure(
                    config,
                    *system,
                    scenario,
                    server.addr,
                    cookies,
                    &stats,
                    server_rt,
                    client_rt,
                )?;
                measurement.round = round;
                measurements.push(measurement);
            }
        }
    }
    for (_, server, _) in servers {
        server.stop();
    }
    server_rt.block_on(stats.quit());
    Ok(Report::new(measurements, describe(config, redis)))
}

fn describe(config: &Config, redis: &redis::Target) -> String {
    format!(
        "{} connections, {:.1} s measured after {:.1} s warm-up per scenario, {} round(s), {} \
         pre-created sessions, server runtime {} threads, client runtime {} threads, {} cores, {}, \
         Prometheus recorder {}",
        config.connections,
        config.duration.as_secs_f64(),
        config.warmup.as_secs_f64(),
        config.rounds,
        config.sessions,
        config.server_threads,
        config.client_threads,
        std::thread::available_parallelism().map_or(0, usize::from),
        redis.describe(),
        if config.metrics { "on" } else { "off" },
    )
}

#[allow(clippy::too_many_arguments)]
fn measure(
    config: &Config,
    system: System,
    scenario: Scenario,
    addr: std::net::SocketAddr,
    cookies: &[String],
    stats: &redis::Stats,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> Result<Measurement, Error> {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(if scenario.uses_cookies() {
        cookies
            .iter()
            .map(|cookie| client::request(addr, scenario.path(), Some(cookie)))
            .collect()
    } else {
        vec![client::request(addr, scenario.path(), None)]
    });
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let warm_end = start + config.warmup;
    let end = warm_end + config.duration;
    let workers: Vec<_> = (0..config.connections)
        .map(|worker| {
            client_rt.spawn(client::worker(client::Plan {
                addr,
                requests: requests.clone(),
                worker,
                workers: config.connections,
                warm_end,
                end,
                completed: completed.clone(),
            }))
        })
        .collect();

    let bar = progress_bar(config, system, scenario);
    let total_ms = (end - start).as_millis() as u64;
    let mut before = None;
    loop {
        let now = Instant::now();
        if before.is_none() && now >= warm_end {
            before = Some((
                server_rt.block_on(stats.snapshot())?,
                threads_cpu(SERVER_THREADS),
            ));
        }
        if now >= end {
            break;
        }
        bar.set_position((now - start).as_millis() as u64);
        if now < warm_end {
            bar.set_message("warm-up");
        } else {
            let rate =
                completed.load(Ordering::Relaxed) as f64 / (now - warm_end).as_secs_f64().max(1e-3);
            bar.set_message(format!("{rate:>8.0} req/s"));
        }
        let next = if before.is_none() { warm_end } else { end };
        std::thread::sleep((next - now).min(Duration::from_millis(100)));
    }
    let after = server_rt.block_on(stats.snapshot())?;
    let server_cpu_after = threads_cpu(SERVER_THREADS);
    bar.set_position(total_ms);
    bar.finish_and_clear();

    let mut merged = client::WorkerResult::new();
    for handle in workers {
        let result = client_rt
            .block_on(handle)
            .map_err(|err| Error::new(format!("a load client task failed: {err}")))?;
        merged.merge(result);
    }
    let (before, server_cpu_before) = before.expect("the snapshot is taken once the warm-up ends");
    let cpu = Cpu {
        server: server_cpu_after
            .zip(server_cpu_before)
            .map(|(a, b)| a.saturating_sub(b)),
        redis: after.cpu.saturating_sub(before.cpu),
    };
    Ok(Measurement::new(
        system,
        scenario,
        config.duration,
        &merged,
        redis::delta(&before.commands, &after.commands),
        cpu,
    ))
}

/// The name of the servers' runtime threads, by which their CPU time is found.
const SERVER_THREADS: &str = "lt-server";

/// CPU time (user plus system) used so far by this process's threads named `name`, from
/// `/proc/self/task/*/stat` in clock ticks of 10 ms; `None` where that is not readable.
fn threads_cpu(name: &str) -> Option<Duration> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so split at the last parenthesis.
        let (head, rest) = stat.rsplit_once(')')?;
        if head.split_once('(')?.1 != name {
            continue;
        }
        // After the comm: state is field 3, utime field 14 and stime field 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 10))
}

fn progress_bar(config: &Config, system: System, scenario: Scenario) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let total = (config.warmup + config.duration).as_millis() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:40.cyan/blue}] {elapsed:>3} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{system} {scenario}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_time_of_named_threads() {
        let spin = std::thread::Builder::new()
            .name("lt-test-spin".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                threads_cpu("lt-test-spin")
            })
            .unwrap();
        let used = spin.join().unwrap().expect("/proc is readable on Linux");
        assert!(used >= Duration::from_millis(100), "{used:?}");
        assert_eq!(threads_cpu("no-such-thread"), Some(Duration::ZERO));
    }
}
