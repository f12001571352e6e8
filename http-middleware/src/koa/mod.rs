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

use tessera_engine::{
    koa::json::JsValue, store::StringStore, KeySchema, KoaJsonStore, Session, SessionConfig,
    SessionEngine, SessionId,
};

use crate::{
    error::ConfigError,
    session::{SessionLayer, SessionLayerBuilder},
};

mod cookies;
mod keygrip;

pub(crate) use self::cookies::{KoaCookies, PairRead};
pub use self::keygrip::Keygrip;

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

    /// The engine on the seed's layout over `strings` (the Koa app's Redis).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid key schema or a TTL over
    /// [`MAX_TTL`](tessera_engine::MAX_TTL).
    pub fn engine<S: StringStore>(&self, strings: S) -> Result<SessionEngine, ConfigError> {
        let schema = KeySchema::new(&self.key_schema)?;
        let config = SessionConfig::koa_session_redis3(schema, self.ttl);
        Ok(SessionEngine::new(
            KoaJsonStore::new(strings, self.ttl),
            config,
        )?)
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

/// Upgrade mode's reading side: the seed's sessions, their cookies.
#[derive(Debug, Clone)]
pub(crate) struct Upgrade {
    pub(crate) engine: SessionEngine,
    pub(crate) cookies: KoaCookies,
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
    /// seed's cookie pair. Such a request gets the seed session's fields in a new native
    /// session, stored under a fresh id when the request commits; then the old key is deleted,
    /// Tessera's cookie set and the old pair cleared. Native sessions work as usual. A profile
    /// that cannot be set up (invalid key schema or TTL) is reported by
    /// [`build`](SessionLayerBuilder::build).
    pub fn with_koa_session_redis3_upgrade<S: StringStore>(
        self,
        strings: S,
        compat: &KoaCompat,
    ) -> Self {
        let upgrade = compat.engine(strings).map(|engine| Upgrade {
            engine,
            cookies: compat.cookies(),
        });
        self.with_koa_upgrade(upgrade)
    }
}

/// Copies the seed session `old` into the fresh native `session`. Returns whether there was
/// anything to move (a missing or empty seed session moves nothing).
pub(crate) async fn upgrade_into(
    upgrade: &Upgrade,
    old: SessionId,
    session: &Session,
) -> tessera_engine::Result<bool> {
    let seed = upgrade.engine.session(Some(old));
    let names = seed.keys().await?;
    for name in &names {
        if let Some(value) = seed.get::<JsValue>(name).await? {
            session.insert(name.as_str(), &value).await?;
        }
    }
    Ok(!names.is_empty())
}

/// Deletes the seed session once its data is stored natively.
pub(crate) async fn retire(upgrade: &Upgrade, old: SessionId) -> tessera_engine::Result<()> {
    let seed = upgrade.engine.session(Some(old));
    seed.destroy().await?;
    seed.commit().await.map(|_| ())
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
