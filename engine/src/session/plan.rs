//! The commit as a pure function: from a handle's state, the configuration and the time, the
//! store steps to run in order and what the cookie should become. No I/O and no clock here, so
//! every transition is tested below without a store; the executor runs the plan.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
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

/// Milliseconds since the epoch (saturating; the stored format counts in milliseconds).
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The latest time an expiry may name: 9999-12-31T23:59:59Z, the last second HTTP dates can
/// express. A stored record (foreign, corrupt or from a far-future clock) may claim more.
pub(crate) const LATEST_EXPIRY: Duration = Duration::from_secs(253_402_300_799);

/// The instant `ms` milliseconds after the epoch, clamped to [`LATEST_EXPIRY`].
pub(crate) fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms).min(LATEST_EXPIRY)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

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
mod tests {
    use super::{
        super::state::{DestroyedKey, OnLoadError},
        *,
    };

    const HOUR: u64 = 3_600_000;
    /// A fixed "now": 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600_000;

    fn at(ms: u64) -> SystemTime {
        from_epoch_ms(ms)
    }

    fn config() -> SessionConfig {
        SessionConfig::default()
    }

    fn v(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn stored(expires_ms: u64, deadline_ms: Option<u64>) -> Stored {
        Stored {
            id: SessionId::from_bytes([7; 16]),
            key: "k:{old}".into(),
            meta: Meta {
                version: FORMAT_VERSION,
                created_ms: NOW - HOUR,
                deadline_ms,
                expires_ms,
                expiry: None,
            },
            bound: None,
        }
    }

    fn state(life: Lifecycle) -> State {
        let mut s = State::new(Some(SessionId::from_bytes([7; 16])), OnLoadError::Fail);
        s.life = life;
        s
    }

    fn loaded(expires_ms: u64) -> State {
        let mut s = state(Lifecycle::Loaded(stored(expires_ms, None)));
        s.data.insert("a".into(), v("1"));
        s
    }

    fn set(s: &mut State, field: &str, value: &str) {
        s.remember(field);
        s.data.insert(field.into(), v(value));
    }

    fn run(plan: Plan) -> (Vec<Step>, PlannedCookie) {
        match plan {
            Plan::Run { steps, cookie } => (steps, cookie),
            Plan::Refuse { error, .. } => panic!("unexpected refusal: {error}"),
        }
    }

    fn refusal(plan: Plan) -> (Option<WriteOp>, ErrorKind) {
        match plan {
            Plan::Refuse { op, error, .. } => (op, error.kind()),
            Plan::Run { steps, .. } => panic!("expected a refusal, got {steps:?}"),
        }
    }

    #[test]
    fn unloaded_writes_nothing() {
        let (steps, cookie) = run(plan(&state(Lifecycle::Unloaded), &config(), at(NOW)));
        assert_eq!((steps, cookie), (vec![], PlannedCookie::Keep));
    }

    #[test]
    fn loaded_unchanged_and_not_due_writes_nothing() {
        // Full hour left: renewal is due only below half.
        let (steps, cookie) = run(plan(&loaded(NOW + HOUR), &config(), at(NOW)));
        assert_eq!((steps, cookie), (vec![], PlannedCookie::Keep));
    }

    #[test]
    fn loaded_read_renews_when_due() {
        let (steps, cookie) = run(plan(&loaded(NOW + HOUR / 4), &config(), at(NOW)));
        let [Step::Update {
            set,
            delete,
            renewal: Some((meta, ttl)),
            op: WriteOp::Touch,
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(meta.expires_ms, NOW + HOUR);
        assert_eq!(*ttl, Duration::from_millis(HOUR));
        assert_eq!(set.len(), 1, "only the meta field");
        assert_eq!(set[0].0, META_FIELD);
        assert!(delete.is_empty());
        assert_eq!(
            cookie,
            PlannedCookie::Set {
                expires: at(NOW + HOUR),
                lifetime: CookieLifetime::Configured,
            }
        );
    }

    #[test]
    fn loaded_write_not_due_sends_only_its_fields() {
        let mut s = loaded(NOW + HOUR);
        set(&mut s, "b", "2");
        s.remember("a");
        s.data.remove("a");
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        assert_eq!(
            steps,
            vec![Step::Update {
                key: "k:{old}".into(),
                set: vec![("b".into(), v("2"))],
                delete: vec!["a".into()],
                renewal: None,
                op: WriteOp::Update,
                bound: None,
            }]
        );
        assert_eq!(cookie, PlannedCookie::Keep);
    }

    #[test]
    fn setting_an_equal_value_is_no_change() {
        let mut s = loaded(NOW + HOUR);
        set(&mut s, "a", "1");
        assert_eq!(run(plan(&s, &config(), at(NOW))).0, vec![]);
    }

    #[test]
    fn renew_below_zero_renews_every_write_and_no_read() {
        let c = config().with_renew_below(0.0);
        assert_eq!(run(plan(&loaded(NOW + 1000), &c, at(NOW))).0, vec![]);
        let mut s = loaded(NOW + HOUR - 1);
        set(&mut s, "a", "2");
        let (steps, cookie) = run(plan(&s, &c, at(NOW)));
        assert!(matches!(
            &steps[..],
            [Step::Update {
                renewal: Some(_),
                op: WriteOp::Update,
                ..
            }]
        ));
        assert!(matches!(cookie, PlannedCookie::Set { .. }));
    }

    #[test]
    fn absolute_cap_limits_renewal() {
        let deadline = NOW + HOUR / 8;
        let mut s = state(Lifecycle::Loaded(stored(NOW + HOUR / 10, Some(deadline))));
        s.data.insert("a".into(), v("1"));
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        let [Step::Update {
            renewal: Some((meta, ttl)),
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(meta.expires_ms, deadline, "capped at the deadline");
        assert_eq!(*ttl, Duration::from_millis(HOUR / 8));
        assert_eq!(
            cookie,
            PlannedCookie::Set {
                expires: at(deadline),
                lifetime: CookieLifetime::Configured,
            }
        );
        // Already at the cap: nothing to renew.
        let s = state(Lifecycle::Loaded(stored(deadline, Some(deadline))));
        assert_eq!(run(plan(&s, &config(), at(NOW))).0, vec![]);
    }

    #[test]
    fn new_empty_session_is_stored_only_with_save_new_empty() {
        let fresh = state(Lifecycle::Fresh {
            id: None,
            stale_cookie: false,
        });
        assert_eq!(
            run(plan(&fresh, &config(), at(NOW))),
            (vec![], PlannedCookie::Keep)
        );
        let c = config().with_save_new_empty(true);
        let (steps, cookie) = run(plan(&fresh, &c, at(NOW)));
        let [Step::Create {
            id: None,
            fields,
            meta,
            ttl,
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(fields.len(), 1, "only the meta field");
        assert_eq!((meta.created_ms, meta.expires_ms), (NOW, NOW + HOUR));
        assert_eq!(*ttl, Duration::from_millis(HOUR));
        assert_eq!(
            cookie,
            PlannedCookie::Set {
                expires: at(NOW + HOUR),
                lifetime: CookieLifetime::Configured,
            }
        );
    }

    #[test]
    fn stale_cookie_without_data_is_cleared() {
        let s = state(Lifecycle::Fresh {
            id: None,
            stale_cookie: true,
        });
        assert_eq!(
            run(plan(&s, &config(), at(NOW))),
            (vec![], PlannedCookie::Clear)
        );
    }

    #[test]
    fn fresh_with_data_creates_under_the_handed_out_id() {
        let id = SessionId::from_bytes([9; 16]);
        let mut s = state(Lifecycle::Fresh {
            id: Some(id),
            stale_cookie: true,
        });
        set(&mut s, "a", "1");
        let c = config().with_absolute_ttl(Some(Duration::from_millis(HOUR / 2)));
        let (steps, cookie) = run(plan(&s, &c, at(NOW)));
        let [Step::Create {
            id: Some(got),
            fields,
            meta,
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(*got, id);
        assert_eq!(fields.len(), 2);
        assert_eq!(meta.deadline_ms, Some(NOW + HOUR / 2));
        assert_eq!(
            meta.expires_ms,
            NOW + HOUR / 2,
            "capped by the absolute TTL"
        );
        assert_eq!(
            cookie,
            PlannedCookie::Set {
                expires: at(NOW + HOUR / 2),
                lifetime: CookieLifetime::Configured,
            }
        );
    }

    #[test]
    fn regenerate_moves_every_field_and_keeps_the_deadline() {
        let deadline = NOW + 2 * HOUR;
        let old = stored(NOW + HOUR, Some(deadline));
        let new = SessionId::from_bytes([3; 16]);
        let mut s = state(Lifecycle::Regenerated {
            old: old.clone(),
            id: new,
        });
        s.data.insert("user".into(), v("ada"));
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        let [Step::Regenerate {
            old_key,
            id,
            fields,
            meta,
            ttl,
            bound: None,
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!((old_key.as_str(), *id), ("k:{old}", new));
        assert_eq!(fields.len(), 2);
        assert_eq!(meta.created_ms, old.meta.created_ms);
        assert_eq!(meta.deadline_ms, Some(deadline));
        assert_eq!(*ttl, Duration::from_millis(HOUR));
        assert!(matches!(cookie, PlannedCookie::Set { .. }));
        // Even an empty regenerated session is written: the new id must exist.
        s.data.clear();
        assert_eq!(run(plan(&s, &config(), at(NOW))).0.len(), 1);
    }

    #[test]
    fn destroy_deletes_and_clears() {
        let mut s = loaded(NOW + HOUR);
        s.destroy(|_| unreachable!("the loaded key is known"));
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        assert_eq!(
            steps,
            vec![Step::Delete {
                key: "k:{old}".into(),
                bound: None,
            }]
        );
        assert_eq!(cookie, PlannedCookie::Clear);
        // Even with save_new_empty, a destroyed session is not recreated empty.
        let c = config().with_save_new_empty(true);
        assert_eq!(run(plan(&s, &c, at(NOW))).0.len(), 1);
    }

    #[test]
    fn destroy_without_a_load_deletes_the_requested_id() {
        let mut s = state(Lifecycle::Unloaded);
        s.destroy(|id| DestroyedKey {
            key: format!("k:{{{id}}}"),
            bound: None,
        });
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        assert!(matches!(&steps[..], [Step::Delete { .. }]));
        assert_eq!(cookie, PlannedCookie::Clear);
        // No cookie and nothing stored: nothing to do or clear.
        let mut s = State::new(None, OnLoadError::Fail);
        s.life = Lifecycle::Fresh {
            id: None,
            stale_cookie: false,
        };
        s.destroy(|_| unreachable!());
        assert_eq!(
            run(plan(&s, &config(), at(NOW))),
            (vec![], PlannedCookie::Keep)
        );
    }

    #[test]
    fn fields_after_destroy_start_a_new_session() {
        let mut s = loaded(NOW + HOUR);
        s.destroy(|_| unreachable!());
        set(&mut s, "b", "2");
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        assert!(
            matches!(&steps[..], [Step::Delete { .. }, Step::Create { fields, .. }] if fields.len() == 2),
            "{steps:?}"
        );
        assert!(matches!(cookie, PlannedCookie::Set { .. }));
    }

    #[test]
    fn failed_load_is_never_written_fail_open_or_not() {
        for mode in [OnLoadError::Fail, OnLoadError::ServeEmpty] {
            let mut s = State::new(None, mode);
            s.life = Lifecycle::Failed {
                error: Error::new(ErrorKind::Timeout, "x"),
                id: None,
            };
            set(&mut s, "a", "1");
            assert_eq!(
                refusal(plan(&s, &config(), at(NOW))),
                (None, ErrorKind::LoadFailed)
            );
            // A destroy after a failed load still deletes the requested session.
            let mut s = state(Lifecycle::Failed {
                error: Error::new(ErrorKind::Timeout, "x"),
                id: None,
            });
            s.on_load_error = mode;
            s.destroy(|_| DestroyedKey {
                key: "k:{req}".into(),
                bound: None,
            });
            assert_eq!(
                run(plan(&s, &config(), at(NOW))).0,
                vec![Step::Delete {
                    key: "k:{req}".into(),
                    bound: None,
                }]
            );
        }
    }

    fn bound() -> Bound {
        Bound {
            index: "k:{u.slot}".into(),
            device: crate::record::DeviceRecord {
                handle: "h".into(),
                login_ms: NOW - HOUR,
                user_agent: None,
                client_addr: None,
            },
        }
    }

    #[test]
    fn a_logged_in_sessions_renewal_moves_its_index_and_last_seen_only_then() {
        let mut s = loaded(NOW + HOUR / 4);
        if let Lifecycle::Loaded(stored) = &mut s.life {
            stored.bound = Some(bound());
        }
        // Due (a quarter of the TTL left): the step names the index, last seen is written.
        let (steps, _) = run(plan(&s, &config(), at(NOW)));
        let [Step::Update {
            set: written,
            bound: entry,
            renewal: Some(_),
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(
            entry.as_ref(),
            Some(&("k:{u.slot}".to_owned(), "h".to_owned()))
        );
        assert!(written
            .iter()
            .any(|(k, v)| k == SEEN_FIELD && *v == seen(NOW)));
        // A write with no renewal due writes no last seen.
        let mut s = loaded(NOW + HOUR);
        if let Lifecycle::Loaded(stored) = &mut s.life {
            stored.bound = Some(bound());
        }
        set(&mut s, "b", "2");
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        let [Step::Update {
            set: fields,
            renewal: None,
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert!(fields.iter().all(|(k, _)| k != SEEN_FIELD));
        assert_eq!(cookie, PlannedCookie::Keep);
        // After a login the unchanged session still sends its new cookie.
        let mut s = loaded(NOW + HOUR);
        s.announce = true;
        let (steps, cookie) = run(plan(&s, &config(), at(NOW)));
        assert!(steps.is_empty());
        assert_eq!(
            cookie,
            PlannedCookie::Set {
                expires: at(NOW + HOUR),
                lifetime: CookieLifetime::Configured,
            }
        );
    }

    #[test]
    fn a_logged_in_session_regenerates_within_its_slot_with_its_device() {
        let mut s = loaded(NOW + HOUR);
        if let Lifecycle::Loaded(stored) = &mut s.life {
            stored.bound = Some(bound());
            stored.id = stored
                .id
                .with_slot(Some(crate::id::UserSlot::from_bytes([1; 12])));
        }
        s.regenerate();
        let (steps, _) = run(plan(&s, &config(), at(NOW)));
        let [Step::Regenerate {
            id,
            fields,
            bound: Some(b),
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(id.slot(), Some(crate::id::UserSlot::from_bytes([1; 12])));
        assert_eq!(b, &bound());
        assert!(fields.iter().any(|(k, _)| k == DEVICE_FIELD));
        assert!(fields.iter().any(|(k, _)| k == SEEN_FIELD));
        // Destroying it removes its index entry by handle.
        s.destroy(|_| unreachable!());
        let (steps, _) = run(plan(&s, &config(), at(NOW)));
        assert!(matches!(
            &steps[..],
            [Step::Delete { bound: Some((index, Some(h))), .. }] if index == "k:{u.slot}" && h == "h"
        ));
    }

    #[test]
    fn limits_refuse_the_write_with_its_op() {
        let c = config().with_max_fields(1);
        let mut s = loaded(NOW + HOUR);
        set(&mut s, "b", "2");
        assert_eq!(
            refusal(plan(&s, &c, at(NOW))),
            (Some(WriteOp::Update), ErrorKind::TooLarge)
        );
        let mut s = state(Lifecycle::Fresh {
            id: None,
            stale_cookie: false,
        });
        set(&mut s, "big", &"x".repeat(100));
        assert_eq!(
            refusal(plan(&s, &config().with_max_size(10), at(NOW))),
            (Some(WriteOp::Create), ErrorKind::TooLarge)
        );
        // An unchanged session over a lowered limit is not refused while nothing is due.
        let s = loaded(NOW + HOUR);
        assert_eq!(run(plan(&s, &config().with_max_size(0), at(NOW))).0, vec![]);
    }

    #[test]
    fn far_future_times_are_clamped() {
        assert_eq!(at(u64::MAX), UNIX_EPOCH + LATEST_EXPIRY);
        // A stored expiry far in the future: nothing due, nothing overflows.
        let s = loaded(u64::MAX);
        assert_eq!(run(plan(&s, &config(), at(NOW))).0, vec![]);
        let mut s = loaded(u64::MAX);
        set(&mut s, "a", "2");
        assert_eq!(run(plan(&s, &config(), at(NOW))).1, PlannedCookie::Keep);
    }
}
