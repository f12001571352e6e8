//! Cookie values: `<id>.<signature>`, the signature an HMAC-SHA256 over the cookie name and the id.
//! The first key signs, every key verifies (rotation), comparison is constant time. Parsing never
//! allocates for input over the fixed length and never touches the store.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tessera_engine::{SessionId, BOUND_SESSION_ID_LEN, SESSION_ID_LEN};

use crate::error::{ConfigError, ConfigErrorKind};

type HmacSha256 = Hmac<Sha256>;

/// Secrets shorter than this many bytes are refused: guessable offline from one cookie.
pub(crate) const MIN_SECRET_LEN: usize = 16;
/// Secrets shorter than this many bytes are accepted with a warning.
pub(crate) const GOOD_SECRET_LEN: usize = 32;
/// How a list of secrets is named in messages, and what to do about a short one.
pub(crate) struct SecretRule {
    /// "cookie secret", "app key".
    pub(crate) name: &'static str,
    /// Follows "use at least 16" in the refusal.
    pub(crate) advice: &'static str,
    /// The refusal of an empty list.
    pub(crate) missing: &'static str,
}

/// The secrets as MAC keys, in order: each at least [`MIN_SECRET_LEN`] bytes (a warning under
/// [`GOOD_SECRET_LEN`]), and at least one.
pub(crate) fn mac_keys<M, I, K>(secrets: I, rule: &SecretRule) -> Result<Vec<M>, ConfigError>
where
    M: Mac + hmac::digest::KeyInit,
    I: IntoIterator<Item = K>,
    K: AsRef<[u8]>,
{
    let mut keys = Vec::new();
    for (i, secret) in secrets.into_iter().enumerate() {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(
                ConfigErrorKind::InvalidOption,
                format!(
                    "{} #{} is {} bytes; use at least {MIN_SECRET_LEN}{}",
                    rule.name,
                    i + 1,
                    secret.len(),
                    rule.advice
                ),
            ));
        }
        if secret.len() < GOOD_SECRET_LEN {
            tracing::warn!(
                secret = i + 1,
                len = secret.len(),
                "short {}: use at least {GOOD_SECRET_LEN} random bytes (e.g. `openssl rand \
                 -base64 48`)",
                rule.name
            );
        }
        keys.push(
            <M as hmac::digest::KeyInit>::new_from_slice(secret)
                .expect("HMAC takes any key length"),
        );
    }
    if keys.is_empty() {
        return Err(ConfigError::new(
            ConfigErrorKind::InvalidOption,
            rule.missing,
        ));
    }
    Ok(keys)
}

/// Length of the encoded signature (32 bytes of base64url).
const SIG_LEN: usize = 43;
/// Length of a signed cookie value.
pub(crate) const SIGNED_LEN: usize = SESSION_ID_LEN + 1 + SIG_LEN;
/// Length of a signed cookie value of a logged-in session (its id carries the user's slot).
pub(crate) const SIGNED_BOUND_LEN: usize = BOUND_SESSION_ID_LEN + 1 + SIG_LEN;

/// Why a cookie value was rejected; also the `reason` label of the rejected-cookie metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Longer than any valid value.
    Oversized,
    /// Not of the expected shape (length, separator, alphabet).
    Malformed,
    /// Well-formed, but no key produced its signature.
    BadSignature,
    /// The session cookie's value holds bytes outside ASCII (our values are base64url). Other
    /// cookies in the header may hold anything: they are skipped unread.
    NonAsciiValue,
}

impl Rejection {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Oversized => "oversized",
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::NonAsciiValue => "non_ascii_value",
        }
    }
}

/// A verified cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The session id it names.
    pub id: SessionId,
    /// It was signed by an older key and should be re-issued under the current one.
    pub stale_key: bool,
}

