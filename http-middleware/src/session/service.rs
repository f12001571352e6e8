use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tessera_engine::{CookieAction, ErrorKind, Session, SessionId};
use tower_service::Service;

use super::{
    cookies::{clear_headers, clear_old_pair, read_cookies, set_headers, CookieRead},
    layer::{open_session, FailurePolicy, Settings},
};
use crate::koa::{CookieMode, Resolved};

/// The service built by [`SessionLayer`](super::SessionLayer).
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> SessionService<S> {
    pub(crate) fn new(inner: S, settings: Arc<Settings>) -> Self {
        SessionService { inner, settings }
    }
}

/// The response future of [`SessionService`]: the inner call, then the commit.
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let settings = self.settings.clone();
        let read = read_cookies(&settings, req.headers());
        // The clone that was driven to readiness serves this call; keep a fresh one for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let own_work = started.elapsed();
        Box::pin(async move {
            let opened = match open(settings, read).await {
                Ok(opened) => opened,
                Err(response) => return Ok(response),
            };
            req.extensions_mut().insert(opened.session.clone());
            let mut response = inner.call(req).await?;
            let settings = &opened.settings;
            honour_retry_after(settings, &mut response);
            let commit_started = Instant::now();
            let response = finish(&opened, response).await;
            settings
                .metrics
                .middleware_duration(own_work + commit_started.elapsed());
            Ok(response)
        })
    }
}

/// A request's session, and what its commit needs to know about how it was found.
struct Opened {
    /// The layer's settings, or upgrade mode's for a session served in the seed's form.
    settings: Arc<Settings>,
    session: Session,
    read: CookieRead,
    /// Upgrade mode: the request carried the seed's pair, to clear; `Some(id)` when its session
    /// lives natively under `id` now.
    moved: Option<Option<SessionId>>,
}

/// Finds the request's session: the one its cookie names or, in upgrade mode, the seed session
/// its pair names, moved to the native layout or kept. Fails with the response to send when
/// that session cannot be read.
async fn open<B: Default>(
    settings: Arc<Settings>,
    read: CookieRead,
) -> Result<Opened, Response<B>> {
    let (Some(old), Some(upgrade)) = (read.upgrade_from, settings.upgrade.clone()) else {
        let id = read.verified.map(|v| v.id);
        let session = open_session(&settings.engine, id, settings.policy);
        return Ok(Opened {
            settings,
            session,
            read,
            moved: None,
        });
    };
    let resolved = match upgrade
        .resolve(old.id, &settings.engine, settings.policy)
        .await
    {
        Ok(resolved) => resolved,
        // Under either policy: serving on without the seed's data could hand out a native
        // cookie over the old one and lose the session.
        Err(err) => {
            tracing::warn!(error = %err, "could not read a session to upgrade");
            settings.metrics.request("store_error");
            let retry = Some(settings.retry_after);
            return Err(error_response(StatusCode::SERVICE_UNAVAILABLE, retry));
        }
    };
    settings.metrics.upgrade(resolved.outcome());
    let (session, moved) = match resolved {
        Resolved::Empty(session) => (session, None),
        Resolved::Native { session, id, .. } => (session, Some(id)),
        Resolved::Kept(session) => {
            let seed_form = upgrade.seed_form.clone().unwrap_or(settings);
            return Ok(Opened {
                settings: seed_form,
                session,
                read: CookieRead {
                    verified: Some(old),
                    ..CookieRead::default()
                },
                moved: None,
            });
        }
    };
    Ok(Opened {
        settings,
        session,
        read,
        moved: Some(moved),
    })
}

