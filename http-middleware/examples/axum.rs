//! The seed's example on axum, with the session as an extractor.
//!
//! `cargo run -p tessera-middleware --features axum --example axum`.

use axum::{http::StatusCode, routing::get, Router};
use tessera_middleware::{
    axum::SessionExtractor,
    engine::{MemoryStore, SessionConfig, SessionEngine},
    SessionLayer, SigningKeys,
};

async fn count(SessionExtractor(session): SessionExtractor) -> Result<String, StatusCode> {
    let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
    let views = session
        .get::<u64>("views")
        .await
        .map_err(unavailable)?
        .unwrap_or(0)
        + 1;
    session.insert("views", &views).await.map_err(unavailable)?;
    Ok(format!("{views} views"))
}

async fn logout(SessionExtractor(session): SessionExtractor) -> StatusCode {
    match session.destroy().await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default());
    let keys = SigningKeys::new(["replace me with 32+ random bytes from a secret store"])?;
    let app = Router::new()
        .route("/", get(count))
        .route("/logout", get(logout))
        .layer(SessionLayer::new(engine, keys).with_secure(false)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
