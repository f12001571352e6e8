//! The seed's example on axum: the session is a handler argument, and its errors are responses
//! (503 with Retry-After while Redis is unavailable).
//!
//! `cargo run -p tessera-middleware --features axum --example axum`.

use axum::{http::StatusCode, routing::get, Router};
use tessera_middleware::{
    engine::{Error, MemoryStore, SessionConfig, SessionEngine},
    Session, SessionLayer, SigningKeys,
};

async fn count(session: Session) -> Result<String, Error> {
    let views = session.update("views", |n: &mut u64| *n += 1).await?;
    Ok(format!("{views} views"))
}

async fn logout(session: Session) -> Result<StatusCode, Error> {
    session.destroy().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    let keys = SigningKeys::new(["replace me with 32+ random bytes from a secret store"])?;
    let app = Router::new()
        .route("/", get(count))
        .route("/logout", get(logout))
        .layer(
            SessionLayer::builder(engine, keys)
                .with_secure(false)
                .build()?,
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
