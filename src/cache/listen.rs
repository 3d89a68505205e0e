//! Invalidation for writes that bypass sluice (migrations, cron jobs, other services):
//! `deploy/sql/sluice_invalidate.sql` installs a trigger that sends the table name on
//! the `sluice_invalidate` channel at commit; this task `LISTEN`s on the primary and
//! bumps that table's generation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;

use super::Cache;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::io::read_some;
use crate::router::DbRouter;
use crate::server::params::ParamSet;
use crate::server::query::simple_rows;
use crate::server::{connect, Login};

/// The channel the trigger notifies.
pub const CHANNEL: &str = "sluice_invalidate";

/// Starts the listener for `router`'s database.
pub fn spawn(router: Arc<DbRouter>, login: Login, empty: Arc<ParamSet>, cache: Arc<Cache>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let run = listen(&router, &login, &empty, &cache);
            tokio::select! {
                _ = router.cancel.cancelled() => return,
                r = run => {
                    if let Err(e) = r {
                        tracing::debug!(database = %router.database, error = %e, "invalidation listener reconnecting");
                    }
                }
            }
            // Notifications sent while disconnected are lost: treat everything as changed.
            cache.invalidate(&router.database, &[], "notify").await;
            tokio::select! {
                _ = router.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

fn cstr(b: &mut &[u8]) -> Option<String> {
    let end = b.iter().position(|c| *c == 0)?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Some(s)
}

async fn listen(
    router: &DbRouter,
    login: &Login,
    empty: &Arc<ParamSet>,
    cache: &Cache,
) -> Result<(), String> {
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        connect(&router.primary_addr, login, empty.clone()),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.0)?;
    simple_rows(&mut conn, &format!("LISTEN {CHANNEL}"), 1 << 20)
        .await
        .map_err(|e| e.to_string())??;
    tracing::info!(database = %router.database, "listening for invalidations on {CHANNEL}");
    loop {
        while let Some(h) = complete_frame(&conn.rbuf, 1 << 20).map_err(|e| e.to_string())? {
            let frame = conn.rbuf.split_to(h.total);
            if h.tag != b'A' {
                continue;
            }
            let mut body = &frame[HEADER_LEN..];
            if body.len() < 4 {
                continue;
            }
            body.advance(4);
            let (Some(_channel), Some(payload)) = (cstr(&mut body), cstr(&mut body)) else {
                continue;
            };
            let table = payload.trim().to_ascii_lowercase();
            let tables: Vec<&str> = if table.is_empty() || table == "*" {
                Vec::new()
            } else {
                vec![table.as_str()]
            };
            cache.invalidate(&router.database, &tables, "notify").await;
        }
        match read_some(&conn.stream, &mut conn.rbuf).await {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}
