//! wsgate load generator and demo client.
//!
//! | module | job |
//! |---|---|
//! | [`cli`] | command line (load mode by default, `demo` subcommand), exit codes |
//! | [`load`] | load mode: connect, run, drain, close, report |
//! | [`conn`] | one load connection: open, run its session, sum up |
//! | `session` | the per-connection loop: batched sends, echo checks, close |
//! | [`wire`] | test message payload; client frame encoding and decoding |
//! | [`track`] | integrity check of every echo (missing, duplicate, reordered, corrupted) |
//! | [`stats`] | sharded HDR histograms and live counters |
//! | [`report`] | the report: table on stdout, JSON document |
//! | [`plot`] | HTML/SVG latency percentile spectrum |
//! | [`progress`] | live progress line on stderr |
//! | [`sys`] | open-file limit, own CPU time, source addresses |
//! | [`demo`] | the sample's client |
//! | [`client`] | WebSocket client connections (TCP/TLS + [`gateway::wsclient`] handshake) |
//! | [`stream`] | plain or TLS client stream |
//! | [`proxy_header`] | PROXY protocol headers, sent first as a TCP load balancer would |
//! | [`tls`] | rustls client config |
//! | [`token`] | the sample's RS256 JWT |
//! | [`testbed`] | gateway + demo backends in-process, for tests |

pub mod cli;
pub mod client;
pub mod conn;
pub mod demo;
pub mod load;
pub mod plot;
pub mod progress;
pub mod proxy_header;
pub mod report;
mod session;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod testbed;
pub mod tls;
pub mod token;
pub mod track;
pub mod wire;

pub use client::{connect, ConnectError, ConnectOptions, Connected, Connector};
pub use testbed::{repo_root, Testbed, TestbedOptions};
