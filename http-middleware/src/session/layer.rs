use std::{sync::Arc, time::Duration};

use cookie::{Cookie, SameSite};
use tessera_engine::SessionEngine;
use tower_layer::Layer;

use super::service::SessionService;
use crate::{
    error::ConfigError,
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
    /// to an unavailable store only (the 503 class of [`ErrorKind::status`](tessera_engine::ErrorKind::status)):
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

/// The request's handle on session `id` under `policy`.
pub(crate) fn open_session(
    engine: &SessionEngine,
    id: Option<tessera_engine::SessionId>,
    policy: FailurePolicy,
) -> tessera_engine::Session {
    match policy {
        FailurePolicy::FailClosed => engine.session(id),
        FailurePolicy::FailOpen => engine.session_fail_open(id),
    }
}

impl Settings {
    /// Upgrade mode's settings for a seed session served in its seed form: the seed's engine
    /// and pair, this layer's policy and metrics.
    fn seed_form(&self, upgrade: &Upgrade) -> Settings {
        Settings {
            engine: upgrade.engine.clone(),
            cookie_name: upgrade.cookies.name.clone(),
            secure: upgrade.cookies.secure,
            cookie_mode: CookieMode::KoaPair(Arc::new(upgrade.cookies.clone())),
            upgrade: None,
            ..self.clone()
        }
    }

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

/// The default cookie name, the Node seed's. It is not an RFC 6265 token (`:` is a separator),
/// but browsers and servers accept it, and keeping it lets a Koa app and Tessera share cookies.
pub const DEFAULT_COOKIE_NAME: &str = "koa:sess";

/// Mounts sessions on a tower service: puts a [`Session`](tessera_engine::Session) into each
/// request's extensions and commits it after the inner service has answered.
///
/// [`SessionLayer::new`] gives the defaults; [`SessionLayer::builder`] sets options, each
/// checked when the layer is built. See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct SessionLayer {
    pub(crate) settings: Arc<Settings>,
}

impl SessionLayer {
    /// A layer over `engine`, signing cookies with `keys`, with the defaults: cookie `koa:sess`,
    /// Path `/`, HttpOnly, SameSite=Lax, Secure, persistent (Max-Age follows the server TTL),
    /// fail closed.
    pub fn new(engine: SessionEngine, keys: SigningKeys) -> Self {
        SessionLayerBuilder::new(engine, keys).finish()
    }

    /// A builder for a layer over `engine` with other options than the defaults.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
    /// use tessera_middleware::{SessionLayer, SigningKeys};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let layer = SessionLayer::builder(engine, SigningKeys::random())
    ///     .with_cookie_name("__Host-sid")
    ///     .with_http_only(true)
    ///     .build()?;
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn builder(engine: SessionEngine, keys: SigningKeys) -> SessionLayerBuilder {
        SessionLayerBuilder::new(engine, keys)
    }

    /// The engine the layer uses.
    pub fn engine(&self) -> &SessionEngine {
        &self.settings.engine
    }
}

/// Options for a [`SessionLayer`]. Every `with_*` method only records its value;
/// [`build`](SessionLayerBuilder::build) checks each one and their combinations.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SessionLayerBuilder {
    settings: Settings,
    /// Upgrade mode's seed side, or why it could not be set up (reported by `build`).
    upgrade: Option<Result<Upgrade, ConfigError>>,
}

impl SessionLayerBuilder {
    fn new(engine: SessionEngine, keys: SigningKeys) -> Self {
        SessionLayerBuilder {
            settings: Settings {
                engine,
                keys,
                cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
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
            },
            upgrade: None,
        }
    }

    pub(crate) fn with_koa_pair(mut self, cookies: KoaCookies) -> Self {
        self.settings.cookie_mode = CookieMode::KoaPair(Arc::new(cookies));
        self
    }

    pub(crate) fn with_koa_upgrade(mut self, upgrade: Result<Upgrade, ConfigError>) -> Self {
        self.upgrade = Some(upgrade);
        self
    }

