//! The routing state of every database with replicas, rebuilt on reload for databases
//! whose upstreams or monitor login changed (their monitors restart; others keep their
//! history).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::monitor;
use super::route::DbRouter;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::params::ParamSet;
use crate::server::{Login, ServerAuth};

struct Entry {
    router: Arc<DbRouter>,
    key: (String, Vec<String>, String, String, String),
}

/// Routers by database name.
pub struct Routers {
    map: ArcSwap<HashMap<String, Arc<DbRouter>>>,
    entries: std::sync::Mutex<HashMap<String, Entry>>,
    shutdown: CancellationToken,
}

impl Routers {
    /// No routers yet; `shutdown` stops every monitor.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::new()),
            entries: std::sync::Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// The router of `database`, if it has replicas.
    pub fn get(&self, database: &str) -> Option<Arc<DbRouter>> {
        self.map.load().get(database).cloned()
    }

    /// Every router.
    pub fn all(&self) -> Vec<Arc<DbRouter>> {
        self.map.load().values().cloned().collect()
    }

    /// Brings the routers in line with `cfg`, starting and stopping monitors. Must run
    /// inside the runtime.
    pub fn reconcile(
        &self,
        cfg: &Config,
        metrics: &Metrics,
        empty: &Arc<ParamSet>,
        cache: &Arc<crate::cache::Cache>,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for db in &cfg.databases {
            // Routing needs replicas; the cache needs the function catalog.
            let wanted = !db.replicas.is_empty() || !cfg.cache.rules.is_empty();
            let Some((user, password)) = db.monitor.as_ref().filter(|_| wanted) else {
                continue;
            };
            let key = (
                db.primary.clone(),
                db.replicas.clone(),
                user.clone(),
                password.expose().to_owned(),
                db.server_dbname.clone(),
            );
            let router = match entries.remove(&db.name) {
                Some(e) if e.key == key => {
                    e.router.settings.store(Arc::new(cfg.lag.clone()));
                    e.router
                }
                old => {
                    if let Some(e) = old {
                        e.router.cancel.cancel();
                    }
                    let router = Arc::new(DbRouter::new(
                        &db.name,
                        &db.primary,
                        &db.replicas,
                        cfg.lag.clone(),
                        metrics,
                        self.shutdown.child_token(),
                    ));
                    let login = Login {
                        user: user.clone(),
                        dbname: db.server_dbname.clone(),
                        auth: ServerAuth::Password(password.expose().to_owned()),
                    };
                    if !cfg.cache.rules.is_empty() {
                        crate::cache::listen::spawn(
                            router.clone(),
                            login.clone(),
                            empty.clone(),
                            cache.clone(),
                        );
                    }
                    monitor::spawn(router.clone(), login, empty.clone());
                    tracing::info!(database = %db.name, replicas = db.replicas.len(), "lag monitor started");
                    router
                }
            };
            next.insert(
                db.name.clone(),
                Entry {
                    router: router.clone(),
                    key,
                },
            );
        }
        for (_, e) in entries.drain() {
            e.router.cancel.cancel();
        }
        let map = next
            .iter()
            .map(|(k, e)| (k.clone(), e.router.clone()))
            .collect();
        *entries = next;
        self.map.store(Arc::new(map));
    }
}
