//! The engine's only HTTP knowledge, behind features: the one table from errors to statuses
//! (`http`), and, with `axum-core`, the session as an axum extractor and errors as responses.
//! The session logic itself never depends on any of it.

use http::StatusCode;

use crate::error::{Error, ErrorKind};

impl ErrorKind {
    /// The HTTP status for an error of this kind, the one table every layer and handler uses:
    ///
    /// | kind | status |
    /// | --- | --- |
    /// | `Redis`, `Timeout`, `LoadFailed`, `NotDurable` | 503: the store is unavailable, retry later (send `Retry-After`) |
    /// | `TooLarge` | 413 |
    /// | `InvalidField`, `InvalidId` | 400 |
    /// | `NotLoggedIn` | 401 |
    /// | `SessionCap`, `SessionEnded` | 409: the login was refused, or the session ended meanwhile |
    /// | `Unsupported` | 501 |
    /// | `Decode`, `Encode`, `Config`, `IdCollision`, any other | 500: a bug or bad data, retrying will not help |
    ///
    /// ```
    /// use http::StatusCode;
    /// use tessera_engine::ErrorKind;
    ///
    /// assert_eq!(ErrorKind::Timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(ErrorKind::TooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    /// ```
    pub fn status(self) -> StatusCode {
        use ErrorKind as K;
        match self {
            K::Redis | K::Timeout | K::LoadFailed | K::NotDurable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            K::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            K::InvalidField | K::InvalidId => StatusCode::BAD_REQUEST,
            K::NotLoggedIn => StatusCode::UNAUTHORIZED,
            K::SessionCap | K::SessionEnded => StatusCode::CONFLICT,
            K::Unsupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether this kind means the store is unavailable (the 503 class): retryable.
    pub fn is_unavailable(self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }

    /// The response body for this kind: what the client may know, never the error's message
    /// (which can name hosts and keys).
    #[cfg(feature = "axum-core")]
    fn public_text(self) -> &'static str {
        use ErrorKind as K;
        match self {
            K::Redis | K::Timeout | K::LoadFailed | K::NotDurable => {
                "the session store is unavailable; retry later"
            }
            K::TooLarge => "the session is too large",
            K::InvalidField => "invalid session field",
            K::InvalidId => "invalid session id",
            K::NotLoggedIn => "not logged in",
            K::SessionCap => "too many sessions for this user",
            K::SessionEnded => "the session ended",
            K::Unsupported => "not supported by this session store",
            _ => "internal session error",
        }
    }
}

impl Error {
    /// The HTTP status for this error ([`ErrorKind::status`]'s table).
    ///
    /// ```
    /// use http::StatusCode;
    /// use tessera_engine::{Error, ErrorKind};
    ///
    /// let err = Error::new(ErrorKind::SessionCap, "the user has 5 sessions");
    /// assert_eq!(err.status(), StatusCode::CONFLICT);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.kind().status()
    }
}

#[cfg(feature = "axum-core")]
mod axum {
    use axum_core::{
        extract::FromRequestParts,
        response::{IntoResponse, Response},
    };
    use http::{header, request::Parts, HeaderValue, StatusCode};

    use crate::{error::Error, session::Session};

    /// A handler can return `Result<_, tessera_engine::Error>`: the error answers with its
    /// [`status`](Error::status), a short text that leaks nothing of the message, and
    /// `Retry-After: 1` when the store is unavailable. The message itself is logged. The
    /// response carries the [`ErrorKind`](crate::ErrorKind) in its extensions, so a session
    /// layer can apply its own `Retry-After` (tessera-middleware's `with_retry_after`).
    impl IntoResponse for Error {
        fn into_response(self) -> Response {
            let kind = self.kind();
            let status = kind.status();
            if status.is_server_error() {
                tracing::warn!(error = %self, "session error answered {status}");
            }
            let mut response = (status, kind.public_text()).into_response();
            response.extensions_mut().insert(kind);
            if kind.is_unavailable() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    }

    /// The request's session as a handler argument (`session: Session`); a 500 when no session
    /// layer is mounted on the route.
    impl<S: Send + Sync> FromRequestParts<S> for Session {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts.extensions.get::<Session>().cloned().ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "no session layer is mounted on this route",
            ))
        }
    }
}
