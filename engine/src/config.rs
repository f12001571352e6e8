//! Engine options with their defaults. Options are set through by-value `with_*` builder methods,
//! so new ones can be added without breaking callers.

use std::time::Duration;

use crate::{
    error::{Error, ErrorKind, Result},
    key::KeySchema,
    users::{SessionCap, UserKey},
};

/// The longest idle or absolute lifetime accepted: 400 days, the longest cookie lifetime browsers
/// honour (RFC 6265bis caps Max-Age and Expires there). Longer values would only be cut by the
/// browser, and far-future dates are where time arithmetic overflows.
pub const MAX_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// The most fields a session may be configured to hold: the Lua scripts pass every field and
/// value to one `HSET` through `unpack`, which Redis limits to about 8,000 values.
pub const MAX_FIELDS_LIMIT: usize = 3_000;

/// How sessions are keyed, expired and bounded.
///
/// The `with_*` methods only record a value; [`SessionConfig::validate`] checks the whole
/// configuration, and [`SessionEngine::new`](crate::SessionEngine::new) refuses an invalid one
/// with an [`ErrorKind::Config`] error that names the option.
///
/// ```
/// # fn main() -> tessera_engine::Result<()> {
/// use std::time::Duration;
/// use tessera_engine::{KeySchema, SessionConfig};
///
/// let config = SessionConfig::default()
///     .with_key_schema(KeySchema::new("shop:sess")?)
///     .with_idle_ttl(Duration::from_secs(1800))
///     .with_absolute_ttl(Some(Duration::from_secs(12 * 3600)));
/// assert_eq!(config.idle_ttl(), Duration::from_secs(1800));
/// assert!(config.validate().is_ok());
/// assert!(SessionConfig::default().with_idle_ttl(Duration::MAX).validate().is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub(crate) key_schema: KeySchema,
    pub(crate) idle_ttl: Duration,
    pub(crate) absolute_ttl: Option<Duration>,
    pub(crate) renew_below: f64,
    pub(crate) max_size: usize,
    pub(crate) max_fields: usize,
    pub(crate) hash_ids_at_rest: bool,
    pub(crate) save_new_empty: bool,
    pub(crate) plain_keys: bool,
    pub(crate) user_key: Option<UserKey>,
    pub(crate) session_cap: Option<SessionCap>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            key_schema: KeySchema::default(),
            idle_ttl: Duration::from_secs(3600),
            absolute_ttl: None,
            renew_below: 0.5,
            max_size: 64 * 1024,
            max_fields: 256,
            hash_ids_at_rest: true,
            save_new_empty: false,
            plain_keys: false,
            user_key: None,
            session_cap: None,
        }
    }
}

impl SessionConfig {
    /// The Redis key prefix (default `tessera:sess:`).
    pub fn with_key_schema(mut self, schema: KeySchema) -> Self {
        self.key_schema = schema;
        self
    }

