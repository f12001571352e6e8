//! Per-session expiry: the rule one session may carry instead of the configured idle TTL, how it
//! is checked, stored in the meta field, and turned into the store TTL and the cookie's lifetime.

use std::time::{Duration, SystemTime};

use crate::time::{epoch_ms, from_epoch_ms, ms};
use crate::{
    config::{SessionConfig, MAX_TTL},
    error::{Error, ErrorKind, Result},
    record::StoredExpiry,
};

/// How long one session lives, when it should not follow the configured idle TTL; set with
/// [`Session::set_expiry`](crate::Session::set_expiry), stored with the session, so every later
/// renewal follows it. An absolute lifetime, when configured, caps every rule.
///
/// ```
/// use std::time::Duration;
/// use tessera_engine::Expiry;
///
/// // "Remember me": thirty days without a visit, in a cookie that outlives the browser.
/// let remember = Expiry::OnInactivity(Duration::from_secs(30 * 24 * 3600));
/// // A shared computer: the cookie ends with the browser session.
/// let kiosk = Expiry::OnSessionEnd;
/// # let _ = (remember, kiosk);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Expires after this long without a request (renewed as the configured idle TTL is),
    /// with a persistent cookie whatever the layer's cookie setting.
    OnInactivity(Duration),
    /// The cookie carries no `Max-Age` or `Expires`, so it ends with the browser session; the
    /// store expires the session after the configured idle TTL without a request.
    OnSessionEnd,
    /// Ends at this instant whatever the activity (no renewal moves it), with a persistent
    /// cookie that expires then.
    AtDateTime(SystemTime),
}

/// What the cookie naming a session should be, as its expiry rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CookieLifetime {
    /// As the HTTP layer is configured (persistent or not).
    #[default]
    Configured,
    /// Persistent: `Max-Age` and `Expires` follow the stored session.
    Persistent,
    /// A browser-session cookie: no `Max-Age`, no `Expires`.
    BrowserSession,
}

impl Expiry {
    /// The stored form, once the rule is checked against `now`.
    pub(crate) fn checked(self, now: SystemTime) -> Result<StoredExpiry> {
        let invalid = |message: String| Err(Error::new(ErrorKind::Config, message));
        match self {
            Expiry::OnSessionEnd => Ok(StoredExpiry::BrowserSession),
            Expiry::OnInactivity(idle) if idle < Duration::from_secs(1) => invalid(format!(
                "a session's idle TTL must be at least one second (got {idle:?})"
            )),
            Expiry::OnInactivity(idle) if idle > MAX_TTL => invalid(format!(
                "a session's idle TTL may not exceed {MAX_TTL:?} (got {idle:?})"
            )),
            Expiry::OnInactivity(idle) => Ok(StoredExpiry::Idle(idle.as_millis() as u64)),
            Expiry::AtDateTime(at) if at <= now => invalid(
                "a session's deadline must lie in the future; to end it now, destroy it".into(),
            ),
            Expiry::AtDateTime(at) if at > now + MAX_TTL => invalid(format!(
                "a session's deadline may lie at most {MAX_TTL:?} ahead"
            )),
            Expiry::AtDateTime(at) => Ok(StoredExpiry::At(epoch_ms(at))),
        }
    }

    pub(crate) fn from_stored(stored: StoredExpiry) -> Self {
        match stored {
            StoredExpiry::Idle(ms) => Expiry::OnInactivity(Duration::from_millis(ms)),
            StoredExpiry::BrowserSession => Expiry::OnSessionEnd,
            StoredExpiry::At(ms) => Expiry::AtDateTime(from_epoch_ms(ms)),
        }
    }
}

/// The idle TTL that applies to a session with `rule`.
pub(crate) fn idle_ttl(config: &SessionConfig, rule: Option<StoredExpiry>) -> Duration {
    match rule {
        Some(StoredExpiry::Idle(ms)) => Duration::from_millis(ms),
        _ => config.idle_ttl,
    }
}

