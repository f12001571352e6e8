//! The engine's one error type. Every failure says what happened and what to do; the source error
//! (fred, rmp-serde) is kept for `source()` chains.

use std::{borrow::Cow, fmt};

/// A specialized `Result` for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store (Redis) answered with an error or the connection failed.
    Redis,
    /// The store did not answer within the configured command timeout.
    Timeout,
    /// Stored data could not be decoded (corrupt, foreign, or of another type than asked for).
    Decode,
    /// A value could not be encoded to MessagePack.
    Encode,
    /// The session exceeds the configured size or field-count limit; nothing was written.
    TooLarge,
    /// Invalid configuration (key schema, URL, options).
    Config,
    /// A string that is not a well-formed session id.
    InvalidId,
    /// A session field name that is reserved by the engine.
    InvalidField,
    /// The session could not be loaded earlier in this request, so it can be neither used nor saved.
    LoadFailed,
    /// A write reached the primary but fewer replicas than required confirmed it in time; it may
    /// be lost if the primary fails now.
    NotDurable,
    /// Creating a session kept colliding with existing ids (practically impossible with a working
    /// random source).
    IdCollision,
    /// A login was refused: the user already has the most sessions the cap allows and the policy
    /// is to refuse.
    SessionCap,
    /// A per-user operation (device list, revoke) on a session that is not logged in.
    NotLoggedIn,
    /// The session ended (logged out or revoked elsewhere) while this request was using it.
    SessionEnded,
    /// The store does not offer this operation (per-user sessions need the native layout).
    Unsupported,
}

impl ErrorKind {
    /// A short, stable, lower-case name, suitable as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Redis => "redis",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Decode => "decode",
            ErrorKind::Encode => "encode",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Config => "config",
            ErrorKind::InvalidId => "invalid_id",
            ErrorKind::InvalidField => "invalid_field",
            ErrorKind::LoadFailed => "load_failed",
            ErrorKind::IdCollision => "id_collision",
            ErrorKind::NotDurable => "not_durable",
            ErrorKind::SessionCap => "session_cap",
            ErrorKind::NotLoggedIn => "not_logged_in",
            ErrorKind::SessionEnded => "session_ended",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine error: a [`ErrorKind`], a message for humans and, where there is one, the source.
#[derive(Debug, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// Creates an error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the kind prefix).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The store could not be reached or answered with an error (including timeouts).
    pub fn is_store(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Redis | ErrorKind::Timeout | ErrorKind::LoadFailed | ErrorKind::NotDurable
        )
    }

    /// The store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Stored data could not be decoded.
    pub fn is_decode(&self) -> bool {
        self.kind == ErrorKind::Decode
    }

    /// The session is over its size or field-count limit.
    pub fn is_too_large(&self) -> bool {
        self.kind == ErrorKind::TooLarge
    }

    /// A login was refused by the per-user session cap.
    pub fn is_session_cap(&self) -> bool {
        self.kind == ErrorKind::SessionCap
    }

    /// The configuration is invalid.
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::Config
    }

    /// A copy of this error without its source, for handing the same failure to several callers.
    pub(crate) fn shallow_clone(&self) -> Self {
        Error::new(self.kind, self.message.clone())
    }
}

impl From<fred::error::Error> for Error {
    fn from(err: fred::error::Error) -> Self {
        use fred::error::ErrorKind as F;
        let (kind, message) = match err.kind() {
            F::Timeout => (
                ErrorKind::Timeout,
                "Redis did not answer within the command timeout; check that the server is up \
                 and reachable, or raise the timeout",
            ),
            F::Config | F::Url => (
                ErrorKind::Config,
                "invalid Redis configuration; check the URL and options",
            ),
            _ => (
                ErrorKind::Redis,
                "the Redis command failed; check the server's health and the logs",
            ),
        };
        Error::new(kind, format!("{message} ({err})")).with_source(err)
    }
}

impl From<rmp_serde::decode::Error> for Error {
    fn from(err: rmp_serde::decode::Error) -> Self {
        Error::new(
            ErrorKind::Decode,
            format!("stored session data is not valid MessagePack for the requested type ({err})"),
        )
        .with_source(err)
    }
}

impl From<rmp_serde::encode::Error> for Error {
    fn from(err: rmp_serde::encode::Error) -> Self {
        Error::new(
            ErrorKind::Encode,
            format!("the value cannot be encoded as MessagePack ({err})"),
        )
        .with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_helpers_and_messages() {
        let err = Error::new(ErrorKind::TooLarge, "session is 70000 bytes, limit 65536");
        assert!(err.is_too_large());
        assert!(!err.is_store());
        assert_eq!(
            err.to_string(),
            "too_large error: session is 70000 bytes, limit 65536"
        );
    }

    #[test]
    fn fred_timeouts_map_to_timeout() {
        let err: Error = fred::error::Error::new(fred::error::ErrorKind::Timeout, "x").into();
        assert!(err.is_timeout());
        assert!(err.is_store());
        assert!(std::error::Error::source(&err).is_some());
    }
}
