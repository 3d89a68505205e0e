//! The set of pools, keyed by (database, server user, upstream address).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Pool;
use crate::config::{Config, PoolSettings};
use crate::metrics::Metrics;
use crate::server::params::ParamSet;
use crate::server::Login;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolId {
    /// Client-facing database name.
    pub database: String,
    /// Server login user.
    pub user: String,
    /// Upstream `host:port`.
    pub addr: String,
    /// The upstream is a replica of the database.
    pub replica: bool,
}

/// All pools.
pub struct Pools {
    map: Mutex<HashMap<PoolId, Arc<Pool>>>,
    metrics: Arc<Metrics>,
    empty: Arc<ParamSet>,
}

impl Pools {
    /// No pools yet; they are created on first use.
    pub fn new(metrics: Arc<Metrics>, empty: Arc<ParamSet>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            metrics,
            empty,
        }
    }

    /// The pool for `id`, created with `settings` and `login` if new.
    pub fn get(&self, id: PoolId, settings: &PoolSettings, login: Login) -> Arc<Pool> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(&id) {
            return p.clone();
        }
        let name = if id.replica {
            format!("{}/{}@{}", id.database, id.user, id.addr)
        } else {
            format!("{}/{}", id.database, id.user)
        };
        let pool = Arc::new(Pool::new(
            name.clone(),
            id.addr.clone(),
            settings.clone(),
            login,
            self.metrics.pool(&name),
            self.empty.clone(),
        ));
        map.insert(id, pool.clone());
        pool
    }

    /// Every pool.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Applies a reloaded config: new settings for pools whose database still points at
    /// the same upstream, retirement for the others (their clients keep working; new
    /// clients get new pools).
    pub fn reconfigure(&self, cfg: &Config) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, pool| {
            let same_login = |db: &crate::config::Database| match &db.credentials {
                crate::config::ServerCredentials::Fixed { user, password } => {
                    let login = pool.login();
                    *user == id.user && matches!(&login.auth, crate::server::ServerAuth::Password(p) if p == password.expose())
                }
                crate::config::ServerCredentials::Passthrough => true,
            };
            match cfg.database(&id.database) {
                Some(db)
                    if same_login(db)
                        && if id.replica {
                            db.replicas.contains(&id.addr)
                        } else {
                            db.primary == id.addr
                        } =>
                {
                    pool.update_settings(db.pool.clone());
                    true
                }
                _ => {
                    pool.retire();
                    false
                }
            }
        });
    }
}
