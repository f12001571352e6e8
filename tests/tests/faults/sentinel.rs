//! Sentinel failovers under load.

use super::*;

/// `SENTINEL FAILOVER` in the middle of a stream: no failed request, no lost write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sentinel_graceful_failover() {
    let _serial = SERIAL.lock().await;
    let set = RedisSentinelSet::start();
    // The command timeout bounds each call, holds included, so a failover is invisible only when
    // it is longer than the hold (the switch takes 1-1.5 s here); shorter timeouts turn held
    // writes into timeouts, see `sentinel_failover_store_calls_end_within_the_command_timeout`.
    let store = RedisStore::builder(set.url())
        .with_command_timeout(Duration::from_millis(3000))
        .with_sentinel_watch(std::env::var("NOWATCH").is_err())
        .connect()
        .await
        .unwrap();
    let engine = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let ids = create_sessions(&engine, 120).await;
    let sessions: Arc<Vec<_>> = Arc::new(ids.iter().map(|id| (*id, 0)).collect());
    let driver = Driver::start(&engine, &sessions, 6, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (old, new, took) = sentinel_failover(&set);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = driver.finish().await;
    let (n, failed) = failures(&samples);
    let lost = lost_writes(&engine, &sessions, &samples).await;
    let held = samples
        .iter()
        .filter(|s| s.latency > Duration::from_millis(100))
        .count();
    eprintln!(
        "SENTINEL FAILOVER {old} -> {new} in {took:?}; {failed} of {n} requests failed; {} lost writes; p99 {:?}, max {:?}; {held} writes held >100 ms during the switch",
        lost.len(),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0)
    );
    timeline(&samples);
    assert_eq!(
        failed, 0,
        "failed requests during a graceful sentinel failover"
    );
    assert!(lost.is_empty(), "lost writes: {lost:?}");
}

/// `SENTINEL FAILOVER` under load with a 500 ms command timeout: the write gate holds writes
/// while the switch is in progress, but no store call (held, re-applied or not) may take longer
/// than the command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sentinel_failover_store_calls_end_within_the_command_timeout() {
    let _serial = SERIAL.lock().await;
    let set = RedisSentinelSet::start();
    let timeout = Duration::from_millis(500);
    let store = Arc::new(
        RedisStore::builder(set.url())
            .with_command_timeout(timeout)
            .connect()
            .await
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = hammer(&store, 4, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (old, new, took) = sentinel_failover(&set);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (latencies, errors) = finish_hammer(tasks).await;
    let worst = *latencies.last().unwrap();
    let over = latencies.iter().filter(|l| **l > timeout).count();
    eprintln!(
        "SENTINEL FAILOVER {old} -> {new} in {took:?}: {} store calls, {errors} failed, {over} \
         over the {timeout:?} command timeout, slowest {worst:?}",
        latencies.len()
    );
    assert!(
        worst <= timeout + Duration::from_millis(250),
        "a store call took {worst:?} with a {timeout:?} command timeout"
    );
}

/// Resumes stopped processes when dropped, so a failing assertion leaves no node stopped.
pub(crate) struct Stopped(Vec<u32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, "-CONT");
        }
    }
}

/// Two cluster masters stall (SIGSTOP): every store call, whichever nodes it needs, ends within
/// the command timeout — `ping` asks every primary, `regenerate` two of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn cluster_store_calls_end_within_the_command_timeout_when_masters_stall() {
    let _serial = SERIAL.lock().await;
    // A long node timeout: no failover may start while the masters are stopped.
    let cluster = RedisCluster::start_with_node_timeout(30_000);
    let timeout = Duration::from_millis(500);
    let store = RedisStore::builder(cluster.url())
        .with_command_timeout(timeout)
        .connect()
        .await
        .unwrap();
    let masters = cluster.master_ports();
    let key_on = |port: u16| {
        (0..)
            .map(|i| format!("stall:{{{i}}}"))
            .find(|key| cluster.master_of_key(key) == port)
            .unwrap()
    };
    let (stalled, live) = (key_on(masters[0]), key_on(masters[2]));
    let other_stalled = key_on(masters[1]);
    let ttl = Duration::from_secs(600);
    let fields = [("n".to_owned(), Bytes::from_static(b"1"))];
    assert!(store.create(&live, &fields, ttl).await.unwrap());
    assert!(store.create(&stalled, &fields, ttl).await.unwrap());
    store.ping().await.unwrap();

    let pids: Vec<u32> = (0..6)
        .map(|i| cluster.node(i))
        .filter(|node| masters[..2].contains(&node.port()))
        .map(|node| node.pid().unwrap())
        .collect();
    let guard = Stopped(pids.clone());
    for pid in &pids {
        signal(*pid, "-STOP");
    }
    let mut report = Vec::new();
    let bound = timeout + Duration::from_millis(250);
    macro_rules! timed {
        ($name:literal, $call:expr) => {{
            let t = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(10), $call)
                .await
                .expect("store call hung");
            let took = t.elapsed();
            report.push(($name, took, result.as_ref().err().map(|e| e.is_timeout())));
            took
        }};
    }
    let mut worst = Duration::ZERO;
    worst = worst.max(timed!("ping", store.ping()));
    worst = worst.max(timed!("load", store.load(&stalled)));
    worst = worst.max(timed!(
        "update",
        store.update(&stalled, &fields, &[], Some(ttl))
    ));
    worst = worst.max(timed!("create", store.create(&other_stalled, &fields, ttl)));
    worst = worst.max(timed!(
        "regenerate",
        store.regenerate(&live, &other_stalled, &fields, ttl)
    ));
    worst = worst.max(timed!("delete", store.delete(&stalled)));
    drop(guard);
    eprintln!("two of three cluster masters stopped, command timeout {timeout:?}: {report:?}");
    for (name, took, timed_out) in &report {
        assert!(*took <= bound, "{name} took {took:?} (bound {bound:?})");
        assert_eq!(*timed_out, Some(true), "{name} must fail with a timeout");
    }
    assert!(worst <= bound);

    // A slow node, then a stalled one: the old key's master answers only after 400 ms, the new
    // key's master not at all. The two steps of a cross-slot regenerate share one deadline.
    let slow_old = key_on(masters[0]) + ":old";
    assert!(store.create(&slow_old, &fields, ttl).await.unwrap());
    let guard = Stopped(pids.clone());
    for pid in &pids {
        signal(*pid, "-STOP");
    }
    let slow = (0..6)
        .map(|i| cluster.node(i))
        .find(|node| node.port() == masters[0])
        .and_then(|node| node.pid())
        .unwrap();
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        signal(slow, "-CONT");
    });
    let t = Instant::now();
    let result = store
        .regenerate(&slow_old, &other_stalled, &fields, ttl)
        .await;
    let took = t.elapsed();
    resume.join().unwrap();
    drop(guard);
    eprintln!("regenerate from a slow master (400 ms) to a stopped one: {result:?} after {took:?}");
    assert!(took <= bound, "regenerate took {took:?} (bound {bound:?})");
    assert!(result.unwrap_err().is_timeout());

    // Resumed nodes serve again.
    let back = Instant::now();
    while store.ping().await.is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "ping never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (The timed-out commands may still run once the nodes resume, so only check a fresh key.)
    let fresh = key_on(masters[0]) + ":fresh";
    assert!(store.create(&fresh, &fields, ttl).await.unwrap());
}
