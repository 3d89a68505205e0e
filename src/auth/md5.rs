//! Postgres md5 password authentication: `"md5" + hex(md5(hex(md5(password + user)) + salt))`.

use md5::{Digest, Md5};

fn hex_md5(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The stored form `"md5" + hex(md5(password + user))`, as in `pg_authid`.
pub fn secret(user: &str, password: &str) -> String {
    format!("md5{}", hex_md5(&[password.as_bytes(), user.as_bytes()]))
}

/// The response a client sends for `salt`, from the stored secret (`md5…`).
pub fn response_from_secret(secret: &str, salt: [u8; 4]) -> String {
    let inner = secret.strip_prefix("md5").unwrap_or(secret);
    format!("md5{}", hex_md5(&[inner.as_bytes(), &salt]))
}

/// Constant-time check of a client's md5 response against the stored secret.
pub fn verify(secret: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let expected = response_from_secret(secret, salt);
    super::scram::ct_eq(expected.as_bytes(), response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_format() {
        // SELECT 'md5' || md5('secret' || 'alice')
        assert_eq!(
            secret("alice", "secret"),
            format!("md5{}", hex_md5(&[b"secretalice"]))
        );
        let s = secret("alice", "secret");
        let r = response_from_secret(&s, [1, 2, 3, 4]);
        assert!(verify(&s, [1, 2, 3, 4], r.as_bytes()));
        assert!(!verify(&s, [1, 2, 3, 5], r.as_bytes()));
        // Agrees with postgres-protocol's client-side computation.
        let pp = postgres_protocol::password::md5(b"secret", "alice");
        assert_eq!(pp, s);
    }
}
