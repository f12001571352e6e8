//! The handle's lifecycle as data: which state a session is in, with only the data valid in that
//! state, and the transitions the handle's methods make. No I/O here; loading and committing
//! live in the handle and the executor.

use std::{collections::HashMap, fmt};

use bytes::Bytes;

use crate::{
    error::Error,
    id::SessionId,
    record::{DeviceRecord, Meta, StoredExpiry},
};

/// A session that exists in the store: its id, the key derived from it (kept, since deriving it
/// hashes the id), its meta as last read or written, and its user binding if it is logged in.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) id: SessionId,
    pub(crate) key: String,
    pub(crate) meta: Meta,
    pub(crate) bound: Option<Bound>,
}

/// A session bound to a user: its user's index key and its device record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bound {
    pub(crate) index: String,
    pub(crate) device: DeviceRecord,
}

impl Bound {
    /// The (index, handle) pair the store's per-user operations take.
    pub(crate) fn entry(&self) -> (String, String) {
        (self.index.clone(), self.device.handle.clone())
    }
}

impl fmt::Debug for Stored {
    // The key holds the id in clear when ids are not hashed at rest: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("id", &self.id)
            .field("meta", &self.meta)
            .field("bound", &self.bound.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a handle is in its life. Transitions:
///
/// ```text
/// Unloaded ──load──▶ Loaded | Fresh | Failed
/// Loaded ──regenerate──▶ Regenerated { old }      Regenerated ──regenerate──▶ Regenerated (new id)
/// any ──destroy──▶ Destroyed { old }              (old: the stored or requested session, if any)
/// Fresh | Destroyed ──regenerate──▶ same state with a new id
/// commit: Loaded ─update gone──▶ Fresh (data dropped);  Fresh/Destroyed ─create──▶ Loaded;
///         Regenerated ─moved──▶ Loaded, ─old gone──▶ Fresh (data dropped);
///         Destroyed ─deleted──▶ Destroyed with nothing left to delete
/// ```
#[derive(Debug)]
pub(crate) enum Lifecycle {
    /// Nothing read yet (the load is lazy).
    Unloaded,
    /// No stored session behind this handle: the request had no cookie, or named a session the
    /// store does not have (`stale_cookie`: its cookie must be cleared unless a new session is
    /// created). `id` is minted on first need.
    Fresh {
        id: Option<SessionId>,
        stale_cookie: bool,
    },
    /// A live stored session.
    Loaded(Stored),
    /// The data moves to `id` at commit, and only if `old` still exists then.
    Regenerated { old: Stored, id: SessionId },
    /// `destroy()` was called: the key `old` (if there was a session) is deleted at commit and the
    /// cookie cleared. Fields inserted afterwards start a new session under `id`.
    Destroyed {
        old: Option<DestroyedKey>,
        id: Option<SessionId>,
    },
    /// The load failed. Such a handle is never written back: an empty-looking session must not
    /// overwrite the real one. `id` is what a fail-open handle hands out when asked (never stored).
    Failed { error: Error, id: Option<SessionId> },
}

/// The key a destroy deletes (redacted in `Debug`, like [`Stored`]), with its user's index and
/// its handle (when known) if it was logged in.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DestroyedKey {
    pub(crate) key: String,
    pub(crate) bound: Option<(String, Option<String>)>,
}

impl fmt::Debug for DestroyedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DestroyedKey(…)")
    }
}

/// What a handle does when its load fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnLoadError {
    /// Every use returns the error.
    Fail,
    /// Serve an empty session that is never saved.
    ServeEmpty,
}

/// One handle's state: the lifecycle plus the fields, which every state but `Unloaded` has.
pub(crate) struct State {
    /// The id the client presented, if any.
    pub(crate) requested: Option<SessionId>,
    pub(crate) on_load_error: OnLoadError,
    pub(crate) life: Lifecycle,
    /// The current fields (encoded values), meta excluded.
    pub(crate) data: HashMap<String, Bytes>,
    /// The value each field had before its first change since the load (`None`: absent); a
    /// field that was never changed is not here, so loading costs no copy.
    pub(crate) original: HashMap<String, Option<Bytes>>,
    /// The load found a live session (cleared by a destroy): what `is_new` reports, whatever
    /// later commits do in this request.
    pub(crate) found_at_load: bool,
    /// A login moved the session to a new id outside a commit: the next commit sends the
    /// cookie even if it writes nothing.
    pub(crate) announce: bool,
    /// The expiry rule the session is to have after the commit: the stored one after a load,
    /// unless `set_expiry` changed it. A commit writes the meta when it differs.
    pub(crate) expiry: Option<StoredExpiry>,
}

