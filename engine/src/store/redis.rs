//! The Redis store on fred: standalone, cluster and sentinel from one URL, with a reconnect policy
//! and a per-command timeout always set, and atomic Lua scripts for the check-and-write steps.
//! It never issues a command that spans two keys, so no call can cross cluster slots.

use std::{collections::HashMap, fmt, future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    bytes_utils::Str,
    clients::{Pool, SubscriberClient},
    interfaces::{
        ClientLike, EventInterface, HashesInterface, KeysInterface, LuaInterface, PubsubInterface,
        ServerInterface,
    },
    prelude::{Builder, Client, Config, ReconnectPolicy, ServerConfig},
    types::{
        config::{ReconnectError, Server},
        Value,
    },
};
use tokio::task::JoinHandle;

use super::{cluster::ClusterRouter, Fields, Regenerated, SessionStore};
use crate::error::{Error, ErrorKind, Result};

/// Creates the session only if its key is absent (NX), then sets its TTL, in one atomic step.
/// ARGV: ttl_ms, then field/value pairs.
const CREATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// Changes only a session that still exists: a save that races a destroy must not recreate it.
/// HSET doubles as the existence check, so a save that does not renew and touches an existing
/// field is one command: a missing key is created by it holding exactly the `n` fields just added
/// (every field new, and nothing else in the hash), and is deleted again in the same atomic step,
/// before any client can read it (replicas and keyspace notifications still see the HSET and
/// DEL). Only when every field is new does HLEN tell the two cases apart. ARGV: ttl_ms (`0` keeps the TTL), n (number of pairs to
/// set), n field/value pairs, then fields to delete.
const UPDATE_LUA: &str = r"
local n = tonumber(ARGV[2])
if n > 0 then
  if redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * n)) == n
      and redis.call('HLEN', KEYS[1]) == n then
    redis.call('DEL', KEYS[1])
    return 0
  end
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if #ARGV > 2 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 3 + 2 * n)) end
if ARGV[1] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
";

/// URL schemes the store accepts.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

#[derive(Debug)]
struct LuaScript {
    source: &'static str,
    /// Reference-counted, so each call clones a pointer rather than the 40 hex digits.
    sha1: Str,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
        LuaScript {
            source,
            sha1: Str::from(fred::util::sha1_hash(source)),
        }
    }
}

/// Configures and connects a [`RedisStore`].
///
/// Accepted URLs: `redis://host:port[/db]`, `rediss://…` (TLS through rustls),
/// `redis-cluster://host:port?node=host:port&node=…`, and
/// `redis-sentinel://host:port?node=host:port&sentinelServiceName=NAME`.
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    reconnect_max_delay: Duration,
    watch_sentinel: bool,
    wait_replicas: Option<(u32, Duration)>,
    tls_roots: Option<Vec<u8>>,
}

