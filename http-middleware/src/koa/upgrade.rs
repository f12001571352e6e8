//! Upgrade mode's move of one seed session into the native layout.
//!
//! A page and its XHRs carry one seed pair, so several requests may ask to move the same seed
//! session at once. They agree on one native session through a claim key beside the seed key
//! (`<seed key>:upgrade`), written only with the string store's atomic operations:
//!
//! 1. `SET … NX PX lease` of `claimed`: the one request that wins copies the seed's fields
//!    into a fresh native session and stores it at once (before its handler runs), then
//!    replaces the claim with `moved:<native id>` for the forward window and deletes the seed
//!    key.
//! 2. Every other request waits while the claim says `claimed` and then joins the native
//!    session the claim names. A winner that died leaves a claim that expires with its lease,
//!    and the next request claims again: the seed key is still there.
//! 3. A seed session the native layout cannot hold (over its size or field limits, a value
//!    its decoder refuses) is never refused: the claim becomes `kept` and the session is served
//!    in the seed's layout with the seed's pair, as the profile serves it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tessera_engine::{
    koa::json::JsValue, store::StringStore, Error, ErrorKind, Session, SessionEngine, SessionId,
};

use super::KoaCookies;
use crate::session::{open_session, FailurePolicy, Settings};

/// How long the old pair keeps leading to the moved session by default: long enough for the
/// requests a page sent before its first answer came back.
pub(crate) const DEFAULT_FORWARD: Duration = Duration::from_secs(30);

/// How long a seed session that could not be moved is served in its seed form before a request
/// tries again (it may have shrunk meanwhile).
const KEPT_FOR: Duration = Duration::from_secs(600);

/// How often a request that found the session being moved looks again.
const POLL: Duration = Duration::from_millis(5);

/// The bound on one store call when the store names none.
const DEFAULT_CALL: Duration = Duration::from_secs(5);

const CLAIMED: &[u8] = b"claimed";
const KEPT: &[u8] = b"kept";
const MOVED: &str = "moved:";

/// Upgrade mode's reading side: the seed's sessions, their cookies, the claims.
#[derive(Debug, Clone)]
pub(crate) struct Upgrade {
    pub(crate) engine: SessionEngine,
    pub(crate) cookies: KoaCookies,
    /// The seed's string store, for the claim keys.
    pub(crate) strings: Arc<dyn StringStore>,
    /// How long a moved session's claim forwards the old pair.
    pub(crate) forward: Duration,
    /// The layer's settings for serving a kept session in the seed's form (set when the layer
    /// is built).
    pub(crate) seed_form: Option<Arc<Settings>>,
}

/// What a claim key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// A request is moving the session now.
    Claimed,
    /// Moved to this native session.
    Moved(SessionId),
    /// Served in the seed's form.
    Kept,
}

impl Claim {
    fn parse(value: &[u8]) -> Claim {
        if value == CLAIMED {
            return Claim::Claimed;
        }
        let moved = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.strip_prefix(MOVED))
            .and_then(|id| id.parse().ok());
        // Anything else was not written here: serving the seed as it is loses nothing.
        moved.map_or(Claim::Kept, Claim::Moved)
    }
}

/// What upgrade mode made of a request that carries the seed's pair.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// The pair named nothing to move: a fresh native session, and the pair is cleared.
    Empty(Session),
    /// The seed session lives natively under `id`, moved by this request or by another one
    /// that carried the same pair: the native cookie is set and the pair cleared.
    Native {
        session: Session,
        id: SessionId,
        /// Another request moved it.
        joined: bool,
    },
    /// The native layout cannot hold it: served in the seed's form, the pair kept.
    Kept(Session),
}

impl Resolved {
    /// The `outcome` label of [`KOA_UPGRADE_TOTAL`](crate::metrics::KOA_UPGRADE_TOTAL).
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Resolved::Empty(_) => "empty",
            Resolved::Native { joined: false, .. } => "moved",
            Resolved::Native { joined: true, .. } => "joined",
            Resolved::Kept(_) => "kept",
        }
    }
}

