//! Per-user sessions: the keyed hash that puts a user's sessions into one cluster slot, the
//! opaque device handles, the cap and its policy, and what a device list shows. Pure: the
//! handle's `login`, `devices` and `revoke_*` methods do the I/O through the store's per-user
//! operations (`store::users`).

use std::{fmt, time::SystemTime};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    error::{Error, ErrorKind, Result},
    id::UserSlot,
};

type HmacSha256 = Hmac<Sha256>;

/// The shortest user key accepted, in bytes.
pub const MIN_USER_KEY_LEN: usize = 16;

/// Random bytes in a device handle; the rest of it is a MAC over them and the user's slot.
const HANDLE_RANDOM: usize = 9;
const HANDLE_MAC: usize = 6;
/// Length of a device handle as text.
pub const HANDLE_LEN: usize = (HANDLE_RANDOM + HANDLE_MAC) * 4 / 3;

/// The secret behind user slots and device handles. Keep it stable: a user's slot is derived
/// from it, so a new key sends the next logins to a new slot (sessions already bound keep
/// working until they end, but the new slot's device list and cap do not see them).
///
/// ```
/// use tessera_engine::UserKey;
///
/// let key = UserKey::new(b"a user key of at least sixteen bytes").unwrap();
/// assert_eq!(key.slot("ada"), key.slot("ada"));
/// assert_ne!(key.slot("ada"), key.slot("bob"));
/// assert!(!key.slot("ada").to_string().contains("ada"));
/// assert!(UserKey::new(b"short").is_err());
/// ```
#[derive(Clone)]
pub struct UserKey(HmacSha256);

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserKey(…)")
    }
}

impl UserKey {
    /// A key from secret bytes, at least [`MIN_USER_KEY_LEN`] long.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a shorter secret.
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_USER_KEY_LEN {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the user key is {} bytes; use at least {MIN_USER_KEY_LEN} random bytes",
                    secret.len()
                ),
            ));
        }
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        Ok(UserKey(mac))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            // Length-prefixed, so no two part lists hash alike.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The slot of `user`: a keyed hash of the user id, so neither a cookie nor a Redis key
    /// shows who the user is.
    pub fn slot(&self, user: &str) -> UserSlot {
        let digest = self.mac(&[b"tessera user slot", user.as_bytes()]);
        let mut bytes = [0u8; 12];
        bytes.copy_from_slice(&digest[..12]);
        UserSlot::from_bytes(bytes)
    }

    /// A fresh handle for a session in `slot`: random, so it says nothing about the session's
    /// id (holding it does not let anyone use the session), plus a MAC that ties it to the slot.
    pub(crate) fn mint_handle(&self, slot: &UserSlot) -> DeviceHandle {
        use rand::RngCore as _;
        let mut bytes = [0u8; HANDLE_RANDOM + HANDLE_MAC];
        rand::rng().fill_bytes(&mut bytes[..HANDLE_RANDOM]);
        let mac = self.mac(&[b"tessera device", slot.as_bytes(), &bytes[..HANDLE_RANDOM]]);
        bytes[HANDLE_RANDOM..].copy_from_slice(&mac[..HANDLE_MAC]);
        DeviceHandle(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Whether `handle` was minted for `slot`: a handle of another user's session, or made up,
    /// is not the caller's.
    pub(crate) fn owns(&self, slot: &UserSlot, handle: &str) -> bool {
        let mut bytes = [0u8; HANDLE_RANDOM + HANDLE_MAC];
        if handle.len() != HANDLE_LEN
            || URL_SAFE_NO_PAD.decode_slice(handle, &mut bytes) != Ok(bytes.len())
        {
            return false;
        }
        let mac = self.mac(&[b"tessera device", slot.as_bytes(), &bytes[..HANDLE_RANDOM]]);
        use subtle::ConstantTimeEq as _;
        bool::from(mac[..HANDLE_MAC].ct_eq(&bytes[HANDLE_RANDOM..]))
    }
}

/// The opaque name of one of a user's sessions in the device list: what a "revoke" button sends.
/// It is not the session id nor derived from it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceHandle(String);

impl DeviceHandle {
    /// The handle as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_stored(text: String) -> Self {
        DeviceHandle(text)
    }
}

impl fmt::Display for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceHandle({})", self.0)
    }
}

/// What the application tells about the device at login (both optional).
///
/// ```
/// use tessera_engine::DeviceInfo;
///
/// let device = DeviceInfo::default()
///     .with_user_agent("Mozilla/5.0 (X11; Linux x86_64)")
///     .with_client_addr("203.0.113.7");
/// assert_eq!(device.user_agent(), Some("Mozilla/5.0 (X11; Linux x86_64)"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    user_agent: Option<String>,
    client_addr: Option<String>,
}

