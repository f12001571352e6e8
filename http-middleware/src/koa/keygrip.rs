//! keygrip-style signatures, as the Node seed's `cookies` module makes them: HMAC-SHA1 of
//! `name=value`, base64 with `+`→`-`, `/`→`_` and the `=` padding dropped. Every key verifies,
//! the first signs; comparison is constant time.

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::{
    error::ConfigError,
    signing::{mac_keys, SecretRule},
};

type HmacSha1 = Hmac<Sha1>;

/// Length of a signature: 20 bytes of unpadded base64.
pub(crate) const SIG_LEN: usize = 27;

/// The seed's `app.keys`, newest first.
///
/// ```
/// use tessera_middleware::koa::Keygrip;
///
/// let keys = Keygrip::new(["some secret hurr"]).unwrap();
/// let sig = keys.sign(b"koa:sess=abc");
/// assert_eq!(sig.len(), 27);
/// assert_eq!(keys.index(b"koa:sess=abc", &sig), Some(0));
/// ```
#[derive(Clone)]
pub struct Keygrip {
    keys: Vec<HmacSha1>,
}

impl std::fmt::Debug for Keygrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keygrip")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Keygrip {
    /// Keys from secrets (the seed's `app.keys`), the first of which signs. As for native
    /// cookies, a secret under 16 bytes is refused and one under 32 bytes warned about.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when there is no key or one is shorter than 16 bytes.
    pub fn new<I, K>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys = mac_keys(
            secrets,
            &SecretRule {
                name: "app key",
                advice: " (add a long key in front, keep the old one after it until its cookies \
                         are gone)",
                missing: "at least one app key is required",
            },
        )?;
        Ok(Keygrip { keys })
    }

    /// The signature of `data` under the first key.
    pub fn sign(&self, data: &[u8]) -> String {
        let mut mac = self.keys[0].clone();
        mac.update(data);
        let sig = STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
        sig.replace('+', "-").replace('/', "_")
    }

    /// Which key signed `data` as `sig`, if any.
    pub fn index(&self, data: &[u8], sig: &str) -> Option<usize> {
        if sig.len() != SIG_LEN {
            return None;
        }
        let standard = sig.replace('-', "+").replace('_', "/");
        let mut raw = [0u8; 20];
        match STANDARD_NO_PAD.decode_slice(standard.as_bytes(), &mut raw) {
            Ok(20) => {}
            _ => return None,
        }
        self.keys.iter().position(|key| {
            let mut mac = key.clone();
            mac.update(data);
            mac.verify_slice(&raw).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_rotation() {
        // HMAC-SHA1("some secret hurr", "koa:sess=abc"), computed with keygrip 1.1.0.
        let keys = Keygrip::new(["some secret hurr"]).unwrap();
        let sig = keys.sign(b"koa:sess=abc");
        assert_eq!(sig, "N1lgfyjAJFizJfc7CNTXvqzzMvY");
        assert_eq!(keys.sign(b"koa:sess="), "NWLyK0f8i6lmLBzmgpXjin3iJGg");
        let rotated = Keygrip::new(["a newer key, long enough", "some secret hurr"]).unwrap();
        assert_eq!(rotated.index(b"koa:sess=abc", &sig), Some(1));
        assert_eq!(rotated.index(b"koa:sess=abd", &sig), None);
        assert_eq!(keys.index(b"koa:sess=abc", &sig[..26]), None);
        assert_eq!(
            keys.index(b"koa:sess=abc", "!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
            None
        );
        assert!(Keygrip::new(["short"]).unwrap_err().is_invalid_option());
        assert!(Keygrip::new(Vec::<String>::new())
            .unwrap_err()
            .is_invalid_option());
    }
}
