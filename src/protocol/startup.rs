//! The untagged first message: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

use super::frame::FrameError;

/// The longest startup packet accepted (Postgres uses the same limit).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// A decoded first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the key the proxy handed out.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
    /// StartupMessage.
    Startup {
        /// Requested protocol version (major << 16 | minor).
        version: i32,
        /// Parameters in arrival order.
        params: Vec<(String, String)>,
    },
}

/// Length of the startup packet at the start of `buf`, once 4 bytes are there.
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    if len as usize > MAX_STARTUP_LEN {
        return Err(FrameError::TooLarge {
            len: len as usize,
            max: MAX_STARTUP_LEN,
        });
    }
    Ok(Some(len as usize))
}

/// Decodes a complete startup packet (length prefix included).
pub fn decode(packet: &[u8]) -> Result<Startup, FrameError> {
    let bad = FrameError::Malformed("startup packet");
    if packet.len() < 8 {
        return Err(bad);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST if body.is_empty() => Ok(Startup::Ssl),
        GSSENC_REQUEST if body.is_empty() => Ok(Startup::GssEnc),
        CANCEL_REQUEST if body.len() == 8 => Ok(Startup::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            let mut parts = body.split(|&b| b == 0);
            loop {
                let key = parts.next().ok_or(bad.clone())?;
                if key.is_empty() {
                    break;
                }
                let value = parts.next().ok_or(bad.clone())?;
                let key = std::str::from_utf8(key).map_err(|_| bad.clone())?;
                let value = std::str::from_utf8(value).map_err(|_| bad.clone())?;
                params.push((key.to_owned(), value.to_owned()));
            }
            // The list ends with an extra NUL after the last value.
            if !(body == [0] || body.ends_with(&[0, 0])) {
                return Err(bad);
            }
            Ok(Startup::Startup { version: v, params })
        }
        _ => Err(FrameError::Malformed(
            "startup packet: unsupported protocol version",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend(code.to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(decode(&packet(SSL_REQUEST, b"")), Ok(Startup::Ssl));
        assert_eq!(decode(&packet(GSSENC_REQUEST, b"")), Ok(Startup::GssEnc));
        assert_eq!(
            decode(&packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9])),
            Ok(Startup::Cancel { pid: 7, secret: 9 })
        );
        let s = decode(&packet(PROTOCOL_3_0, b"user\0bob\0database\0app\0\0")).unwrap();
        assert_eq!(
            s,
            Startup::Startup {
                version: PROTOCOL_3_0,
                params: vec![
                    ("user".into(), "bob".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(&packet(PROTOCOL_3_0, b"user\0bob")).is_err());
        assert!(decode(&packet(PROTOCOL_3_0, b"user\0bob\0")).is_err());
        assert!(decode(&packet(12345, b"")).is_err());
        assert!(decode(&packet(CANCEL_REQUEST, b"\0")).is_err());
        assert!(startup_len(&[0, 0, 0, 3]).is_err());
        assert!(startup_len(&[0, 1, 0, 0]).is_err());
        // Random bytes never panic.
        let mut seed = 0x2545_f491_u32;
        for n in 0..2000 {
            let len = (n % 40) + 8;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                buf.push(seed as u8);
            }
            buf[..4].copy_from_slice(&(len as i32).to_be_bytes());
            let _ = decode(&buf);
        }
    }
}