impl RedisStoreBuilder {
    /// Number of multiplexed connections (per node) to spread commands over (default 2).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Upper bound on every store command, retries and redirections included (default 1 s). A
    /// stalled Redis makes requests fail after this long instead of hanging.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Upper bound on establishing a connection (default 2 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest pause between reconnection attempts; attempts never stop (default 1 s).
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay;
        self
    }

    /// With a sentinel URL, subscribe to `+switch-master` on every sentinel and reconnect at once
    /// on a failover (default on). Without it the client only notices when the old master fails.
    pub fn with_sentinel_watch(mut self, on: bool) -> Self {
        self.watch_sentinel = on;
        self
    }

    /// Durability: after each session write (create, update, destroy) wait until `replicas`
    /// replicas have acknowledged it, at most `timeout` (Redis `WAIT`). A write that fewer
    /// replicas confirm fails with [`ErrorKind::NotDurable`] instead of being acknowledged. Off by
    /// default: it adds a replication round trip to every write.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// For `rediss://` URLs: trust only the CA certificates in `pem` (PEM text, one or more
    /// certificates) instead of the system's roots, e.g. for a private CA.
    pub fn with_tls_root_certs_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_roots = Some(pem.into());
        self
    }

    fn tls_config(&self, pem: &[u8]) -> Result<fred::types::config::TlsConfig> {
        use fred::rustls::{
            pki_types::{pem::PemObject, CertificateDer},
            ClientConfig, RootCertStore,
        };
        let bad = |what: String| {
            Error::new(
                ErrorKind::Config,
                format!("invalid TLS root certificates: {what}"),
            )
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no PEM certificate found".into()));
        }
        // An explicit provider: the process-wide default is ambiguous when several are linked.
        let provider = Arc::new(fred::rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(fred::types::config::TlsConnector::from(client).into())
    }

    fn fred_builder(&self, config: Config) -> Builder {
        let mut builder = Builder::from_config(config);
        let command_timeout = self.command_timeout;
        let connect_timeout = self.connect_timeout;
        let max_delay = u32::try_from(self.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX);
        builder
            .with_performance_config(|perf| {
                perf.default_command_timeout = command_timeout;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = connect_timeout;
                conn.max_command_attempts = 3;
                conn.max_redirections = 10;
                // A demoted master answers READONLY without dropping the connection; treat that
                // and the other "wrong node right now" answers as a reason to reconnect.
                conn.reconnect_errors = vec![
                    ReconnectError::ReadOnly,
                    ReconnectError::MasterDown,
                    ReconnectError::ClusterDown,
                    ReconnectError::Loading,
                ];
            })
            // max_attempts 0 = retry forever; fred's default is no reconnection at all.
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                20,
                max_delay.max(20),
                2,
            ));
        builder
    }

    /// Connects, failing with a clear error if the URL is invalid or no connection can be made
    /// within the connect timeout.
    pub async fn connect(self) -> Result<RedisStore> {
        let scheme = self.url.split("://").next().unwrap_or_default();
        if !self.url.contains("://") || !SCHEMES.contains(&scheme) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "unsupported Redis URL scheme in {:?}; use one of {}",
                    redact(&self.url),
                    SCHEMES.join(", ")
                ),
            ));
        }
        let config = Config::from_url(&self.url).map_err(|err| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "invalid Redis URL {:?}: {err}; expected redis://, rediss://, \
                     redis-cluster://host:port?node=host:port or \
                     redis-sentinel://host:port?sentinelServiceName=NAME",
                    redact(&self.url)
                ),
            )
        })?;
        let mut config = config;
        if let Some(pem) = &self.tls_roots {
            if config.tls.is_none() {
                return Err(Error::new(
                    ErrorKind::Config,
                    "TLS root certificates were given but the URL does not use TLS; use rediss://",
                ));
            }
            config.tls = Some(self.tls_config(pem)?);
        }
        let sentinel = match &config.server {
            ServerConfig::Sentinel {
                hosts,
                service_name,
                ..
            } if self.watch_sentinel => Some((hosts.clone(), service_name.clone())),
            _ => None,
        };
        let backend = if config.server.is_clustered() {
            let this = self.clone();
            let router = ClusterRouter::connect(
                config.clone(),
                self.pool_size,
                self.connect_timeout,
                self.command_timeout,
                move |c| this.fred_builder(c),
            )
            .await?;
            Backend::Cluster(router)
        } else {
            let pool = self
                .fred_builder(config.clone())
                .build_pool(self.pool_size)
                .map_err(Error::from)?;
            pool.connect_pool();
            tokio::time::timeout(self.connect_timeout, pool.wait_for_connect())
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "could not connect to Redis at {} within {:?}; check that it runs \
                             and the URL is right",
                            redact(&self.url),
                            self.connect_timeout
                        ),
                    )
                })?
                .map_err(Error::from)?;
            Backend::Pool(pool)
        };

        // Load the scripts on every primary up front so the first write on each node is one
        // EVALSHA rather than a NOSCRIPT round trip; the fallback in `run` covers later restarts.
        let primaries = match &backend {
            Backend::Pool(pool) => vec![pool.next().clone()],
            Backend::Cluster(router) => router.primaries(),
        };
        for client in primaries {
            for source in [CREATE_LUA, UPDATE_LUA] {
                if let Err(err) = client.script_load::<(), _>(source).await {
                    tracing::warn!(%err, "could not preload session scripts; they load on first use");
                }
            }
        }
        let gate = WriteGate::new(MAX_PAUSE);
        let watchers = match (sentinel, &backend) {
            (Some((hosts, service)), Backend::Pool(pool)) => {
                self.watch_sentinels(&config, hosts, service, pool.clone(), gate.clone())
                    .await
            }
            _ => Vec::new(),
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                backend,
                gate,
                wait_replicas: self.wait_replicas,
                create: LuaScript::new(CREATE_LUA),
                update: LuaScript::new(UPDATE_LUA),
                _watchers: watchers,
            }),
        })
    }

    /// One subscriber per sentinel, so losing a sentinel does not lose the notification. fred's
    /// sentinel client otherwise keeps sending to a demoted master until that connection breaks.
    async fn watch_sentinels(
        &self,
        config: &Config,
        hosts: Vec<Server>,
        service: String,
        pool: Pool,
        gate: WriteGate,
    ) -> Vec<Watcher> {
        let last_switch = Arc::new(parking_lot::Mutex::new(String::new()));
        let mut watchers = Vec::new();
        for host in hosts {
            let mut sub_config = config.clone();
            sub_config.server = ServerConfig::Centralized { server: host };
            let Ok(subscriber) = self.fred_builder(sub_config).build_subscriber_client() else {
                continue;
            };
            subscriber.connect();
            let mut rx = subscriber.message_rx();
            let resubscribe = subscriber.manage_subscriptions();
            let sub = subscriber.clone();
            let pool = pool.clone();
            let service = service.clone();
            let last_switch = last_switch.clone();
            let gate = gate.clone();
            let listener = tokio::spawn(async move {
                // Subscribing can wait for the sentinel to come up; the manager resubscribes later.
                let _ = sub.wait_for_connect().await;
                let _: std::result::Result<(), _> = sub.subscribe(SENTINEL_CHANNELS.to_vec()).await;
                while let Ok(message) = rx.recv().await {
                    let Some(text) = message.value.as_str().map(|s| s.to_string()) else {
                        continue;
                    };
                    match sentinel_event(&message.channel, &text, &service) {
                        SentinelEvent::Promoting => {
                            // From here the old master may still accept writes that the promoted
                            // replica will never see: hold writes until the switch is announced.
                            tracing::info!(event = %message.channel, "sentinel failover started; holding session writes");
                            gate.pause();
                        }
                        SentinelEvent::Aborted => gate.resume(),
                        SentinelEvent::Switched => {
                            {
                                let mut last = last_switch.lock();
                                if *last == text {
                                    continue; // another sentinel already reported this switch
                                }
                                last.clone_from(&text);
                            }
                            tracing::info!(switch = %text, "sentinel reported a master switch; reconnecting");
                            if let Err(err) = pool.force_reconnection().await {
                                tracing::warn!(%err, "reconnecting after a master switch failed");
                            }
                            gate.resume();
                        }
                        SentinelEvent::Other => {}
                    }
                }
            });
            watchers.push(Watcher {
                subscriber,
                tasks: [listener, resubscribe],
            });
        }
        watchers
    }
}

