//! [`StringStore`] on the Redis store's connections, for string layouts (the koa-session-redis3
//! JSON profile). Same deadline, routing, sentinel write gate and `WAIT` as the hash commands;
//! the guarded writes are small Lua scripts of their own. Only `rename` names two keys, and on a
//! cluster it never sends them in one command.

use std::{sync::LazyLock, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    interfaces::KeysInterface,
    types::{Expiration, SetOptions, Value},
};

use super::{
    exec::WriteCall,
    scripts::{Reapply, Script},
    Backend, RedisStore,
};
use crate::{
    error::{Error, ErrorKind, Result},
    store::{Renamed, Replaced, SessionStore, StringStore},
};

/// `KEYS[1]`; ARGV expected, value, unit (`EX`/`PX`), ttl. `{1}` done, `{0}` gone,
/// `{2, current}` changed.
const REPLACE_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
if cur ~= ARGV[1] then return {2, cur} end
redis.call('SET', KEYS[1], ARGV[2], ARGV[3], ARGV[4])
return {1}
";

/// `KEYS` old, new; ARGV as [`REPLACE_LUA`]. `{3}`: new taken (checked first, so a collision
/// leaves the old session alone).
const RENAME_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
if cur ~= ARGV[1] then return {2, cur} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], ARGV[3], ARGV[4])
return {1}
";

/// `KEYS[1]`; ARGV expected. Deletes only an unchanged value (the first half of a cross-slot
/// rename).
const DELETE_IF_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
if cur ~= ARGV[1] then return {2, cur} end
redis.call('DEL', KEYS[1])
return {1}
";

// The re-apply rule is the caller's `combine` (the answers carry values), not the script's.
static REPLACE: LazyLock<Script> = LazyLock::new(|| Script::new(REPLACE_LUA, Reapply::TakeLatest));
static RENAME: LazyLock<Script> = LazyLock::new(|| Script::new(RENAME_LUA, Reapply::TakeLatest));
static DELETE_IF: LazyLock<Script> =
    LazyLock::new(|| Script::new(DELETE_IF_LUA, Reapply::TakeLatest));

/// The answer of a guarded-write script: its code and, for "changed", the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer(i64, Option<Bytes>);

