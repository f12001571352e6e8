//! Per-user sessions on every store and topology: device lists, revokes, log out everywhere and
//! the cap, against concurrency, expiry and failures between steps. One `#[tokio::test]` per
//! case and topology (`per_user_tests!`), so a failure names both.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tessera_engine::{
    testing::{Fault, FaultStore},
    CapPolicy, CookieAction, DeviceInfo, ErrorKind, KeyDeriver, MemoryStore, RedisStore, Revoked,
    SessionCap, SessionConfig, SessionEngine, SessionId, SessionStore, UserKey,
};
use tessera_tests::support::{
    cluster_failover, redis_cli, RedisCluster, RedisSentinelSet, RedisServer,
};

macro_rules! per_user_tests {
    ($($topo:ident),*; $cases:tt) => {
        $( per_user_tests!(@topo $topo $cases); )*
    };
    (@topo $topo:ident [$($case:ident),* $(,)?]) => {
        mod $topo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Topo::$topo().await).await;
                }
            )*
        }
    };
}

per_user_tests!(memory, standalone, cluster, sentinel; [
    devices_revoke_and_logout_everywhere,
    cap_evicts,
    cap_refuses,
    revoke_all_races_in_flight_requests,
    expired_sessions_leave_no_trace,
    a_failure_between_steps_leaves_a_bound,
]);

mod cases;
mod eviction;
mod topo;

use cases::*;
use topo::*;

