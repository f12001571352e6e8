//! Redis key derivation: `<keySchema>{<tag>}` with the tag derived from the session id, so every
//! key of one session sits in one cluster slot and sessions spread over all slots.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, ErrorKind, Result},
    id::{SessionId, UserSlot},
};

/// The validated key prefix (the seed's `keySchema`).
///
/// ```
/// use tessera_engine::KeySchema;
///
/// assert_eq!(KeySchema::new("app:sess").unwrap().as_str(), "app:sess:");
/// assert_eq!(KeySchema::new("").unwrap().as_str(), "");
/// assert!(KeySchema::new("app{x}").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema(String);

impl KeySchema {
    /// Validates a schema and appends a `:` when it is missing. An empty schema is allowed.
    ///
    /// A schema containing `{` or `}` is rejected: its braces would become the cluster hash tag
    /// and put every session into a single slot.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a schema with `{` or `}`.
    pub fn new(schema: &str) -> Result<Self> {
        if schema.contains(['{', '}']) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "keySchema {schema:?} contains '{{' or '}}'; remove them: the engine puts the \
                     hash tag around the session part of the key itself"
                ),
            ));
        }
        let mut s = schema.to_owned();
        if !s.is_empty() && !s.ends_with(':') {
            s.push(':');
        }
        Ok(KeySchema(s))
    }

    /// The prefix as written into keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeySchema {
    fn default() -> Self {
        KeySchema("tessera:sess:".to_owned())
    }
}

/// Derives Redis keys from session ids.
#[derive(Debug, Clone)]
pub struct KeyDeriver {
    schema: KeySchema,
    hash_ids: bool,
    /// `false`: the key is `<keySchema><id>`, the Node seed's layout (no hash tag, id in clear).
    tagged: bool,
}

impl KeyDeriver {
    /// A deriver for `schema`. With `hash_ids` the tag is a SHA-256 digest of the id, so a Redis
    /// dump or `MONITOR` never shows a usable cookie value.
    pub fn new(schema: KeySchema, hash_ids: bool) -> Self {
        KeyDeriver {
            schema,
            hash_ids,
            tagged: true,
        }
    }

    /// A deriver for `<keySchema><id>`: the id in clear and no hash tag, as the Node seed
    /// (koa-session-redis3) names its keys. Each session still lives in one slot (one key).
    pub fn plain(schema: KeySchema) -> Self {
        KeyDeriver {
            schema,
            hash_ids: false,
            tagged: false,
        }
    }

    /// The deriver a configuration asks for.
    pub fn for_config(config: &crate::SessionConfig) -> Self {
        if config.plain_keys() {
            Self::plain(config.key_schema().clone())
        } else {
            Self::new(config.key_schema().clone(), config.hash_ids_at_rest())
        }
    }

    /// The session's hash tag (the part inside the braces).
    pub fn tag(&self, id: &SessionId) -> String {
        if self.hash_ids {
            let digest = Sha256::digest(id.as_bytes());
            URL_SAFE_NO_PAD.encode(&digest[..16])
        } else {
            id.to_string()
        }
    }

    /// The Redis key of the session's hash. A session bound to a user lives in the user's slot:
    /// `<keySchema>{u.<slot>}:<tag>`, beside the user's index (see [`KeyDeriver::index_key`]).
    pub fn key(&self, id: &SessionId) -> String {
        if !self.tagged {
            return format!("{}{id}", self.schema.as_str());
        }
        let tag = self.tag(id);
        if let Some(slot) = id.slot() {
            return format!("{}{{u.{slot}}}:{tag}", self.schema.as_str());
        }
        let mut key = String::with_capacity(self.schema.as_str().len() + tag.len() + 2);
        key.push_str(self.schema.as_str());
        key.push('{');
        key.push_str(&tag);
        key.push('}');
        key
    }
}

impl KeyDeriver {
    /// The key of a user's index: `<keySchema>{u.<slot>}`, in the same cluster slot as every
    /// session bound to that user. A guest key's tag never holds a `.`, so the two never meet.
    pub fn index_key(&self, slot: &UserSlot) -> String {
        format!("{}{{u.{slot}}}", self.schema.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn schema_rules() {
        assert_eq!(KeySchema::new("koa:sess").unwrap().as_str(), "koa:sess:");
        assert_eq!(KeySchema::new("koa:sess:").unwrap().as_str(), "koa:sess:");
        assert_eq!(KeySchema::new("").unwrap().as_str(), "");
        for bad in ["a{b", "a}b", "{x}"] {
            assert!(KeySchema::new(bad).unwrap_err().is_config());
        }
    }

    #[test]
    fn hashed_key_hides_the_id() {
        let id = SessionId::generate();
        let d = KeyDeriver::new(KeySchema::new("s").unwrap(), true);
        let key = d.key(&id);
        assert!(key.starts_with("s:{") && key.ends_with('}'));
        assert_eq!(key.len(), 2 + 2 + 22);
        assert!(!key.contains(&id.to_string()));
        assert_eq!(key, d.key(&id), "deterministic");
    }

    #[test]
    fn plain_key_uses_the_id() {
        let id = SessionId::generate();
        let d = KeyDeriver::new(KeySchema::new("").unwrap(), false);
        assert_eq!(d.key(&id), format!("{{{id}}}"));
    }

    #[test]
    fn plain_keys_are_the_seeds_layout() {
        let d = KeyDeriver::plain(KeySchema::new("your:schema").unwrap());
        let id = SessionId::from_foreign("mx5kckqa0ohc9584335nwbg1").unwrap();
        assert_eq!(d.key(&id), "your:schema:mx5kckqa0ohc9584335nwbg1");
        let native = SessionId::generate();
        assert_eq!(d.key(&native), format!("your:schema:{native}"));
    }

    #[test]
    fn bound_sessions_share_their_users_slot() {
        let d = KeyDeriver::new(KeySchema::new("s").unwrap(), true);
        let slot = UserSlot::from_bytes([5; 12]);
        let (a, b) = (
            SessionId::generate().with_slot(Some(slot)),
            SessionId::generate().with_slot(Some(slot)),
        );
        let index = d.index_key(&slot);
        let slot_of = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        assert_ne!(d.key(&a), d.key(&b));
        assert_eq!(slot_of(&d.key(&a)), slot_of(&index));
        assert_eq!(slot_of(&d.key(&b)), slot_of(&index));
        assert!(d.key(&a).starts_with(&format!("{index}:")), "{}", d.key(&a));
        assert_ne!(d.key(&a), d.key(&a.with_slot(None)), "a guest key differs");
    }

    proptest! {
        #[test]
        fn keys_are_distinct_and_tagged(a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
            let d = KeyDeriver::new(KeySchema::default(), true);
            let (ka, kb) = (d.key(&SessionId::from_bytes(a)), d.key(&SessionId::from_bytes(b)));
            prop_assert_eq!(a == b, ka == kb);
            // Exactly one brace pair, wrapping the id-derived tag.
            prop_assert_eq!(ka.matches('{').count(), 1);
            prop_assert_eq!(ka.matches('}').count(), 1);
            prop_assert!(ka.ends_with('}'), "key must end with the tag's closing brace");
        }
    }
}
