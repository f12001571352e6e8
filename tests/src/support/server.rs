//! One `redis-server` process: started on a free port in its own directory, killed on drop.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use super::{
    info_field, last_lines, ports::free_port, read_from, reaper::reaper_note, try_redis_cli,
    LOG_TAIL_LINES, LOOPBACK, PING_INTERVAL, REDIS_SERVER, STARTUP_TIMEOUT,
};

/// Fresh starts that lose a bind race are retried on a new port this many times.
const PORT_ATTEMPTS: usize = 5;

/// Flags every server gets: loopback only, no persistence to slow things down, no fork delay
/// before diskless replication, and in the foreground so that the child PID *is* the server.
pub(super) fn base_args(port: u16, dir: &Path) -> Vec<String> {
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

pub(super) fn path_arg(path: &Path) -> String {
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
    pub(super) fn spawn_fresh(
        pick_port: fn() -> u16,
        prepare: &dyn Fn(u16, &Path) -> Vec<String>,
    ) -> Self {
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
