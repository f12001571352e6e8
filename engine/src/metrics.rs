//! Metric names and label values recorded through the `metrics` facade. The engine installs no
//! exporter; the application (or the middleware's helper) does. Labels take only the fixed values
//! listed here, never ids or keys.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Histogram};

/// Counter: session loads, label `outcome` = `hit` | `miss` | `error`.
pub const LOADS_TOTAL: &str = "tessera_session_loads_total";
/// Counter: session writes, labels `op` = `create` | `update` | `touch` | `destroy` |
/// `regenerate`, `outcome` = `ok` | `error` | `gone` (the session was deleted concurrently) |
/// `too_large`.
pub const WRITES_TOTAL: &str = "tessera_session_writes_total";
/// Counter: commits of a loaded session that needed no write at all.
pub const WRITES_SKIPPED_TOTAL: &str = "tessera_session_writes_skipped_total";
/// Histogram: store operation latency in seconds, label `op` = `load` | `create` | `update` |
/// `delete` | `regenerate` | `ping` | `bind` | `list_user` | `revoke` | `unbind` | `touch_user`
/// | `rebind`, `outcome` = `ok` | `error`.
pub const STORE_DURATION_SECONDS: &str = "tessera_store_operation_duration_seconds";
/// Histogram: encoded session size in bytes, recorded on each write of session data.
pub const SESSION_SIZE_BYTES: &str = "tessera_session_size_bytes";

/// Counter: per-user index operations, labels `op` = `login` | `list` | `revoke` |
/// `revoke_all` | `logout` | `renew` | `regenerate`, `outcome` = `ok` | `refused` (the cap) |
/// `gone` (the session had ended) | `error`.
pub const USER_INDEX_OPERATIONS_TOTAL: &str = "tessera_user_index_operations_total";
/// Counter: sessions ended by a revoke, label `reason` = `revoke` (one device) |
/// `logout_everywhere`.
pub const SESSION_REVOCATIONS_TOTAL: &str = "tessera_session_revocations_total";
/// Counter: the per-user cap at login, label `outcome` = `evicted` (one per session evicted) |
/// `refused` (one per login refused).
pub const SESSION_CAP_TOTAL: &str = "tessera_session_cap_total";

/// Counter: near-cache look-ups, label `result` = `hit` | `miss`.
pub const NEAR_CACHE_REQUESTS_TOTAL: &str = "tessera_near_cache_requests_total";
/// Counter: keys invalidated by Redis (client tracking) in the near cache.
pub const NEAR_CACHE_INVALIDATIONS_TOTAL: &str = "tessera_near_cache_invalidations_total";
/// Counter: near-cache flushes, label `cause` = `null_invalidation` | `lagged` |
/// `stream_closed` | `reconnect` | `connection_error` | `heartbeat` | `topology` | `redirect` |
/// `eviction` | `dataset_flushed`.
pub const NEAR_CACHE_FLUSHES_TOTAL: &str = "tessera_near_cache_flushes_total";
/// Gauge: entries in the near cache.
pub const NEAR_CACHE_ENTRIES: &str = "tessera_near_cache_entries";
/// Gauge: bytes of session data (keys, field names and values) in the near cache.
pub const NEAR_CACHE_BYTES: &str = "tessera_near_cache_bytes";
/// Gauge: 1 while a node connection's invalidation stream is confirmed, 0 while the cache
/// bypasses it; label `node` = the server's `host:port`.
pub const NEAR_CACHE_STREAM_HEALTHY: &str = "tessera_near_cache_stream_healthy";

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
    metrics::describe_counter!(
        USER_INDEX_OPERATIONS_TOTAL,
        "Per-user index operations (login, list, revoke, ...) by outcome."
    );
    metrics::describe_counter!(
        SESSION_REVOCATIONS_TOTAL,
        "Sessions ended by a revoke, by reason (revoke, logout_everywhere)."
    );
    metrics::describe_counter!(
        SESSION_CAP_TOTAL,
        "Per-user session cap at login: sessions evicted, logins refused."
    );
    metrics::describe_counter!(
        NEAR_CACHE_REQUESTS_TOTAL,
        "Near-cache look-ups by result (hit, miss)."
    );
    metrics::describe_counter!(
        NEAR_CACHE_INVALIDATIONS_TOTAL,
        "Keys Redis invalidated in the near cache (client tracking)."
    );
    metrics::describe_counter!(NEAR_CACHE_FLUSHES_TOTAL, "Near-cache flushes by cause.");
    metrics::describe_gauge!(NEAR_CACHE_ENTRIES, "Entries in the near cache.");
    metrics::describe_gauge!(
        NEAR_CACHE_BYTES,
        metrics::Unit::Bytes,
        "Bytes of session data in the near cache."
    );
    metrics::describe_gauge!(
        NEAR_CACHE_STREAM_HEALTHY,
        "1 while a node connection's invalidation stream is confirmed, 0 while bypassed."
    );
}

