//! The per-user operations on Redis. A user's index and sessions share one hash tag, so each
//! operation is one script. Every key a script touches is declared in `KEYS`, so during a slot
//! migration Redis answers ASK or TRYAGAIN instead of running it on half the keys (a script
//! that read a migrated session as missing would drop a live session's entry). That is why the
//! operations that walk the index read it first and hand the script the entries they saw; the
//! script checks the index still holds exactly those (else it answers [`STALE`] and the call
//! reads again), so no concurrent login, regenerate or revoke is missed.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fred::{interfaces::HashesInterface, types::Value};
use tokio::time::Instant;

use super::{
    hash_fields, push_pairs,
    scripts::{Reapply, Script, APPLIED},
    ttl_ms, Backend, RedisStore,
};
use crate::{
    error::{Error, ErrorKind, Result},
    record::LISTED_FIELDS,
    store::{BindOutcome, BindRequest, Listed, Regenerated, Revoke},
    users::CapPolicy,
};

/// A script's answer when the index changed since it was read: read again.
const STALE: i64 = -1;
/// The longest pause between two attempts after [`STALE`] or a `TRYAGAIN`; attempts go on until
/// the call's deadline (a slot migration keeps answering TRYAGAIN to multi-key scripts until
/// every key of the slot has moved).
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// A login. KEYS: index, new key, the n entry keys read, then the old key (modes `g`, `b`, `x`)
/// and the old session's index (mode `x`: another user's index on the same node). ARGV: handle,
/// ttl_ms, cap (0: none), refuse (1/0), n, old mode (`''`, `g` guest, `b` bound here, `x` bound
/// elsewhere), old handle, the n entry handles, then field/value pairs. Answers `{1, evicted
/// handles…}`, `{0}` new key taken, `{2}` old gone, `{3, live}` refused, `{-1}` stale.
const BIND_LUA: &str = r"
local idx, new = KEYS[1], KEYS[2]
local handle, ttl, cap, refuse = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local n, mode, oldhandle = tonumber(ARGV[5]), ARGV[6], ARGV[7]
if redis.call('HLEN', idx) ~= n then return {-1} end
for i = 1, n do
  if redis.call('HGET', idx, ARGV[7 + i]) ~= KEYS[2 + i] then return {-1} end
end
if redis.call('EXISTS', new) == 1 then
  -- This very login, applied by an attempt whose answer was lost: done.
  if redis.call('HGET', idx, handle) == new then return {1} end
  return {0}
end
local oldkey, oldidx = nil, nil
if mode ~= '' then
  oldkey = KEYS[3 + n]
  if redis.call('EXISTS', oldkey) == 0 then return {2} end
  if mode == 'b' then oldidx = idx elseif mode == 'x' then oldidx = KEYS[4 + n] end
