//! Named prepared statements through transaction pooling.
//!
//! A client's statement name maps to a shared server statement keyed by query text,
//! parameter types and `search_path` (full comparison, never a hash alone). Each server
//! connection remembers which server statements it holds, in LRU order, and the session
//! re-`Parse`s transparently on a connection that lacks one.

pub mod auto;
pub mod registry;
pub mod server_set;

pub use auto::AutoPrepare;
pub use registry::{ServerStatement, StatementKey, StatementRegistry};
pub use server_set::PreparedSet;
