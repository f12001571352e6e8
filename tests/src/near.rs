//! Shared by the near-cache suites: engines with the cache on, counters read and written
//! through them, and the check that a topology change loses nothing and never goes back.

use std::time::{Duration, Instant};

use tessera_engine::{
    CookieAction, NearCache, RedisStore, SessionConfig, SessionEngine, SessionId,
};

use crate::support::command_stats;

/// The staleness bound these tests configure (the heartbeat runs every quarter of it).
pub const BOUND: Duration = Duration::from_millis(400);

/// A Redis store at `url` with the near cache on (bound [`BOUND`]), once tracking is confirmed.
pub async fn cached_store(url: &str) -> RedisStore {
    let store = RedisStore::builder(url)
        .with_near_cache(NearCache::new(10_000).with_max_stale(BOUND))
        .connect()
        .await
        .unwrap();
    wait_confirmed(&store).await;
    store
}

/// Waits (at most 10 s) until every connection of `store` has tracking confirmed.
pub async fn wait_confirmed(store: &RedisStore) {
    let start = Instant::now();
    while store.near_cache_confirmed() != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tracking was never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An engine with the default configuration over [`cached_store`].
pub async fn engine(url: &str) -> SessionEngine {
    SessionEngine::new(cached_store(url).await, SessionConfig::default()).unwrap()
}

/// Creates a session holding `n` in field `n`; answers its id.
pub async fn create(engine: &SessionEngine, n: u64) -> SessionId {
    let session = engine.session(None);
    session.insert("n", &n).await.unwrap();
    match session.commit().await.unwrap().cookie {
        CookieAction::Set { id, .. } => id,
        other => panic!("a new session sets a cookie, not {other:?}"),
    }
}

/// Field `n` of session `id`, as one request reads it.
pub async fn read(engine: &SessionEngine, id: &SessionId) -> Option<u64> {
    engine.session(Some(*id)).get("n").await.unwrap()
}

/// Sets field `n` of session `id` to `n` and commits.
pub async fn write(engine: &SessionEngine, id: &SessionId, n: u64) {
    let session = engine.session(Some(*id));
    session.insert("n", &n).await.unwrap();
    session.commit().await.unwrap();
}

/// Session commands the engine sent since the last reset: scripts (commandstats also counts
/// the commands inside them, so those are left out) and plain reads outside scripts.
pub fn session_commands(port: u16) -> u64 {
    let stats = command_stats(port);
    let scripts: u64 = ["evalsha", "eval"]
        .iter()
        .filter_map(|c| stats.get(*c))
        .sum();
    // Each tracked script reads the hash once; reads beyond that were sent on their own.
    let reads = stats.get("hgetall").copied().unwrap_or(0);
    scripts + reads.saturating_sub(scripts)
}

/// Polls `engine` until `check` holds for its read of `id`, for at most `within`; answers how
/// long it took.
pub async fn until(
    engine: &SessionEngine,
    id: &SessionId,
    within: Duration,
    check: impl Fn(Option<u64>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let seen = read(engine, id).await;
        if check(seen) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {seen:?} after {within:?}: a stale entry outlived the bound"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What a topology change may do to writes that were never acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Nothing is lost, acknowledged or not (a graceful failover, a resharding).
    None,
    /// A write that failed may still have been applied and read, then lost with its node (a
    /// master's SIGKILL before replication): a reader may go back from such a value, never below
    /// the last acknowledged one.
    Unacknowledged,
}

/// Counters that only grow, written on A and read on B through a topology change: no read on B
/// ever goes backwards (under [`Loss::Unacknowledged`]: only from a value whose write failed,
/// and never below an acknowledged one), and once writes stop B sees every last acknowledged
/// value within the bound. `change` runs on a blocking thread from step 20 on, while the writes
/// and reads go on. Answers how many reads went back from an unacknowledged value.
pub async fn counters_survive(
    a: &SessionEngine,
    b: &SessionEngine,
    loss: Loss,
    change: impl FnOnce() + Send + 'static,
) -> usize {
    let mut ids = Vec::new();
    for _ in 0..32 {
        ids.push(create(a, 0).await);
    }
    for id in &ids {
        assert_eq!(read(b, id).await, Some(0));
    }
    let mut last_seen = vec![0u64; ids.len()];
    // The last acknowledged step of each session, and every step whose write failed.
    let mut written = vec![0u64; ids.len()];
    let mut failed = vec![Vec::new(); ids.len()];
    let mut went_back = 0;
    let mut change = Some(change);
    let mut changing = None;
    for step in 1..=60u64 {
        if step == 20 {
            changing = Some(tokio::task::spawn_blocking(change.take().expect("once")));
        }
        for (i, id) in ids.iter().enumerate() {
            // Writes may fail while the topology moves; a failed write is retried next step.
            let session = a.session(Some(*id));
            if session.insert("n", &step).await.is_ok() && session.commit().await.is_ok() {
                written[i] = step;
            } else {
                failed[i].push(step);
            }
            if let Ok(Some(seen)) = b.session(Some(*id)).get::<u64>("n").await {
                if seen < last_seen[i] {
                    let from_unacknowledged =
                        loss == Loss::Unacknowledged && failed[i].contains(&last_seen[i]);
                    // Every step's write either was acknowledged or failed.
                    let acknowledged_below = (0..last_seen[i])
                        .rev()
                        .find(|s| !failed[i].contains(s))
                        .unwrap_or(0);
                    assert!(
                        from_unacknowledged && seen >= acknowledged_below,
                        "session {i} went back from {} to {seen} (acknowledged: {})",
                        last_seen[i],
                        written[i]
                    );
                    went_back += 1;
                }
                last_seen[i] = seen;
            }
        }
    }
    changing.expect("started").await.expect("the change ran");
    for (i, id) in ids.iter().enumerate() {
        let want = written[i];
        let lossy = loss == Loss::Unacknowledged;
        until(b, id, BOUND * 3, |seen| {
            seen == Some(want) || (lossy && seen.is_some_and(|s| s > want))
        })
        .await;
    }
    went_back
}
