//! Statement understanding and read routing: a lexer that follows Postgres' rules for
//! quotes and comments and the session facts built on it (settings a statement changes,
//! state that needs a dedicated server connection, statements sluice answers itself);
//! classification with Postgres' own grammar; the lag monitor and the choice of a
//! replica.

pub mod catalog;
pub mod classify;
pub mod hint;
pub mod lag;
pub mod lexer;
pub mod monitor;
pub mod route;
pub mod routers;
pub mod statement;

pub use classify::{Access, Class, Classifier, RouteSetting};
pub use hint::RouteHint;
pub use route::{DbRouter, Outstanding, Reason, Target};
pub use routers::Routers;
pub use statement::{analyze, Effect, StatementInfo};
