//! Session ids: 128 bits from a thread-local ChaCha12 CSPRNG seeded (and periodically
//! reseeded) from the operating system's random source, written as 22 characters of unpadded
//! base64url. Parsing is strict so a malformed cookie never reaches the store.

use std::{fmt, str::FromStr};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::error::{Error, ErrorKind};

/// Length of an encoded session id, in characters.
pub const ENCODED_LEN: usize = 22;

/// The longest id accepted from another session library's cookie ([`SessionId::from_foreign`]).
pub const MAX_FOREIGN_LEN: usize = 64;
/// The shortest such id: anything shorter is too easy to guess to name a session.
pub const MIN_FOREIGN_LEN: usize = 16;

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
pub struct SessionId(Repr, Option<UserSlot>);

/// Length of a [`UserSlot`] as text, in characters.
pub const USER_SLOT_LEN: usize = 16;

/// Length of the text of an id bound to a user: the id, a `.`, the user's slot.
pub const BOUND_ENCODED_LEN: usize = ENCODED_LEN + 1 + USER_SLOT_LEN;

/// The cluster slot a logged-in user's sessions share: 12 bytes of a keyed hash of the user id
/// (never the id itself), carried in the session id so the signed cookie names it. Every
/// session of the user and the user's index live under this hash tag, so each per-user
/// operation is one atomic script on every topology.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserSlot([u8; 12]);

impl UserSlot {
    /// The slot from its raw bytes (derive it with [`crate::UserKey::slot`]).
    pub fn from_bytes(bytes: [u8; 12]) -> Self {
        UserSlot(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Display for UserSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; USER_SLOT_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .expect("16 bytes hold 12 bytes of base64");
        f.write_str(std::str::from_utf8(&buf[..n]).expect("base64 is ASCII"))
    }
}

impl fmt::Debug for UserSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserSlot({self})")
    }
}

impl FromStr for UserSlot {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 12];
        match (
            s.len(),
            URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut out),
        ) {
            (USER_SLOT_LEN, Ok(12)) => Ok(UserSlot(out)),
            _ => Err(Error::new(
                ErrorKind::InvalidId,
                "a user slot is 16 base64url characters (12 bytes)",
            )),
        }
    }
}

/// Tessera's own ids are 16 random bytes; ids minted by another library (the Node seed's, read
/// in its compatibility profile) are kept as their text, inline so the id stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Repr {
    Native([u8; 16]),
    Foreign {
        len: u8,
        text: [u8; MAX_FOREIGN_LEN],
    },
}

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
        SessionId(Repr::Native(bytes), None)
    }

    /// The raw bytes: the 16 random bytes of a native id, the text of a foreign one.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Native(bytes) => bytes,
            Repr::Foreign { len, text } => &text[..usize::from(*len)],
        }
    }

    /// Builds an id from raw bytes (for tests and tools; use [`SessionId::generate`] for new
    /// sessions).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(Repr::Native(bytes), None)
    }

    /// An id minted by another session library, taken as its text: the Node seed names sessions
    /// with 24 characters of `0-9a-z`. A canonical native id parses as native (it is the same
    /// text either way). Accepted: [`MIN_FOREIGN_LEN`] to [`MAX_FOREIGN_LEN`] characters of
    /// `A-Z a-z 0-9 - _`, so the id is safe in a cookie, a Redis key and a log line.
    ///
    /// ```
    /// use tessera_engine::SessionId;
    ///
    /// let id = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
    /// assert_eq!(id.to_string(), "mx5kckqa0ohc9584335nwbg1");
    /// assert!(!id.is_native());
    /// assert!(SessionId::from_foreign("short").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidId`] when `s` is not [`MIN_FOREIGN_LEN`] to [`MAX_FOREIGN_LEN`]
    /// characters of `A-Z a-z 0-9 - _`.
    pub fn from_foreign(s: &str) -> Result<Self, Error> {
        if let Ok(native) = s.parse::<SessionId>() {
            return Ok(native);
        }
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if !(MIN_FOREIGN_LEN..=MAX_FOREIGN_LEN).contains(&s.len()) || !s.bytes().all(ok) {
            return Err(Error::new(
                ErrorKind::InvalidId,
                format!(
                    "a foreign session id is {MIN_FOREIGN_LEN} to {MAX_FOREIGN_LEN} characters of \
                     A-Z a-z 0-9 - _, got {} bytes",
                    s.len()
                ),
            ));
        }
        let mut text = [0u8; MAX_FOREIGN_LEN];
        text[..s.len()].copy_from_slice(s.as_bytes());
        Ok(SessionId(
            Repr::Foreign {
                len: s.len() as u8,
                text,
            },
            None,
        ))
    }

    /// Whether Tessera minted this id (16 random bytes), rather than another library.
    pub fn is_native(&self) -> bool {
        matches!(self.0, Repr::Native(_))
    }

    /// The same id placed in a user's slot (a foreign id stays as it is: the seed's layout has no
    /// slots).
    pub fn with_slot(self, slot: Option<UserSlot>) -> Self {
        match self.0 {
            Repr::Native(_) => SessionId(self.0, slot),
            Repr::Foreign { .. } => self,
        }
    }

    /// The user slot of a session bound to a user at login, `None` for a guest session.
    pub fn slot(&self) -> Option<UserSlot> {
        self.1
    }
}