/// Values of the `outcome` label of [`LOADS_TOTAL`].
const LOAD_OUTCOMES: [&str; 3] = ["hit", "miss", "error"];
/// Values of the `op` label of [`WRITES_TOTAL`].
const WRITE_OPS: [&str; 5] = ["create", "update", "touch", "destroy", "regenerate"];
/// Values of the `outcome` label of [`WRITES_TOTAL`].
const WRITE_OUTCOMES: [&str; 4] = ["ok", "error", "gone", "too_large"];
/// Values of the `op` label of [`STORE_DURATION_SECONDS`].
const STORE_OPS: [&str; 12] = [
    "load",
    "create",
    "update",
    "delete",
    "regenerate",
    "ping",
    "bind",
    "list_user",
    "revoke",
    "unbind",
    "touch_user",
    "rebind",
];

/// Per-user operations are rare (logins, device pages): their counters are looked up per use.
pub(crate) fn user_op(op: &'static str, outcome: &'static str) {
    metrics::counter!(USER_INDEX_OPERATIONS_TOTAL, "op" => op, "outcome" => outcome).increment(1);
}

pub(crate) fn revoked(reason: &'static str, sessions: usize) {
    metrics::counter!(SESSION_REVOCATIONS_TOTAL, "reason" => reason).increment(sessions as u64);
}

pub(crate) fn cap(outcome: &'static str, n: usize) {
    metrics::counter!(SESSION_CAP_TOTAL, "outcome" => outcome).increment(n as u64);
}

/// The index of `value` among a label's fixed values (a caller passing another value is a bug).
fn index(values: &[&str], value: &str) -> usize {
    let i = values.iter().position(|v| *v == value);
    debug_assert!(i.is_some(), "{value:?} is not one of {values:?}");
    i.unwrap_or(0)
}

/// One engine's metric handles, each registered with the global recorder on its first use and
/// kept: the hot path then costs an atomic add instead of a registry look-up with its key
/// allocation and hashing. Install the recorder before the first request (the usual order);
/// series first used earlier stay with the recorder that was current then.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    loads: [OnceLock<Counter>; LOAD_OUTCOMES.len()],
    writes: [[OnceLock<Counter>; WRITE_OUTCOMES.len()]; WRITE_OPS.len()],
    skipped: OnceLock<Counter>,
    /// By op, then ok (0) or error (1).
    store: [[OnceLock<Histogram>; 2]; STORE_OPS.len()],
    size: OnceLock<Histogram>,
}

impl Handles {
    pub(crate) fn store_op(&self, op: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.store[index(&STORE_OPS, op)][usize::from(!ok)]
            .get_or_init(
                || metrics::histogram!(STORE_DURATION_SECONDS, "op" => op, "outcome" => outcome),
            )
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn load(&self, outcome: &'static str) {
        self.loads[index(&LOAD_OUTCOMES, outcome)]
            .get_or_init(|| metrics::counter!(LOADS_TOTAL, "outcome" => outcome))
            .increment(1);
    }

    pub(crate) fn write(&self, op: &'static str, outcome: &'static str) {
        self.writes[index(&WRITE_OPS, op)][index(&WRITE_OUTCOMES, outcome)]
            .get_or_init(|| metrics::counter!(WRITES_TOTAL, "op" => op, "outcome" => outcome))
            .increment(1);
    }

    pub(crate) fn skipped(&self) {
        self.skipped
            .get_or_init(|| metrics::counter!(WRITES_SKIPPED_TOTAL))
            .increment(1);
    }

    pub(crate) fn size(&self, bytes: usize) {
        self.size
            .get_or_init(|| metrics::histogram!(SESSION_SIZE_BYTES))
            .record(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_has_its_own_slot() {
        for values in [&LOAD_OUTCOMES[..], &WRITE_OPS, &WRITE_OUTCOMES, &STORE_OPS] {
            for (i, v) in values.iter().enumerate() {
                assert_eq!(index(values, v), i);
            }
        }
    }
}
