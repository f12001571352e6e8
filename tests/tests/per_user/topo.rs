//! The topologies the per-user cases run on, and the helpers they share.

use super::*;

pub(crate) const USER_KEY: &[u8] = b"the per-user test key, long enough";

/// A started store behind one topology.
pub(crate) struct Topo {
    pub(crate) name: &'static str,
    pub(crate) store: Arc<dyn SessionStore>,
    /// Where a user's slot lives (`None`: the memory store).
    pub(crate) redis: Option<Redis>,
}

pub(crate) enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
    Sentinel(RedisSentinelSet),
}

impl Topo {
    pub(crate) async fn memory() -> Self {
        Topo {
            name: "memory",
            store: Arc::new(MemoryStore::new()),
            redis: None,
        }
    }

    pub(crate) async fn standalone() -> Self {
        let server = RedisServer::start();
        Self::redis("standalone", server.url(), Redis::Standalone(server)).await
    }

    pub(crate) async fn cluster() -> Self {
        let cluster = RedisCluster::start();
        Self::redis("cluster", cluster.url(), Redis::Cluster(cluster)).await
    }

    pub(crate) async fn sentinel() -> Self {
        let set = RedisSentinelSet::start();
        Self::redis("sentinel", set.url(), Redis::Sentinel(set)).await
    }

    pub(crate) async fn redis(name: &'static str, url: String, redis: Redis) -> Self {
        Self::redis_with_timeout(name, url, redis, Duration::from_secs(3)).await
    }

    pub(crate) async fn redis_with_timeout(
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

    pub(crate) fn engine(&self, cap: Option<SessionCap>) -> SessionEngine {
        SessionEngine::from_arc(self.store.clone(), config().with_session_cap(cap)).unwrap()
    }

    /// The port of the master holding `key`.
    pub(crate) fn port_of(&self, key: &str) -> Option<u16> {
        Some(match self.redis.as_ref()? {
            Redis::Standalone(s) => s.port(),
            Redis::Cluster(c) => c.master_of_key(key),
            Redis::Sentinel(s) => s.master_port(),
        })
    }

    /// The user's index key.
    pub(crate) fn index(&self, user: &str) -> String {
        let keys = KeyDeriver::for_config(&config());
        keys.index_key(&UserKey::new(USER_KEY).unwrap().slot(user))
    }

    /// The session keys in the user's slot right now, counted by one atomic script on the
    /// node (`None` on the memory store).
    pub(crate) fn session_keys(&self, user: &str) -> Option<usize> {
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
    pub(crate) fn index_pttl(&self, user: &str) -> Option<i64> {
        let index = self.index(user);
        let port = self.port_of(&index)?;
        Some(redis_cli(port, &["PTTL", &index]).trim().parse().unwrap())
    }
}

pub(crate) fn config() -> SessionConfig {
    SessionConfig::default().with_user_key(UserKey::new(USER_KEY).unwrap())
}

pub(crate) fn cap(max: u32, policy: CapPolicy) -> Option<SessionCap> {
    Some(SessionCap { max, policy })
}

/// Logs a fresh session in as `user` from `ua`; answers the cookie's id.
pub(crate) async fn login(
    engine: &SessionEngine,
    user: &str,
    ua: &str,
) -> tessera_engine::Result<SessionId> {
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
pub(crate) async fn usable(engine: &SessionEngine, id: SessionId) -> bool {
    !engine.session(Some(id)).is_new().await.unwrap()
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
