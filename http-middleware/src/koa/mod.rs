//! The koa-session-redis3 profile: serve the same sessions as a running Koa app that uses
//! koa-session-redis3 1.3.4 (its cookie pair, its keys, its Redis layout), and, once that app is
//! retired, upgrade each seed session to Tessera's native layout on its next request.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tessera_engine::store::MemoryStringStore;
//! use tessera_middleware::{koa::KoaCompat, SessionLayer};
//!
//! // The seed's options: app.keys, store.keySchema, store.ttl.
//! let compat = KoaCompat::new(["some secret hurr"])?
//!     .with_key_schema("your:schema")
//!     .with_ttl(Duration::from_secs(3600));
//! // A RedisStore in production: the Redis the Koa app uses.
//! let layer = SessionLayer::koa_session_redis3(MemoryStringStore::new(), &compat)?;
//! # let _ = layer; Ok(()) }
//! ```

use std::{sync::Arc, time::Duration};

use tessera_engine::{store::StringStore, KeySchema, KoaJsonStore, SessionConfig, SessionEngine};

use crate::{
    error::ConfigError,
    session::{SessionLayer, SessionLayerBuilder},
};

mod cookies;
mod keygrip;
mod upgrade;

pub(crate) use self::cookies::{KoaCookies, PairRead};
pub use self::keygrip::Keygrip;
pub(crate) use self::upgrade::{Resolved, Upgrade};

/// The largest seed session upgrade mode serves in its seed form (16 MiB): far above the native
/// limit, below what one Redis string value costs to move in one call without stalling a node.
const SEED_FORM_MAX_SIZE: usize = 16 * 1024 * 1024;

/// The seed's options, for [`SessionLayer::koa_session_redis3`] and
/// [`SessionLayerBuilder::with_koa_session_redis3_upgrade`]. Defaults are the seed's: cookie
/// `koa:sess`, keySchema empty, TTL one hour (the seed has none by default; Tessera needs one).
#[derive(Debug, Clone)]
pub struct KoaCompat {
    keys: Keygrip,
    key_schema: String,
    ttl: Duration,
    cookie_name: String,
    secure: bool,
    forward: Duration,
}

impl KoaCompat {
    /// The Koa app's `app.keys`: the first signs, every one verifies.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when there is no key or one is shorter than 16 bytes.
    pub fn new<I, K>(app_keys: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        Ok(KoaCompat {
            keys: Keygrip::new(app_keys)?,
            key_schema: String::new(),
            ttl: Duration::from_secs(3600),
            cookie_name: "koa:sess".to_owned(),
            secure: false,
            forward: upgrade::DEFAULT_FORWARD,
        })
    }

    /// The seed's `store.keySchema` (a `:` is appended when missing); checked as a
    /// [`KeySchema`] when the engine is built.
    pub fn with_key_schema(mut self, schema: impl Into<String>) -> Self {
        self.key_schema = schema.into();
        self
    }

    /// The seed's `store.ttl`; at most [`MAX_TTL`](tessera_engine::MAX_TTL), checked when the
    /// engine is built.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The seed's `key` option, the session cookie's name (default `koa:sess`). Koa apps name
    /// their cookies `app:sess` alike, so besides RFC 6265 token characters `:` is accepted
    /// here; the name is checked when the layer is built.
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Mark the pair `secure` (the seed does so over HTTPS only; default off).
    pub fn with_secure(mut self, on: bool) -> Self {
        self.secure = on;
        self
    }

    /// Upgrade mode: how long the old pair keeps leading to the session it was moved to
    /// (default 30 s). A page's requests sent before its first answer came back still carry
    /// the old pair; within this window they join the moved session instead of starting
    /// another. After it the old pair names nothing.
    pub fn with_upgrade_forward(mut self, window: Duration) -> Self {
        self.forward = window;
        self
    }

    /// The engine on the seed's layout over `strings` (the Koa app's Redis).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid key schema or a TTL over
    /// [`MAX_TTL`](tessera_engine::MAX_TTL).
    pub fn engine<S: StringStore>(&self, strings: S) -> Result<SessionEngine, ConfigError> {
        Ok(SessionEngine::new(
            KoaJsonStore::new(strings, self.ttl),
            self.config()?,
        )?)
    }

