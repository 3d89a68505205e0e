//! The proxy's error hierarchy. Each variant knows the SQLSTATE, severity, metric label
//! and client-safe message it maps to; a backend's own ErrorResponse is relayed unchanged
//! and never passes through here.

use std::io;
use std::time::Duration;

use thiserror::Error;

use crate::auth::AuthError;
use crate::protocol::{ErrorResponse, FrameError, Severity, SqlState};

/// Everything that can go wrong while serving a client.
#[derive(Debug, Error)]
pub enum Error {
    /// The client broke the protocol; the connection ends.
    #[error("protocol violation: {0}")]
    Protocol(#[from] FrameError),
    /// The client sent something valid in the protocol but not in this state.
    #[error("protocol violation: {0}")]
    UnexpectedMessage(&'static str),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The client did not finish startup and authentication in time.
    #[error("authentication timed out")]
    AuthTimeout,
    /// The startup packet named no user.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// The database is not configured.
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    /// The database's client limit is reached.
    #[error("too many client connections for database \"{0}\"")]
    TooManyClients(String),
    /// Replication connections are not proxied.
    #[error("replication connections are not supported by sluice")]
    ReplicationUnsupported,
    /// No server connection became free in time.
    #[error(
        "pool \"{pool}\" has no free server connection after waiting {waited:?} (all {size} busy)"
    )]
    CheckoutTimeout {
        /// Pool name.
        pool: String,
        /// How long the client waited.
        waited: Duration,
        /// Pool size.
        size: usize,
    },
    /// Connecting or logging in to a server failed.
    #[error("could not connect to server {addr} for pool \"{pool}\": {reason}")]
    ServerConnect {
        /// Pool name.
        pool: String,
        /// Upstream address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// A write (or read-write transaction) while the primary cannot be reached; reads
    /// keep going to replicas.
    #[error("the primary of database \"{database}\" is unavailable: writes are refused until it returns ({reason})")]
    PrimaryUnavailable {
        /// Database name.
        database: String,
        /// The connect failure.
        reason: String,
    },
    /// A read with no eligible replica under `routing.fallback = "error"`.
    #[error("no replica of database \"{database}\" can serve this read ({reason}) and routing.fallback is \"error\"")]
    NoReplica {
        /// Database name.
        database: String,
        /// Why (`lag`, `consistency`, `unavailable`).
        reason: &'static str,
    },
    /// The database is paused (`POST /pools/{db}/pause`) past `checkout_timeout`.
    #[error("database \"{0}\" is paused by an operator; retry shortly")]
    Paused(String),
    /// The server connection broke while serving the client.
    #[error("server connection lost: {0}")]
    ServerLost(#[source] io::Error),
    /// The server sent something the proxy cannot follow.
    #[error("server protocol error: {0}")]
    ServerProtocol(String),
    /// A statement that needs session state, refused by `session_state = "error"`.
    #[error("{0} is not supported in transaction pooling mode")]
    SessionStateRefused(&'static str),
    /// The proxy is shutting down.
    #[error("terminating connection because sluice is shutting down")]
    Shutdown,
    /// The client's socket failed; nothing can be sent to it.
    #[error("client connection error: {0}")]
    ClientIo(#[source] io::Error),
}

/// The proxy's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The SQLSTATE the client receives.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::Protocol(FrameError::TooLarge { .. }) => SqlState::PROTOCOL_VIOLATION,
            Error::Protocol(_) | Error::UnexpectedMessage(_) => SqlState::PROTOCOL_VIOLATION,
            Error::Auth(AuthError::Failed(_)) => SqlState::INVALID_PASSWORD,
            Error::Auth(_) | Error::NoUser => SqlState::INVALID_AUTHORIZATION,
            Error::AuthTimeout => SqlState::PROTOCOL_VIOLATION,
            Error::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            Error::TooManyClients(_) | Error::CheckoutTimeout { .. } => {
                SqlState::TOO_MANY_CONNECTIONS
            }
            Error::ReplicationUnsupported | Error::SessionStateRefused(_) => {
                SqlState::FEATURE_NOT_SUPPORTED
            }
            Error::ServerConnect { .. } => SqlState::CANNOT_CONNECT,
            Error::ServerLost(_) | Error::ServerProtocol(_) => SqlState::CONNECTION_FAILURE,
            Error::PrimaryUnavailable { .. } | Error::NoReplica { .. } => {
                SqlState::CONNECTION_FAILURE
            }
            Error::Shutdown => SqlState::ADMIN_SHUTDOWN,
            Error::Paused(_) => SqlState::CANNOT_CONNECT_NOW,
            Error::ClientIo(_) => SqlState::CONNECTION_FAILURE,
        }
    }

    /// Whether the client connection ends after this error.
    pub fn severity(&self) -> Severity {
        match self {
            Error::CheckoutTimeout { .. }
            | Error::ServerConnect { .. }
            | Error::PrimaryUnavailable { .. }
            | Error::NoReplica { .. }
            | Error::Paused(_)
            | Error::SessionStateRefused(_)
            | Error::ServerLost(_)
            | Error::ServerProtocol(_) => Severity::Error,
            _ => Severity::Fatal,
        }
    }

    /// A fixed label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Protocol(_) | Error::UnexpectedMessage(_) => "protocol",
            Error::Auth(_) | Error::NoUser | Error::AuthTimeout => "auth",
            Error::UnknownDatabase(_) | Error::ReplicationUnsupported => "startup",
            Error::TooManyClients(_) => "client_limit",
            Error::CheckoutTimeout { .. } => "checkout_timeout",
            Error::ServerConnect { .. } => "server_connect",
            Error::ServerLost(_) | Error::ServerProtocol(_) => "server_lost",
            Error::PrimaryUnavailable { .. } => "primary_unavailable",
            Error::NoReplica { .. } => "no_replica",
            Error::Paused(_) => "paused",
            Error::SessionStateRefused(_) => "session_state",
            Error::Shutdown => "shutdown",
            Error::ClientIo(_) => "client_io",
        }
    }

    /// The ErrorResponse sent to the client with the given severity.
    pub fn to_response_as(&self, severity: Severity) -> ErrorResponse {
        let mut e = match severity {
            Severity::Error => ErrorResponse::error(self.sqlstate(), self.to_string()),
            Severity::Fatal => ErrorResponse::fatal(self.sqlstate(), self.to_string()),
        };
        if let Error::SessionStateRefused(_) = self {
            e = e.with_hint(
                "use pool mode = \"session\" for this database, or session_state = \"pin\"",
            );
        }
        e
    }

    /// The ErrorResponse sent to the client.
    pub fn to_response(&self) -> ErrorResponse {
        self.to_response_as(self.severity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_precise_code() {
        let cases: Vec<(Error, &str)> = vec![
            (Error::Protocol(FrameError::BadLength(1)), "08P01"),
            (Error::Auth(AuthError::Failed("u".into())), "28P01"),
            (Error::UnknownDatabase("x".into()), "3D000"),
            (
                Error::CheckoutTimeout {
                    pool: "p".into(),
                    waited: Duration::from_secs(1),
                    size: 2,
                },
                "53300",
            ),
            (
                Error::ServerConnect {
                    pool: "p".into(),
                    addr: "a".into(),
                    reason: "r".into(),
                },
                "08001",
            ),
            (
                Error::ServerLost(io::ErrorKind::UnexpectedEof.into()),
                "08006",
            ),
            (Error::Shutdown, "57P01"),
            (Error::Paused("d".into()), "57P03"),
            (
                Error::PrimaryUnavailable {
                    database: "d".into(),
                    reason: "r".into(),
                },
                "08006",
            ),
            (
                Error::NoReplica {
                    database: "d".into(),
                    reason: "lag",
                },
                "08006",
            ),
            (Error::SessionStateRefused("LISTEN"), "0A000"),
        ];
        for (e, code) in cases {
            assert_eq!(e.sqlstate().code(), code, "{e}");
        }
        let msg = Error::CheckoutTimeout {
            pool: "app/alice".into(),
            waited: Duration::from_secs(1),
            size: 2,
        }
        .to_string();
        assert!(msg.contains("app/alice"), "{msg}");
    }
}
