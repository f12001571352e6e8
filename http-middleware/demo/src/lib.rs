//! The demo service: the seed's example (a view counter) plus routes that exercise every session
//! operation, served on hyper with the session layer. `src/main.rs` is its command line; the
//! integration tests and the load benchmark serve the same app in-process.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, time::Duration};

use bytes::Bytes;
use clap::{parser::ValueSource, ArgAction, CommandFactory, FromArgMatches, Parser};
use http::{header, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tessera_engine::{Session, SessionEngine};
use tokio::net::TcpListener;
use tower_service::Service;

/// Largest accepted `PUT /session/{field}` body.
const MAX_BODY: usize = 64 * 1024;

/// The demo's command line; every flag can also come from its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "demo",
    about = "Tessera demo: the koa-session-redis3 example on hyper"
)]
#[non_exhaustive]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Redis URL (redis://, rediss://, redis-cluster://, redis-sentinel://); absent means the
    /// in-process memory store.
    #[arg(long = "redis", env = "TESSERA_REDIS_URL")]
    pub redis: Option<String>,
    /// Redis key prefix (the seed's keySchema).
    #[arg(long, env = "TESSERA_KEY_SCHEMA", default_value = "tessera:sess:")]
    pub key_schema: String,
    /// Idle session lifetime in seconds.
    #[arg(long, env = "TESSERA_TTL", default_value_t = 3600)]
    pub ttl: u64,
    /// Cookie signing secret, at least 16 bytes (32+ random bytes advised); repeat the flag for
    /// rotation: the first signs, later ones only verify. A secret may contain any character,
    /// commas included. TESSERA_SECRETS holds one secret per line, first line signing. Absent
    /// means a random secret for this process only.
    #[arg(long = "secret", env = "TESSERA_SECRETS", action = ArgAction::Append)]
    pub secrets: Vec<String>,
    /// Send the Secure cookie attribute (the demo serves plain http, so default false).
    #[arg(long, env = "TESSERA_COOKIE_SECURE", default_value_t = false, action = ArgAction::Set)]
    pub cookie_secure: bool,
    /// Per-command Redis timeout in milliseconds.
    #[arg(long, env = "TESSERA_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// Sessions kept in the near cache (served with no Redis command, kept coherent by Redis
    /// client tracking); 0 turns it off. Needs --redis (Redis 6 or later).
    #[arg(long, env = "TESSERA_NEAR_CACHE_ENTRIES", default_value_t = 0)]
    pub near_cache_entries: usize,
    /// The near cache's staleness bound in milliseconds: entries stop serving when their
    /// invalidation stream has not been confirmed for this long (40 to 60000).
    #[arg(long, env = "TESSERA_NEAR_CACHE_MAX_STALE_MS", default_value_t = 1000)]
    pub near_cache_max_stale_ms: u64,
    /// Compatibility profile: `koa-session-redis3` shares live sessions with a Koa app using
    /// koa-session-redis3 1.3.4 (its cookie pair, `--secret` as its app.keys, `--key-schema` and
    /// `--ttl` as its keySchema and ttl).
    #[arg(long, env = "TESSERA_COMPAT", value_enum)]
    pub compat: Option<Compat>,
    /// With `--compat`: upgrade mode. Sessions are native; a request with the seed's cookie pair
    /// has its session moved to the native layout (under `--native-key-schema`).
    #[arg(long, env = "TESSERA_UPGRADE", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", requires = "compat")]
    pub upgrade: bool,
    /// Upgrade mode: the key prefix of the native sessions (`--key-schema` is the seed's).
    #[arg(
        long,
        env = "TESSERA_NATIVE_KEY_SCHEMA",
        default_value = "tessera:sess:"
    )]
    pub native_key_schema: String,
    /// At most this many live sessions per user (0: no cap). Logins beyond it evict the least
    /// recently seen session or are refused, as --on-session-cap says.
    #[arg(long, env = "TESSERA_MAX_SESSIONS_PER_USER", default_value_t = 0)]
    pub max_sessions_per_user: u32,
    /// What a login beyond --max-sessions-per-user does: `evict` the least recently seen
    /// session, or `refuse` the login (409).
    #[arg(long, env = "TESSERA_ON_SESSION_CAP", value_enum, default_value_t = OnSessionCap::Evict)]
    pub on_session_cap: OnSessionCap,
    /// Upgrade mode: how long an old pair forwards to the session it moved to (the library's
    /// default when unset). Not a flag: for tests that check what an old pair finds after it.
    #[arg(skip)]
    pub upgrade_forward: Option<Duration>,
}

