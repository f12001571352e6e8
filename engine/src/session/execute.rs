//! Runs a commit plan against the store, step by step, and moves the handle to the state the
//! outcome implies. The only place a commit does I/O; what to do was decided by `plan`.

use std::time::Duration;

use bytes::Bytes;

use super::{
    expiry::{cookie_lifetime, CookieLifetime},
    plan::{from_epoch_ms, Plan, PlannedCookie, Step, WriteOp},
    state::{Lifecycle, State, Stored},
    Committed, CookieAction, SessionEngine,
};
use crate::{
    error::{Error, ErrorKind, Result},
    id::SessionId,
    store::Regenerated,
};

/// How many fresh ids to try when a create collides with an existing session.
const CREATE_ATTEMPTS: usize = 3;

/// What one step did to the session.
enum Outcome {
    /// As planned.
    Done,
    /// The session was no longer there (destroyed or expired concurrently): the handle is now
    /// fresh and the client's cookie must be cleared.
    Gone,
}

pub(super) async fn execute(
    engine: &SessionEngine,
    st: &mut State,
    plan: Plan,
) -> Result<Committed> {
    let metrics = engine.metrics();
    let (steps, planned) = match plan {
        Plan::Refuse { op, error } => {
            if let Some(op) = op {
                metrics.write(op.as_str(), "too_large");
            }
            return Err(error);
        }
        Plan::Run { steps, cookie } => (steps, cookie),
    };
    if steps.is_empty() && matches!(st.life, Lifecycle::Loaded(_)) {
        metrics.skipped();
    }
    let mut writes = 0u8;
    let mut gone = false;
    for step in steps {
        writes = writes.saturating_add(1);
        match run_step(engine, st, step, &mut writes).await? {
            Outcome::Done => {}
            Outcome::Gone => {
                gone = true;
                break;
            }
        }
    }
    // The new id (of a login) is on its way to the client.
    st.announce = false;
    let stored = match &st.life {
        Lifecycle::Loaded(stored) => Some(stored),
        _ => None,
    };
    let cookie = match planned {
        _ if gone => CookieAction::Clear,
        PlannedCookie::Keep => CookieAction::Keep,
        PlannedCookie::Clear => CookieAction::Clear,
        PlannedCookie::Set { expires, lifetime } => match stored {
            Some(stored) => CookieAction::Set {
                id: stored.id,
                expires,
                lifetime,
            },
            None => CookieAction::Clear,
        },
    };
    Ok(Committed {
        cookie,
        writes,
        expires: stored.map(|s| from_epoch_ms(s.meta.expires_ms)),
        lifetime: stored.map_or(CookieLifetime::Configured, |s| {
            cookie_lifetime(s.meta.expiry)
        }),
    })
}

