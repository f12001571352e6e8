//! The engine's behavioural suite: one list of cases, run against every store and topology
//! (memory, standalone, cluster, sentinel). Each case uses its own key schema, so cases never see
//! each other's sessions and one topology serves the whole list.
//!
//! [`suite_tests!`](crate::suite_tests) expands the list into one test per case and topology
//! (as tower-sessions' `route_tests!`), so a failure names its case, the other cases still run,
//! and `cargo test -p tessera-tests --test engine suite_on_cluster::round_trip_and_types` runs one.

use std::{
    any::Any,
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock},
    time::Duration,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tessera_engine::{
    record::META_FIELD, CookieAction, ErrorKind, KeySchema, MemoryStore, SessionConfig,
    SessionEngine, SessionId, SessionStore,
};

use crate::support::{engine_command_counts, redis_cli};

/// Maps a key to the port of the node that holds it.
type Locate = Box<dyn Fn(&str) -> u16 + Send + Sync>;

/// Where the suite runs: a store factory plus, for Redis, the ports whose `INFO commandstats`
/// count the commands the engine sent.
pub struct Env {
    name: &'static str,
    store: Arc<dyn SessionStore>,
    /// Ports of the nodes that receive client commands (masters), for commandstats.
    master_ports: Vec<u16>,
    /// Finds the node holding a key (for PTTL); `None` for the memory store.
    locate: Option<Locate>,
    memory: Option<MemoryStore>,
    /// What must live as long as the store (the servers it talks to).
    keep: Vec<Box<dyn Any + Send + Sync>>,
}

impl Env {
    /// The in-process memory store.
    pub fn memory() -> Self {
        let store = MemoryStore::new();
        Env {
            name: "memory",
            store: Arc::new(store.clone()),
            master_ports: Vec::new(),
            locate: None,
            memory: Some(store),
            keep: Vec::new(),
        }
    }

    /// A Redis store; `master_ports` receive client commands, `locate` maps a key to its node.
    pub fn redis(
        name: &'static str,
        store: Arc<dyn SessionStore>,
        master_ports: Vec<u16>,
        locate: impl Fn(&str) -> u16 + Send + Sync + 'static,
    ) -> Self {
        Env {
            name,
            store,
            master_ports,
            locate: Some(Box::new(locate)),
            memory: None,
            keep: Vec::new(),
        }
    }

    /// Keeps `guard` (a server, a cluster) alive as long as this environment.
    pub fn keep_alive(mut self, guard: impl Any + Send + Sync) -> Self {
        self.keep.push(Box::new(guard));
        self
    }

    /// The store under test.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn engine(&self, config: SessionConfig) -> SessionEngine {
        SessionEngine::from_arc(self.store.clone(), config).unwrap()
    }

    /// Remaining TTL of `key` as the store sees it.
    fn pttl(&self, key: &str) -> Option<Duration> {
        match (&self.locate, &self.memory) {
            (Some(locate), _) => {
                let ms: i64 = redis_cli(locate(key), &["PTTL", key]).parse().ok()?;
                (ms >= 0).then(|| Duration::from_millis(ms as u64))
            }
            (None, Some(memory)) => memory.ttl(key),
            _ => None,
        }
    }

    /// Engine-issued commands (top-level, summed over the masters) since the last call.
    fn counts(&self) -> Option<Counts> {
        if self.master_ports.is_empty() {
            return None;
        }
        let (reads, writes) = engine_command_counts(&self.master_ports);
        Some(Counts { reads, writes })
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Counts {
    reads: u64,
    writes: u64,
}

type Case = for<'a> fn(&'a Env, SessionConfig) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Defines [`all_cases`] and [`suite_tests!`](crate::suite_tests) from one list. `$d` is a `$`
/// handed in, so the inner macro can have metavariables of its own on stable Rust.
macro_rules! cases {
    ($d:tt $($name:ident),* $(,)?) => {
        /// Every case of the suite, by name.
        pub fn all_cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), |env, config| Box::pin($name(env, config)))),*]
        }

        /// One test per suite case against one topology, in a module named `$topology`:
        /// `suite_tests!(suite_on_memory_store, Env::memory());`. The environment expression is
        /// evaluated in an async block (it may `.await`) once, on first use, and shared by that
        /// module's cases, which take turns (the command counts are per server). The servers it
        /// keeps alive are killed by the support module's watchdog when the test process exits.
        ///
        /// The tests are `#[test]`s on one shared runtime, not `#[tokio::test]`s: a store's
        /// connections live on the runtime that opened them, and a `#[tokio::test]`'s runtime
        /// ends with its test.
        #[macro_export]
        macro_rules! suite_tests {
            ($d topology:ident, $d env:expr) => {
                mod $d topology {
                    #[allow(unused_imports)]
                    use super::*;

                    static SHARED: $crate::suite::Shared = $crate::suite::Shared::new(|| {
                        ::std::boxed::Box::pin(async move { $d env })
                    });

                    $(
                        #[test]
                        fn $name() {
                            SHARED.run(stringify!($name));
                        }
                    )*
                }
            };
        }
    };
}

