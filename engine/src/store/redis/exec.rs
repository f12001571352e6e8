//! How one store call runs: its deadline, the client that serves its key (pinned for the near
//! cache), the sentinel write gate, `EVALSHA` with its NOSCRIPT fallback and re-apply rule, and
//! `WAIT` durability.

use std::{future::Future, time::Duration};

use fred::{
    interfaces::{ClientLike, LuaInterface, ServerInterface},
    prelude::Client,
    types::{MultipleKeys, Value},
};
use tokio::time::Instant;

use super::{
    cluster::ClusterRouter,
    epoch::Change,
    near::{Registered, Writes},
    scripts::{Answer, Script},
    Backend, RedisStore,
};
use crate::error::{Error, ErrorKind, Result};

/// One store call that may create, change or delete keys: its deadline and, with the near cache
/// on, the guard over every key it touches ([`Writes`]). [`RedisStore::run`] and the `DEL` helper
/// take it and register their keys before sending, so no write reaches Redis unregistered, and
/// whatever the call does (retries, several scripts, a dropped future) its keys' entries are
/// dropped when it ends.
pub(super) struct WriteCall<'a> {
    pub(super) deadline: Instant,
    writes: Option<Writes<'a>>,
}

impl WriteCall<'_> {
    /// Registers `key` as touched by this call; its registration when the cache is on.
    pub(super) fn touch(&self, key: &str) -> Option<Registered> {
        self.writes.as_ref().map(|w| w.touch(key))
    }

    /// The call decided `key`'s cache entry itself.
    pub(super) fn settle(&self, key: &str) {
        if let Some(w) = &self.writes {
            w.settle(key);
        }
    }
}

