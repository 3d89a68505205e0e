//! sluice: a Postgres sidecar proxy that pools server connections per transaction,
//! keeps named prepared statements and session settings working across pooled
//! connections, and (in later layers) routes, caches and auto-prepares.
//!
//! # Layout
//! - [`config`]: `proxy.toml` read into raw values, validated into a typed [`config::Config`].
//! - [`protocol`]: framing, frontend/backend message readers and writers, SQLSTATEs.
//! - [`auth`]: SCRAM-SHA-256 and md5, both as a server (clients) and as a client (Postgres).
//! - [`client`]: the listener and one task per client: startup, auth, the request loop.
//! - [`server`]: server connections: connect, log in, the queue of expected responses.
//! - [`pool`]: pools per (database, user, upstream) with a fair wait queue and a reaper.
//! - [`prepare`]: client statement names mapped to shared server statements.
//! - [`router`]: a SQL lexer and the statement facts the proxy acts on.
//! - [`http`]: `/metrics`, `/health`, `/ready` and admin views on `[listen] http`.
//! - [`metrics`]: every metric, defined once.
//! - [`error`]: the error hierarchy and its SQLSTATE mapping.
//! - [`shutdown`]: cancellation and task tracking for graceful shutdown.
#![deny(clippy::unwrap_used, clippy::todo, clippy::dbg_macro)]
#![warn(missing_docs)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, reason = "tests assert by unwrapping")
)]

pub mod auth;
pub mod cache;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod prepare;
pub mod protocol;
pub mod router;
pub mod server;
pub mod shutdown;

mod app;

pub use app::{run, Proxy, Reloader, TopShapes};