async fn finish<B: Default>(opened: &Opened, mut response: Response<B>) -> Response<B> {
    let Opened {
        settings,
        session,
        read,
        moved,
    } = opened;
    let verified = read.verified;
    // A moved session's cookie, or one re-issued under the new key, needs the session's real
    // expiry (and whether it exists).
    let reissue = match moved {
        Some(Some(id)) => Some(*id),
        _ => verified.filter(|v| v.stale_key).map(|v| v.id),
    };
    if reissue.is_some() {
        let _ = session.is_new().await;
    }
    // Asked before the commit: whatever the commit does, a destroy must reach the browser.
    let destroyed = session.is_destroyed().await;
    match session.commit().await {
        Ok(committed) => {
            let set_cookie = match committed.cookie {
                CookieAction::Set {
                    id,
                    expires,
                    lifetime,
                } => Some(set_headers(settings, &id, expires, lifetime)),
                CookieAction::Clear => Some(clear_headers(settings)),
                _ if destroyed => Some(clear_headers(settings)),
                // A moved session's cookie is set; one signed by an older key is re-issued
                // under the current one.
                CookieAction::Keep => reissue
                    .zip(committed.expires)
                    .map(|(id, expires)| set_headers(settings, &id, expires, committed.lifetime)),
                _ => None,
            };
            let set_cookie = set_cookie.transpose().and_then(|headers| {
                let mut headers = headers.unwrap_or_default();
                if let (true, true, CookieMode::KoaPair(koa)) =
                    (read.bad_koa_sig, headers.is_empty(), &settings.cookie_mode)
                {
                    headers.push(koa.clear_sig()?);
                }
                Ok(headers)
            });
            match set_cookie {
                Ok(headers) => {
                    for value in headers {
                        response.headers_mut().append(header::SET_COOKIE, value);
                    }
                    if let (Some(upgrade), Some(_)) = (&settings.upgrade, moved) {
                        for value in clear_old_pair(settings, upgrade) {
                            response.headers_mut().append(header::SET_COOKIE, value);
                        }
                    }
                    settings.metrics.request("ok");
                    response
                }
                Err(err) => {
                    // Unreachable with validated options; never a success without its cookie.
                    tracing::error!(error = %err, "could not build the Set-Cookie header");
                    settings.metrics.request("failed");
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, None)
                }
            }
        }
        Err(err) => {
            let plan = plan_failure(settings.policy, destroyed, err.kind());
            settings.metrics.request(plan.outcome);
            let Some(status) = plan.status else {
                tracing::warn!(error = %err, "session store failed; serving without a session");
                return response;
            };
            if err.is_too_large() {
                tracing::warn!(error = %err, "session over its size limit; not saved");
            } else {
                tracing::warn!(error = %err, %status, destroyed, "session commit failed");
            }
            let retry_after =
                (status == StatusCode::SERVICE_UNAVAILABLE).then_some(settings.retry_after);
            let mut response = error_response(status, retry_after);
            if plan.clear_cookie {
                for value in clear_headers(settings).unwrap_or_default() {
                    response.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            response
        }
    }
}

/// How a failed commit is answered, decided from the policy, whether the request destroyed its
/// session and the error's kind alone (no I/O), so every combination is unit-tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FailurePlan {
    /// The status that replaces the handler's response; `None` serves the handler's response.
    status: Option<StatusCode>,
    /// Whether to send the clearing Set-Cookie.
    clear_cookie: bool,
    /// The `outcome` label of the request counter.
    outcome: &'static str,
}

fn plan_failure(policy: FailurePolicy, destroyed: bool, kind: ErrorKind) -> FailurePlan {
    let status = kind.status();
    // Fail-open stands in an empty session for an unavailable store. A destroy that did not
    // happen is not such a case: serving the handler's "logged out" would be a lie.
    if kind.is_unavailable() && policy == FailurePolicy::FailOpen && !destroyed {
        return FailurePlan {
            status: None,
            clear_cookie: false,
            outcome: "fail_open",
        };
    }
    let outcome = match status {
        StatusCode::SERVICE_UNAVAILABLE => "store_error",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        _ => "failed",
    };
    FailurePlan {
        status: Some(status),
        // The user asked to end the session: the browser drops its cookie even when the store
        // could not delete the record (it then expires with its TTL).
        clear_cookie: destroyed,
        outcome,
    }
}

