//! The demo's per-user routes: `GET /devices` (JSON), `DELETE /devices/{handle}`, and the
//! server-rendered `GET /account/devices` page whose plain forms log in and revoke (no
//! JavaScript).

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tessera_engine::{Device, DeviceInfo, ErrorKind, Revoked, Session};

use super::{empty, text, BoxError, Routed};

/// The largest form body read (a user name).
const MAX_FORM: usize = 4 * 1024;

/// What the request tells about the device: its `User-Agent`.
pub(super) fn device_info<B>(req: &Request<B>) -> DeviceInfo {
    let mut device = DeviceInfo::default();
    if let Some(ua) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        device = device.with_user_agent(ua);
    }
    device
}

/// Field `name` of an `application/x-www-form-urlencoded` body.
pub(super) async fn form_field<B>(body: B, name: &str) -> Option<String>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let bytes = Limited::new(body, MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) async fn list_json(session: &Session) -> Routed {
    let devices = session.devices().await?;
    let list: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "handle": d.handle.as_str(),
                "created": unix_seconds(d.created),
                "last_seen": unix_seconds(d.last_seen),
                "user_agent": d.user_agent.as_deref().unwrap_or(""),
                "current": d.current,
            })
        })
        .collect();
    let mut response = text(StatusCode::OK, serde_json::Value::Array(list).to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

pub(super) async fn revoke(session: &Session, handle: &str) -> Routed {
    Ok(match session.revoke_device(handle).await? {
        Revoked::Revoked | Revoked::AlreadyGone => empty(StatusCode::NO_CONTENT),
        _ => text(StatusCode::NOT_FOUND, "no such device among yours\n"),
    })
}

pub(super) async fn revoke_from_page(session: &Session, handle: &str) -> Routed {
    match session.revoke_device(handle).await {
        Ok(Revoked::Revoked | Revoked::AlreadyGone) => Ok(see_other("/account/devices")),
        Ok(_) => Ok(html(
            StatusCode::NOT_FOUND,
            page_of("Not found", "<p>No such device among yours.</p>"),
        )),
        Err(err) if err.kind() == ErrorKind::NotLoggedIn => Ok(login_page()),
        Err(err) => Err(err),
    }
}

pub(super) async fn page(session: &Session) -> Routed {
    let devices = match session.devices().await {
        Ok(devices) => devices,
        Err(err) if err.kind() == ErrorKind::NotLoggedIn => return Ok(login_page()),
        Err(err) => return Err(err),
    };
    let user: Option<String> = session.get("user").await?;
    let mut rows = String::new();
    for device in &devices {
        rows.push_str(&row(device));
    }
    let body = format!(
        "<p id=\"user\">Signed in as <b>{}</b>.</p>\n<table id=\"devices\">\n<tr><th>Device</th>\
         <th>Signed in</th><th>Last seen</th><th></th></tr>\n{rows}</table>\n",
        escape(user.as_deref().unwrap_or("")),
    );
    Ok(html(StatusCode::OK, page_of("Your devices", &body)))
}

fn row(device: &Device) -> String {
    let action = if device.current {
        "<td class=\"current\">this device</td>".to_owned()
    } else {
        format!(
            "<td><form method=\"post\" action=\"/account/devices/{h}/revoke\">\
             <button type=\"submit\" id=\"revoke-{h}\">Revoke</button></form></td>",
            h = escape(device.handle.as_str())
        )
    };
    format!(
        "<tr data-handle=\"{}\"><td class=\"ua\">{}</td><td>{}</td><td>{}</td>{action}</tr>\n",
        escape(device.handle.as_str()),
        escape(device.user_agent.as_deref().unwrap_or("unknown device")),
        httpdate::fmt_http_date(device.created),
        httpdate::fmt_http_date(device.last_seen),
    )
}

fn login_page() -> Response<Full<Bytes>> {
    html(
        StatusCode::UNAUTHORIZED,
        page_of(
            "Sign in",
            "<p id=\"signed-out\">You are not signed in.</p>\n\
             <form method=\"post\" action=\"/login\"><input name=\"user\" id=\"user-name\">\
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\n",
        ),
    )
}

fn page_of(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n{body}</body></html>\n"
    )
}

fn html(status: StatusCode, page: String) -> Response<Full<Bytes>> {
    let mut response = text(status, page);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn see_other(location: &'static str) -> Response<Full<Bytes>> {
    let mut response = empty(StatusCode::SEE_OTHER);
    response
        .headers_mut()
        .insert(header::LOCATION, header::HeaderValue::from_static(location));
    response
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
