//! The Lua scripts behind the check-and-write steps, each with its SHA1 and its rule for a write
//! that is applied twice (once on the old master, once on the new one, after a sentinel failover
//! overlapped it). No I/O here: `RedisStore::run` sends them.

use fred::bytes_utils::Str;

/// The answer every script gives when it did its write.
pub(super) const APPLIED: i64 = 1;

/// Creates the session only if its key is absent (NX), then sets its TTL, in one atomic step.
/// ARGV: ttl_ms, then field/value pairs. Returns 1 when written, 0 when the key exists.
pub(super) const CREATE_LUA: &str = r"
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
/// DEL). Only when every field is new does HLEN tell the two cases apart. ARGV: ttl_ms (`0` keeps
/// the TTL), n (number of pairs to set), n field/value pairs, then fields to delete. Returns 1
/// when changed, 0 when the key is gone.
pub(super) const UPDATE_LUA: &str = r"
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

/// Moves a session from KEYS[1] (old) to KEYS[2] (new), failing closed: the new hash exists only
/// if the old one still did. The NewTaken check comes first so a collision leaves the old session
/// alone. ARGV: ttl_ms, then field/value pairs. Returns [`APPLIED`] when moved,
/// [`REGENERATE_NEW_TAKEN`] or [`REGENERATE_OLD_GONE`].
pub(super) const REGENERATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('DEL', KEYS[1]) == 0 then return 2 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
";

/// [`REGENERATE_LUA`]: the new key already exists; nothing changed.
pub(super) const REGENERATE_NEW_TAKEN: i64 = 0;
/// [`REGENERATE_LUA`]: the old key no longer existed; nothing was created.
pub(super) const REGENERATE_OLD_GONE: i64 = 2;

/// The near cache's load: the remaining TTL and the hash in one atomic read, which also makes
/// Redis track the key for this connection. Returns `{pttl}` when the key is missing (-2) or has
/// no TTL (-1), else `{pttl, {field, value, ...}}`.
pub(super) const LOAD_TRACKED_LUA: &str = r"
local t = redis.call('PTTL', KEYS[1])
if t < 0 then return {t} end
return {t, redis.call('HGETALL', KEYS[1])}
";

/// The load of a session bound to a user. KEYS: the session, its user's index. Answers as
/// [`LOAD_TRACKED_LUA`], and `{-2}` (missing) also when no entry of the index names the session:
/// an index evicted under `maxmemory` (or rebuilt by a later login without it) must not leave
/// its sessions alive beyond logout-everywhere and the cap. A read only: with the near cache it
/// also tracks both keys.
pub(super) const LOAD_BOUND_LUA: &str = r"
local t = redis.call('PTTL', KEYS[1])
if t < 0 then return {t} end
for _, k in ipairs(redis.call('HVALS', KEYS[2])) do
  if k == KEYS[1] then return {t, redis.call('HGETALL', KEYS[1])} end
end
return {-2}
";

/// The ending of a tracked write: the write's status, then the state it left (re-reading the
/// hash re-tracks it, since `NOLOOP` untracked it for this connection), other writers' fields
/// included.
const TRACKED_RETURN: &str =
    "return {1, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}";

/// The ending of a tracked write whose caller knows the state it leaves (its cached entry with
/// the write applied): only the status. `EXISTS` re-tracks the key for this connection, which
/// `NOLOOP` untracked when the write changed it; it costs no reply to speak of.
const TRACKED_RETRACK: &str = "redis.call('EXISTS', KEYS[1])\nreturn {1}";

/// `source` with its answers as tables: `return 0` becomes `{0}`, the final `return 1` becomes
/// `ending`.
fn tracked(source: &str, ending: &str) -> String {
    source
        .replace("return 0", "return {0}")
        .replace("return 1\n", &format!("{ending}\n"))
}

/// Which answer counts when a write overlapped a sentinel failover and was run a second time on
/// the new master (the first run may or may not have reached it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reapply {
    /// For writes that only succeed once (create, regenerate): if the first run succeeded, the
    /// re-run finds that very write (its key exists, or the old key is gone) and answers "not
    /// done"; the first answer is the true one. Otherwise the re-run's answer counts.
    KeepFirstSuccess,
    /// For idempotent writes (update): the re-run's answer describes the new master's state.
    TakeLatest,
}

impl Reapply {
    /// The answer to report, given the first run's and the re-run's.
    #[cfg(test)]
    pub(super) fn combine(self, first: i64, again: i64) -> i64 {
        self.pick(first, again)
    }

    /// The reply to report, by the status each run answered.
    pub(super) fn pick<R: Answer>(self, first: R, again: R) -> R {
        match self {
            Reapply::KeepFirstSuccess if first.status() == APPLIED => first,
            Reapply::KeepFirstSuccess | Reapply::TakeLatest => again,
        }
    }
}

/// A script's reply: a status alone (the plain scripts), or a table that starts with it (the
/// near cache's, which add the state they left).
pub(super) trait Answer: fred::types::FromValue + Send {
    fn status(&self) -> i64;
}

impl Answer for i64 {
    fn status(&self) -> i64 {
        *self
    }
}

impl Answer for fred::types::Value {
    fn status(&self) -> i64 {
        match self {
            fred::types::Value::Array(items) => {
                items.first().and_then(|v| v.as_i64()).unwrap_or(-1)
            }
            other => other.as_i64().unwrap_or(-1),
        }
    }
}