impl RedisStore {
    /// A write call starting now.
    pub(super) fn write_call(&self) -> WriteCall<'_> {
        WriteCall {
            deadline: self.deadline(),
            writes: self.inner.near.as_ref().map(|(near, _)| near.writes()),
        }
    }

    /// The deadline of a call that starts now.
    pub(super) fn deadline(&self) -> Instant {
        let now = Instant::now();
        // `Duration::MAX` ("no timeout") must not overflow: cap it at about a century.
        now.checked_add(self.inner.command_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
    }

    /// Runs one whole store call against `deadline`: whatever `call` is doing then (a held
    /// write, a redirection, a fred command) is dropped and the call fails with a timeout. The
    /// inner loops also check the deadline, so they stop working rather than only being dropped.
    pub(super) async fn bounded<T>(
        &self,
        deadline: Instant,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    pub(super) fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "the Redis store call did not finish within the command timeout ({:?}, retries, \
                 redirections and failover holds included); check Redis health",
                self.inner.command_timeout
            ),
        )
    }

    /// Runs `f` on a client that serves `key`: `pin` when given (the near cache's connection for
    /// the key; on a cluster, a redirection then flushes the cache and routes afresh).
    pub(super) async fn with_client<R, F, Fut>(
        &self,
        key: &str,
        deadline: Instant,
        pin: Option<&Client>,
        f: F,
    ) -> Result<R>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<R, fred::error::Error>>,
    {
        match (&self.inner.backend, pin) {
            (Backend::Pool(pool), pin) => Ok(f(pin.unwrap_or_else(|| pool.next()).clone()).await?),
            (Backend::Cluster(router), Some(pin)) => match f(pin.clone()).await {
                Ok(v) => Ok(v),
                Err(err) if ClusterRouter::is_redirect(&err) => {
                    // The pinned connection's node no longer serves the key.
                    self.inner.epoch.bump(Change::Redirect);
                    Box::pin(router.call(key, deadline, f)).await
                }
                Err(err) => Err(err.into()),
            },
            // Boxed: the router's future (refreshes, redirections, their timers) is several
            // times the size of a command's, and held inline it would make every store call's
            // future that large, standalone ones included; moving it measured about 13k
            // instructions per request.
            (Backend::Cluster(router), None) => Box::pin(router.call(key, deadline, f)).await,
        }
    }

    /// Runs a write script on the node that serves `keys[0]` (all keys must share its slot).
    /// Writes wait while the sentinel gate is closed; a write that overlapped a failover is run
    /// again on the new master and the script's [`scripts::Reapply`] rule picks the answer.
    pub(super) async fn run<R: Answer>(
        &self,
        call: &WriteCall<'_>,
        script: &Script,
        keys: &[&str],
        args: &[Value],
        pin: Option<&Client>,
    ) -> Result<R> {
        let deadline = call.deadline;
        // The epoch is read before the gate is looked at (a pause sets the flag, then moves the
        // epoch): a pause landing in between either holds this write or shows as a change.
        let epoch = self.inner.gate.epoch();
        let first = if self.inner.gate.wait(deadline).await? {
            // Held by a failover: what is left of the call bounds the script (boxed, as below).
            let once = self.run_once(call, script, keys, args, pin);
            Box::pin(self.bounded(deadline, once)).await?
        } else {
            // Bounded by fred's command timeout, which starts now.
            self.run_once(call, script, keys, args, pin).await?
        };
        if self.inner.gate.epoch() == epoch {
            return Ok(first);
        }
        // A sentinel failover began while this write was in flight: the old master may have
        // applied it after the replica was promoted. Re-apply it on the new master once the switch
        // is announced, within what is left of the call. Boxed, as this path is rare: a fred
        // command future is several kilobytes, and every copy of it inline costs each write.
        let again = Box::pin(self.bounded(deadline, async {
            self.inner.gate.wait(deadline).await?;
            self.run_once(call, script, keys, args, pin).await
        }))
        .await?;
        Ok(script.reapply.pick(first, again))
    }

    /// One run of `script`, its keys registered first (see [`WriteCall`]), then `WAIT`.
    pub(super) async fn run_once<R: Answer>(
        &self,
        call: &WriteCall<'_>,
        script: &Script,
        keys: &[&str],
        args: &[Value],
        pin: Option<&Client>,
    ) -> Result<R> {
        for key in keys {
            call.touch(key);
        }
        let deadline = call.deadline;
        self.with_client(keys[0], deadline, pin, |client| async move {
            let n = eval(&client, script, keys, args, deadline).await?;
            Ok((n, self.wait(&client, deadline).await?))
        })
        .await
        .and_then(|(n, acked)| self.check_durable(acked).map(|()| n))
    }

    /// Runs a read-only script (no gate, no WAIT, no registration) on a client serving
    /// `keys[0]`.
    pub(super) async fn read_script<R: Answer>(
        &self,
        script: &Script,
        keys: &[&str],
        deadline: Instant,
        pin: Option<&Client>,
    ) -> Result<R> {
        self.with_client(keys[0], deadline, pin, |client| async move {
            eval(&client, script, keys, &[], deadline).await
        })
        .await
    }

    /// `WAIT` on the connection that carried the write, when durability is on, for at most the
    /// WAIT timeout or what is left of the call (server side, and fred's timeout for the
    /// command too). Returns how many replicas acknowledged.
    pub(super) async fn wait(
        &self,
        client: &Client,
        deadline: Instant,
    ) -> std::result::Result<Option<i64>, fred::error::Error> {
        match self.inner.wait_replicas {
            None => Ok(None),
            Some((n, timeout)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = i64::try_from(timeout.min(left).as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1);
                within_left(client, deadline)
                    .wait(i64::from(n), ms)
                    .await
                    .map(Some)
            }
        }
    }

    pub(super) fn check_durable(&self, acked: Option<i64>) -> Result<()> {
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

/// `EVALSHA`; on a node that has not seen the script yet (a restart, a failover, a new node),
/// `SCRIPT LOAD` and `EVALSHA` again. Not `EVAL`: on an ASK target only the first command after
/// `ASKING` may touch the migrating slot, and SCRIPT LOAD names no key, so the second EVALSHA
/// is redirected back and the router's next `ASKING` finds the script. Arguments are copied per
/// attempt (values are reference-counted bytes), since fred takes them by value.
///
/// The deadline: the first command carries fred's command timeout, which is the call's own
/// and started with it; the fallback gets only what is left. So a call is bounded by its
/// deadline on one node too, without a timer around every call (wrapping each call's future
/// measured about a sixth of a write's CPU).
pub(super) async fn eval<R: fred::types::FromValue>(
    client: &Client,
    script: &Script,
    keys: &[&str],
    args: &[Value],
    deadline: Instant,
) -> std::result::Result<R, fred::error::Error> {
    let keys_of = || keys.iter().copied().collect::<MultipleKeys>();
    match client
        .evalsha(script.sha1.clone(), keys_of(), args.to_vec())
        .await
    {
        Err(err) if err.details().starts_with("NOSCRIPT") => {
            let _: Value = within_left(client, deadline)
                .script_load(script.source.clone())
                .await?;
            within_left(client, deadline)
                .evalsha(script.sha1.clone(), keys_of(), args.to_vec())
                .await
        }
        other => other,
    }
}

/// `client` with fred's timeout for its next commands set to what is left until `deadline`
/// (at least a millisecond, so an expired call fails at once rather than never).
pub(super) fn within_left(
    client: &Client,
    deadline: Instant,
) -> fred::clients::WithOptions<Client> {
    let left = deadline.saturating_duration_since(Instant::now());
    client.with_options(&fred::types::config::Options {
        timeout: Some(left.max(Duration::from_millis(1))),
        ..Default::default()
    })
}
