//! Tessera's session engine: unguessable ids, hash-tagged Redis keys under a `keySchema`,
//! MessagePack records in one hash per session, skip-unchanged writes, sliding and absolute expiry,
//! and the concurrency rules (field-level merge, no resurrection after destroy, create-only-new).
//!
//! It knows nothing about HTTP; `tessera-middleware` wraps it for tower and hyper.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
//! use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
//!
//! let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
//! let session = engine.session(None);
//! session.insert("user", "ada").await?;
//! session.commit().await?;
//! # Ok(()) }
//! ```

// Every public function that returns a `Result` says when it fails.
#![warn(clippy::missing_errors_doc)]

mod config;
mod error;
#[cfg(feature = "http")]
mod http;
mod id;
mod key;
pub mod koa;
pub mod metrics;
pub mod record;
mod session;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;
mod time;
mod users;

pub use crate::{
    config::{SessionConfig, MAX_FIELDS_LIMIT, MAX_TTL},
    error::{Error, ErrorKind, Result},
    id::{
        SessionId, UserSlot, BOUND_ENCODED_LEN as BOUND_SESSION_ID_LEN,
        ENCODED_LEN as SESSION_ID_LEN, MAX_FOREIGN_LEN, MIN_FOREIGN_LEN, USER_SLOT_LEN,
    },
    key::{KeyDeriver, KeySchema},
    koa::KoaJsonStore,
    session::{Committed, CookieAction, CookieLifetime, Expiry, Session, SessionEngine},
    store::{MemoryStore, NearCache, RedisStore, RedisStoreBuilder, Regenerated, SessionStore},
    users::{
        CapPolicy, Device, DeviceHandle, DeviceInfo, LoggedIn, Revoked, SessionCap, UserKey,
        HANDLE_LEN as DEVICE_HANDLE_LEN, MAX_DEVICE_TEXT, MIN_USER_KEY_LEN,
    },
};
