//! Engine options with their defaults. Options are set through by-value `with_*` builder methods,
//! so new ones can be added without breaking callers.

use std::time::Duration;

use crate::{
    error::{Error, ErrorKind, Result},
    key::KeySchema,
};

/// How sessions are keyed, expired and bounded.
///
/// ```
/// use std::time::Duration;
/// use tessera_engine::{KeySchema, SessionConfig};
///
/// let config = SessionConfig::default()
///     .with_key_schema(KeySchema::new("shop:sess").unwrap())
///     .with_idle_ttl(Duration::from_secs(1800))
///     .with_absolute_ttl(Some(Duration::from_secs(12 * 3600)));
/// assert_eq!(config.idle_ttl(), Duration::from_secs(1800));
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
    /// Values under one millisecond are raised to one millisecond.
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Absolute lifetime from creation; no renewal extends a session past it (default none).
    pub fn with_absolute_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.absolute_ttl = ttl;
        self
    }

    /// A request renews the expiry once less than this share of the idle TTL remains (default
    /// `0.5`); reads and writes alike, so a write whose renewal is not due sends only its changed
    /// fields and no Set-Cookie. `1.0` renews on every request; `0.0` renews on every write and
    /// never on a read.
    pub fn with_renew_below(mut self, share: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("renew_below must be between 0.0 and 1.0, got {share}"),
            ));
        }
        self.renew_below = share;
        Ok(self)
    }

    /// Maximum encoded size of a session in bytes, field names included (default 64 KiB).
    pub fn with_max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// Maximum number of fields in a session (default 256).
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
