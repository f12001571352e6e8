//! The near cache's promise on the per-user operations: whatever a login, a revoke, a logout or
//! a regenerate of a logged-in session ends, no reader of this instance is served it past the
//! staleness bound. Every store call that writes goes through one guarded path (its keys count
//! as requests in flight, and their entries go when the call ends, even cancelled); these cases
//! are the two ways an operation that skipped it went stale:
//!
//! - **dropped**: the call's future is dropped after its script was sent (the client went away).
//!   `CLIENT PAUSE WRITE` holds the script in Redis while the call times out; Redis then applies
//!   it, and `NOLOOP` tells this connection nothing.
//! - **raced**: a load of the ended session, sent on the same connection just before the
//!   operation's script, is answered with the state before it and admitted after the operation
//!   finished.
//!
//! A pool of one and a current-thread runtime put every command on the key's pinned, tracked
//! connection and make both orders deterministic. Each case runs every per-user operation (one
//! user each) and reports every operation that went stale, on standalone, sentinel and cluster.

use std::{
    future::Future,
    pin::Pin,
    task::Poll,
    time::{Duration, Instant},
};

use tessera_engine::{
    CapPolicy, CookieAction, DeviceInfo, KeyDeriver, NearCache, RedisStore, SessionCap,
    SessionConfig, SessionEngine, SessionId, UserKey,
};
use tessera_tests::{
    near::{wait_confirmed, BOUND},
    support::{redis_cli, RedisCluster, RedisSentinelSet, RedisServer},
};

const USER_KEY: &[u8] = b"the near-cache per-user test key, long enough";

/// A topology and where a user's slot lives on it.
enum Topo {
    Standalone(RedisServer),
    Sentinel(RedisSentinelSet),
    Cluster(RedisCluster),
}

impl Topo {
    fn url(&self) -> String {
        match self {
            Topo::Standalone(s) => s.url(),
            Topo::Sentinel(s) => s.url(),
            Topo::Cluster(c) => c.url(),
        }
    }

    /// The port of the master holding `key`.
    fn port_of(&self, key: &str) -> u16 {
        match self {
            Topo::Standalone(s) => s.port(),
            Topo::Sentinel(s) => s.master_port(),
            Topo::Cluster(c) => c.master_of_key(key),
        }
    }
}

fn config(cap: Option<SessionCap>) -> SessionConfig {
    SessionConfig::default()
        .with_user_key(UserKey::new(USER_KEY).unwrap())
        .with_session_cap(cap)
}

/// An engine on one tracked connection per primary, once tracking is confirmed.
async fn engine(topo: &Topo, cap: Option<SessionCap>, bound: Duration) -> SessionEngine {
    let store = RedisStore::builder(topo.url())
        .with_pool_size(1)
        .with_command_timeout(Duration::from_secs(3))
        .with_near_cache(NearCache::new(10_000).with_max_stale(bound))
        .connect()
        .await
        .unwrap();
    wait_confirmed(&store).await;
    SessionEngine::new(store, config(cap)).unwrap()
}

async fn login(engine: &SessionEngine, user: &str, device: &str) -> SessionId {
    let s = engine.session(None);
    s.insert("user", user).await.unwrap();
    s.login(user, DeviceInfo::default().with_user_agent(device))
        .await
        .unwrap();
    match s.commit().await.unwrap().cookie {
        CookieAction::Set { id, .. } => id,
        other => panic!("a login sets the cookie, got {other:?}"),
    }
}

async fn guest(engine: &SessionEngine) -> SessionId {
    let s = engine.session(None);
    s.insert("n", &1u32).await.unwrap();
    match s.commit().await.unwrap().cookie {
        CookieAction::Set { id, .. } => id,
        other => panic!("a new session sets the cookie, got {other:?}"),
    }
}

/// Whether `id` loads as a live session, as a request would see it.
async fn usable(engine: &SessionEngine, id: SessionId) -> bool {
    !engine.session(Some(id)).is_new().await.unwrap()
}

fn handle_of(devices: &[tessera_engine::Device], agent: &str) -> String {
    devices
        .iter()
        .find(|d| d.user_agent.as_deref() == Some(agent))
        .unwrap_or_else(|| panic!("no device {agent} in {devices:?}"))
        .handle
        .as_str()
        .to_owned()
}

/// The per-user operations, each ending at least one session (its victims).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// One device revokes another.
    RevokeOne,
    /// Log out everywhere but here.
    RevokeAll,
    /// The account's sessions all ended by the operator (`revoke_user`).
    RevokeUser,
    /// A third login over a cap of two evicts the least recently seen.
    LoginEvicts,
    /// A guest session logs in: the guest id ends.
    LoginFromGuest,
    /// A logged-in session is destroyed (logout).
    Logout,
    /// A logged-in session's id is regenerated: the old id ends.
    Rebind,
}

