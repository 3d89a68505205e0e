//! The HTTP face on `[listen] http`: Prometheus `/metrics`, liveness `/health`,
//! readiness `/ready` (503 when a primary is unreachable), the status page at `/`, the
//! admin API (see [`admin`]) and SQL over HTTP (see [`sql`]).

mod admin;
mod json;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::app::Reloader;
use crate::client::Shared;

/// What the handlers share.
pub struct HttpState {
    shared: Arc<Shared>,
    reloader: Reloader,
    sql: sql::SqlConns,
}

/// Serves HTTP until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, reloader: Reloader) {
    let shutdown = shared.shutdown.clone();
    let app = router(shared, reloader);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// The routes.
pub fn router(shared: Arc<Shared>, reloader: Reloader) -> Router {
    let limit = shared.config.load().http.max_request_bytes;
    let state = Arc::new(HttpState {
        shared,
        reloader,
        sql: sql::SqlConns::default(),
    });
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/pools", get(pools))
        .route("/replicas", get(admin::replicas))
        .route("/cache", get(admin::cache))
        .route("/cache/invalidate", post(admin::invalidate))
        .route("/queries", get(admin::queries))
        .route("/reload", post(admin::reload))
        .route("/pools/{db}/{action}", post(admin::pause))
        .route("/v1/query", post(sql::query))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let sh = &st.shared;
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

async fn pools(State(st): State<Arc<HttpState>>) -> Json<Value> {
    Json(json!({ "pools": pool_views(&st.shared) }))
}

/// Ready when the config is loaded and every database's primary accepts TCP connections.
async fn ready(State(st): State<Arc<HttpState>>) -> (StatusCode, Json<Value>) {
    let sh = &st.shared;
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
        databases.push(json!({
            "name": db.name,
            "primary": db.primary,
            "primary_reachable": up,
            "paused": sh.pauses.is_paused(&db.name),
        }));
    }
    let mut replicas: Vec<Value> = sh
        .routers
        .all()
        .iter()
        .filter(|r| !r.replicas.is_empty())
        .map(|r| admin::replica_view(r))
        .collect();
    replicas.sort_by(|a, b| a["database"].as_str().cmp(&b["database"].as_str()));
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
        "pools": pool_views(sh),
        "replicas": replicas,
        "cache": admin::cache_view(&st),
    });
    (status, Json(body))
}