/// The runtime every generated suite test runs on (see [`suite_tests!`](crate::suite_tests)).
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the suite")
});

/// Builds an [`Env`] on the suite's runtime.
pub type BuildEnv = fn() -> Pin<Box<dyn Future<Output = Env> + Send>>;

/// One topology shared by the tests [`suite_tests!`](crate::suite_tests) generates for it.
pub struct Shared {
    build: BuildEnv,
    env: tokio::sync::OnceCell<Env>,
    turn: tokio::sync::Mutex<()>,
}

impl Shared {
    /// A topology built by `build` on first use.
    pub const fn new(build: BuildEnv) -> Self {
        Shared {
            build,
            env: tokio::sync::OnceCell::const_new(),
            turn: tokio::sync::Mutex::const_new(()),
        }
    }

    /// Runs the case called `name` on this topology, building it first if no case has.
    pub fn run(&'static self, name: &str) {
        let (index, case) = all_cases()
            .into_iter()
            .enumerate()
            .find_map(|(i, (n, case))| (n == name).then_some((i, case)))
            .unwrap_or_else(|| panic!("no suite case {name}"));
        RUNTIME.block_on(async {
            let env = self.env.get_or_init(|| (self.build)()).await;
            let _turn = self.turn.lock().await;
            run_case(env, index, name, case).await;
        });
    }
}

async fn run_case(env: &Env, index: usize, name: &str, case: Case) {
    let schema = KeySchema::new(&format!("suite:{}:{index}", env.name)).unwrap();
    let config = SessionConfig::default().with_key_schema(schema);
    eprintln!("[{}] {name}", env.name);
    let _ = env.counts();
    case(env, config).await;
}

cases!($
    round_trip_and_types,
    lazy_load_and_skip_unchanged,
    sliding_ttl_and_throttled_renewal,
    writes_renew_like_reads,
    absolute_lifetime_caps_ttl,
    concurrent_distinct_fields_merge,
    same_field_last_writer_wins,
    no_resurrection_after_destroy,
    destroy_costs_one_command,
    regenerate_moves_data_to_new_key,
    regenerate_fails_closed_after_concurrent_destroy,
    sessions_at_the_field_limit_save,
    create_never_overwrites,
    limits_leave_stored_session_unchanged,
    corrupt_data_is_a_decode_error,
    malformed_ids_never_reach_the_store,
    hashed_keys_hide_ids,
);

