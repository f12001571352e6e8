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
    exec::WriteCall, hash_fields, push_pairs, scripts::APPLIED, ttl_ms, Backend, RedisStore,
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

mod scripts;

pub(super) use self::scripts::{UserScripts, ALL};

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

    fn one_node(&self) -> bool {
        matches!(self.inner.backend, Backend::Pool(_))
    }

    pub(super) async fn bind_by(
        &self,
        call: &WriteCall<'_>,
        req: &BindRequest<'_>,
    ) -> Result<BindOutcome> {
        let deadline = call.deadline;
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
                let live = self.list_by(call, req.index).await?.len();
                if live >= cap.max.max(1) as usize {
                    return Ok(BindOutcome::Refused { live });
                }
            }
            let existed = match o.bound {
                Some((index, handle)) => self.unbind_by(call, index, o.key, Some(handle)).await?,
                None => self.delete_by(call, o.key).await?,
            };
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
                    .run(call, &self.user_scripts().bind, &keys, &args, None)
                    .await?;
                let outcome = match integers(&reply) {
                    Some(STALE) => return Ok(None),
                    Some(APPLIED) => BindOutcome::Bound {
                        evicted: strings_after_status(reply),
                    },
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
        Ok(outcome)
    }

    pub(super) async fn list_by(&self, call: &WriteCall<'_>, index: &str) -> Result<Vec<Listed>> {
        let deadline = call.deadline;
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
                .run(call, &self.user_scripts().list, &keys, &args, None)
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
        call: &WriteCall<'_>,
        index: &str,
        which: Revoke<'_>,
    ) -> Result<Vec<String>> {
        let deadline = call.deadline;
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
                .run(call, &self.user_scripts().revoke, &keys, &args, None)
                .await?;
            match integers(&reply) {
                Some(STALE) => Ok(None),
                Some(APPLIED) => Ok(Some(strings_after_status(reply))),
                other => Err(unexpected("revoke", other)),
            }
        })
        .await
    }

    pub(super) async fn unbind_by(
        &self,
        call: &WriteCall<'_>,
        index: &str,
        key: &str,
        handle: Option<&str>,
    ) -> Result<bool> {
        let args = [Value::String(handle.unwrap_or("").into())];
        let n: i64 = self
            .until_settled(call.deadline, || async {
                self.run(
                    call,
                    &self.user_scripts().unbind,
                    &[index, key],
                    &args,
                    None,
                )
                .await
                .map(Some)
            })
            .await?;
        Ok(n == APPLIED)
    }

    pub(super) async fn touch_by(
        &self,
        call: &WriteCall<'_>,
        index: &str,
        handle: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let args = [Value::String(handle.into()), ttl_ms(ttl)];
        let n: i64 = self
            .run(call, &self.user_scripts().touch, &[index], &args, None)
            .await?;
        Ok(n == APPLIED)
    }

    pub(super) async fn rebind_by(
        &self,
        call: &WriteCall<'_>,
        index: &str,
        handle: &str,
        keys: (&str, &str),
        fields: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<Regenerated> {
        let (old, new) = keys;
        let mut args = vec![Value::String(handle.into()), ttl_ms(ttl)];
        push_pairs(&mut args, fields);
        let n: i64 = self
            .until_settled(call.deadline, || async {
                self.run(
                    call,
                    &self.user_scripts().rebind,
                    &[index, old, new],
                    &args,
                    None,
                )
                .await
                .map(Some)
            })
            .await?;
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
