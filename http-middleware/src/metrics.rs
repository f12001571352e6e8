//! The middleware's metrics and the Prometheus helper. Labels take fixed values only.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Histogram};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    error::{ConfigError, ConfigErrorKind},
    signing::Rejection,
};

/// Counter: requests through the middleware, label `outcome` = `ok` | `store_error` (503 sent) |
/// `fail_open` (served without a saved session) | `too_large` (413 sent) | `failed` (another
/// commit error: 500, or 400 for an invalid field or id).
pub const REQUESTS_TOTAL: &str = "tessera_http_requests_total";
/// Histogram: time the middleware itself spent on a request (cookie handling and commit,
/// excluding the inner handler), in seconds.
pub const MIDDLEWARE_DURATION_SECONDS: &str = "tessera_http_middleware_duration_seconds";
/// Counter: ignored session cookies, label `reason` = `oversized` | `malformed` |
/// `bad_signature` | `non_ascii_value`.
pub const REJECTED_COOKIES_TOTAL: &str = "tessera_http_rejected_cookies_total";

/// Counter: requests that carried a koa-session-redis3 pair in upgrade mode, label `outcome` =
/// `moved` (this request moved the seed session) | `joined` (it joined the session another
/// request with the same pair moved) | `kept` (served in the seed's form: the native layout
/// cannot hold it) | `empty` (the pair named nothing to move).
pub const KOA_UPGRADE_TOTAL: &str = "tessera_koa_upgrade_total";

/// Latency buckets in seconds, from 50 µs to 5 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Size buckets in bytes, from 64 B to 64 KiB.
const BYTES_BUCKETS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// Registers descriptions of the middleware's and the engine's metrics.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests through the session middleware by outcome."
    );
    metrics::describe_histogram!(
        MIDDLEWARE_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time spent in the session middleware itself, handler excluded."
    );
    metrics::describe_counter!(REJECTED_COOKIES_TOTAL, "Ignored session cookies by reason.");
    metrics::describe_counter!(
        KOA_UPGRADE_TOTAL,
        "Requests with a koa-session-redis3 cookie pair in upgrade mode, by outcome."
    );
    tessera_engine::metrics::describe();
}

static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// Installs a Prometheus recorder as the global `metrics` recorder, with histogram buckets for
/// every `_seconds` and `_bytes` metric, and returns the handle whose
/// [`render`](PrometheusHandle::render) produces the `/metrics` text.
///
/// Calling it again returns the same handle; it fails if another recorder was installed first.
///
/// # Errors
///
/// A [`ConfigError`] of kind [`ConfigErrorKind::Metrics`] when another global recorder is
/// installed, or the upkeep thread cannot start.
pub fn install_prometheus_recorder() -> Result<PrometheusHandle, ConfigError> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|err| {
            ConfigError::new(
                ConfigErrorKind::Metrics,
                format!("could not install the Prometheus recorder: {err}"),
            )
        })?;
    describe();
    let upkeep = handle.clone();
    // Upkeep drains histogram buffers; without it memory grows between scrapes.
    std::thread::Builder::new()
        .name("tessera-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .map_err(|err| {
            ConfigError::new(ConfigErrorKind::Metrics, format!("upkeep thread: {err}"))
        })?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Values of the `outcome` label of [`REQUESTS_TOTAL`].
const REQUEST_OUTCOMES: [&str; 5] = ["ok", "store_error", "fail_open", "too_large", "failed"];
/// Values of the `outcome` label of [`KOA_UPGRADE_TOTAL`].
pub(crate) const UPGRADE_OUTCOMES: [&str; 4] = ["moved", "joined", "kept", "empty"];
/// Values of the `reason` label of [`REJECTED_COOKIES_TOTAL`].
const REJECTIONS: [Rejection; 4] = [
    Rejection::Oversized,
    Rejection::Malformed,
    Rejection::BadSignature,
    Rejection::NonAsciiValue,
];

/// One layer's metric handles, registered on first use and kept (see the engine's handles: the
/// same trade, the same rule of installing the recorder before serving).
#[derive(Debug, Default)]
pub(crate) struct Handles {
    requests: [OnceLock<Counter>; REQUEST_OUTCOMES.len()],
    duration: OnceLock<Histogram>,
    rejected: [OnceLock<Counter>; REJECTIONS.len()],
    upgrades: [OnceLock<Counter>; UPGRADE_OUTCOMES.len()],
}

impl Handles {
    pub(crate) fn request(&self, outcome: &'static str) {
        let i = REQUEST_OUTCOMES.iter().position(|o| *o == outcome);
        debug_assert!(i.is_some(), "unknown request outcome {outcome:?}");
        self.requests[i.unwrap_or(0)]
            .get_or_init(|| metrics::counter!(REQUESTS_TOTAL, "outcome" => outcome))
            .increment(1);
    }

    pub(crate) fn middleware_duration(&self, elapsed: Duration) {
        self.duration
            .get_or_init(|| metrics::histogram!(MIDDLEWARE_DURATION_SECONDS))
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn upgrade(&self, outcome: &'static str) {
        let i = UPGRADE_OUTCOMES.iter().position(|o| *o == outcome);
        debug_assert!(i.is_some(), "unknown upgrade outcome {outcome:?}");
        self.upgrades[i.unwrap_or(0)]
            .get_or_init(|| metrics::counter!(KOA_UPGRADE_TOTAL, "outcome" => outcome))
            .increment(1);
    }

    pub(crate) fn rejected_cookie(&self, reason: Rejection) {
        let i = REJECTIONS.iter().position(|r| *r == reason);
        debug_assert!(i.is_some(), "{reason:?} is missing from REJECTIONS");
        self.rejected[i.unwrap_or(0)]
            .get_or_init(|| metrics::counter!(REJECTED_COOKIES_TOTAL, "reason" => reason.as_str()))
            .increment(1);
    }
}
