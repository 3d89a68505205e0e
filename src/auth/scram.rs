//! SCRAM-SHA-256 (RFC 5802/7677 as profiled by Postgres), server and client side.
//!
//! The server side verifies a client against a stored secret
//! (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`) and recovers the client's
//! ClientKey, which lets the proxy log in to a Postgres that stores the same secret
//! without ever knowing the password. Channel binding is not offered (no TLS yet).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

/// The mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations used when the proxy derives a secret from a plaintext password.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A stored SCRAM secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt bytes.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret(****)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// PBKDF2-HMAC-SHA256 with one output block (RFC 5802 `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn normalize(password: &str) -> Vec<u8> {
    // Postgres applies SASLprep and falls back to the raw bytes when it fails.
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// Keys derived from a password for a given salt and iteration count.
#[derive(Clone)]
pub struct ClientKeys {
    /// HMAC(SaltedPassword, "Client Key").
    pub client_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl ClientKeys {
    /// Derives keys from a plaintext password.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(&normalize(password), salt, iterations);
        Self {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }
}

impl ScramSecret {
    /// Derives a secret with a fresh random salt.
    pub fn from_password(password: &str) -> Self {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let keys = ClientKeys::from_password(password, &salt, DEFAULT_ITERATIONS);
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt,
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }

    /// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok().filter(|&i| i > 0)?;
        let salt = B64.decode(salt).ok()?;
        let stored_key: [u8; 32] = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key: [u8; 32] = B64.decode(server).ok()?.try_into().ok()?;
        Some(Self {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

/// Constant-time byte comparison.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

fn attr(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

/// Server side of one exchange.
pub struct ScramServer {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// What a successful exchange yields.
pub struct ScramOutcome {
    /// AuthenticationSASLFinal payload.
    pub server_final: Vec<u8>,
    /// The client's ClientKey, usable to log in to a server with the same secret.
    pub client_key: [u8; 32],
}

impl ScramServer {
    /// Handles the client-first message; returns the server-first message.
    pub fn start(secret: ScramSecret, client_first: &[u8]) -> Result<(Self, Vec<u8>), AuthError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let bare = if let Some(b) = msg.strip_prefix("n,,") {
            b
        } else if let Some(b) = msg.strip_prefix("y,,") {
            b
        } else {
            return Err(AuthError::Malformed(
                "unsupported GS2 header (channel binding is not offered)",
            ));
        };
        let client_nonce = attr(bare, 'r').ok_or(AuthError::Malformed("missing nonce"))?;
        if client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(AuthError::Malformed("bad nonce"));
        }
        let nonce = format!("{client_nonce}{}", nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        let out = server_first.clone().into_bytes();
        Ok((
            Self {
                secret,
                client_first_bare: bare.to_owned(),
                server_first,
                nonce,
            },
            out,
        ))
    }

    /// Verifies the client-final message.
    pub fn finish(self, client_final: &[u8], user: &str) -> Result<ScramOutcome, AuthError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof_b64) = msg
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("missing proof"))?;
        let cbind =
            attr(without_proof, 'c').ok_or(AuthError::Malformed("missing channel binding"))?;
        if cbind != "biws" && cbind != "eSws" {
            return Err(AuthError::Malformed("unexpected channel binding"));
        }
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| AuthError::Malformed("bad proof encoding"))?;
        if proof.len() != 32 {
            return Err(AuthError::Failed(user.to_owned()));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        if !ct_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(AuthError::Failed(user.to_owned()));
        }
        let server_sig = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok(ScramOutcome {
            server_final: format!("v={}", B64.encode(server_sig)).into_bytes(),
            client_key,
        })
    }
}

/// Credentials the proxy can log in to Postgres with over SCRAM.
#[derive(Clone)]
pub enum ScramCredential {
    /// A plaintext password.
    Password(String),
    /// A ClientKey recovered from a client's login, valid for this secret's salt.
    ClientKey {
        /// The recovered key.
        client_key: [u8; 32],
        /// The secret the key belongs to (its salt must match the server's).
        secret: ScramSecret,
    },
}

/// Client side of one exchange against a Postgres server.
pub struct ScramClient {
    credential: ScramCredential,
    nonce: String,
    client_first_bare: String,
    pending: Option<(String, [u8; 32])>,
}

impl ScramClient {
    /// Starts an exchange; returns the client-first message.
    pub fn new(credential: ScramCredential) -> (Self, Vec<u8>) {
        let nonce = nonce();
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}").into_bytes();
        (
            Self {
                credential,
                nonce,
                client_first_bare,
                pending: None,
            },
            first,
        )
    }

