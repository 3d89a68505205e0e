//! The HTTP face on `[listen] http`: Prometheus `/metrics`, liveness `/health`, readiness
//! `/ready` (503 when a primary is unreachable), and read-only admin views (`/pools`).
//! Mutating admin calls and SQL over HTTP come later; nothing here changes state.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::client::Shared;

/// Serves HTTP until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    let app = router(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/pools", get(pools))
        .with_state(shared)
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sh.metrics.render(),
    )
        .into_response()
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

fn pool_views(sh: &Shared) -> Vec<Value> {
    let mut out: Vec<Value> = sh
        .pools
        .all()
        .iter()
        .map(|p| {
            let (total, idle, waiting) = p.stats();
            let s = p.settings();
            json!({
                "name": p.name,
                "upstream": p.addr,
                "size": s.size,
                "open": total,
                "active": total.saturating_sub(idle),
                "idle": idle,
                "waiting": waiting,
                "retired": p.is_retired(),
            })
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

async fn pools(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "pools": pool_views(&sh) }))
}

/// Ready when the config is loaded and every database's primary accepts TCP connections.
async fn ready(State(sh): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let cfg = sh.config.load_full();
    let mut databases = Vec::new();
    let mut all_up = true;
    for db in &cfg.databases {
        let up = matches!(
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(&db.primary)
            )
            .await,
            Ok(Ok(_))
        );
        all_up &= up;
        databases.push(json!({ "name": db.name, "primary": db.primary, "primary_reachable": up }));
    }
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": all_up,
        "config_loaded": true,
        "shutting_down": sh.shutdown.is_triggered(),
        "databases": databases,
        "pools": pool_views(&sh),
    });
    (status, Json(body))
}