impl fmt::Debug for State {
    // Session contents are user data: show field names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields: Vec<&String> = self.data.keys().collect();
        fields.sort();
        f.debug_struct("State")
            .field("requested", &self.requested)
            .field("on_load_error", &self.on_load_error)
            .field("life", &self.life)
            .field("fields", &fields)
            .field("changed", &self.original.len())
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl State {
    pub(crate) fn new(requested: Option<SessionId>, on_load_error: OnLoadError) -> Self {
        State {
            requested,
            on_load_error,
            life: Lifecycle::Unloaded,
            data: HashMap::new(),
            original: HashMap::new(),
            found_at_load: false,
            announce: false,
            expiry: None,
        }
    }

    /// Records a field's value before its first change.
    pub(crate) fn remember(&mut self, field: &str) {
        if !self.original.contains_key(field) {
            let before = self.data.get(field).cloned();
            self.original.insert(field.to_owned(), before);
        }
    }

    /// Whether the session did not exist when this request began, or was destroyed since.
    pub(crate) fn is_new(&self) -> bool {
        !self.found_at_load
    }

    /// The session's id, minting one for a session that has none yet.
    pub(crate) fn id(&mut self) -> Option<SessionId> {
        match &mut self.life {
            Lifecycle::Loaded(stored) => Some(stored.id),
            Lifecycle::Regenerated { id, .. } => Some(*id),
            Lifecycle::Fresh { id, .. }
            | Lifecycle::Destroyed { id, .. }
            | Lifecycle::Failed { id, .. } => Some(*id.get_or_insert_with(SessionId::generate)),
            Lifecycle::Unloaded => None,
        }
    }

    /// `destroy()`: whatever was stored (or, when nothing could be read, whatever the client
    /// named) is deleted at commit; the fields start empty. `requested_key` derives the key of
    /// the requested id, only called when no load told the key.
    pub(crate) fn destroy(&mut self, requested_key: impl FnOnce(&SessionId) -> DestroyedKey) {
        let old = match std::mem::replace(&mut self.life, Lifecycle::Unloaded) {
            Lifecycle::Loaded(stored) | Lifecycle::Regenerated { old: stored, .. } => {
                Some(DestroyedKey {
                    bound: stored
                        .bound
                        .as_ref()
                        .map(|b| (b.index.clone(), Some(b.device.handle.clone()))),
                    key: stored.key,
                })
            }
            Lifecycle::Destroyed { old, .. } => old,
            // Nothing stored behind a fresh handle; its cookie is cleared all the same.
            Lifecycle::Fresh { .. } => None,
            // After a failed (or no) load the requested id is deleted blindly: logging out must
            // work while reads fail.
            Lifecycle::Unloaded | Lifecycle::Failed { .. } => {
                self.requested.as_ref().map(requested_key)
            }
        };
        self.life = Lifecycle::Destroyed { old, id: None };
        self.found_at_load = false;
        self.announce = false;
        // A session started after the destroy is a new one, with the configured expiry.
        self.expiry = None;
        self.data.clear();
        self.original.clear();
    }

    /// The commit found the session gone (destroyed or expired by someone else): the handle is
    /// fresh with a cookie to clear, and its data is dropped so no later commit can store it.
    pub(crate) fn gone(&mut self) {
        self.life = Lifecycle::Fresh {
            id: None,
            stale_cookie: true,
        };
        self.announce = false;
        self.expiry = None;
        self.data.clear();
        self.original.clear();
    }

    /// `regenerate()` on a loaded state: the data is to move to a new id at commit.
    pub(crate) fn regenerate(&mut self) {
        self.life = match std::mem::replace(&mut self.life, Lifecycle::Unloaded) {
            // A logged-in session stays in its user's slot.
            Lifecycle::Loaded(old) | Lifecycle::Regenerated { old, .. } => Lifecycle::Regenerated {
                id: SessionId::generate().with_slot(old.id.slot()),
                old,
            },
            Lifecycle::Fresh { stale_cookie, .. } => Lifecycle::Fresh {
                id: Some(SessionId::generate()),
                stale_cookie,
            },
            Lifecycle::Destroyed { old, .. } => Lifecycle::Destroyed {
                old,
                id: Some(SessionId::generate()),
            },
            other => other,
        };
        // Every field goes to the new key, so none counts as changed against the old one.
        self.original.clear();
    }
}
