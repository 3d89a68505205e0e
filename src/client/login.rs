//! From a connected socket to a known client: rejecting with a proper error, counting
//! clients against their database's limit, authenticating, and finding the pools
//! (primary and replicas) that serve the client's database and login.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::startup::{authenticate, Proven};
use super::Shared;
use crate::auth::scram::ScramCredential;
use crate::config::{Database, ServerCredentials};
use crate::error::Error;
use crate::pool::{Pool, PoolId};
use crate::protocol::io::write_all;
use crate::protocol::Severity;
use crate::server::{Login, ServerAuth};

/// Answers a client that cannot be served with a FATAL (and logs it).
pub(super) async fn fail(shared: &Shared, stream: &TcpStream, e: Error, peer: SocketAddr) {
    shared
        .metrics
        .errors
        .with_label_values(&[e.metric_label()])
        .inc();
    tracing::info!(%peer, error = %e, "client rejected");
    if matches!(e, Error::ClientIo(_)) {
        return;
    }
    let mut out = BytesMut::new();
    e.to_response_as(Severity::Fatal).encode(&mut out);
    let _ = write_all(stream, &out).await;
}

/// Counts a client against its database's limit for as long as it lives.
pub(super) struct ClientCount<'a> {
    shared: &'a Shared,
    db: String,
    count: usize,
}

impl<'a> ClientCount<'a> {
    pub(super) fn new(shared: &'a Shared, db: &str) -> Self {
        let mut map = shared.db_clients.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(db.to_owned()).or_insert(0);
        *n += 1;
        Self {
            shared,
            db: db.to_owned(),
            count: *n,
        }
    }

    pub(super) fn over_limit(&self, max: usize) -> bool {
        self.count > max
    }
}

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .db_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.db) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Authenticates the client and finds its database and pool.
pub(super) async fn login(
    shared: &Shared,
    stream: &TcpStream,
    buf: &mut BytesMut,
    params: &[(String, String)],
) -> Result<(Database, Upstreams, Identity), Error> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let user = get("user")
        .filter(|u| !u.is_empty())
        .ok_or(Error::NoUser)?
        .to_owned();
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(Error::ReplicationUnsupported);
    }
    let dbname = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let cfg = shared.config.load_full();
    let proven = authenticate(stream, buf, &user, cfg.user(&user)).await?;
    let db = cfg
        .database(&dbname)
        .cloned()
        .ok_or_else(|| Error::UnknownDatabase(dbname.clone()))?;
    let identity = Identity {
        user,
        database: dbname,
        proven: match proven {
            Proven::Password(p) => ServerAuth::Password(p),
            Proven::Md5(s) => ServerAuth::Md5Secret(s),
            Proven::ScramKey(client_key, secret) => {
                ServerAuth::Scram(ScramCredential::ClientKey { client_key, secret })
            }
        },
    };
    let ups = upstreams_for(shared, &db, &identity);
    Ok((db, ups, identity))
}

/// Who the client is, kept to find its pool again after a reload.
pub(super) struct Identity {
    /// Client user name.
    pub(super) user: String,
    /// Database name it asked for.
    pub(super) database: String,
    /// What it proved, for passthrough server logins.
    pub(super) proven: ServerAuth,
}

/// The pools of a client's database: the primary's and each replica's.
pub(super) struct Upstreams {
    pub(super) primary: Arc<Pool>,
    pub(super) replicas: Vec<Arc<Pool>>,
}

impl Upstreams {
    pub(super) fn retired(&self) -> bool {
        self.primary.is_retired() || self.replicas.iter().any(|p| p.is_retired())
    }
}

/// The pools serving `identity` on `db` under the current config.
pub(super) fn upstreams_for(shared: &Shared, db: &Database, identity: &Identity) -> Upstreams {
    Upstreams {
        primary: pool_for(shared, db, identity, &db.primary, false),
        replicas: db
            .replicas
            .iter()
            .map(|r| pool_for(shared, db, identity, r, true))
            .collect(),
    }
}

/// The pool serving `identity` on `db` at `addr` under the current config.
fn pool_for(
    shared: &Shared,
    db: &Database,
    identity: &Identity,
    addr: &str,
    replica: bool,
) -> Arc<Pool> {
    let (server_user, auth, passthrough) = match &db.credentials {
        ServerCredentials::Fixed { user, password } => (
            user.clone(),
            ServerAuth::Password(password.expose().to_owned()),
            false,
        ),
        ServerCredentials::Passthrough => (identity.user.clone(), identity.proven.clone(), true),
    };
    let login = Login {
        user: server_user.clone(),
        dbname: db.server_dbname.clone(),
        auth,
    };
    let id = PoolId {
        database: db.name.clone(),
        user: server_user,
        addr: addr.to_owned(),
        replica,
    };
    let pool = shared.pools.get(id, &db.pool, login.clone());
    if passthrough {
        pool.set_login(login);
    }
    pool
}
