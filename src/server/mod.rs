//! Server connections: connecting and logging in, the per-connection state the session
//! relies on (settings applied, statements prepared, transaction status), and the queue
//! of responses the proxy expects back.

pub mod conn;
pub mod connect;
pub mod expect;
pub mod params;
pub mod query;

pub use conn::{CancelKey, ServerConn};
pub use connect::{connect, connect_with, Login, ServerAuth};
