//! Session ids: 128 bits from the operating system's CSPRNG, written as 22 characters of
//! unpadded base64url. Parsing is strict so a malformed cookie never reaches the store.

use std::{fmt, str::FromStr};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::error::{Error, ErrorKind};

/// Length of an encoded session id, in characters.
pub const ENCODED_LEN: usize = 22;

/// An opaque, unguessable session identifier.
///
/// ```
/// use tessera_engine::SessionId;
///
/// let id = SessionId::generate();
/// let text = id.to_string();
/// assert_eq!(text.len(), 22);
/// assert_eq!(text.parse::<SessionId>().unwrap(), id);
/// assert!("not-an-id".parse::<SessionId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A fresh id: 128 bits from the thread-local ChaCha12 CSPRNG, which is seeded from the OS
    /// random source and reseeded from it every 64 KiB (a system call per id cost about 0.4 µs).
    ///
    /// # Panics
    /// Panics if the operating system's random source fails while seeding, which leaves no safe
    /// way to mint ids.
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        SessionId(bytes)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds an id from raw bytes (for tests and tools; use [`SessionId::generate`] for new
    /// sessions).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(bytes)
    }
}

impl FromStr for SessionId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != ENCODED_LEN {
            return Err(Error::new(
                ErrorKind::InvalidId,
                format!(
                    "a session id is {ENCODED_LEN} base64url characters, got {} bytes",
                    s.len()
                ),
            ));
        }
        let mut out = [0u8; 16];
        // The default engine rejects non-zero trailing bits, so every id has exactly one spelling.
        match URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut out) {
            Ok(16) => Ok(SessionId(out)),
            _ => Err(Error::new(
                ErrorKind::InvalidId,
                "a session id must be unpadded base64url (A-Z a-z 0-9 - _) of 16 bytes",
            )),
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ENCODED_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .expect("22 bytes hold 16 bytes of base64");
        f.write_str(std::str::from_utf8(&buf[..n]).expect("base64 is ASCII"))
    }
}

impl fmt::Debug for SessionId {
    // Ids are bearer secrets: never print one whole into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "SessionId({}…)", &s[..4])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_round_trip() {
        let ids: HashSet<SessionId> = (0..10_000).map(|_| SessionId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.to_string().parse::<SessionId>().unwrap(), *id);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAAAAA", // 23
            "AAAAAAAAAAAAAAAAAAAAA",   // 21
            "AAAAAAAAAAAAAAAAAAAA+A",  // standard alphabet
            "AAAAAAAAAAAAAAAAAAAA/A",
            "AAAAAAAAAAAAAAAAAAAAA=", // padding
            "AAAAAAAAAAAAAAAAAAAAAB", // non-canonical trailing bits
            "ÄAAAAAAAAAAAAAAAAAAAA",  // non-ASCII, 22 bytes
        ] {
            let err = bad.parse::<SessionId>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidId, "{bad:?}");
        }
    }

    #[test]
    fn debug_does_not_leak_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(&id.to_string()));
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in any::<[u8; 16]>()) {
            let id = SessionId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics_and_accepts_only_canonical(s in "\\PC{0,40}") {
            if let Ok(id) = s.parse::<SessionId>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
