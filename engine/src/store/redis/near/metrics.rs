//! The near cache's metric handles, registered on first use and kept (as the engine's are).

use std::sync::OnceLock;

use metrics::{Counter, Gauge};

use super::FlushCause;
use crate::metrics::{
    NEAR_CACHE_BYTES, NEAR_CACHE_ENTRIES, NEAR_CACHE_FLUSHES_TOTAL, NEAR_CACHE_INVALIDATIONS_TOTAL,
    NEAR_CACHE_REQUESTS_TOTAL, NEAR_CACHE_STREAM_HEALTHY,
};

#[derive(Debug, Default)]
pub(in crate::store::redis) struct NearMetrics {
    hits: OnceLock<Counter>,
    misses: OnceLock<Counter>,
    invalidations: OnceLock<Counter>,
    entries: OnceLock<Gauge>,
    bytes: OnceLock<Gauge>,
}

impl NearMetrics {
    pub(super) fn hit(&self) {
        self.hits
            .get_or_init(|| metrics::counter!(NEAR_CACHE_REQUESTS_TOTAL, "result" => "hit"))
            .increment(1);
    }

    pub(super) fn miss(&self) {
        self.misses
            .get_or_init(|| metrics::counter!(NEAR_CACHE_REQUESTS_TOTAL, "result" => "miss"))
            .increment(1);
    }

    pub(super) fn invalidations(&self, keys: u64) {
        self.invalidations
            .get_or_init(|| metrics::counter!(NEAR_CACHE_INVALIDATIONS_TOTAL))
            .increment(keys);
    }

    /// Rare (flushes are events, not per request): looked up each time.
    pub(super) fn flush(&self, cause: FlushCause) {
        metrics::counter!(NEAR_CACHE_FLUSHES_TOTAL, "cause" => cause.as_str()).increment(1);
    }

    pub(super) fn size(&self, entries: usize, bytes: u64) {
        self.entries
            .get_or_init(|| metrics::gauge!(NEAR_CACHE_ENTRIES))
            .set(entries as f64);
        self.bytes
            .get_or_init(|| metrics::gauge!(NEAR_CACHE_BYTES))
            .set(bytes as f64);
    }

    /// Once per heartbeat and node.
    pub(super) fn stream_health(&self, node: &str, healthy: bool) {
        metrics::gauge!(NEAR_CACHE_STREAM_HEALTHY, "node" => node.to_owned()).set(if healthy {
            1.0
        } else {
            0.0
        });
    }
}
