//! One server connection and what the proxy knows about its session.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::params::ParamSet;
use crate::prepare::PreparedSet;
use crate::protocol::backend::TxStatus;

/// Where and how to cancel what this connection is running.
#[derive(Debug, Clone)]
pub struct CancelKey {
    /// The server address.
    pub addr: SocketAddr,
    /// Backend pid.
    pub pid: i32,
    /// Backend secret.
    pub secret: i32,
}

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not yet relayed.
    pub rbuf: BytesMut,
    /// Process-unique id (for logs).
    pub id: u64,
    /// Cancel key.
    pub cancel: CancelKey,
    /// When the connection was opened.
    pub created: Instant,
    /// When it was last checked in.
    pub last_used: Instant,
    /// Settings sluice has applied.
    pub applied: Arc<ParamSet>,
    /// The applied settings are not known exactly; the next checkout resets fully.
    pub params_dirty: bool,
    /// ParameterStatus values as last reported by the server.
    pub reported: Vec<(String, String)>,
    /// Server statements it holds.
    pub prepared: PreparedSet,
    /// Which client's unnamed statement it holds: (client id, parse sequence).
    pub unnamed: Option<(u64, u64)>,
    /// Transaction status at the last ReadyForQuery.
    pub status: TxStatus,
    /// Set when a cancel was forwarded to it: it is closed instead of reused, so the
    /// cancel can never hit another client's query.
    pub cancel_sent: Arc<AtomicBool>,
}

impl ServerConn {
    /// Records a ParameterStatus report.
    pub fn set_reported(&mut self, name: String, value: String) {
        match self.reported.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.reported.push((name, value)),
        }
    }

    /// True when a cancel was forwarded while a client held it.
    pub fn cancel_was_sent(&self) -> bool {
        self.cancel_sent.load(std::sync::atomic::Ordering::Acquire)
    }
}
