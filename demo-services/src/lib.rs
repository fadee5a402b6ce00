//! The three demo WebSocket backends of the wsgate sample (ABC, PQR, XYZ).
//!
//! Each backend upgrades WebSocket connections on its own path, pushes
//! `{"message":"Hello from <NAME> Backend"}` to every connection on a timer, logs received
//! `RequestMessage` JSON (rate-limited), and echoes every data frame back unchanged —
//! fragments as fragments — so the load generator can time round trips through the
//! gateway.
//!
//! Modules, in the order a connection meets them:
//!
//! - [`backend`] — the [`Backend`] enum: names, IDs, ports, paths, push text.
//! - [`tls`] — the acceptor of a `wss://` backend (`--tls-cert` / `--tls-key`).
//! - `server` — [`serve`]: accept loop, TLS handshake ([`serve_with_tls`]), HTTP/1
//!   handshake and upgrade, one task per connection, shutdown.
//! - `session` — one upgraded connection: echo, ping/close answers, push timer,
//!   flushing only when the reader would wait.
//! - [`batch`] — [`BatchWriter`], the write buffer that turns many echoes into one
//!   socket write.
//! - `close` — the close frame a session ends with (echo of the peer's, or an error
//!   code).
//! - `request_log` — rate-limited logging of `RequestMessage`s.
//! - [`message`] — the [`RequestMessage`] type.
//! - `testing` — [`spawn_for_test`] / [`spawn_tls_for_test`] / [`RunningBackend`] for
//!   other crates' tests.
//! - [`duration`] — `2s` / `500ms` parsing for the CLI.
//! - `error` — [`DemoError`].

pub mod backend;
pub mod batch;
mod close;
pub mod duration;
mod error;
pub mod message;
mod request_log;
mod server;
mod session;
mod testing;
pub mod tls;

pub use backend::Backend;
pub use batch::BatchWriter;
pub use error::DemoError;
pub use message::RequestMessage;
pub use request_log::LOG_LINES_PER_SECOND;
pub use server::{bind, serve, serve_counted, serve_with_tls, ServiceOptions, SessionCounts};
pub use session::MAX_FRAME_SIZE;
pub use testing::{spawn_for_test, spawn_for_test_on, spawn_tls_for_test, RunningBackend};
