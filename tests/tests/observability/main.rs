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

mod deploy;
mod load;
mod prometheus;

use deploy::*;
use load::*;
use prometheus::*;

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
