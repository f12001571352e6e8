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

const USER_KEY: &[u8] = b"the per-user test key, long enough";

/// A started store behind one topology.
struct Topo {
    name: &'static str,
    store: Arc<dyn SessionStore>,
    /// Where a user's slot lives (`None`: the memory store).
    redis: Option<Redis>,
}

enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
    Sentinel(RedisSentinelSet),
}

impl Topo {
    async fn memory() -> Self {
        Topo {
            name: "memory",
            store: Arc::new(MemoryStore::new()),
            redis: None,
        }
    }

    async fn standalone() -> Self {
        let server = RedisServer::start();
        Self::redis("standalone", server.url(), Redis::Standalone(server)).await
    }

    async fn cluster() -> Self {
        let cluster = RedisCluster::start();
        Self::redis("cluster", cluster.url(), Redis::Cluster(cluster)).await
    }

    async fn sentinel() -> Self {
        let set = RedisSentinelSet::start();
        Self::redis("sentinel", set.url(), Redis::Sentinel(set)).await
    }

    async fn redis(name: &'static str, url: String, redis: Redis) -> Self {
        Self::redis_with_timeout(name, url, redis, Duration::from_secs(3)).await
    }

    async fn redis_with_timeout(
        name: &'static str,
        url: String,
        redis: Redis,
        timeout: Duration,
    ) -> Self {
        // A topology just started under the full suite's load may take a moment to accept
        // connections: try a few times.
        let mut attempt = 0;
        let store = loop {
            let connected = RedisStore::builder(url.clone())
                .with_command_timeout(timeout)
                .connect()
                .await;
            match connected {
                Ok(store) => break store,
                Err(err) if attempt < 4 => {
                    eprintln!("{name}: connect attempt {attempt} failed: {err}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => panic!("{name}: could not connect: {err}"),
            }
        };
        Topo {
            name,
            store: Arc::new(store),
            redis: Some(redis),
        }
    }

    fn engine(&self, cap: Option<SessionCap>) -> SessionEngine {
        SessionEngine::from_arc(self.store.clone(), config().with_session_cap(cap)).unwrap()
    }

    /// The port of the master holding `key`.
    fn port_of(&self, key: &str) -> Option<u16> {
        Some(match self.redis.as_ref()? {
            Redis::Standalone(s) => s.port(),
            Redis::Cluster(c) => c.master_of_key(key),
            Redis::Sentinel(s) => s.master_port(),
        })
    }

    /// The user's index key.
    fn index(&self, user: &str) -> String {
        let keys = KeyDeriver::for_config(&config());
        keys.index_key(&UserKey::new(USER_KEY).unwrap().slot(user))
    }

    /// The session keys in the user's slot right now, counted by one atomic script on the
    /// node (`None` on the memory store).
    fn session_keys(&self, user: &str) -> Option<usize> {
        let index = self.index(user);
        let port = self.port_of(&index)?;
        let count = r"local c, cur = 0, '0'
repeat
  local r = redis.call('SCAN', cur, 'MATCH', ARGV[1], 'COUNT', 1000)
  cur = r[1]; c = c + #r[2]
until cur == '0'
return c";
        let pattern = format!("{index}:*");
        let n = redis_cli(port, &["EVAL", count, "0", &pattern]);
        Some(n.trim().parse().unwrap())
    }

    /// `PTTL` of the user's index (`None` on the memory store).
    fn index_pttl(&self, user: &str) -> Option<i64> {
        let index = self.index(user);
        let port = self.port_of(&index)?;
        Some(redis_cli(port, &["PTTL", &index]).trim().parse().unwrap())
    }
}

fn config() -> SessionConfig {
    SessionConfig::default().with_user_key(UserKey::new(USER_KEY).unwrap())
}

fn cap(max: u32, policy: CapPolicy) -> Option<SessionCap> {
    Some(SessionCap { max, policy })
}

/// Logs a fresh session in as `user` from `ua`; answers the cookie's id.
async fn login(engine: &SessionEngine, user: &str, ua: &str) -> tessera_engine::Result<SessionId> {
    let s = engine.session(None);
    s.insert("user", user).await?;
    s.login(user, DeviceInfo::default().with_user_agent(ua))
        .await?;
    match s.commit().await?.cookie {
        CookieAction::Set { id, .. } => Ok(id),
        other => panic!("a login sets the cookie, got {other:?}"),
    }
}

/// Whether `id` still names a live session.
async fn usable(engine: &SessionEngine, id: SessionId) -> bool {
    !engine.session(Some(id)).is_new().await.unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

// ---- cases ----

async fn devices_revoke_and_logout_everywhere(topo: &Topo) {
    let engine = topo.engine(None);
    let a = login(&engine, "ada", "phone").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = login(&engine, "ada", "laptop").await.unwrap();
    let c = login(&engine, "ada", "tablet").await.unwrap();
    let other = login(&engine, "bob", "desk").await.unwrap();
    assert!(a.slot().is_some() && a.slot() == b.slot() && a.slot() != other.slot());
    assert!(
        !a.to_string().contains("ada"),
        "the user id is not in the cookie"
    );

    let devices = engine.session(Some(b)).devices().await.unwrap();
    assert_eq!(devices.len(), 3, "{}: {devices:?}", topo.name);
    assert_eq!(
        devices.last().unwrap().user_agent.as_deref(),
        Some("phone"),
        "newest first"
    );
    assert!(devices[0].created >= devices[2].created);
    let current: Vec<_> = devices.iter().filter(|d| d.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].user_agent.as_deref(), Some("laptop"));
    for d in &devices {
        for id in [a, b, c] {
            assert!(
                !id.to_string().contains(d.handle.as_str()),
                "a handle is not the id"
            );
        }
    }
    let phone = devices
        .iter()
        .find(|d| d.user_agent.as_deref() == Some("phone"))
        .unwrap();

    // Another user cannot revoke it; a made-up handle is nobody's.
    let bob = engine.session(Some(other));
    assert_eq!(
        bob.revoke_device(phone.handle.as_str()).await.unwrap(),
        Revoked::NotTheCallers
    );
    assert_eq!(
        bob.revoke_device("AAAAAAAAAAAAAAAAAAAA").await.unwrap(),
        Revoked::NotTheCallers
    );
    assert!(usable(&engine, a).await);

    let laptop = engine.session(Some(b));
    assert_eq!(
        laptop.revoke_device(phone.handle.as_str()).await.unwrap(),
        Revoked::Revoked
    );
    assert!(!usable(&engine, a).await, "a revoked session is logged out");
    assert_eq!(
        laptop.revoke_device(phone.handle.as_str()).await.unwrap(),
        Revoked::AlreadyGone
    );
    assert_eq!(engine.session(Some(b)).devices().await.unwrap().len(), 2);

    // A guest has no devices.
    let guest = engine.session(None);
    assert_eq!(
        guest.devices().await.unwrap_err().kind(),
        ErrorKind::NotLoggedIn
    );

    // Everywhere but here, then everywhere.
    let laptop = engine.session(Some(b));
    assert_eq!(laptop.logout_everywhere(true).await.unwrap(), 1);
    assert_eq!(laptop.commit().await.unwrap().cookie, CookieAction::Keep);
    assert!(!usable(&engine, c).await && usable(&engine, b).await);
    let laptop = engine.session(Some(b));
    assert_eq!(laptop.logout_everywhere(false).await.unwrap(), 1);
    assert_eq!(laptop.commit().await.unwrap().cookie, CookieAction::Clear);
    assert!(!usable(&engine, b).await);
    assert!(usable(&engine, other).await, "another user is untouched");
    assert_eq!(topo.session_keys("ada").unwrap_or(0), 0);
    assert_eq!(
        topo.index_pttl("ada").unwrap_or(-2),
        -2,
        "the empty index is deleted"
    );

    // A logout of one device removes its entry; a regenerate keeps it listed under the new id.
    let d = login(&engine, "ada", "phone").await.unwrap();
    let e = login(&engine, "ada", "laptop").await.unwrap();
    let s = engine.session(Some(d));
    s.regenerate().await.unwrap();
    let CookieAction::Set { id: d2, .. } = s.commit().await.unwrap().cookie else {
        panic!("a regenerate sets the cookie")
    };
    assert_eq!(d2.slot(), d.slot(), "it stays in the user's slot");
    assert!(!usable(&engine, d).await && usable(&engine, d2).await);
    let devices = engine.session(Some(d2)).devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices
        .iter()
        .any(|x| x.current && x.user_agent.as_deref() == Some("phone")));
    let s = engine.session(Some(e));
    s.destroy().await.unwrap();
    s.commit().await.unwrap();
    assert_eq!(engine.session(Some(d2)).devices().await.unwrap().len(), 1);
    assert_eq!(engine.user_devices("ada").await.unwrap().len(), 1);
    assert_eq!(engine.revoke_user("ada").await.unwrap(), 1);
    assert_eq!(topo.session_keys("ada").unwrap_or(0), 0);
}

async fn parallel_logins_never_beat_the_cap(topo: &Topo, policy: CapPolicy) {
    let engine = topo.engine(cap(3, policy));
    let user = match policy {
        CapPolicy::Refuse => "refused-user",
        _ => "evicted-user",
    };
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    // Sample the live count while the logins run: from the device list (one atomic script) and,
    // on Redis, by counting the keys in the user's slot (one atomic script on the node).
    let sampler = {
        let (engine, done, max_seen) = (engine.clone(), done.clone(), max_seen.clone());
        let index_sampler = topo.redis.is_some();
        let port = topo.port_of(&topo.index(user));
        let pattern = format!("{}:*", topo.index(user));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let listed = engine.user_devices(user).await.unwrap().len();
                max_seen.fetch_max(listed, Ordering::Relaxed);
                if let (true, Some(port)) = (index_sampler, port) {
                    let pattern = pattern.clone();
                    let keys: usize = blocking(move || {
                        let script = "local c, cur = 0, '0' repeat local r = redis.call('SCAN', cur, 'MATCH', ARGV[1], 'COUNT', 1000) cur = r[1] c = c + #r[2] until cur == '0' return c";
                        redis_cli(port, &["EVAL", script, "0", &pattern]).trim().parse().unwrap()
                    })
                    .await;
                    max_seen.fetch_max(keys, Ordering::Relaxed);
                }
            }
        })
    };
    let logins: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { login(&engine, user, &format!("device {i}")).await })
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = 0;
    for task in logins {
        match task.await.unwrap() {
            Ok(id) => ok.push(id),
            Err(err) if err.kind() == ErrorKind::SessionCap => refused += 1,
            Err(err) => panic!("{}: login failed: {err}", topo.name),
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let max_seen = max_seen.load(Ordering::Relaxed);
    assert!(
        max_seen <= 3,
        "{}: {max_seen} live sessions at once with cap 3",
        topo.name
    );
    let mut live = 0;
    for id in &ok {
        live += usize::from(usable(&engine, *id).await);
    }
    assert_eq!(live, 3, "{}", topo.name);
    match policy {
        CapPolicy::Refuse => {
            assert_eq!((ok.len(), refused), (3, 47), "{}", topo.name);
        }
        _ => {
            assert_eq!((ok.len(), refused), (50, 0), "{}", topo.name);
            // Every evicted cookie is refused from now on (47 of them).
            assert_eq!(ok.len() - live, 47);
        }
    }
    assert_eq!(engine.user_devices(user).await.unwrap().len(), 3);
    if let Some(keys) = topo.session_keys(user) {
        assert_eq!(keys, 3, "{}: no ghost keys", topo.name);
    }
}

async fn cap_evicts(topo: &Topo) {
    parallel_logins_never_beat_the_cap(topo, CapPolicy::EvictLeastRecent).await;
}

async fn cap_refuses(topo: &Topo) {
    parallel_logins_never_beat_the_cap(topo, CapPolicy::Refuse).await;
}

/// Saves, renewals and regenerates run on a user's sessions while another request logs the
/// user out everywhere: once that returns, nothing of the user is usable or comes back.
async fn revoke_all_races_in_flight_requests(topo: &Topo) {
    // Renew on every request, so the racing reads and writes all move TTLs and the index.
    let config = config().with_renew_below(1.0);
    let engine = SessionEngine::from_arc(topo.store.clone(), config).unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(login(&engine, "racer", &format!("d{i}")).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let latest: Arc<Mutex<Vec<SessionId>>> = Arc::new(Mutex::new(ids.clone()));
    let workers: Vec<_> = (0..ids.len())
        .map(|i| {
            let (engine, stop, latest) = (engine.clone(), stop.clone(), latest.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let id = latest.lock()[i];
                    let s = engine.session(Some(id));
                    let _ = s.get::<u32>("n").await;
                    match n % 3 {
                        0 => drop(s.insert("n", &n).await),
                        1 => {}
                        _ => drop(s.regenerate().await),
                    }
                    if let Ok(c) = s.commit().await {
                        if let CookieAction::Set { id, .. } = c.cookie {
                            latest.lock()[i] = id;
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoker = engine.session(Some(login(&engine, "racer", "admin").await.unwrap()));
    revoker.logout_everywhere(false).await.unwrap();
    // Whatever was in flight when it returned may still land now; none of it may revive.
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // A worker whose session vanished under it may start a new guest session (its insert
    // then has nowhere else to go); no session of the user's may be usable.
    let latest = latest.lock().clone();
    for id in latest.into_iter().chain(ids) {
        let logged_in = id.slot().is_some() && usable(&engine, id).await;
        assert!(!logged_in, "{}: a session of the user survived", topo.name);
    }
    assert!(engine.user_devices("racer").await.unwrap().is_empty());
    if let Some(keys) = topo.session_keys("racer") {
        assert_eq!(keys, 0, "{}: a key was recreated", topo.name);
        assert_eq!(
            topo.index_pttl("racer"),
            Some(-2),
            "{}: the index came back",
            topo.name
        );
    }
}

/// Sessions that expire disappear from the list with no cleanup job, revoking them is no
/// error, and the index key expires with the last of them.
async fn expired_sessions_leave_no_trace(topo: &Topo) {
    let config = config().with_idle_ttl(Duration::from_millis(800));
    let engine = SessionEngine::from_arc(topo.store.clone(), config).unwrap();
    let a = login(&engine, "brief", "a").await.unwrap();
    let b = login(&engine, "brief", "b").await.unwrap();
    let handles: Vec<_> = engine
        .user_devices("brief")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.handle)
        .collect();
    assert_eq!(handles.len(), 2);
    if let Some(pttl) = topo.index_pttl("brief") {
        assert!(
            (1..=800).contains(&pttl),
            "{}: index PTTL {pttl}",
            topo.name
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(engine.user_devices("brief").await.unwrap().is_empty());
    assert!(!usable(&engine, a).await && !usable(&engine, b).await);
    // The session handle is gone too, so a revoke from it needs a live session: log in again.
    let c = login(&engine, "brief", "c").await.unwrap();
    let s = engine.session(Some(c));
    for h in &handles {
        assert_eq!(
            s.revoke_device(h.as_str()).await.unwrap(),
            Revoked::AlreadyGone
        );
    }
    assert_eq!(s.devices().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    if let Some(pttl) = topo.index_pttl("brief") {
        assert_eq!(pttl, -2, "{}: the index outlived its sessions", topo.name);
    }
}

/// Each per-user operation is one atomic store step, except a renewal (the index's TTL, then
/// the session) and a login that leaves a guest session in another cluster slot (the guest
/// deleted, then the login). A failure between steps leaves something bounded.
async fn a_failure_between_steps_leaves_a_bound(topo: &Topo) {
    let faulty = FaultStore::new(topo.store.clone(), Fault::PassThrough);
    let config = config().with_renew_below(1.0);
    let engine = SessionEngine::new(faulty.clone(), config).unwrap();
    let id = login(&engine, "faulty", "a").await.unwrap();

    // The renewal's second step fails: the index has moved ahead, the session has not. The
    // session is still listed and usable; the index lives at least as long as it.
    // (A renewal is due once the expiry would move: let a few milliseconds pass.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    faulty.fail_next("update");
    let s = engine.session(Some(id));
    s.insert("x", &1u8).await.unwrap();
    assert!(s.commit().await.is_err());
    assert!(usable(&engine, id).await);
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 1);
    if let (Some(index_ttl), Some(port)) =
        (topo.index_pttl("faulty"), topo.port_of(&engine.key(&id)))
    {
        let session_ttl: i64 = redis_cli(port, &["PTTL", &engine.key(&id)])
            .trim()
            .parse()
            .unwrap();
        assert!(
            index_ttl >= session_ttl,
            "{}: index {index_ttl} < session {session_ttl}",
            topo.name
        );
    }
    // The renewal's first step fails: nothing changed, the request fails and can be retried.
    tokio::time::sleep(Duration::from_millis(5)).await;
    faulty.fail_next("touch_user");
    let s = engine.session(Some(id));
    s.insert("x", &2u8).await.unwrap();
    assert!(s.commit().await.is_err());
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u8>("x").await.unwrap(),
        None,
        "the failed write did not land"
    );
    s.insert("x", &3u8).await.unwrap();
    s.commit().await.unwrap();
    assert_eq!(
        engine.session(Some(id)).get::<u8>("x").await.unwrap(),
        Some(3)
    );

    // A login whose store step fails changes nothing: the guest session stays.
    let guest = engine.session(None);
    guest.insert("cart", &7u8).await.unwrap();
    let CookieAction::Set { id: gid, .. } = guest.commit().await.unwrap().cookie else {
        panic!()
    };
    faulty.fail_next("bind");
    let s = engine.session(Some(gid));
    assert!(s.login("faulty", DeviceInfo::default()).await.is_err());
    assert!(
        usable(&engine, gid).await,
        "{}: the guest session is kept",
        topo.name
    );
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 1);
    // The next login completes.
    let s = engine.session(Some(gid));
    s.login("faulty", DeviceInfo::default()).await.unwrap();
    s.commit().await.unwrap();
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 2);
    assert!(
        !usable(&engine, gid).await,
        "the login replaced the guest session"
    );

    // A revoke that fails did nothing; retried, it does all.
    faulty.fail_next("revoke");
    assert!(engine.revoke_user("faulty").await.is_err());
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 2);
    assert_eq!(engine.revoke_user("faulty").await.unwrap(), 2);
    assert_eq!(topo.session_keys("faulty").unwrap_or(0), 0);
}

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

/// Logins, lists and revokes of one user run while the user's slot migrates key by key to
/// another master and then that master fails over to its replica: afterwards the index names
/// exactly the live sessions (no lost entry, no ghost), and every revoked session stays gone.
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
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (engine, stop, outcome) = (engine.clone(), stop.clone(), outcome.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = match login(&engine, user, &format!("w{w} #{n}")).await {
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
                    match s.devices().await {
                        Ok(devices) if w % 2 == 0 => {
                            if let Some(d) = devices.iter().rfind(|d| !d.current) {
                                if let Err(err) = s.revoke_device(d.handle.as_str()).await {
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
    blocking(move || {
        cluster_failover(replica);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (logged_in, failed) = outcome.lock().clone();
    eprintln!(
        "slot {slot} migrated key by key in {migrated:?}, then failed over; {} logins, {failed} \
         operations failed",
        logged_in.len()
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
    // What this test asserts is the index above: no lost entry, no ghost. Failed operations are
    // reported, not asserted: a per-user script waits out a half-migrated slot within its
    // timeout, but under the full suite a few logins around the failover were seen to stall
    // until the deadline (4 of 76 in one CI run), an open defect (see the README).
    if failed > 0 {
        eprintln!(
            "KNOWN ISSUE: {failed} of {} operations failed (timed out) during the migration \
             and failover",
            logged_in.len()
        );
    }
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