/// Runs every case against `env`, each with its own key schema; panics name the failing case.
pub async fn run_suite(env: &Env) {
    for (i, (name, case)) in all_cases().into_iter().enumerate() {
        run_case(env, i, name, case).await;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    roles: Vec<String>,
    age: Option<u8>,
}

async fn new_session(engine: &SessionEngine, field: &str, value: u64) -> SessionId {
    let session = engine.session(None);
    session.insert(field, &value).await.unwrap();
    match session.commit().await.unwrap().cookie {
        CookieAction::Set { id, .. } => id,
        other => panic!("a new non-empty session must set a cookie, got {other:?}"),
    }
}

async fn round_trip_and_types(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let profile = Profile {
        name: "Ada".into(),
        roles: vec!["admin".into()],
        age: None,
    };
    let s = engine.session(None);
    assert!(s.is_new().await.unwrap());
    assert!(s.is_empty().await.unwrap());
    s.insert("n", &42u64).await.unwrap();
    s.insert("text", "héllo").await.unwrap();
    s.insert("profile", &profile).await.unwrap();
    s.insert("map", &HashMap::from([("a".to_string(), 1.5f64)]))
        .await
        .unwrap();
    s.insert("gone", &true).await.unwrap();
    assert_eq!(s.remove::<bool>("gone").await.unwrap(), Some(true));
    assert!(s.is_modified());
    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!("expected a cookie")
    };

    let s = engine.session(Some(id));
    assert!(!s.is_new().await.unwrap());
    assert_eq!(s.id(), Some(id), "the cookie's id, before any load");
    assert_eq!(s.get::<u64>("n").await.unwrap(), Some(42));
    assert_eq!(
        s.get::<String>("text").await.unwrap().as_deref(),
        Some("héllo")
    );
    assert_eq!(s.get::<Profile>("profile").await.unwrap(), Some(profile));
    assert_eq!(s.get::<bool>("gone").await.unwrap(), None);
    let mut keys = s.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["map", "n", "profile", "text"]);
    let err = s.get::<String>("n").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let err = s.insert(META_FIELD, &1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidField);
    // clear() empties the session but keeps it.
    s.clear().await.unwrap();
    s.commit().await.unwrap();
    let s = engine.session(Some(id));
    assert!(!s.is_new().await.unwrap());
    assert!(s.is_empty().await.unwrap());
}

async fn lazy_load_and_skip_unchanged(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "views", 1).await;
    let _ = env.counts();

    // Never used: no command at all.
    let committed = engine.session(Some(id)).commit().await.unwrap();
    assert_eq!(committed.writes, 0);
    assert_eq!(committed.cookie, CookieAction::Keep);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 0
            },
            "unused session"
        );
    }

    // Read-only: exactly one read, no write.
    let s = engine.session(Some(id));
    assert_eq!(s.get::<u64>("views").await.unwrap(), Some(1));
    assert_eq!(s.commit().await.unwrap().writes, 0);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 0
            },
            "read-only request"
        );
    }

    // Inserting an equal value is no change.
    let s = engine.session(Some(id));
    s.insert("views", &1u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(committed.writes, 0);
    assert_eq!(committed.cookie, CookieAction::Keep);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 0
            },
            "equal value"
        );
    }

    // A change is one read and one atomic write.
    let s = engine.session(Some(id));
    s.insert("views", &2u64).await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 1);
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 1
            },
            "changed session"
        );
    }

    // A new session that stays empty costs nothing and gets no cookie.
    let s = engine.session(None);
    assert!(s.is_empty().await.unwrap());
    let committed = s.commit().await.unwrap();
    assert_eq!(
        (committed.writes, committed.cookie),
        (0, CookieAction::Keep)
    );
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 0
            },
            "empty new session"
        );
    }
}

