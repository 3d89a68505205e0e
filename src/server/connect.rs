//! Opening a server connection: TCP connect, StartupMessage, authentication (trust,
//! cleartext, md5, SCRAM-SHA-256), then ParameterStatus and BackendKeyData up to the
//! first ReadyForQuery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;

use super::conn::{CancelKey, ServerConn};
use super::params::ParamSet;
use crate::auth::md5;
use crate::auth::scram::{ScramClient, ScramCredential, MECHANISM};
use crate::prepare::PreparedSet;
use crate::protocol::backend::{parse_parameter_status, tag, TxStatus};
use crate::protocol::error_response::parse_error_fields;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::io::{read_some, write_all};
use crate::protocol::startup::PROTOCOL_3_0;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Credentials for the server's authentication request.
#[derive(Clone)]
pub enum ServerAuth {
    /// A plaintext password (any method).
    Password(String),
    /// An md5 secret (`md5…`): md5 only.
    Md5Secret(String),
    /// SCRAM via a client's recovered key: SCRAM only.
    Scram(ScramCredential),
    /// No credential: only trust works.
    None,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerAuth::Password(_) => "Password(****)",
            ServerAuth::Md5Secret(_) => "Md5Secret(****)",
            ServerAuth::Scram(_) => "Scram(****)",
            ServerAuth::None => "None",
        })
    }
}

/// Who to log in as.
#[derive(Debug, Clone)]
pub struct Login {
    /// Server user.
    pub user: String,
    /// Server database.
    pub dbname: String,
    /// Credential.
    pub auth: ServerAuth,
}

/// Why a connection attempt failed (rendered into the client's 08001 message).
#[derive(Debug)]
pub struct ConnectFailure(pub String);

fn fail(msg: impl Into<String>) -> ConnectFailure {
    ConnectFailure(msg.into())
}

async fn next_frame(stream: &TcpStream, buf: &mut BytesMut) -> Result<(u8, Bytes), ConnectFailure> {
    loop {
        match complete_frame(buf, 1 << 20) {
            Ok(Some(h)) => {
                let frame = buf.split_to(h.total).freeze();
                return Ok((h.tag, frame.slice(HEADER_LEN..)));
            }
            Ok(None) => {}
            Err(e) => return Err(fail(format!("bad frame during login: {e}"))),
        }
        match read_some(stream, buf).await {
            Ok(0) => return Err(fail("server closed the connection during login")),
            Ok(_) => {}
            Err(e) => return Err(fail(format!("read failed during login: {e}"))),
        }
    }
}

fn password_message(out: &mut BytesMut, payload: &[u8], nul: bool) {
    out.put_u8(b'p');
    out.put_i32((4 + payload.len() + usize::from(nul)) as i32);
    out.put_slice(payload);
    if nul {
        out.put_u8(0);
    }
}

/// Connects and logs in. The caller applies its own timeout.
pub async fn connect(
    addr: &str,
    login: &Login,
    empty: Arc<ParamSet>,
) -> Result<ServerConn, ConnectFailure> {
    connect_with(addr, login, empty, &[]).await
}

