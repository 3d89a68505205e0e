//! Statement understanding: a lexer that follows Postgres' rules for quotes, dollar
//! quotes, identifiers and comments, and the statement facts the session acts on
//! (settings a statement changes, state that needs a dedicated server connection,
//! statements sluice answers itself).

pub mod lexer;
pub mod statement;

pub use statement::{analyze, Effect, StatementInfo};
