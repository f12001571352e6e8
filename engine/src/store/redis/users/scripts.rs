//! The per-user Lua scripts. Each names every key it touches in `KEYS` (see the parent module
//! for why); a script that finds the index changed since it was read answers `STALE` (-1).

use super::super::scripts::{Reapply, Script};

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
pub(in crate::store::redis) const ALL: [&str; 6] = [
    BIND_LUA, LIST_LUA, REVOKE_LUA, UNBIND_LUA, TOUCH_LUA, REBIND_LUA,
];

/// The per-user scripts.
#[derive(Debug)]
pub(in crate::store::redis) struct UserScripts {
    pub(super) bind: Script,
    pub(super) list: Script,
    pub(super) revoke: Script,
    pub(super) unbind: Script,
    pub(super) touch: Script,
    pub(super) rebind: Script,
}

impl UserScripts {
    pub(in crate::store::redis) fn new() -> Self {
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
