//! Password authentication primitives shared by both sides of the proxy: the client-facing
//! SCRAM-SHA-256 and md5 verifiers and the server-facing SCRAM and md5 responders.

pub mod md5;
pub mod scram;

use thiserror::Error;

/// An authentication failure.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The proof or password did not match.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The SASL exchange did not follow RFC 5802 / the Postgres profile.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The method asked for cannot be done with the credentials configured.
    #[error("{0}")]
    Unsupported(String),
}