impl Upgrade {
    /// Moves or joins the seed session `old` for one request. `native` is the layer's engine.
    ///
    /// # Errors
    ///
    /// The store's error when it is unavailable (the request must not go on without the
    /// session: it would hand out a native cookie over the old one), or a
    /// [`ErrorKind::Timeout`] when another request held the claim past its lease.
    pub(crate) async fn resolve(
        &self,
        old: SessionId,
        native: &SessionEngine,
        policy: FailurePolicy,
    ) -> tessera_engine::Result<Resolved> {
        let claim = format!("{}:upgrade", self.engine.key(&old));
        let call = self.strings.call_timeout().unwrap_or(DEFAULT_CALL);
        let lease = (call * 3).max(Duration::from_secs(1));
        let deadline = Instant::now() + lease + call;
        loop {
            match self.strings.get(&claim).await?.as_deref().map(Claim::parse) {
                Some(Claim::Moved(id)) => {
                    let session = open_session(native, Some(id), policy);
                    return Ok(Resolved::Native {
                        session,
                        id,
                        joined: true,
                    });
                }
                Some(Claim::Kept) => return Ok(Resolved::Kept(self.seed(old, policy))),
                Some(Claim::Claimed) if Instant::now() >= deadline => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "another request was moving this session to the native layout and \
                         did not finish within its lease",
                    ));
                }
                Some(Claim::Claimed) => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                None => {}
            }
            let ours = self
                .strings
                .set_new(&claim, Bytes::from_static(CLAIMED), lease)
                .await?;
            if ours {
                return self.move_claimed(old, &claim, native, policy).await;
            }
        }
    }

    /// The claim is ours: copy, store natively, forward, retire the seed key.
    async fn move_claimed(
        &self,
        old: SessionId,
        claim: &str,
        native: &SessionEngine,
        policy: FailurePolicy,
    ) -> tessera_engine::Result<Resolved> {
        let session = open_session(native, None, policy);
        let stored = match copy(&self.engine.session(Some(old)), &session).await {
            Ok(false) => {
                self.release(claim).await;
                return Ok(Resolved::Empty(session));
            }
            Ok(true) => session.commit().await.map(|_| session.id()),
            Err(err) => Err(err),
        };
        match stored {
            Ok(Some(id)) => {
                let moved = Bytes::from(format!("{MOVED}{id}"));
                let expected = Bytes::from_static(CLAIMED);
                if let Err(err) = self
                    .strings
                    .replace(claim, expected, moved, self.forward)
                    .await
                {
                    // Requests already waiting time out with a 503 and come back; the session
                    // itself is stored.
                    tracing::warn!(error = %err, "moved a session but could not forward its old pair");
                }
                if let Err(err) = retire(&self.engine, old).await {
                    tracing::warn!(error = %err, "moved a session but could not delete its old key");
                }
                Ok(Resolved::Native {
                    session,
                    id,
                    joined: false,
                })
            }
            Ok(None) => {
                self.release(claim).await;
                Err(Error::new(
                    ErrorKind::Config,
                    "the moved session was not stored (the native engine keeps no session here)",
                ))
            }
            Err(err) if err.kind().is_unavailable() => {
                self.release(claim).await;
                Err(err)
            }
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "a seed session the native layout cannot hold is served in its seed form"
                );
                let kept = Bytes::from_static(KEPT);
                let expected = Bytes::from_static(CLAIMED);
                if let Err(err) = self.strings.replace(claim, expected, kept, KEPT_FOR).await {
                    tracing::debug!(error = %err, "could not mark a kept seed session");
                }
                Ok(Resolved::Kept(self.seed(old, policy)))
            }
        }
    }

    /// The seed session `old` for a request served in the seed's form.
    fn seed(&self, old: SessionId, policy: FailurePolicy) -> Session {
        open_session(&self.engine, Some(old), policy)
    }

    /// Gives up a claim (its lease would end it anyway).
    async fn release(&self, claim: &str) {
        if let Err(err) = self.strings.delete(claim).await {
            tracing::debug!(error = %err, "could not release an upgrade claim");
        }
    }
}

/// Copies the seed session `seed` into the fresh native `session`. Returns whether there was
/// anything to move (a missing or empty seed session moves nothing).
async fn copy(seed: &Session, session: &Session) -> tessera_engine::Result<bool> {
    let names = seed.keys().await?;
    for name in &names {
        if let Some(value) = seed.get::<JsValue>(name).await? {
            session.insert(name.as_str(), &value).await?;
        }
    }
    Ok(!names.is_empty())
}

