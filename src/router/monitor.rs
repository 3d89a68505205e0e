//! The lag monitor: one task for a database's primary and one per replica, each with its
//! own small server connection, probing every `lag.probe_interval` (sooner when a read
//! is waiting for a watermark) and publishing snapshots the router reads lock-free. The
//! primary task also loads the function catalog (every minute).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::catalog::{Catalog, CATALOG_SQL};
use super::lag::{History, ReplicaView};
use super::route::DbRouter;
use crate::server::params::ParamSet;
use crate::server::query::{simple_rows, Rows};
use crate::server::{connect, Login, ServerConn};

// The insert position, not the write position: with `synchronous_commit = off` a commit
// returns once its record is inserted, before it is written out.
const PRIMARY_SQL: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint";
const REPLICA_SQL: &str = "SELECT pg_is_in_recovery(), \
     pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint, \
     pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint, \
     extract(epoch from pg_last_xact_replay_timestamp())";
const CATALOG_EVERY: Duration = Duration::from_secs(60);
/// Fastest probing, while reads wait for a watermark.
const MIN_GAP: Duration = Duration::from_millis(5);

/// Starts the monitor tasks of `router`.
pub fn spawn(router: Arc<DbRouter>, login: Login, empty: Arc<ParamSet>) {
    let r = router.clone();
    let (l, e) = (login.clone(), empty.clone());
    tokio::spawn(async move { primary_loop(r, l, e).await });
    for i in 0..router.replicas.len() {
        let r = router.clone();
        let (l, e) = (login.clone(), empty.clone());
        tokio::spawn(async move { replica_loop(r, i, l, e).await });
    }
}

/// A probe connection, reopened after any failure.
struct Prober {
    addr: String,
    login: Login,
    empty: Arc<ParamSet>,
    conn: Option<ServerConn>,
}

impl Prober {
    async fn query(&mut self, sql: &str, limit: Duration) -> Result<Rows, String> {
        let work = async {
            if self.conn.is_none() {
                let c = connect(&self.addr, &self.login, self.empty.clone())
                    .await
                    .map_err(|e| e.0)?;
                self.conn = Some(c);
            }
            let conn = self.conn.as_mut().ok_or("no connection")?;
            match simple_rows(conn, sql, 1 << 24).await {
                Ok(Ok(rows)) => Ok(rows),
                Ok(Err(msg)) => Err(msg),
                Err(e) => {
                    self.conn = None;
                    Err(e.to_string())
                }
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(format!("probe timed out after {limit:?}"))
            }
        }
    }
}

/// Sleeps until the next probe is due; false when the monitor must stop.
async fn pause(router: &DbRouter, started: Instant) -> bool {
    let interval = router.settings.load().probe_interval;
    let due = tokio::time::Instant::from_std(started + interval);
    let early = tokio::time::Instant::from_std(started + MIN_GAP.min(interval));
    let woken = async {
        tokio::time::sleep_until(early).await;
        router.wake.notified().await;
    };
    tokio::select! {
        _ = router.cancel.cancelled() => false,
        _ = tokio::time::sleep_until(due) => true,
        _ = woken => true,
    }
}

fn int(rows: &Rows, col: usize) -> Option<i64> {
    rows.first()?.get(col)?.as_deref()?.parse().ok()
}

async fn primary_loop(router: Arc<DbRouter>, login: Login, empty: Arc<ParamSet>) {
    let mut p = Prober {
        addr: router.primary_addr.clone(),
        login,
        empty,
        conn: None,
    };
    let mut history = History::new(Duration::from_secs(300), 8192);
    let mut catalog_at: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let limit = router.settings.load().stale_after;
        let result = p.query(PRIMARY_SQL, limit).await;
        let view = match result.map(|rows| int(&rows, 0)) {
            Ok(Some(lsn)) => {
                history.record(lsn.max(0) as u64, started);
                router.probes[0].inc();
                router.primary_available.set(1);
                history.view(true, Instant::now(), None)
            }
            Ok(None) | Err(_) => {
                let msg = match p.query("SELECT 1", limit).await {
                    Ok(_) => {
                        "pg_current_wal_insert_lsn() failed: is this server a primary?".to_owned()
                    }
                    Err(e) => e,
                };
                if router.primary.load().up {
                    tracing::warn!(database = %router.database, primary = %router.primary_addr, error = %msg, "primary probe failed");
                }
                router.probes[1].inc();
                router.primary_available.set(0);
                history.view(false, Instant::now(), Some(msg))
            }
        };
        let up = view.up;
        router.primary.store(Arc::new(view));
        if up && catalog_at.is_none_or(|t| t.elapsed() >= CATALOG_EVERY) {
            match p.query(CATALOG_SQL, Duration::from_secs(10)).await {
                Ok(rows) => {
                    let catalog = Catalog::from_rows(rows.into_iter().filter_map(|r| {
                        let name = r.first()?.clone()?;
                        let volatile = r.get(1)?.as_deref() == Some("true");
                        let immutable = r.get(2)?.as_deref() == Some("true");
                        Some((name, volatile, immutable))
                    }));
                    router.catalog.store(Arc::new(catalog));
                    catalog_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(database = %router.database, error = %e, "loading the function catalog failed")
                }
            }
        }
        if !pause(&router, started).await {
            return;
        }
    }
}

async fn replica_loop(router: Arc<DbRouter>, index: usize, login: Login, empty: Arc<ParamSet>) {
    let Some(state) = router.replicas.get(index) else {
        return;
    };
    let mut p = Prober {
        addr: state.addr.clone(),
        login,
        empty,
        conn: None,
    };
    loop {
        let started = Instant::now();
        let limit = router.settings.load().stale_after;
        let result = p.query(REPLICA_SQL, limit).await;
        let now = Instant::now();
        let old = state.view.load_full();
        let mut view = ReplicaView {
            probed_at: Some(now),
            good_at: old.good_at,
            replay: old.replay,
            receive: old.receive,
            replay_timestamp: old.replay_timestamp,
            ..ReplicaView::default()
        };
        match result {
            Ok(rows) => {
                let recovering = rows
                    .first()
                    .and_then(|r| r.first())
                    .is_some_and(|v| v.as_deref() == Some("t"));
                match (recovering, int(&rows, 1)) {
                    (true, Some(replay)) => {
                        view.up = true;
                        view.good_at = Some(now);
                        view.replay = replay.max(0) as u64;
                        view.receive = int(&rows, 2).unwrap_or(replay).max(0) as u64;
                        view.replay_timestamp = rows
                            .first()
                            .and_then(|r| r.get(3).cloned().flatten())
                            .and_then(|s| s.parse().ok());
                    }
                    (false, _) => view.error = Some("not in recovery (promoted?)".into()),
                    (true, None) => view.error = Some("no replay position yet".into()),
                }
            }
            Err(e) => view.error = Some(e),
        }
        if view.up {
            router.probes[2].inc();
        } else {
            router.probes[3].inc();
            if old.up {
                tracing::warn!(database = %router.database, replica = %state.addr, error = ?view.error, "replica unavailable");
            }
        }
        let primary = router.primary.load();
        let lag = primary.lag_bound(view.replay, now);
        state
            .metrics
            .lag_seconds
            .set(lag.map_or(f64::INFINITY, |l| l.as_secs_f64()));
        state
            .metrics
            .lag_bytes
            .set(primary.byte_lag(view.replay) as i64);
        state.metrics.available.set(i64::from(view.up));
        state.view.store(Arc::new(view));
        if !pause(&router, started).await {
            return;
        }
    }
}
