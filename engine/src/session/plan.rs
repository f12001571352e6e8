//! The commit as a pure function: from a handle's state, the configuration and the time, the
//! store steps to run in order and what the cookie should become. No I/O and no clock here, so
//! every transition is tested below without a store; the executor runs the plan.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use super::{
    expiry::{cookie_lifetime, expiry, idle_ttl, CookieLifetime},
    state::{Bound, Lifecycle, State, Stored},
};
use crate::{
    config::SessionConfig,
    error::{Error, ErrorKind},
    id::SessionId,
    record::{Meta, StoredExpiry, DEVICE_FIELD, FORMAT_VERSION, META_FIELD, SEEN_FIELD},
};

/// What a store write is, as the `op` label of the writes metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOp {
    Create,
    Update,
    Touch,
    Regenerate,
    Destroy,
}

impl WriteOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WriteOp::Create => "create",
            WriteOp::Update => "update",
            WriteOp::Touch => "touch",
            WriteOp::Regenerate => "regenerate",
            WriteOp::Destroy => "destroy",
        }
    }
}

/// One store operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Change the loaded session in place, only if it still exists. `renewal` is the new meta
    /// (already among `set`) when the expiry moves, with the TTL to set.
    Update {
        key: String,
        set: Vec<(String, Bytes)>,
        delete: Vec<String>,
        renewal: Option<(Meta, Duration)>,
        op: WriteOp,
        /// A logged-in session's (index, handle): a renewal first raises the index's TTL.
        bound: Option<(String, String)>,
    },
    /// Store the fields as a new session, only under an id nobody has (`id`: the one the handle
    /// already handed out, if any; the executor mints another on a collision).
    Create {
        id: Option<SessionId>,
        fields: Vec<(String, Bytes)>,
        meta: Meta,
        ttl: Duration,
    },
    /// Move the fields to `id`, only if the session at `old_key` still exists then (and, for a
    /// logged-in one, is still in its user's index: it moves within the user's slot).
    Regenerate {
        old_key: String,
        id: SessionId,
        fields: Vec<(String, Bytes)>,
        meta: Meta,
        ttl: Duration,
        bound: Option<Bound>,
    },
    /// Delete a destroyed session (and its entry in its user's index, by handle when known).
    Delete {
        key: String,
        bound: Option<(String, Option<String>)>,
    },
}

/// The cookie once every step has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlannedCookie {
    /// Leave the client's cookie alone.
    Keep,
    /// Name the session the plan leaves stored, expiring at `expires`.
    Set {
        expires: SystemTime,
        lifetime: CookieLifetime,
    },
    /// Clear it: the session is gone.
    Clear,
}

/// What a commit does.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Run `steps` in order; then answer `cookie`. No steps: nothing to write.
    Run {
        steps: Vec<Step>,
        cookie: PlannedCookie,
    },
    /// Write nothing and fail (a failed load, a session over its limits). `op` labels the
    /// refused write in the metrics, when one was refused.
    Refuse { op: Option<WriteOp>, error: Error },
}

impl Plan {
    fn nothing(cookie: PlannedCookie) -> Self {
        Plan::Run {
            steps: Vec::new(),
            cookie,
        }
    }
}

use crate::time::ms;
pub(crate) use crate::time::{epoch_ms, from_epoch_ms};

