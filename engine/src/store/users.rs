//! The store's per-user operations: a user's index (a hash `handle → session key`) and every
//! session bound to that user share one cluster slot, so each operation below is one atomic step
//! on every topology. The store keeps the index exact: an entry is added in the same step that
//! creates its session and removed in the same step that deletes it; a session that expires by
//! TTL leaves its entry until the next operation on that index prunes it (every operation does)
//! or the index key's own TTL, which each step keeps at least as long as its longest-lived
//! session's, ends it.

use std::time::Duration;

use bytes::Bytes;

use super::Fields;
use crate::{
    error::{Error, ErrorKind},
    users::SessionCap,
};

/// A login: create `key` in the user's slot with `fields`, add `handle → key` to `index`, apply
/// the cap, and end the session the login replaces.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BindRequest<'a> {
    /// The user's index key.
    pub index: &'a str,
    /// The new session's key (in the index's slot).
    pub key: &'a str,
    /// The new session's handle.
    pub handle: &'a str,
    /// Every field of the new session, meta and device record included.
    pub fields: &'a [(String, Bytes)],
    /// The new session's TTL.
    pub ttl: Duration,
    /// The cap to apply, if any.
    pub cap: Option<SessionCap>,
    /// The session the login replaces (it must still exist: a login racing a logout fails
    /// closed), if there was one.
    pub old: Option<OldSession<'a>>,
}

/// The session a login replaces.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct OldSession<'a> {
    /// Its key.
    pub key: &'a str,
    /// Its index and handle when it was bound to a user (the same or another one).
    pub bound: Option<(&'a str, &'a str)>,
}

impl<'a> OldSession<'a> {
    /// The old session at `key`, bound under `bound` (index, handle) if it was.
    pub fn new(key: &'a str, bound: Option<(&'a str, &'a str)>) -> Self {
        OldSession { key, bound }
    }
}

impl<'a> BindRequest<'a> {
    /// A login request; see the fields.
    pub fn new(
        index: &'a str,
        key: &'a str,
        handle: &'a str,
        fields: &'a [(String, Bytes)],
        ttl: Duration,
    ) -> Self {
        BindRequest {
            index,
            key,
            handle,
            fields,
            ttl,
            cap: None,
            old: None,
        }
    }

    /// With a cap.
    pub fn with_cap(mut self, cap: Option<SessionCap>) -> Self {
        self.cap = cap;
        self
    }

    /// Replacing `old`.
    pub fn with_old(mut self, old: Option<OldSession<'a>>) -> Self {
        self.old = old;
        self
    }
}

/// What a login did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindOutcome {
    /// Created; the cap evicted the sessions with these handles.
    Bound {
        /// Handles of the evicted sessions.
        evicted: Vec<String>,
    },
    /// The cap refused it: the user has `live` sessions. Nothing changed (the old session is
    /// kept, except on a cluster where it lived in another slot, see `bind`).
    Refused {
        /// The user's live sessions.
        live: usize,
    },
    /// The old session no longer existed: nothing was created.
    OldGone,
    /// `key` already exists (an id collision): nothing changed; retry with another id.
    NewTaken,
}

/// One live session in an index: its handle and its engine fields (meta, device record, last
/// seen), the user's own fields left out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listed {
    /// The session's handle.
    pub handle: String,
    /// The engine's fields of the session.
    pub fields: Fields,
}

impl Listed {
    /// A listed session.
    pub fn new(handle: String, fields: Fields) -> Self {
        Listed { handle, fields }
    }
}

/// Which sessions a revoke ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revoke<'a> {
    /// The one with this handle.
    One(&'a str),
    /// All of them, except the one with handle `keep`.
    All {
        /// The handle to keep (the caller's own session), if any.
        keep: Option<&'a str>,
    },
}

pub(crate) fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "this store does not keep per-user sessions ({what}); use the native layout on \
             MemoryStore or RedisStore"
        ),
    )
}

/// The cap check and the least-recently-seen order, shared by the stores that do it in Rust.
/// `live` holds `(handle, last seen ms)`; returns the handles to evict, or `Err(live count)` to
/// refuse.
pub(crate) fn apply_cap(
    cap: Option<SessionCap>,
    mut live: Vec<(String, u64)>,
) -> std::result::Result<Vec<String>, usize> {
    let Some(cap) = cap else {
        return Ok(Vec::new());
    };
    let max = cap.max.max(1) as usize;
    if live.len() < max {
        return Ok(Vec::new());
    }
    if cap.policy == crate::users::CapPolicy::Refuse {
        return Err(live.len());
    }
    live.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let excess = live.len() + 1 - max;
    Ok(live.into_iter().take(excess).map(|(h, _)| h).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::CapPolicy;

    #[test]
    fn the_cap_evicts_the_least_recently_seen_or_refuses() {
        let live = vec![("b".into(), 20), ("a".into(), 10), ("c".into(), 30)];
        let evict = |max| {
            Some(SessionCap {
                max,
                policy: CapPolicy::EvictLeastRecent,
            })
        };
        assert_eq!(apply_cap(None, live.clone()), Ok(vec![]));
        assert_eq!(apply_cap(evict(4), live.clone()), Ok(vec![]));
        assert_eq!(apply_cap(evict(3), live.clone()), Ok(vec!["a".into()]));
        assert_eq!(
            apply_cap(evict(1), live.clone()),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        let refuse = Some(SessionCap {
            max: 3,
            policy: CapPolicy::Refuse,
        });
        assert_eq!(apply_cap(refuse, live), Err(3));
    }
}
