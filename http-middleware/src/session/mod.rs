//! The session middleware: cookie in, [`Session`](tessera_engine::Session) in the request
//! extensions, commit and Set-Cookie out. It never changes the inner service's error type: store
//! failures become responses (503, or the handler's response under fail-open).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::convert::Infallible;
//!
//! use http::{Request, Response};
//! use tessera_engine::{MemoryStore, Session, SessionConfig, SessionEngine};
//! use tessera_middleware::{SessionLayer, SigningKeys};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
//! let layer = SessionLayer::builder(engine, SigningKeys::random())
//!     .with_secure(false)
//!     .build()
//!     .unwrap();
//! let service = layer.layer(service_fn(|req: Request<String>| async move {
//!     let session = req.extensions().get::<Session>().unwrap().clone();
//!     let views = session.update("views", |n: &mut u64| *n += 1).await.unwrap();
//!     Ok::<_, Infallible>(Response::new(format!("{views} views")))
//! }));
//!
//! let response = service.oneshot(Request::new(String::new())).await.unwrap();
//! assert!(response.headers().contains_key("set-cookie"));
//! # }
//! ```

mod cookies;
mod layer;
mod service;

pub(crate) use self::layer::{is_token, open_session, Settings};
pub use self::{
    layer::{FailurePolicy, SessionLayer, SessionLayerBuilder, DEFAULT_COOKIE_NAME},
    service::{ResponseFuture, SessionService},
};
