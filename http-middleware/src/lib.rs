//! Tessera's HTTP layer: a tower [`SessionLayer`] that gives every request a guest session named
//! by a signed cookie (default `koa:sess`), backed by the `tessera-engine` stores, plus Prometheus
//! metrics and the demo service.
//!
//! Handlers find the [`Session`] in the request extensions (or, with the `axum` feature, take
//! [`axum::SessionExtractor`] as an argument). See [`session`] for a complete example.

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "demo")]
pub mod demo;
mod error;
pub mod metrics;
pub mod session;
mod signing;

pub use tessera_engine::{self as engine, Session};

pub use crate::{
    error::{Error, ErrorKind},
    metrics::install_prometheus_recorder,
    session::{FailurePolicy, SessionLayer, SessionService},
    signing::{find_session_cookie, Rejection, SigningKeys, Verified},
};

/// The HTTP status a handler should answer for an engine error: 503 for store failures, 413 for
/// an oversized session, 400 for a reserved field name, 500 otherwise.
pub fn error_status(err: &tessera_engine::Error) -> http::StatusCode {
    use tessera_engine::ErrorKind as K;
    match err.kind() {
        K::Redis | K::Timeout | K::LoadFailed | K::Decode => http::StatusCode::SERVICE_UNAVAILABLE,
        K::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
        K::InvalidField | K::InvalidId => http::StatusCode::BAD_REQUEST,
        _ => http::StatusCode::INTERNAL_SERVER_ERROR,
    }
}
