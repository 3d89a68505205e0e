//! Cache keys, from one typed builder. A key holds everything that can change a
//! result: database, authenticated user, current role, `search_path`, the settings a
//! rule names (such as an RLS tenant id), the statement, its parameter types and
//! values, and the requested formats. Every field is length-prefixed, so no two
//! different inputs can produce the same bytes. The version prefix retires old
//! entries when the layout changes.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

const VERSION: &[u8] = b"sluice-cache-v1";

/// What kind of request the entry answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A simple-protocol Query.
    Simple,
    /// Bind + Execute of a statement.
    Extended,
}

/// Builds a key field by field.
pub struct KeyBuilder {
    buf: BytesMut,
}

impl KeyBuilder {
    /// Starts a key for `kind` in `database` for the authenticated `user`.
    pub fn new(kind: Kind, database: &str, user: &str) -> Self {
        let mut b = Self {
            buf: BytesMut::with_capacity(256),
        };
        b.field(VERSION);
        b.field(match kind {
            Kind::Simple => b"Q",
            Kind::Extended => b"X",
        });
        b.field(database.as_bytes());
        b.field(user.as_bytes());
        b
    }

    /// Appends one field.
    pub fn field(&mut self, value: &[u8]) -> &mut Self {
        self.buf.put_u32(value.len() as u32);
        self.buf.put_slice(value);
        self
    }

    /// Appends a field that may be absent (distinct from empty).
    pub fn optional(&mut self, value: Option<&[u8]>) -> &mut Self {
        match value {
            Some(v) => {
                self.buf.put_u8(1);
                self.field(v)
            }
            None => {
                self.buf.put_u8(0);
                self
            }
        }
    }

    /// The key.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// The Valkey key of a cache key (a digest; the entry holds the full key to compare).
pub fn valkey_key(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    let mut s = String::with_capacity(9 + 64);
    s.push_str("sluice:c:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_run_together() {
        let mut a = KeyBuilder::new(Kind::Simple, "db", "u");
        a.field(b"ab").field(b"c");
        let mut b = KeyBuilder::new(Kind::Simple, "db", "u");
        b.field(b"a").field(b"bc");
        assert_ne!(a.finish(), b.finish());
        let mut c = KeyBuilder::new(Kind::Simple, "db", "u");
        c.optional(None);
        let mut d = KeyBuilder::new(Kind::Simple, "db", "u");
        d.optional(Some(b""));
        assert_ne!(c.finish(), d.finish());
        assert_ne!(
            KeyBuilder::new(Kind::Simple, "db", "u").finish(),
            KeyBuilder::new(Kind::Extended, "db", "u").finish()
        );
        assert_eq!(valkey_key(b"x").len(), 9 + 64);
    }
}
