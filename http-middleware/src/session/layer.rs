use std::{sync::Arc, time::Duration};

use cookie::{Cookie, SameSite};
use tessera_engine::SessionEngine;
use tower_layer::Layer;

use super::service::SessionService;
use crate::{
    error::{Error, ErrorKind},
    koa::{CookieMode, KoaCookies, Upgrade},
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
    /// Native cookies, or the koa-session-redis3 pair.
    pub(crate) cookie_mode: CookieMode,
    /// Upgrade mode: seed sessions to move to the native layout.
    pub(crate) upgrade: Option<Arc<Upgrade>>,
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
                cookie_mode: CookieMode::Native,
                upgrade: None,
            }),
        }
        .edit(|_| {})
    }

    pub(crate) fn with_koa_pair(self, cookies: KoaCookies) -> Self {
        self.edit(|s| s.cookie_mode = CookieMode::KoaPair(Arc::new(cookies)))
    }

    pub(crate) fn with_koa_upgrade(self, upgrade: Upgrade) -> Self {
        self.edit(|s| s.upgrade = Some(Arc::new(upgrade)))
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

    /// The cookie's Path (default `/`). Must start with `/` and hold printable ASCII without
    /// `;` (RFC 6265 `path-value`): a `;` would smuggle in attributes of its own.
    pub fn with_path(self, path: impl Into<String>) -> Result<Self, Error> {
        let path = path.into();
        let printable = |b: u8| (0x20..0x7f).contains(&b) && b != b';';
        if !path.starts_with('/') || !path.bytes().all(printable) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "invalid cookie Path {path:?}: start it with / and use printable ASCII \
                     without ; or control characters"
                ),
            ));
        }
        Ok(self.edit(|s| s.path = path))
    }

    /// The cookie's Domain (default none: host-only). Must be a host name: labels of ASCII
    /// letters, digits and `-` separated by dots, optionally with a leading dot.
    pub fn with_domain(self, domain: Option<String>) -> Result<Self, Error> {
        if let Some(domain) = &domain {
            if !is_host_name(domain) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "invalid cookie Domain {domain:?}: use a host name such as \
                         example.com or .example.com (letters, digits, - and .)"
                    ),
                ));
            }
        }
        Ok(self.edit(|s| s.domain = domain))
    }

    /// The Secure attribute (default on). Turn it off only for plain-http development.
    ///
    /// Secure and SameSite are checked as a pair by both setters, so whichever is called last
    /// refuses `SameSite=None` without Secure (browsers drop such cookies) and no layer can hold
    /// that combination at any point: to go from `None` to plain http, set SameSite first.
    pub fn with_secure(self, on: bool) -> Result<Self, Error> {
        check_same_site_pair(self.settings.same_site, on)?;
        Ok(self.edit(|s| s.secure = on))
    }

    /// The HttpOnly attribute (default on).
    pub fn with_http_only(self, on: bool) -> Self {
        self.edit(|s| s.http_only = on)
    }

    /// The SameSite attribute (default Lax). `SameSite::None` needs Secure on (see
    /// [`with_secure`](Self::with_secure)).
    pub fn with_same_site(self, same_site: SameSite) -> Result<Self, Error> {
        check_same_site_pair(same_site, self.settings.secure)?;
        Ok(self.edit(|s| s.same_site = same_site))
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

/// Browsers drop a `SameSite=None` cookie that is not Secure, which would silently log everyone
/// out; refuse it at configuration time instead.
fn check_same_site_pair(same_site: SameSite, secure: bool) -> Result<(), Error> {
    if same_site == SameSite::None && !secure {
        return Err(Error::new(
            ErrorKind::Config,
            "SameSite=None requires the Secure attribute (browsers drop such cookies): keep \
             with_secure(true), or use SameSite Lax or Strict",
        ));
    }
    Ok(())
}

/// A plausible host name for the Domain attribute: an optional leading dot, then non-empty labels
/// of ASCII letters, digits and `-`.
fn is_host_name(domain: &str) -> bool {
    let host = domain.strip_prefix('.').unwrap_or(domain);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::new(inner, self.settings.clone())
    }
}

#[cfg(test)]
mod tests {
    use tessera_engine::{MemoryStore, SessionConfig};

    use super::*;

    fn layer() -> SessionLayer {
        let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default());
        SessionLayer::new(engine, SigningKeys::random())
    }

    #[test]
    fn paths_are_validated() {
        for good in ["/", "/app", "/a b/c-d_e.f~%20"] {
            assert!(layer().with_path(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "app",
            "/a;Domain=evil.example",
            "/a\nb",
            "/a\rb",
            "/\0",
            "/caf\u{e9}",
        ] {
            let err = layer().with_path(bad).unwrap_err();
            assert!(err.is_config(), "{bad:?}");
            assert!(err.to_string().contains("cookie Path"), "{err}");
        }
    }

    #[test]
    fn domains_are_validated() {
        for good in [
            "example.com",
            ".example.com",
            "a-b.example",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(layer().with_domain(Some(good.into())).is_ok(), "{good:?}");
        }
        assert!(layer().with_domain(None).is_ok());
        for bad in [
            "",
            ".",
            "example..com",
            "example.com.",
            "evil.example; Secure",
            "a\nb",
            "exa mple.com",
            "ex_ample.com",
            "b\u{fc}cher.de",
        ] {
            let err = layer().with_domain(Some(bad.into())).unwrap_err();
            assert!(err.is_config(), "{bad:?}");
            assert!(err.to_string().contains("cookie Domain"), "{err}");
        }
    }

    #[test]
    fn same_site_none_needs_secure_whichever_is_set_last() {
        assert!(
            layer().with_same_site(SameSite::None).is_ok(),
            "Secure is on by default"
        );
        let insecure = layer().with_secure(false).unwrap();
        let err = insecure.clone().with_same_site(SameSite::None).unwrap_err();
        assert!(
            err.is_config() && err.to_string().contains("SameSite=None"),
            "{err}"
        );
        assert!(insecure.with_same_site(SameSite::Strict).is_ok());
        let none = layer().with_same_site(SameSite::None).unwrap();
        let err = none.clone().with_secure(false).unwrap_err();
        assert!(
            err.is_config() && err.to_string().contains("SameSite=None"),
            "{err}"
        );
        let lax = none.with_same_site(SameSite::Lax).unwrap();
        assert!(lax.with_secure(false).is_ok());
    }
}