/// Decides the commit of `state` at `now`.
pub(crate) fn plan(state: &State, config: &SessionConfig, now: SystemTime) -> Plan {
    let now_ms = epoch_ms(now);
    match &state.life {
        Lifecycle::Unloaded => Plan::nothing(PlannedCookie::Keep),
        Lifecycle::Failed { error: err, .. } => Plan::Refuse {
            op: None,
            error: Error::new(
                ErrorKind::LoadFailed,
                format!("the session was not saved because its load failed: {err}"),
            ),
        },
        Lifecycle::Loaded(stored) => plan_loaded(state, stored, config, now_ms),
        Lifecycle::Fresh { id, stale_cookie } => {
            if state.data.is_empty() && !config.save_new_empty {
                let cookie = if *stale_cookie {
                    PlannedCookie::Clear
                } else {
                    PlannedCookie::Keep
                };
                return Plan::nothing(cookie);
            }
            let meta = new_meta(config, now_ms, state.expiry);
            with_fields(
                state,
                config,
                WriteOp::Create,
                meta,
                now_ms,
                |fields, ttl| vec![create(*id, fields, meta, ttl)],
            )
        }
        Lifecycle::Regenerated { old, id } => {
            // The new id keeps the old session's creation time and absolute deadline: a login
            // must not extend a capped lifetime.
            let meta = Meta {
                expires_ms: expiry(config, now_ms, old.meta.deadline_ms, state.expiry),
                expiry: state.expiry,
                ..old.meta
            };
            with_fields(
                state,
                config,
                WriteOp::Regenerate,
                meta,
                now_ms,
                |mut fields, ttl| {
                    if let Some(bound) = &old.bound {
                        fields.push((DEVICE_FIELD.to_owned(), bound.device.encode()));
                        fields.push((SEEN_FIELD.to_owned(), seen(now_ms)));
                    }
                    vec![Step::Regenerate {
                        old_key: old.key.clone(),
                        id: *id,
                        fields,
                        meta,
                        ttl,
                        bound: old.bound.clone(),
                    }]
                },
            )
        }
        Lifecycle::Destroyed { old, id } => {
            let delete = old.as_ref().map(|old| Step::Delete {
                key: old.key.clone(),
                bound: old.bound.clone(),
            });
            // Fields inserted after the destroy start a new session (never an empty one: the
            // destroy was the point).
            if state.data.is_empty() {
                let cookie = if old.is_some() || state.requested.is_some() {
                    PlannedCookie::Clear
                } else {
                    PlannedCookie::Keep
                };
                return Plan::Run {
                    steps: delete.into_iter().collect(),
                    cookie,
                };
            }
            let meta = new_meta(config, now_ms, state.expiry);
            with_fields(
                state,
                config,
                WriteOp::Create,
                meta,
                now_ms,
                |fields, ttl| {
                    delete
                        .into_iter()
                        .chain([create(*id, fields, meta, ttl)])
                        .collect()
                },
            )
        }
    }
}

/// A stored session: send what changed, and renew once less than `renew_below` of its idle TTL
/// remains (reads and writes alike; with `0.0`, writes renew every time and reads never). A new
/// expiry rule is written at once, and its expiry replaces the stored one even when earlier.
fn plan_loaded(state: &State, stored: &Stored, config: &SessionConfig, now_ms: u64) -> Plan {
    let meta = stored.meta;
    let (mut set, delete) = diff(&state.original, &state.data);
    let changed = !set.is_empty() || !delete.is_empty();
    let rule_changed = state.expiry != meta.expiry;
    let new_expiry = expiry(config, now_ms, meta.deadline_ms, state.expiry);
    let renew_due = rule_changed
        || new_expiry > meta.expires_ms
            && if config.renew_below > 0.0 {
                (meta.expires_ms.saturating_sub(now_ms) as f64)
                    < config.renew_below * ms(idle_ttl(config, state.expiry)) as f64
            } else {
                changed
            };
    if !changed && !renew_due {
        // After a login the new id still has to reach the client.
        return Plan::nothing(if state.announce {
            set_cookie(&meta)
        } else {
            PlannedCookie::Keep
        });
    }
    let op = if changed {
        WriteOp::Update
    } else {
        WriteOp::Touch
    };
    if let Err(error) = check_limits(config, &state.data) {
        return Plan::Refuse {
            op: Some(op),
            error,
        };
    }
    let renewal = renew_due.then(|| {
        let new_meta = Meta {
            expires_ms: new_expiry,
            expiry: state.expiry,
            ..meta
        };
        set.push((META_FIELD.to_owned(), new_meta.encode()));
        if stored.bound.is_some() {
            // Last seen moves with the renewal only: no request pays a write for it.
            set.push((SEEN_FIELD.to_owned(), seen(now_ms)));
        }
        (
            new_meta,
            Duration::from_millis(new_expiry.saturating_sub(now_ms)),
        )
    });
    let cookie = match renewal {
        Some((m, _)) => set_cookie(&m),
        None if state.announce => set_cookie(&meta),
        None => PlannedCookie::Keep,
    };
    Plan::Run {
        steps: vec![Step::Update {
            key: stored.key.clone(),
            set,
            delete,
            renewal,
            op,
            bound: stored.bound.as_ref().map(Bound::entry),
        }],
        cookie,
    }
}

