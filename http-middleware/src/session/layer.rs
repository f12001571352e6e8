use std::{sync::Arc, time::Duration};

use cookie::{Cookie, SameSite};
use tessera_engine::SessionEngine;
use tower_layer::Layer;

use super::service::SessionService;
use crate::{
    error::{Error, ErrorKind},
    metrics,
    signing::SigningKeys,
};

/// What a request gets when the session store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Answer `503 Service Unavailable` with `Retry-After` (default). A failed save never turns
    /// into a success response.
    #[default]
    FailClosed,
    /// Let the request go on with an empty, unsaved session; nothing is written back. Applies
    /// to an unavailable store only (the 503 class of [`error_status`](crate::error_status)):
    /// other commit errors keep their status, and a request that destroyed its session still
    /// gets a 503 (with the clearing cookie) when the delete fails, so a failed logout never
    /// looks like a successful one.
    FailOpen,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) engine: SessionEngine,
    pub(crate) keys: SigningKeys,
    pub(crate) cookie_name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) persistent: bool,
    pub(crate) policy: FailurePolicy,
    pub(crate) retry_after: Duration,
    /// The cookie attributes after the value (`; HttpOnly; SameSite=Lax; Secure; Path=/` and
    /// Domain), rendered once per configuration rather than per response.
    pub(crate) attributes: String,
    /// Metric handles, shared by every clone of the layer.
    pub(crate) metrics: Arc<metrics::Handles>,
}

impl Settings {
    /// The fixed attributes as the `cookie` crate renders them, without the leading `name=`.
    fn render_attributes(&self) -> String {
        let mut builder = Cookie::build((self.cookie_name.as_str(), ""))
            .path(self.path.as_str())
            .http_only(self.http_only)
            .same_site(self.same_site)
            .secure(self.secure);
        if let Some(domain) = &self.domain {
            builder = builder.domain(domain.as_str());
        }
        let rendered = builder.build().to_string();
        rendered[self.cookie_name.len() + 1..].to_owned()
    }
}

/// Mounts sessions on a tower service: puts a [`Session`](tessera_engine::Session) into each
/// request's extensions and commits it after the inner service has answered.
///
/// Options are set with by-value `with_*` methods; see the crate docs for an example.
#[derive(Debug, Clone)]
pub struct SessionLayer {
    pub(crate) settings: Arc<Settings>,
}

impl SessionLayer {
    /// A layer over `engine`, signing cookies with `keys`. Defaults: cookie `koa:sess`, Path `/`,
    /// HttpOnly, SameSite=Lax, Secure, persistent (Max-Age follows the server TTL), fail closed.
    pub fn new(engine: SessionEngine, keys: SigningKeys) -> Self {
        SessionLayer {
            settings: Arc::new(Settings {
                engine,
                keys,
                cookie_name: "koa:sess".to_owned(),
                path: "/".to_owned(),
                domain: None,
                secure: true,
                http_only: true,
                same_site: SameSite::Lax,
                persistent: true,
                policy: FailurePolicy::FailClosed,
                retry_after: Duration::from_secs(1),
                metrics: Arc::default(),
                attributes: String::new(),
            }),
        }
        .edit(|_| {})
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        let settings = Arc::make_mut(&mut self.settings);
        f(settings);
        settings.attributes = settings.render_attributes();
        self
    }

    /// The cookie name (default `koa:sess`). Must be a non-empty token without `=`, `;`, `,`,
    /// spaces or control characters.
    pub fn with_cookie_name(self, name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let bad = |c: char| c.is_ascii_control() || c.is_whitespace() || "=;,\"\\".contains(c);
        if name.is_empty() || !name.is_ascii() || name.chars().any(bad) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("invalid cookie name {name:?}: use visible ASCII without = ; , or spaces"),
            ));
        }
        Ok(self.edit(|s| s.cookie_name = name))
    }

    /// The cookie's Path (default `/`).
    pub fn with_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.edit(|s| s.path = path)
    }

    /// The cookie's Domain (default none: host-only).
    pub fn with_domain(self, domain: Option<String>) -> Self {
        self.edit(|s| s.domain = domain)
    }

    /// The Secure attribute (default on). Turn it off only for plain-http development.
    pub fn with_secure(self, on: bool) -> Self {
        self.edit(|s| s.secure = on)
    }

    /// The HttpOnly attribute (default on).
    pub fn with_http_only(self, on: bool) -> Self {
        self.edit(|s| s.http_only = on)
    }

    /// The SameSite attribute (default Lax).
    pub fn with_same_site(self, same_site: SameSite) -> Self {
        self.edit(|s| s.same_site = same_site)
    }

    /// Persistent cookie with Max-Age and Expires following the server TTL (default), or a
    /// browser-session cookie without them (`false`).
    pub fn with_persistent_cookie(self, on: bool) -> Self {
        self.edit(|s| s.persistent = on)
    }

    /// What happens when the store fails (default [`FailurePolicy::FailClosed`]).
    pub fn with_failure_policy(self, policy: FailurePolicy) -> Self {
        self.edit(|s| s.policy = policy)
    }

    /// The Retry-After sent with a fail-closed 503 (default 1 s).
    pub fn with_retry_after(self, after: Duration) -> Self {
        self.edit(|s| s.retry_after = after)
    }

    /// The engine the layer uses.
    pub fn engine(&self) -> &SessionEngine {
        &self.settings.engine
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::new(inner, self.settings.clone())
    }
}
