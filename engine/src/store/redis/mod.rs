//! The Redis store on fred: standalone, cluster and sentinel from one URL. This module holds the
//! store and its session operations; how one call runs (its deadline, the write guard, the
//! sentinel write gate, the Lua scripts' NOSCRIPT fallback and re-apply rule, `WAIT`
//! durability) lives in `exec`, the fred settings in `connect`, assembling a store in
//! `builder`, the scripts in `scripts`, failover watching in `sentinel`, slot routing in
//! `cluster`, the topology epoch in `epoch`, the near cache and its calls in `near`, the
//! per-user operations in `users`, string layouts in `strings`. The session operations name
//! one key, except `regenerate` (two), which in a cluster never sends them in one command; the
//! per-user ones name a user's index and its sessions, all under one hash tag.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, HashesInterface, KeysInterface},
    types::Value,
};
use tokio::time::Instant;

use self::{
    cluster::ClusterRouter,
    epoch::TopologyEpoch,
    exec::WriteCall,
    near::Near,
    scripts::{Scripts, TrackedScripts},
    sentinel::{Watcher, WriteGate},
};
use super::{BindOutcome, BindRequest, Fields, Listed, Regenerated, Revoke, SessionStore};
use crate::error::{Error, ErrorKind, Result};

mod builder;
mod cluster;
mod connect;
mod epoch;
mod exec;
mod scripts;
mod sentinel;
mod strings;

pub use self::{builder::RedisStoreBuilder, near::NearCache};

/// Awaits a store call within its deadline. On a cluster, the call as a whole runs under a timer
/// (refreshes and redirections may each take a command timeout), boxed, as the router's future is
/// large. On one node, every step bounds itself: the first command by fred's command timeout,
/// which is the call's and starts with it; a NOSCRIPT fallback and `WAIT` by what is left
/// (`exec::within_left`); a failover hold, a re-applied write and repeated deletes by
/// `timeout_at(deadline)`. So the call is awaited in place: wrapping it moves a fred command
/// future, several kilobytes, on every call, which measured a sixth of a write's CPU. A macro,
/// not a function, for the same reason (a function would take the future by value).
macro_rules! within_deadline {
    ($store:expr, $deadline:expr, $call:expr) => {
        match &$store.inner.backend {
            Backend::Pool(_) => $call.await,
            Backend::Cluster(_) => Box::pin($store.bounded($deadline, $call)).await,
        }
    };
}