/// [`connect`] with extra startup parameters.
pub async fn connect_with(
    addr: &str,
    login: &Login,
    empty: Arc<ParamSet>,
    extra: &[(&str, &str)],
) -> Result<ServerConn, ConnectFailure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(|e| fail(format!("set_nodelay: {e}")))?;
    let peer: SocketAddr = stream
        .peer_addr()
        .map_err(|e| fail(format!("peer_addr: {e}")))?;
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in [
        ("user", login.user.as_str()),
        ("database", login.dbname.as_str()),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    write_all(&stream, &out)
        .await
        .map_err(|e| fail(format!("write: {e}")))?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramClient> = None;
    let mut reported = Vec::new();
    let mut key = None;
    loop {
        let (t, body) = next_frame(&stream, &mut buf).await?;
        match t {
            tag::AUTHENTICATION => {
                if body.len() < 4 {
                    return Err(fail("malformed authentication request"));
                }
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let data = &body[4..];
                out.clear();
                match code {
                    0 => continue,
                    3 => match &login.auth {
                        ServerAuth::Password(p) => password_message(&mut out, p.as_bytes(), true),
                        _ => return Err(fail(
                            "server asks for a cleartext password; configure a plaintext password",
                        )),
                    },
                    5 => {
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| fail("bad md5 salt"))?;
                        let secret =
                            match &login.auth {
                                ServerAuth::Password(p) => md5::secret(&login.user, p),
                                ServerAuth::Md5Secret(s) => s.clone(),
                                _ => return Err(fail(
                                    "server asks for md5; configure a plaintext or md5 password",
                                )),
                            };
                        password_message(
                            &mut out,
                            md5::response_from_secret(&secret, salt).as_bytes(),
                            true,
                        );
                    }
                    10 => {
                        let offered = data.split(|&b| b == 0).any(|m| m == MECHANISM.as_bytes());
                        if !offered {
                            return Err(fail("server offers no SASL mechanism sluice supports"));
                        }
                        let cred = match &login.auth {
                            ServerAuth::Password(p) => ScramCredential::Password(p.clone()),
                            ServerAuth::Scram(c) => c.clone(),
                            _ => return Err(fail("server asks for SCRAM; configure a plaintext password or the user's SCRAM secret")),
                        };
                        let (client, first) = ScramClient::new(cred);
                        scram = Some(client);
                        let mut payload = BytesMut::new();
                        payload.put_slice(MECHANISM.as_bytes());
                        payload.put_u8(0);
                        payload.put_i32(first.len() as i32);
                        payload.put_slice(&first);
                        password_message(&mut out, &payload, false);
                    }
                    11 => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| fail("unexpected SASLContinue"))?;
                        let fin = client.respond(data).map_err(|e| fail(e.to_string()))?;
                        password_message(&mut out, &fin, false);
                    }
                    12 => {
                        let client = scram.as_ref().ok_or_else(|| fail("unexpected SASLFinal"))?;
                        client.verify_final(data).map_err(|e| fail(e.to_string()))?;
                        continue;
                    }
                    other => {
                        return Err(fail(format!("unsupported authentication method {other}")))
                    }
                }
                write_all(&stream, &out)
                    .await
                    .map_err(|e| fail(format!("write: {e}")))?;
            }
            tag::PARAMETER_STATUS => {
                if let Some((n, v)) = parse_parameter_status(&body) {
                    reported.push((n, v));
                }
            }
            tag::BACKEND_KEY_DATA => {
                if body.len() >= 8 {
                    key = Some((
                        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ));
                }
            }
            tag::ERROR_RESPONSE => {
                let f = parse_error_fields(&body);
                return Err(fail(format!("server error {}: {}", f.code, f.message)));
            }
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            tag::READY_FOR_QUERY => break,
            other => {
                return Err(fail(format!(
                    "unexpected message 0x{other:02x} during login"
                )))
            }
        }
    }
    let (pid, secret) = key.unwrap_or((0, 0));
    let now = Instant::now();
    Ok(ServerConn {
        stream,
        rbuf: buf,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        cancel: CancelKey {
            addr: peer,
            pid,
            secret,
        },
        created: now,
        last_used: now,
        applied: empty,
        params_dirty: false,
        reported,
        prepared: PreparedSet::default(),
        unnamed: None,
        status: TxStatus::Idle,
        cancel_sent: Arc::new(AtomicBool::new(false)),
    })
}

/// Sends a CancelRequest for `key` on a new connection.
pub async fn send_cancel(key: &CancelKey) -> std::io::Result<()> {
    let stream = TcpStream::connect(key.addr).await?;
    let mut out = BytesMut::with_capacity(16);
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(key.pid);
    out.put_i32(key.secret);
    write_all(&stream, &out).await
}
