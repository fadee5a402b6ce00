//! Support shared by the benchmark targets in `benches/`.
//!
//! | module | job |
//! |---|---|
//! | [`wire`] | binary messages encoded once into the bytes a peer sends |
//! | [`harness`] | one gateway session over in-memory pipes, with cheap raw-byte peers |
//! | [`tokens`] | JWT verifiers and tokens from the dev keys in `certs/` |
//! | [`alloc`] | a global allocator wrapper that counts allocations |
//!
//! The bench targets: `forward` (frame forwarding throughput), `jwt` (token checks),
//! `handshake` (route lookup, upgrade-request checks) and `alloc_count` (allocations per
//! forwarded message). See `README.md` for how to run them and the measured figures.

pub mod alloc;
pub mod harness;
pub mod tokens;
pub mod wire;