async fn sliding_ttl_and_throttled_renewal(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.with_idle_ttl(Duration::from_millis(1600)));
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    let ttl = env.pttl(&key).expect("a TTL is set");
    assert!(
        ttl <= Duration::from_millis(1600) && ttl > Duration::from_millis(1000),
        "{ttl:?}"
    );

    // Early read: more than half the TTL remains, so no renewal.
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 0, "renewal not due yet");

    // An early write sends its field but leaves the TTL and the cookie alone: 300 ms later the
    // TTL has run down by at least that much (a reset would put it back near 1600 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = engine.session(Some(id));
    s.insert("w", &1u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(
        (committed.writes, committed.cookie),
        (1, CookieAction::Keep),
        "write without renewal"
    );
    let after_write = env.pttl(&key).unwrap();
    assert!(
        after_write + Duration::from_millis(250) < ttl,
        "the TTL was not reset: {ttl:?} then {after_write:?}"
    );

    // Past half the TTL a read renews it (one write, cookie re-sent).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = env.counts();
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(committed.writes, 1, "renewal due");
    assert!(matches!(committed.cookie, CookieAction::Set { .. }));
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 1
            }
        );
    }
    let ttl = env.pttl(&key).unwrap();
    assert!(ttl > Duration::from_millis(1200), "renewed TTL {ttl:?}");

    // The renewal stamp is in the meta: the next read does not renew again.
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 0, "just renewed");

    // Past the original expiry, the session lives on.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u64>("v").await.unwrap(),
        Some(1),
        "renewed session alive"
    );
    s.commit().await.unwrap();

    // Left alone, it expires.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap(), "expired");
    assert_eq!(
        s.commit().await.unwrap().cookie,
        CookieAction::Clear,
        "stale cookie cleared"
    );
}

async fn writes_renew_like_reads(env: &Env, config: SessionConfig) {
    // Default throttle: a write past half the TTL renews it, in the same single command.
    let engine = env.engine(config.clone().with_idle_ttl(Duration::from_millis(1600)));
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = env.counts();
    let s = engine.session(Some(id));
    s.insert("v", &2u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert_eq!(committed.writes, 1);
    assert!(
        matches!(committed.cookie, CookieAction::Set { .. }),
        "renewed cookie"
    );
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 1,
                writes: 1
            }
        );
    }
    assert!(
        env.pttl(&key).unwrap() > Duration::from_millis(1200),
        "TTL reset"
    );

    // `0.0`: every write renews, no read does.
    let engine = env.engine(
        config
            .with_idle_ttl(Duration::from_millis(1600))
            .with_renew_below(0.0),
    );
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    // Past half the TTL, where the default would renew.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = engine.session(Some(id));
    s.get::<u64>("v").await.unwrap();
    assert_eq!(s.commit().await.unwrap().writes, 0, "reads never renew");
    let before = env.pttl(&key).unwrap();
    let s = engine.session(Some(id));
    s.insert("v", &2u64).await.unwrap();
    let committed = s.commit().await.unwrap();
    assert!(matches!(committed.cookie, CookieAction::Set { .. }));
    let after = env.pttl(&key).unwrap();
    assert!(
        after > before + Duration::from_millis(200),
        "{before:?} -> {after:?}"
    );
}

async fn absolute_lifetime_caps_ttl(env: &Env, config: SessionConfig) {
    let engine = env.engine(
        config
            .with_idle_ttl(Duration::from_millis(2000))
            .with_absolute_ttl(Some(Duration::from_millis(2500))),
    );
    let id = new_session(&engine, "v", 0).await;
    let key = engine.key(&id);
    for i in 1..=3u64 {
        tokio::time::sleep(Duration::from_millis(650)).await;
        let s = engine.session(Some(id));
        assert_eq!(s.get::<u64>("v").await.unwrap(), Some(i - 1));
        s.insert("v", &i).await.unwrap();
        s.commit().await.unwrap();
    }
    // ~1950 ms after creation: a full idle TTL would be 2000 ms, but only ~550 ms remain.
    let ttl = env.pttl(&key).expect("still alive");
    assert!(
        ttl <= Duration::from_millis(600),
        "TTL {ttl:?} passes the absolute deadline"
    );
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap(), "past the absolute lifetime");
}

async fn concurrent_distinct_fields_merge(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "seed", 0).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let s = engine.session(Some(id));
                s.insert(format!("f{i}"), &i).await.unwrap();
                s.commit().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = engine.session(Some(id));
    for i in 0..50u64 {
        assert_eq!(
            s.get::<u64>(&format!("f{i}")).await.unwrap(),
            Some(i),
            "field f{i}"
        );
    }
    assert_eq!(s.keys().await.unwrap().len(), 51);
}