const OPS: [Op; 7] = [
    Op::RevokeOne,
    Op::RevokeAll,
    Op::RevokeUser,
    Op::LoginEvicts,
    Op::LoginFromGuest,
    Op::Logout,
    Op::Rebind,
];

/// Sessions made for one operation: who acts, and who the operation ends.
struct Setup {
    user: String,
    actor: SessionId,
    victims: Vec<SessionId>,
    /// The victim's device handle, for a revoke of one (read before the operation: the
    /// device list is a script, which a write pause would hold too).
    handle: Option<String>,
}

impl Op {
    fn cap(self) -> Option<SessionCap> {
        matches!(self, Op::LoginEvicts).then_some(SessionCap {
            max: 2,
            policy: CapPolicy::EvictLeastRecent,
        })
    }

    async fn setup(self, engine: &SessionEngine, user: &str) -> Setup {
        let user = user.to_owned();
        let actor = login(engine, &user, "dev1").await;
        let (actor, victims) = match self {
            Op::RevokeOne | Op::RevokeAll | Op::Logout | Op::Rebind => {
                let dev2 = login(engine, &user, "dev2").await;
                match self {
                    Op::Logout | Op::Rebind => (dev2, vec![dev2]),
                    _ => (actor, vec![dev2]),
                }
            }
            Op::RevokeUser => {
                let dev2 = login(engine, &user, "dev2").await;
                (actor, vec![actor, dev2])
            }
            // The oldest login goes: wait past the second the logins are ordered by.
            Op::LoginEvicts => {
                tokio::time::sleep(Duration::from_millis(1100)).await;
                let _dev2 = login(engine, &user, "dev2").await;
                (actor, vec![actor])
            }
            Op::LoginFromGuest => (actor, vec![guest(engine).await]),
        };
        let handle = match self {
            Op::RevokeOne => {
                let devices = engine.session(Some(actor)).devices().await.unwrap();
                Some(handle_of(&devices, "dev2"))
            }
            _ => None,
        };
        Setup {
            user,
            actor,
            victims,
            handle,
        }
    }

    /// Runs the operation to its end (or until the caller drops it).
    async fn run(self, engine: &SessionEngine, setup: &Setup) {
        let user = setup.user.as_str();
        match self {
            Op::RevokeOne => {
                let s = engine.session(Some(setup.actor));
                let handle = setup.handle.as_deref().expect("read at setup");
                s.revoke_device(handle).await.unwrap();
                s.commit().await.unwrap();
            }
            Op::RevokeAll => {
                let s = engine.session(Some(setup.actor));
                s.logout_everywhere(true).await.unwrap();
                s.commit().await.unwrap();
            }
            Op::RevokeUser => {
                engine.revoke_user(user).await.unwrap();
            }
            Op::LoginEvicts => {
                login(engine, user, "dev3").await;
            }
            Op::LoginFromGuest => {
                let s = engine.session(Some(setup.victims[0]));
                s.login(user, DeviceInfo::default().with_user_agent("was a guest"))
                    .await
                    .unwrap();
                s.commit().await.unwrap();
            }
            Op::Logout => {
                let s = engine.session(Some(setup.actor));
                s.destroy().await.unwrap();
                s.commit().await.unwrap();
            }
            Op::Rebind => {
                let s = engine.session(Some(setup.actor));
                s.regenerate().await.unwrap();
                s.commit().await.unwrap();
            }
        }
    }
}

