//! The planner's unit tests: every transition, without a store.

use super::{
    super::state::{DestroyedKey, OnLoadError},
    *,
};
use std::time::UNIX_EPOCH;

use crate::time::LATEST_EXPIRY;

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
