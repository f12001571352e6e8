//! The stored layout: one Redis hash per session, one field per top-level session key holding
//! MessagePack, plus a reserved meta field. Only encoding lives here; no I/O.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The hash field that holds the session's [`Meta`]. User fields may not use this name.
pub const META_FIELD: &str = "__tessera";

/// The hash field of a session bound to a user that describes its device (a [`DeviceRecord`]).
pub const DEVICE_FIELD: &str = "__tessera_device";

/// The hash field of a bound session that holds when it was last seen, as decimal milliseconds
/// since the epoch (plain text, so the per-user scripts can pick the least recently used). It is
/// written at login and with each renewal, never on its own.
pub const SEEN_FIELD: &str = "__tessera_seen";

/// The engine fields a device list reads of each listed session, in this order.
pub const LISTED_FIELDS: [&str; 3] = [META_FIELD, DEVICE_FIELD, SEEN_FIELD];

/// Whether a field name is reserved by the engine.
pub fn is_reserved(field: &str) -> bool {
    field == META_FIELD || field == DEVICE_FIELD || field == SEEN_FIELD
}

/// What a bound session records about the device that logged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The opaque handle that names this session in the user's device list.
    pub handle: String,
    /// When the user logged in on this device, milliseconds since the Unix epoch.
    pub login_ms: u64,
    /// The `User-Agent` the application passed at login, if any.
    pub user_agent: Option<String>,
    /// The client address the application passed at login, if any.
    pub client_addr: Option<String>,
}

impl DeviceRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec(self).expect("a device record always encodes"))
    }

    /// Decodes a record; foreign or corrupt bytes give a [`ErrorKind::Decode`] error.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] when the bytes are not a record this engine wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        from_slice(bytes).map_err(|err| {
            Error::new(
                ErrorKind::Decode,
                format!("the session's device record is corrupt ({err})"),
            )
        })
    }
}

/// Current stored-format version.
pub const FORMAT_VERSION: u8 = 1;

/// The deepest nesting of arrays and maps a stored value may have. rmp-serde allows 1,024 by
/// default, and decoding recurses once per level: about 1,000 levels overflow a 2 MiB tokio
/// worker stack in a debug build. Session values nest a few levels; a stored value nested
/// deeper was not written by this engine and is refused as a decode error.
pub const MAX_DEPTH: usize = 128;

/// Decodes MessagePack with the nesting limit.
fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

/// Bookkeeping stored beside the data, read in the same `HGETALL` so expiry decisions cost no
/// extra round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Format version.
    pub version: u8,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Absolute deadline (ms since the epoch), if the session has a maximum lifetime.
    pub deadline_ms: Option<u64>,
    /// The expiry last written to the store (ms since the epoch).
    pub expires_ms: u64,
    /// This session's own expiry rule, when it has one (set with `Session::set_expiry`). Absent
    /// from the encoding when `None`, so such records are byte for byte what earlier versions
    /// wrote, and records written before the field existed decode with `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<StoredExpiry>,
}

/// A session's own expiry rule as stored in its [`Meta`], times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredExpiry {
    /// Expires after this many milliseconds without a request; a persistent cookie.
    Idle(u64),
    /// The configured idle TTL; a cookie that ends with the browser session.
    BrowserSession,
    /// Ends at this instant (ms since the epoch), whatever the activity.
    At(u64),
}

impl Meta {
    /// Whether the session is still live at `now_ms`: before both its sliding expiry and its
    /// absolute deadline.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms && self.deadline_ms.is_none_or(|d| d > now_ms)
    }

    /// Encodes the meta record.
    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec(self).expect("meta always encodes"))
    }

    /// Decodes a meta record; foreign or corrupt bytes give a [`ErrorKind::Decode`] error.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] when the bytes are not a record this engine wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let meta: Meta = from_slice(bytes).map_err(|err| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "the session's meta field is corrupt or was written by something else \
                     ({err}); check that no other application writes under this keySchema"
                ),
            )
        })?;
        if meta.version != FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "stored session format {} is not supported by this version (expects {})",
                    meta.version, FORMAT_VERSION
                ),
            ));
        }
        Ok(meta)
    }
}

