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
    engine::{Error, MemoryStore, SessionConfig, SessionEngine},
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
    let answer = if req.uri().path() == "/logout" {
        session.destroy().await.map(|()| "bye".to_owned())
    } else {
        count(session).await.map(|views| format!("{views} views"))
    };
    Ok(match answer {
        Ok(text) => Response::new(Full::from(text)),
        // The one status table: 503 while the store is unavailable, and so on.
        Err(err) => status(err.status()),
    })
}

async fn count(session: &Session) -> Result<u64, Error> {
    session.update("views", |n: &mut u64| *n += 1).await
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = code;
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Swap MemoryStore for `RedisStore::connect("redis-cluster://...").await?` in production.
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    let keys = SigningKeys::new(["replace me with 32+ random bytes from a secret store"])?;
    // Plain http on localhost: no Secure attribute.
    let layer = SessionLayer::builder(engine, keys)
        .with_secure(false)
        .build()?;
    let service = layer.layer(service_fn(handler));

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