/// The signing keys, newest first. Construct with [`SigningKeys::new`].
///
/// ```
/// use tessera_engine::SessionId;
/// use tessera_middleware::SigningKeys;
///
/// let old = SigningKeys::new(["an old secret that is long enough to use!"]).unwrap();
/// let new = SigningKeys::new([
///     "the new secret, also at least 32 bytes long",
///     "an old secret that is long enough to use!",
/// ])
/// .unwrap();
/// let id = SessionId::generate();
/// let value = old.sign("koa:sess", &id);
/// let verified = new.verify("koa:sess", &value).unwrap();
/// assert_eq!(verified.id, id);
/// assert!(verified.stale_key, "signed by the older key: re-issue");
/// ```
#[derive(Clone)]
pub struct SigningKeys {
    keys: Vec<HmacSha256>,
    unsigned: bool,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("keys", &self.keys.len())
            .field("unsigned", &self.unsigned)
            .finish()
    }
}

impl SigningKeys {
    /// Keys from secrets, the first of which signs. A secret shorter than 16 bytes is a
    /// configuration error; one shorter than 32 bytes is accepted but logged as a warning. Use
    /// random bytes (`openssl rand -base64 48`), not a word.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when there is no secret or one is shorter than 16 bytes.
    pub fn new<I, K>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys = mac_keys(
            secrets,
            &SecretRule {
                name: "cookie secret",
                advice: ", ideally 32+ random bytes (openssl rand -base64 48)",
                missing: "at least one cookie secret is required (or opt out with \
                          SigningKeys::unsigned())",
            },
        )?;
        Ok(SigningKeys {
            keys,
            unsigned: false,
        })
    }

    /// One random key for this process only: cookies stop verifying when it restarts.
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS random source failed");
        Self::new([secret]).expect("32 bytes is long enough")
    }

    /// No signature: the cookie carries the bare id. The id is still 128 random bits, but any
    /// leaked id is accepted as is. Only for setups that sign or encrypt cookies elsewhere.
    pub fn unsigned() -> Self {
        SigningKeys {
            keys: Vec::new(),
            unsigned: true,
        }
    }

    /// Whether cookies are left unsigned.
    pub fn is_unsigned(&self) -> bool {
        self.unsigned
    }

    fn mac(key: &HmacSha256, name: &str, id: &str) -> HmacSha256 {
        let mut mac = key.clone();
        // Binding the cookie name stops a value from being replayed under another cookie.
        mac.update(name.as_bytes());
        mac.update(b"=");
        mac.update(id.as_bytes());
        mac
    }

    /// The cookie value for `id`.
    pub fn sign(&self, name: &str, id: &SessionId) -> String {
        let id = id.to_string();
        let Some(key) = self.keys.first() else {
            return id;
        };
        let tag = Self::mac(key, name, &id).finalize().into_bytes();
        let mut out = String::with_capacity(SIGNED_BOUND_LEN);
        out.push_str(&id);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Verifies a cookie value.
    ///
    /// # Errors
    ///
    /// The [`Rejection`] saying why the value is not a valid cookie of this name.
    pub fn verify(&self, name: &str, value: &str) -> Result<Verified, Rejection> {
        if self.unsigned {
            if value.len() > BOUND_SESSION_ID_LEN {
                return Err(Rejection::Oversized);
            }
            let id = value.parse().map_err(|_| Rejection::Malformed)?;
            return Ok(Verified {
                id,
                stale_key: false,
            });
        }
        if value.len() > SIGNED_BOUND_LEN {
            return Err(Rejection::Oversized);
        }
        let id_len = match value.len() {
            SIGNED_LEN => SESSION_ID_LEN,
            SIGNED_BOUND_LEN => BOUND_SESSION_ID_LEN,
            _ => return Err(Rejection::Malformed),
        };
        if value.as_bytes()[id_len] != b'.' {
            return Err(Rejection::Malformed);
        }
        // The signature covers the id with its user slot: a slot cannot be swapped.
        let (id_text, sig_text) = (&value[..id_len], &value[id_len + 1..]);
        let id: SessionId = id_text.parse().map_err(|_| Rejection::Malformed)?;
        let mut sig = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(sig_text, &mut sig) {
            Ok(32) => {}
            _ => return Err(Rejection::Malformed),
        }
        for (i, key) in self.keys.iter().enumerate() {
            // verify_slice compares in constant time.
            if Self::mac(key, name, id_text).verify_slice(&sig).is_ok() {
                return Ok(Verified {
                    id,
                    stale_key: i > 0,
                });
            }
        }
        Err(Rejection::BadSignature)
    }
}

