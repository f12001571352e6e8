//! Integration support for Tessera: real `redis-server` topologies started per test
//! ([`support`]) and the behavioural suite that every store must pass ([`suite`]).

pub mod fuzzing;
pub mod http;
pub mod koa;
pub mod load;
pub mod near;
pub mod proxy;
pub mod suite;
pub mod support;