/// Sentinel channels the store listens to.
const SENTINEL_CHANNELS: [&str; 5] = [
    "+switch-master",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "-failover-abort-no-good-slave",
    "-failover-abort-not-elected",
];

#[derive(Debug, PartialEq, Eq)]
enum SentinelEvent {
    Promoting,
    Aborted,
    Switched,
    Other,
}

/// Classifies a sentinel event for `service`. `+switch-master` carries
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`; the others carry instance details ending in
/// `@ <master-name> <master-ip> <master-port>`.
fn sentinel_event(channel: &str, text: &str, service: &str) -> SentinelEvent {
    let master = if channel == "+switch-master" {
        text.split(' ').next()
    } else {
        text.split(" @ ").nth(1).and_then(|m| m.split(' ').next())
    };
    if master != Some(service) {
        return SentinelEvent::Other;
    }
    match channel {
        "+switch-master" => SentinelEvent::Switched,
        "+selected-slave" | "+failover-state-send-slaveof-noone" => SentinelEvent::Promoting,
        c if c.starts_with("-failover-abort") => SentinelEvent::Aborted,
        _ => SentinelEvent::Other,
    }
}

/// Holds session writes while a sentinel failover is between "replica chosen" and "switch
/// announced". Bounded twice: it reopens by itself after `MAX_PAUSE`, and each writer waits at
/// most its command timeout.
#[derive(Debug, Clone)]
struct WriteGate {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
    /// Incremented at each pause, so a write can tell that a failover overlapped it.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    max_wait: Duration,
}

/// Longest a failover may hold writes before the gate reopens on its own.
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl WriteGate {
    fn new(max_wait: Duration) -> Self {
        WriteGate {
            tx: Arc::new(tokio::sync::watch::channel(false).0),
            epoch: Arc::default(),
            max_wait,
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    fn pause(&self) {
        if !self.tx.send_replace(true) {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let tx = Arc::downgrade(&self.tx);
            tokio::spawn(async move {
                tokio::time::sleep(MAX_PAUSE).await;
                if let Some(tx) = tx.upgrade() {
                    if tx.send_replace(false) {
                        tracing::warn!(
                            "no master switch within {MAX_PAUSE:?}; releasing held writes"
                        );
                    }
                }
            });
        }
    }

    fn resume(&self) {
        self.tx.send_replace(false);
    }

    async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        if *rx.borrow() {
            let _ = tokio::time::timeout(self.max_wait, rx.wait_for(|paused| !paused)).await;
        }
    }
}

struct Watcher {
    subscriber: SubscriberClient,
    tasks: [JoinHandle<()>; 2],
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let sub = self.subscriber.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = sub.quit().await;
            });
        }
    }
}

/// How commands reach Redis: one fred pool (standalone, sentinel), or per-primary pools behind
/// the cluster router.
#[derive(Debug)]
enum Backend {
    Pool(Pool),
    Cluster(Arc<ClusterRouter>),
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    gate: WriteGate,
    wait_replicas: Option<(u32, Duration)>,
    create: LuaScript,
    update: LuaScript,
    _watchers: Vec<Watcher>,
}

/// A [`SessionStore`] on Redis (standalone, cluster or sentinel) through fred.
///
/// ```no_run
/// # async fn run() -> tessera_engine::Result<()> {
/// use std::time::Duration;
/// use tessera_engine::RedisStore;
///
/// let store = RedisStore::builder("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001")
///     .with_command_timeout(Duration::from_millis(500))
///     .connect()
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// A builder with the defaults for `url`.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            pool_size: 2,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            reconnect_max_delay: Duration::from_secs(1),
            watch_sentinel: true,
            wait_replicas: None,
            tls_roots: None,
        }
    }

    /// Connects to `url` with the default options.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Closes all connections.
    pub async fn quit(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Pool(pool) => pool.quit().await.map_err(Error::from),
            Backend::Cluster(router) => {
                router.quit().await;
                Ok(())
            }
        }
    }

    /// Runs `f` on a client that serves `key`.
    async fn with_client<R, F, Fut>(&self, key: &str, f: F) -> Result<R>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<R, fred::error::Error>>,
    {
        match &self.inner.backend {
            Backend::Pool(pool) => Ok(f(pool.next().clone()).await?),
            Backend::Cluster(router) => router.call(key, f).await,
        }
    }

    /// `EVALSHA`, falling back to `EVAL` (which also caches the script) on a node that has not
    /// seen it yet, e.g. after a restart or failover.
    async fn run(&self, script: &LuaScript, key: &str, args: &[Value]) -> Result<bool> {
        self.inner.gate.wait().await;
        let epoch = self.inner.gate.epoch();
        let done = self.run_once(script, key, args).await?;
        if self.inner.gate.epoch() == epoch {
            return Ok(done);
        }
        // A sentinel failover began while this write was in flight: the old master may have
        // applied it after the replica was promoted. Re-apply it on the new master once the switch
        // is announced; both scripts are idempotent for the same arguments.
        self.inner.gate.wait().await;
        let again = self.run_once(script, key, args).await?;
        // A create that already reached the new master finds its own key there.
        Ok(if std::ptr::eq(script, &self.inner.create) {
            done || again
        } else {
            again
        })
    }

    /// Arguments are copied per attempt (values are reference-counted bytes), since fred takes
    /// them by value.
    async fn run_once(&self, script: &LuaScript, key: &str, args: &[Value]) -> Result<bool> {
        let n: i64 = self
            .with_client(key, |client| async move {
                let result: std::result::Result<i64, _> = client
                    .evalsha(script.sha1.clone(), key, args.to_vec())
                    .await;
                let n = match result {
                    Err(err) if err.details().starts_with("NOSCRIPT") => {
                        client.eval(script.source, key, args.to_vec()).await?
                    }
                    other => other?,
                };
                Ok((n, self.wait(&client).await?))
            })
            .await
            .and_then(|(n, acked)| self.check_durable(acked).map(|()| n))?;
        Ok(n == 1)
    }

    /// `WAIT` on the connection that carried the write, when durability is on. Returns how many
    /// replicas acknowledged.
    async fn wait(&self, client: &Client) -> std::result::Result<Option<i64>, fred::error::Error> {
        match self.inner.wait_replicas {
            None => Ok(None),
            Some((n, timeout)) => {
                let ms = i64::try_from(timeout.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1);
                client.wait(i64::from(n), ms).await.map(Some)
            }
        }
    }

    fn check_durable(&self, acked: Option<i64>) -> Result<()> {
        match (self.inner.wait_replicas, acked) {
            (Some((n, timeout)), Some(acked)) if acked < i64::from(n) => Err(Error::new(
                ErrorKind::NotDurable,
                format!(
                    "only {acked} of {n} replicas confirmed the session write within {timeout:?}; \
                     check replication health"
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn ttl_ms(ttl: Duration) -> Value {
    Value::Integer(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

fn push_pairs(args: &mut Vec<Value>, pairs: &[(String, Bytes)]) {
    for (field, value) in pairs {
        args.push(Value::String(field.as_str().into()));
        args.push(Value::Bytes(value.clone()));
    }
}

/// The fields of an HGETALL reply (fred hands it over as a map); `None` for a missing key.
/// Values stay slices of the read buffer.
fn hash_fields(value: Value) -> Result<Option<Fields>> {
    let map = match value {
        Value::Map(map) => map.inner(),
        Value::Null => return Ok(None),
        _ => {
            return Err(Error::new(
                ErrorKind::Decode,
                "HGETALL answered something other than a map",
            ))
        }
    };
    if map.is_empty() {
        return Ok(None);
    }
    let mut fields = HashMap::with_capacity(map.len());
    for (name, value) in map {
        let name = name.into_string().ok_or_else(|| {
            Error::new(ErrorKind::Decode, "a stored field name is not valid UTF-8")
        })?;
        let value = value.into_bytes().ok_or_else(|| {
            Error::new(
                ErrorKind::Decode,
                "HGETALL answered a value that is not a string",
            )
        })?;
        fields.insert(name, value);
    }
    Ok(Some(fields))
}

/// Hides a password in a URL before it goes into an error message.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, key: &str) -> Result<Option<Fields>> {
        // The typed command, not a raw one: fred flushes custom commands (and scripts) at once,
        // while typed ones share a write with whatever else is queued on the connection, which
        // under load halves the system calls per command on both sides.
        let value: Value = self
            .with_client(key, |client| async move { client.hgetall(key).await })
            .await?;
        hash_fields(value)
    }

    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool> {
        let mut args = Vec::with_capacity(1 + 2 * fields.len());
        args.push(ttl_ms(ttl));
        push_pairs(&mut args, fields);
        self.run(&self.inner.create, key, &args).await
    }

    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let mut args = Vec::with_capacity(2 + 2 * set.len() + delete.len());
        args.push(ttl.map_or(Value::Integer(0), ttl_ms));
        args.push(Value::Integer(set.len() as i64));
        push_pairs(&mut args, set);
        args.extend(delete.iter().map(|f| Value::String(f.as_str().into())));
        self.run(&self.inner.update, key, &args).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.gate.wait().await;
        let mut existed = false;
        loop {
            let epoch = self.inner.gate.epoch();
            let (n, acked) = self
                .with_client(key, |client| async move {
                    let n: i64 = client.del(key).await?;
                    Ok((n, self.wait(&client).await?))
                })
                .await?;
            existed |= n > 0;
            if self.inner.gate.epoch() == epoch {
                return self.check_durable(acked).map(|()| existed);
            }
            // As for scripts: a delete that overlapped a failover is repeated on the new master.
            self.inner.gate.wait().await;
        }
    }

    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        // Delete first, create only if the old session still existed.
        if !self.delete(old).await? {
            return Ok(Regenerated::OldGone);
        }
        Ok(if self.create(new, fields, ttl).await? {
            Regenerated::Moved
        } else {
            Regenerated::NewTaken
        })
    }

    async fn ping(&self) -> Result<()> {
        // Every connection must answer: one dead primary is enough to fail some requests.
        let clients = match &self.inner.backend {
            Backend::Pool(pool) => pool.clients().to_vec(),
            Backend::Cluster(router) => router.primaries(),
        };
        for client in clients {
            let _: String = client.ping(None).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sentinel_events() {
        use SentinelEvent::*;
        let s = "mymaster";
        let details = "slave 127.0.0.1:6381 127.0.0.1 6381 @ mymaster 127.0.0.1 6380";
        assert_eq!(sentinel_event("+selected-slave", details, s), Promoting);
        assert_eq!(
            sentinel_event("+failover-state-send-slaveof-noone", details, s),
            Promoting
        );
        assert_eq!(
            sentinel_event(
                "-failover-abort-not-elected",
                "master mymaster 127.0.0.1 6380 @ mymaster 127.0.0.1 6380",
                s
            ),
            Aborted
        );
        assert_eq!(
            sentinel_event(
                "+switch-master",
                "mymaster 127.0.0.1 6380 127.0.0.1 6381",
                s
            ),
            Switched
        );
        assert_eq!(
            sentinel_event("+switch-master", "other 127.0.0.1 6380 127.0.0.1 6381", s),
            Other
        );
        assert_eq!(
            sentinel_event("+selected-slave", "slave x 1 2 @ other 1 2", s),
            Other
        );
    }

    #[tokio::test]
    async fn gate_holds_writes_until_resumed_and_is_bounded() {
        let gate = WriteGate::new(Duration::from_millis(200));
        let t = std::time::Instant::now();
        gate.wait().await;
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "open gate must not wait"
        );
        gate.pause();
        let g = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            g.resume();
        });
        let t = std::time::Instant::now();
        gate.wait().await;
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_millis(190),
            "{waited:?}"
        );
        gate.pause();
        let t = std::time::Instant::now();
        gate.wait().await;
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "a writer waits at most its timeout"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@localhost:6379"),
            "redis://user:***@localhost:6379"
        );
        assert_eq!(redact("redis://localhost"), "redis://localhost");
    }

    #[tokio::test]
    async fn bad_urls_are_config_errors() {
        for url in [
            "http://localhost",
            "redis-sentinel://localhost:26379",
            "nonsense",
        ] {
            let err = RedisStore::connect(url).await.unwrap_err();
            assert!(err.is_config(), "{url}: {err}");
        }
    }
}