/// One Lua script: its source (for SCRIPT LOAD after NOSCRIPT), its SHA1 (for EVALSHA) and its re-apply
/// rule.
#[derive(Debug)]
pub(super) struct Script {
    pub(super) source: Str,
    /// Reference-counted, so each call clones a pointer rather than the 40 hex digits.
    pub(super) sha1: Str,
    pub(super) reapply: Reapply,
}

impl Script {
    pub(super) fn new(source: impl Into<Str>, reapply: Reapply) -> Self {
        let source = source.into();
        Script {
            sha1: Str::from(fred::util::sha1_hash(&source)),
            source,
            reapply,
        }
    }

    pub(super) fn create() -> Self {
        Self::new(CREATE_LUA, Reapply::KeepFirstSuccess)
    }

    pub(super) fn update() -> Self {
        Self::new(UPDATE_LUA, Reapply::TakeLatest)
    }

    pub(super) fn regenerate() -> Self {
        Self::new(REGENERATE_LUA, Reapply::KeepFirstSuccess)
    }
}

/// The session scripts of one store, by name.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) update: Script,
    pub(super) regenerate: Script,
    /// The load of a session bound to a user ([`LOAD_BOUND_LUA`]).
    pub(super) load_bound: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            create: Script::create(),
            update: Script::update(),
            regenerate: Script::regenerate(),
            load_bound: Script::new(LOAD_BOUND_LUA, Reapply::TakeLatest),
        }
    }
}

/// The near cache's scripts.
#[derive(Debug)]
pub(super) struct TrackedScripts {
    /// The load: PTTL and HGETALL, which tracks the key.
    pub(super) load: Script,
    /// The update ending with the state it left (PTTL and HGETALL).
    pub(super) update_answering_state: Script,
    /// The update ending with its status only, for a write applied to a cached entry known
    /// current.
    pub(super) update_answering_status: Script,
}

impl TrackedScripts {
    pub(super) fn new() -> Self {
        TrackedScripts {
            load: Script::new(LOAD_TRACKED_LUA, Reapply::TakeLatest),
            update_answering_state: Script::new(
                tracked(UPDATE_LUA, TRACKED_RETURN),
                Reapply::TakeLatest,
            ),
            update_answering_status: Script::new(
                tracked(UPDATE_LUA, TRACKED_RETRACK),
                Reapply::TakeLatest,
            ),
        }
    }
}

/// Every script source, for preloading on each primary.
pub(super) const ALL: [&str; 4] = [CREATE_LUA, UPDATE_LUA, REGENERATE_LUA, LOAD_BOUND_LUA];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_regenerate_keep_the_first_success() {
        // create: written, then the re-run finds its own key.
        assert_eq!(Script::create().reapply.combine(1, 0), 1);
        // create: the first run lost (key existed or never reached the new master); re-run counts.
        assert_eq!(Script::create().reapply.combine(0, 1), 1);
        assert_eq!(Script::create().reapply.combine(0, 0), 0);
        let regen = Script::regenerate().reapply;
        // Moved, then the re-run finds the new key it wrote: still Moved.
        assert_eq!(regen.combine(APPLIED, REGENERATE_NEW_TAKEN), APPLIED);
        assert_eq!(regen.combine(APPLIED, REGENERATE_OLD_GONE), APPLIED);
        // The first run did not reach the new master: the re-run's answer counts.
        assert_eq!(regen.combine(REGENERATE_OLD_GONE, APPLIED), APPLIED);
        assert_eq!(
            regen.combine(REGENERATE_NEW_TAKEN, REGENERATE_NEW_TAKEN),
            REGENERATE_NEW_TAKEN
        );
        assert_eq!(
            regen.combine(REGENERATE_OLD_GONE, REGENERATE_OLD_GONE),
            REGENERATE_OLD_GONE
        );
    }

    #[test]
    fn update_takes_the_latest_answer() {
        let update = Script::update().reapply;
        // Updated on the old master, but the session is gone on the new one: report gone.
        assert_eq!(update.combine(1, 0), 0);
        assert_eq!(update.combine(0, 1), 1);
        assert_eq!(update.combine(1, 1), 1);
    }

    #[test]
    fn tracked_scripts_answer_tables_and_end_with_the_state() {
        let TrackedScripts {
            load,
            update_answering_state: update,
            update_answering_status: applied,
        } = TrackedScripts::new();
        for (script, ending) in [(&update, TRACKED_RETURN), (&applied, TRACKED_RETRACK)] {
            assert!(!script.source.contains("return 0\n"));
            assert!(!script.source.contains("return 1\n"));
            assert!(script.source.contains("return {0}"));
            assert!(script.source.trim_end().ends_with(ending));
            assert_eq!(script.reapply, Reapply::TakeLatest);
        }
        assert_ne!(update.sha1, applied.sha1);
        assert!(load.source.contains("HGETALL"));
    }

    #[test]
    fn each_script_has_its_own_sha() {
        let script = Script::create();
        assert_eq!(script.sha1.len(), 40);
        assert_eq!(&*script.sha1, fred::util::sha1_hash(CREATE_LUA));
        assert_ne!(Script::update().sha1, Script::regenerate().sha1);
    }
}
