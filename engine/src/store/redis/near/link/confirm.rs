//! What a heartbeat asks a tracked connection: tracking on and not redirected, the node a
//! primary, the tracking table not near full, and the eviction count. Pure parsing beside the
//! one query.

use fred::{
    interfaces::{ClientInterface, ClientLike, ConfigInterface},
    prelude::Client,
    types::Value,
};

/// Whether `CLIENT TRACKINGINFO` on this connection says tracking is on, with no redirection,
/// the node is a primary (a demoted one no longer hears its new primary's writes as its own),
/// and the server's tracking table is not full. A full table evicts tracked keys by
/// invalidating them, except (measured on Redis 7.0) for the connection whose command triggered
/// the eviction when it uses `NOLOOP`: that one is untracked silently. So the cache is bypassed
/// while the table is near its limit.
///
/// The same holds for `maxmemory` evictions: a key evicted to make room for this connection's
/// own command (a load, a write, this heartbeat) is not invalidated to it. So a confirmation
/// answers the server's `evicted_keys` as well, and a heartbeat that sees it move flushes the
/// link's entries. Answers `None` when tracking is not confirmed.
pub(super) async fn confirmed(
    client: &Client,
) -> std::result::Result<Option<u64>, fred::error::Error> {
    let info: Value = client.client_trackinginfo().await?;
    let role: Value = client
        .custom(fred::cmd!("ROLE"), Vec::<Value>::new())
        .await?;
    let primary = match role {
        Value::Array(items) => items
            .first()
            .and_then(|v| v.as_str())
            .is_some_and(|s| s == "master"),
        _ => false,
    };
    if !(primary && tracking_on(&info)) {
        return Ok(None);
    }
    let stats: String = client.info(Some(fred::types::InfoKind::Stats)).await?;
    // CONFIG may be renamed or refused (managed Redis): then only the default limit is known.
    let limit = match client
        .config_get::<Value, _>("tracking-table-max-keys")
        .await
    {
        Ok(value) => config_number(&value).unwrap_or(DEFAULT_TRACKING_TABLE_MAX_KEYS),
        Err(_) => DEFAULT_TRACKING_TABLE_MAX_KEYS,
    };
    if table_full(info_number(&stats, "tracking_total_keys"), limit) {
        return Ok(None);
    }
    Ok(Some(info_number(&stats, "evicted_keys").unwrap_or(0)))
}

/// Redis's default `tracking-table-max-keys`.
const DEFAULT_TRACKING_TABLE_MAX_KEYS: u64 = 1_000_000;

/// Whether `keys` tracked keys are close enough to `limit` (0: no limit) that Redis may be
/// evicting: above nine tenths of it.
pub(super) fn table_full(keys: Option<u64>, limit: u64) -> bool {
    match keys {
        Some(keys) if limit > 0 => keys.saturating_mul(10) >= limit.saturating_mul(9),
        _ => false,
    }
}

pub(super) fn info_number(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// The value of a one-parameter `CONFIG GET` answer (a map in RESP3, a pair in RESP2).
pub(super) fn config_number(value: &Value) -> Option<u64> {
    let text = match value {
        Value::Map(map) => map.values().next()?.as_string()?,
        Value::Array(items) => items.get(1)?.as_string()?,
        _ => return None,
    };
    text.parse().ok()
}

pub(super) fn tracking_on(info: &Value) -> bool {
    let Value::Map(map) = info else {
        return false;
    };
    let mut on = false;
    let mut redirect_none = true;
    for (name, value) in map.iter() {
        match name.as_str() {
            Some("flags") => {
                if let Value::Array(flags) = value {
                    on = flags.iter().any(|f| f.as_str().is_some_and(|s| s == "on"));
                }
            }
            // 0: tracking on without redirection (-1 is "tracking off").
            Some("redirect") => redirect_none = value.as_i64().is_some_and(|r| r <= 0),
            _ => {}
        }
    }
    on && redirect_none
}
