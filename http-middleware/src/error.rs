//! The middleware crate's error type: a setup problem found while building the layer, the
//! signing keys or the metrics recorder. Request-time failures never surface as errors; they
//! become responses.

use std::borrow::Cow;

/// What kind of setup problem a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// An invalid option or combination of options (secret, cookie name, Path, Domain, the
    /// attributes a cookie-name prefix requires, the engine's configuration).
    InvalidOption,
    /// The Prometheus recorder could not be installed.
    Metrics,
}

/// A setup error from building a [`SessionLayer`](crate::SessionLayer), [`SigningKeys`](crate::SigningKeys),
/// a [`KoaCompat`](crate::koa::KoaCompat) profile or the metrics recorder. Its message names the
/// option and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: Cow<'static, str>,
}

impl ConfigError {
    pub(crate) fn new(kind: ConfigErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        ConfigError {
            kind,
            message: message.into(),
        }
    }

    /// An invalid option.
    pub(crate) fn option(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ConfigErrorKind::InvalidOption, message)
    }

    /// The kind of problem.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// Whether an option (or a combination of options) was invalid.
    pub fn is_invalid_option(&self) -> bool {
        self.kind == ConfigErrorKind::InvalidOption
    }
}

impl From<tessera_engine::Error> for ConfigError {
    /// An engine error met while setting up (an invalid engine configuration or key schema).
    fn from(err: tessera_engine::Error) -> Self {
        ConfigError::option(err.to_string())
    }
}
