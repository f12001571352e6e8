//! A strongly typed session: one struct in one field, with a version number so that a deploy
//! which changes the struct reads what the previous deploy wrote (here: migrates version 1, and
//! starts over from anything it does not know). Handlers take `GuestSession` as an argument.
//!
//! `cargo run -p tessera-middleware --features axum --example typed`, then
//! `curl -c j -b j localhost:3003/` and `curl -c j -b j 'localhost:3003/theme?dark'`.

use axum::{
    extract::FromRequestParts,
    http::request::Parts,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde::{Deserialize, Serialize};
use tessera_middleware::{
    engine::{Error, ErrorKind, MemoryStore, SessionConfig, SessionEngine},
    Session, SessionLayer, SigningKeys,
};

/// The session field that holds the struct.
const FIELD: &str = "guest";

/// Bumped with every change of [`Guest`] that older data does not decode into.
const VERSION: u32 = 2;

/// What a visitor's session holds, as of this deploy.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Guest {
    visits: u64,
    theme: Theme,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
enum Theme {
    #[default]
    Light,
    Dark,
}

/// What the previous deploy stored (version 1): a count and a boolean.
#[derive(Deserialize)]
struct GuestV1 {
    visits: u64,
    dark: bool,
}

/// The stored form: the struct and the version that wrote it.
#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u32,
    data: T,
}

/// Only the version, to decide how to read the rest.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The typed view of the request's session.
struct GuestSession {
    session: Session,
    guest: Guest,
}

impl GuestSession {
    async fn load(session: Session) -> Result<Self, Error> {
        // A field this code cannot read (another type, a version it does not know) starts over
        // rather than failing every request of that visitor.
        let version = match session.get::<VersionOnly>(FIELD).await {
            Ok(found) => found.map(|v| v.version),
            Err(err) if err.kind() == ErrorKind::Decode => None,
            Err(err) => return Err(err),
        };
        let guest = match version {
            Some(VERSION) => session
                .get::<Versioned<Guest>>(FIELD)
                .await?
                .map(|v| v.data),
            Some(1) => session
                .get::<Versioned<GuestV1>>(FIELD)
                .await?
                .map(|v| Guest {
                    visits: v.data.visits,
                    theme: if v.data.dark {
                        Theme::Dark
                    } else {
                        Theme::Light
                    },
                }),
            _ => None,
        };
        Ok(GuestSession {
            session,
            guest: guest.unwrap_or_default(),
        })
    }

    /// Stores the struct; the commit after the handler writes it only if it changed.
    async fn save(&self) -> Result<(), Error> {
        let stored = Versioned {
            version: VERSION,
            data: &self.guest,
        };
        self.session.insert(FIELD, &stored).await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for GuestSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // A store error answers with its status (503 while Redis is unavailable).
        GuestSession::load(session)
            .await
            .map_err(IntoResponse::into_response)
    }
}

async fn visit(mut guest: GuestSession) -> Result<String, Error> {
    guest.guest.visits += 1;
    guest.save().await?;
    Ok(format!("{:?}", guest.guest))
}

async fn theme(mut guest: GuestSession, uri: axum::http::Uri) -> Result<String, Error> {
    guest.guest.theme = match uri.query() {
        Some("dark") => Theme::Dark,
        _ => Theme::Light,
    };
    guest.save().await?;
    Ok(format!("{:?}", guest.guest))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    let keys = SigningKeys::new(["replace me with 32+ random bytes from a secret store"])?;
    let app = Router::new()
        .route("/", get(visit))
        .route("/theme", get(theme))
        .layer(
            SessionLayer::builder(engine, keys)
                .with_secure(false)
                .build()?,
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3003").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