/// Encodes one session value.
///
/// # Errors
///
/// [`ErrorKind::Encode`] when `value` cannot be represented in MessagePack (a map with
/// non-string keys, a failing `Serialize` impl).
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    Ok(Bytes::from(rmp_serde::to_vec_named(value)?))
}

/// Decodes one session value.
///
/// # Errors
///
/// [`ErrorKind::Decode`] when the bytes are corrupt or hold another type than `T`.
pub fn decode_value<T: DeserializeOwned>(field: &str, bytes: &[u8]) -> Result<T> {
    from_slice(bytes).map_err(|err| {
        Error::new(
            ErrorKind::Decode,
            format!("session field {field:?} does not decode as the requested type ({err})"),
        )
        .with_source(err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let mut meta = Meta {
            version: FORMAT_VERSION,
            created_ms: 1,
            deadline_ms: Some(3),
            expires_ms: 2,
            expiry: None,
        };
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
        for expiry in [
            StoredExpiry::Idle(7),
            StoredExpiry::BrowserSession,
            StoredExpiry::At(9),
        ] {
            meta.expiry = Some(expiry);
            assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
        }
    }

    /// What the previous version wrote (four fields, no expiry rule) still decodes, and a meta
    /// without a rule encodes to exactly those bytes, so instances of both versions can share
    /// sessions during a rolling deploy.
    #[test]
    fn meta_without_an_expiry_rule_keeps_the_earlier_encoding() {
        #[derive(Serialize)]
        struct Earlier {
            version: u8,
            created_ms: u64,
            deadline_ms: Option<u64>,
            expires_ms: u64,
        }
        let earlier = rmp_serde::to_vec(&Earlier {
            version: FORMAT_VERSION,
            created_ms: 1,
            deadline_ms: None,
            expires_ms: 2,
        })
        .unwrap();
        let meta = Meta::decode(&earlier).unwrap();
        assert_eq!(meta.expiry, None);
        assert_eq!((meta.created_ms, meta.expires_ms), (1, 2));
        assert_eq!(&meta.encode()[..], &earlier[..]);
    }

    #[test]
    fn device_records_round_trip_and_names_are_reserved() {
        let device = DeviceRecord {
            handle: "h".into(),
            login_ms: 7,
            user_agent: Some("ua".into()),
            client_addr: None,
        };
        assert_eq!(DeviceRecord::decode(&device.encode()).unwrap(), device);
        assert!(DeviceRecord::decode(b"\xc1").unwrap_err().is_decode());
        for name in [META_FIELD, DEVICE_FIELD, SEEN_FIELD] {
            assert!(is_reserved(name));
        }
        assert!(!is_reserved("__tessera_other"));
    }

    #[test]
    fn corrupt_meta_is_a_decode_error() {
        for bad in [&b""[..], b"\xc1", b"{\"json\":1}", b"\x94\x02\x01\xc0\x02"] {
            assert!(Meta::decode(bad).unwrap_err().is_decode(), "{bad:?}");
        }
    }

    /// `depth` nested one-element arrays around a nil.
    fn nested(depth: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; depth];
        bytes.push(0xc0);
        bytes
    }

    #[test]
    fn deep_nesting_is_refused_on_a_worker_sized_stack() {
        // The size of a tokio worker's stack: the decoder must fail, not overflow it.
        let handle = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(|| {
                let err = decode_value::<serde_json::Value>("v", &nested(1023)).unwrap_err();
                assert!(err.is_decode(), "{err}");
                decode_value::<serde_json::Value>("v", &nested(MAX_DEPTH - 1)).unwrap()
            })
            .unwrap();
        let ok = handle.join().expect("decoding must not overflow the stack");
        assert!(ok.is_array());
    }

    #[test]
    fn values_round_trip_and_mismatch_is_decode() {
        let bytes = encode_value(&vec![1u32, 2, 3]).unwrap();
        assert_eq!(
            decode_value::<Vec<u32>>("v", &bytes).unwrap(),
            vec![1, 2, 3]
        );
        assert!(decode_value::<String>("v", &bytes).unwrap_err().is_decode());
    }
}