/// The longest user agent or address kept, in bytes (longer ones are cut at a character
/// boundary): a device list is no place for a megabyte header.
pub const MAX_DEVICE_TEXT: usize = 256;

fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_DEVICE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl DeviceInfo {
    /// The client's `User-Agent`.
    pub fn with_user_agent(mut self, user_agent: impl AsRef<str>) -> Self {
        self.user_agent = Some(bounded(user_agent.as_ref()));
        self
    }

    /// The client's address.
    pub fn with_client_addr(mut self, addr: impl AsRef<str>) -> Self {
        self.client_addr = Some(bounded(addr.as_ref()));
        self
    }

    /// The user agent given.
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// The client address given.
    pub fn client_addr(&self) -> Option<&str> {
        self.client_addr.as_deref()
    }

    pub(crate) fn into_parts(self) -> (Option<String>, Option<String>) {
        (self.user_agent, self.client_addr)
    }
}

/// One live session of a user, as a device list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Device {
    /// The opaque handle to revoke it by.
    pub handle: DeviceHandle,
    /// When the user logged in on it.
    pub created: SystemTime,
    /// When it was last seen: its login or its latest renewal (renewals are throttled, so this
    /// lags real use by up to the renewal interval; no request pays an extra write for it).
    pub last_seen: SystemTime,
    /// The user agent given at login.
    pub user_agent: Option<String>,
    /// The client address given at login.
    pub client_addr: Option<String>,
    /// Whether it is the session that asked.
    pub current: bool,
}

/// What a login does when the user already has the most sessions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CapPolicy {
    /// Revoke the least recently seen sessions to make room (the default).
    #[default]
    EvictLeastRecent,
    /// Refuse the new login with [`ErrorKind::SessionCap`].
    Refuse,
}

impl CapPolicy {
    /// The policy's name: `evict` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapPolicy::EvictLeastRecent => "evict",
            CapPolicy::Refuse => "refuse",
        }
    }
}

impl std::str::FromStr for CapPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "evict" => Ok(CapPolicy::EvictLeastRecent),
            "refuse" => Ok(CapPolicy::Refuse),
            other => Err(Error::new(
                ErrorKind::Config,
                format!("unknown session cap policy {other:?}; use evict or refuse"),
            )),
        }
    }
}

/// A cap on the sessions one user may have at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCap {
    /// At most this many live sessions (at least 1).
    pub max: u32,
    /// What a login beyond it does.
    pub policy: CapPolicy,
}

/// What [`crate::Session::login`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedIn {
    /// The new session's handle in the user's device list.
    pub handle: DeviceHandle,
    /// How many of the user's other sessions the cap evicted to make room.
    pub evicted: usize,
}

/// What revoking one device did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revoked {
    /// The session existed and is gone.
    Revoked,
    /// The handle is the caller's, but its session had already ended.
    AlreadyGone,
    /// The handle is not one of the caller's sessions (another user's, or made up): nothing
    /// was done.
    NotTheCallers,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> UserKey {
        UserKey::new(b"sixteen bytes at least, here").unwrap()
    }

    #[test]
    fn handles_belong_to_their_slot_only() {
        let key = key();
        let (ada, bob) = (key.slot("ada"), key.slot("bob"));
        let handle = key.mint_handle(&ada);
        assert_eq!(handle.as_str().len(), HANDLE_LEN);
        assert!(key.owns(&ada, handle.as_str()));
        assert!(!key.owns(&bob, handle.as_str()), "another user's handle");
        let other_key = UserKey::new(b"another key of sixteen bytes").unwrap();
        assert!(!other_key.owns(&ada, handle.as_str()));
        for bad in ["", "x", "not a handle at all!", &"A".repeat(HANDLE_LEN)] {
            assert!(!key.owns(&ada, bad), "{bad:?}");
        }
        assert_ne!(key.mint_handle(&ada), handle, "random");
    }

    #[test]
    fn device_text_is_bounded_at_a_character_boundary() {
        let long = "é".repeat(MAX_DEVICE_TEXT);
        let device = DeviceInfo::default().with_user_agent(&long);
        let ua = device.user_agent().unwrap();
        assert!(ua.len() <= MAX_DEVICE_TEXT && long.starts_with(ua));
    }

    #[test]
    fn policies_parse() {
        assert_eq!(
            "evict".parse::<CapPolicy>().unwrap(),
            CapPolicy::EvictLeastRecent
        );
        assert_eq!("refuse".parse::<CapPolicy>().unwrap(), CapPolicy::Refuse);
        assert!("lru".parse::<CapPolicy>().unwrap_err().is_config());
    }
}
