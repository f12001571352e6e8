//! The systems, each served by [`tessera_demo::serve`] on a free loopback port,
//! so they share the HTTP server and differ only in what they do per request.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, KeysInterface},
    prelude::{Builder, Config},
    types::Expiration,
};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tessera_demo::{build_app, build_engine, serve, DemoArgs};
use tokio::{net::TcpListener, task::JoinHandle};
use tower::{service_fn, Layer as _};

use super::{Error, System};

/// The secret every system signs its cookies with (tower-sessions takes a 64-byte key).
const SECRET: &str = "load benchmark secret, long enough for HMAC-SHA256 and then some more!!";
/// Session lifetime for every system.
const TTL: Duration = Duration::from_secs(3600);
/// Connections each baseline's fred pool opens, as many as the Tessera store's default pool.
const POOL_SIZE: usize = 2;
/// The rawget baseline's cookie.
const RAW_COOKIE: &str = "raw";
/// The hello ceiling's cookie.
const HELLO_COOKIE: &str = "hello";
/// Near-cache room of `tessera-cached`: every session of a run fits.
const NEAR_CACHE_ENTRIES: usize = 100_000;

/// A system serving on `addr`.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting; open connections end when the client closes them.
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

/// Starts `system` against the Redis at `url`. Call inside the server runtime.
pub(crate) async fn start(system: System, url: &str, metrics: bool) -> Result<Running, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| Error::new(format!("cannot listen on 127.0.0.1: {err}")))?;
    let addr = listener
        .local_addr()
        .map_err(|err| Error::new(format!("cannot read the listening address: {err}")))?;
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        Error::new(format!("{system}: {what} failed: {err}"))
    };
    let task = match system {
        System::Tessera | System::TesseraCached => {
            let mut args = DemoArgs::for_tests()
                .with_redis(url)
                .with_secrets(vec![SECRET.to_owned()])
                .with_ttl(TTL.as_secs());
            if system == System::TesseraCached {
                args = args.with_near_cache(NEAR_CACHE_ENTRIES);
            }
            let engine = build_engine(&args)
                .await
                .map_err(|err| fail("connecting the engine", &err))?;
            let recorder = if metrics {
                Some(
                    tessera_middleware::install_prometheus_recorder()
                        .map_err(|err| fail("installing the Prometheus recorder", &err))?,
                )
            } else {
                None
            };
            let app = build_app(engine, &args, recorder)
                .map_err(|err| fail("building the demo app", &err))?;
            tokio::spawn(serve(listener, app))
        }
        System::Rawget => {
            let pool = connect_pool(url)
                .await
                .map_err(|err| fail("connecting", &err))?;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let pool = pool.clone();
                async move { Ok::<_, Infallible>(rawget(&pool, &req).await) }
            });
            tokio::spawn(serve(listener, service))
        }
        System::Hello => {
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(hello(&req))
            });
            tokio::spawn(serve(listener, service))
        }
        System::TowerSessions => {
            use tower_sessions::{cookie::Key, Expiry, SessionManagerLayer};
            let pool = connect_pool(url)
                .await
                .map_err(|err| fail("connecting", &err))?;
            let store = tower_sessions_redis_store::RedisStore::new(pool);
            let layer = SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(
                    tower_sessions::cookie::time::Duration::seconds(TTL.as_secs() as i64),
                ))
                .with_signed(Key::from(SECRET.as_bytes()));
            let service = layer.layer(service_fn(
                |req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(tower_sessions_handler(&req).await)
                },
            ));
            tokio::spawn(serve(listener, service))
        }
    };
    Ok(Running { addr, task })
}

async fn connect_pool(url: &str) -> Result<Pool, String> {
    let config = Config::from_url(url).map_err(|err| err.to_string())?;
    let pool = Builder::from_config(config)
        .with_performance_config(|perf| perf.default_command_timeout = Duration::from_secs(1))
        .build_pool(POOL_SIZE)
        .map_err(|err| err.to_string())?;
    pool.connect_pool();
    tokio::time::timeout(Duration::from_secs(5), pool.wait_for_connect())
        .await
        .map_err(|_| "no connection within 5 s".to_owned())?
        .map_err(|err| err.to_string())?;
    Ok(pool)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn views(n: u64) -> Response<Full<Bytes>> {
    text(StatusCode::OK, format!("{n} views"))
}

/// The cookie value named `name`, if the request has one.
fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// One Redis command per request: `SET` a new key for a request without cookie, `GET` for
/// `/views`, `SET` for `/`.
async fn rawget<B>(pool: &Pool, req: &Request<B>) -> Response<Full<Bytes>> {
    let existing = cookie(req, RAW_COOKIE).filter(|id| id.len() == 22);
    let ttl = Some(Expiration::EX(TTL.as_secs() as i64));
    let client = pool.next();
    let result = match (req.uri().path(), existing) {
        ("/views", Some(id)) => client
            .get::<Option<u64>, _>(format!("raw:{{{id}}}"))
            .await
            .map(|v| (views(v.unwrap_or(0)), None)),
        ("/", Some(id)) => client
            .set::<(), _, _>(format!("raw:{{{id}}}"), 1u64, ttl, None, false)
            .await
            .map(|()| (views(1), None)),
        ("/" | "/views", None) => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).expect("the OS random source works");
            let id = URL_SAFE_NO_PAD.encode(bytes);
            client
                .set::<(), _, _>(format!("raw:{{{id}}}"), 1u64, ttl, None, false)
                .await
                .map(|()| (views(1), Some(id)))
        }
        _ => return text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    match result {
        Ok((mut response, new_id)) => {
            if let Some(id) = new_id {
                let value = format!(
                    "{RAW_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
                    TTL.as_secs()
                );
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::try_from(value).expect("base64url is a valid header value"),
                );
            }
            response
        }
        Err(err) => text(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {err}\n")),
    }
}

/// The ceiling: the same server and routes, no Redis, no session. A request without cookie gets
/// one (so the harness can prime "sessions" as for the others); nothing is stored.
fn hello<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    if !matches!(req.uri().path(), "/" | "/views") {
        return text(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    let mut response = views(1);
    if cookie(req, HELLO_COOKIE).is_none() {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        let value = format!(
            "{HELLO_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            URL_SAFE_NO_PAD.encode(bytes),
            TTL.as_secs()
        );
        response.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::try_from(value).expect("base64url is a valid header value"),
        );
    }
    response
}

/// The demo's `/` and `/views` on a tower-sessions session (also the criterion benches').
pub async fn tower_sessions_handler<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let Some(session) = req.extensions().get::<tower_sessions::Session>().cloned() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no session layer\n".to_owned(),
        );
    };
    let result = match req.uri().path() {
        "/" => match session.get::<u64>("views").await {
            Ok(v) => {
                let n = v.unwrap_or(0) + 1;
                session.insert("views", n).await.map(|()| n)
            }
            Err(err) => Err(err),
        },
        "/views" => session.get::<u64>("views").await.map(|v| v.unwrap_or(0)),
        _ => return text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    match result {
        Ok(n) => views(n),
        Err(err) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("session error: {err}\n"),
        ),
    }
}