    /// The cookie name (default `koa:sess`). It must be an RFC 6265 token: visible ASCII
    /// without separators such as `=`, `;`, `,`, `:`, `/`, quotes or spaces (the default is the
    /// one exception). A `__Host-` name needs Secure, Path `/` and no Domain; a `__Secure-` name
    /// needs Secure: browsers drop such cookies otherwise, so `build` refuses them.
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.settings.cookie_name = name.into();
        self
    }

    /// The cookie's Path (default `/`). It must start with `/` and hold printable ASCII without
    /// `;` (RFC 6265 `path-value`): a `;` would smuggle in attributes of its own.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.settings.path = path.into();
        self
    }

    /// The cookie's Domain (default none: host-only). It must be a host name: labels of ASCII
    /// letters, digits and `-` separated by dots, optionally with a leading dot.
    pub fn with_domain(mut self, domain: Option<String>) -> Self {
        self.settings.domain = domain;
        self
    }

    /// The Secure attribute (default on). Turn it off only for plain-http development;
    /// `SameSite=None` and the `__Host-`/`__Secure-` name prefixes need it.
    pub fn with_secure(mut self, on: bool) -> Self {
        self.settings.secure = on;
        self
    }

    /// The HttpOnly attribute (default on).
    pub fn with_http_only(mut self, on: bool) -> Self {
        self.settings.http_only = on;
        self
    }

    /// The SameSite attribute (default Lax). `SameSite::None` needs Secure on.
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.settings.same_site = same_site;
        self
    }

    /// Persistent cookies with Max-Age and Expires following the server TTL (default), or
    /// browser-session cookies without them (`false`).
    pub fn with_persistent_cookie(mut self, on: bool) -> Self {
        self.settings.persistent = on;
        self
    }

    /// What happens when the store fails (default [`FailurePolicy::FailClosed`]).
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.settings.policy = policy;
        self
    }

    /// The Retry-After sent with a fail-closed 503 (default 1 s).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.settings.retry_after = after;
        self
    }

    /// Checks the options and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid option: a cookie name that is not a token,
    /// a malformed Path or Domain, `SameSite=None` without Secure, a `__Host-` or `__Secure-`
    /// name without the attributes its prefix requires, or an upgrade mode that could not be
    /// set up.
    pub fn build(mut self) -> Result<SessionLayer, ConfigError> {
        let s = &self.settings;
        if matches!(s.cookie_mode, CookieMode::Native) {
            check_cookie_name(&s.cookie_name)?;
        }
        check_path(&s.path)?;
        if let Some(domain) = &s.domain {
            check_domain(domain)?;
        }
        if s.same_site == SameSite::None && !s.secure {
            return Err(ConfigError::option(
                "SameSite=None requires the Secure attribute (browsers drop such cookies): keep \
                 with_secure(true), or use SameSite Lax or Strict",
            ));
        }
        check_prefix(s)?;
        if let Some(upgrade) = self.upgrade.take() {
            let mut upgrade = upgrade?;
            upgrade.seed_form = Some(Arc::new(self.settings.seed_form(&upgrade)));
            self.settings.upgrade = Some(Arc::new(upgrade));
        }
        Ok(self.finish())
    }

    /// The layer, without checks (for the defaults, which are valid).
    fn finish(mut self) -> SessionLayer {
        self.settings.attributes = self.settings.render_attributes();
        SessionLayer {
            settings: Arc::new(self.settings),
        }
    }
}

/// An RFC 6265 `token`: one or more visible ASCII characters other than the separators.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn check_cookie_name(name: &str) -> Result<(), ConfigError> {
    if name == DEFAULT_COOKIE_NAME || is_token(name) {
        return Ok(());
    }
    Err(ConfigError::option(format!(
        "invalid cookie name {name:?}: use an RFC 6265 token (visible ASCII without spaces or \
         any of ( ) < > @ , ; : \\ \" / [ ] ? = {{ }}), such as \"sid\" or \"__Host-sid\""
    )))
}

fn check_path(path: &str) -> Result<(), ConfigError> {
    let printable = |b: u8| (0x20..0x7f).contains(&b) && b != b';';
    if path.starts_with('/') && path.bytes().all(printable) {
        return Ok(());
    }
    Err(ConfigError::option(format!(
        "invalid cookie Path {path:?}: start it with / and use printable ASCII without ; or \
         control characters"
    )))
}

fn check_domain(domain: &str) -> Result<(), ConfigError> {
    if is_host_name(domain) {
        return Ok(());
    }
    Err(ConfigError::option(format!(
        "invalid cookie Domain {domain:?}: use a host name such as example.com or .example.com \
         (letters, digits, - and .)"
    )))
}