/// Most session-cookie candidates looked at per request: a flood of duplicates costs no more.
const MAX_CANDIDATES: usize = 4;

/// Finds the cookie `name` in a request's `Cookie` headers and verifies it, without touching any
/// store. `Ok(None)`: no such cookie; `Ok(Some(_))`: the first valid one; `Err(_)`: only invalid
/// candidates, with the last one's reason. At most four candidates are verified per request.
///
/// The header is read as bytes: another application's cookie with non-ASCII bytes (a
/// `theme=déjà` set by a sibling app) must not hide ours, so only our own value has to be ASCII.
///
/// # Errors
///
/// The last candidate's [`Rejection`] when every candidate is invalid.
pub fn find_session_cookie(
    keys: &SigningKeys,
    name: &str,
    headers: &http::HeaderMap,
) -> Result<Option<Verified>, Rejection> {
    let mut candidates = 0;
    let mut rejection = None;
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            // `name=value`, split at the first `=`; a pair without one is no cookie of ours.
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if trim(&pair[..eq]) != name.as_bytes() {
                continue;
            }
            candidates += 1;
            if candidates > MAX_CANDIDATES {
                return rejection.map_or(Ok(None), Err);
            }
            let value = trim(&pair[eq + 1..]);
            let verdict = match std::str::from_utf8(value) {
                Ok(text) if value.is_ascii() => keys.verify(name, text),
                _ => Err(Rejection::NonAsciiValue),
            };
            match verdict {
                Ok(verified) => return Ok(Some(verified)),
                Err(r) => rejection = Some(r),
            }
        }
    }
    rejection.map_or(Ok(None), Err)
}

