//! The admin API: read-only views (`/replicas`, `/cache`, `/queries`) are open like
//! `/metrics`; every call that changes something (`/reload`, `/cache/invalidate`,
//! `/pools/{db}/pause|resume`) needs `Authorization: Bearer <http.admin_token>` and is
//! refused outright when no token is configured.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::HttpState;
use crate::router::DbRouter;

/// The refusal, if `headers` do not carry the admin token.
pub(super) fn require_admin(st: &HttpState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let cfg = st.shared.config.load();
    let Some(token) = cfg.http.admin_token.as_ref() else {
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "the admin API is disabled: set http.admin_token in proxy.toml"})),
            )
                .into_response(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token must not leak through timing.
    let ok = given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), token.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if ok {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong admin token"})),
            )
                .into_response(),
        ))
    }
}

/// One database's replicas as the monitor sees them.
pub(super) fn replica_view(r: &DbRouter) -> Value {
    let now = Instant::now();
    let primary = r.primary.load();
    let replicas: Vec<Value> = r
        .replicas
        .iter()
        .map(|rep| {
            let v = rep.view.load();
            let bound = primary.lag_bound(v.replay, now);
            json!({
                "address": rep.addr,
                "available": v.up,
                "replay_lsn": v.replay,
                "receive_lsn": v.receive,
                "lag_seconds": bound.map(|d| d.as_secs_f64()),
                "lag_estimate_seconds": primary.lag_estimate(v.replay, now).as_secs_f64(),
                "lag_bytes": primary.byte_lag(v.replay),
                "last_replayed_commit_epoch": v.replay_timestamp,
                "probe_age_seconds": v.probed_at.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                "outstanding": rep.outstanding.load(Ordering::Relaxed),
                "error": v.error,
            })
        })
        .collect();
    json!({
        "database": r.database,
        "primary": {
            "address": r.primary_addr,
            "available": primary.up,
            "wal_lsn": primary.current(),
            "error": primary.error,
        },
        "replicas": replicas,
    })
}

pub(super) async fn replicas(State(st): State<Arc<HttpState>>) -> Json<Value> {
    let mut dbs: Vec<Value> = st
        .shared
        .routers
        .all()
        .iter()
        .filter(|r| !r.replicas.is_empty())
        .map(|r| replica_view(r))
        .collect();
    dbs.sort_by(|a, b| a["database"].as_str().cmp(&b["database"].as_str()));
    Json(json!({ "databases": dbs }))
}

/// Per-rule cache counters.
pub(super) fn cache_view(st: &HttpState) -> Value {
    let cfg = st.shared.config.load();
    let m = &st.shared.cache.metrics;
    let mut names: Vec<String> = cfg.cache.rules.iter().map(|r| r.name.clone()).collect();
    names.push("hint".into());
    let rules: Vec<Value> = names
        .iter()
        .map(|n| {
            let req = |r: &str| m.requests.with_label_values(&[n.as_str(), r]).get();
            let fill = |r: &str| m.fills.with_label_values(&[n.as_str(), r]).get();
            let (hit, stale, miss, bypass) = (req("hit"), req("stale"), req("miss"), req("bypass"));
            let total = hit + stale + miss + bypass;
            json!({
                "rule": n,
                "hits": hit,
                "stale_hits": stale,
                "misses": miss,
                "bypasses": bypass,
                "hit_rate": if total == 0 { Value::Null } else { json!((hit + stale) as f64 / total as f64) },
                "fills": fill("stored"),
                "fills_rejected": fill("rejected"),
                "too_large": fill("too_large"),
            })
        })
        .collect();
    json!({
        "bytes": m.bytes.get(),
        "evictions": m.evictions.get(),
        "valkey": match &cfg.cache.valkey {
            None => Value::Null,
            Some(_) => json!({ "up": m.valkey_up.get() == 1 }),
        },
        "rules": rules,
    })
}

pub(super) async fn cache(State(st): State<Arc<HttpState>>) -> Json<Value> {
    Json(cache_view(&st))
}

/// `POST /cache/invalidate` body.
#[derive(Debug, Deserialize)]
pub(super) struct Invalidate {
    database: Option<String>,
    #[serde(default)]
    tables: Vec<String>,
    rule: Option<String>,
    #[serde(default)]
    all: bool,
}

