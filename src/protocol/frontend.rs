//! Frontend messages the proxy must understand, read without copying, and the few it
//! rewrites (statement names) or writes itself. Frames are passed around as `Bytes`
//! holding the whole frame (tag + length + body).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{read_cstr, read_i16, FrameError, HEADER_LEN};

/// Frontend message tags after startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendTag {
    /// 'Q' simple query.
    Query,
    /// 'P' Parse.
    Parse,
    /// 'B' Bind.
    Bind,
    /// 'D' Describe.
    Describe,
    /// 'E' Execute.
    Execute,
    /// 'C' Close.
    Close,
    /// 'S' Sync.
    Sync,
    /// 'H' Flush.
    Flush,
    /// 'X' Terminate.
    Terminate,
    /// 'd' CopyData.
    CopyData,
    /// 'c' CopyDone.
    CopyDone,
    /// 'f' CopyFail.
    CopyFail,
    /// 'F' FunctionCall.
    FunctionCall,
    /// 'p' password / SASL response (only valid during authentication).
    Password,
}

impl FrontendTag {
    /// Maps a tag byte; unknown bytes are a protocol violation.
    pub fn from_byte(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            b'Q' => Self::Query,
            b'P' => Self::Parse,
            b'B' => Self::Bind,
            b'D' => Self::Describe,
            b'E' => Self::Execute,
            b'C' => Self::Close,
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'X' => Self::Terminate,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail,
            b'F' => Self::FunctionCall,
            b'p' => Self::Password,
            other => return Err(FrameError::UnknownTag(other)),
        })
    }
}

fn body(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN..]
}

/// The SQL text of a Query frame (without its NUL).
pub fn query_text(frame: &[u8]) -> Result<&[u8], FrameError> {
    let mut pos = 0;
    read_cstr(body(frame), &mut pos, "Query")
}

/// A Parse message, borrowed from its frame.
#[derive(Debug, Clone, Copy)]
pub struct Parse<'a> {
    /// Destination statement name ("" for unnamed).
    pub name: &'a [u8],
    /// Query text.
    pub query: &'a [u8],
    /// The parameter-type section (count + OIDs), kept raw.
    pub param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Reads a Parse frame.
    pub fn read(frame: &'a [u8]) -> Result<Self, FrameError> {
        let b = body(frame);
        let mut pos = 0;
        let name = read_cstr(b, &mut pos, "Parse")?;
        let query = read_cstr(b, &mut pos, "Parse")?;
        let types_at = pos;
        let n = read_i16(b, &mut pos, "Parse")?;
        if n < 0 || b.len() != pos + 4 * n as usize {
            return Err(FrameError::Malformed("Parse"));
        }
        Ok(Self {
            name,
            query,
            param_types: &b[types_at..],
        })
    }
}

/// Writes a Parse with the given statement name.
pub fn write_parse(out: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    let len = 4 + name.len() + 1 + query.len() + 1 + param_types.len();
    out.reserve(len + 1);
    out.put_u8(b'P');
    out.put_i32(len as i32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(query);
    out.put_u8(0);
    out.put_slice(param_types);
}

/// A Bind message, borrowed from its frame.
#[derive(Debug, Clone, Copy)]
pub struct Bind<'a> {
    /// Destination portal.
    pub portal: &'a [u8],
    /// Source statement name.
    pub statement: &'a [u8],
    /// Everything after the statement name (formats, values, result formats), raw.
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Reads a Bind frame (only the names are validated).
    pub fn read(frame: &'a [u8]) -> Result<Self, FrameError> {
        let b = body(frame);
        let mut pos = 0;
        let portal = read_cstr(b, &mut pos, "Bind")?;
        let statement = read_cstr(b, &mut pos, "Bind")?;
        Ok(Self {
            portal,
            statement,
            rest: &b[pos..],
        })
    }
}