/// The cookie-name prefixes browsers enforce (RFC 6265bis, matched without regard to case): a
/// cookie that breaks its prefix's rule is dropped, which would log everyone out.
fn check_prefix(s: &Settings) -> Result<(), ConfigError> {
    let has_prefix = |prefix: &str| {
        s.cookie_name
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    let name = &s.cookie_name;
    if has_prefix("__Host-") {
        if !s.secure || s.path != "/" || s.domain.is_some() {
            return Err(ConfigError::option(format!(
                "the cookie name {name:?} has the __Host- prefix, which needs Secure, Path=/ and \
                 no Domain (browsers drop it otherwise): keep with_secure(true) and the default \
                 Path and Domain, or drop the prefix"
            )));
        }
    } else if has_prefix("__Secure-") && !s.secure {
        return Err(ConfigError::option(format!(
            "the cookie name {name:?} has the __Secure- prefix, which needs Secure (browsers drop \
             it otherwise): keep with_secure(true), or drop the prefix"
        )));
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

    fn builder() -> SessionLayerBuilder {
        let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
        SessionLayer::builder(engine, SigningKeys::random())
    }

    fn refused(builder: SessionLayerBuilder, what: &str) {
        let err = builder.build().unwrap_err();
        assert!(err.is_invalid_option(), "{err}");
        assert!(err.to_string().contains(what), "{what:?} not in {err}");
    }

    #[test]
    fn paths_are_validated() {
        for good in ["/", "/app", "/a b/c-d_e.f~%20"] {
            assert!(builder().with_path(good).build().is_ok(), "{good:?}");
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
            refused(builder().with_path(bad), "cookie Path");
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
            let layer = builder().with_domain(Some(good.into())).build();
            assert!(layer.is_ok(), "{good:?}");
        }
        assert!(builder().with_domain(None).build().is_ok());
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
            refused(builder().with_domain(Some(bad.into())), "cookie Domain");
        }
    }

    #[test]
    fn same_site_none_needs_secure_in_either_order() {
        assert!(
            builder().with_same_site(SameSite::None).build().is_ok(),
            "Secure is on by default"
        );
        let none = |b: SessionLayerBuilder| b.with_same_site(SameSite::None);
        refused(none(builder().with_secure(false)), "SameSite=None");
        refused(none(builder()).with_secure(false), "SameSite=None");
        // Only the final combination counts: going from None to plain http in any order works.
        let layer = none(builder())
            .with_secure(false)
            .with_same_site(SameSite::Lax)
            .build();
        assert!(layer.is_ok());
    }

    #[test]
    fn cookie_names_are_rfc_6265_tokens_except_the_seed_default() {
        for good in [
            "sid",
            "koa:sess",
            "SESSION_ID",
            "a.b-c~d!#$%&'*+^`|",
            "__Host-sid",
        ] {
            assert!(builder().with_cookie_name(good).build().is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "a b",
            "a=b",
            "a;b",
            "a,b",
            "a:b",
            "app:sess",
            "a/b",
            "a\"b",
            "a(b)",
            "a[b]",
            "a?b",
            "a{b}",
            "a@b",
            "a<b>",
            "a\\b",
            "a\tb",
            "a\u{7f}",
            "s\u{e9}ssion",
        ] {
            refused(builder().with_cookie_name(bad), "RFC 6265 token");
        }
    }

    #[test]
    fn cookie_name_prefixes_enforce_their_attributes() {
        for host in ["__Host-sid", "__host-sid", "__HOST-sid"] {
            assert!(builder().with_cookie_name(host).build().is_ok(), "{host}");
            let b = || builder().with_cookie_name(host);
            refused(b().with_secure(false), "__Host-");
            refused(b().with_path("/app"), "__Host-");
            refused(b().with_domain(Some("example.com".into())), "__Host-");
        }
        for secure in ["__Secure-sid", "__secure-sid"] {
            let b = || builder().with_cookie_name(secure);
            assert!(b().with_path("/app").build().is_ok(), "{secure}");
            assert!(b().with_domain(Some("example.com".into())).build().is_ok());
            refused(b().with_secure(false), "__Secure-");
        }
        // Without a prefix, plain http stays possible for development.
        assert!(builder().with_secure(false).build().is_ok());
    }
}
