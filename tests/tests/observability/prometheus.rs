//! The Prometheus tools and a Prometheus child process for the observability tests.

use super::*;

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

pub(crate) struct Tools {
    prometheus: PathBuf,
    promtool: PathBuf,
}

/// `/usr/bin/<name>` (the Debian package), else the first `<name>` on `PATH`.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let debian = Path::new("/usr/bin").join(name);
    if debian.is_file() {
        return Some(debian);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The Prometheus binaries, `None` when the test is to be skipped; panics when they are missing.
pub(crate) fn tools(test: &str) -> Option<Tools> {
    if env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!(
            "\n{bar}\n!!! {test}: SKIPPED because {SKIP_ENV}=1.\n!!! The Prometheus dashboard \
             and alert expressions in deploy/ were NOT checked.\n{bar}\n",
            bar = "!".repeat(78)
        );
        return None;
    }
    match (find_tool("prometheus"), find_tool("promtool")) {
        (Some(prometheus), Some(promtool)) => Some(Tools {
            prometheus,
            promtool,
        }),
        (prometheus, promtool) => panic!(
            "{test} needs Prometheus: prometheus {}, promtool {}. Install it with \
             `apt-get install prometheus` (tests/run.sh does this when run as root), or set \
             {SKIP_ENV}=1 to skip these checks.",
            if prometheus.is_some() {
                "found"
            } else {
                "NOT FOUND"
            },
            if promtool.is_some() {
                "found"
            } else {
                "NOT FOUND"
            },
        ),
    }
}

pub(crate) fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("deploy")
}

/// Runs `promtool <args>` with `stdin` as its input and panics with its output on failure.
pub(crate) fn promtool(tools: &Tools, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(&tools.promtool)
        .args(args)
        .current_dir(deploy_dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.promtool.display()));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .expect("write to promtool's stdin");
    }
    let output = child.wait_with_output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    text
}

// ---------------------------------------------------------------------------------------------
// Prometheus as a child process
// ---------------------------------------------------------------------------------------------

/// Runs `"$@"` (Prometheus) in the background and kills it once our end of the stdin pipe closes,
/// which happens on drop and also when the test process dies in any other way; exits with its
/// status when it ends by itself (e.g. on a lost port race).
pub(crate) const WRAPPER: &str = r#"
exec 3<&0
"$@" 3<&- </dev/null &
pid=$!
(
  read -r _ <&3
  kill -TERM "$pid" 2>/dev/null
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null
) &
watcher=$!
exec 3<&-
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// Prometheus on `127.0.0.1:<free port>` with its own config and TSDB in a temporary directory.
pub(crate) struct Prometheus {
    addr: SocketAddr,
    wrapper: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    /// Declared last: removed after the process is gone.
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` as job `tessera` every second, with deploy's alert
    /// rules, and waits until it is ready. Retries on another port if the port was taken.
    pub(crate) async fn start(tools: &Tools, client: &HttpClient, target: SocketAddr) -> Self {
        let alerts = deploy_dir().join("prometheus/alerts.yml");
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("tessera-prometheus-")
                .tempdir()
                .expect("temporary directory");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n  \
                     evaluation_interval: {SCRAPE_INTERVAL}\n\
                     rule_files:\n  - {alerts}\n\
                     scrape_configs:\n  - job_name: tessera\n    static_configs:\n      \
                     - targets: ['{target}']\n",
                    alerts = alerts.display()
                ),
            )
            .expect("write prometheus.yml");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = dir.path().join("prometheus.log");
            let log_file = std::fs::File::create(&log).expect("create the log");
            let mut wrapper = Command::new("sh")
                .arg("-c")
                .arg(WRAPPER)
                .arg("prometheus-wrapper")
                .arg(&tools.prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::piped())
                .stdout(log_file.try_clone().expect("log handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.prometheus.display()));
            let stdin = wrapper.stdin.take();
            let mut prometheus = Prometheus {
                addr,
                wrapper: Some(wrapper),
                stdin,
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + PROMETHEUS_START_TIMEOUT;
            loop {
                let ready = client
                    .send(addr, Method::GET, "/-/ready", None, "")
                    .await
                    .is_ok_and(|a| a.status == StatusCode::OK);
                if ready {
                    return prometheus;
                }
                let exited = prometheus
                    .wrapper
                    .as_mut()
                    .and_then(|w| w.try_wait().ok().flatten());
                if let Some(status) = exited {
                    last_log = prometheus.log_text();
                    prometheus.wrapper = None;
                    if last_log.contains("address already in use") {
                        break; // lost the port race: try another port
                    }
                    panic!("Prometheus exited ({status}) during start-up:\n{last_log}");
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus was not ready within {PROMETHEUS_START_TIMEOUT:?}:\n{}",
                    prometheus.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("Prometheus lost the race for its port 3 times:\n{last_log}");
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`; panics unless the answer is JSON with `"status": "success"`.
    pub(crate) async fn api(&self, client: &HttpClient, path: &str) -> Value {
        let answer = client
            .send(self.addr, Method::GET, &format!("/api/v1/{path}"), None, "")
            .await
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {e}"));
        let json: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {} is not JSON ({e})", answer.body));
        assert_eq!(
            json["status"], "success",
            "GET /api/v1/{path} answered {}: {json}",
            answer.status
        );
        json
    }

    /// Runs an instant query and returns its result vector.
    pub(crate) async fn query(&self, client: &HttpClient, promql: &str) -> Vec<Value> {
        let json = self
            .api(client, &format!("query?query={}", url_encode(promql)))
            .await;
        assert_eq!(
            json["data"]["resultType"], "vector",
            "query {promql:?} did not give an instant vector: {json}"
        );
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("query {promql:?}: no result array in {json}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Closing the pipe makes the wrapper terminate Prometheus (SIGKILL after 5 s).
        drop(self.stdin.take());
        if let Some(mut wrapper) = self.wrapper.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while wrapper.try_wait().ok().flatten().is_none() {
                if Instant::now() >= deadline {
                    let _ = wrapper.kill();
                    let _ = wrapper.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

pub(crate) fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first sample value of a query result as a number (`NaN` for non-numeric values).
pub(crate) fn sample_values(result: &[Value]) -> Vec<f64> {
    result
        .iter()
        .map(|series| {
            series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        })
        .collect()
}
