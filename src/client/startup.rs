//! A client's first messages: SSL/GSSENC negotiation (declined), CancelRequest, the
//! StartupMessage, and password authentication (SCRAM-SHA-256 or md5). Unknown users go
//! through a SCRAM exchange against a random secret, so they fail the same way as a wrong
//! password and do not reveal which users exist.

use bytes::{Buf, Bytes, BytesMut};
use rand::RngCore;
use tokio::net::TcpStream;

use crate::auth::scram::{ScramSecret, ScramServer, MECHANISM};
use crate::auth::{md5, AuthError};
use crate::config::{AuthMethod, User, UserSecret};
use crate::error::Error;
use crate::protocol::backend;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::io::{read_some, write_all};
use crate::protocol::startup::{self, Startup};

/// Largest password/SASL message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

/// A client that finished startup.
pub enum Hello {
    /// A regular session request.
    Session {
        /// Startup parameters.
        params: Vec<(String, String)>,
    },
    /// A CancelRequest (the connection carries nothing else).
    Cancel {
        /// pid.
        pid: i32,
        /// secret.
        secret: i32,
    },
}

/// Reads the startup packet, answering SSL/GSSENC requests with 'N'.
pub async fn read_startup(stream: &TcpStream, buf: &mut BytesMut) -> Result<Hello, Error> {
    loop {
        let len = loop {
            if let Some(len) = startup::startup_len(buf)? {
                if buf.len() >= len {
                    break len;
                }
            }
            if read_some(stream, buf).await.map_err(Error::ClientIo)? == 0 {
                return Err(Error::ClientIo(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let packet = buf.split_to(len);
        match startup::decode(&packet)? {
            Startup::Ssl | Startup::GssEnc => {
                if !buf.is_empty() {
                    // Bytes after an SSLRequest before our answer would be a downgrade attack.
                    return Err(Error::UnexpectedMessage(
                        "data received before the SSL/GSS response",
                    ));
                }
                write_all(stream, b"N").await.map_err(Error::ClientIo)?;
            }
            Startup::Cancel { pid, secret } => return Ok(Hello::Cancel { pid, secret }),
            Startup::Startup { version, params } => {
                let unsupported: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if version != startup::PROTOCOL_3_0 || !unsupported.is_empty() {
                    let mut out = BytesMut::new();
                    backend::negotiate_protocol_version(&mut out, 0, &unsupported);
                    write_all(stream, &out).await.map_err(Error::ClientIo)?;
                }
                return Ok(Hello::Session { params });
            }
        }
    }
}

/// Reads one 'p' message body during authentication.
async fn read_password(stream: &TcpStream, buf: &mut BytesMut) -> Result<Bytes, Error> {
    loop {
        if let Some(h) = complete_frame(buf, MAX_AUTH_MESSAGE)? {
            if h.tag != b'p' {
                return Err(Error::UnexpectedMessage("expected a password message"));
            }
            let mut frame = buf.split_to(h.total).freeze();
            frame.advance(HEADER_LEN);
            return Ok(frame);
        }
        if read_some(stream, buf).await.map_err(Error::ClientIo)? == 0 {
            return Err(Error::ClientIo(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Credentials proven by the client, usable for passthrough server logins.
pub enum Proven {
    /// Plaintext known from config.
    Password(String),
    /// md5 secret from config.
    Md5(String),
    /// ClientKey recovered from SCRAM, with the secret it belongs to.
    ScramKey([u8; 32], ScramSecret),
}

/// Authenticates `name` (None when the user is not configured).
pub async fn authenticate(
    stream: &TcpStream,
    buf: &mut BytesMut,
    name: &str,
    user: Option<&User>,
) -> Result<Proven, Error> {
    let method = user.map_or(AuthMethod::ScramSha256, |u| u.auth);
    match method {
        AuthMethod::ScramSha256 => {
            let secret = match user.map(|u| &u.secret) {
                Some(UserSecret::Plain { scram, .. }) => scram.clone(),
                Some(UserSecret::Scram(s)) => s.clone(),
                // Unknown user (or misconfigured): a throwaway secret nobody can match.
                _ => ScramSecret::from_password(&random_password()),
            };
            let mut out = BytesMut::new();
            backend::auth_sasl(&mut out, &[MECHANISM]);
            write_all(stream, &out).await.map_err(Error::ClientIo)?;
            let initial = read_password(stream, buf).await?;
            let data = sasl_initial(&initial)?;
            let (server, first) = ScramServer::start(secret, &data)?;
            out.clear();
            backend::auth_sasl_data(&mut out, 11, &first);
            write_all(stream, &out).await.map_err(Error::ClientIo)?;
            let fin = read_password(stream, buf).await?;
            let outcome = server.finish(&fin, name)?;
            let Some(u) = user else {
                return Err(AuthError::Failed(name.to_owned()).into());
            };
            out.clear();
            backend::auth_sasl_data(&mut out, 12, &outcome.server_final);
            write_all(stream, &out).await.map_err(Error::ClientIo)?;
            Ok(match &u.secret {
                UserSecret::Plain { password, .. } => {
                    Proven::Password(password.expose().to_owned())
                }
                UserSecret::Scram(s) => Proven::ScramKey(outcome.client_key, s.clone()),
                UserSecret::Md5(s) => Proven::Md5(s.expose().to_owned()),
            })
        }
        AuthMethod::Md5 => {
            let mut salt = [0u8; 4];
            rand::rng().fill_bytes(&mut salt);
            let mut out = BytesMut::new();
            backend::auth_md5(&mut out, salt);
            write_all(stream, &out).await.map_err(Error::ClientIo)?;
            let resp = read_password(stream, buf).await?;
            let resp = resp.strip_suffix(&[0]).unwrap_or(&resp);
            let (secret, proven) = match user.map(|u| &u.secret) {
                Some(UserSecret::Plain { password, .. }) => (
                    md5::secret(name, password.expose()),
                    Proven::Password(password.expose().to_owned()),
                ),
                Some(UserSecret::Md5(s)) => {
                    (s.expose().to_owned(), Proven::Md5(s.expose().to_owned()))
                }
                _ => return Err(AuthError::Failed(name.to_owned()).into()),
            };
            if md5::verify(&secret, salt, resp) {
                Ok(proven)
            } else {
                Err(AuthError::Failed(name.to_owned()).into())
            }
        }
    }
}

fn random_password() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Splits a SASLInitialResponse body: mechanism, then length-prefixed data.
fn sasl_initial(body: &[u8]) -> Result<Vec<u8>, Error> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(AuthError::Malformed("SASL initial response"))?;
    if &body[..nul] != MECHANISM.as_bytes() {
        return Err(AuthError::Malformed("unsupported SASL mechanism").into());
    }
    let rest = &body[nul + 1..];
    if rest.len() < 4 {
        return Err(AuthError::Malformed("SASL initial response").into());
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(AuthError::Malformed("SASL initial response length").into());
    }
    Ok(data.to_vec())
}
