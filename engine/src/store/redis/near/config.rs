//! The near cache's options and the causes of a flush.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Why entries were flushed (the `cause` label of the flush counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store::redis) enum FlushCause {
    /// `invalidate null`: FLUSHALL, FLUSHDB or a replica's full resync. fred 10.1 does not
    /// deliver it; kept for a release that does.
    NullInvalidation,
    /// The link's marker key was gone at a heartbeat: the dataset was flushed (FLUSHALL,
    /// FLUSHDB, a full resync) or the key evicted.
    DatasetFlushed,
    /// The invalidation channel overflowed: some invalidations were never seen.
    Lagged,
    /// The invalidation channel closed.
    StreamClosed,
    /// The connection was re-established (tracking is off on the new one).
    Reconnect,
    /// The connection reported an error.
    ConnectionError,
    /// A heartbeat failed, timed out, or found tracking off or the node not a primary.
    Heartbeat,
    /// A sentinel failover or a cluster slot-map change.
    Topology,
    /// A command met MOVED or ASK: its slot is served elsewhere now.
    Redirect,
    /// The server evicted keys (`maxmemory`) since the last heartbeat: a key evicted for this
    /// connection's own command is not invalidated to it.
    Eviction,
}

impl FlushCause {
    pub(in crate::store::redis) fn as_str(self) -> &'static str {
        match self {
            FlushCause::NullInvalidation => "null_invalidation",
            FlushCause::DatasetFlushed => "dataset_flushed",
            FlushCause::Lagged => "lagged",
            FlushCause::StreamClosed => "stream_closed",
            FlushCause::Reconnect => "reconnect",
            FlushCause::ConnectionError => "connection_error",
            FlushCause::Heartbeat => "heartbeat",
            FlushCause::Topology => "topology",
            FlushCause::Redirect => "redirect",
            FlushCause::Eviction => "eviction",
        }
    }
}

/// The options of the near cache; see [`RedisStoreBuilder::with_near_cache`].
///
/// ```
/// use std::time::Duration;
/// use tessera_engine::NearCache;
///
/// let cache = NearCache::new(100_000)
///     .with_max_bytes(256 << 20)
///     .with_max_stale(Duration::from_millis(500));
/// # let _ = cache;
/// ```
///
/// [`RedisStoreBuilder::with_near_cache`]: crate::RedisStoreBuilder::with_near_cache
#[derive(Debug, Clone)]
pub struct NearCache {
    pub(super) max_entries: usize,
    pub(super) max_bytes: u64,
    pub(super) max_stale: Duration,
    invalidation_capacity: usize,
}

impl NearCache {
    /// The default staleness bound: how long entries keep serving after the last confirmation of
    /// their invalidation stream.
    pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(1);
    /// Shortest accepted staleness bound (the heartbeat runs every quarter of it).
    pub const MIN_MAX_STALE: Duration = Duration::from_millis(40);
    /// Longest accepted staleness bound.
    pub const MAX_MAX_STALE: Duration = Duration::from_secs(60);
    /// The default queue of invalidation messages per connection.
    pub const DEFAULT_INVALIDATION_CAPACITY: usize = 4096;

    /// At most `max_entries` sessions (and, by default, 4 KiB per entry on average in bytes).
    pub fn new(max_entries: usize) -> Self {
        NearCache {
            max_entries,
            max_bytes: (max_entries as u64).saturating_mul(4096),
            max_stale: Self::DEFAULT_MAX_STALE,
            invalidation_capacity: Self::DEFAULT_INVALIDATION_CAPACITY,
        }
    }

    /// How many invalidation messages may queue per connection before the reader falls behind
    /// (default 4096, at least 1). Overflowing it is safe, as the connection's entries are then
    /// flushed, but costs hits; raise it for bursts of writes by other instances.
    pub fn with_invalidation_capacity(mut self, capacity: usize) -> Self {
        self.invalidation_capacity = capacity.max(1);
        self
    }

    pub(in crate::store::redis) fn invalidation_capacity(&self) -> usize {
        self.invalidation_capacity
    }

    /// At most this many bytes of session data (field names and values).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The staleness bound: when an invalidation stream cannot be confirmed for this long
    /// (a dead or half-open connection), its entries stop serving (default 1 s, between 40 ms
    /// and 60 s).
    pub fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    pub(in crate::store::redis) fn validate(&self) -> Result<()> {
        if self.max_entries == 0 || self.max_bytes == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "the near cache needs room for at least one entry and one byte",
            ));
        }
        if !(Self::MIN_MAX_STALE..=Self::MAX_MAX_STALE).contains(&self.max_stale) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the near cache's staleness bound must be between {:?} and \
                     {:?}, not {:?}",
                    Self::MIN_MAX_STALE,
                    Self::MAX_MAX_STALE,
                    self.max_stale
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert!(NearCache::new(0).validate().is_err());
        assert!(NearCache::new(10).with_max_bytes(0).validate().is_err());
        assert!(NearCache::new(10)
            .with_max_stale(Duration::from_millis(1))
            .validate()
            .is_err());
        assert!(NearCache::new(10)
            .with_max_stale(Duration::from_secs(3600))
            .validate()
            .is_err());
        assert!(NearCache::new(10).validate().is_ok());
    }
}