/// The `--on-session-cap` policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum OnSessionCap {
    /// Revoke the least recently seen session to make room.
    Evict,
    /// Refuse the login with 409.
    Refuse,
}

/// The `--compat` profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum Compat {
    /// koa-session-redis3 1.3.4 on koa 1.
    #[value(name = "koa-session-redis3")]
    KoaSessionRedis3,
}

impl DemoArgs {
    /// The demo binary's command line: `std::env::args_os()` with the environment as fallback.
    /// Exits with clap's message (and `--help`) as clap's `Parser::parse` does.
    pub fn from_command_line() -> Self {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Parses `args` (program name first) with the environment as fallback. Use this rather than
    /// clap's `Parser::try_parse_from`, which would take a multi-line `TESSERA_SECRETS` as one
    /// secret: clap splits a flag and its environment variable alike, and `--secret` must not be
    /// split at all.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let mut parsed = Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        if matches.value_source("secrets") == Some(ValueSource::EnvVariable) {
            parsed.secrets = split_secret_lines(&parsed.secrets);
        }
        Ok(parsed)
    }

    /// Arguments for tests: memory store, ephemeral port, a fixed secret.
    pub fn for_tests() -> Self {
        DemoArgs {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            redis: None,
            key_schema: "tessera:sess:".into(),
            ttl: 3600,
            secrets: vec!["a test secret that is long enough to sign with".into()],
            cookie_secure: false,
            redis_timeout_ms: 1000,
            near_cache_entries: 0,
            near_cache_max_stale_ms: 1000,
            compat: None,
            upgrade: false,
            native_key_schema: "tessera:sess:".into(),
            max_sessions_per_user: 0,
            on_session_cap: OnSessionCap::Evict,
            upgrade_forward: None,
        }
    }

    /// At most `max` sessions per user, beyond which logins evict (or with `refuse`, are
    /// refused).
    pub fn with_session_cap(mut self, max: u32, refuse: bool) -> Self {
        self.max_sessions_per_user = max;
        self.on_session_cap = if refuse {
            OnSessionCap::Refuse
        } else {
            OnSessionCap::Evict
        };
        self
    }

    /// Turns the near cache on with room for `entries` sessions.
    pub fn with_near_cache(mut self, entries: usize) -> Self {
        self.near_cache_entries = entries;
        self
    }

    /// The koa-session-redis3 profile with the seed's `keySchema`; `upgrade` for upgrade mode.
    pub fn with_koa_session_redis3(mut self, key_schema: &str, upgrade: bool) -> Self {
        self.compat = Some(Compat::KoaSessionRedis3);
        self.key_schema = key_schema.to_owned();
        self.upgrade = upgrade;
        self
    }

    /// Uses the Redis at `url`.
    pub fn with_redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(url.into());
        self
    }

    /// Replaces the signing secrets.
    pub fn with_secrets(mut self, secrets: Vec<String>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Sets the idle TTL in seconds.
    pub fn with_ttl(mut self, secs: u64) -> Self {
        self.ttl = secs;
        self
    }
}

/// `TESSERA_SECRETS` as secrets: one per line (a newline cannot occur in a one-line secret, a
/// comma can), a trailing `\r` dropped, blank lines skipped.
fn split_secret_lines(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|value| value.lines())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A configuration or start-up failure of the demo.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod build;
mod devices;
mod routes;

use routes::Route;

pub use self::build::{build_app, build_engine, build_service};

/// Serves `service` on `listener` with HTTP/1.1 keep-alive until the task is dropped.
pub async fn serve<S>(listener: TcpListener, service: S)
where
    S: Service<
            Request<hyper::body::Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning or exiting.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = conn.await {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
}

