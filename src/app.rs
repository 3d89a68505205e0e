//! Wiring: builds the shared state from a config, binds the listener, runs the accept
//! loop and the pool reaper, reloads on request, and shuts down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::client::cancel::CancelRegistry;
use crate::client::{listen, Shared};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::{reaper, Pools};
use crate::prepare::StatementRegistry;
use crate::router::{Classifier, Routers};
use crate::server::params::ParamInterner;
use crate::shutdown::Shutdown;

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    http: Option<TcpListener>,
    /// Where the HTTP listener is bound.
    pub http_addr: SocketAddr,
    /// Where the Postgres listener is bound (useful with port 0).
    pub local_addr: SocketAddr,
    config_path: Option<PathBuf>,
}

impl Proxy {
    /// Binds the listener for `config`. `config_path` is re-read on reload.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen_postgres).await?;
        let local_addr = listener.local_addr()?;
        let http = TcpListener::bind(config.listen_http).await?;
        let http_addr = http.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        let params = ParamInterner::new();
        let pools = Arc::new(Pools::new(metrics.clone(), params.empty()));
        let shutdown = Shutdown::new();
        let cache = crate::cache::Cache::new(&config.cache, &metrics, shutdown.child_token());
        let routers = Routers::new(shutdown.child_token());
        routers.reconcile(&config, &metrics, &params.empty(), &cache);
        let shared = Arc::new(Shared {
            slow: Default::default(),
            pauses: Default::default(),
            pg_addr: std::sync::OnceLock::new(),
            cache,
            routers,
            classifier: Classifier::new(10_000),
            config: ArcSwap::from_pointee(config),
            pools,
            hot: metrics.hot(),
            metrics,
            statements: StatementRegistry::new(),
            auto: crate::prepare::AutoPrepare::new(),
            params,
            cancels: CancelRegistry::new(),
            shutdown,
            db_clients: Mutex::new(HashMap::new()),
        });
        let _ = shared.pg_addr.set(local_addr);
        Ok(Self {
            shared,
            listener: Some(listener),
            http: Some(http),
            http_addr,
            local_addr,
            config_path,
        })
    }

    /// The shutdown handle.
    pub fn shutdown(&self) -> Shutdown {
        self.shared.shutdown.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// A handle to the statement-shape statistics.
    pub fn top_shapes(&self) -> TopShapes {
        TopShapes {
            shared: self.shared.clone(),
        }
    }

    /// A handle that reloads the config file.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            path: self.config_path.clone(),
        }
    }

    /// Serves until shutdown, then waits up to `shutdown_timeout` for clients.
    pub async fn serve(mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let sh = self.shared.clone();
        tokio::spawn(reaper(sh.pools.clone(), sh.shutdown.clone()));
        tokio::spawn(decay_shapes(sh.clone()));
        if let Some(http) = self.http.take() {
            tracing::info!(addr = %self.http_addr, "HTTP listening");
            tokio::spawn(crate::http::serve(sh.clone(), http, self.reloader()));
        }
        tracing::info!(addr = %self.local_addr, "sluice listening");
        listen(sh.clone(), listener).await;
        let timeout = sh.config.load().limits.shutdown_timeout;
        tracing::info!(?timeout, "shutting down: waiting for running transactions");
        if tokio::time::timeout(timeout, sh.shutdown.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timeout reached; closing remaining connections");
        }
        for pool in sh.pools.all() {
            pool.retire();
        }
    }
}

/// Read access to the auto-prepare shape statistics (for tests and the HTTP views).
#[derive(Clone)]
pub struct TopShapes {
    shared: Arc<Shared>,
}

impl TopShapes {
    /// The `n` most executed shapes.
    pub fn top(&self, n: usize) -> Vec<crate::prepare::auto::ShapeStats> {
        self.shared.auto.top(n)
    }
}

/// Halves auto-prepare counts every `prepare.window`.
async fn decay_shapes(sh: Arc<Shared>) {
    loop {
        let window = sh.config.load().prepare.window;
        tokio::select! {
            _ = tokio::time::sleep(window) => sh.auto.decay(),
            _ = sh.shutdown.triggered() => return,
        }
    }
}

/// Reloads `proxy.toml` (SIGHUP, and later the HTTP API).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
}

impl Reloader {
    /// Re-reads the file and applies it; returns what happened.
    pub fn reload(&self) -> Result<String, String> {
        let result = self.try_reload();
        let label = if result.is_ok() { "success" } else { "failure" };
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(msg) => tracing::info!(%msg, "config reloaded"),
            Err(msg) => tracing::error!(%msg, "config reload refused"),
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let path = self.path.as_ref().ok_or("no config file to reload")?;
        let new = Config::load(path).map_err(|e| e.to_string())?;
        let old = self.shared.config.load_full();
        let restart = old.restart_required_changes(&new);
        if !restart.is_empty() {
            return Err(format!(
                "{} changed; these need a restart (nothing was applied)",
                restart.join(", ")
            ));
        }
        if *old == new {
            return Ok("no changes".into());
        }
        self.shared.pools.reconfigure(&new);
        self.shared.routers.reconcile(
            &new,
            &self.shared.metrics,
            &self.shared.params.empty(),
            &self.shared.cache,
        );
        self.shared.config.store(Arc::new(new));
        Ok("applied".into())
    }
}

/// Runs a proxy for `config` until `shutdown` fires.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let proxy = Proxy::bind(config, config_path).await?;
    let inner = proxy.shutdown();
    tokio::spawn(async move {
        shutdown.triggered().await;
        inner.trigger();
    });
    proxy.serve().await;
    Ok(())
}
