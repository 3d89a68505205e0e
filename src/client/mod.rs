//! The client side: the listener, and one task per client that runs startup,
//! authentication and the request loop.

mod cached;
pub mod cancel;
mod login;
mod observe;
mod relay;
mod routing;
mod session;
pub mod startup;
pub mod state;
mod translate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::prepare::StatementRegistry;
use crate::server::params::ParamInterner;
use crate::shutdown::Shutdown;
use cancel::CancelRegistry;

/// State shared by every client task.
pub struct Shared {
    /// The current config (swapped on reload).
    pub config: ArcSwap<Config>,
    /// All pools.
    pub pools: Arc<Pools>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Pre-resolved per-request metric handles.
    pub hot: crate::metrics::HotMetrics,
    /// Shared server statements.
    pub statements: StatementRegistry,
    /// Auto-prepare shape table.
    pub auto: crate::prepare::AutoPrepare,
    /// Interned settings sets.
    pub params: ParamInterner,
    /// Cancel keys.
    pub cancels: CancelRegistry,
    /// Shutdown.
    pub shutdown: Shutdown,
    /// Routing state of databases with replicas.
    pub routers: crate::router::Routers,
    /// Statement classifications by text.
    pub classifier: crate::router::Classifier,
    /// The query cache.
    pub cache: Arc<crate::cache::Cache>,
    /// Recent slow requests.
    pub slow: observe::SlowLog,
    /// Paused databases.
    pub pauses: crate::pool::Pauses,
    /// Where the Postgres listener is bound (SQL over HTTP connects there).
    pub pg_addr: std::sync::OnceLock<SocketAddr>,
    /// Client connections per database (for `max_client_connections`).
    pub db_clients: Mutex<HashMap<String, usize>>,
}

/// Accepts clients until shutdown.
pub async fn listen(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.triggered() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.metrics.clients_accepted.inc();
                let sh = shared.clone();
                shared.shutdown.spawn("client", serve(sh, stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: log and keep accepting.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    session::run(shared, stream, peer).await;
}
