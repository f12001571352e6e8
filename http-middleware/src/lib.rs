//! Tessera's HTTP layer: a tower [`SessionLayer`] that gives every request a guest session named
//! by a signed cookie (default `koa:sess`), backed by the `tessera-engine` stores, plus Prometheus
//! metrics. The demo service is its own crate, `tessera-demo`.
//!
//! Handlers find the [`Session`] in the request extensions, or, with the `axum` feature, take
//! `session: Session` as an argument and return [`engine::Error`] (its `IntoResponse` answers
//! with [`ErrorKind::status`](engine::ErrorKind::status)). See [`session`] for a complete
//! example.

// Every public function that returns a `Result` says when it fails.
#![warn(clippy::missing_errors_doc)]

mod error;
pub mod koa;
pub mod metrics;
pub mod session;
pub mod signing;

pub use tessera_engine::{self as engine, Session};

pub use crate::{
    error::{ConfigError, ConfigErrorKind},
    metrics::install_prometheus_recorder,
    session::{FailurePolicy, SessionLayer, SessionLayerBuilder, SessionService},
    signing::SigningKeys,
};