impl FromStr for SessionId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == BOUND_ENCODED_LEN && s.as_bytes()[ENCODED_LEN] == b'.' {
            let id: SessionId = s[..ENCODED_LEN].parse()?;
            let slot: UserSlot = s[ENCODED_LEN + 1..].parse()?;
            return Ok(id.with_slot(Some(slot)));
        }
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
            Ok(16) => Ok(SessionId(Repr::Native(out), None)),
            _ => Err(Error::new(
                ErrorKind::InvalidId,
                "a session id must be unpadded base64url (A-Z a-z 0-9 - _) of 16 bytes",
            )),
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = match &self.0 {
            Repr::Native(bytes) => bytes,
            // Checked to be ASCII when it was made.
            Repr::Foreign { .. } => {
                return f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("?"))
            }
        };
        let mut buf = [0u8; ENCODED_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(bytes, &mut buf)
            .expect("22 bytes hold 16 bytes of base64");
        f.write_str(std::str::from_utf8(&buf[..n]).expect("base64 is ASCII"))?;
        match &self.1 {
            Some(slot) => write!(f, ".{slot}"),
            None => Ok(()),
        }
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
    fn foreign_ids_keep_their_text_and_native_text_stays_native() {
        let seed = "mx5kckqa0ohc9584335nwbg1";
        let id = SessionId::from_foreign(seed).unwrap();
        assert_eq!((id.to_string().as_str(), id.is_native()), (seed, false));
        assert_eq!(id.as_bytes(), seed.as_bytes());
        assert_ne!(
            id,
            SessionId::from_foreign("mx5kckqa0ohc9584335nwbg2").unwrap()
        );
        let native = SessionId::generate();
        assert_eq!(
            SessionId::from_foreign(&native.to_string()).unwrap(),
            native
        );
        let long = "a".repeat(MAX_FOREIGN_LEN + 1);
        for bad in [
            "",
            "fifteen-chars-x",
            "has space in it!!",
            "semi;colon-in-it-x",
            &long,
        ] {
            assert!(SessionId::from_foreign(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{id:?}").contains(seed));
    }

    #[test]
    fn bound_ids_carry_their_slot_in_the_text() {
        let slot = UserSlot::from_bytes([9; 12]);
        let id = SessionId::generate().with_slot(Some(slot));
        let text = id.to_string();
        assert_eq!(text.len(), BOUND_ENCODED_LEN);
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        assert_eq!(id.slot(), Some(slot));
        assert_ne!(id, id.with_slot(None));
        assert_eq!(id.as_bytes(), id.with_slot(None).as_bytes());
        for bad in [
            format!("{}.{}", &text[..ENCODED_LEN], "short"),
            format!("{}:{}", &text[..ENCODED_LEN], &text[ENCODED_LEN + 1..]),
            format!("{}.{}", &text[..ENCODED_LEN], "!".repeat(USER_SLOT_LEN)),
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad}");
        }
        let foreign = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
        assert_eq!(
            foreign.with_slot(Some(slot)).slot(),
            None,
            "the seed has no slots"
        );
        assert!(!format!("{id:?}").contains(&slot.to_string()));
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
