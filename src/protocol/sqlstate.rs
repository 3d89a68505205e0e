//! SQLSTATE codes the proxy itself raises (a backend's own codes are relayed unchanged).

use std::fmt;

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// 08P01 protocol_violation.
    pub const PROTOCOL_VIOLATION: Self = Self("08P01");
    /// 08001 sqlclient_unable_to_establish_sqlconnection.
    pub const CANNOT_CONNECT: Self = Self("08001");
    /// 08006 connection_failure.
    pub const CONNECTION_FAILURE: Self = Self("08006");
    /// 28000 invalid_authorization_specification.
    pub const INVALID_AUTHORIZATION: Self = Self("28000");
    /// 28P01 invalid_password.
    pub const INVALID_PASSWORD: Self = Self("28P01");
    /// 3D000 invalid_catalog_name (unknown database).
    pub const INVALID_CATALOG_NAME: Self = Self("3D000");
    /// 53300 too_many_connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self("53300");
    /// 57014 query_canceled.
    pub const QUERY_CANCELED: Self = Self("57014");
    /// 57P01 admin_shutdown.
    pub const ADMIN_SHUTDOWN: Self = Self("57P01");
    /// 0A000 feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: Self = Self("0A000");
    /// 26000 invalid_sql_statement_name (unknown prepared statement).
    pub const INVALID_STATEMENT_NAME: Self = Self("26000");
    /// 42P05 duplicate_prepared_statement.
    pub const DUPLICATE_PREPARED_STATEMENT: Self = Self("42P05");
    /// 34000 invalid_cursor_name (unknown portal).
    pub const INVALID_CURSOR_NAME: Self = Self("34000");
    /// 25P02 in_failed_sql_transaction.
    pub const IN_FAILED_TRANSACTION: Self = Self("25P02");
    /// 54000 program_limit_exceeded (oversized message).
    pub const PROGRAM_LIMIT_EXCEEDED: Self = Self("54000");
    /// XX000 internal_error.
    pub const INTERNAL_ERROR: Self = Self("XX000");
    /// 57P03 cannot_connect_now.
    pub const CANNOT_CONNECT_NOW: Self = Self("57P03");
    /// invalid_parameter_value
    pub const INVALID_PARAMETER_VALUE: Self = Self("22023");

    /// The five-character code.
    pub fn code(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