async fn same_field_last_writer_wins(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "x", 0).await;
    let (a, b) = (engine.session(Some(id)), engine.session(Some(id)));
    a.get::<u64>("x").await.unwrap();
    b.get::<u64>("x").await.unwrap();
    a.insert("x", &1u64).await.unwrap();
    b.insert("x", &2u64).await.unwrap();
    a.insert("only_a", &true).await.unwrap();
    b.commit().await.unwrap();
    a.commit().await.unwrap();
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u64>("x").await.unwrap(),
        Some(1),
        "last writer wins"
    );
    assert_eq!(s.get::<bool>("only_a").await.unwrap(), Some(true));
}

async fn no_resurrection_after_destroy(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "v", 1).await;
    let slow = engine.session(Some(id));
    slow.get::<u64>("v").await.unwrap();

    let logout = engine.session(Some(id));
    logout.destroy().await.unwrap();
    assert_eq!(logout.commit().await.unwrap().cookie, CookieAction::Clear);

    slow.insert("late", &true).await.unwrap();
    let committed = slow.commit().await.unwrap();
    assert_eq!(
        committed.cookie,
        CookieAction::Clear,
        "late save sees the destroy"
    );
    assert!(
        env.store.load(&engine.key(&id)).await.unwrap().is_none(),
        "resurrected"
    );
    // A read-renewal racing the destroy must not recreate it either.
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap());

    // Late saves that change an existing field, or only remove one, are refused the same way.
    for change in ["overwrite", "remove"] {
        let id = new_session(&engine, "v", 1).await;
        let slow = engine.session(Some(id));
        slow.get::<u64>("v").await.unwrap();
        let logout = engine.session(Some(id));
        logout.destroy().await.unwrap();
        logout.commit().await.unwrap();
        if change == "overwrite" {
            slow.insert("v", &2u64).await.unwrap();
        } else {
            slow.remove::<u64>("v").await.unwrap();
        }
        assert_eq!(
            slow.commit().await.unwrap().cookie,
            CookieAction::Clear,
            "{change}"
        );
        assert!(
            env.store.load(&engine.key(&id)).await.unwrap().is_none(),
            "{change}: resurrected"
        );
    }
}

async fn destroy_costs_one_command(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "v", 1).await;
    let _ = env.counts();
    let s = engine.session(Some(id));
    s.destroy().await.unwrap();
    assert!(s.is_new().await.unwrap());
    let committed = s.commit().await.unwrap();
    assert_eq!(
        (committed.writes, committed.cookie),
        (1, CookieAction::Clear)
    );
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 1
            }
        );
    }
    assert!(env.store.load(&engine.key(&id)).await.unwrap().is_none());

    // Fields set after a destroy start a new session under a new id.
    let id = new_session(&engine, "v", 1).await;
    let s = engine.session(Some(id));
    s.destroy().await.unwrap();
    s.insert("fresh", &1u64).await.unwrap();
    let CookieAction::Set { id: new_id, .. } = s.commit().await.unwrap().cookie else {
        panic!("new session after destroy must set a cookie")
    };
    assert_ne!(new_id, id);
    let s = engine.session(Some(new_id));
    assert_eq!(s.get::<u64>("fresh").await.unwrap(), Some(1));
    assert_eq!(
        s.get::<u64>("v").await.unwrap(),
        None,
        "old data must not leak"
    );
}

/// Request B loads the session, request A logs out (destroy, committed), then B logs in
/// (regenerate) and commits: no session may come back with B's data, and B's cookie is cleared.
async fn regenerate_fails_closed_after_concurrent_destroy(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "cart", 3).await;
    let b = engine.session(Some(id));
    assert_eq!(b.get::<u64>("cart").await.unwrap(), Some(3));

    let a = engine.session(Some(id));
    a.destroy().await.unwrap();
    assert_eq!(a.commit().await.unwrap().cookie, CookieAction::Clear);

    b.insert("user", "ada").await.unwrap();
    b.regenerate().await.unwrap();
    let new_id = b.id().unwrap();
    assert_ne!(new_id, id);
    let committed = b.commit().await.unwrap();
    assert_eq!(
        committed.cookie,
        CookieAction::Clear,
        "a regenerate after a logout must not hand out a session"
    );
    assert_eq!(committed.expires, None);
    for key in [engine.key(&id), engine.key(&new_id)] {
        assert!(
            env.store.load(&key).await.unwrap().is_none(),
            "nothing stored under either id"
        );
    }
    // Committing again does not bring the data back either, and still clears the cookie.
    assert_eq!(b.commit().await.unwrap().cookie, CookieAction::Clear);
    assert!(env
        .store
        .load(&engine.key(&new_id))
        .await
        .unwrap()
        .is_none());
    assert!(
        !b.is_new().await.unwrap(),
        "is_new tells what the load found at the start of the request"
    );
    assert_eq!(b.get::<String>("user").await.unwrap(), None);
}

