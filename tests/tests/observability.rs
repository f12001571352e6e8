//! Observability end to end: the demo on a real Redis, its `/metrics` text linted by
//! `promtool check metrics`, scraped by a real Prometheus, and every expression of the Grafana
//! dashboard and of the alert rules in `deploy/` evaluated against the scraped data.
//!
//! Needs `/usr/bin/prometheus` and `/usr/bin/promtool` (`apt-get install prometheus`;
//! `tests/run.sh` installs it). Without them the tests fail, unless `TESSERA_SKIP_PROMETHEUS=1`.

use std::{
    collections::BTreeSet,
    env,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tessera_demo::{build_engine, DemoArgs};
use tessera_tests::{
    http::{DemoServer, HttpClient},
    support::{free_port, redis_cli, RedisServer},
};

const SKIP_ENV: &str = "TESSERA_SKIP_PROMETHEUS";
const COOKIE: &str = "koa:sess";
const SECRET: &str = "observability test secret, long enough to sign with";
/// Replaces Grafana's `$__rate_interval` / `$__interval`: with a 1 s scrape interval a 30 s
/// window holds plenty of samples for `rate()`.
const WINDOW: &str = "30s";
const SCRAPE_INTERVAL: &str = "1s";
/// Scrapes to wait for before querying: `rate()` needs two samples per window, histograms a few.
const MIN_SCRAPES: f64 = 5.0;
const PROMETHEUS_START_TIMEOUT: Duration = Duration::from_secs(20);
const SCRAPE_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Alerts that must stay quiet while everything is healthy.
const QUIET_ALERTS: &[&str] = &[
    "TesseraDown",
    "TesseraStoreDown",
    "TesseraHighErrorRatio",
    "TesseraNearCacheBypassed",
];

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

struct Tools {
    prometheus: PathBuf,
    promtool: PathBuf,
}

/// `/usr/bin/<name>` (the Debian package), else the first `<name>` on `PATH`.
fn find_tool(name: &str) -> Option<PathBuf> {
    let debian = Path::new("/usr/bin").join(name);
    if debian.is_file() {
        return Some(debian);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The Prometheus binaries, `None` when the test is to be skipped; panics when they are missing.
fn tools(test: &str) -> Option<Tools> {
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

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("deploy")
}

/// Runs `promtool <args>` with `stdin` as its input and panics with its output on failure.
fn promtool(tools: &Tools, args: &[&str], stdin: Option<&str>) -> String {
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
const WRAPPER: &str = r#"
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
struct Prometheus {
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
    async fn start(tools: &Tools, client: &HttpClient, target: SocketAddr) -> Self {
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`; panics unless the answer is JSON with `"status": "success"`.
    async fn api(&self, client: &HttpClient, path: &str) -> Value {
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
    async fn query(&self, client: &HttpClient, promql: &str) -> Vec<Value> {
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

fn url_encode(text: &str) -> String {
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
fn sample_values(result: &[Value]) -> Vec<f64> {
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

// ---------------------------------------------------------------------------------------------
// Expressions from deploy/
// ---------------------------------------------------------------------------------------------

/// Every `targets[].expr` of every panel (rows' nested panels included), with Grafana's interval
/// macros and the dashboard's template variables replaced by concrete values: `(panel title,
/// expression)`.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = deploy_dir().join("grafana/dashboards/tessera.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));

    let mut substitutions: Vec<(String, String)> = Vec::new();
    for name in ["__rate_interval", "__interval", "__range"] {
        substitutions.push((format!("${{{name}}}"), WINDOW.to_owned()));
        substitutions.push((format!("${name}"), WINDOW.to_owned()));
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().expect("template variables have names");
        if var["type"] == "datasource" {
            continue; // used in `datasource` fields, never in expressions
        }
        let all = var["allValue"].as_str().unwrap_or(".*").to_owned();
        for pattern in [
            format!("${{{name}}}"),
            format!("[[{name}]]"),
            format!("${name}"),
        ] {
            substitutions.push((pattern, all.clone()));
        }
    }

    fn walk(panels: &Value, subs: &[(String, String)], out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let mut expr = expr.to_owned();
                    for (pattern, value) in subs {
                        expr = expr.replace(pattern, value);
                    }
                    assert!(
                        !expr.contains('$'),
                        "panel {title:?}: unknown variable left in {expr:?}"
                    );
                    out.push((title.clone(), expr));
                }
            }
            walk(&panel["panels"], subs, out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &substitutions, &mut out);
    out
}

/// The alert names declared in deploy/prometheus/alerts.yml (`- alert: Name` lines).
fn declared_alerts() -> BTreeSet<String> {
    let path = deploy_dir().join("prometheus/alerts.yml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Splits `<value> <comparison> <number>` at its top-level comparison and returns `<value>`;
/// comparisons inside parentheses, brackets, label matchers and strings are not top level.
fn strip_comparison(expr: &str) -> Option<&str> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut escaped) = (0usize, None::<u8>, false);
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' | b'`' => quote = Some(b),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'=' | b'!' | b'<' | b'>' if depth == 0 => {
                let two = bytes.get(i + 1) == Some(&b'=');
                if matches!(b, b'=' | b'!') && !two {
                    i += 1;
                    continue;
                }
                let len = if two { 2 } else { 1 };
                last = Some((i, i + len));
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let (start, end) = last?;
    let rhs = expr[end..].trim();
    let rhs = rhs.strip_prefix("bool").map_or(rhs, str::trim_start);
    rhs.parse::<f64>().ok()?;
    Some(expr[..start].trim())
}

#[test]
fn strip_comparison_finds_the_top_level_one() {
    assert_eq!(
        strip_comparison("up{job=\"x\"} == 0"),
        Some("up{job=\"x\"}")
    );
    assert_eq!(
        strip_comparison("(a{o!=\"ok\"} or b * 0) / c > 0.05"),
        Some("(a{o!=\"ok\"} or b * 0) / c")
    );
    assert_eq!(
        strip_comparison("histogram_quantile(0.99, sum by (le) (x{a=~\"<|>\"})) >= bool 1e-1"),
        Some("histogram_quantile(0.99, sum by (le) (x{a=~\"<|>\"}))")
    );
    assert_eq!(strip_comparison("sum(rate(x[5m]))"), None);
    assert_eq!(strip_comparison("a > b"), None);
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

fn cookie_of(answer: &tessera_tests::http::Answer) -> Option<String> {
    answer
        .cookie(COOKIE)
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={value}"))
}

/// The signature's first character changed: well-formed, but signed by no key.
fn forged(cookie: &str) -> String {
    let (name_and_id, sig) = cookie.split_once('.').expect("signed cookies have a '.'");
    let mut sig = sig.to_owned();
    let first = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, first);
    format!("{name_and_id}.{sig}")
}

/// One visitor: creates, updates, reads, logs in (regenerate), sometimes logs out and comes back
/// with the dead cookie (a load miss), and sends forged, malformed and oversized cookies.
/// About 15 requests.
async fn visit(client: &HttpClient, addr: SocketAddr, n: usize) -> Result<(), String> {
    async fn expect(
        client: &HttpClient,
        addr: SocketAddr,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: &str,
        status: StatusCode,
    ) -> Result<tessera_tests::http::Answer, String> {
        let answer = client
            .send(addr, method.clone(), path, cookie, body)
            .await?;
        if answer.status != status {
            return Err(format!(
                "{method} {path}: expected {status}, got {} ({})",
                answer.status, answer.body
            ));
        }
        Ok(answer)
    }
    use Method as M;
    use StatusCode as S;

    let first = expect(client, addr, M::GET, "/", None, "", S::OK).await?;
    let cookie = cookie_of(&first).ok_or("a new session sets a cookie")?;
    let c = Some(cookie.as_str());
    for _ in 0..2 {
        expect(client, addr, M::GET, "/", c, "", S::OK).await?; // update
    }
    for _ in 0..2 {
        expect(client, addr, M::GET, "/views", c, "", S::OK).await?; // hit, skipped
    }
    let cart = format!(
        "{{\"items\":[{}]}}",
        (0..n % 40)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    expect(
        client,
        addr,
        M::PUT,
        "/session/cart",
        c,
        &cart,
        S::NO_CONTENT,
    )
    .await?;
    expect(client, addr, M::GET, "/session", c, "", S::OK).await?;
    if n.is_multiple_of(3) {
        expect(
            client,
            addr,
            M::DELETE,
            "/session/cart",
            c,
            "",
            S::NO_CONTENT,
        )
        .await?;
    }
    let login = expect(
        client,
        addr,
        M::POST,
        &format!("/login?user=user{n}"),
        c,
        "",
        S::OK,
    )
    .await?;
    let cookie = cookie_of(&login).ok_or("login re-issues the cookie")?;
    let c = Some(cookie.as_str());
    expect(client, addr, M::GET, "/views", c, "", S::OK).await?;
    // Per-user operations: a second device, listed and revoked; log out everywhere else.
    if n % 4 == 1 {
        let path = format!("/login?user=user{n}");
        let other = expect(client, addr, M::POST, &path, None, "", S::OK).await?;
        let other = cookie_of(&other).ok_or("a login sets the cookie")?;
        let list = expect(client, addr, M::GET, "/devices", c, "", S::OK).await?;
        let devices: serde_json::Value =
            serde_json::from_str(&list.body).map_err(|e| e.to_string())?;
        let handle = devices
            .as_array()
            .and_then(|d| d.iter().find(|d| d["current"] == false))
            .and_then(|d| d["handle"].as_str())
            .ok_or("the second device is listed")?
            .to_owned();
        let path = format!("/devices/{handle}");
        expect(client, addr, M::DELETE, &path, c, "", S::NO_CONTENT).await?;
        expect(
            client,
            addr,
            M::GET,
            "/devices",
            Some(&other),
            "",
            S::UNAUTHORIZED,
        )
        .await?;
    } else if n % 4 == 2 {
        let path = "/logout-everywhere?keep=current";
        expect(client, addr, M::POST, path, c, "", S::NO_CONTENT).await?;
    }
    if n.is_multiple_of(4) {
        expect(client, addr, M::POST, "/logout", c, "", S::NO_CONTENT).await?;
        // The cookie still verifies, but the session is gone: a miss.
        expect(client, addr, M::GET, "/views", c, "", S::OK).await?;
    }
    let bad = forged(&cookie);
    expect(client, addr, M::GET, "/views", Some(&bad), "", S::OK).await?;
    if n.is_multiple_of(2) {
        let malformed = format!("{COOKIE}=not-a-session-id");
        expect(client, addr, M::GET, "/views", Some(&malformed), "", S::OK).await?;
    } else {
        let oversized = format!("{COOKIE}={}", "x".repeat(200));
        expect(client, addr, M::GET, "/views", Some(&oversized), "", S::OK).await?;
    }
    expect(client, addr, M::GET, "/healthz", None, "", S::OK).await?;
    Ok(())
}

/// `visitors` concurrent visits numbered from `first`.
async fn load(client: &HttpClient, addr: SocketAddr, first: usize, visitors: usize) {
    let tasks: Vec<_> = (first..first + visitors)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { visit(&client, addr, n).await })
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await.expect("visit task") {
            panic!("load request failed: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The files in deploy/prometheus pass promtool: config (with its rule and target files), rules,
/// and the alert unit tests.
#[test]
fn deploy_prometheus_files_pass_promtool() {
    let Some(tools) = tools("deploy_prometheus_files_pass_promtool") else {
        return;
    };
    promtool(
        &tools,
        &["check", "config", "prometheus/prometheus.yml"],
        None,
    );
    let rules = promtool(&tools, &["check", "rules", "prometheus/alerts.yml"], None);
    let declared = declared_alerts();
    assert!(
        rules.contains(&format!("SUCCESS: {} rules found", declared.len())),
        "promtool found a different number of rules than the {} declared: {rules}",
        declared.len()
    );
    promtool(
        &tools,
        &["test", "rules", "prometheus/alerts_test.yml"],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_alert_expressions_have_data() {
    let Some(tools) = tools("dashboard_and_alert_expressions_have_data") else {
        return;
    };
    let dashboard = dashboard_expressions();
    assert!(
        dashboard.len() >= 8,
        "the dashboard has only {} expressions",
        dashboard.len()
    );
    let declared = declared_alerts();
    assert!(!declared.is_empty(), "alerts.yml declares no alerts");

    // (a) The demo on a real Redis, with the Prometheus recorder and the near cache.
    let redis = RedisServer::start();
    let args = DemoArgs::for_tests()
        .with_redis(redis.url())
        .with_secrets(vec![SECRET.to_owned()])
        .with_near_cache(10_000);
    let engine = build_engine(&args).await.expect("connect to Redis");
    let server = DemoServer::start(engine, &args).await;
    let addr = server.addr();
    let client = HttpClient::new();

    // (b) A few hundred requests of every kind, a FLUSHALL (which flushes the near cache), and
    // more requests.
    load(&client, addr, 0, 30).await;
    redis_cli(redis.port(), &["FLUSHALL"]);
    load(&client, addr, 100, 10).await;

    // (c) The exposition text is valid and lint-clean, and has the series the load must produce.
    let metrics = client.get(addr, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.body);
    promtool(&tools, &["check", "metrics"], Some(&metrics.body));
    for series in [
        "tessera_http_requests_total{outcome=\"ok\"}",
        "tessera_session_loads_total{outcome=\"hit\"}",
        "tessera_session_loads_total{outcome=\"miss\"}",
        "tessera_session_writes_total{op=\"create\",outcome=\"ok\"}",
        "tessera_session_writes_total{op=\"update\",outcome=\"ok\"}",
        "tessera_session_writes_total{op=\"regenerate\",outcome=\"ok\"}",
        "tessera_session_writes_total{op=\"destroy\",outcome=\"ok\"}",
        "tessera_session_writes_skipped_total",
        "tessera_user_index_operations_total{op=\"login\",outcome=\"ok\"}",
        "tessera_user_index_operations_total{op=\"list\",outcome=\"ok\"}",
        "tessera_user_index_operations_total{op=\"revoke_all\",outcome=\"ok\"}",
        "tessera_session_revocations_total{reason=\"revoke\"}",
        "tessera_http_rejected_cookies_total{reason=\"bad_signature\"}",
        "tessera_http_rejected_cookies_total{reason=\"malformed\"}",
        "tessera_http_rejected_cookies_total{reason=\"oversized\"}",
        "tessera_store_operation_duration_seconds_bucket{op=\"ping\",outcome=\"ok\",le=",
        "tessera_session_size_bytes_bucket{le=",
        "tessera_http_middleware_duration_seconds_bucket{le=",
    ] {
        assert!(
            metrics.body.contains(series),
            "/metrics lacks {series}:\n{}",
            metrics.body
        );
    }

    // (d) Prometheus scrapes the demo every second while the load goes on.
    let prometheus = Prometheus::start(&tools, &client, addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 1000;
            while !stop.load(Ordering::Relaxed) {
                load(&client, addr, n, 4).await;
                n += 4;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let deadline = Instant::now() + SCRAPE_WAIT_TIMEOUT;
    let scrapes = "count_over_time(up{job=\"tessera\"}[1m])";
    loop {
        let up = sample_values(&prometheus.query(&client, "up{job=\"tessera\"}").await);
        let count = sample_values(&prometheus.query(&client, scrapes).await);
        let rules = prometheus.api(&client, "rules").await;
        let evaluated = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .all(|r| r["health"] != "unknown");
        if up == [1.0] && count.first().is_some_and(|c| *c >= MIN_SCRAPES) && evaluated {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the demo {MIN_SCRAPES} times within \
             {SCRAPE_WAIT_TIMEOUT:?} (up = {up:?}, scrapes = {count:?}, rules evaluated = \
             {evaluated}):\n{}",
            prometheus.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // (e) Every dashboard expression has data, with at least one finite value.
    let mut failures = Vec::new();
    for (title, expr) in &dashboard {
        let result = prometheus.query(&client, expr).await;
        let values = sample_values(&result);
        if !values.iter().any(|v| v.is_finite()) {
            failures.push(format!(
                "panel {title:?}: {expr}\n  -> {}",
                serde_json::to_string(&result).unwrap()
            ));
        }
    }

    // Every alert rule loaded and evaluated without error; its expression parses and evaluates,
    // and its value (the comparison stripped) has data.
    let rules = prometheus.api(&client, "rules").await;
    let alerting: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "alerting")
        .collect();
    let loaded: BTreeSet<String> = alerting
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        loaded, declared,
        "Prometheus loaded other alerts than alerts.yml declares"
    );
    for rule in &alerting {
        let name = rule["name"].as_str().unwrap_or("?");
        let query = rule["query"].as_str().expect("alerting rules have a query");
        if rule["health"] != "ok" {
            failures.push(format!(
                "alert {name}: health {} ({})",
                rule["health"], rule["lastError"]
            ));
            continue;
        }
        let firing = prometheus.query(&client, query).await;
        if QUIET_ALERTS.contains(&name) && !firing.is_empty() {
            failures.push(format!(
                "alert {name} fires on a healthy system: {query}\n  -> {}",
                serde_json::to_string(&firing).unwrap()
            ));
        }
        let Some(value) = strip_comparison(query) else {
            failures.push(format!(
                "alert {name}: not of the form `<value> <comparison> <number>`: {query}"
            ));
            continue;
        };
        let result = prometheus.query(&client, value).await;
        if !sample_values(&result).iter().any(|v| v.is_finite()) {
            failures.push(format!(
                "alert {name}: its value has no data: {value}\n  -> {}",
                serde_json::to_string(&result).unwrap()
            ));
        }
    }

    stop.store(true, Ordering::Relaxed);
    background.await.expect("background load");
    drop(prometheus);
    drop(server);
    drop(redis);
    assert!(
        failures.is_empty(),
        "{} expression(s) without data or in error:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "checked {} dashboard expressions and {} alert rules against Prometheus",
        dashboard.len(),
        alerting.len()
    );
}
