//! The Postgres wire protocol as the proxy needs it: framing with size checks, zero-copy
//! readers and rewriters for the frontend messages it must understand, writers for the
//! backend messages it produces itself, SQLSTATE constants and ErrorResponse handling.
//! Everything else is forwarded as raw frames.

pub mod backend;
pub mod error_response;
pub mod frame;
pub mod frontend;
pub mod io;
pub mod sqlstate;
pub mod startup;

pub use error_response::{ErrorResponse, Severity};
pub use frame::{FrameError, FrameHeader};
pub use sqlstate::SqlState;