end
local live = {}
for i = 1, n do
  local h, k = ARGV[7 + i], KEYS[2 + i]
  if redis.call('EXISTS', k) == 0 then
    redis.call('HDEL', idx, h)
  elseif not (oldidx == idx and h == oldhandle) then
    live[#live + 1] = {tonumber(redis.call('HGET', k, '__tessera_seen')) or 0, h, k}
  end
end
local out = {1}
if cap > 0 and #live >= cap then
  if refuse then return {3, #live} end
  table.sort(live, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  for i = 1, #live - cap + 1 do
    redis.call('DEL', live[i][3])
    redis.call('HDEL', idx, live[i][2])
    out[#out + 1] = live[i][2]
  end
end
if oldkey then
  redis.call('DEL', oldkey)
  if oldidx then
    redis.call('HDEL', oldidx, oldhandle)
    if oldidx ~= idx and redis.call('HLEN', oldidx) == 0 then redis.call('DEL', oldidx) end
  end
end
redis.call('HSET', new, unpack(ARGV, 8 + n))
redis.call('PEXPIRE', new, ttl)
redis.call('HSET', idx, handle, new)
if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
return out
";

/// The live sessions. KEYS: index, the n entry keys read; ARGV: n, the n handles. Prunes
/// entries whose session is gone; answers `{1, handle, {meta, device, seen}, …}`, or `{-1}`
/// when an entry read now names another key (a regenerate since).
const LIST_LUA: &str = r"
local idx, n = KEYS[1], tonumber(ARGV[1])
local out = {1}
for i = 1, n do
  local h, k = ARGV[1 + i], KEYS[1 + i]
  local now = redis.call('HGET', idx, h)
  if now == k then
    if redis.call('EXISTS', k) == 1 then
      out[#out + 1] = h
      out[#out + 1] = redis.call('HMGET', k, '__tessera', '__tessera_device', '__tessera_seen')
    else
      redis.call('HDEL', idx, h)
    end
  elseif now then
    return {-1}
  end
end
if redis.call('HLEN', idx) == 0 then redis.call('DEL', idx) end
return out
";

/// Ends sessions. KEYS: index, the n entry keys to end; ARGV: n, the n handles, then the index's
/// size when read for a revoke-all (`-1` for one), so a login since makes it read again.
/// Answers `{1, handles of sessions that existed…}` or `{-1}`.
const REVOKE_LUA: &str = r"
local idx, n, size = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2 + tonumber(ARGV[1])])
if size >= 0 and redis.call('HLEN', idx) ~= size then return {-1} end
for i = 1, n do
  local now = redis.call('HGET', idx, ARGV[1 + i])
  if now and now ~= KEYS[1 + i] then return {-1} end
end
local out = {1}
for i = 1, n do
  local h, k = ARGV[1 + i], KEYS[1 + i]
  if redis.call('HGET', idx, h) == k then
    if redis.call('DEL', k) == 1 then out[#out + 1] = h end
    redis.call('HDEL', idx, h)
  end
end
if redis.call('HLEN', idx) == 0 then redis.call('DEL', idx) end
return out
";

/// A logout. KEYS: index, key; ARGV: handle (`''`: find the entry by key). Answers 1 when the
/// session existed.
const UNBIND_LUA: &str = r"
local existed = redis.call('DEL', KEYS[2])
if ARGV[1] ~= '' then
  if redis.call('HGET', KEYS[1], ARGV[1]) == KEYS[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
else
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i + 1] == KEYS[2] then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return existed
";

/// Before a renewal. KEYS: index; ARGV: handle, ttl_ms. Answers 1 when the entry is there (its
/// index now lives at least ttl_ms), 0 when it is not (nothing changed).
const TOUCH_LUA: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
";

/// A regenerate in the user's slot. KEYS: index, old, new; ARGV: handle, ttl_ms, field/value
/// pairs. Answers 1 moved, 0 new key taken, 2 old gone (or no longer listed under handle).
const REBIND_LUA: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('HGET', KEYS[1], ARGV[1]) == KEYS[3] then return 1 end
  return 0
end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= KEYS[2] then return 2 end
if redis.call('DEL', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 2
end
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], KEYS[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
";

/// Every per-user script source, for preloading.
pub(super) const ALL: [&str; 6] = [
    BIND_LUA, LIST_LUA, REVOKE_LUA, UNBIND_LUA, TOUCH_LUA, REBIND_LUA,
];

/// The per-user scripts.
#[derive(Debug)]
pub(super) struct UserScripts {
    bind: Script,
    list: Script,
    revoke: Script,
    unbind: Script,
    touch: Script,
    rebind: Script,
}

impl UserScripts {
    pub(super) fn new() -> Self {
        UserScripts {
            // A re-run finds its own new key (or its old key gone) and answers "not done".
            bind: Script::new(BIND_LUA, Reapply::KeepFirstSuccess),
            list: Script::new(LIST_LUA, Reapply::TakeLatest),
            revoke: Script::new(REVOKE_LUA, Reapply::KeepFirstSuccess),
            unbind: Script::new(UNBIND_LUA, Reapply::KeepFirstSuccess),
            touch: Script::new(TOUCH_LUA, Reapply::TakeLatest),
            rebind: Script::new(REBIND_LUA, Reapply::KeepFirstSuccess),
        }
    }
}

/// The entries of an index as read: handle → key.
type Entries = Vec<(String, String)>;

fn integers(reply: &Value) -> Option<i64> {
    match reply {
        Value::Array(items) => items.first()?.as_i64(),
        other => other.as_i64(),
    }
}

fn strings_after_status(reply: Value) -> Vec<String> {
    match reply {
        Value::Array(items) => items
            .into_iter()
            .skip(1)
            .filter_map(|v| v.into_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether another attempt may succeed: a slot mid-migration (TRYAGAIN), a connection lost or
/// a node failing over (the router's own attempts ran out). Every per-user script may run
/// twice: a login or a regenerate that finds its own new key already listed answers "done",
/// and the others are idempotent.
fn retryable(err: &Error) -> bool {
    matches!(err.kind(), ErrorKind::Redis | ErrorKind::Timeout)
}

impl RedisStore {
    fn user_scripts(&self) -> &UserScripts {
        &self.inner.users
    }

    /// The index as it is now.
    async fn entries(&self, index: &str, deadline: Instant) -> Result<Entries> {
        let value: Value = self
            .with_client(index, deadline, None, |client| async move {
                client.hgetall(index).await
            })
            .await?;
        let fields = hash_fields(value)?.unwrap_or_default();
        let mut entries: Entries = fields
            .into_iter()
            .map(|(h, k)| (h, String::from_utf8_lossy(&k).into_owned()))
            .collect();
        entries.sort();
        Ok(entries)
    }

    /// Runs `attempt` until it answers something other than [`STALE`] or a `TRYAGAIN`, never
    /// past `deadline`.
    async fn until_settled<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let mut pause = Duration::from_millis(1);
        loop {
            match attempt().await {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                Err(err) if retryable(&err) => {}
                Err(err) => return Err(err),
            }
            if Instant::now() + pause >= deadline {
                break;
            }
            // Back off a little: a migration or a burst of logins of one user is settling.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
        Err(Error::new(
            ErrorKind::Timeout,
            "the user's index kept changing (or its slot kept migrating) for the whole call; \
             retry the request",
        ))
    }

    fn invalidate_near(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) {
        if let Some((near, _)) = &self.inner.near {
            for key in keys {
                near.invalidate(key.as_ref());
            }
        }
    }

    fn one_node(&self) -> bool {
        matches!(self.inner.backend, Backend::Pool(_))
    }

    pub(super) async fn bind_by(
        &self,
        req: &BindRequest<'_>,
        deadline: Instant,
    ) -> Result<BindOutcome> {
        let mut old = req.old;
        // Another slot on a cluster cannot share the script: end the old session first, fail
        // closed, as a cross-slot regenerate does.
        let same_slot = |key: &str| {
            fred::util::redis_keyslot(key.as_bytes())
                == fred::util::redis_keyslot(req.index.as_bytes())
        };
        if let Some(o) = old.filter(|o| !self.one_node() && !same_slot(o.key)) {
            if let Some(cap) = req.cap.filter(|c| c.policy == CapPolicy::Refuse) {
                // Refuse before ending the old session where possible (the script checks again).
                let live = self.list_by(req.index, deadline).await?.len();
                if live >= cap.max.max(1) as usize {
                    return Ok(BindOutcome::Refused { live });
                }
            }
            let existed = match o.bound {
                Some((index, handle)) => {
                    self.unbind_by(index, o.key, Some(handle), deadline).await?
                }
                None => self.delete_by(o.key, deadline).await?,
            };
            self.invalidate_near([o.key]);
            if !existed {
                return Ok(BindOutcome::OldGone);
            }
            old = None;
        }
        let outcome = self
            .until_settled(deadline, || async {
                let entries = self.entries(req.index, deadline).await?;
                let mode = match old {
                    None => "",
                    Some(o) => match o.bound {
                        None => "g",
                        Some((index, _)) if index == req.index => "b",
                        Some(_) => "x",
                    },
                };
                let mut keys: Vec<&str> = vec![req.index, req.key];
                keys.extend(entries.iter().map(|(_, k)| k.as_str()));
                if let Some(o) = old {
                    keys.push(o.key);
                    if mode == "x" {
                        keys.push(o.bound.map_or("", |(index, _)| index));
                    }
                }
                let cap = req.cap.map_or(0, |c| i64::from(c.max.max(1)));
                let refuse = req.cap.is_some_and(|c| c.policy == CapPolicy::Refuse);
                let mut args: Vec<Value> = vec![
                    Value::String(req.handle.into()),
                    ttl_ms(req.ttl),
                    Value::Integer(cap),
                    Value::Integer(i64::from(refuse)),
                    Value::Integer(entries.len() as i64),
                    Value::String(mode.into()),
                    Value::String(old.and_then(|o| o.bound).map_or("", |(_, h)| h).into()),
                ];
                args.extend(
                    entries
                        .iter()
                        .map(|(h, _)| Value::String(h.as_str().into())),
                );
                push_pairs(&mut args, req.fields);
                let reply: Value = self
                    .run(&self.user_scripts().bind, &keys, &args, deadline, None)
                    .await?;
                let outcome = match integers(&reply) {
                    Some(STALE) => return Ok(None),
                    Some(APPLIED) => {
                        let evicted = strings_after_status(reply);
                        let by_handle: HashMap<&str, &str> = entries
                            .iter()
                            .map(|(h, k)| (h.as_str(), k.as_str()))
                            .collect();
                        self.invalidate_near(
                            evicted.iter().filter_map(|h| by_handle.get(h.as_str())),
                        );
                        BindOutcome::Bound { evicted }
                    }
                    Some(0) => BindOutcome::NewTaken,
                    Some(2) => BindOutcome::OldGone,
                    Some(3) => BindOutcome::Refused {
                        live: match &reply {
                            Value::Array(items) => {
                                items.get(1).and_then(Value::as_i64).unwrap_or(0) as usize
                            }
                            _ => 0,
                        },
                    },
                    other => return Err(unexpected("login", other)),
                };
                Ok(Some(outcome))
            })
            .await?;
        if let Some(o) = old {
            self.invalidate_near([o.key]);
        }
        Ok(outcome)
    }

    pub(super) async fn list_by(&self, index: &str, deadline: Instant) -> Result<Vec<Listed>> {
        self.until_settled(deadline, || async {
            let entries = self.entries(index, deadline).await?;
            if entries.is_empty() {
                return Ok(Some(Vec::new()));
            }
            let mut keys: Vec<&str> = vec![index];
            keys.extend(entries.iter().map(|(_, k)| k.as_str()));
            let mut args = vec![Value::Integer(entries.len() as i64)];
            args.extend(
                entries
                    .iter()
                    .map(|(h, _)| Value::String(h.as_str().into())),
            );
            let reply: Value = self
                .run(&self.user_scripts().list, &keys, &args, deadline, None)
                .await?;
            if integers(&reply) == Some(STALE) {
                return Ok(None);
            }
            let Value::Array(items) = reply else {
                return Err(unexpected("device list", None));
            };
            let mut listed = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter().skip(1);
            while let (Some(handle), Some(Value::Array(values))) = (items.next(), items.next()) {
                let handle = handle.into_string().unwrap_or_default();
                let fields = LISTED_FIELDS
                    .into_iter()
                    .zip(values)
                    .filter_map(|(name, v)| Some((name.to_owned(), v.into_bytes()?)))
                    .collect::<HashMap<String, Bytes>>();
                listed.push(Listed::new(handle, fields));
            }
            Ok(Some(listed))
        })
        .await
    }

    pub(super) async fn revoke_by(
        &self,
        index: &str,
        which: Revoke<'_>,
        deadline: Instant,
    ) -> Result<Vec<String>> {
        self.until_settled(deadline, || async {
            let entries = self.entries(index, deadline).await?;
            let (chosen, size): (Vec<&(String, String)>, i64) = match which {
                Revoke::One(handle) => (entries.iter().filter(|(h, _)| h == handle).collect(), -1),
                Revoke::All { keep } => (
                    entries
                        .iter()
                        .filter(|(h, _)| Some(h.as_str()) != keep)
                        .collect(),
                    entries.len() as i64,
                ),
            };
            if chosen.is_empty() {
                return Ok(Some(Vec::new()));
            }
            let mut keys: Vec<&str> = vec![index];
            keys.extend(chosen.iter().map(|(_, k)| k.as_str()));
            let mut args = vec![Value::Integer(chosen.len() as i64)];
            args.extend(chosen.iter().map(|(h, _)| Value::String(h.as_str().into())));
            args.push(Value::Integer(size));
            let reply: Value = self
                .run(&self.user_scripts().revoke, &keys, &args, deadline, None)
                .await?;
            match integers(&reply) {
                Some(STALE) => Ok(None),
                Some(APPLIED) => {
                    self.invalidate_near(chosen.iter().map(|(_, k)| k));
                    Ok(Some(strings_after_status(reply)))
                }
                other => Err(unexpected("revoke", other)),
            }
        })
        .await
    }

    pub(super) async fn unbind_by(
        &self,
        index: &str,
        key: &str,
        handle: Option<&str>,
        deadline: Instant,
    ) -> Result<bool> {
        let args = [Value::String(handle.unwrap_or("").into())];
        let n: i64 = self
            .until_settled(deadline, || async {
                self.run(
                    &self.user_scripts().unbind,
                    &[index, key],
                    &args,
                    deadline,
                    None,
                )
                .await
                .map(Some)
            })
            .await?;
        self.invalidate_near([key]);
        Ok(n == APPLIED)
    }

    pub(super) async fn touch_by(
        &self,
        index: &str,
        handle: &str,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool> {
        let args = [Value::String(handle.into()), ttl_ms(ttl)];
        let n: i64 = self
            .run(&self.user_scripts().touch, &[index], &args, deadline, None)
            .await?;
        Ok(n == APPLIED)
    }

    pub(super) async fn rebind_by(
        &self,
        index: &str,
        handle: &str,
        keys: (&str, &str),
        fields: &[(String, Bytes)],
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Regenerated> {
        let (old, new) = keys;
        let mut args = vec![Value::String(handle.into()), ttl_ms(ttl)];
        push_pairs(&mut args, fields);
        let n: i64 = self
            .until_settled(deadline, || async {
                self.run(
                    &self.user_scripts().rebind,
                    &[index, old, new],
                    &args,
                    deadline,
                    None,
                )
                .await
                .map(Some)
            })
            .await?;
        self.invalidate_near([old, new]);
        match n {
            APPLIED => Ok(Regenerated::Moved),
            0 => Ok(Regenerated::NewTaken),
            2 => Ok(Regenerated::OldGone),
            other => Err(unexpected("regenerate", Some(other))),
        }
    }
}

fn unexpected(what: &str, status: Option<i64>) -> Error {
    Error::new(
        ErrorKind::Redis,
        format!("the {what} script answered an unexpected status {status:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DEVICE_FIELD, META_FIELD, SEEN_FIELD};

    #[test]
    fn scripts_name_the_engine_fields_they_read() {
        // The scripts spell the reserved names out; keep them in step with the record module.
        assert!(BIND_LUA.contains(&format!("'{SEEN_FIELD}'")));
        for name in [META_FIELD, DEVICE_FIELD, SEEN_FIELD] {
            assert!(LIST_LUA.contains(&format!("'{name}'")), "{name}");
        }
        let scripts = UserScripts::new();
        assert_eq!(scripts.bind.reapply, Reapply::KeepFirstSuccess);
        assert_eq!(scripts.touch.reapply, Reapply::TakeLatest);
    }
}
