//! What sluice remembers about one client's session in transaction mode: its settings,
//! its statement names, its unnamed statement, its transaction status, and the
//! bookkeeping of the request currently in flight.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::prepare::ServerStatement;
use crate::protocol::backend::TxStatus;
use crate::router::{Effect, StatementInfo};
use crate::server::params::ParamSet;

/// The client's unnamed statement (kept to re-`Parse` it on another connection).
#[derive(Debug, Clone)]
pub struct Unnamed {
    /// Sequence number; (client id, seq) identifies it on a server connection.
    pub seq: u64,
    /// The client's Parse frame, as sent.
    pub parse: Bytes,
    /// Its facts.
    pub info: Arc<StatementInfo>,
    /// The shared server statement standing in for it once auto-prepared.
    pub prepared: Option<Arc<ServerStatement>>,
}

/// Per-request bookkeeping, reset at each ReadyForQuery.
#[derive(Debug, Default)]
pub struct Unit {
    /// An ErrorResponse was relayed.
    pub error: bool,
    /// The last CommandComplete was COMMIT.
    pub committed: bool,
    /// Session effects of statements that completed.
    pub effects: Vec<Effect>,
}

/// Session state.
#[derive(Debug)]
pub struct ClientState {
    /// Settings from the startup packet (what RESET returns to).
    pub startup: Arc<ParamSet>,
    /// Current committed settings, re-applied on every server connection.
    pub params: Arc<ParamSet>,
    /// Effects inside the current explicit transaction (applied at COMMIT).
    pub tx_effects: Vec<Effect>,
    /// Client statement name -> server statement.
    pub statements: HashMap<Vec<u8>, Arc<ServerStatement>>,
    /// The unnamed statement.
    pub unnamed: Option<Unnamed>,
    /// Next unnamed sequence number.
    pub unnamed_seq: u64,
    /// Facts of statements bound to portals (only non-plain ones).
    pub portals: HashMap<Vec<u8>, Arc<StatementInfo>>,
    /// Transaction status as last reported to the client.
    pub status: TxStatus,
    /// The request in flight.
    pub unit: Unit,
}

impl ClientState {
    /// A fresh session with the given startup settings.
    pub fn new(startup: Arc<ParamSet>) -> Self {
        Self {
            params: startup.clone(),
            startup,
            tx_effects: Vec::new(),
            statements: HashMap::new(),
            unnamed: None,
            unnamed_seq: 0,
            portals: HashMap::new(),
            status: TxStatus::Idle,
            unit: Unit::default(),
        }
    }

    /// The `search_path` the client set, if any (part of statement keys).
    pub fn search_path(&self) -> Option<Arc<str>> {
        self.params.get("search_path").map(Arc::from)
    }
}