/// A session with as many fields as the configuration may allow is written and read back whole
/// (the Lua scripts pass every field to one HSET).
async fn sessions_at_the_field_limit_save(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.with_max_fields(tessera_engine::MAX_FIELDS_LIMIT));
    let s = engine.session(None);
    for i in 0..tessera_engine::MAX_FIELDS_LIMIT {
        s.insert(format!("f{i}"), &i).await.unwrap();
    }
    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!("a new session sets a cookie")
    };
    let s = engine.session(Some(id));
    assert_eq!(
        s.keys().await.unwrap().len(),
        tessera_engine::MAX_FIELDS_LIMIT
    );
    s.regenerate().await.unwrap();
    assert!(matches!(
        s.commit().await.unwrap().cookie,
        CookieAction::Set { .. }
    ));
    assert_eq!(
        engine.session(s.id()).keys().await.unwrap().len(),
        tessera_engine::MAX_FIELDS_LIMIT
    );
}

async fn regenerate_moves_data_to_new_key(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let id = new_session(&engine, "cart", 3).await;
    let s = engine.session(Some(id));
    s.insert("user", "ada").await.unwrap();
    s.regenerate().await.unwrap();
    let new_id = s.id().unwrap();
    assert_ne!(new_id, id);
    let CookieAction::Set { id: cookie_id, .. } = s.commit().await.unwrap().cookie else {
        panic!("regenerate must set a cookie")
    };
    assert_eq!(cookie_id, new_id);
    assert!(
        env.store.load(&engine.key(&id)).await.unwrap().is_none(),
        "old key deleted"
    );
    let s = engine.session(Some(new_id));
    assert!(!s.is_new().await.unwrap());
    assert_eq!(s.get::<u64>("cart").await.unwrap(), Some(3));
    assert_eq!(
        s.get::<String>("user").await.unwrap().as_deref(),
        Some("ada")
    );
    let s = engine.session(Some(id));
    assert!(s.is_new().await.unwrap(), "old id no longer works");
}

