//! The client's byte stream: plain TCP for `ws://`, rustls over TCP for `wss://`.
//!
//! The gateway's own stream toward its backends, which is the same thing: a `Plain` or a
//! `Tls` variant, read and written alike, with [`ClientStream::tcp`] for socket options.
//! Writes are not flushed by themselves: over TLS, bytes may stay in rustls until
//! [`tokio::io::AsyncWriteExt::flush`] (or `WebSocket::flush`) is called.

pub use gateway::backend_tls::BackendStream as ClientStream;