// After the macro, which they use.
mod cached;
mod near;
mod users;

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
    /// Bumped by failovers, slot-map changes and redirections; read by the near cache.
    epoch: Arc<TopologyEpoch>,
    /// The bound on each store call as a whole.
    command_timeout: Duration,
    wait_replicas: Option<(u32, Duration)>,
    scripts: Scripts,
    users: users::UserScripts,
    /// The near cache and its scripts, when on.
    near: Option<(Arc<Near>, TrackedScripts)>,
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
        RedisStoreBuilder::new(url.into())
    }

    /// Connects to `url` with the default options.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    fn from_parts(
        backend: Backend,
        gate: WriteGate,
        epoch: Arc<TopologyEpoch>,
        command_timeout: Duration,
        wait_replicas: Option<(u32, Duration)>,
        watchers: Vec<Watcher>,
        near: Option<Arc<Near>>,
    ) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                backend,
                gate,
                epoch,
                command_timeout,
                wait_replicas,
                scripts: Scripts::new(),
                users: users::UserScripts::new(),
                near: near.map(|near| (near, TrackedScripts::new())),
                _watchers: watchers,
            }),
        }
    }

    /// With the near cache on: whether every connection's invalidation stream is confirmed
    /// right now, so loads are being cached (`None` with the cache off). Tracking is confirmed
    /// within moments of connecting; until then, and whenever a stream is lost, the store reads
    /// through to Redis.
    pub fn near_cache_confirmed(&self) -> Option<bool> {
        self.inner.near.as_ref().map(|(near, _)| near.confirmed())
    }

    /// Closes all connections.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis) when a connection could not be closed
    /// cleanly.
    pub async fn quit(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Pool(pool) => pool.quit().await.map_err(Error::from),
            Backend::Cluster(router) => {
                router.quit().await;
                Ok(())
            }
        }
    }

    async fn create_by(
        &self,
        call: &WriteCall<'_>,
        key: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<bool> {
        let args = ttl_and_pairs(ttl, fields);
        let n: i64 = self
            .run(call, &self.inner.scripts.create, &[key], &args, None)
            .await?;
        Ok(n == scripts::APPLIED)
    }

    async fn delete_by(&self, call: &WriteCall<'_>, key: &str) -> Result<bool> {
        let deadline = call.deadline;
        // As in `run`: the epoch before the gate, the held and repeated paths bounded and boxed.
        let epoch = self.inner.gate.epoch();
        let (n, acked) = if self.inner.gate.wait(deadline).await? {
            Box::pin(self.bounded(deadline, self.delete_once(call, key))).await?
        } else {
            self.delete_once(call, key).await?
        };
        if self.inner.gate.epoch() == epoch {
            return self.check_durable(acked).map(|()| n > 0);
        }
        Box::pin(self.bounded(deadline, self.delete_again(call, key, n > 0))).await
    }

    /// One `DEL` (and `WAIT`): how many keys it removed, and the replicas that acknowledged.
    async fn delete_once(&self, call: &WriteCall<'_>, key: &str) -> Result<(i64, Option<i64>)> {
        call.touch(key);
        let deadline = call.deadline;
        self.with_client(key, deadline, None, |client| async move {
            let n: i64 = client.del(key).await?;
            Ok((n, self.wait(&client, deadline).await?))
        })
        .await
    }

    /// A delete that overlapped a failover is repeated on the new master, as often as failovers
    /// overlap it, but never past the deadline.
    async fn delete_again(
        &self,
        call: &WriteCall<'_>,
        key: &str,
        mut existed: bool,
    ) -> Result<bool> {
        let deadline = call.deadline;
        loop {
            if Instant::now() >= deadline {
                return Err(self.timed_out());
            }
            let epoch = self.inner.gate.epoch();
            self.inner.gate.wait(deadline).await?;
            let (n, acked) = self.delete_once(call, key).await?;
            existed |= n > 0;
            if self.inner.gate.epoch() == epoch {
                return self.check_durable(acked).map(|()| existed);
            }
        }
    }

    async fn regenerate_by(
        &self,
        call: &WriteCall<'_>,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let same_node = match &self.inner.backend {
            Backend::Pool(_) => true,
            Backend::Cluster(_) => {
                fred::util::redis_keyslot(old.as_bytes())
                    == fred::util::redis_keyslot(new.as_bytes())
            }
        };
        if same_node {
            let args = ttl_and_pairs(ttl, fields);
            let n: i64 = self
                .run(
                    call,
                    &self.inner.scripts.regenerate,
                    &[old, new],
                    &args,
                    None,
                )
                .await?;
            return Ok(match n {
                scripts::APPLIED => Regenerated::Moved,
                scripts::REGENERATE_NEW_TAKEN => Regenerated::NewTaken,
                scripts::REGENERATE_OLD_GONE => Regenerated::OldGone,
                other => {
                    return Err(Error::new(
                        ErrorKind::Redis,
                        format!("the regenerate script answered {other}, expected 0, 1 or 2"),
                    ))
                }
            });
        }
        // The keys live in different slots (so usually on different primaries) and no Redis
        // command or script may span them. Fail closed instead: delete the old key first, its
        // answer says whether the session still existed, and create the new one only then. A
        // failure between the two steps loses the session (the user signs in again) but can never
        // leave two live copies or resurrect a destroyed one. The unlikely id collision leaves
        // the old session deleted; the caller's retry then answers OldGone.
        if !self.delete_by(call, old).await? {
            return Ok(Regenerated::OldGone);
        }
        Ok(if self.create_by(call, new, fields, ttl).await? {
            Regenerated::Moved
        } else {
            Regenerated::NewTaken
        })
    }
}

/// Script arguments `ttl_ms, field, value, …` (the create and regenerate layout).
fn ttl_and_pairs(ttl: Duration, pairs: &[(String, Bytes)]) -> Vec<Value> {
    let mut args = Vec::with_capacity(1 + 2 * pairs.len());
    args.push(ttl_ms(ttl));
    push_pairs(&mut args, pairs);
    args
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
        let (name, value) = field(name.into_string(), value)?;
        fields.insert(name, value);
    }
    Ok(Some(fields))
}

