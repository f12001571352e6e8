//! The one table from engine errors to HTTP statuses, shared by the layer's commit handling and
//! the demo's routes, so a handler error and a commit error of the same kind answer alike.

use http::StatusCode;
use tessera_engine::{Error, ErrorKind};

/// The HTTP status for an engine error:
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
/// The layer's [`FailurePolicy::FailOpen`](crate::FailurePolicy::FailOpen) applies to the 503
/// class only.
pub fn error_status(err: &Error) -> StatusCode {
    status_of(err.kind())
}

/// [`error_status`] by kind.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    use ErrorKind as K;
    match kind {
        K::Redis | K::Timeout | K::LoadFailed | K::NotDurable => StatusCode::SERVICE_UNAVAILABLE,
        K::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        K::InvalidField | K::InvalidId => StatusCode::BAD_REQUEST,
        K::NotLoggedIn => StatusCode::UNAUTHORIZED,
        K::SessionCap | K::SessionEnded => StatusCode::CONFLICT,
        K::Unsupported => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether `kind` means the store is unavailable (the 503 class): retryable, and the only class
/// fail-open may serve through.
pub(crate) fn is_unavailable(kind: ErrorKind) -> bool {
    status_of(kind) == StatusCode::SERVICE_UNAVAILABLE
}
