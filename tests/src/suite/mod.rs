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

use self::{concurrency::*, integrity::*, lifecycle::*};
use crate::support::{engine_command_counts, redis_cli};

mod concurrency;
mod integrity;
mod lifecycle;

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
