//! The store's calls with the near cache on (the cache itself is `near`): a hit costs no command, a miss is one tracked load
//! script, and a write is one script. When the key's entry is known current, the script answers
//! only its status and the entry with the write applied is cached; otherwise it answers the
//! state it left, which is cached. Either is cached only when no invalidation raced it.
//! Everything else (deadlines, the sentinel gate, re-apply, WAIT) is the plain path's, in
//! `super`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;

use fred::{prelude::Client, types::Value};

use super::{
    exec::WriteCall,
    field,
    near::{Lifetime, Link, Near, Op, Registered, Ticket},
    scripts::{self, Answer, Script, TrackedScripts},
    Backend, RedisStore,
};
use crate::{
    error::{Error, ErrorKind, Result},
    store::Fields,
};

/// One update's changes, as the store was handed them.
#[derive(Clone, Copy)]
pub(super) struct Change<'a> {
    pub(super) set: &'a [(String, Bytes)],
    pub(super) delete: &'a [String],
    pub(super) ttl: Option<Duration>,
}

/// A request about to go out on the key's pinned connection, with what the cache needs to admit
/// its answer.
struct Pinned<'a> {
    /// Its place in the key's in-flight register.
    registered: Registered,
    /// A load's own registration (a write's is its call's).
    _load: Option<Op<'a>>,
    client: Option<Client>,
    link: Option<Arc<Link>>,
    ticket: Option<(Ticket, u64)>,
}

impl RedisStore {
    /// The one connection of `key` while the near cache is on (tracking with `NOLOOP` is per
    /// connection, so a key's loads and writes must share one): fixed by its slot.
    pub(super) fn pin(&self, key: &str) -> Option<Client> {
        match &self.inner.backend {
            Backend::Pool(pool) => {
                let clients = pool.clients();
                let slot = usize::from(fred::util::redis_keyslot(key.as_bytes()));
                Some(clients[slot % clients.len()].clone())
            }
            Backend::Cluster(router) => router.pinned(key),
        }
    }

