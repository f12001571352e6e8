//! The seed's cookie pair: `koa:sess=<sid>` and `koa:sess.sig=<keygrip signature of
//! "koa:sess=<sid>">`, found and rendered the way the `cookies` module (0.8) does it: the first
//! `name=` after the header start or a `;` and spaces, the raw value up to the next `;`;
//! attributes `path=/; expires=<date>; httponly` in lowercase, `secure` when asked.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{header::InvalidHeaderValue, HeaderMap, HeaderValue};
use tessera_engine::SessionId;

use super::keygrip::Keygrip;
use crate::signing::Verified;

/// What a request's cookie pair says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairRead {
    /// No session cookie, or no `.sig` beside it (the seed ignores the cookie then).
    Absent,
    /// A signed id; `stale_key` when an older key signed it.
    Verified(Verified),
    /// A `.sig` that no key produced: the seed answers with the `.sig` cookie expired.
    BadSignature,
}

/// The pair's names, keys and attributes.
#[derive(Debug, Clone)]
pub(crate) struct KoaCookies {
    pub(crate) keys: Keygrip,
    pub(crate) name: String,
    pub(crate) sig_name: String,
    pub(crate) secure: bool,
}

/// The first value of cookie `name` in `header`, as the `cookies` module's pattern
/// `(?:^|;) *name=([^;]*)` finds it.
pub(crate) fn first_value<'h>(header: &'h [u8], name: &str) -> Option<&'h [u8]> {
    let name = name.as_bytes();
    let mut start = 0;
    loop {
        let mut i = start;
        while header.get(i) == Some(&b' ') {
            i += 1;
        }
        let rest = &header[i..];
        if rest.len() > name.len() && rest.starts_with(name) && rest[name.len()] == b'=' {
            let value = &rest[name.len() + 1..];
            let end = value.iter().position(|b| *b == b';').unwrap_or(value.len());
            return Some(&value[..end]);
        }
        let next = header[start..].iter().position(|b| *b == b';')?;
        start += next + 1;
    }
}

impl KoaCookies {
    pub(crate) fn new(keys: Keygrip, name: &str, secure: bool) -> Self {
        KoaCookies {
            keys,
            name: name.to_owned(),
            sig_name: format!("{name}.sig"),
            secure,
        }
    }

    fn signed_data(&self, sid: &str) -> String {
        format!("{}={sid}", self.name)
    }

    /// Reads and verifies the pair; never touches a store.
    pub(crate) fn read(&self, headers: &HeaderMap) -> PairRead {
        // Node joins repeated Cookie headers with "; ".
        let joined: Vec<u8> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let Some(sid) = first_value(&joined, &self.name) else {
            return PairRead::Absent;
        };
        let sig = match first_value(&joined, &self.sig_name) {
            Some(sig) if !sig.is_empty() => sig,
            _ => return PairRead::Absent,
        };
        let (Ok(sid), Ok(sig)) = (std::str::from_utf8(sid), std::str::from_utf8(sig)) else {
            return PairRead::BadSignature;
        };
        match self.keys.index(self.signed_data(sid).as_bytes(), sig) {
            None => PairRead::BadSignature,
            // An id this side cannot name a key with (the seed's are 24 characters of 0-9a-z)
            // is no session here.
            Some(i) => match SessionId::from_foreign(sid) {
                Ok(id) => PairRead::Verified(Verified {
                    id,
                    stale_key: i > 0,
                }),
                Err(_) => PairRead::Absent,
            },
        }
    }

    fn render(
        &self,
        name: &str,
        value: &str,
        expires: SystemTime,
    ) -> Result<HeaderValue, InvalidHeaderValue> {
        let secure = if self.secure { "; secure" } else { "" };
        HeaderValue::try_from(format!(
            "{name}={value}; path=/; expires={}{secure}; httponly",
            httpdate::fmt_http_date(expires)
        ))
    }

