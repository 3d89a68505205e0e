//! Framing: every regular message is `tag:u8, len:i32 (includes itself), body`.
//! The length is checked against `4 <= len <= max_message_size` before it is trusted.

use thiserror::Error;

/// Bytes in a regular message header (tag + length).
pub const HEADER_LEN: usize = 5;

/// A framing failure; every variant ends the connection with FATAL 08P01.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 4.
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// The length exceeds the configured maximum.
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A message tag that is not valid in this direction or state.
    #[error("unexpected message type 0x{0:02x}")]
    UnknownTag(u8),
    /// A message body that does not match its type's layout.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// A parsed header: the tag and the total frame length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type byte.
    pub tag: u8,
    /// Total bytes of the frame including tag and length.
    pub total: usize,
}

impl FrameHeader {
    /// Bytes of the body (after the header).
    pub fn body_len(&self) -> usize {
        self.total - HEADER_LEN
    }
}

/// Reads a header at the start of `buf`. `Ok(None)` when fewer than 5 bytes are buffered.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(FrameHeader {
        tag: buf[0],
        total: len + 1,
    }))
}

/// Reads a header and returns it only when the whole frame is buffered.
pub fn complete_frame(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, FrameError> {
    match peek_header(buf, max)? {
        Some(h) if buf.len() >= h.total => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// Reads a NUL-terminated string at `*pos`, advancing past the NUL.
pub fn read_cstr<'a>(
    body: &'a [u8],
    pos: &mut usize,
    what: &'static str,
) -> Result<&'a [u8], FrameError> {
    let rest = body.get(*pos..).ok_or(FrameError::Malformed(what))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(FrameError::Malformed(what))?;
    let s = &rest[..end];
    *pos += end + 1;
    Ok(s)
}

/// Reads a big-endian i16 at `*pos`.
pub fn read_i16(body: &[u8], pos: &mut usize, what: &'static str) -> Result<i16, FrameError> {
    let b = body
        .get(*pos..*pos + 2)
        .ok_or(FrameError::Malformed(what))?;
    *pos += 2;
    Ok(i16::from_be_bytes([b[0], b[1]]))
}

/// Reads a big-endian i32 at `*pos`.
pub fn read_i32(body: &[u8], pos: &mut usize, what: &'static str) -> Result<i32, FrameError> {
    let b = body
        .get(*pos..*pos + 4)
        .ok_or(FrameError::Malformed(what))?;
    *pos += 4;
    Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_length_bounds() {
        assert_eq!(peek_header(b"Q\0\0", 100), Ok(None));
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength(3))
        );
        assert_eq!(
            peek_header(b"Q\0\0\x01\0", 100),
            Err(FrameError::TooLarge { len: 256, max: 100 })
        );
        assert_eq!(
            peek_header(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength(-1))
        );
        let h = peek_header(b"Q\0\0\0\x05x", 100).unwrap().unwrap();
        assert_eq!((h.tag, h.total, h.body_len()), (b'Q', 6, 1));
        assert_eq!(complete_frame(b"Q\0\0\0\x06x", 100), Ok(None));
    }

    #[test]
    fn cstr_reader_rejects_missing_nul() {
        let mut pos = 0;
        assert_eq!(read_cstr(b"abc\0def", &mut pos, "x").unwrap(), b"abc");
        assert_eq!(pos, 4);
        assert!(read_cstr(b"def", &mut 0, "x").is_err());
        assert!(read_i32(b"\0\0", &mut 0, "x").is_err());
    }
}
