//! Helpers of the fault tests: timelines, percentiles, signals, slot owners, a store-call hammer.

use super::*;

pub(crate) fn timeline(samples: &[Sample]) {
    let mut buckets = BTreeMap::<u64, [usize; 4]>::new();
    for s in samples {
        let b = buckets.entry(s.at.as_millis() as u64 / 500).or_default();
        let i = if s.group == 0 { 0 } else { 2 };
        b[i] += 1;
        b[i + 1] += usize::from(s.ok);
    }
    for (b, [n0, ok0, n1, ok1]) in buckets {
        eprintln!("  {:>6} ms  group0 {ok0}/{n0}  group1 {ok1}/{n1}", b * 500);
    }
}

pub(crate) async fn cluster_engine(cluster: &RedisCluster, timeout_ms: u64) -> SessionEngine {
    let store = RedisStore::builder(cluster.url())
        .with_command_timeout(Duration::from_millis(timeout_ms))
        .connect()
        .await
        .unwrap();
    SessionEngine::new(store, SessionConfig::default()).unwrap()
}

/// The live master that `port` says serves `slot`, from `CLUSTER NODES`.
pub(crate) fn slot_owner(port: u16, slot: u16) -> Option<u16> {
    let nodes = tessera_tests::support::try_redis_cli(port, &["CLUSTER", "NODES"]).ok()?;
    nodes.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            return None;
        }
        let owns = f[8..].iter().any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
        });
        owns.then(|| f[1].split(['@', ':']).nth(1)?.parse().ok()).flatten()
    })
}

/// `SENTINEL FAILOVER`, waiting for the new master: (old port, new port, time taken).
pub(crate) fn sentinel_failover(set: &RedisSentinelSet) -> (u16, u16, Duration) {
    let old = set.master_port();
    let started = Instant::now();
    let new = tokio::task::block_in_place(|| {
        set.failover();
        set.wait_master_change(old, Duration::from_secs(20))
    });
    (old, new, started.elapsed())
}

pub(crate) fn percentile(samples: &[Sample], q: f64) -> Duration {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    l.sort();
    l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Store calls from `workers` tasks (create, update, load on a few dozen keys each, spread over
/// slots) until `stop` is set; each task returns every call's latency and its error count.
pub(crate) fn hammer(
    store: &Arc<RedisStore>,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>> {
    (0..workers)
        .map(|w| {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0);
                let ttl = Duration::from_secs(600);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("hammer:{{{w}-{}}}", i % 40);
                    let fields = [("n".to_owned(), Bytes::from(i.to_string()))];
                    let t = Instant::now();
                    let result = match i % 3 {
                        0 => store.create(&key, &fields, ttl).await.map(drop),
                        1 => store.update(&key, &fields, &[], Some(ttl)).await.map(drop),
                        _ => store.load(&key).await.map(drop),
                    };
                    latencies.push(t.elapsed());
                    errors += usize::from(result.is_err());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (latencies, errors)
            })
        })
        .collect()
}

pub(crate) async fn finish_hammer(
    tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
) -> (Vec<Duration>, usize) {
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    (all, errors)
}

/// Client connections on `port`, not counting replication links or the `redis-cli` asking.
pub(crate) fn client_connections(port: u16) -> usize {
    redis_cli(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|line| {
            let flags = line
                .split(' ')
                .find_map(|f| f.strip_prefix("flags="))
                .unwrap_or_default();
            !flags.contains('S') && !flags.contains('M') && !line.contains("cmd=client|list")
        })
        .count()
}