pub(super) async fn invalidate(
    State(st): State<Arc<HttpState>>,
    headers: HeaderMap,
    Json(req): Json<Invalidate>,
) -> Response {
    if let Err(r) = require_admin(&st, &headers) {
        return *r;
    }
    let cfg = st.shared.config.load_full();
    let dbs: Vec<String> = match &req.database {
        Some(d) if cfg.database(d).is_none() => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no database {d:?}")})),
            )
                .into_response()
        }
        Some(d) => vec![d.clone()],
        None => cfg.databases.iter().map(|d| d.name.clone()).collect(),
    };
    let cache = &st.shared.cache;
    let what = if req.all {
        cache.invalidate_everything(&dbs).await;
        json!({"all": true})
    } else if let Some(rule) = &req.rule {
        if rule != "hint" && !cfg.cache.rules.iter().any(|r| r.name == *rule) {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no cache rule {rule:?}")})),
            )
                .into_response();
        }
        cache.invalidate_rule(&dbs, rule).await;
        json!({"rule": rule})
    } else if !req.tables.is_empty() {
        let tables: Vec<String> = req.tables.iter().map(|t| t.to_ascii_lowercase()).collect();
        let names: Vec<&str> = tables.iter().map(String::as_str).collect();
        for db in &dbs {
            cache.invalidate(db, &names, "api").await;
        }
        json!({"tables": tables})
    } else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "give \"tables\": [..], \"rule\": \"name\" or \"all\": true"})),
        )
            .into_response();
    };
    tracing::info!(invalidated = %what, databases = ?dbs, "cache invalidated through the admin API");
    Json(json!({"invalidated": what, "databases": dbs})).into_response()
}

pub(super) async fn queries(State(st): State<Arc<HttpState>>) -> Json<Value> {
    let mut stmts = st.shared.statements.all();
    stmts.retain(|s| s.executions.load(Ordering::Relaxed) > 0);
    stmts.sort_by_key(|s| std::cmp::Reverse(s.executions.load(Ordering::Relaxed)));
    stmts.truncate(50);
    let top: Vec<Value> = stmts
        .iter()
        .map(|s| {
            let calls = s.executions.load(Ordering::Relaxed);
            let total = s.total_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let text = String::from_utf8_lossy(&s.key.query);
            let shape = crate::router::lexer::literal_shape(&text).map_or_else(
                || text.to_string(),
                |v| String::from_utf8_lossy(&v).into_owned(),
            );
            json!({
                "query": shape.split_whitespace().collect::<Vec<_>>().join(" "),
                "calls": calls,
                "total_seconds": total,
                "mean_seconds": if calls == 0 { 0.0 } else { total / calls as f64 },
                "p99_seconds": s.quantile(0.99).map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    let slow: Vec<Value> = st
        .shared
        .slow
        .recent()
        .into_iter()
        .map(|q| {
            json!({
                "at_ms": q.at_ms,
                "seconds": q.duration.as_secs_f64(),
                "database": q.database,
                "target": q.target,
                "query": q.shape,
            })
        })
        .collect();
    let cfg = st.shared.config.load();
    Json(json!({
        "top": top,
        "slow_threshold_seconds": cfg.log.slow_query.as_secs_f64(),
        "slow": slow,
        "cache": cache_view(&st)["rules"].clone(),
    }))
}

pub(super) async fn reload(State(st): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&st, &headers) {
        return *r;
    }
    match st.reloader.reload() {
        Ok(msg) => Json(json!({"applied": true, "message": msg})).into_response(),
        Err(msg) => (
            StatusCode::CONFLICT,
            Json(json!({"applied": false, "message": msg})),
        )
            .into_response(),
    }
}

pub(super) async fn pause(
    State(st): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path((db, action)): Path<(String, String)>,
) -> Response {
    if let Err(r) = require_admin(&st, &headers) {
        return *r;
    }
    if st.shared.config.load().database(&db).is_none() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no database {db:?}")})),
        )
            .into_response();
    }
    let changed = match action.as_str() {
        "pause" => st.shared.pauses.pause(&db),
        "resume" => st.shared.pauses.resume(&db),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    tracing::info!(database = %db, action = %action, changed, "pool pause state changed through the admin API");
    Json(json!({
        "database": db,
        "paused": st.shared.pauses.is_paused(&db),
        "changed": changed,
    }))
    .into_response()
}
