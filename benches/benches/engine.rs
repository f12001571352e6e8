//! Criterion micro-benchmarks: ids, key derivation, cookie signing, record encoding, a commit and
//! load cycle on the memory store, and the middleware's overhead per request.
//!
//! `cargo bench -p tessera-benches` (about a minute: every benchmark measures for 2 s).

use std::{
    convert::Infallible,
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tessera_engine::{
    record::{decode_value, encode_value},
    CookieAction, KeyDeriver, KeySchema, MemoryStore, Session, SessionConfig, SessionEngine,
    SessionId,
};
use tessera_middleware::{SessionLayer, SigningKeys};
use tower::{Layer as _, ServiceExt as _};

const SECRET: &str = "a benchmark secret that is long enough to sign with";
const COOKIE: &str = "koa:sess";

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

// ---------------------------------------------------------------------------------------------
// Ids, keys, cookies
// ---------------------------------------------------------------------------------------------

fn ids(c: &mut Criterion) {
    c.bench_function("id/generate", |b| b.iter(SessionId::generate));
    let text = SessionId::generate().to_string();
    c.bench_function("id/parse", |b| {
        b.iter(|| black_box(text.as_str()).parse::<SessionId>().unwrap())
    });
    let id = SessionId::generate();
    for (name, hashed) in [("key/hashed", true), ("key/plain", false)] {
        let keys = KeyDeriver::new(KeySchema::default(), hashed);
        c.bench_function(name, |b| b.iter(|| keys.key(black_box(&id))));
    }
}

fn cookies(c: &mut Criterion) {
    let keys = SigningKeys::new([SECRET]).unwrap();
    let id = SessionId::generate();
    c.bench_function("cookie/sign", |b| {
        b.iter(|| keys.sign(black_box(COOKIE), black_box(&id)))
    });
    let value = keys.sign(COOKIE, &id);
    c.bench_function("cookie/verify", |b| {
        b.iter(|| keys.verify(black_box(COOKIE), black_box(&value)).unwrap())
    });
}

// ---------------------------------------------------------------------------------------------
// A realistic 10-field session
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CartItem {
    sku: String,
    qty: u32,
    price_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Prefs {
    theme: String,
    newsletter: bool,
    time_zone: String,
}

/// The values of a logged-in shop user's session.
#[derive(Debug, Clone, PartialEq)]
struct Shopper {
    user_id: u64,
    username: String,
    email: String,
    roles: Vec<String>,
    csrf: String,
    locale: String,
    cart: Vec<CartItem>,
    last_seen_ms: u64,
    flash: Option<String>,
    prefs: Prefs,
}

const FIELDS: [&str; 10] = [
    "user_id",
    "username",
    "email",
    "roles",
    "csrf",
    "locale",
    "cart",
    "last_seen_ms",
    "flash",
    "prefs",
];

impl Shopper {
    fn sample() -> Self {
        Shopper {
            user_id: 4_211_337,
            username: "ada.lovelace".into(),
            email: "ada.lovelace@example.com".into(),
            roles: vec!["user".into(), "editor".into(), "billing".into()],
            csrf: "kq3v0aT6yQ2m8ZP1xN4rW7sLd9Hc5JbEoFgUiYtRe0A".into(),
            locale: "en-GB".into(),
            cart: vec![
                CartItem {
                    sku: "BOOK-0451-NOTES".into(),
                    qty: 1,
                    price_cents: 2_499,
                },
                CartItem {
                    sku: "PEN-FOUNTAIN-BLK".into(),
                    qty: 2,
                    price_cents: 1_250,
                },
                CartItem {
                    sku: "INK-BOTTLE-50ML".into(),
                    qty: 3,
                    price_cents: 899,
                },
            ],
            last_seen_ms: 1_767_225_600_000,
            flash: Some("Your profile was saved.".into()),
            prefs: Prefs {
                theme: "dark".into(),
                newsletter: false,
                time_zone: "Europe/London".into(),
            },
        }
    }

    fn encode(&self) -> Vec<(&'static str, Bytes)> {
        let values = [
            encode_value(&self.user_id),
            encode_value(&self.username),
            encode_value(&self.email),
            encode_value(&self.roles),
            encode_value(&self.csrf),
            encode_value(&self.locale),
            encode_value(&self.cart),
            encode_value(&self.last_seen_ms),
            encode_value(&self.flash),
            encode_value(&self.prefs),
        ];
        FIELDS
            .into_iter()
            .zip(values)
            .map(|(name, value)| (name, value.unwrap()))
            .collect()
    }

    fn decode(fields: &[(&'static str, Bytes)]) -> Self {
        fn d<T: serde::de::DeserializeOwned>(fields: &[(&'static str, Bytes)], i: usize) -> T {
            decode_value(fields[i].0, &fields[i].1).unwrap()
        }
        Shopper {
            user_id: d(fields, 0),
            username: d(fields, 1),
            email: d(fields, 2),
            roles: d(fields, 3),
            csrf: d(fields, 4),
            locale: d(fields, 5),
            cart: d(fields, 6),
            last_seen_ms: d(fields, 7),
            flash: d(fields, 8),
            prefs: d(fields, 9),
        }
    }

    async fn store(&self, session: &Session) {
        session.insert("user_id", &self.user_id).await.unwrap();
        session.insert("username", &self.username).await.unwrap();
        session.insert("email", &self.email).await.unwrap();
        session.insert("roles", &self.roles).await.unwrap();
        session.insert("csrf", &self.csrf).await.unwrap();
        session.insert("locale", &self.locale).await.unwrap();
        session.insert("cart", &self.cart).await.unwrap();
        session
            .insert("last_seen_ms", &self.last_seen_ms)
            .await
            .unwrap();
        session.insert("flash", &self.flash).await.unwrap();
        session.insert("prefs", &self.prefs).await.unwrap();
    }

    async fn load(session: &Session) -> Self {
        async fn get<T: serde::de::DeserializeOwned>(session: &Session, field: &str) -> T {
            session.get(field).await.unwrap().expect("field present")
        }
        Shopper {
            user_id: get(session, "user_id").await,
            username: get(session, "username").await,
            email: get(session, "email").await,
            roles: get(session, "roles").await,
            csrf: get(session, "csrf").await,
            locale: get(session, "locale").await,
            cart: get(session, "cart").await,
            last_seen_ms: get(session, "last_seen_ms").await,
            flash: get(session, "flash").await,
            prefs: get(session, "prefs").await,
        }
    }
}

fn records(c: &mut Criterion) {
    let shopper = Shopper::sample();
    c.bench_function("record/encode_10_fields", |b| {
        b.iter(|| black_box(&shopper).encode())
    });
    let encoded = shopper.encode();
    assert_eq!(Shopper::decode(&encoded), shopper);
    c.bench_function("record/decode_10_fields", |b| {
        b.iter(|| Shopper::decode(black_box(&encoded)))
    });

    let rt = runtime();
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let id = rt.block_on(async {
        let session = engine.session(None);
        shopper.store(&session).await;
        match session.commit().await.unwrap().cookie {
            CookieAction::Set { id, .. } => id,
            other => panic!("a new session sets a cookie, got {other:?}"),
        }
    });
    let tick = AtomicU64::new(0);
    // Load the stored session, decode every field, change one, commit (one update).
    c.bench_function("session/load_decode_modify_commit_10_fields", |b| {
        b.to_async(&rt).iter(|| async {
            let session = engine.session(Some(id));
            let mut loaded = Shopper::load(&session).await;
            loaded.last_seen_ms += tick.fetch_add(1, Ordering::Relaxed) + 1;
            session
                .insert("last_seen_ms", &loaded.last_seen_ms)
                .await
                .unwrap();
            let committed = session.commit().await.unwrap();
            assert_eq!(committed.writes, 1);
        })
    });
    // Create a 10-field session, then destroy it again (so the store does not grow).
    c.bench_function("session/create_10_fields_and_destroy", |b| {
        b.to_async(&rt).iter(|| async {
            let session = engine.session(None);
            shopper.store(&session).await;
            let CookieAction::Set { id, .. } = session.commit().await.unwrap().cookie else {
                panic!("a new session sets a cookie");
            };
            let session = engine.session(Some(id));
            session.destroy().await.unwrap();
            session.commit().await.unwrap();
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Middleware overhead per request (memory store)
// ---------------------------------------------------------------------------------------------

/// The demo's view counter: `/` increments, `/views` reads. Without the layer there is no session
/// and it answers 0; the difference is the middleware's (and the engine's) cost.
async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let views = match req.extensions().get::<Session>() {
        None => Ok(0),
        Some(session) if req.uri().path() == "/" => {
            async {
                let views = session.get::<u64>("views").await?.unwrap_or(0) + 1;
                session.insert("views", &views).await?;
                Ok::<_, tessera_engine::Error>(views)
            }
            .await
        }
        Some(session) => session.get::<u64>("views").await.map(|v| v.unwrap_or(0)),
    };
    Ok(match views {
        Ok(views) => Response::new(Full::new(Bytes::from(format!("{views} views")))),
        Err(_) => {
            let mut response = Response::new(Full::default());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    })
}

fn request(path: &str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().uri(path);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Full::default()).unwrap()
}

/// The `name=value` of the session cookie a first request to `service` sets.
fn first_cookie<S>(rt: &tokio::runtime::Runtime, service: &S) -> String
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone,
{
    rt.block_on(async {
        let response = service.clone().oneshot(request("/", None)).await.unwrap();
        let raw = response
            .headers()
            .get(header::SET_COOKIE)
            .expect("a new session sets a cookie")
            .to_str()
            .unwrap();
        raw.split(';').next().unwrap().to_owned()
    })
}

/// One request through `service`, answered 200.
async fn serve<S>(service: &S, path: &str, cookie: Option<&str>) -> Response<Full<Bytes>>
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone,
{
    let response = service
        .clone()
        .oneshot(request(path, cookie))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// Tessera's layer and tower-sessions' side by side on their memory stores, with the handler
/// alone as the baseline: `middleware/{read,write,new}/{without_layer,tessera,tower-sessions}`.
/// Both sign their cookie; tower-sessions as the load benchmark runs it (idle expiry, so it
/// saves the session on every request).
fn middleware(c: &mut Criterion) {
    use tower_sessions::{cookie::Key, Expiry, SessionManagerLayer};

    let rt = runtime();
    let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let layer = SessionLayer::builder(engine, SigningKeys::new([SECRET]).unwrap())
        .with_secure(false)
        .build()
        .unwrap();
    let bare = tower::service_fn(handler);
    let tessera = layer.layer(tower::service_fn(handler));
    let peer = SessionManagerLayer::new(tower_sessions::MemoryStore::default())
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(
            tower_sessions::cookie::time::Duration::seconds(3600),
        ))
        .with_signed(Key::from(&[7u8; 64]))
        .layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(tessera_benches::loadtest::tower_sessions_handler(&req).await)
        }));

    // An established session each: one request without a cookie, keep what it sets.
    let tessera_cookie = first_cookie(&rt, &tessera);
    assert!(tessera_cookie.starts_with(COOKIE));
    let peer_cookie = first_cookie(&rt, &peer);

    for (scenario, path, with_cookie) in [
        ("read", "/views", true),
        ("write", "/", true),
        ("new", "/", false),
    ] {
        let mut group = c.benchmark_group(format!("middleware/{scenario}"));
        let cookie = |c: &str| with_cookie.then(|| c.to_owned());
        let (tessera_cookie, peer_cookie) = (cookie(&tessera_cookie), cookie(&peer_cookie));
        group.bench_function("without_layer", |b| {
            b.to_async(&rt)
                .iter(|| serve(&bare, path, tessera_cookie.as_deref()))
        });
        group.bench_function("tessera", |b| {
            b.to_async(&rt)
                .iter(|| serve(&tessera, path, tessera_cookie.as_deref()))
        });
        group.bench_function("tower-sessions", |b| {
            b.to_async(&rt)
                .iter(|| serve(&peer, path, peer_cookie.as_deref()))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = ids, cookies, records, middleware
}
criterion_main!(benches);