/// Runs the demo as the example binary does: prints `listening on http://ADDR` once it accepts
/// connections.
pub async fn run(args: DemoArgs) -> Result<(), BoxError> {
    let metrics = tessera_middleware::install_prometheus_recorder()?;
    let (_, app) = build_service(&args, Some(metrics)).await?;
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let _ = TokioExecutor::new();
    tokio::select! {
        () = serve(listener, app) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The demo's routes (see the README for the list).
#[derive(Debug, Clone)]
pub struct DemoApp {
    engine: SessionEngine,
    metrics: Option<PrometheusHandle>,
    /// Whether logins bind sessions to users (the native layout with a user key); the
    /// koa-session-redis3 profile logs in as it always did.
    per_user: bool,
}

impl DemoApp {
    /// The routes over `engine`; `/metrics` renders `metrics` when given.
    pub fn new(engine: SessionEngine, metrics: Option<PrometheusHandle>) -> Self {
        let per_user = engine.config().has_user_key();
        DemoApp {
            engine,
            metrics,
            per_user,
        }
    }
}

/// The first value of query parameter `name`.
fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl<B> Service<Request<B>> for DemoApp
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move {
            Ok(app.route(req).await.unwrap_or_else(|err| {
                let status = err.status();
                let mut response = text(status, format!("session error: {}\n", err.message()));
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                }
                response
            }))
        })
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

type Routed = tessera_engine::Result<Response<Full<Bytes>>>;

impl DemoApp {
    async fn route<B>(&self, req: Request<B>) -> Routed
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let session = req
            .extensions()
            .get::<Session>()
            .cloned()
            .expect("the demo app runs behind SessionLayer");
        let path = req.uri().path().to_owned();
        match routes::route(req.method(), &path) {
            Route::Home => {
                let views = session.get::<u64>("views").await?.unwrap_or(0) + 1;
                session.insert("views", &views).await?;
                Ok(text(StatusCode::OK, format!("{views} views")))
            }
            Route::Views => {
                let views = session.get::<u64>("views").await?.unwrap_or(0);
                Ok(text(StatusCode::OK, format!("{views} views")))
            }
            Route::Session => {
                let mut object = serde_json::Map::new();
                for key in session.keys().await? {
                    if let Some(value) = session.get::<serde_json::Value>(&key).await? {
                        object.insert(key, value);
                    }
                }
                let mut response = text(
                    StatusCode::OK,
                    serde_json::Value::Object(object).to_string(),
                );
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                Ok(response)
            }
            Route::PutField(field) => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(err) => {
                        return Ok(text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("body rejected: {err} (limit {MAX_BODY} bytes)\n"),
                        ))
                    }
                };
                let value: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(value) => value,
                    Err(err) => {
                        return Ok(text(
                            StatusCode::BAD_REQUEST,
                            format!("body is not JSON: {err}\n"),
                        ))
                    }
                };
                session.insert(field, &value).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::DeleteField(field) => {
                session.remove::<serde_json::Value>(&field).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Login => {
                let device = devices::device_info(&req);
                let user = match query_param(&req, "user") {
                    Some(user) => Some(user),
                    // A plain HTML form (the devices page) sends the name in its body.
                    None => devices::form_field(req.into_body(), "user").await,
                };
                let Some(user) = user.filter(|u| !u.is_empty()) else {
                    return Ok(text(StatusCode::BAD_REQUEST, "missing ?user=NAME\n"));
                };
                session.insert("user", &user).await?;
                if self.per_user {
                    session.login(&user, device).await?;
                } else {
                    session.regenerate().await?;
                }
                Ok(text(StatusCode::OK, format!("logged in as {user}\n")))
            }
            Route::Devices => devices::list_json(&session).await,
            Route::RevokeDevice(handle) => devices::revoke(&session, &handle).await,
            Route::LogoutEverywhere => {
                let keep = query_param(&req, "keep").is_some_and(|k| k == "current");
                session.logout_everywhere(keep).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::DevicesPage => devices::page(&session).await,
            Route::RevokeFromPage(handle) => devices::revoke_from_page(&session, &handle).await,
            Route::Logout => {
                session.destroy().await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Metrics => Ok(match &self.metrics {
                Some(handle) => {
                    let mut response = text(StatusCode::OK, handle.render());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                }
                None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
            }),
            Route::Healthz => Ok(match self.engine.ping().await {
                Ok(()) => text(StatusCode::OK, "ok\n"),
                Err(err) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("store unavailable: {}\n", err.message()),
                ),
            }),
            Route::NotFound => Ok(text(StatusCode::NOT_FOUND, "not found\n")),
        }
    }
}

#[cfg(test)]
mod tests;