    /// Registers the request (a load by itself, a write through its call) and takes its ticket.
    fn pinned<'a>(
        &self,
        near: &'a Arc<Near>,
        key: &'a str,
        call: Option<&WriteCall<'_>>,
    ) -> Pinned<'a> {
        let (registered, load) = match call.and_then(|c| c.touch(key)) {
            Some(registered) => (registered, None),
            None => {
                let op = near.begin(key);
                (op.registered(), Some(op))
            }
        };
        let client = self.pin(key);
        let link = client.as_ref().map(|c| near.link(c));
        let ticket = link.as_ref().and_then(|l| near.ticket(l));
        Pinned {
            registered,
            _load: load,
            client,
            link,
            ticket,
        }
    }

    /// A load with the near cache on.
    /// `keys[0]` is the session's key; the others are what `script` reads beside it (one slot).
    pub(super) async fn load_near(
        &self,
        near: &Arc<Near>,
        script: &Script,
        keys: &[&str],
    ) -> Result<Option<Fields>> {
        let key = keys[0];
        if let Some(fields) = near.get(key) {
            return Ok(Some(fields));
        }
        let pinned = self.pinned(near, key, None);
        let deadline = self.deadline();
        let reply: Value = within_deadline!(
            self,
            deadline,
            self.read_script(script, keys, deadline, pinned.client.as_ref())
        )?;
        let Value::Array(items) = reply else {
            return Err(malformed());
        };
        let (pttl, fields) = state(items.into_iter())?;
        self.admit(near, key, &pinned, fields.clone().map(Arc::new), pttl);
        Ok(fields)
    }

    /// An update with the near cache on: `args` as for the plain update script, `change` the
    /// same write as values. When the key's cached entry is known current (see [`Near::base`]),
    /// the script answers only its status and the entry with `change` applied is cached;
    /// otherwise the script answers the state it left.
    pub(super) async fn update_near(
        &self,
        call: &WriteCall<'_>,
        near: &Arc<Near>,
        scripts: &TrackedScripts,
        key: &str,
        args: &[Value],
        change: Change<'_>,
    ) -> Result<bool> {
        let pinned = self.pinned(near, key, Some(call));
        let base = match (&pinned.link, &pinned.ticket) {
            (Some(link), Some(ticket)) => near.base(key, link, ticket),
            _ => None,
        };
        let script = if base.is_some() {
            &scripts.update_answering_status
        } else {
            &scripts.update_answering_state
        };
        let result: Result<Value> = within_deadline!(
            self,
            call.deadline,
            self.run(call, script, &[key], args, pinned.client.as_ref())
        );
        // Answered: what follows caches or drops the entry itself. Until here (a dropped
        // future included), the call's guard drops it.
        call.settle(key);
        match base {
            Some(base) => self.applied(near, key, &pinned, result, base, change),
            None => self.written(near, key, &pinned, result),
        }
    }

    /// Caches the base entry with the write applied, once the status-only script answered that
    /// it applied; drops the entry otherwise.
    fn applied(
        &self,
        near: &Arc<Near>,
        key: &str,
        pinned: &Pinned<'_>,
        result: Result<Value>,
        (base, expires_ms): (Arc<Fields>, u64),
        change: Change<'_>,
    ) -> Result<bool> {
        let reply = result.inspect_err(|_| near.invalidate(key))?;
        if reply.status() != scripts::APPLIED {
            near.invalidate(key);
            return Ok(false);
        }
        // In the script's order: HSET, then HDEL.
        let mut fields = Arc::unwrap_or_clone(base);
        for (name, value) in change.set {
            fields.insert(name.clone(), value.clone());
        }
        for name in change.delete {
            fields.remove(name);
        }
        if fields.is_empty() {
            // Redis removed the emptied hash: no session, which is not cached.
            near.invalidate(key);
            return Ok(true);
        }
        // The key's TTL: the renewal's when the write renewed, else the base's expiry as it was.
        let lifetime = match change.ttl {
            Some(ttl) => Lifetime::Pttl(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            None => Lifetime::Until(expires_ms),
        };
        self.admit_as(near, key, pinned, Some(Arc::new(fields)), lifetime);
        Ok(true)
    }

    /// Caches what a tracked write answered, or drops the entry when that is not known to be
    /// the current state (an error, the session gone, a reply racing an invalidation).
    fn written(
        &self,
        near: &Arc<Near>,
        key: &str,
        pinned: &Pinned<'_>,
        result: Result<Value>,
    ) -> Result<bool> {
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => {
                // Unknown whether it applied: nothing cached may stand.
                near.invalidate(key);
                return Err(err);
            }
        };
        if reply.status() != scripts::APPLIED {
            near.invalidate(key);
            return Ok(false);
        }
        let Value::Array(items) = reply else {
            near.invalidate(key);
            return Err(malformed());
        };
        match state(items.into_iter().skip(1)) {
            Ok((pttl, fields)) => self.admit(near, key, pinned, fields.map(Arc::new), pttl),
            Err(err) => {
                near.invalidate(key);
                return Err(err);
            }
        }
        Ok(true)
    }

    fn admit(
        &self,
        near: &Arc<Near>,
        key: &str,
        pinned: &Pinned<'_>,
        fields: Option<Arc<Fields>>,
        pttl: i64,
    ) {
        self.admit_as(near, key, pinned, fields, Lifetime::Pttl(pttl));
    }

    fn admit_as(
        &self,
        near: &Arc<Near>,
        key: &str,
        pinned: &Pinned<'_>,
        fields: Option<Arc<Fields>>,
        lifetime: Lifetime,
    ) {
        match (fields, &pinned.link) {
            (Some(fields), Some(link)) => near.admit(
                key,
                link,
                pinned.ticket,
                pinned.registered,
                fields,
                lifetime,
            ),
            _ => near.invalidate(key),
        }
    }
}

pub(super) fn malformed() -> Error {
    Error::new(
        ErrorKind::Decode,
        "a load or near-cache script answered something other than its table",
    )
}

/// `{pttl}` or `{pttl, {field, value, ...}}`: the TTL and the fields (`None`: no such session).
/// Values stay slices of the read buffer.
pub(super) fn state(mut items: impl Iterator<Item = Value>) -> Result<(i64, Option<Fields>)> {
    let pttl = items
        .next()
        .and_then(|v| v.as_i64())
        .ok_or_else(malformed)?;
    let Some(Value::Array(flat)) = items.next() else {
        return Ok((pttl, None));
    };
    if flat.is_empty() {
        return Ok((pttl, None));
    }
    if flat.len() % 2 != 0 {
        return Err(malformed());
    }
    let mut fields = HashMap::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        let (name, value) = field(name.into_string(), value)?;
        fields.insert(name, value);
    }
    Ok((pttl, Some(fields)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn states_parse_strictly() {
        assert_eq!(
            state(vec![Value::Integer(-2)].into_iter()).unwrap(),
            (-2, None)
        );
        let (pttl, fields) = state(
            vec![
                Value::Integer(500),
                Value::Array(vec!["a".into(), Value::Bytes(Bytes::from_static(b"\x01"))]),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(pttl, 500);
        assert_eq!(fields.unwrap()["a"], Bytes::from_static(b"\x01"));
        assert!(state(Vec::new().into_iter()).is_err());
        assert!(
            state(vec![Value::Integer(5), Value::Array(vec!["a".into()])].into_iter()).is_err()
        );
    }
}
