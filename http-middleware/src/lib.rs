//! Tessera's HTTP layer: a tower [`SessionLayer`] that gives every request a guest session named
//! by a signed cookie (default `koa:sess`), backed by the `tessera-engine` stores, plus Prometheus
//! metrics. The demo service is its own crate, `tessera-demo`.
//!
//! Handlers find the [`Session`] in the request extensions (or, with the `axum` feature, take
//! [`axum::SessionExtractor`] as an argument). See [`session`] for a complete example.

#[cfg(feature = "axum")]
pub mod axum;
mod error;
pub mod koa;
pub mod metrics;
pub mod session;
mod signing;
mod status;

pub use tessera_engine::{self as engine, Session};

pub use crate::{
    error::{Error, ErrorKind},
    metrics::install_prometheus_recorder,
    session::{FailurePolicy, SessionLayer, SessionService},
    signing::{find_session_cookie, Rejection, SigningKeys, Verified},
    status::error_status,
};