/// Moves `slot` from `from` to `to` one key at a time, pausing between keys, so the per-user
/// scripts meet a half-migrated slot (ASK and TRYAGAIN) for a while.
fn migrate_slot_slowly(cluster: &RedisCluster, slot: u16, from: u16, to: u16) {
    let id = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(from), id(to));
    let slot = slot.to_string();
    redis_cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    redis_cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    loop {
        let keys = redis_cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1"]);
        let Some(key) = keys.lines().next().filter(|k| !k.is_empty()) else {
            break;
        };
        let port = to.to_string();
        redis_cli(
            from,
            &["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", key],
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for port in cluster.master_ports() {
        redis_cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
}

/// The slowest operation seen so far and its name.
#[derive(Clone, Default)]
struct Slowest(Duration, &'static str);

/// Awaits `op`, recording how long it took in `slowest`.
async fn timed<T>(
    slowest: &Mutex<Slowest>,
    name: &'static str,
    op: impl std::future::Future<Output = T>,
) -> T {
    let started = std::time::Instant::now();
    let out = op.await;
    let took = started.elapsed();
    let mut s = slowest.lock();
    if took > s.0 {
        *s = Slowest(took, name);
    }
    out
}

/// Logins, lists and revokes of one user run while the user's slot migrates key by key to
/// another master and then that master fails over to its replica: every operation succeeds,
/// none outlasts the migration and failover it overlapped (it waits out TRYAGAIN and the
/// failover pause, it never stalls to its deadline), afterwards the index names exactly the
/// live sessions (no lost entry, no ghost), and every revoked session stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resharding_and_failover_lose_no_entry() {
    // A per-user script waits out a half-migrated slot within its command timeout; this slot
    // takes seconds to move (one key at a time, slower still while other suites run), so the
    // timeout here is longer than the migration.
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let timeout = Duration::from_secs(15);
    let topo = Topo::redis_with_timeout("cluster", url, Redis::Cluster(cluster), timeout).await;
    let Some(Redis::Cluster(cluster)) = &topo.redis else {
        unreachable!()
    };
    let engine = topo.engine(None);
    let user = "mover";
    let index = topo.index(user);
    for i in 0..20 {
        login(&engine, user, &format!("seed {i}")).await.unwrap();
    }
    let slot: u16 = redis_cli(cluster.master_ports()[0], &["CLUSTER", "KEYSLOT", &index])
        .trim()
        .parse()
        .unwrap();
    let from = cluster.master_of_key(&index);
    let to = *cluster.master_ports().iter().find(|p| **p != from).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // (logged-in ids, failed operations)
    let outcome: Arc<Mutex<(Vec<SessionId>, usize)>> = Arc::default();
    let slowest: Arc<Mutex<Slowest>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (engine, stop, outcome) = (engine.clone(), stop.clone(), outcome.clone());
            let slowest = slowest.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let ua = format!("w{w} #{n}");
                    let id = match timed(&slowest, "login", login(&engine, user, &ua)).await {
                        Ok(id) => id,
                        Err(err) => {
                            eprintln!("login failed: {err}");
                            outcome.lock().1 += 1;
                            continue;
                        }
                    };
                    outcome.lock().0.push(id);
                    // Every other worker revokes the oldest other device it sees.
                    let s = engine.session(Some(id));
                    match timed(&slowest, "list", s.devices()).await {
                        Ok(devices) if w % 2 == 0 => {
                            if let Some(d) = devices.iter().rfind(|d| !d.current) {
                                let revoke = s.revoke_device(d.handle.as_str());
                                if let Err(err) = timed(&slowest, "revoke", revoke).await {
                                    eprintln!("revoke failed: {err}");
                                    outcome.lock().1 += 1;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(err) => {
                            eprintln!("list failed: {err}");
                            outcome.lock().1 += 1;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    tokio::task::block_in_place(|| migrate_slot_slowly(cluster, slot, from, to));
    let migrated = started.elapsed();
    assert_eq!(cluster.master_of_key(&index), to, "the slot moved");
    let replica = {
        let nodes = redis_cli(to, &["CLUSTER", "NODES"]);
        let to_id = redis_cli(to, &["CLUSTER", "MYID"]).trim().to_owned();
        let line = nodes
            .lines()
            .find(|l| l.contains("slave") && l.contains(&to_id))
            .expect("the new owner has a replica")
            .to_owned();
        let addr = line.split(' ').nth(1).unwrap();
        addr.split(['@', ':'])
            .nth(1)
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let failover_started = std::time::Instant::now();
    blocking(move || {
        cluster_failover(replica);
    })
    .await;
    let failed_over = failover_started.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (logged_in, failed) = outcome.lock().clone();
    let Slowest(slowest, slowest_op) = slowest.lock().clone();
    eprintln!(
        "slot {slot} migrated key by key in {migrated:?}, then failed over in {failed_over:?}; \
         {} logins, {failed} operations failed, the slowest ({slowest_op}) took {slowest:?}",
        logged_in.len()
    );
    // Every operation is one store call or a few, each bounded by the command timeout with its
    // retries (TRYAGAIN, ASK, MOVED, the failover) inside it. An operation waits at most for the
    // migration (a multi-key script meets TRYAGAIN until every key of the slot has moved) and
    // the failover's write pause; one that stalls runs into its deadline and fails. A login or
    // revoke met by the failover is retried on the new primary, so none fails.
    assert_eq!(
        failed, 0,
        "operations failed (timed out) during the migration and failover"
    );
    let bound = (migrated + failed_over + Duration::from_secs(3)).min(timeout);
    assert!(
        slowest < bound,
        "the slowest operation ({slowest_op}) took {slowest:?}, more than the migration \
         ({migrated:?}) and failover ({failed_over:?}) it overlapped plus 3 s, or the \
         {timeout:?} command timeout"
    );

    // The index names exactly the live session keys of the slot.
    let owner = cluster.master_of_key(&index);
    let entries = redis_cli(owner, &["HGETALL", &index]);
    let indexed: std::collections::BTreeSet<String> = entries
        .lines()
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    let script = "local out, cur = {}, '0' repeat local r = redis.call('SCAN', cur, 'MATCH', ARGV[1], 'COUNT', 1000) cur = r[1] for _, k in ipairs(r[2]) do out[#out + 1] = k end until cur == '0' return out";
    let keys: std::collections::BTreeSet<String> =
        redis_cli(owner, &["EVAL", script, "0", &format!("{index}:*")])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
    assert_eq!(indexed, keys, "index entries and live sessions disagree");
    let listed = engine.user_devices(user).await.unwrap().len();
    assert_eq!(listed, keys.len());
    let mut live = 0;
    for id in &logged_in {
        if usable(&engine, *id).await {
            live += 1;
            assert!(
                keys.contains(&engine.key(id)),
                "a live session is not indexed"
            );
        }
    }
    assert!(live <= keys.len());
}

/// 100k logins over 10k users with a 1 s idle TTL, the sessions left to expire: Redis ends up
/// holding nothing, index keys included (no cleanup job: each index expires with its last
/// session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_logins_leave_no_index_keys_after_expiry() {
    let topo = Topo::standalone().await;
    let Some(Redis::Standalone(server)) = &topo.redis else {
        unreachable!()
    };
    let port = server.port();
    let config = config().with_idle_ttl(Duration::from_secs(1));
    let engine = SessionEngine::from_arc(topo.store.clone(), config).unwrap();
    const LOGINS: usize = 100_000;
    const USERS: usize = 10_000;
    const TASKS: usize = 64;
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (engine, next) = (engine.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= LOGINS {
                        break;
                    }
                    let user = format!("user-{}", n % USERS);
                    login(&engine, &user, "bulk").await.unwrap();
                }
            })
        })
        .collect();
    let mut peak_keys = 0u64;
    let mut index_bytes = None;
    while next.load(Ordering::Relaxed) < LOGINS {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let keys = blocking(move || redis_cli(port, &["DBSIZE"])).await;
        peak_keys = peak_keys.max(keys.trim().parse().unwrap_or(0));
        if index_bytes.is_none() {
            let index = topo.index("user-1");
            index_bytes = blocking(move || redis_cli(port, &["MEMORY", "USAGE", &index]))
                .await
                .trim()
                .parse::<u64>()
                .ok();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let used = redis_cli(port, &["INFO", "memory"]);
    let used = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    // Every session and index expires within a second of its last write; Redis's active expiry
    // then removes them (it samples keys, so allow it a while).
    let waited = std::time::Instant::now();
    let left = loop {
        let keys: u64 = redis_cli(port, &["DBSIZE"]).trim().parse().unwrap();
        if keys == 0 || waited.elapsed() > Duration::from_secs(60) {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let scan = redis_cli(port, &["--scan", "--pattern", "*{u.*"]);
    eprintln!(
        "{LOGINS} logins over {USERS} users in {took:?}; peak DBSIZE {peak_keys}; one index key \
         {index_bytes:?} bytes (MEMORY USAGE); used_memory {used} at the end of the logins; \
         DBSIZE {left} after {:?}",
        waited.elapsed()
    );
    assert_eq!(left, 0, "keys left after expiry: {scan}");
}
