//! The seed's example on plain hyper: count views per visitor.
//!
//! `cargo run -p tessera-middleware --example hello` then `curl -c j -b j localhost:3001/`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tessera_middleware::{
    engine::{MemoryStore, SessionConfig, SessionEngine},
    Session, SessionLayer, SigningKeys,
};
use tokio::net::TcpListener;
use tower::{service_fn, Layer};

async fn handler(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session = req
        .extensions()
        .get::<Session>()
        .expect("SessionLayer is mounted");
    // `this.session = null` in the seed is `session.destroy()` here.
    if req.uri().path() == "/logout" {
        return Ok(match session.destroy().await {
            Ok(()) => Response::new(Full::from("bye")),
            Err(_) => status(StatusCode::SERVICE_UNAVAILABLE),
        });
    }
    let views = match session.get::<u64>("views").await {
        Ok(n) => n.unwrap_or(0) + 1,
        Err(_) => return Ok(status(StatusCode::SERVICE_UNAVAILABLE)),
    };
    if session.insert("views", &views).await.is_err() {
        return Ok(status(StatusCode::SERVICE_UNAVAILABLE));
    }
    Ok(Response::new(Full::from(format!("{views} views"))))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = code;
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Swap MemoryStore for `RedisStore::connect("redis-cluster://...").await?` in production.
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let keys = SigningKeys::new(["replace me with 32+ random bytes from a secret store"])?;
    let service = SessionLayer::builder(engine, keys)
        .with_secure(false)
.build()? // plain http on localhost
        .layer(service_fn(handler));

    let listener = TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