    /// Handles server-first; returns client-final.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let msg =
            std::str::from_utf8(server_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let nonce = attr(msg, 'r').ok_or(AuthError::Malformed("missing nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(AuthError::Malformed("server nonce does not extend ours"));
        }
        let salt = B64
            .decode(attr(msg, 's').ok_or(AuthError::Malformed("missing salt"))?)
            .map_err(|_| AuthError::Malformed("bad salt"))?;
        let iterations: u32 = attr(msg, 'i')
            .and_then(|i| i.parse().ok())
            .filter(|&i| i > 0)
            .ok_or(AuthError::Malformed("bad iteration count"))?;
        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(p) => {
                let k = ClientKeys::from_password(p, &salt, iterations);
                (k.client_key, k.server_key)
            }
            ScramCredential::ClientKey { client_key, secret } => {
                if secret.salt != salt || secret.iterations != iterations {
                    return Err(AuthError::Unsupported(
                        "the server's SCRAM secret differs from the one configured for this user; \
                         configure a plaintext password or the server's exact secret"
                            .into(),
                    ));
                }
                (*client_key, secret.server_key)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let stored_key = sha256(&client_key);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ signature[i];
        }
        self.pending = Some((auth_message, server_key));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's final signature.
    pub fn verify_final(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let (auth_message, server_key) = self
            .pending
            .as_ref()
            .ok_or(AuthError::Malformed("out of order"))?;
        let msg =
            std::str::from_utf8(server_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let v = attr(msg, 'v').ok_or(AuthError::Malformed("missing server signature"))?;
        let got = B64
            .decode(v)
            .map_err(|_| AuthError::Malformed("bad server signature"))?;
        let expected = hmac(server_key, &[auth_message.as_bytes()]);
        if ct_eq(&got, &expected) {
            Ok(())
        } else {
            Err(AuthError::Malformed("server signature mismatch"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn server_accepts_postgres_protocol_client() {
        let secret = ScramSecret::from_password("pencil");
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(secret, client.message()).unwrap();
        client.update(&first).unwrap();
        let outcome = server.finish(client.message(), "u").unwrap();
        client.finish(&outcome.server_final).unwrap();
    }

    #[test]
    fn server_rejects_wrong_password() {
        let secret = ScramSecret::from_password("pencil");
        let mut client = ScramSha256::new(b"crayon", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(secret, client.message()).unwrap();
        client.update(&first).unwrap();
        assert_eq!(
            server.finish(client.message(), "u").err(),
            Some(AuthError::Failed("u".into()))
        );
    }

    #[test]
    fn client_key_passthrough_logs_in_with_same_secret() {
        // A client logs in to the proxy; the recovered key then logs in to a "server"
        // holding the same secret.
        let secret = ScramSecret::from_password("pencil");
        let (mut c1, first) = ScramClient::new(ScramCredential::Password("pencil".into()));
        let (s1, sfirst) = ScramServer::start(secret.clone(), &first).unwrap();
        let fin = c1.respond(&sfirst).unwrap();
        let out = s1.finish(&fin, "u").unwrap();
        c1.verify_final(&out.server_final).unwrap();

        let cred = ScramCredential::ClientKey {
            client_key: out.client_key,
            secret: secret.clone(),
        };
        let (mut c2, first) = ScramClient::new(cred);
        let (s2, sfirst) = ScramServer::start(secret, &first).unwrap();
        let fin = c2.respond(&sfirst).unwrap();
        let out2 = s2.finish(&fin, "u").unwrap();
        c2.verify_final(&out2.server_final).unwrap();
    }

    #[test]
    fn parses_postgres_secret_format() {
        let s = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$\
                 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let parsed = ScramSecret::parse(s).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt, b"saltsalt");
        assert!(ScramSecret::parse("SCRAM-SHA-256$x:y$z").is_none());
        assert!(ScramSecret::parse("md5abc").is_none());
    }

    #[test]
    fn malformed_client_messages_are_errors() {
        let secret = ScramSecret::from_password("p");
        assert!(ScramServer::start(secret.clone(), b"p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(ScramServer::start(secret.clone(), b"n,,n=").is_err());
        assert!(ScramServer::start(secret.clone(), &[0xff, 0xfe]).is_err());
        let (s, _) = ScramServer::start(secret, b"n,,n=,r=abc").unwrap();
        assert!(s.finish(b"c=biws,r=wrong,p=AAAA", "u").is_err());
    }
}
