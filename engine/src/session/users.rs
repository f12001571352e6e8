//! The handle's per-user operations: log in (bind to a user, in the user's slot, under the cap),
//! list the user's devices, revoke one, log out everywhere. Unlike the other changes, a login
//! and a revoke run at once rather than at commit: their answer (refused by the cap, not the
//! caller's device) decides the response.

use std::time::{Duration, SystemTime};

use super::{
    expiry,
    plan::{self, epoch_ms, from_epoch_ms},
    state::{Bound, Lifecycle, Stored},
    Session, SessionEngine,
};
use crate::{
    error::{Error, ErrorKind, Result},
    id::{SessionId, UserSlot},
    metrics,
    record::{DeviceRecord, Meta, DEVICE_FIELD, META_FIELD, SEEN_FIELD},
    store::{BindOutcome, BindRequest, Listed, OldSession, Revoke},
    users::{Device, DeviceHandle, DeviceInfo, LoggedIn, Revoked, UserKey},
};

/// How many fresh ids a login tries when one collides.
const LOGIN_ATTEMPTS: usize = 3;

impl SessionEngine {
    fn user_key(&self) -> Result<&UserKey> {
        self.inner.config.user_key.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "per-user sessions need a user key: set SessionConfig::with_user_key",
            )
        })
    }

    fn index_of(&self, user: &str) -> Result<(UserSlot, String)> {
        if user.is_empty() {
            return Err(Error::new(ErrorKind::InvalidField, "the user id is empty"));
        }
        let slot = self.user_key()?.slot(user);
        Ok((slot, self.inner.keys.index_key(&slot)))
    }

    /// Every live session of `user`, newest login first (for an administrator's view; a user's
    /// own list is [`Session::devices`]).
    ///
    /// # Errors
    /// A store error, or [`ErrorKind::Config`] without a user key.
    pub async fn user_devices(&self, user: &str) -> Result<Vec<Device>> {
        let (_, index) = self.index_of(user)?;
        self.list(&index, None).await
    }

    /// Ends every session of `user` (after a password reset, say); returns how many there were.
    ///
    /// # Errors
    /// A store error, or [`ErrorKind::Config`] without a user key.
    pub async fn revoke_user(&self, user: &str) -> Result<usize> {
        let (_, index) = self.index_of(user)?;
        self.revoke_all(&index, None).await
    }

    async fn list(&self, index: &str, current: Option<&str>) -> Result<Vec<Device>> {
        let listed = self
            .timed("list_user", self.inner.store.list_user(index))
            .await
            .inspect_err(|_| metrics::user_op("list", "error"))?;
        metrics::user_op("list", "ok");
        let now_ms = epoch_ms(SystemTime::now());
        let mut devices: Vec<Device> = listed
            .into_iter()
            .filter_map(|l| device(l, current, now_ms))
            .collect();
        devices.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.handle.as_str().cmp(b.handle.as_str()))
        });
        Ok(devices)
    }

    async fn revoke_all(&self, index: &str, keep: Option<&str>) -> Result<usize> {
        let revoked = self
            .timed(
                "revoke",
                self.inner.store.revoke(index, Revoke::All { keep }),
            )
            .await
            .inspect_err(|_| metrics::user_op("revoke_all", "error"))?;
        metrics::user_op("revoke_all", "ok");
        metrics::revoked("logout_everywhere", revoked.len());
        Ok(revoked.len())
    }
}

/// A listed session as a device, `None` when its records do not decode or it has expired.
fn device(listed: Listed, current: Option<&str>, now_ms: u64) -> Option<Device> {
    let meta = Meta::decode(listed.fields.get(META_FIELD)?).ok()?;
    if !meta.is_live(now_ms) {
        return None;
    }
    let record = DeviceRecord::decode(listed.fields.get(DEVICE_FIELD)?).ok()?;
    let seen = listed
        .fields
        .get(SEEN_FIELD)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(record.login_ms);
    Some(Device {
        current: current == Some(listed.handle.as_str()),
        handle: DeviceHandle::from_stored(listed.handle),
        created: from_epoch_ms(record.login_ms),
        last_seen: from_epoch_ms(seen),
        user_agent: record.user_agent,
        client_addr: record.client_addr,
    })
}

fn not_logged_in() -> Error {
    Error::new(
        ErrorKind::NotLoggedIn,
        "this session is not logged in (log in with Session::login first)",
    )
}

