//! The middleware crate's error type: configuration problems found while building the layer or
//! the metrics recorder. Request-time failures never surface as errors; they become responses.

use std::borrow::Cow;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An invalid option (secret, cookie name, domain).
    Config,
    /// The metrics recorder could not be installed.
    Metrics,
}

/// A middleware configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether an option was invalid.
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::Config
    }
}
