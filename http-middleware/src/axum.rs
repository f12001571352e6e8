//! axum integration: take the session as a handler argument.

use axum::extract::FromRequestParts;
use http::{request::Parts, StatusCode};
use tessera_engine::Session;

/// Extracts the request's [`Session`]; fails with 500 when the [`SessionLayer`](crate::SessionLayer)
/// is not mounted.
///
/// ```
/// use tessera_middleware::axum::SessionExtractor;
///
/// async fn handler(SessionExtractor(session): SessionExtractor) -> String {
///     let views: u64 = session.get("views").await.ok().flatten().unwrap_or(0);
///     format!("{views} views")
/// }
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct SessionExtractor(pub Session);

impl<S: Send + Sync> FromRequestParts<S> for SessionExtractor {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .map(SessionExtractor)
            .ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "SessionLayer is not mounted on this route",
            ))
    }
}
