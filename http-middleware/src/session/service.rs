use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cookie::{time::OffsetDateTime, Cookie};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use tessera_engine::{CookieAction, Session, SessionId};
use tower_service::Service;

use super::layer::{FailurePolicy, Settings};
use crate::{
    metrics,
    signing::{find_session_cookie, Verified},
};

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
        let verified = read_cookie(&settings, req.headers());
        let session = match settings.policy {
            FailurePolicy::FailClosed => settings.engine.session(verified.map(|v| v.id)),
            FailurePolicy::FailOpen => settings.engine.session_fail_open(verified.map(|v| v.id)),
        };
        req.extensions_mut().insert(session.clone());
        // The clone that was driven to readiness serves this call; keep a fresh one for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let own_work = started.elapsed();
        Box::pin(async move {
            let response = inner.call(req).await?;
            let commit_started = Instant::now();
            let response = finish(&settings, &session, verified, response).await;
            metrics::middleware_duration(own_work + commit_started.elapsed());
            Ok(response)
        })
    }
}

/// Finds and verifies the session cookie. Bad values are counted and ignored: the request gets a
/// fresh session and the store is never asked about them.
fn read_cookie(settings: &Settings, headers: &HeaderMap) -> Option<Verified> {
    match find_session_cookie(&settings.keys, &settings.cookie_name, headers) {
        Ok(found) => found,
        Err(r) => {
            metrics::rejected_cookie(r);
            tracing::debug!(reason = r.as_str(), "ignored an invalid session cookie");
            None
        }
    }
}

async fn finish<B: Default>(
    settings: &Settings,
    session: &Session,
    verified: Option<Verified>,
    mut response: Response<B>,
) -> Response<B> {
    if verified.is_some_and(|v| v.stale_key) {
        // Re-issuing under the new key needs the session's real expiry (and whether it exists).
        let _ = session.is_new().await;
    }
    match session.commit().await {
        Ok(committed) => {
            let set_cookie = match committed.cookie {
                CookieAction::Set { id, expires_ms } => {
                    Some(build_cookie(settings, &id, expires_ms))
                }
                CookieAction::Clear => Some(clear_cookie(settings)),
                // A cookie signed by an older key is re-issued under the current one.
                CookieAction::Keep => verified
                    .filter(|v| v.stale_key)
                    .zip(committed.expires_ms)
                    .map(|(v, expires_ms)| build_cookie(settings, &v.id, expires_ms)),
                _ => None,
            };
            if let Some(value) = set_cookie {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            metrics::request("ok");
            response
        }
        Err(err) if err.is_too_large() => {
            tracing::warn!(error = %err, "session over its size limit; not saved");
            metrics::request("too_large");
            error_response(StatusCode::PAYLOAD_TOO_LARGE, None)
        }
        Err(err) => match settings.policy {
            FailurePolicy::FailClosed => {
                tracing::warn!(error = %err, "session store failed; answering 503");
                metrics::request("store_error");
                error_response(StatusCode::SERVICE_UNAVAILABLE, Some(settings.retry_after))
            }
            FailurePolicy::FailOpen => {
                tracing::warn!(error = %err, "session store failed; serving without a session");
                metrics::request("fail_open");
                response
            }
        },
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn base_cookie<'a>(settings: &'a Settings, value: String) -> cookie::CookieBuilder<'a> {
    let mut builder = Cookie::build((settings.cookie_name.as_str(), value))
        .path(settings.path.as_str())
        .http_only(settings.http_only)
        .same_site(settings.same_site)
        .secure(settings.secure);
    if let Some(domain) = &settings.domain {
        builder = builder.domain(domain.as_str());
    }
    builder
}

fn to_header(cookie: &Cookie<'_>) -> HeaderValue {
    HeaderValue::try_from(cookie.to_string())
        .expect("cookie names are validated and values are base64url")
}

fn build_cookie(settings: &Settings, id: &SessionId, expires_ms: u64) -> HeaderValue {
    let mut builder = base_cookie(settings, settings.keys.sign(&settings.cookie_name, id));
    if settings.persistent {
        // Rounded: a few milliseconds spent since the commit must not show as a second less.
        let secs = (expires_ms.saturating_sub(now_ms()) + 500) / 1000;
        builder = builder.max_age(cookie::time::Duration::seconds(secs as i64));
        if let Ok(at) = OffsetDateTime::from_unix_timestamp((expires_ms / 1000) as i64) {
            builder = builder.expires(at);
        }
    }
    to_header(&builder.build())
}

fn clear_cookie(settings: &Settings) -> HeaderValue {
    let builder = base_cookie(settings, String::new())
        .max_age(cookie::time::Duration::ZERO)
        .expires(OffsetDateTime::UNIX_EPOCH);
    to_header(&builder.build())
}
