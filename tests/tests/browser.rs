//! The demo's device page in a real headless Chromium, driven over WebDriver: two browser
//! profiles log in as one user, one revokes the other from its page, the other is logged out.
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the
//! test says so and fails when `TESSERA_REQUIRE_BROWSER` is set (as CI sets it).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use tessera_demo::DemoArgs;
use tessera_tests::{
    http::DemoServer,
    support::{free_port, RedisCluster},
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A browser with its own fresh profile.
    async fn browser(&self, profile: &std::path::Path, agent: &str) -> Client {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--user-agent={agent}"),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session starts")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_installed() -> bool {
    let present = [CHROMIUM, CHROMEDRIVER]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !present {
        let message = format!(
            "BROWSER TEST NOT RUN: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install \
             chromium chromium-driver)"
        );
        assert!(
            std::env::var_os("TESSERA_REQUIRE_BROWSER").is_none(),
            "{message}"
        );
        eprintln!("{message}");
    }
    present
}

async fn sign_in(browser: &Client, base: &str, user: &str) {
    browser
        .goto(&format!("{base}/account/devices"))
        .await
        .unwrap();
    browser
        .find(Locator::Id("signed-out"))
        .await
        .expect("a new browser is signed out");
    browser
        .find(Locator::Id("user-name"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click navigates: the body found may be the old page's until the new one is in.
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(element) = browser.find(Locator::Css("body")).await {
            if let Ok(text) = element.text().await {
                body = text;
                if body.contains(&format!("logged in as {user}")) {
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(body.contains(&format!("logged in as {user}")), "{body}");
}

/// Waits until `element`'s page has been replaced, that is until the form post a click
/// started has been answered; panics after 10 s.
async fn left_page(element: &fantoccini::elements::Element) {
    for _ in 0..100 {
        if element.text().await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the click did not navigate within 10 s");
}

/// The user agents listed on the device page, in order.
async fn listed(browser: &Client, base: &str) -> Vec<String> {
    browser
        .goto(&format!("{base}/account/devices"))
        .await
        .unwrap();
    let mut agents = Vec::new();
    for cell in browser
        .find_all(Locator::Css("#devices td.ua"))
        .await
        .unwrap()
    {
        agents.push(cell.text().await.unwrap());
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_from_the_page_logs_that_browser_out() {
    if !browser_installed() {
        return;
    }
    let cluster = RedisCluster::start();
    let demo = DemoServer::start_from_args(&DemoArgs::for_tests().with_redis(cluster.url())).await;
    let base = format!("http://{}", demo.addr());
    let driver = tokio::task::spawn_blocking(Driver::start).await.unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let (home, away) = (profiles.path().join("home"), profiles.path().join("away"));
    let a = driver.browser(&home, "Tessera-Test-Home").await;
    let b = driver.browser(&away, "Tessera-Test-Away").await;

    sign_in(&a, &base, "ada").await;
    sign_in(&b, &base, "ada").await;
    assert_eq!(
        listed(&a, &base).await,
        ["Tessera-Test-Away", "Tessera-Test-Home"],
        "both devices, newest first"
    );
    let own = a.find(Locator::Css("#devices td.current")).await.unwrap();
    assert_eq!(own.text().await.unwrap(), "this device");

    // Home revokes Away with the button on Away's row (a plain form post, no script).
    let away_row = a
        .find(Locator::XPath(
            "//tr[td[@class='ua' and text()='Tessera-Test-Away']]",
        ))
        .await
        .unwrap();
    away_row
        .find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click only starts the post: navigating away at once could cancel it.
    left_page(&away_row).await;
    assert_eq!(listed(&a, &base).await, ["Tessera-Test-Home"]);
    assert!(a
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/account/devices"));

    // Away is logged out: its page asks it to sign in.
    b.goto(&format!("{base}/account/devices")).await.unwrap();
    b.find(Locator::Id("signed-out"))
        .await
        .expect("the revoked browser is signed out");
    let json = {
        b.goto(&format!("{base}/devices")).await.unwrap();
        b.find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(json.contains("not logged in"), "{json}");
    a.close().await.unwrap();
    b.close().await.unwrap();
}