    /// Both cookies naming `id`, expiring at `expires` (the seed's `now + ttl`).
    pub(crate) fn set_pair(
        &self,
        id: &SessionId,
        expires: SystemTime,
    ) -> Result<Vec<HeaderValue>, InvalidHeaderValue> {
        let sid = id.to_string();
        let sig = self.keys.sign(self.signed_data(&sid).as_bytes());
        Ok(vec![
            self.render(&self.name, &sid, expires)?,
            self.render(&self.sig_name, &sig, expires)?,
        ])
    }

    /// The seed's `this.session = null`: both cookies empty, expired in 1970 (the `.sig` one
    /// holds the signature of the empty value, as the seed sends it).
    pub(crate) fn clear_pair(&self) -> Result<Vec<HeaderValue>, InvalidHeaderValue> {
        let sig = self.keys.sign(self.signed_data("").as_bytes());
        Ok(vec![
            self.render(&self.name, "", UNIX_EPOCH)?,
            self.render(&self.sig_name, &sig, UNIX_EPOCH)?,
        ])
    }

    /// The answer to a wrong signature: `.sig` empty and expired.
    pub(crate) fn clear_sig(&self) -> Result<HeaderValue, InvalidHeaderValue> {
        self.render(&self.sig_name, "", UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use http::header::COOKIE;

    use super::*;

    fn cookies() -> KoaCookies {
        KoaCookies::new(
            Keygrip::new(["some secret hurr"]).unwrap(),
            "koa:sess",
            false,
        )
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn first_value_follows_the_cookies_pattern() {
        let h = b"a=1; koa:sess.sig=S;koa:sess=first ; koa:sess=second";
        assert_eq!(first_value(h, "koa:sess"), Some(&b"first "[..]));
        assert_eq!(first_value(h, "koa:sess.sig"), Some(&b"S"[..]));
        assert_eq!(first_value(b"xkoa:sess=1", "koa:sess"), None);
        assert_eq!(first_value(b"koa:sess=", "koa:sess"), Some(&b""[..]));
        assert_eq!(first_value(b"", "koa:sess"), None);
    }

    #[test]
    fn pairs_verify_and_bad_or_missing_signatures_do_not() {
        let c = cookies();
        let sid = "mx5kckqa0ohc9584335nwbg1";
        let sig = c.keys.sign(format!("koa:sess={sid}").as_bytes());
        let good = c.read(&headers(&[
            &format!("koa:sess={sid}"),
            &format!("koa:sess.sig={sig}"),
        ]));
        assert!(matches!(good, PairRead::Verified(v) if v.id.to_string() == sid && !v.stale_key));
        let bad = format!("koa:sess={sid}; koa:sess.sig=N1lgfyjAJFizJfc7CNTXvqzzMvY");
        assert_eq!(c.read(&headers(&[&bad])), PairRead::BadSignature);
        assert_eq!(
            c.read(&headers(&[&format!("koa:sess={sid}")])),
            PairRead::Absent
        );
        assert_eq!(
            c.read(&headers(&[&format!("koa:sess={sid}; koa:sess.sig=")])),
            PairRead::Absent
        );
    }

    #[test]
    fn rendered_like_the_seed() {
        let c = cookies();
        let id = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let pair = c.set_pair(&id, at).unwrap();
        assert_eq!(
            pair[0],
            "koa:sess=mx5kckqa0ohc9584335nwbg1; path=/; expires=Tue, 14 Nov 2023 22:13:20 GMT; httponly"
        );
        assert!(pair[1].to_str().unwrap().starts_with("koa:sess.sig="));
        let clear = c.clear_pair().unwrap();
        assert_eq!(
            clear[0],
            "koa:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly"
        );
        assert_eq!(
            clear[1],
            "koa:sess.sig=NWLyK0f8i6lmLBzmgpXjin3iJGg; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly"
        );
        assert_eq!(
            c.clear_sig().unwrap(),
            "koa:sess.sig=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly"
        );
    }
}
