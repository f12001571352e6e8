//! The load that produces the observed metrics.

use super::*;

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

pub(crate) fn cookie_of(answer: &tessera_tests::http::Answer) -> Option<String> {
    answer
        .cookie(COOKIE)
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={value}"))
}

/// The signature's first character changed: well-formed, but signed by no key.
pub(crate) fn forged(cookie: &str) -> String {
    let (name_and_id, sig) = cookie.split_once('.').expect("signed cookies have a '.'");
    let mut sig = sig.to_owned();
    let first = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, first);
    format!("{name_and_id}.{sig}")
}

/// One visitor: creates, updates, reads, logs in (regenerate), sometimes logs out and comes back
/// with the dead cookie (a load miss), and sends forged, malformed and oversized cookies.
/// About 15 requests.
pub(crate) async fn visit(client: &HttpClient, addr: SocketAddr, n: usize) -> Result<(), String> {
    async fn expect(
        client: &HttpClient,
        addr: SocketAddr,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: &str,
        status: StatusCode,
    ) -> Result<tessera_tests::http::Answer, String> {
        let answer = client
            .send(addr, method.clone(), path, cookie, body)
            .await?;
        if answer.status != status {
            return Err(format!(
                "{method} {path}: expected {status}, got {} ({})",
                answer.status, answer.body
            ));
        }
        Ok(answer)
    }
    use Method as M;
    use StatusCode as S;

    let first = expect(client, addr, M::GET, "/", None, "", S::OK).await?;
    let cookie = cookie_of(&first).ok_or("a new session sets a cookie")?;
    let c = Some(cookie.as_str());
    for _ in 0..2 {
        expect(client, addr, M::GET, "/", c, "", S::OK).await?; // update
    }
    for _ in 0..2 {
        expect(client, addr, M::GET, "/views", c, "", S::OK).await?; // hit, skipped
    }
    let cart = format!(
        "{{\"items\":[{}]}}",
        (0..n % 40)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    expect(
        client,
        addr,
        M::PUT,
        "/session/cart",
        c,
        &cart,
        S::NO_CONTENT,
    )
    .await?;
    expect(client, addr, M::GET, "/session", c, "", S::OK).await?;
    if n.is_multiple_of(3) {
        expect(
            client,
            addr,
            M::DELETE,
            "/session/cart",
            c,
            "",
            S::NO_CONTENT,
        )
        .await?;
    }
    let login = expect(
        client,
        addr,
        M::POST,
        &format!("/login?user=user{n}"),
        c,
        "",
        S::OK,
    )
    .await?;
    let cookie = cookie_of(&login).ok_or("login re-issues the cookie")?;
    let c = Some(cookie.as_str());
    expect(client, addr, M::GET, "/views", c, "", S::OK).await?;
    // Per-user operations: a second device, listed and revoked; log out everywhere else.
    if n % 4 == 1 {
        let path = format!("/login?user=user{n}");
        let other = expect(client, addr, M::POST, &path, None, "", S::OK).await?;
        let other = cookie_of(&other).ok_or("a login sets the cookie")?;
        let list = expect(client, addr, M::GET, "/devices", c, "", S::OK).await?;
        let devices: serde_json::Value =
            serde_json::from_str(&list.body).map_err(|e| e.to_string())?;
        let handle = devices
            .as_array()
            .and_then(|d| d.iter().find(|d| d["current"] == false))
            .and_then(|d| d["handle"].as_str())
            .ok_or("the second device is listed")?
            .to_owned();
        let path = format!("/devices/{handle}");
        expect(client, addr, M::DELETE, &path, c, "", S::NO_CONTENT).await?;
        expect(
            client,
            addr,
            M::GET,
            "/devices",
            Some(&other),
            "",
            S::UNAUTHORIZED,
        )
        .await?;
    } else if n % 4 == 2 {
        let path = "/logout-everywhere?keep=current";
        expect(client, addr, M::POST, path, c, "", S::NO_CONTENT).await?;
    }
    if n.is_multiple_of(4) {
        expect(client, addr, M::POST, "/logout", c, "", S::NO_CONTENT).await?;
        // The cookie still verifies, but the session is gone: a miss.
        expect(client, addr, M::GET, "/views", c, "", S::OK).await?;
    }
    let bad = forged(&cookie);
    expect(client, addr, M::GET, "/views", Some(&bad), "", S::OK).await?;
    if n.is_multiple_of(2) {
        let malformed = format!("{COOKIE}=not-a-session-id");
        expect(client, addr, M::GET, "/views", Some(&malformed), "", S::OK).await?;
    } else {
        let oversized = format!("{COOKIE}={}", "x".repeat(200));
        expect(client, addr, M::GET, "/views", Some(&oversized), "", S::OK).await?;
    }
    expect(client, addr, M::GET, "/healthz", None, "", S::OK).await?;
    Ok(())
}

/// `visitors` concurrent visits numbered from `first`.
pub(crate) async fn load(client: &HttpClient, addr: SocketAddr, first: usize, visitors: usize) {
    let tasks: Vec<_> = (first..first + visitors)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { visit(&client, addr, n).await })
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await.expect("visit task") {
            panic!("load request failed: {e}");
        }
    }
}