/// Deletes the seed session once its data is stored natively.
async fn retire(seed: &SessionEngine, old: SessionId) -> tessera_engine::Result<()> {
    let seed = seed.session(Some(old));
    seed.destroy().await?;
    seed.commit().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use tessera_engine::{store::MemoryStringStore, MemoryStore, SessionConfig};

    use super::*;
    use crate::koa::KoaCompat;

    fn setup() -> (Arc<MemoryStringStore>, Upgrade, SessionEngine) {
        let strings = Arc::new(MemoryStringStore::new());
        let compat = KoaCompat::new(["a seed key that is long enough"])
            .unwrap()
            .with_key_schema("s");
        let upgrade = Upgrade {
            engine: compat.upgrade_engine(strings.clone()).unwrap(),
            cookies: compat.cookies(),
            strings: strings.clone(),
            forward: DEFAULT_FORWARD,
            seed_form: None,
        };
        let native = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
        (strings, upgrade, native)
    }

    async fn seed(strings: &MemoryStringStore, upgrade: &Upgrade, doc: String) -> SessionId {
        let sid = SessionId::from_foreign("mx5kckqa0ohc9584335n0001").unwrap();
        let key = upgrade.engine.key(&sid);
        let ttl = Duration::from_secs(60);
        assert!(strings.set_new(&key, doc.into(), ttl).await.unwrap());
        sid
    }

    #[tokio::test]
    async fn a_claim_left_by_a_request_that_died_lapses_and_the_next_request_moves() {
        let (strings, upgrade, native) = setup();
        let sid = seed(&strings, &upgrade, r#"{"views":2}"#.to_owned()).await;
        let claim = format!("{}:upgrade", upgrade.engine.key(&sid));
        let lease = Duration::from_millis(300);
        strings
            .set_new(&claim, Bytes::from_static(CLAIMED), lease)
            .await
            .unwrap();
        let started = Instant::now();
        let policy = FailurePolicy::FailClosed;
        let resolved = upgrade.resolve(sid, &native, policy).await.unwrap();
        assert!(started.elapsed() >= lease - Duration::from_millis(50));
        let Resolved::Native {
            session,
            id,
            joined: false,
        } = resolved
        else {
            panic!("moved by this request: {resolved:?}")
        };
        assert_eq!(session.get::<u64>("views").await.unwrap(), Some(2));
        assert!(
            strings
                .get(&upgrade.engine.key(&sid))
                .await
                .unwrap()
                .is_none(),
            "the seed key is retired"
        );
        // Within the forward window the old pair joins the moved session.
        match upgrade.resolve(sid, &native, policy).await.unwrap() {
            Resolved::Native {
                id: joined,
                joined: true,
                ..
            } => assert_eq!(joined, id),
            other => panic!("joined: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_seed_session_over_the_native_limits_is_kept_and_not_retried_meanwhile() {
        let (strings, upgrade, native) = setup();
        let big = "x".repeat(70_000);
        let sid = seed(&strings, &upgrade, format!(r#"{{"cart":"{big}"}}"#)).await;
        let policy = FailurePolicy::FailClosed;
        for _ in 0..2 {
            let resolved = upgrade.resolve(sid, &native, policy).await.unwrap();
            let Resolved::Kept(session) = resolved else {
                panic!("kept: {resolved:?}")
            };
            let cart = session.get::<String>("cart").await.unwrap();
            assert_eq!(cart.map(|c| c.len()), Some(70_000));
        }
        let claim = format!("{}:upgrade", upgrade.engine.key(&sid));
        assert_eq!(strings.get(&claim).await.unwrap().as_deref(), Some(KEPT));
    }

    #[test]
    fn claims_parse_and_unknown_values_keep_the_seed() {
        let id = SessionId::generate();
        assert_eq!(Claim::parse(b"claimed"), Claim::Claimed);
        assert_eq!(
            Claim::parse(format!("moved:{id}").as_bytes()),
            Claim::Moved(id)
        );
        assert_eq!(Claim::parse(b"kept"), Claim::Kept);
        for other in [&b"moved:"[..], b"moved:nonsense", b"", b"\xff"] {
            assert_eq!(Claim::parse(other), Claim::Kept, "{other:?}");
        }
    }
}
