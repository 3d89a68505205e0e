//! `[http]` (admin token, request and response limits) and `[log]` (slow queries).

use std::time::Duration;

use super::reader::Table;
use super::Secret;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Bearer token for mutating admin calls; without one they are refused.
    pub admin_token: Option<Secret>,
    /// Largest request body (SQL over HTTP, admin calls); larger gets 413.
    pub max_request_bytes: usize,
    /// Largest SQL-over-HTTP result; larger gets 413.
    pub max_response_bytes: usize,
    /// Longest SQL-over-HTTP request.
    pub query_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            admin_token: None,
            max_request_bytes: 1 << 20,
            max_response_bytes: 16 << 20,
            query_timeout: Duration::from_secs(30),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Requests slower than this are logged (shape only, never values) and kept for
    /// `GET /queries`.
    pub slow_query: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            slow_query: Duration::from_secs(1),
        }
    }
}

pub(super) fn read_http(t: &mut Table<'_, '_>) -> HttpSettings {
    let mut h = HttpSettings::default();
    if let Some(raw) = t.string("admin_token") {
        match Secret::resolve(&raw) {
            Ok(s) if s.expose().len() >= 16 => h.admin_token = Some(s),
            Ok(_) => t.error("admin_token", "must be at least 16 characters"),
            Err(e) => t.error("admin_token", e),
        }
    }
    if let Some(n) = t.size("max_request_bytes") {
        h.max_request_bytes = n as usize;
    }
    if let Some(n) = t.size("max_response_bytes") {
        h.max_response_bytes = n as usize;
    }
    if let Some(d) = t.duration("query_timeout") {
        h.query_timeout = d;
    }
    t.finish();
    h
}

pub(super) fn read_log(t: &mut Table<'_, '_>) -> LogSettings {
    let mut l = LogSettings::default();
    if let Some(d) = t.duration("slow_query") {
        l.slow_query = d;
    }
    t.finish();
    l
}
