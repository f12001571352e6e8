//! A bounded load driver for fault tests: worker tasks read and write pre-created sessions and
//! record every outcome with its time and the master that owned the session's slot at the start.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tessera_engine::{CookieAction, SessionEngine, SessionId};

/// One finished operation.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it finished, relative to the driver's start.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// Which group (e.g. owning master) the session belongs to.
    pub group: usize,
    /// Whether it succeeded.
    pub ok: bool,
    /// The counter value it read, when the read succeeded.
    pub read: Option<u64>,
    /// Whether it was a write, and which value it acknowledged.
    pub wrote: Option<u64>,
    /// The session's index.
    pub session: usize,
}

/// Creates `n` sessions holding `counter = 0`.
pub async fn create_sessions(engine: &SessionEngine, n: usize) -> Vec<SessionId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let s = engine.session(None);
        s.insert("counter", &0u64).await.unwrap();
        let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
            panic!("new session must be created")
        };
        ids.push(id);
    }
    ids
}

/// Runs `workers` tasks over `sessions` (each with its group) until `stop` is set; every op is a
/// load plus, on every second op, an increment of `counter`. Each session belongs to exactly one
/// worker, so its increments are sequential and an acknowledged value must never be lost.
/// Bounded: stops after `max` anyway.
pub struct Driver {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    start: Instant,
}

impl Driver {
    /// Starts the workers.
    pub fn start(
        engine: &SessionEngine,
        sessions: &Arc<Vec<(SessionId, usize)>>,
        workers: usize,
        max: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let printed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let tasks = (0..workers)
            .map(|w| {
                let (engine, sessions, stop, samples, printed) = (
                    engine.clone(),
                    sessions.clone(),
                    stop.clone(),
                    samples.clone(),
                    printed.clone(),
                );
                tokio::spawn(async move {
                    let mine: Vec<usize> = (w..sessions.len()).step_by(workers).collect();
                    if mine.is_empty() {
                        return;
                    }
                    let mut op = 0u64;
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                        let index = mine[op as usize % mine.len()];
                        let (id, group) = sessions[index];
                        op += 1;
                        let began = Instant::now();
                        let s = engine.session(Some(id));
                        let write = (op / mine.len() as u64) % 2 == 1;
                        let mut read = None;
                        let result = async {
                            let n = s.get::<u64>("counter").await?.unwrap_or(0);
                            read = Some(n);
                            if write {
                                s.insert("counter", &(n + 1)).await?;
                            }
                            s.commit().await?;
                            Ok::<_, tessera_engine::Error>(write.then_some(n + 1))
                        }
                        .await;
                        if let Err(err) = &result {
                            // A few errors per driver say what failed, without flooding the
                            // output (a binary-wide count let earlier tests use them all up).
                            if printed.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!(
                                    "load driver: operation failed after {:?}: {err} ({:?})",
                                    began.elapsed(),
                                    err.kind()
                                );
                            }
                        }
                        samples.lock().push(Sample {
                            at: start.elapsed(),
                            latency: began.elapsed(),
                            group,
                            ok: result.is_ok(),
                            read,
                            wrote: result.ok().flatten(),
                            session: index,
                        });
                    }
                })
            })
            .collect();
        Driver {
            stop,
            samples,
            tasks,
            start,
        }
    }

    /// Time since the driver started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the workers and returns every sample.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.samples.lock())
    }
}

/// Success ratio of `samples` in `[from, to)` that satisfy `filter`; `None` if there are none.
pub fn success_ratio(
    samples: &[Sample],
    from: Duration,
    to: Duration,
    filter: impl Fn(&Sample) -> bool,
) -> Option<(f64, usize)> {
    let window: Vec<_> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && filter(s))
        .collect();
    if window.is_empty() {
        return None;
    }
    let ok = window.iter().filter(|s| s.ok).count();
    Some((ok as f64 / window.len() as f64, window.len()))
}

/// The time after which every sample matching `filter` succeeded (the last failure's time), or
/// `from` if none failed after it.
pub fn recovered_at(
    samples: &[Sample],
    from: Duration,
    filter: impl Fn(&Sample) -> bool,
) -> Duration {
    samples
        .iter()
        .filter(|s| s.at >= from && !s.ok && filter(s))
        .map(|s| s.at)
        .max()
        .unwrap_or(from)
}

/// Acknowledged writes that were lost. Each session is driven by one worker, so its samples are
/// in order; a read that returns less than an earlier acknowledged value, or a final stored value
/// below the last acknowledged one, means an acknowledged write vanished. Returns
/// `(session, acknowledged, seen)` for each loss.
pub async fn lost_writes(
    engine: &SessionEngine,
    sessions: &[(SessionId, usize)],
    samples: &[Sample],
) -> Vec<(usize, u64, Option<u64>)> {
    let mut acked = vec![0u64; sessions.len()];
    let mut lost = Vec::new();
    for s in samples {
        if let Some(seen) = s.read {
            if seen < acked[s.session] {
                lost.push((s.session, acked[s.session], Some(seen)));
                // Count each loss once: later reads build on the value that survived.
                acked[s.session] = seen;
            }
        }
        if let Some(v) = s.wrote {
            acked[s.session] = acked[s.session].max(v);
        }
    }
    for (i, (id, _)) in sessions.iter().enumerate() {
        let stored = engine
            .session(Some(*id))
            .get::<u64>("counter")
            .await
            .unwrap();
        if stored.unwrap_or(0) < acked[i] {
            lost.push((i, acked[i], stored));
        }
    }
    lost
}

/// Counts of (all, failed) samples.
pub fn failures(samples: &[Sample]) -> (usize, usize) {
    (samples.len(), samples.iter().filter(|s| !s.ok).count())
}