/// Waits until every victim's key is gone from Redis (the operation was applied there).
async fn applied(topo: &Topo, engine: &SessionEngine, victims: &[SessionId], op: Op) {
    let start = Instant::now();
    for id in victims {
        let key = engine.key(id);
        let port = topo.port_of(&key);
        while redis_cli(port, &["EXISTS", &key]).trim() != "0" {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{op:?}: the operation never reached Redis ({key} still exists; keys: {})",
                redis_cli(port, &["KEYS", "*"])
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether every victim stops loading within the bound (from now, with the key already gone);
/// else the victim still served.
async fn ended_within_bound(
    engine: &SessionEngine,
    victims: &[SessionId],
    bound: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    // Polling costs a little: allow one heartbeat period on top of the bound.
    let within = bound + bound / 4;
    for id in victims {
        while usable(engine, *id).await {
            if start.elapsed() > within {
                return Err(format!(
                    "session {id:?} still served {:?} after Redis ended it (bound {bound:?})",
                    start.elapsed()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// The bound of the dropped case: its heartbeat, which waits on the connection behind the held
/// script, may time out (at half the bound) only after the pause is over, or the lost
/// heartbeat would flush the entries and hide a stale one.
const DROPPED_BOUND: Duration = Duration::from_secs(2);
/// How long Redis holds writes, and how long the operation may run before it is dropped.
const PAUSE_MS: &str = "700";
const DROP_AFTER: Duration = Duration::from_millis(300);

/// Dropped: each operation's future is dropped while `CLIENT PAUSE WRITE` holds its script in
/// Redis; once Redis applied it, the ended sessions (cached beforehand) stop serving within the
/// bound.
async fn dropped_calls_leave_nothing_stale(topo: Topo, name: &str) {
    let mut stale = Vec::new();
    for (i, op) in OPS.into_iter().enumerate() {
        let engine = engine(&topo, op.cap(), DROPPED_BOUND).await;
        let setup = op.setup(&engine, &format!("{name}-dropped-{i}")).await;
        // Cached beforehand, the actor too: a load that misses is a script, which the pause
        // would hold before the operation's own script is sent.
        for id in setup.victims.iter().chain([&setup.actor]) {
            assert!(usable(&engine, *id).await);
            assert!(usable(&engine, *id).await, "cached");
        }
        let index = KeyDeriver::for_config(&config(None))
            .index_key(&UserKey::new(USER_KEY).unwrap().slot(&setup.user));
        let port = topo.port_of(&index);
        // The session loads and the index read pass (reads); the script waits out the pause.
        redis_cli(port, &["CLIENT", "PAUSE", PAUSE_MS, "WRITE"]);
        let run = tokio::time::timeout(DROP_AFTER, op.run(&engine, &setup)).await;
        assert!(run.is_err(), "{op:?}: finished under the pause");
        applied(&topo, &engine, &setup.victims, op).await;
        if let Err(err) = ended_within_bound(&engine, &setup.victims, DROPPED_BOUND).await {
            stale.push(format!("{op:?}: {err}"));
        }
    }
    assert!(stale.is_empty(), "{name}: {stale:#?}");
}

/// Polls `future` once: whatever it sends in that poll is on the connection before anything
/// sent afterwards.
async fn poll_once<F: Future>(future: &mut Pin<Box<F>>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// Raced: a load of each victim is sent just before the operation, on the same connection, and
/// completed only after the operation finished: what it read (the session before the
/// operation) must not be cached.
async fn loads_racing_the_operation_are_not_cached(topo: Topo, name: &str) {
    let mut stale = Vec::new();
    for (i, op) in OPS.into_iter().enumerate() {
        let engine = engine(&topo, op.cap(), BOUND).await;
        let setup = op.setup(&engine, &format!("{name}-raced-{i}")).await;
        // Nothing cached yet: a login's new key is not tracked, and a guest's first read is the
        // load below.
        let mut loads: Vec<_> = setup
            .victims
            .iter()
            .map(|id| Box::pin(usable(&engine, *id)))
            .collect();
        for load in &mut loads {
            assert!(
                poll_once(load).await.is_pending(),
                "{op:?}: answered at once"
            );
        }
        op.run(&engine, &setup).await;
        for load in loads {
            assert!(
                load.await,
                "{op:?}: the raced load read the session before the operation"
            );
        }
        if let Err(err) = ended_within_bound(&engine, &setup.victims, BOUND).await {
            stale.push(format!("{op:?}: {err}"));
        }
    }
    assert!(stale.is_empty(), "{name}: {stale:#?}");
}

#[tokio::test(flavor = "current_thread")]
async fn standalone_dropped() {
    dropped_calls_leave_nothing_stale(Topo::Standalone(RedisServer::start()), "standalone").await;
}

#[tokio::test(flavor = "current_thread")]
async fn standalone_raced() {
    loads_racing_the_operation_are_not_cached(Topo::Standalone(RedisServer::start()), "standalone")
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn sentinel_dropped() {
    // The sentinels' own commands wait out the pause too (their PUBLISH blocks their link): a
    // down-after longer than the pauses keeps them from failing the master over.
    let set = RedisSentinelSet::start_with_down_after(20_000);
    dropped_calls_leave_nothing_stale(Topo::Sentinel(set), "sentinel").await;
}

#[tokio::test(flavor = "current_thread")]
async fn sentinel_raced() {
    loads_racing_the_operation_are_not_cached(
        Topo::Sentinel(RedisSentinelSet::start()),
        "sentinel",
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn cluster_dropped() {
    dropped_calls_leave_nothing_stale(Topo::Cluster(RedisCluster::start()), "cluster").await;
}

#[tokio::test(flavor = "current_thread")]
async fn cluster_raced() {
    loads_racing_the_operation_are_not_cached(Topo::Cluster(RedisCluster::start()), "cluster")
        .await;
}
