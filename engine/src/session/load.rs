//! The lazy load: one store read per request, the meta and binding split off its fields.

use std::{collections::HashMap, time::SystemTime};

use bytes::Bytes;

use super::{
    plan,
    state::{Lifecycle, OnLoadError, State, Stored},
    Session,
};
use crate::{
    config::SessionConfig,
    error::{Error, ErrorKind, Result},
    record::{Meta, META_FIELD},
};

impl Session {
    /// The state after the lazy load: `Unloaded` becomes `Loaded`, `Fresh` or `Failed`.
    pub(super) async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let result = self.load_once().await;
        if let Ok(st) = &result {
            self.publish(st);
        }
        result
    }

    async fn load_once(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut st = self.state.lock().await;
        match &st.life {
            Lifecycle::Unloaded => {}
            Lifecycle::Failed { .. } if st.on_load_error == OnLoadError::ServeEmpty => {
                return Ok(st)
            }
            Lifecycle::Failed { error: err, .. } => {
                return Err(Error::new(
                    ErrorKind::LoadFailed,
                    format!("the session could not be loaded earlier in this request: {err}"),
                ))
            }
            _ => return Ok(st),
        }
        let Some(id) = st.requested else {
            st.life = Lifecycle::Fresh {
                id: None,
                stale_cookie: false,
            };
            return Ok(st);
        };
        let key = self.engine.key(&id);
        let config = &self.engine.inner.config;
        let store = &self.engine.inner.store;
        let read = match id.slot() {
            // A logged-in session is served only while its user's index names it.
            Some(slot) => {
                let index = self.engine.inner.keys.index_key(&slot);
                self.engine
                    .timed("load", store.load_bound(&key, &index))
                    .await
            }
            None => self.engine.timed("load", store.load(&key)).await,
        };
        let result = read
            .and_then(|fields| fields.map(|f| split_meta(f, config)).transpose())
            .and_then(|loaded| {
                loaded
                    .map(|(meta, mut fields)| {
                        let bound = self.engine.split_binding(&id, &mut fields)?;
                        Ok((meta, fields, bound))
                    })
                    .transpose()
            });
        match result {
            Err(err) => {
                self.engine.metrics().load("error");
                tracing::warn!(error = %err, "session load failed");
                st.life = Lifecycle::Failed {
                    error: err.shallow_clone(),
                    id: None,
                };
                match st.on_load_error {
                    OnLoadError::ServeEmpty => Ok(st),
                    OnLoadError::Fail => Err(err),
                }
            }
            Ok(Some((meta, fields, bound))) if meta.is_live(plan::epoch_ms(SystemTime::now())) => {
                self.engine.metrics().load("hit");
                st.life = Lifecycle::Loaded(Stored {
                    id,
                    key,
                    meta,
                    bound,
                });
                st.found_at_load = true;
                st.expiry = meta.expiry;
                st.data = fields;
                Ok(st)
            }
            Ok(_) => {
                self.engine.metrics().load("miss");
                st.life = Lifecycle::Fresh {
                    id: None,
                    stale_cookie: true,
                };
                Ok(st)
            }
        }
    }
}

/// Splits the meta field off a loaded hash; a hash without one is not ours.
fn split_meta(
    mut fields: HashMap<String, Bytes>,
    config: &SessionConfig,
) -> Result<(Meta, HashMap<String, Bytes>)> {
    check_loaded(&fields, config)?;
    let raw = fields.remove(META_FIELD).ok_or_else(|| {
        Error::new(
            ErrorKind::Decode,
            "the stored session has no meta field; something other than this engine wrote \
             under this keySchema",
        )
    })?;
    Ok((Meta::decode(&raw)?, fields))
}

/// How much more than the configured limits a stored hash may hold before it is refused at load:
/// a limit lowered after sessions were written must not lock their owners out, but a hash far
/// over it was not written by this engine's rules and is not decoded.
const LOAD_SLACK: usize = 4;

/// Refuses a loaded hash with far more fields or bytes than the limits allow.
fn check_loaded(fields: &HashMap<String, Bytes>, config: &SessionConfig) -> Result<()> {
    let max_fields = config
        .max_fields
        .saturating_add(1)
        .saturating_mul(LOAD_SLACK);
    let max_bytes = config
        .max_size
        .saturating_add(1024)
        .saturating_mul(LOAD_SLACK);
    let bytes: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    if fields.len() > max_fields || bytes > max_bytes {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "the stored session has {} fields and {bytes} bytes, far over the limits ({} \
                 fields, {} bytes); it was not decoded. Check what writes under this keySchema",
                fields.len(),
                config.max_fields,
                config.max_size
            ),
        ));
    }
    Ok(())
}