    /// Upgrade mode's engine on the seed's layout. A session it serves in its seed form is one
    /// the native limits refused, so its own limits are the widest the engine takes: the seed
    /// stored it, and serving it must not refuse a write the seed would have made.
    fn upgrade_engine<S: StringStore>(&self, strings: S) -> Result<SessionEngine, ConfigError> {
        let config = self
            .config()?
            .with_max_size(SEED_FORM_MAX_SIZE)
            .with_max_fields(tessera_engine::MAX_FIELDS_LIMIT);
        Ok(SessionEngine::new(
            KoaJsonStore::new(strings, self.ttl),
            config,
        )?)
    }

    fn config(&self) -> Result<SessionConfig, ConfigError> {
        let schema = KeySchema::new(&self.key_schema)?;
        Ok(SessionConfig::koa_session_redis3(schema, self.ttl))
    }

    /// The profile's layer over an engine made by [`KoaCompat::engine`] (what
    /// [`SessionLayer::koa_session_redis3`] does in one call).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid cookie name.
    pub fn layer(&self, engine: SessionEngine) -> Result<SessionLayer, ConfigError> {
        let name = &self.cookie_name;
        let seed_style = name.split(':').all(crate::session::is_token);
        if !seed_style {
            return Err(ConfigError::option(format!(
                "invalid cookie name {name:?}: use RFC 6265 token characters, optionally \
                 joined by : as in the seed's koa:sess"
            )));
        }
        // Native signing keys are never used in this mode; the layer needs some.
        SessionLayer::builder(engine, crate::SigningKeys::random())
            .with_secure(self.secure)
            .with_cookie_name(name.clone())
            .with_koa_pair(self.cookies())
            .build()
    }

    pub(crate) fn cookies(&self) -> KoaCookies {
        KoaCookies::new(self.keys.clone(), &self.cookie_name, self.secure)
    }
}

impl SessionLayer {
    /// The koa-session-redis3 profile: sessions shared with a running Koa app. Cookies are the
    /// seed's pair (`koa:sess` and `koa:sess.sig`, keygrip signatures under `app.keys`), Redis
    /// holds `JSON.stringify` of the session under `<keySchema><sid>` with the seed's TTL. See
    /// the README's migration guide for what differs from the native mode.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid key schema, TTL or cookie name.
    pub fn koa_session_redis3<S: StringStore>(
        strings: S,
        compat: &KoaCompat,
    ) -> Result<SessionLayer, ConfigError> {
        compat.layer(compat.engine(strings)?)
    }
}

impl SessionLayerBuilder {
    /// Upgrade mode, for after the Koa app is retired: this (native) layer also accepts the
    /// seed's cookie pair. The first request with a pair moves the seed session's fields into
    /// a native session under a fresh id before its handler runs, deletes the old key, sets
    /// Tessera's cookie and clears the old pair. Requests carrying the same pair at the same
    /// time join that one session (the old pair forwards to it for
    /// [`with_upgrade_forward`](KoaCompat::with_upgrade_forward)). A seed session the native
    /// layout cannot hold (over the size or field limits, a value the decoder refuses) keeps
    /// being served in its seed form. Native sessions work as usual. A profile that cannot be
    /// set up (invalid key schema or TTL) is reported by [`build`](SessionLayerBuilder::build).
    pub fn with_koa_session_redis3_upgrade<S: StringStore>(
        self,
        strings: S,
        compat: &KoaCompat,
    ) -> Self {
        let strings: Arc<dyn StringStore> = Arc::new(strings);
        let upgrade = compat
            .upgrade_engine(strings.clone())
            .map(|engine| Upgrade {
                engine,
                cookies: compat.cookies(),
                strings,
                forward: compat.forward,
                seed_form: None,
            });
        self.with_koa_upgrade(upgrade)
    }
}

/// The layer settings' cookie mode.
#[derive(Debug, Clone, Default)]
pub(crate) enum CookieMode {
    /// `<id>.<signature>` in one cookie.
    #[default]
    Native,
    /// The seed's pair.
    KoaPair(Arc<KoaCookies>),
}