    /// Sliding idle lifetime: a session unused this long expires (default 1 hour).
    ///
    /// Values under one millisecond are raised to one millisecond; values over [`MAX_TTL`] make
    /// the configuration invalid.
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Absolute lifetime from creation; no renewal extends a session past it (default none).
    /// Values over [`MAX_TTL`] make the configuration invalid.
    pub fn with_absolute_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.absolute_ttl = ttl;
        self
    }

    /// A request renews the expiry once less than this share of the idle TTL remains (default
    /// `0.5`); reads and writes alike, so a write whose renewal is not due sends only its changed
    /// fields and no Set-Cookie. `1.0` renews on every request; `0.0` renews on every write and
    /// never on a read. A share outside `0.0..=1.0` makes the configuration invalid.
    pub fn with_renew_below(mut self, share: f64) -> Self {
        self.renew_below = share;
        self
    }

    /// Maximum encoded size of a session in bytes, field names included (default 64 KiB).
    pub fn with_max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// Maximum number of fields in a session (default 256); more than [`MAX_FIELDS_LIMIT`]
    /// makes the configuration invalid.
    pub fn with_max_fields(mut self, fields: usize) -> Self {
        self.max_fields = fields;
        self
    }

    /// Store sessions under a SHA-256 digest of the id instead of the id (default on).
    pub fn with_hash_ids_at_rest(mut self, on: bool) -> Self {
        self.hash_ids_at_rest = on;
        self
    }

    /// Store new sessions even while they are empty (default off: an untouched guest session costs
    /// no write and gets no cookie).
    pub fn with_save_new_empty(mut self, on: bool) -> Self {
        self.save_new_empty = on;
        self
    }

    /// Name keys `<keySchema><id>` with the id in clear and no hash tag (default off), the layout
    /// of the Node seed koa-session-redis3; see [`SessionConfig::koa_session_redis3`].
    pub fn with_plain_keys(mut self, on: bool) -> Self {
        self.plain_keys = on;
        self
    }

    /// The engine side of the koa-session-redis3 profile: keys `<keySchema><sid>`, the seed's
    /// `ttl` as the idle TTL, every write renews (the seed resets the TTL on each write) and no
    /// read does (its reads never touch the TTL), no absolute lifetime (the seed's document has
    /// no room for one), new empty sessions not stored. Pair it with
    /// [`KoaJsonStore`](crate::KoaJsonStore), which stores the JSON string layout.
    ///
    /// ```
    /// # fn main() -> tessera_engine::Result<()> {
    /// use std::time::Duration;
    /// use tessera_engine::{KeySchema, SessionConfig};
    ///
    /// let config =
    ///     SessionConfig::koa_session_redis3(KeySchema::new("your:schema")?, Duration::from_secs(3600));
    /// assert!(config.plain_keys());
    /// # Ok(()) }
    /// ```
    pub fn koa_session_redis3(key_schema: KeySchema, ttl: Duration) -> Self {
        SessionConfig::default()
            .with_key_schema(key_schema)
            .with_plain_keys(true)
            .with_hash_ids_at_rest(false)
            .with_idle_ttl(ttl)
            .with_renew_below(0.0)
    }

    /// The secret behind user slots and device handles; [`crate::Session::login`] needs one
    /// (default none). Every instance sharing the store must use the same key.
    pub fn with_user_key(mut self, key: UserKey) -> Self {
        self.user_key = Some(key);
        self
    }

    /// At most this many live sessions per user, and what a login beyond that does (default:
    /// no cap). Enforced atomically at login, so concurrent logins cannot exceed it.
    pub fn with_session_cap(mut self, cap: Option<SessionCap>) -> Self {
        self.session_cap = cap.map(|c| SessionCap {
            max: c.max.max(1),
            ..c
        });
        self
    }

    /// Checks every option and their combination; the first problem is an [`ErrorKind::Config`]
    /// error that names the option and the accepted range.
    /// [`SessionEngine::new`](crate::SessionEngine::new) calls it, so an engine never runs with
    /// an invalid configuration.
    ///
    /// # Errors
    ///
    /// An idle or absolute TTL over [`MAX_TTL`], a renewal share outside `0.0..=1.0` (or NaN),
    /// or more than [`MAX_FIELDS_LIMIT`] fields.
    pub fn validate(&self) -> Result<()> {
        check_ttl("idle", self.idle_ttl)?;
        if let Some(ttl) = self.absolute_ttl {
            check_ttl("absolute", ttl)?;
        }
        if !(0.0..=1.0).contains(&self.renew_below) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "renew_below must be between 0.0 and 1.0, got {}",
                    self.renew_below
                ),
            ));
        }
        if self.max_fields > MAX_FIELDS_LIMIT {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "max_fields {} is over the limit of {MAX_FIELDS_LIMIT} (Redis scripts cannot \
                     pass more fields to one HSET); keep large data in fewer fields",
                    self.max_fields
                ),
            ));
        }
        Ok(())
    }

    /// Whether a user key is set, so [`crate::Session::login`] can bind sessions to users.
    pub fn has_user_key(&self) -> bool {
        self.user_key.is_some()
    }

    /// The per-user session cap, if any.
    pub fn session_cap(&self) -> Option<SessionCap> {
        self.session_cap
    }

    /// Whether keys are `<keySchema><id>` (the seed's layout).
    pub fn plain_keys(&self) -> bool {
        self.plain_keys
    }

    /// The key prefix.
    pub fn key_schema(&self) -> &KeySchema {
        &self.key_schema
    }

    /// The sliding idle lifetime.
    pub fn idle_ttl(&self) -> Duration {
        self.idle_ttl
    }

    /// The absolute lifetime, if any.
    pub fn absolute_ttl(&self) -> Option<Duration> {
        self.absolute_ttl
    }

    /// The renewal threshold as a share of the idle TTL.
    pub fn renew_below(&self) -> f64 {
        self.renew_below
    }

    /// The size limit in bytes.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The field-count limit.
    pub fn max_fields(&self) -> usize {
        self.max_fields
    }

    /// Whether ids are hashed before they become keys.
    pub fn hash_ids_at_rest(&self) -> bool {
        self.hash_ids_at_rest
    }

    /// Whether new empty sessions are stored.
    pub fn save_new_empty(&self) -> bool {
        self.save_new_empty
    }
}

fn check_ttl(what: &str, ttl: Duration) -> Result<()> {
    if ttl > MAX_TTL {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "the {what} TTL of {} s is over the limit of {} s (400 days, the longest cookie \
                 lifetime browsers keep); choose a shorter one",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_field_limits_are_validated() {
        let c = SessionConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.clone().with_idle_ttl(MAX_TTL).validate().is_ok());
        for ttl in [MAX_TTL + Duration::from_secs(1), Duration::MAX] {
            let err = c.clone().with_idle_ttl(ttl).validate().unwrap_err();
            assert!(
                err.is_config() && err.to_string().contains("idle TTL"),
                "{err}"
            );
            let err = c
                .clone()
                .with_absolute_ttl(Some(ttl))
                .validate()
                .unwrap_err();
            assert!(
                err.is_config() && err.to_string().contains("absolute TTL"),
                "{err}"
            );
        }
        assert_eq!(
            c.clone().with_idle_ttl(Duration::ZERO).idle_ttl(),
            Duration::from_millis(1)
        );
        assert!(c
            .clone()
            .with_max_fields(MAX_FIELDS_LIMIT)
            .validate()
            .is_ok());
        let err = c.clone().with_max_fields(MAX_FIELDS_LIMIT + 1).validate();
        assert!(err.unwrap_err().to_string().contains("max_fields"));
        for share in [-0.1, 1.5, f64::NAN] {
            let err = c.clone().with_renew_below(share).validate().unwrap_err();
            assert!(err.to_string().contains("renew_below"), "{err}");
        }
        assert!(c.with_renew_below(1.0).validate().is_ok());
    }
}