impl Session {
    /// Logs the session in as `user`: its data moves to a new id in the user's slot (as
    /// [`Session::regenerate`] does, against session fixation), it joins the user's device list
    /// with `device`, and the per-user cap applies, all in one atomic store step. Takes effect at
    /// once; the new cookie goes out with the commit. A session already logged in (as anyone)
    /// is replaced.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use tessera_engine::{DeviceInfo, MemoryStore, SessionConfig, SessionEngine, UserKey};
    ///
    /// let config = SessionConfig::default()
    ///     .with_user_key(UserKey::new(b"sixteen bytes or more of secret")?);
    /// let engine = SessionEngine::new(MemoryStore::new(), config)?;
    /// let session = engine.session(None);
    /// session.login("ada", DeviceInfo::default().with_user_agent("curl/8")).await?;
    /// session.commit().await?;
    /// assert_eq!(session.devices().await?.len(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::SessionCap`] when the cap refuses the login (nothing changed);
    /// [`ErrorKind::SessionEnded`] when this session was ended meanwhile (a logout elsewhere:
    /// nothing is created); [`ErrorKind::Config`] without a user key; [`ErrorKind::TooLarge`];
    /// a store error.
    pub async fn login(&self, user: &str, device: DeviceInfo) -> Result<LoggedIn> {
        let engine = &self.engine;
        let (slot, index) = engine.index_of(user)?;
        let handle = engine.user_key()?.mint_handle(&slot);
        let config = &engine.inner.config;
        let mut st = self.loaded().await?;
        let now_ms = epoch_ms(SystemTime::now());
        let old: Option<Stored> = match &mut st.life {
            Lifecycle::Loaded(stored) | Lifecycle::Regenerated { old: stored, .. } => {
                Some(stored.clone())
            }
            Lifecycle::Destroyed { old, .. } => {
                // Destroyed earlier in this request: that session ends now, whatever happens.
                if let Some(old) = old.take() {
                    let store = engine.store();
                    match &old.bound {
                        None => engine.timed("delete", store.delete(&old.key)).await?,
                        Some((index, handle)) => {
                            let unbind = store.unbind(index, &old.key, handle.as_deref());
                            engine.timed("unbind", unbind).await?
                        }
                    };
                }
                None
            }
            Lifecycle::Failed { error, .. } => {
                return Err(Error::new(
                    ErrorKind::LoadFailed,
                    format!("cannot log in: the session could not be loaded ({error})"),
                ))
            }
            Lifecycle::Fresh { .. } | Lifecycle::Unloaded => None,
        };
        // A login keeps a guest session's creation time and absolute deadline, as a regenerate.
        let meta = match &old {
            Some(old) => Meta {
                expires_ms: expiry::expiry(config, now_ms, old.meta.deadline_ms, st.expiry),
                expiry: st.expiry,
                ..old.meta
            },
            None => plan::new_meta(config, now_ms, st.expiry),
        };
        plan::check_limits(config, &st.data)?;
        let (user_agent, client_addr) = device.into_parts();
        let record = DeviceRecord {
            handle: handle.as_str().to_owned(),
            login_ms: now_ms,
            user_agent,
            client_addr,
        };
        let mut fields: Vec<(String, bytes::Bytes)> = st
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fields.push((META_FIELD.to_owned(), meta.encode()));
        fields.push((DEVICE_FIELD.to_owned(), record.encode()));
        fields.push((SEEN_FIELD.to_owned(), plan::seen(now_ms)));
        let ttl = Duration::from_millis(meta.expires_ms.saturating_sub(now_ms));
        let old_bound = old
            .as_ref()
            .and_then(|o| o.bound.as_ref())
            .map(|b| (b.index.as_str(), b.device.handle.as_str()));
        let old_session = old.as_ref().map(|o| OldSession::new(&o.key, old_bound));
        for _ in 0..LOGIN_ATTEMPTS {
            let id = SessionId::generate().with_slot(Some(slot));
            let key = engine.key(&id);
            let request = BindRequest::new(&index, &key, handle.as_str(), &fields, ttl)
                .with_cap(config.session_cap)
                .with_old(old_session);
            let outcome = engine
                .timed("bind", engine.store().bind(&request))
                .await
                .inspect_err(|_| {
                    metrics::user_op("login", "error");
                    engine.metrics().write("regenerate", "error");
                })?;
            match outcome {
                BindOutcome::Bound { evicted } => {
                    metrics::user_op("login", "ok");
                    // A login regenerates the id: it counts among the regenerate writes.
                    engine.metrics().write("regenerate", "ok");
                    metrics::cap("evicted", evicted.len());
                    st.life = Lifecycle::Loaded(Stored {
                        id,
                        key,
                        meta,
                        bound: Some(Bound {
                            index,
                            device: record,
                        }),
                    });
                    st.original.clear();
                    st.announce = true;
                    self.publish(&st);
                    return Ok(LoggedIn {
                        handle,
                        evicted: evicted.len(),
                    });
                }
                BindOutcome::Refused { live } => {
                    metrics::user_op("login", "refused");
                    metrics::cap("refused", 1);
                    let max = config.session_cap.map_or(0, |c| c.max);
                    return Err(Error::new(
                        ErrorKind::SessionCap,
                        format!(
                            "this account already has {live} active sessions, the most allowed \
                             ({max}); log out on another device first"
                        ),
                    ));
                }
                BindOutcome::OldGone => {
                    metrics::user_op("login", "gone");
                    engine.metrics().write("regenerate", "gone");
                    st.gone();
                    self.publish(&st);
                    return Err(Error::new(
                        ErrorKind::SessionEnded,
                        "the session ended (logged out elsewhere) during the login; log in again",
                    ));
                }
                _ => tracing::warn!("a login's new session id collided; minting another"),
            }
        }
        metrics::user_op("login", "error");
        Err(Error::new(
            ErrorKind::IdCollision,
            format!("{LOGIN_ATTEMPTS} fresh session ids all collided; check the OS random source"),
        ))
    }

