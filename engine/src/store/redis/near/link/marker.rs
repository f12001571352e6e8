//! A link's marker key: how the near cache notices that its node's dataset was flushed.
//!
//! Redis tells every tracking connection about `FLUSHALL`, `FLUSHDB` and a full resync with one
//! `invalidate` push whose payload is null, and fred 10.1 drops that push (it only forwards
//! invalidations that name keys). So each link keeps a key of its own on its node, placed when
//! tracking is enabled and looked at by every heartbeat (`PTTL`, renewed when half its lifetime
//! is gone): a flush removes it, and the next heartbeat finds it missing. On a cluster the key carries a hash tag of a slot the node
//! serves, so it lives on the link's own node; a slot that moves away makes the renewal fail
//! (MOVED), which loses the link, and the next enable places a marker in a slot it serves now.

use std::time::Duration;

use fred::{
    interfaces::{ClientLike, ClusterInterface, KeysInterface},
    prelude::Client,
    types::{Expiration, Value},
};

/// The prefix of every marker key (documented in the README, for ACLs and key scans).
pub(in crate::store::redis) const PREFIX: &str = "tessera:near-marker:";

/// How long a marker outlives the last heartbeat that renewed it: long enough that only a flush
/// (or an eviction, which the heartbeat flushes for anyway) removes a live link's marker, short
/// enough that a stopped process leaves nothing behind for long.
pub(super) fn ttl(max_stale: Duration) -> Duration {
    (max_stale * 20).max(Duration::from_secs(60))
}

fn ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Places a new marker on `client`'s node; `None` when the node serves no slot (a cluster
/// primary without slots caches nothing, and its link stays unconfirmed until it gets some).
pub(super) async fn place(
    client: &Client,
    ttl: Duration,
) -> Result<Option<String>, fred::error::Error> {
    let suffix = format!("{:016x}", rand::random::<u64>());
    let key = match served_slot(client).await? {
        Served::NotClustered => format!("{PREFIX}{suffix}"),
        Served::Slot(slot) => format!("{PREFIX}{{{}}}:{suffix}", tag_for(slot)),
        Served::Nothing => return Ok(None),
    };
    set(client, &key, ttl).await?;
    Ok(Some(key))
}

/// `SET key 1 PX ttl`.
pub(super) async fn set(
    client: &Client,
    key: &str,
    ttl: Duration,
) -> Result<(), fred::error::Error> {
    client
        .set::<(), _, _>(key, 1, Some(Expiration::PX(ms(ttl))), None, false)
        .await
}

/// Renews the marker's lifetime, if it still exists.
pub(super) async fn renew(
    client: &Client,
    key: &str,
    ttl: Duration,
) -> Result<(), fred::error::Error> {
    client.pexpire::<(), _>(key, ms(ttl), None).await
}

/// The marker's remaining lifetime; `None` when it is gone.
pub(super) async fn left(
    client: &Client,
    key: &str,
) -> Result<Option<Duration>, fred::error::Error> {
    let pttl: i64 = client.pttl(key).await?;
    Ok((pttl >= 0).then(|| Duration::from_millis(pttl as u64)))
}

enum Served {
    NotClustered,
    Slot(u16),
    Nothing,
}

/// A slot `client`'s node serves as a primary, by its own view (`CLUSTER MYID` and
/// `CLUSTER SLOTS`).
async fn served_slot(client: &Client) -> Result<Served, fred::error::Error> {
    let info: String = client.info(Some(fred::types::InfoKind::Cluster)).await?;
    if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return Ok(Served::NotClustered);
    }
    let me: String = client.cluster_myid().await?;
    let slots: Value = client.cluster_slots().await?;
    Ok(first_slot_of(&slots, &me).map_or(Served::Nothing, Served::Slot))
}

/// The first slot of a `CLUSTER SLOTS` range whose primary (the first node) has id `me`.
fn first_slot_of(slots: &Value, me: &str) -> Option<u16> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(items) = range else {
            return None;
        };
        let first = items.first()?.as_i64()?;
        let Some(Value::Array(primary)) = items.get(2) else {
            return None;
        };
        let id = primary.get(2)?.as_str()?;
        (id == me).then(|| u16::try_from(first).ok())?
    })
}

/// A short hash tag whose key slot is `slot` (found by counting; about 16,384 tries on
/// average, once per enable).
fn tag_for(slot: u16) -> String {
    (0u64..)
        .map(|n| format!("{n:x}"))
        .find(|tag| fred::util::redis_keyslot(tag.as_bytes()) == slot)
        .expect("every slot has a short tag")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_land_in_their_slot() {
        for slot in [0, 1, 5461, 10923, 16383] {
            let key = format!("{PREFIX}{{{}}}:abc", tag_for(slot));
            assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot);
        }
    }

    #[test]
    fn the_served_slot_is_the_first_of_the_nodes_own_ranges() {
        let node = |id: &str| {
            Value::Array(vec![
                Value::String("127.0.0.1".into()),
                Value::Integer(7000),
                Value::String(id.into()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(5460),
                node("a"),
                node("r"),
            ]),
            Value::Array(vec![Value::Integer(5461), Value::Integer(16383), node("b")]),
        ]);
        assert_eq!(first_slot_of(&slots, "b"), Some(5461));
        assert_eq!(first_slot_of(&slots, "a"), Some(0));
        // A replica serves no slot as a primary.
        assert_eq!(first_slot_of(&slots, "r"), None);
        assert_eq!(first_slot_of(&Value::Null, "a"), None);
    }
}
