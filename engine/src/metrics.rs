//! Metric names and label values recorded through the `metrics` facade. The engine installs no
//! exporter; the application (or the middleware's helper) does. Labels take only the fixed values
//! listed here, never ids or keys.

use std::time::Duration;

/// Counter: session loads, label `outcome` = `hit` | `miss` | `error`.
pub const LOADS_TOTAL: &str = "tessera_session_loads_total";
/// Counter: session writes, labels `op` = `create` | `update` | `touch` | `destroy` |
/// `regenerate`, `outcome` = `ok` | `error` | `gone` (the session was deleted concurrently) |
/// `too_large`.
pub const WRITES_TOTAL: &str = "tessera_session_writes_total";
/// Counter: commits of a loaded session that needed no write at all.
pub const WRITES_SKIPPED_TOTAL: &str = "tessera_session_writes_skipped_total";
/// Histogram: store operation latency in seconds, label `op` = `load` | `create` | `update` |
/// `delete` | `ping`, `outcome` = `ok` | `error`.
pub const STORE_DURATION_SECONDS: &str = "tessera_store_operation_duration_seconds";
/// Histogram: encoded session size in bytes, recorded on each write of session data.
pub const SESSION_SIZE_BYTES: &str = "tessera_session_size_bytes";

/// Registers descriptions, so exporters show help text. Safe to call more than once.
pub fn describe() {
    metrics::describe_counter!(LOADS_TOTAL, "Session loads by outcome (hit, miss, error).");
    metrics::describe_counter!(WRITES_TOTAL, "Session writes by operation and outcome.");
    metrics::describe_counter!(
        WRITES_SKIPPED_TOTAL,
        "Commits of a loaded session that needed no store write."
    );
    metrics::describe_histogram!(
        STORE_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Latency of session store operations."
    );
    metrics::describe_histogram!(
        SESSION_SIZE_BYTES,
        metrics::Unit::Bytes,
        "Encoded size of sessions as written."
    );
}

pub(crate) fn store_op(op: &'static str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(STORE_DURATION_SECONDS, "op" => op, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn load(outcome: &'static str) {
    metrics::counter!(LOADS_TOTAL, "outcome" => outcome).increment(1);
}

pub(crate) fn write(op: &'static str, outcome: &'static str) {
    metrics::counter!(WRITES_TOTAL, "op" => op, "outcome" => outcome).increment(1);
}

pub(crate) fn skipped() {
    metrics::counter!(WRITES_SKIPPED_TOTAL).increment(1);
}

pub(crate) fn size(bytes: usize) {
    metrics::histogram!(SESSION_SIZE_BYTES).record(bytes as f64);
}