    /// The logged-in session's (slot, index, own handle).
    async fn binding(&self) -> Result<(UserSlot, String, String)> {
        let st = self.loaded().await?;
        match &st.life {
            Lifecycle::Loaded(s @ Stored { bound: Some(b), .. })
            | Lifecycle::Regenerated {
                old: s @ Stored { bound: Some(b), .. },
                ..
            } => {
                let slot = s.id.slot().ok_or_else(not_logged_in)?;
                let (index, handle) = b.entry();
                Ok((slot, index, handle))
            }
            _ => Err(not_logged_in()),
        }
    }

    /// Whether this session is logged in (bound to a user by [`Session::login`]).
    ///
    /// # Errors
    ///
    /// The load's error.
    pub async fn is_logged_in(&self) -> Result<bool> {
        match self.binding().await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == ErrorKind::NotLoggedIn => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The live sessions of this session's user, newest login first, this one marked
    /// `current`. Expired sessions are never listed (their entries are pruned on the way).
    ///
    /// # Errors
    /// [`ErrorKind::NotLoggedIn`] for a guest session; a store error.
    pub async fn devices(&self) -> Result<Vec<Device>> {
        let (_, index, own) = self.binding().await?;
        self.engine.list(&index, Some(&own)).await
    }

    /// Ends one of this user's sessions by its handle. Revoking this very session logs it out
    /// (the cookie is cleared at commit).
    ///
    /// # Errors
    /// [`ErrorKind::NotLoggedIn`] for a guest session; a store error.
    pub async fn revoke_device(&self, handle: &str) -> Result<Revoked> {
        let (slot, index, own) = self.binding().await?;
        if !self.engine.user_key()?.owns(&slot, handle) {
            metrics::user_op("revoke", "not_found");
            return Ok(Revoked::NotTheCallers);
        }
        let revoked = self
            .engine
            .timed(
                "revoke",
                self.engine.store().revoke(&index, Revoke::One(handle)),
            )
            .await
            .inspect_err(|_| metrics::user_op("revoke", "error"))?;
        if handle == own {
            let mut st = self.state.lock().await;
            st.gone();
            self.publish(&st);
        }
        if revoked.is_empty() {
            metrics::user_op("revoke", "gone");
            return Ok(Revoked::AlreadyGone);
        }
        metrics::user_op("revoke", "ok");
        metrics::revoked("revoke", 1);
        Ok(Revoked::Revoked)
    }

    /// Ends every session of this user, or every other one with `keep_current`; returns how
    /// many were ended. Without `keep_current` this session is logged out too (the cookie is
    /// cleared at commit).
    ///
    /// # Errors
    /// [`ErrorKind::NotLoggedIn`] for a guest session; a store error.
    pub async fn logout_everywhere(&self, keep_current: bool) -> Result<usize> {
        let (_, index, own) = self.binding().await?;
        let keep = keep_current.then_some(own.as_str());
        let n = self.engine.revoke_all(&index, keep).await?;
        if !keep_current {
            let mut st = self.state.lock().await;
            st.gone();
            self.publish(&st);
        }
        Ok(n)
    }
}