/// The expiry to write now for a session with `rule` and absolute `deadline`: a full idle TTL
/// (or the rule's fixed instant), capped by the deadline.
pub(crate) fn expiry(
    config: &SessionConfig,
    now_ms: u64,
    deadline: Option<u64>,
    rule: Option<StoredExpiry>,
) -> u64 {
    let until = match rule {
        Some(StoredExpiry::At(at)) => at,
        _ => now_ms.saturating_add(ms(idle_ttl(config, rule))),
    };
    deadline.map_or(until, |d| until.min(d))
}

/// The cookie a session with `rule` gets.
pub(crate) fn cookie_lifetime(rule: Option<StoredExpiry>) -> CookieLifetime {
    match rule {
        None => CookieLifetime::Configured,
        Some(StoredExpiry::BrowserSession) => CookieLifetime::BrowserSession,
        Some(StoredExpiry::Idle(_) | StoredExpiry::At(_)) => CookieLifetime::Persistent,
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            plan::{plan, Plan, PlannedCookie, Step, WriteOp},
            state::{Lifecycle, OnLoadError, State, Stored},
        },
        *,
    };
    use crate::{
        id::SessionId,
        record::{Meta, FORMAT_VERSION},
    };

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const HOUR: u64 = 3_600_000;
    /// A fixed "now": 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600_000;

    /// A loaded session expiring at `expires_ms` with the stored `rule`, whose handle now
    /// wants `wanted`.
    fn loaded(expires_ms: u64, rule: Option<StoredExpiry>, wanted: Option<StoredExpiry>) -> State {
        let mut s = State::new(Some(SessionId::from_bytes([7; 16])), OnLoadError::Fail);
        s.life = Lifecycle::Loaded(Stored {
            id: SessionId::from_bytes([7; 16]),
            key: "k:{old}".into(),
            meta: Meta {
                version: FORMAT_VERSION,
                created_ms: NOW - HOUR,
                deadline_ms: None,
                expires_ms,
                expiry: rule,
            },
            bound: None,
        });
        s.expiry = wanted;
        s
    }

    /// The single update a plan makes: its renewal and the cookie.
    fn update(plan: Plan) -> (Option<(Meta, Duration)>, WriteOp, PlannedCookie) {
        match plan {
            Plan::Run { steps, cookie } => match &steps[..] {
                [Step::Update { renewal, op, .. }] => (*renewal, *op, cookie),
                other => panic!("{other:?}"),
            },
            Plan::Refuse { error, .. } => panic!("unexpected refusal: {error}"),
        }
    }

    fn cookie(expires_ms: u64, lifetime: CookieLifetime) -> PlannedCookie {
        PlannedCookie::Set {
            expires: from_epoch_ms(expires_ms),
            lifetime,
        }
    }

    #[test]
    fn a_remember_me_session_renews_by_its_own_idle_ttl() {
        let rule = Some(StoredExpiry::Idle(10 * HOUR));
        // Two of its ten hours left: due (the default renews below half); the configured
        // hour would not have renewed it at all.
        let s = loaded(NOW + 2 * HOUR, rule, rule);
        let config = SessionConfig::default();
        let (renewal, op, set) = update(plan(&s, &config, from_epoch_ms(NOW)));
        let (meta, ttl) = renewal.expect("renewed");
        assert_eq!((meta.expires_ms, meta.expiry), (NOW + 10 * HOUR, rule));
        assert_eq!(ttl, Duration::from_millis(10 * HOUR));
        assert_eq!(op, WriteOp::Touch);
        assert_eq!(set, cookie(NOW + 10 * HOUR, CookieLifetime::Persistent));
        // Six hours left: not due yet, nothing written.
        let s = loaded(NOW + 6 * HOUR, rule, rule);
        assert!(matches!(
            plan(&s, &config, from_epoch_ms(NOW)),
            Plan::Run { steps, cookie: PlannedCookie::Keep } if steps.is_empty()
        ));
    }

    #[test]
    fn a_new_rule_is_written_at_once_even_when_it_ends_the_session_sooner() {
        let config = SessionConfig::default();
        let rule = Some(StoredExpiry::At(NOW + HOUR / 4));
        let s = loaded(NOW + HOUR, None, rule);
        let (renewal, op, set) = update(plan(&s, &config, from_epoch_ms(NOW)));
        let (meta, ttl) = renewal.expect("the rule is written");
        assert_eq!((meta.expires_ms, meta.expiry), (NOW + HOUR / 4, rule));
        assert_eq!(ttl, Duration::from_millis(HOUR / 4));
        assert_eq!(op, WriteOp::Touch);
        assert_eq!(set, cookie(NOW + HOUR / 4, CookieLifetime::Persistent));
        // And back to the configuration: a full configured TTL, the layer's cookie.
        let s = loaded(NOW + HOUR / 4, rule, None);
        let (renewal, _, set) = update(plan(&s, &config, from_epoch_ms(NOW)));
        assert_eq!(renewal.map(|(m, _)| m.expiry), Some(None));
        assert_eq!(set, cookie(NOW + HOUR, CookieLifetime::Configured));
    }

    #[test]
    fn a_fixed_deadline_is_never_moved_by_activity() {
        let config = SessionConfig::default().with_renew_below(0.0);
        let rule = Some(StoredExpiry::At(NOW + HOUR / 10));
        let mut s = loaded(NOW + HOUR / 10, rule, rule);
        s.remember("a");
        s.data
            .insert("a".into(), bytes::Bytes::from_static(b"\x01"));
        let (renewal, op, set) = update(plan(&s, &config, from_epoch_ms(NOW)));
        assert_eq!(
            (renewal, op, set),
            (None, WriteOp::Update, PlannedCookie::Keep)
        );
    }

    #[test]
    fn a_browser_session_rule_creates_with_the_configured_ttl_and_a_session_cookie() {
        let config = SessionConfig::default();
        let mut s = State::new(None, OnLoadError::Fail);
        s.life = Lifecycle::Fresh {
            id: None,
            stale_cookie: false,
        };
        s.expiry = Some(StoredExpiry::BrowserSession);
        s.data
            .insert("a".into(), bytes::Bytes::from_static(b"\x01"));
        let Plan::Run { steps, cookie: set } = plan(&s, &config, from_epoch_ms(NOW)) else {
            panic!("refused")
        };
        let [Step::Create { meta, ttl, .. }] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(meta.expiry, Some(StoredExpiry::BrowserSession));
        assert_eq!(*ttl, Duration::from_millis(HOUR));
        assert_eq!(set, cookie(NOW + HOUR, CookieLifetime::BrowserSession));
    }

    #[test]
    fn a_regenerated_session_keeps_its_rule() {
        let config = SessionConfig::default();
        let rule = Some(StoredExpiry::Idle(10 * HOUR));
        let mut s = loaded(NOW + 9 * HOUR, rule, rule);
        s.regenerate();
        let Plan::Run { steps, cookie: set } = plan(&s, &config, from_epoch_ms(NOW)) else {
            panic!("refused")
        };
        let [Step::Regenerate { meta, ttl, .. }] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(
            (meta.expiry, *ttl),
            (rule, Duration::from_millis(10 * HOUR))
        );
        assert_eq!(set, cookie(NOW + 10 * HOUR, CookieLifetime::Persistent));
    }

    #[test]
    fn rules_out_of_range_are_clear_errors() {
        let now = SystemTime::now();
        for bad in [
            Expiry::OnInactivity(Duration::ZERO),
            Expiry::OnInactivity(Duration::from_millis(999)),
            Expiry::OnInactivity(MAX_TTL + Duration::from_secs(1)),
            Expiry::AtDateTime(now),
            Expiry::AtDateTime(now - DAY),
            Expiry::AtDateTime(now + MAX_TTL + DAY),
        ] {
            let err = bad.checked(now).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}: {err}");
        }
        assert_eq!(
            Expiry::OnInactivity(DAY).checked(now).unwrap(),
            StoredExpiry::Idle(86_400_000)
        );
    }

    #[test]
    fn stored_rules_read_back_as_set() {
        let now = SystemTime::now();
        let at = from_epoch_ms(epoch_ms(now + DAY));
        for rule in [
            Expiry::OnInactivity(DAY),
            Expiry::OnSessionEnd,
            Expiry::AtDateTime(at),
        ] {
            assert_eq!(Expiry::from_stored(rule.checked(now).unwrap()), rule);
        }
    }

    #[test]
    fn a_fixed_instant_and_an_idle_rule_are_capped_by_the_deadline() {
        let config = SessionConfig::default();
        let now = 1_000_000;
        let deadline = Some(now + 5_000);
        assert_eq!(
            expiry(&config, now, deadline, Some(StoredExpiry::At(now + 9_000))),
            now + 5_000
        );
        assert_eq!(
            expiry(&config, now, None, Some(StoredExpiry::At(now + 9_000))),
            now + 9_000
        );
        assert_eq!(
            expiry(&config, now, deadline, Some(StoredExpiry::Idle(60_000))),
            now + 5_000
        );
        assert_eq!(
            expiry(&config, now, None, Some(StoredExpiry::Idle(60_000))),
            now + 60_000
        );
    }

    mod handle {
        use super::*;
        use crate::{
            store::MemoryStringStore, CookieAction, KeySchema, KoaJsonStore, MemoryStore,
            SessionEngine,
        };

        fn engine() -> (MemoryStore, SessionEngine) {
            let store = MemoryStore::new();
            let config = SessionConfig::default().with_hash_ids_at_rest(false);
            let engine = SessionEngine::new(store.clone(), config).unwrap();
            (store, engine)
        }

        #[tokio::test]
        async fn a_rule_is_stored_with_the_session_and_read_back_by_later_requests() {
            let (store, engine) = engine();
            let s = engine.session(None);
            s.insert("user", "ada").await.unwrap();
            s.set_expiry(Some(Expiry::OnInactivity(DAY))).await.unwrap();
            let committed = s.commit().await.unwrap();
            let CookieAction::Set { id, lifetime, .. } = committed.cookie else {
                panic!("{committed:?}")
            };
            assert_eq!(lifetime, CookieLifetime::Persistent);
            let ttl = store.ttl(&engine.key(&id)).unwrap();
            assert!(ttl > DAY - Duration::from_secs(5) && ttl <= DAY, "{ttl:?}");

            // A later request sees the rule; its unchanged read writes nothing.
            let later = engine.session(Some(id));
            assert_eq!(
                later.expiry().await.unwrap(),
                Some(Expiry::OnInactivity(DAY))
            );
            assert_eq!(later.commit().await.unwrap().writes, 0);

            // Back to the configuration: one write, the configured hour.
            let later = engine.session(Some(id));
            later.set_expiry(None).await.unwrap();
            let committed = later.commit().await.unwrap();
            assert_eq!(committed.writes, 1);
            assert_eq!(committed.lifetime, CookieLifetime::Configured);
            let ttl = store.ttl(&engine.key(&id)).unwrap();
            assert!(ttl <= Duration::from_secs(3600), "{ttl:?}");
        }

        #[tokio::test]
        async fn a_destroy_forgets_the_rule() {
            let (_, engine) = engine();
            let s = engine.session(None);
            s.insert("user", "ada").await.unwrap();
            s.set_expiry(Some(Expiry::OnSessionEnd)).await.unwrap();
            s.destroy().await.unwrap();
            assert_eq!(s.expiry().await.unwrap(), None);
            s.insert("flash", "bye").await.unwrap();
            let committed = s.commit().await.unwrap();
            assert_eq!(committed.lifetime, CookieLifetime::Configured);
        }

        #[tokio::test]
        async fn the_koa_profile_refuses_a_rule_it_could_not_store() {
            let ttl = Duration::from_secs(60);
            let strings = MemoryStringStore::new();
            let config = SessionConfig::koa_session_redis3(KeySchema::new("s").unwrap(), ttl);
            let engine =
                SessionEngine::new(KoaJsonStore::new(strings.clone(), ttl), config).unwrap();
            let s = engine.session(None);
            let err = s.set_expiry(Some(Expiry::OnSessionEnd)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
            s.set_expiry(None).await.unwrap();
        }

        #[tokio::test]
        async fn a_bad_rule_changes_nothing() {
            let (_, engine) = engine();
            let s = engine.session(None);
            s.set_expiry(Some(Expiry::OnSessionEnd)).await.unwrap();
            let past = SystemTime::now() - DAY;
            let err = s
                .set_expiry(Some(Expiry::AtDateTime(past)))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert_eq!(s.expiry().await.unwrap(), Some(Expiry::OnSessionEnd));
        }
    }
}
