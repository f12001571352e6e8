//! The koa-session-redis3 (1.3.4) layout: one JSON string per session under `<keySchema><sid>`,
//! written byte-identical to the Node seed's `JSON.stringify`, so a Koa app and Tessera can
//! serve the same sessions at once. `json` is JavaScript's JSON, `msgpack` the bridge from the
//! engine's value encoding, `store` the [`SessionStore`](crate::SessionStore) over a
//! [`StringStore`](crate::store::StringStore). Nothing here knows about cookies.

pub mod json;
mod msgpack;
mod store;

pub use self::{
    msgpack::{from_msgpack, to_msgpack},
    store::{check_field_name, KoaJsonStore, NODE_RESERVED},
};
