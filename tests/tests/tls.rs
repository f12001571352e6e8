//! `rediss://` through rustls against a TLS-enabled redis-server with a private CA made here.

use std::{path::Path, process::Command, time::Duration};

use tessera_engine::{CookieAction, RedisStore, SessionConfig, SessionEngine};
use tessera_tests::support::{free_port, RedisServer};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the TLS test (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=tessera test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );

    let tls_port = free_port().to_string();
    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let pem = std::fs::read(d.join("ca.pem")).unwrap();

    let store = RedisStore::builder(url.clone())
        .with_tls_root_certs_pem(pem.clone())
        .connect()
        .await
        .expect("TLS connection with the private CA");
    let engine = SessionEngine::new(store, SessionConfig::default()).unwrap();
    let s = engine.session(None);
    s.insert("over", "tls").await.unwrap();
    let CookieAction::Set { id, .. } = s.commit().await.unwrap().cookie else {
        panic!()
    };
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<String>("over").await.unwrap().as_deref(),
        Some("tls")
    );
    let key = engine.key(&id);
    let plain = tessera_tests::support::redis_cli(server.port(), &["EXISTS", &key]);
    assert_eq!(plain, "1", "the session went to the TLS server");

    // Without the CA the server's certificate is not trusted: a clear error, no hang.
    let err = RedisStore::builder(url.clone())
        .with_connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Certificate"),
        "untrusted CA: {err}"
    );
    // Roots for a plain URL, or garbage roots, are configuration errors.
    let err = RedisStore::builder(server.url())
        .with_tls_root_certs_pem(pem)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    let err = RedisStore::builder(url)
        .with_tls_root_certs_pem(b"not a certificate".to_vec())
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
}
