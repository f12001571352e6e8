//! The topology epoch: a counter that the sentinel gate, the cluster router and redirected
//! commands bump whenever a key may be served by another node than before (a failover, a
//! slot-map change, a MOVED or ASK). The near cache reads it: an entry loaded under an older
//! epoch is dead, since the new owner's writes never reach the old owner's tracking. Topologies
//! only bump it; none of them knows the cache exists.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// What moved the epoch (the near cache's flush metric tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// A sentinel failover began or a switch was announced.
    Failover,
    /// A cluster slot-map refresh gave some slot a new owner.
    SlotMap,
    /// A command met MOVED or ASK: its slot is served elsewhere now.
    Redirect,
}

const CHANGES: [Change; 3] = [Change::Failover, Change::SlotMap, Change::Redirect];

#[derive(Debug, Default)]
pub(super) struct TopologyEpoch {
    value: AtomicU64,
    /// Bumps so far, per [`Change`] (in the order of `CHANGES`).
    bumps: [AtomicU64; 3],
    /// Wakes the one watcher (the near cache's), keeping a permit if it is busy.
    changed: Notify,
}

impl TopologyEpoch {
    pub(super) fn current(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    pub(super) fn bump(&self, change: Change) {
        let i = CHANGES.iter().position(|c| *c == change).unwrap_or(0);
        self.bumps[i].fetch_add(1, Ordering::Relaxed);
        self.value.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Waits for the next bump (or returns at once if one happened since the last wait).
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Bumps so far, per change.
    pub(super) fn bumps(&self) -> [(Change, u64); 3] {
        std::array::from_fn(|i| (CHANGES[i], self.bumps[i].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bumps_are_counted_and_wake_the_watcher() {
        let epoch = TopologyEpoch::default();
        epoch.bump(Change::Redirect);
        epoch.bump(Change::SlotMap);
        epoch.bump(Change::Redirect);
        assert_eq!(epoch.current(), 3);
        assert_eq!(
            epoch.bumps(),
            [
                (Change::Failover, 0),
                (Change::SlotMap, 1),
                (Change::Redirect, 2)
            ]
        );
        // A bump made while nobody waited is not lost.
        tokio::time::timeout(std::time::Duration::from_secs(1), epoch.changed())
            .await
            .unwrap();
    }
}
