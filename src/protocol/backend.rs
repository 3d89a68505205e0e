//! Writers for the backend messages the proxy produces itself, and the backend tags it
//! reads while relaying.

use bytes::{BufMut, BytesMut};

/// Backend message tags the proxy acts on.
pub mod tag {
    /// Authentication request family.
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse.
    pub const NOTIFICATION: u8 = b'A';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// NoData.
    pub const NO_DATA: u8 = b'n';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY: u8 = b'I';
    /// PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// CopyInResponse.
    pub const COPY_IN: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT: u8 = b'H';
    /// CopyBothResponse.
    pub const COPY_BOTH: u8 = b'W';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// FunctionCallResponse.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// Idle, not in a transaction block.
    #[default]
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block.
    Failed,
}

impl TxStatus {
    /// From the ReadyForQuery status byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }

    /// The ReadyForQuery status byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    let at = begin(out, tag::AUTHENTICATION);
    out.put_i32(0);
    finish(out, at);
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    let at = begin(out, tag::AUTHENTICATION);
    out.put_i32(5);
    out.put_slice(&salt);
    finish(out, at);
}

/// AuthenticationSASL listing the mechanisms.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(out, tag::AUTHENTICATION);
    out.put_i32(10);
    for m in mechanisms {
        cstr(out, m.as_bytes());
    }
    out.put_u8(0);
    finish(out, at);
}

/// AuthenticationSASLContinue (code 11) or AuthenticationSASLFinal (code 12).
pub fn auth_sasl_data(out: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(out, tag::AUTHENTICATION);
    out.put_i32(code);
    out.put_slice(data);
    finish(out, at);
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, tag::PARAMETER_STATUS);
    cstr(out, name.as_bytes());
    cstr(out, value.as_bytes());
    finish(out, at);
}

/// BackendKeyData (protocol 3.0: 4-byte key).
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(out, tag::BACKEND_KEY_DATA);
    out.put_i32(pid);
    out.put_i32(secret);
    finish(out, at);
}

/// ReadyForQuery.
pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    out.put_slice(&[tag::READY_FOR_QUERY, 0, 0, 0, 5, status.byte()]);
}

/// CommandComplete with a tag such as `DEALLOCATE`.
pub fn command_complete(out: &mut BytesMut, command: &str) {
    let at = begin(out, tag::COMMAND_COMPLETE);
    cstr(out, command.as_bytes());
    finish(out, at);
}

/// A one-column, one-row text result (RowDescription and DataRow), as SHOW returns.
pub fn single_text_row(out: &mut BytesMut, column: &str, value: &str) {
    let at = begin(out, tag::ROW_DESCRIPTION);
    out.put_i16(1);
    cstr(out, column.as_bytes());
    out.put_i32(0); // table oid
    out.put_i16(0); // column number
    out.put_i32(25); // text
    out.put_i16(-1); // type size
    out.put_i32(-1); // type modifier
    out.put_i16(0); // text format
    finish(out, at);
    let at = begin(out, tag::DATA_ROW);
    out.put_i16(1);
    out.put_i32(value.len() as i32);
    out.put_slice(value.as_bytes());
    finish(out, at);
}

/// ParseComplete.
pub const PARSE_COMPLETE: [u8; 5] = [tag::PARSE_COMPLETE, 0, 0, 0, 4];
/// CloseComplete.
pub const CLOSE_COMPLETE: [u8; 5] = [tag::CLOSE_COMPLETE, 0, 0, 0, 4];

/// NegotiateProtocolVersion: the newest minor version supported and unrecognized options.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unsupported: &[String]) {
    let at = begin(out, tag::NEGOTIATE_PROTOCOL_VERSION);
    out.put_i32(minor);
    out.put_i32(unsupported.len() as i32);
    for o in unsupported {
        cstr(out, o.as_bytes());
    }
    finish(out, at);
}

/// Reads a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name.to_owned(), value.to_owned()))
}

/// Reads a CommandComplete body into its tag text (without the NUL).
pub fn command_tag(body: &[u8]) -> &[u8] {
    body.split(|&b| b == 0).next().unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_set_lengths() {
        let mut out = BytesMut::new();
        parameter_status(&mut out, "TimeZone", "UTC");
        assert_eq!(&out[..], b"S\0\0\0\x11TimeZone\0UTC\0");
        let (n, v) = parse_parameter_status(&out[5..]).unwrap();
        assert_eq!((n.as_str(), v.as_str()), ("TimeZone", "UTC"));
        out.clear();
        command_complete(&mut out, "SET");
        assert_eq!(command_tag(&out[5..]), b"SET");
        out.clear();
        ready_for_query(&mut out, TxStatus::Failed);
        assert_eq!(&out[..], b"Z\0\0\0\x05E");
    }
}
