//! Tessera's benchmarks.
//!
//! * `cargo bench -p tessera-benches` runs the Criterion micro-benchmarks in `benches/engine.rs`
//!   (ids, keys, cookie signing, record encoding, middleware overhead on the memory store).
//! * `cargo run --release -p tessera-benches --bin loadtest` runs the load benchmark in
//!   [`loadtest`]: the demo service on a real `redis-server`, driven over keep-alive HTTP/1.1
//!   connections, next to two baselines (one raw Redis command per request, and
//!   `tower-sessions` with its Redis store).

pub mod loadtest;
