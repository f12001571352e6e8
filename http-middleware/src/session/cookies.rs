//! The session cookies of a request and a response: which session the request names (native
//! cookie, the koa-session-redis3 pair, or in upgrade mode a pair to move), and the Set-Cookie
//! headers that name, renew or clear it. No store access here.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{header::InvalidHeaderValue, HeaderMap, HeaderValue};
use tessera_engine::{CookieLifetime, SessionId, MAX_TTL};

use super::layer::Settings;
use crate::{
    koa::{CookieMode, PairRead, Upgrade},
    signing::{find_session_cookie, Rejection, Verified},
};

/// What the request's cookies said, before any store is asked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CookieRead {
    /// The session the request names.
    pub(crate) verified: Option<Verified>,
    /// The koa pair's `.sig` was wrong: answered with the `.sig` expired, as the seed does.
    pub(crate) bad_koa_sig: bool,
    /// Upgrade mode: a verified seed pair, its session to move.
    pub(crate) upgrade_from: Option<Verified>,
}

pub(crate) fn read_cookies(settings: &Settings, headers: &HeaderMap) -> CookieRead {
    if let CookieMode::KoaPair(koa) = &settings.cookie_mode {
        return match koa.read(headers) {
            PairRead::Absent => CookieRead::default(),
            PairRead::Verified(v) => CookieRead {
                verified: Some(v),
                ..CookieRead::default()
            },
            PairRead::BadSignature => {
                settings.metrics.rejected_cookie(Rejection::BadSignature);
                CookieRead {
                    bad_koa_sig: true,
                    ..CookieRead::default()
                }
            }
        };
    }
    let native = find_session_cookie(&settings.keys, &settings.cookie_name, headers);
    if let (Ok(None) | Err(_), Some(upgrade)) = (native, &settings.upgrade) {
        if let PairRead::Verified(v) = upgrade.cookies.read(headers) {
            return CookieRead {
                upgrade_from: Some(v),
                ..CookieRead::default()
            };
        }
    }
    CookieRead {
        verified: read_cookie(settings, native),
        ..CookieRead::default()
    }
}

/// A native cookie lookup's result. Bad values are counted and ignored: the request gets a
/// fresh session and the store is never asked about them.
fn read_cookie(
    settings: &Settings,
    found: Result<Option<Verified>, Rejection>,
) -> Option<Verified> {
    match found {
        Ok(found) => found,
        Err(r) => {
            settings.metrics.rejected_cookie(r);
            tracing::debug!(reason = r.as_str(), "ignored an invalid session cookie");
            None
        }
    }
}

/// The Set-Cookie headers naming `id`.
pub(crate) fn set_headers(
    settings: &Settings,
    id: &SessionId,
    expires: SystemTime,
    lifetime: CookieLifetime,
) -> Result<Vec<HeaderValue>, InvalidHeaderValue> {
    match &settings.cookie_mode {
        CookieMode::Native => Ok(vec![build_cookie(settings, id, expires, lifetime)?]),
        // The profile keeps no per-session rule (the engine refuses one): always the seed's.
        CookieMode::KoaPair(koa) => koa.set_pair(id, expires),
    }
}

/// The Set-Cookie headers that end the session in the browser.
pub(crate) fn clear_headers(settings: &Settings) -> Result<Vec<HeaderValue>, InvalidHeaderValue> {
    match &settings.cookie_mode {
        CookieMode::Native => Ok(vec![clear_cookie(settings)?]),
        CookieMode::KoaPair(koa) => koa.clear_pair(),
    }
}

/// Clears the seed's pair after an upgrade; a `koa:sess` that the native cookie shares its name
/// with is already replaced by it, so only the `.sig` is cleared then.
pub(crate) fn clear_old_pair(settings: &Settings, upgrade: &Upgrade) -> Vec<HeaderValue> {
    let old = &upgrade.cookies;
    let headers = if old.name == settings.cookie_name {
        old.clear_sig().map(|h| vec![h])
    } else {
        old.clear_pair()
    };
    headers.unwrap_or_default()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last second `httpdate` formats (9999-12-31T23:59:59Z); it panics from year 10000 on.
pub(crate) const LAST_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// A session cookie naming `id`, persistent as the layer is configured unless the session's own
/// expiry rule decides (`lifetime`). The expiry is clamped to `[epoch, now + MAX_TTL]` (and to
/// the last formattable date), so whatever a store or engine reports can neither panic the date
/// formatting nor promise a lifetime no configuration allows.
pub(crate) fn build_cookie(
    settings: &Settings,
    id: &SessionId,
    expires: SystemTime,
    lifetime: CookieLifetime,
) -> Result<HeaderValue, InvalidHeaderValue> {
    // Formatted by hand on the pre-rendered attributes: this runs on every write.
    let mut value = String::with_capacity(192);
    value.push_str(&settings.cookie_name);
    value.push('=');
    value.push_str(&settings.keys.sign(&settings.cookie_name, id));
    value.push_str(&settings.attributes);
    let persistent = match lifetime {
        CookieLifetime::Persistent => true,
        CookieLifetime::BrowserSession => false,
        _ => settings.persistent,
    };
    if persistent {
        let now = now_ms();
        let latest = now.saturating_add(MAX_TTL.as_millis() as u64);
        let expires_ms = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .min(latest);
        // Rounded: a few milliseconds spent since the commit must not show as a second less.
        let secs = (expires_ms.saturating_sub(now) + 500) / 1000;
        let at = UNIX_EPOCH + Duration::from_secs((expires_ms / 1000).min(LAST_HTTP_DATE_SECS));
        let _ = write!(
            value,
            "; Max-Age={secs}; Expires={}",
            httpdate::fmt_http_date(at)
        );
    }
    // Cannot fail once the layer's options are validated; an error, not a panic, if it does.
    HeaderValue::try_from(value)
}

pub(crate) fn clear_cookie(settings: &Settings) -> Result<HeaderValue, InvalidHeaderValue> {
    let value = format!(
        "{}={}; Max-Age=0; Expires={}",
        settings.cookie_name,
        settings.attributes,
        httpdate::fmt_http_date(UNIX_EPOCH)
    );
    HeaderValue::try_from(value)
}