/// A handler that answered with an engine error of the "store unavailable" class (the engine's
/// `IntoResponse` marks it with its `ErrorKind`) gets the layer's `Retry-After`, not the
/// engine's fixed default.
fn honour_retry_after<B>(settings: &Settings, response: &mut Response<B>) {
    let unavailable = response
        .extensions()
        .get::<tessera_engine::ErrorKind>()
        .is_some_and(|kind| kind.is_unavailable());
    if unavailable {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(settings.retry_after.as_secs().max(1)),
        );
    }
}

fn error_response<B: Default>(status: StatusCode, retry_after: Option<Duration>) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if let Some(after) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use cookie::{Cookie, SameSite};
    use tessera_engine::{CookieLifetime, MemoryStore, SessionConfig, SessionEngine};

    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::{
        session::cookies::{build_cookie, clear_cookie, now_ms},
        SessionLayer, SigningKeys,
    };

    fn settings(layer: SessionLayer) -> Arc<Settings> {
        layer.settings
    }

    fn layer() -> crate::SessionLayerBuilder {
        let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
        let keys = SigningKeys::new(["a secret that is long enough for the tests"]).unwrap();
        SessionLayer::builder(engine, keys)
    }

    #[test]
    fn hand_formatted_cookies_parse_back_with_every_attribute() {
        let s = settings(
            layer()
                .with_domain(Some("example.com".into()))
                .with_path("/app")
                .with_same_site(SameSite::Strict)
                .build()
                .unwrap(),
        );
        let id = SessionId::generate();
        let expires_ms = now_ms() + 3_600_000;
        let header = build_cookie(
            &s,
            &id,
            UNIX_EPOCH + Duration::from_millis(expires_ms),
            CookieLifetime::Configured,
        )
        .unwrap();
        let c = Cookie::parse(header.to_str().unwrap()).unwrap();
        assert_eq!(c.name(), "koa:sess");
        assert_eq!(s.keys.verify("koa:sess", c.value()).unwrap().id, id);
        assert_eq!(c.path(), Some("/app"));
        assert_eq!(c.domain(), Some("example.com"));
        assert_eq!(c.http_only(), Some(true));
        assert_eq!(c.secure(), Some(true));
        assert_eq!(c.same_site(), Some(SameSite::Strict));
        assert_eq!(c.max_age().map(|d| d.whole_seconds()), Some(3600));
        let expires = c.expires_datetime().unwrap().unix_timestamp();
        assert_eq!(expires, (expires_ms / 1000) as i64);

        let cleared = clear_cookie(&s).unwrap();
        let c = Cookie::parse(cleared.to_str().unwrap()).unwrap();
        assert_eq!((c.name(), c.value()), ("koa:sess", ""));
        assert_eq!(c.max_age().map(|d| d.whole_seconds()), Some(0));
        assert_eq!(c.expires_datetime().unwrap().unix_timestamp(), 0);
        assert_eq!(c.path(), Some("/app"));
    }

    #[test]
    fn failure_plans() {
        use ErrorKind as K;
        use FailurePolicy::{FailClosed, FailOpen};
        let plan = |status: Option<StatusCode>, clear_cookie, outcome| FailurePlan {
            status,
            clear_cookie,
            outcome,
        };
        let unavailable = Some(StatusCode::SERVICE_UNAVAILABLE);
        for kind in [K::Redis, K::Timeout, K::LoadFailed, K::NotDurable] {
            let closed = plan(unavailable, false, "store_error");
            assert_eq!(plan_failure(FailClosed, false, kind), closed, "{kind:?}");
            let open = plan(None, false, "fail_open");
            assert_eq!(plan_failure(FailOpen, false, kind), open, "{kind:?}");
            // A failed destroy is a 503 that clears the cookie, whatever the policy.
            for policy in [FailClosed, FailOpen] {
                let destroyed = plan(unavailable, true, "store_error");
                assert_eq!(plan_failure(policy, true, kind), destroyed, "{kind:?}");
            }
        }
        for policy in [FailClosed, FailOpen] {
            for destroyed in [false, true] {
                let too_large = plan(Some(StatusCode::PAYLOAD_TOO_LARGE), destroyed, "too_large");
                assert_eq!(plan_failure(policy, destroyed, K::TooLarge), too_large);
                for kind in [K::InvalidField, K::InvalidId] {
                    let bad = plan(Some(StatusCode::BAD_REQUEST), destroyed, "failed");
                    assert_eq!(plan_failure(policy, destroyed, kind), bad, "{kind:?}");
                }
                for kind in [K::Decode, K::Encode, K::Config, K::IdCollision] {
                    let internal =
                        plan(Some(StatusCode::INTERNAL_SERVER_ERROR), destroyed, "failed");
                    assert_eq!(plan_failure(policy, destroyed, kind), internal, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn far_future_expiries_are_clamped_not_a_panic() {
        let s = settings(layer().build().unwrap());
        let year_9999 = UNIX_EPOCH + Duration::from_secs(253_370_764_800);
        let year_10000 = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        for expires in [
            UNIX_EPOCH + Duration::from_secs(300_000_000_000),
            year_9999,
            year_10000,
        ] {
            let header = build_cookie(
                &s,
                &SessionId::generate(),
                expires,
                CookieLifetime::Configured,
            )
            .unwrap();
            let c = Cookie::parse(header.to_str().unwrap()).unwrap();
            let max_age = c.max_age().unwrap().whole_seconds();
            let limit = tessera_engine::MAX_TTL.as_secs() as i64;
            assert!((limit - 5..=limit).contains(&max_age), "{max_age}");
            let at = c.expires_datetime().unwrap().unix_timestamp();
            let now = now_ms() as i64 / 1000;
            assert!((now + limit - 5..=now + limit + 1).contains(&at), "{at}");
        }
        // Before the epoch (a broken clock): an already expired cookie, no panic either.
        let header = build_cookie(
            &s,
            &SessionId::generate(),
            UNIX_EPOCH - Duration::from_secs(1),
            CookieLifetime::Configured,
        )
        .unwrap();
        let c = Cookie::parse(header.to_str().unwrap()).unwrap();
        assert_eq!(c.max_age().unwrap().whole_seconds(), 0);
    }

    #[test]
    fn browser_session_cookies_have_no_lifetime() {
        let s = settings(
            layer()
                .with_persistent_cookie(false)
                .with_secure(false)
                .with_http_only(false)
                .build()
                .unwrap(),
        );
        let header = build_cookie(
            &s,
            &SessionId::generate(),
            SystemTime::now() + Duration::from_secs(1),
            CookieLifetime::Configured,
        )
        .unwrap();
        let c = Cookie::parse(header.to_str().unwrap()).unwrap();
        assert_eq!((c.max_age(), c.expires()), (None, None));
        assert_eq!((c.secure(), c.http_only()), (None, None));
        assert_eq!(c.path(), Some("/"));
    }

    /// A session's own expiry rule decides over the layer's setting, both ways.
    #[test]
    fn a_sessions_lifetime_overrides_the_layer() {
        let expires = SystemTime::now() + Duration::from_secs(600);
        for (persistent_layer, lifetime, max_age) in [
            (false, CookieLifetime::Persistent, Some(600)),
            (true, CookieLifetime::BrowserSession, None),
            (true, CookieLifetime::Configured, Some(600)),
            (false, CookieLifetime::Configured, None),
        ] {
            let s = settings(
                layer()
                    .with_persistent_cookie(persistent_layer)
                    .build()
                    .unwrap(),
            );
            let header = build_cookie(&s, &SessionId::generate(), expires, lifetime).unwrap();
            let c = Cookie::parse(header.to_str().unwrap()).unwrap();
            assert_eq!(
                c.max_age().map(|d| d.whole_seconds()),
                max_age,
                "{persistent_layer} {lifetime:?}"
            );
            assert_eq!(c.expires().is_some(), max_age.is_some());
        }
    }
}