/// `EX seconds` when the TTL is whole seconds (what the seed's EXPIRE sets), else `PX`.
fn ttl_args(ttl: Duration) -> [Value; 2] {
    let ttl = ttl.max(Duration::from_millis(1));
    if ttl.subsec_millis() == 0 {
        [
            Value::from_static_str("EX"),
            Value::Integer(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        ]
    } else {
        [
            Value::from_static_str("PX"),
            Value::Integer(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        ]
    }
}

fn expiration(ttl: Duration) -> Expiration {
    let ttl = ttl.max(Duration::from_millis(1));
    if ttl.subsec_millis() == 0 {
        Expiration::EX(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
    } else {
        Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
    }
}

fn answer(value: Value) -> Result<Answer> {
    let bad = || {
        Error::new(
            ErrorKind::Redis,
            "a session string script answered in an unexpected shape",
        )
    };
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let code = items.next().and_then(|v| v.as_i64()).ok_or_else(bad)?;
    Ok(Answer(code, items.next().and_then(Value::into_bytes)))
}

impl RedisStore {
    /// Runs a guarded-write script on the node serving `keys[0]`, behind the sentinel gate. A
    /// write that overlapped a failover is run again on the new master; `combine` picks the
    /// answer from both runs.
    async fn run_string_script(
        &self,
        call: &WriteCall<'_>,
        script: &Script,
        keys: &[&str],
        args: Vec<Value>,
        combine: impl Fn(Answer, Answer) -> Answer,
    ) -> Result<Answer> {
        let deadline = call.deadline;
        let epoch = self.inner.gate.epoch();
        self.inner.gate.wait(deadline).await?;
        let first = answer(self.run_once(call, script, keys, &args, None).await?)?;
        if self.inner.gate.epoch() == epoch {
            return Ok(first);
        }
        self.inner.gate.wait(deadline).await?;
        let again = answer(self.run_once(call, script, keys, &args, None).await?)?;
        Ok(combine(first, again))
    }

    async fn set_new_by(
        &self,
        call: &WriteCall<'_>,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool> {
        let deadline = call.deadline;
        call.touch(key);
        self.inner.gate.wait(deadline).await?;
        let (reply, acked) = self
            .with_client(key, deadline, None, |client| {
                let value = value.clone();
                async move {
                    let reply: Value = client
                        .set(
                            key,
                            value,
                            Some(expiration(ttl)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await?;
                    Ok((reply, self.wait(&client, deadline).await?))
                }
            })
            .await?;
        self.check_durable(acked)?;
        Ok(!matches!(reply, Value::Null))
    }

    async fn rename_by(
        &self,
        call: &WriteCall<'_>,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed> {
        let same_node = match &self.inner.backend {
            Backend::Pool(_) => true,
            Backend::Cluster(_) => {
                fred::util::redis_keyslot(old.as_bytes())
                    == fred::util::redis_keyslot(new.as_bytes())
            }
        };
        let [unit, amount] = ttl_args(ttl);
        if same_node {
            let args = vec![Value::Bytes(expected), Value::Bytes(value), unit, amount];
            // A first success counts: the re-run finds its own write (new taken, old gone).
            let keep_first =
                |first: Answer, again: Answer| if first.0 == 1 { first } else { again };
            let a = self
                .run_string_script(call, &RENAME, &[old, new], args, keep_first)
                .await?;
            return Ok(match a {
                Answer(1, _) => Renamed::Done,
                Answer(0, _) => Renamed::OldGone,
                Answer(3, _) => Renamed::NewTaken,
                Answer(_, current) => Renamed::OldChanged(current.unwrap_or_default()),
            });
        }
        // Different slots: no command may name both keys. Fail closed as the hash layout does:
        // delete the old value only if unchanged, then create the new key only if that worked.
        let keep_first = |first: Answer, again: Answer| if first.0 == 1 { first } else { again };
        let a = self
            .run_string_script(
                call,
                &DELETE_IF,
                &[old],
                vec![Value::Bytes(expected)],
                keep_first,
            )
            .await?;
        match a {
            Answer(1, _) => {}
            Answer(0, _) => return Ok(Renamed::OldGone),
            Answer(_, current) => return Ok(Renamed::OldChanged(current.unwrap_or_default())),
        }
        Ok(if self.set_new_by(call, new, value, ttl).await? {
            Renamed::Done
        } else {
            Renamed::NewTaken
        })
    }
}

#[async_trait]
impl StringStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let deadline = self.deadline();
        let read = self.with_client(key, deadline, None, |client| async move {
            client.get::<Option<Bytes>, _>(key).await
        });
        self.bounded(deadline, read).await
    }

    async fn set_new(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let call = self.write_call();
        self.bounded(call.deadline, self.set_new_by(&call, key, value, ttl))
            .await
    }

    async fn replace(
        &self,
        key: &str,
        expected: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Replaced> {
        let call = self.write_call();
        let [unit, amount] = ttl_args(ttl);
        let written = value.clone();
        let args = vec![Value::Bytes(expected), Value::Bytes(value), unit, amount];
        // The re-run after a failover finds this very value when the first run reached the new
        // master: that is a success, not a concurrent change.
        let combine = move |_first: Answer, again: Answer| match again {
            Answer(2, Some(current)) if current == written => Answer(1, None),
            other => other,
        };
        let a = self
            .bounded(
                call.deadline,
                self.run_string_script(&call, &REPLACE, &[key], args, combine),
            )
            .await?;
        Ok(match a {
            Answer(1, _) => Replaced::Done,
            Answer(0, _) => Replaced::Gone,
            Answer(_, current) => Replaced::Changed(current.unwrap_or_default()),
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        SessionStore::delete(self, key).await
    }

    async fn rename(
        &self,
        old: &str,
        expected: Bytes,
        new: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Renamed> {
        let call = self.write_call();
        self.bounded(
            call.deadline,
            self.rename_by(&call, old, expected, new, value, ttl),
        )
        .await
    }

    async fn ping(&self) -> Result<()> {
        SessionStore::ping(self).await
    }

    fn call_timeout(&self) -> Option<Duration> {
        Some(self.inner.command_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_use_ex_like_the_seed() {
        assert_eq!(
            ttl_args(Duration::from_secs(3600))[0],
            Value::from_static_str("EX")
        );
        assert_eq!(
            ttl_args(Duration::from_millis(1500))[1],
            Value::Integer(1500)
        );
        assert!(matches!(expiration(Duration::ZERO), Expiration::PX(1)));
    }

    #[test]
    fn script_answers_parse() {
        let v = Value::Array(vec![
            Value::Integer(2),
            Value::Bytes(Bytes::from_static(b"{}")),
        ]);
        assert_eq!(
            answer(v).unwrap(),
            Answer(2, Some(Bytes::from_static(b"{}")))
        );
        assert!(answer(Value::Integer(1)).is_err());
    }
}