async fn run_step(
    engine: &SessionEngine,
    st: &mut State,
    step: Step,
    writes: &mut u8,
) -> Result<Outcome> {
    let metrics = engine.metrics();
    let store = engine.store();
    match step {
        Step::Update {
            key,
            set,
            delete,
            renewal,
            op,
            bound,
        } => {
            let ttl = renewal.map(|(_, ttl)| ttl);
            if let (Some((index, handle)), Some(ttl)) = (&bound, ttl) {
                // The index must outlive every session in it, so it moves first. A session no
                // longer in its index was revoked: it must not live on unlisted.
                let listed = engine
                    .timed("touch_user", store.touch_user(index, handle, ttl))
                    .await
                    .inspect_err(|_| metrics.write(op.as_str(), "error"))?;
                if !listed {
                    engine
                        .timed("unbind", store.unbind(index, &key, Some(handle)))
                        .await?;
                    metrics.write(op.as_str(), "gone");
                    st.gone();
                    return Ok(Outcome::Gone);
                }
            }
            let updated = engine
                .timed("update", store.update(&key, &set, &delete, ttl))
                .await
                .inspect_err(|_| metrics.write(op.as_str(), "error"))?;
            if !updated {
                // Destroyed (or expired) by someone else since it was loaded: stay destroyed.
                // Its data must not reach the store again, not even through a second commit.
                metrics.write(op.as_str(), "gone");
                st.gone();
                return Ok(Outcome::Gone);
            }
            metrics.write(op.as_str(), "ok");
            if op == WriteOp::Update {
                metrics.size(encoded_size(st));
            }
            st.original.clear();
            if let (Some((meta, _)), Lifecycle::Loaded(stored)) = (renewal, &mut st.life) {
                stored.meta = meta;
            }
            Ok(Outcome::Done)
        }
        Step::Create {
            id,
            fields,
            meta,
            ttl,
        } => {
            let (id, key) = create(engine, id, &fields, ttl, writes).await?;
            metrics.size(encoded_size(st));
            st.life = Lifecycle::Loaded(Stored {
                id,
                key,
                meta,
                bound: None,
            });
            st.original.clear();
            Ok(Outcome::Done)
        }
        Step::Regenerate {
            old_key,
            id,
            fields,
            meta,
            ttl,
            bound,
        } => {
            let op = WriteOp::Regenerate.as_str();
            let mut id = id;
            let mut attempts = 1;
            loop {
                let key = engine.key(&id);
                let moved = match &bound {
                    None => store.regenerate(&old_key, &key, &fields, ttl),
                    Some(b) => {
                        store.rebind(&b.index, &b.device.handle, &old_key, &key, &fields, ttl)
                    }
                };
                let moved = engine
                    .timed("regenerate", moved)
                    .await
                    .inspect_err(|_| metrics.write(op, "error"))?;
                match moved {
                    Regenerated::Moved => {
                        metrics.write(op, "ok");
                        metrics.size(encoded_size(st));
                        st.life = Lifecycle::Loaded(Stored {
                            id,
                            key,
                            meta,
                            bound,
                        });
                        st.original.clear();
                        return Ok(Outcome::Done);
                    }
                    Regenerated::OldGone => {
                        // Destroyed (or expired) since it was loaded: fail closed. Its data
                        // belongs to a session that no longer exists and must not come back.
                        metrics.write(op, "gone");
                        st.gone();
                        return Ok(Outcome::Gone);
                    }
                    _ if attempts == CREATE_ATTEMPTS => {
                        metrics.write(op, "error");
                        return Err(collision());
                    }
                    _ => {
                        tracing::warn!("regenerated session id collided; minting another");
                        attempts += 1;
                        *writes = writes.saturating_add(1);
                        id = SessionId::generate().with_slot(id.slot());
                    }
                }
            }
        }
        Step::Delete { key, bound } => {
            let op = WriteOp::Destroy.as_str();
            let deleted = match &bound {
                None => engine.timed("delete", store.delete(&key)).await,
                Some((index, handle)) => {
                    let unbind = store.unbind(index, &key, handle.as_deref());
                    engine.timed("unbind", unbind).await
                }
            };
            deleted.inspect_err(|_| metrics.write(op, "error"))?;
            metrics.write(op, "ok");
            // Deleted: a later commit of this handle has nothing left to delete, but still
            // clears the cookie and never stores an empty session (the state stays `Destroyed`).
            if let Lifecycle::Destroyed { old, .. } = &mut st.life {
                *old = None;
            }
            Ok(Outcome::Done)
        }
    }
}

/// Creates the session under `id` (or a fresh id), minting another on a collision. Answers
/// the id with its key (derived once: a keyed hash per derivation).
async fn create(
    engine: &SessionEngine,
    id: Option<SessionId>,
    fields: &[(String, Bytes)],
    ttl: Duration,
    writes: &mut u8,
) -> Result<(SessionId, String)> {
    let metrics = engine.metrics();
    let op = WriteOp::Create.as_str();
    let mut id = id.unwrap_or_else(SessionId::generate);
    for attempt in 1..=CREATE_ATTEMPTS {
        let key = engine.key(&id);
        let created = engine
            .timed("create", engine.store().create(&key, fields, ttl))
            .await
            .inspect_err(|_| metrics.write(op, "error"))?;
        if created {
            metrics.write(op, "ok");
            return Ok((id, key));
        }
        if attempt < CREATE_ATTEMPTS {
            tracing::warn!("new session id collided with an existing session; minting another");
            *writes = writes.saturating_add(1);
            id = SessionId::generate();
        }
    }
    metrics.write(op, "error");
    Err(collision())
}

fn collision() -> Error {
    Error::new(
        ErrorKind::IdCollision,
        format!("{CREATE_ATTEMPTS} fresh session ids all collided; check the OS random source"),
    )
}

fn encoded_size(st: &State) -> usize {
    st.data.iter().map(|(k, v)| k.len() + v.len()).sum()
}
