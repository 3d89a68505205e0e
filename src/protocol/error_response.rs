//! ErrorResponse: built for errors the proxy raises, and read (code and severity only)
//! when a backend sends one. Backend errors are otherwise relayed byte for byte.

use bytes::{BufMut, BytesMut};

use super::sqlstate::SqlState;

/// Error severities the proxy emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the connection stays usable.
    Error,
    /// The connection is closed after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse the proxy sends to a client.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// The SQLSTATE.
    pub code: SqlState,
    /// Primary message, safe to show a client.
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Optional hint line.
    pub hint: Option<String>,
}

impl ErrorResponse {
    /// An ERROR with a code and message.
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A FATAL with a code and message.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(b'E');
        let at = out.len();
        out.put_i32(0);
        let sev = self.severity.as_str();
        field(out, b'S', sev);
        field(out, b'V', sev);
        field(out, b'C', self.code.code());
        field(out, b'M', &self.message);
        if let Some(d) = &self.detail {
            field(out, b'D', d);
        }
        if let Some(h) = &self.hint {
            field(out, b'H', h);
        }
        out.put_u8(0);
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn field(out: &mut BytesMut, tag: u8, value: &str) {
    out.put_u8(tag);
    // NULs inside a field would end it early; strip them from proxy-built text.
    out.extend(value.bytes().filter(|&b| b != 0));
    out.put_u8(0);
}

/// The fields of a backend ErrorResponse the proxy looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localized severity (V), or S when V is absent.
    pub severity: String,
    /// SQLSTATE (C).
    pub code: String,
    /// Primary message (M).
    pub message: String,
    /// Detail (D).
    pub detail: Option<String>,
    /// Hint (H).
    pub hint: Option<String>,
}

impl ErrorFields {
    /// True for FATAL and PANIC.
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

/// Reads severity, code and message from an ErrorResponse/NoticeResponse body.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut f = ErrorFields::default();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let tag = body[i];
        let rest = &body[i + 1..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let val = String::from_utf8_lossy(&rest[..end]).into_owned();
        match tag {
            b'V' => f.severity = val,
            b'S' if f.severity.is_empty() => f.severity = val,
            b'C' => f.code = val,
            b'M' => f.message = val,
            b'D' => f.detail = Some(val),
            b'H' => f.hint = Some(val),
            _ => {}
        }
        i += 1 + end + 1;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_fields() {
        let mut out = BytesMut::new();
        ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, "bad\0 frame")
            .with_hint("h")
            .encode(&mut out);
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let f = parse_error_fields(&out[5..]);
        assert_eq!(f.code, "08P01");
        assert_eq!(f.message, "bad frame");
        assert!(f.is_fatal());
    }

    #[test]
    fn parse_tolerates_truncation() {
        let f = parse_error_fields(b"SERROR\0C42");
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.code, "42");
    }
}