/// The cookie naming a session stored with `meta`.
fn set_cookie(meta: &Meta) -> PlannedCookie {
    PlannedCookie::Set {
        expires: from_epoch_ms(meta.expires_ms),
        lifetime: cookie_lifetime(meta.expiry),
    }
}

/// The last-seen field's value: decimal milliseconds, which the per-user scripts compare.
pub(crate) fn seen(now_ms: u64) -> Bytes {
    Bytes::from(now_ms.to_string())
}

/// Checks the limits, then builds the steps that write every field plus `meta`.
fn with_fields(
    state: &State,
    config: &SessionConfig,
    op: WriteOp,
    meta: Meta,
    now_ms: u64,
    steps: impl FnOnce(Vec<(String, Bytes)>, Duration) -> Vec<Step>,
) -> Plan {
    if let Err(error) = check_limits(config, &state.data) {
        return Plan::Refuse {
            op: Some(op),
            error,
        };
    }
    let mut fields: Vec<(String, Bytes)> = state
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    fields.push((META_FIELD.to_owned(), meta.encode()));
    let ttl = Duration::from_millis(meta.expires_ms.saturating_sub(now_ms));
    Plan::Run {
        steps: steps(fields, ttl),
        cookie: set_cookie(&meta),
    }
}

fn create(id: Option<SessionId>, fields: Vec<(String, Bytes)>, meta: Meta, ttl: Duration) -> Step {
    Step::Create {
        id,
        fields,
        meta,
        ttl,
    }
}

/// The meta of a session created now with the expiry `rule`.
pub(crate) fn new_meta(config: &SessionConfig, now_ms: u64, rule: Option<StoredExpiry>) -> Meta {
    let deadline_ms = config.absolute_ttl.map(|t| now_ms.saturating_add(ms(t)));
    Meta {
        version: FORMAT_VERSION,
        created_ms: now_ms,
        deadline_ms,
        expires_ms: expiry(config, now_ms, deadline_ms, rule),
        expiry: rule,
    }
}

/// Fields whose encoded bytes changed, and fields that disappeared, among those touched.
fn diff(
    original: &HashMap<String, Option<Bytes>>,
    data: &HashMap<String, Bytes>,
) -> (Vec<(String, Bytes)>, Vec<String>) {
    let mut set = Vec::new();
    let mut delete = Vec::new();
    for (field, before) in original {
        match (data.get(field), before) {
            (Some(now), Some(before)) if now == before => {}
            (Some(now), _) => set.push((field.clone(), now.clone())),
            (None, Some(_)) => delete.push(field.clone()),
            (None, None) => {}
        }
    }
    (set, delete)
}

/// The size and field-count limits.
pub(crate) fn check_limits(
    config: &SessionConfig,
    data: &HashMap<String, Bytes>,
) -> Result<(), Error> {
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if data.len() > config.max_fields {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "the session has {} fields, over the limit of {}; nothing was saved",
                data.len(),
                config.max_fields
            ),
        ));
    }
    if size > config.max_size {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "the session encodes to {size} bytes, over the limit of {}; nothing was saved",
                config.max_size
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
