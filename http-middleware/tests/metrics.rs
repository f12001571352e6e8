//! The layer's and the engine's metrics, and the Prometheus recorder.

use cookie::Cookie;
use http::{HeaderValue, StatusCode};
use tessera_demo::DemoApp;
use tessera_engine::testing::{Fault, FaultStore};
use tessera_engine::{MemoryStore, SessionConfig, SESSION_ID_LEN};
use tessera_middleware::{FailurePolicy, SessionLayer};
use tower::Layer;

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// 12. Metrics
// ---------------------------------------------------------------------------------------------

/// The value of one series in Prometheus text, 0 when absent.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn metrics_count_requests_and_rejected_cookies() {
    let handle = tessera_middleware::install_prometheus_recorder().expect("recorder");
    // Idempotent.
    tessera_middleware::install_prometheus_recorder().expect("second install");

    const BAD_SIG: &str = "tessera_http_rejected_cookies_total{reason=\"bad_signature\"}";
    const OVERSIZED: &str = "tessera_http_rejected_cookies_total{reason=\"oversized\"}";
    const NON_ASCII: &str = "tessera_http_rejected_cookies_total{reason=\"non_ascii_value\"}";
    const OK: &str = "tessera_http_requests_total{outcome=\"ok\"}";
    const STORE_ERROR: &str = "tessera_http_requests_total{outcome=\"store_error\"}";
    const TOO_LARGE: &str = "tessera_http_requests_total{outcome=\"too_large\"}";
    const FAIL_OPEN: &str = "tessera_http_requests_total{outcome=\"fail_open\"}";

    let before = handle.render();
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), SessionConfig::default().with_max_size(100));
    let svc = app(&engine);
    let c = establish(&svc).await;
    let sig_start = SESSION_ID_LEN + 1;
    let tampered = Cookie::new(COOKIE, flip(c.value(), sig_start + 10));
    call(&svc, get("/views", Some(&tampered)))
        .await
        .assert_ok("0 views");
    let oversized = Cookie::new(COOKIE, "A".repeat(500));
    call(&svc, get("/views", Some(&oversized)))
        .await
        .assert_ok("0 views");
    let raw = HeaderValue::from_bytes(b"koa:sess=\xff").unwrap();
    call(&svc, get_with_headers("/views", vec![raw]))
        .await
        .assert_ok("0 views");
    let r = call(
        &svc,
        put(
            "/session/big",
            Some(&c),
            &format!("\"{}\"", "x".repeat(500)),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let failing = app(&engine_on(
        FaultStore::new(MemoryStore::new(), Fault::FailAll),
        SessionConfig::default(),
    ));
    let r = call(&failing, get("/", None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let fail_open = app_with(
        &SessionLayer::builder(
            engine_on(
                FaultStore::new(MemoryStore::new(), Fault::FailAll),
                SessionConfig::default(),
            ),
            keys(&[SECRET_A]),
        )
        .with_failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap(),
    );
    call(&fail_open, get("/", None)).await.assert_ok("1 views");

    let after = handle.render();
    for (series_name, at_least) in [
        (BAD_SIG, 1.0),
        (OVERSIZED, 1.0),
        (NON_ASCII, 1.0),
        (OK, 4.0),
        (STORE_ERROR, 1.0),
        (TOO_LARGE, 1.0),
        (FAIL_OPEN, 1.0),
    ] {
        let (b, a) = (series(&before, series_name), series(&after, series_name));
        assert!(a >= b + at_least, "{series_name}: {b} -> {a}\n{after}");
    }
    assert!(
        after.contains("tessera_http_middleware_duration_seconds_bucket"),
        "{after}"
    );

    // The demo's /metrics route renders the same registry.
    let with_metrics = SessionLayer::builder(engine.clone(), keys(&[SECRET_A]))
        .with_secure(false)
        .build()
        .unwrap()
        .layer(DemoApp::new(engine, Some(handle)));
    let r = call(&with_metrics, get("/metrics", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("tessera_http_requests_total"), "{}", r.body);
    assert!(r.body.contains(BAD_SIG), "{}", r.body);
}
