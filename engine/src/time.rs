//! Time as the stored format counts it: milliseconds since the epoch, saturating, and the latest
//! instant an expiry may name. Shared by the planner, the expiry rules, the executor and the
//! koa-session-redis3 layout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest time an expiry may name: 9999-12-31T23:59:59Z, the last second HTTP dates can
/// express. A stored record (foreign, corrupt or from a far-future clock) may claim more.
pub(crate) const LATEST_EXPIRY: Duration = Duration::from_secs(253_402_300_799);

/// Milliseconds since the epoch (saturating; 0 for a clock before it).
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

/// The instant `ms` milliseconds after the epoch, clamped to [`LATEST_EXPIRY`].
pub(crate) fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms).min(LATEST_EXPIRY)
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