/// One field of a hash as Redis answered it: the name must be UTF-8 and the value a string
/// (kept as a slice of the read buffer). Shared by every reply that carries a session's fields.
fn field(name: Option<String>, value: Value) -> Result<(String, Bytes)> {
    let name = name
        .ok_or_else(|| Error::new(ErrorKind::Decode, "a stored field name is not valid UTF-8"))?;
    let value = value
        .into_bytes()
        .ok_or_else(|| Error::new(ErrorKind::Decode, "a stored value is not a string"))?;
    Ok((name, value))
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, key: &str) -> Result<Option<Fields>> {
        if let Some((near, scripts)) = &self.inner.near {
            return self.load_near(near, &scripts.load, &[key]).await;
        }
        // The typed command, not a raw one: fred flushes custom commands (and scripts) at once,
        // while typed ones share a write with whatever else is queued on the connection, which
        // under load halves the system calls per command on both sides.
        let value: Value = match &self.inner.backend {
            // One command with nothing held or retried: fred's own timeout, which is the command
            // timeout, already is the deadline. An outer timer per read measured about 8% of the
            // read path's CPU.
            Backend::Pool(pool) => pool.next().hgetall(key).await?,
            Backend::Cluster(router) => {
                let deadline = self.deadline();
                let read = router.call(
                    key,
                    deadline,
                    |client| async move { client.hgetall(key).await },
                );
                Box::pin(self.bounded(deadline, read)).await?
            }
        };
        hash_fields(value)
    }

    async fn load_bound(&self, key: &str, index: &str) -> Result<Option<Fields>> {
        let script = &self.inner.scripts.load_bound;
        let keys = [key, index];
        if let Some((near, _)) = &self.inner.near {
            // Eviction of the index is seen by the heartbeat (`evicted_keys`), which flushes
            // the link's entries: the next load runs this script again.
            return self.load_near(near, script, &keys).await;
        }
        let deadline = self.deadline();
        let reply: Value = within_deadline!(
            self,
            deadline,
            self.read_script(script, &keys, deadline, None)
        )?;
        let Value::Array(items) = reply else {
            return Err(cached::malformed());
        };
        Ok(cached::state(items.into_iter())?.1)
    }

    async fn create(&self, key: &str, fields: &[(String, Bytes)], ttl: Duration) -> Result<bool> {
        // With the near cache on too: the plain script, so a new key is not tracked (and its
        // reply not cached). Many new sessions never come back (bots, one-off visitors), and
        // tracking each one measured a third more Redis CPU per new session; a returning one is
        // cached by its first load.
        let call = self.write_call();
        within_deadline!(self, call.deadline, self.create_by(&call, key, fields, ttl))
    }

    async fn update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        delete: &[String],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let call = self.write_call();
        let mut args = Vec::with_capacity(2 + 2 * set.len() + delete.len());
        args.push(ttl.map_or(Value::Integer(0), ttl_ms));
        args.push(Value::Integer(set.len() as i64));
        push_pairs(&mut args, set);
        args.extend(delete.iter().map(|f| Value::String(f.as_str().into())));
        if let Some((near, scripts)) = &self.inner.near {
            let change = cached::Change { set, delete, ttl };
            return self
                .update_near(&call, near, scripts, key, &args, change)
                .await;
        }
        let n: i64 = within_deadline!(
            self,
            call.deadline,
            self.run(&call, &self.inner.scripts.update, &[key], &args, None)
        )?;
        Ok(n == scripts::APPLIED)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let call = self.write_call();
        within_deadline!(self, call.deadline, self.delete_by(&call, key))
    }

    async fn regenerate(
        &self,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let call = self.write_call();
        within_deadline!(
            self,
            call.deadline,
            self.regenerate_by(&call, old, new, fields, ttl)
        )
    }

    async fn ping(&self) -> Result<()> {
        let deadline = self.deadline();
        // Every connection must answer: one dead primary is enough to fail some requests. All of
        // them share the call's deadline, so stalled nodes cost one timeout in all, not one each.
        let clients = match &self.inner.backend {
            Backend::Pool(pool) => pool.clients().to_vec(),
            Backend::Cluster(router) => router.primaries(),
        };
        let pings = async {
            for client in &clients {
                let _: String = client.ping(None).await?;
            }
            Ok(())
        };
        self.bounded(deadline, pings).await
    }

    // The per-user operations are rare (logins, device lists, revokes) and each may read the
    // index first: always bounded as a whole, boxed.
    async fn bind(&self, request: &BindRequest<'_>) -> Result<BindOutcome> {
        let call = self.write_call();
        Box::pin(self.bounded(call.deadline, self.bind_by(&call, request))).await
    }

    async fn list_user(&self, index: &str) -> Result<Vec<Listed>> {
        // The listing script prunes entries of expired sessions: a write call like the others.
        let call = self.write_call();
        Box::pin(self.bounded(call.deadline, self.list_by(&call, index))).await
    }

    async fn revoke(&self, index: &str, which: Revoke<'_>) -> Result<Vec<String>> {
        let call = self.write_call();
        Box::pin(self.bounded(call.deadline, self.revoke_by(&call, index, which))).await
    }

    async fn unbind(&self, index: &str, key: &str, handle: Option<&str>) -> Result<bool> {
        let call = self.write_call();
        Box::pin(self.bounded(call.deadline, self.unbind_by(&call, index, key, handle))).await
    }

    async fn touch_user(&self, index: &str, handle: &str, ttl: Duration) -> Result<bool> {
        let call = self.write_call();
        Box::pin(self.bounded(call.deadline, self.touch_by(&call, index, handle, ttl))).await
    }

    async fn rebind(
        &self,
        index: &str,
        handle: &str,
        old: &str,
        new: &str,
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let call = self.write_call();
        let rebind = self.rebind_by(&call, index, handle, (old, new), fields, ttl);
        Box::pin(self.bounded(call.deadline, rebind)).await
    }
}