async fn create_never_overwrites(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let s = engine.session(None);
    s.insert("mine", &1u64).await.unwrap();
    assert_eq!(s.id(), None, "asking does not mint");
    let minted = s.ensure_id().await.unwrap();
    assert_eq!(s.id(), Some(minted));
    // Someone else's session already sits under the minted id.
    let key = engine.key(&minted);
    let theirs = engine.session(None);
    theirs.insert("theirs", &2u64).await.unwrap();
    let CookieAction::Set { id: their_id, .. } = theirs.commit().await.unwrap().cookie else {
        panic!()
    };
    let their_fields = env
        .store
        .load(&engine.key(&their_id))
        .await
        .unwrap()
        .unwrap();
    let pairs: Vec<(String, Bytes)> = their_fields.into_iter().collect();
    assert!(env
        .store
        .create(&key, &pairs, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(
        !env.store
            .create(&key, &pairs, Duration::from_secs(60))
            .await
            .unwrap(),
        "NX"
    );

    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!()
    };
    assert_ne!(id, minted, "collision must mint a new id");
    let occupant = engine.session(Some(minted));
    assert_eq!(
        occupant.get::<u64>("theirs").await.unwrap(),
        Some(2),
        "overwritten"
    );
    assert_eq!(occupant.get::<u64>("mine").await.unwrap(), None);
    let mine = engine.session(Some(id));
    assert_eq!(mine.get::<u64>("mine").await.unwrap(), Some(1));
}

async fn limits_leave_stored_session_unchanged(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.with_max_size(256).with_max_fields(3));
    let id = new_session(&engine, "a", 1).await;
    let before = env.store.load(&engine.key(&id)).await.unwrap();
    let _ = env.counts();

    let s = engine.session(Some(id));
    s.insert("big", &"x".repeat(300)).await.unwrap();
    let err = s.commit().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(
        err.to_string().contains("256"),
        "message names the limit: {err}"
    );

    let s = engine.session(Some(id));
    for f in ["b", "c", "d"] {
        s.insert(f, &0u8).await.unwrap();
    }
    assert_eq!(s.commit().await.unwrap_err().kind(), ErrorKind::TooLarge);
    if let Some(c) = env.counts() {
        assert_eq!(c.writes, 0, "nothing written over the limit");
    }
    assert_eq!(env.store.load(&engine.key(&id)).await.unwrap(), before);

    // A new session over the limit is not created either.
    let s = engine.session(None);
    s.insert("big", &"x".repeat(300)).await.unwrap();
    assert!(s.commit().await.unwrap_err().is_too_large());
}

async fn corrupt_data_is_a_decode_error(env: &Env, config: SessionConfig) {
    let engine = env.engine(config);
    let ttl = Duration::from_secs(60);
    let pairs = |items: &[(&str, &[u8])]| -> Vec<(String, Bytes)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
            .collect()
    };
    // Corrupt meta, and a foreign hash with no meta at all.
    for (i, fields) in [
        pairs(&[(META_FIELD, &b"\xc1garbage"[..]), ("v", &b"\x01"[..])]),
        pairs(&[("name", &b"written by someone else"[..])]),
    ]
    .into_iter()
    .enumerate()
    {
        let id = SessionId::generate();
        let key = engine.key(&id);
        assert!(env.store.create(&key, &fields, ttl).await.unwrap());
        let s = engine.session(Some(id));
        let err = s.get::<u64>("v").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "case {i}: {err}");
        s.insert("v", &5u64).await.unwrap_err();
        let err = s.commit().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LoadFailed, "case {i}");
        let stored = env.store.load(&key).await.unwrap().unwrap();
        assert_eq!(
            stored.len(),
            fields.len(),
            "case {i}: stored data untouched"
        );
    }
    // Valid meta but a field that is not MessagePack of the asked type.
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    assert!(env
        .store
        .update(&key, &pairs(&[("v", &b"\xc1"[..])]), &[], Some(ttl))
        .await
        .unwrap());
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u64>("v").await.unwrap_err().kind(),
        ErrorKind::Decode
    );
}

async fn malformed_ids_never_reach_the_store(env: &Env, _config: SessionConfig) {
    let _ = env.counts();
    for bad in [
        "",
        "x",
        "../../etc/passwd",
        "AAAAAAAAAAAAAAAAAAAAA=",
        &"A".repeat(5000),
    ] {
        assert_eq!(
            bad.parse::<SessionId>().unwrap_err().kind(),
            ErrorKind::InvalidId
        );
    }
    if let Some(c) = env.counts() {
        assert_eq!(
            c,
            Counts {
                reads: 0,
                writes: 0
            }
        );
    }
}

async fn hashed_keys_hide_ids(env: &Env, config: SessionConfig) {
    let engine = env.engine(config.clone());
    let id = new_session(&engine, "v", 1).await;
    let key = engine.key(&id);
    assert!(!key.contains(&id.to_string()), "{key}");
    assert!(env.store.load(&key).await.unwrap().is_some());
    let plain = env.engine(config.with_hash_ids_at_rest(false));
    let id = new_session(&plain, "v", 1).await;
    assert!(plain.key(&id).contains(&format!("{{{id}}}")));
    assert!(env.store.load(&plain.key(&id)).await.unwrap().is_some());
}