/// Strips the spaces and tabs a `Cookie` header puts around names and values.
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "secret-a-secret-a-secret-a-secret-a";
    const B: &str = "secret-b-secret-b-secret-b-secret-b";

    #[test]
    fn sign_and_verify() {
        let keys = SigningKeys::new([A]).unwrap();
        let id = SessionId::generate();
        let value = keys.sign("koa:sess", &id);
        assert_eq!(value.len(), SIGNED_LEN);
        assert_eq!(
            keys.verify("koa:sess", &value),
            Ok(Verified {
                id,
                stale_key: false
            })
        );
        // Bound to the cookie name.
        assert_eq!(keys.verify("other", &value), Err(Rejection::BadSignature));
    }

    #[test]
    fn a_logged_in_sessions_slot_is_signed_with_its_id() {
        let keys = SigningKeys::new([A]).unwrap();
        let slot = tessera_engine::UserSlot::from_bytes([3; 12]);
        let id = SessionId::generate().with_slot(Some(slot));
        let value = keys.sign("n", &id);
        assert_eq!(value.len(), SIGNED_BOUND_LEN);
        assert_eq!(keys.verify("n", &value).unwrap().id, id);
        // Another user's slot under the same signature is refused.
        let other = tessera_engine::UserSlot::from_bytes([4; 12]);
        let swapped = value.replace(&slot.to_string(), &other.to_string());
        assert_ne!(swapped, value);
        assert_eq!(keys.verify("n", &swapped), Err(Rejection::BadSignature));
        // The slot dropped: the guest id's signature differs.
        let guest = format!(
            "{}{}",
            &value[..SESSION_ID_LEN],
            &value[BOUND_SESSION_ID_LEN..]
        );
        assert_eq!(keys.verify("n", &guest), Err(Rejection::BadSignature));
        assert_eq!(
            keys.verify("n", &format!("{value}x")),
            Err(Rejection::Oversized)
        );
    }

    #[test]
    fn rotation() {
        let id = SessionId::generate();
        let value = SigningKeys::new([B]).unwrap().sign("n", &id);
        let rotated = SigningKeys::new([A, B]).unwrap();
        assert!(rotated.verify("n", &value).unwrap().stale_key);
        let dropped = SigningKeys::new([A]).unwrap();
        assert_eq!(dropped.verify("n", &value), Err(Rejection::BadSignature));
    }

    #[test]
    fn tampering_is_rejected() {
        let keys = SigningKeys::new([A]).unwrap();
        let value = keys.sign("n", &SessionId::generate());
        let other = SessionId::generate().to_string();
        let swapped = format!("{other}{}", &value[SESSION_ID_LEN..]);
        assert_eq!(keys.verify("n", &swapped), Err(Rejection::BadSignature));
        assert_eq!(keys.verify("n", &value[..40]), Err(Rejection::Malformed));
        // Longer than a guest's value but shorter than a logged-in one's: the wrong shape.
        assert_eq!(
            keys.verify("n", &format!("{value}x")),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            keys.verify("n", &"x".repeat(SIGNED_BOUND_LEN + 1)),
            Err(Rejection::Oversized)
        );
        assert_eq!(
            keys.verify("n", &value.replace('.', "!")),
            Err(Rejection::Malformed)
        );
        assert_eq!(keys.verify("n", &"é".repeat(33)), Err(Rejection::Malformed));
    }

    #[test]
    fn secrets_are_validated() {
        assert!(SigningKeys::new([""]).unwrap_err().is_invalid_option());
        let err = SigningKeys::new([A, "abcde"]).unwrap_err();
        assert!(err.is_invalid_option());
        assert_eq!(
            err.to_string(),
            "cookie secret #2 is 5 bytes; use at least 16, ideally 32+ random bytes \
             (openssl rand -base64 48)"
        );
        assert!(SigningKeys::new([[7u8; 15]])
            .unwrap_err()
            .is_invalid_option());
        assert!(
            SigningKeys::new([[7u8; 16]]).is_ok(),
            "16 bytes: a warning only"
        );
        assert!(SigningKeys::new([[7u8; 32]]).is_ok());
        assert!(SigningKeys::new(Vec::<&str>::new())
            .unwrap_err()
            .is_invalid_option());
    }

    #[test]
    fn foreign_non_ascii_cookies_are_skipped() {
        let keys = SigningKeys::new([A]).unwrap();
        let id = SessionId::generate();
        let ours = format!("koa:sess={}", keys.sign("koa:sess", &id));
        for raw in [
            format!("theme=d\u{e9}j\u{e0}; {ours}"),
            format!("{ours};theme=d\u{e9}j\u{e0}"),
            format!("\u{e9}=\u{e9}; \t{ours}\t ; x"),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.append(
                http::header::COOKIE,
                http::HeaderValue::from_bytes(raw.as_bytes()).unwrap(),
            );
            let found = find_session_cookie(&keys, "koa:sess", &headers);
            assert_eq!(found.unwrap().map(|v| v.id), Some(id), "{raw:?}");
        }
    }

    #[test]
    fn non_ascii_in_our_own_value_is_rejected() {
        let keys = SigningKeys::new([A]).unwrap();
        let mut headers = http::HeaderMap::new();
        let raw = "theme=dark; koa:sess=d\u{e9}j\u{e0}";
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_bytes(raw.as_bytes()).unwrap(),
        );
        let found = find_session_cookie(&keys, "koa:sess", &headers);
        assert_eq!(found, Err(Rejection::NonAsciiValue));
        assert_eq!(Rejection::NonAsciiValue.as_str(), "non_ascii_value");
        // Latin-1 bytes, not UTF-8 at all: the same reason.
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_bytes(b"koa:sess=\xff\xfe").unwrap(),
        );
        let found = find_session_cookie(&keys, "koa:sess", &headers);
        assert_eq!(found, Err(Rejection::NonAsciiValue));
    }

    #[test]
    fn unsigned_mode() {
        let keys = SigningKeys::unsigned();
        let id = SessionId::generate();
        let value = keys.sign("n", &id);
        assert_eq!(value, id.to_string());
        assert_eq!(keys.verify("n", &value).unwrap().id, id);
    }
}
