//! SQL over HTTP: `POST /v1/query` with `{"sql": "...", "params": [...]}`, or
//! `{"batch": [{"sql": ..., "params": [...]}, ...]}` run as one transaction. The request
//! is authenticated as a configured sluice user (HTTP Basic, or `Bearer user:password`)
//! and runs as a client of sluice's own Postgres listener, so it takes exactly the path
//! a wire-protocol client takes: the same router, pools, auto-prepare and cache.
//! Logged-in internal connections are kept per user and database for reuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::{Buf, BufMut, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{json as pgjson, HttpState};
use crate::protocol::backend::{parse_parameter_status, tag};
use crate::protocol::error_response::parse_error_fields;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::frontend;
use crate::protocol::io::{read_some, write_all};
use crate::server::{connect_with, Login, ServerAuth, ServerConn};

/// (user, password digest, database).
type ConnKey = (String, [u8; 32], String);

/// Idle internal connections by user, password and database.
#[derive(Default)]
pub struct SqlConns {
    idle: Mutex<HashMap<ConnKey, Vec<ServerConn>>>,
}

const KEEP_PER_KEY: usize = 8;

/// One statement of a request.
#[derive(Debug, Deserialize)]
pub(super) struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
}

/// The request body.
#[derive(Debug, Deserialize)]
pub(super) struct SqlRequest {
    sql: Option<String>,
    #[serde(default)]
    params: Vec<Value>,
    batch: Option<Vec<Statement>>,
}

/// A Postgres error, to be mapped to an HTTP status.
struct PgError {
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

enum Failure {
    Pg(PgError),
    TooLarge,
    Transport(String),
}

struct Outcome {
    columns: Vec<(String, u32)>,
    rows: Vec<Value>,
    command: String,
    route: Option<String>,
    cache: Option<String>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"message": msg.into()}}))).into_response()
}

fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let pair = if let Some(b) = v.strip_prefix("Basic ") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?;
        String::from_utf8(raw).ok()?
    } else {
        v.strip_prefix("Bearer ")?.to_owned()
    };
    let (u, p) = pair.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn pg_status(code: &str) -> StatusCode {
    match &code[..code.len().min(2)] {
        "28" => StatusCode::UNAUTHORIZED,
        "42" if code == "42501" => StatusCode::FORBIDDEN,
        "08" | "53" | "57" => StatusCode::SERVICE_UNAVAILABLE,
        "40" => StatusCode::CONFLICT,
        "22" | "23" | "42" | "0A" | "25" | "P0" | "2B" | "44" | "26" | "34" => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn pg_error_response(e: PgError, index: Option<usize>) -> Response {
    let status = pg_status(&e.code);
    let mut body = json!({
        "error": {
            "code": e.code,
            "message": e.message,
            "detail": e.detail,
            "hint": e.hint,
        }
    });
    if let Some(i) = index {
        body["error"]["statement"] = json!(i);
    }
    (status, Json(body)).into_response()
}

fn param_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn write_bind(out: &mut BytesMut, params: &[Value]) {
    let at = out.len();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_u8(0); // portal
    out.put_u8(0); // statement
    out.put_i16(0); // all parameters as text
    out.put_i16(params.len() as i16);
    for p in params {
        match param_text(p) {
            Some(s) => {
                out.put_i32(s.len() as i32);
                out.put_slice(s.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    out.put_i16(0); // all results as text
    let len = (out.len() - at - 1) as i32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

fn cstr(b: &mut &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance((end + 1).min(b.len()));
    s
}

/// Runs one statement with the extended protocol; reads to ReadyForQuery.
async fn run(
    conn: &mut ServerConn,
    sql: &str,
    params: &[Value],
    max_bytes: usize,
) -> Result<Outcome, Failure> {
    let mut out = BytesMut::new();
    frontend::write_parse(&mut out, b"", sql.as_bytes(), &[0, 0]);
    write_bind(&mut out, params);
    out.put_slice(&[b'D', 0, 0, 0, 6, b'P', 0]);
    out.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    out.put_slice(&[b'S', 0, 0, 0, 4]);
    write_all(&conn.stream, &out)
        .await
        .map_err(|e| Failure::Transport(e.to_string()))?;
    let mut o = Outcome {
        columns: Vec::new(),
        rows: Vec::new(),
        command: String::new(),
        route: None,
        cache: None,
    };
    let mut err = None;
    let mut size = 0usize;
    loop {
        while let Some(h) =
            complete_frame(&conn.rbuf, 1 << 30).map_err(|e| Failure::Transport(e.to_string()))?
        {
            let frame = conn.rbuf.split_to(h.total);
            let mut body = &frame[HEADER_LEN..];
            match h.tag {
                tag::PARAMETER_STATUS => {
                    if let Some((k, v)) = parse_parameter_status(body) {
                        match k.as_str() {
                            "sluice.route" => o.route = Some(v),
                            "sluice.cache" => o.cache = Some(v),
                            _ => conn.set_reported(k, v),
                        }
                    }
                }
                tag::ROW_DESCRIPTION => {
                    let n = body.get_i16().max(0) as usize;
                    for _ in 0..n {
                        let name = cstr(&mut body);
                        if body.len() < 18 {
                            break;
                        }
                        body.advance(6);
                        let oid = body.get_u32();
                        body.advance(8);
                        o.columns.push((name, oid));
                    }
                }
                tag::DATA_ROW => {
                    size += frame.len();
                    if size > max_bytes {
                        err.get_or_insert(Failure::TooLarge);
                        continue;
                    }
                    let n = body.get_i16().max(0) as usize;
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        let len = body.get_i32();
                        if len < 0 {
                            row.push(Value::Null);
                            continue;
                        }
                        let text = String::from_utf8_lossy(&body[..len as usize]).into_owned();
                        body.advance(len as usize);
                        let oid = o.columns.get(i).map_or(25, |c| c.1);
                        row.push(pgjson::value(oid, &text));
                    }
                    o.rows.push(Value::Array(row));
                }
                tag::COMMAND_COMPLETE => o.command = cstr(&mut body),
                tag::ERROR_RESPONSE => {
                    let f = parse_error_fields(body);
                    err.get_or_insert(Failure::Pg(PgError {
                        code: f.code,
                        message: f.message,
                        detail: f.detail,
                        hint: f.hint,
                    }));
                }
                tag::READY_FOR_QUERY => {
                    conn.status = body
                        .first()
                        .and_then(|b| crate::protocol::backend::TxStatus::from_byte(*b))
                        .unwrap_or_default();
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(o),
                    };
                }
                _ => {}
            }
        }
        match read_some(&conn.stream, &mut conn.rbuf).await {
            Ok(0) => return Err(Failure::Transport("sluice closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(Failure::Transport(e.to_string())),
        }
    }
}

async fn simple(conn: &mut ServerConn, sql: &str) -> Result<(), Failure> {
    run(conn, sql, &[], usize::MAX).await.map(|_| ())
}

fn outcome_json(o: &Outcome) -> Value {
    let row_count = o
        .command
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(o.rows.len() as u64);
    json!({
        "columns": o.columns.iter().map(|(n, t)| json!({"name": n, "type_oid": t})).collect::<Vec<_>>(),
        "rows": o.rows,
        "command": o.command,
        "row_count": row_count,
    })
}

/// `POST /v1/query`.
pub(super) async fn query(
    State(st): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(req): Json<SqlRequest>,
) -> Response {
    let Some((user, password)) = credentials(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Basic realm=\"sluice\"")],
            Json(json!({"error": {"message": "authenticate as a sluice user: HTTP Basic, or Bearer user:password"}})),
        )
            .into_response();
    };
    let cfg = st.shared.config.load_full();
    let database = q
        .get("database")
        .cloned()
        .or_else(|| {
            headers
                .get("x-sluice-database")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .or_else(|| cfg.databases.first().map(|d| d.name.clone()))
        .unwrap_or_default();
    let bypass = headers
        .get("x-cache-bypass")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let stmts: Vec<(String, Vec<Value>)> = match (req.sql, req.batch) {
        (Some(sql), None) => vec![(sql, req.params)],
        (None, Some(b)) if !b.is_empty() => b.into_iter().map(|s| (s.sql, s.params)).collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give \"sql\" (with \"params\") or a non-empty \"batch\"",
            )
        }
    };
    let stmts: Vec<(String, Vec<Value>)> = stmts
        .into_iter()
        .map(|(s, p)| {
            (
                if bypass {
                    format!("/* sluice: nocache */ {s}")
                } else {
                    s
                },
                p,
            )
        })
        .collect();
    let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
    let key = (user.clone(), digest, database.clone());
    let pooled = st
        .sql
        .idle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&key)
        .and_then(Vec::pop);
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            let Some(addr) = st.shared.pg_addr.get() else {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sluice is not listening yet",
                );
            };
            let login = Login {
                user: user.clone(),
                dbname: database.clone(),
                auth: ServerAuth::Password(password),
            };
            let extra = [("sluice.report", "on"), ("application_name", "sluice-http")];
            match connect_with(&addr.to_string(), &login, st.shared.params.empty(), &extra).await {
                Ok(c) => c,
                Err(e) => {
                    let code =
                        e.0.strip_prefix("server error ")
                            .map(|r| r[..5.min(r.len())].to_owned());
                    let status = match code.as_deref() {
                        Some(c) if c.starts_with("28") => StatusCode::UNAUTHORIZED,
                        Some("3D000") => StatusCode::NOT_FOUND,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    return (
                        status,
                        Json(json!({"error": {"code": code, "message": e.0}})),
                    )
                        .into_response();
                }
            }
        }
    };
    let limit = cfg.http.max_response_bytes;
    let work = async {
        if stmts.len() == 1 {
            let (sql, params) = &stmts[0];
            return run(&mut conn, sql, params, limit)
                .await
                .map(|o| vec![o])
                .map_err(|e| (e, None));
        }
        simple(&mut conn, "BEGIN").await.map_err(|e| (e, None))?;
        let mut outs = Vec::new();
        for (i, (sql, params)) in stmts.iter().enumerate() {
            match run(&mut conn, sql, params, limit).await {
                Ok(o) => outs.push(o),
                Err(e) => {
                    let _ = simple(&mut conn, "ROLLBACK").await;
                    return Err((e, Some(i)));
                }
            }
        }
        simple(&mut conn, "COMMIT").await.map_err(|e| (e, None))?;
        Ok(outs)
    };
    let result = match tokio::time::timeout(cfg.http.query_timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            // The connection is dropped: sluice cancels what it was running.
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "query took longer than http.query_timeout ({:?})",
                    cfg.http.query_timeout
                ),
            );
        }
    };
    // Whatever a request SET stays with its connection: reset it before the next request
    // (sluice answers DISCARD ALL itself, without a server).
    let reusable = !matches!(result, Err((Failure::Transport(_), _)))
        && conn.status == crate::protocol::backend::TxStatus::Idle
        && simple(&mut conn, "DISCARD ALL").await.is_ok();
    let response = match result {
        Ok(outs) => {
            let last = outs.last();
            let route = last
                .and_then(|o| o.route.clone())
                .unwrap_or_else(|| "primary".into());
            let cache = last
                .and_then(|o| o.cache.clone())
                .unwrap_or_else(|| "BYPASS".into());
            let body = if outs.len() == 1 {
                outcome_json(&outs[0])
            } else {
                json!({"results": outs.iter().map(outcome_json).collect::<Vec<_>>()})
            };
            let mut r = Json(body).into_response();
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&cache) {
                h.insert("x-cache", v);
            }
            if let Ok(v) = HeaderValue::from_str(&route) {
                h.insert("x-sluice-route", v);
            }
            r
        }
        Err((Failure::Pg(e), i)) => pg_error_response(e, i),
        Err((Failure::TooLarge, _)) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the result is larger than http.max_response_bytes ({limit} bytes)"),
        ),
        Err((Failure::Transport(e), _)) => error(StatusCode::BAD_GATEWAY, e),
    };
    if reusable {
        let mut idle = st.sql.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.entry(key).or_default();
        if v.len() < KEEP_PER_KEY {
            v.push(conn);
        }
    }
    response
}