/// Writes a Bind whose statement name is replaced.
pub fn write_bind(out: &mut BytesMut, bind: &Bind<'_>, statement: &[u8]) {
    let len = 4 + bind.portal.len() + 1 + statement.len() + 1 + bind.rest.len();
    out.reserve(len + 1);
    out.put_u8(b'B');
    out.put_i32(len as i32);
    out.put_slice(bind.portal);
    out.put_u8(0);
    out.put_slice(statement);
    out.put_u8(0);
    out.put_slice(bind.rest);
}

/// The target of a Describe or Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// 'S': a prepared statement.
    Statement,
    /// 'P': a portal.
    Portal,
}

/// A Describe or Close message, borrowed from its frame.
#[derive(Debug, Clone, Copy)]
pub struct DescribeOrClose<'a> {
    /// Statement or portal.
    pub target: Target,
    /// Its name.
    pub name: &'a [u8],
}

impl<'a> DescribeOrClose<'a> {
    /// Reads a Describe or Close frame.
    pub fn read(frame: &'a [u8]) -> Result<Self, FrameError> {
        let b = body(frame);
        let target = match b.first() {
            Some(b'S') => Target::Statement,
            Some(b'P') => Target::Portal,
            _ => return Err(FrameError::Malformed("Describe/Close")),
        };
        let mut pos = 1;
        let name = read_cstr(b, &mut pos, "Describe/Close")?;
        if pos != b.len() {
            return Err(FrameError::Malformed("Describe/Close"));
        }
        Ok(Self { target, name })
    }
}

/// Writes a Describe ('D') or Close ('C') of a statement with the given name.
pub fn write_statement_target(out: &mut BytesMut, tag: u8, name: &[u8]) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name);
    out.put_u8(0);
}

/// The portal name of an Execute frame.
pub fn execute_portal(frame: &[u8]) -> Result<&[u8], FrameError> {
    let mut pos = 0;
    let b = body(frame);
    let portal = read_cstr(b, &mut pos, "Execute")?;
    if b.len() != pos + 4 {
        return Err(FrameError::Malformed("Execute"));
    }
    Ok(portal)
}

/// Writes a simple Query.
pub fn write_query(out: &mut BytesMut, sql: &str) {
    out.put_u8(b'Q');
    out.put_i32((4 + sql.len() + 1) as i32);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

/// Sync.
pub const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];
/// Terminate.
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Copies a frame into an owned `Bytes` (used when a frame must outlive the read buffer).
pub fn owned(frame: &[u8]) -> Bytes {
    Bytes::copy_from_slice(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(((body.len() + 4) as i32).to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn parse_round_trip_with_new_name() {
        let mut out = BytesMut::new();
        write_parse(&mut out, b"s1", b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let p = Parse::read(&out).unwrap();
        assert_eq!((p.name, p.query), (&b"s1"[..], &b"SELECT $1"[..]));
        let mut out2 = BytesMut::new();
        write_parse(&mut out2, b"sluice_7", p.query, p.param_types);
        let p2 = Parse::read(&out2).unwrap();
        assert_eq!(p2.name, b"sluice_7");
        assert_eq!(p2.param_types, p.param_types);
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(Parse::read(&frame(b'P', b"s\0SELECT 1\0\0\x02")).is_err());
        assert!(Parse::read(&frame(b'P', b"s\0SELECT 1")).is_err());
        assert!(Bind::read(&frame(b'B', b"\0")).is_err());
        assert!(DescribeOrClose::read(&frame(b'D', b"Xname\0")).is_err());
        assert!(execute_portal(&frame(b'E', b"\0\0\0")).is_err());
        assert!(FrontendTag::from_byte(b'z').is_err());
    }

    #[test]
    fn bind_rewrite_keeps_rest() {
        let f = frame(b'B', b"p\0s1\0\0\0\0\x01\0\0\0\x011\0\0");
        let b = Bind::read(&f).unwrap();
        let mut out = BytesMut::new();
        write_bind(&mut out, &b, b"sluice_1");
        let b2 = Bind::read(&out).unwrap();
        assert_eq!(
            (b2.portal, b2.statement, b2.rest),
            (&b"p"[..], &b"sluice_1"[..], b.rest)
        );
    }
}
