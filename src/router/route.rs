//! Per-database routing state: the primary's and each replica's latest probe, the
//! function catalog, the newest write of any client (for global read-your-writes), and
//! the choice of a replica for a read. Everything a session reads is an `ArcSwap` load
//! or an atomic: no locks on the request path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{Gauge, IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::lag::{PrimaryView, ReplicaView};
use crate::config::{LagLimits, LagSettings};
use crate::metrics::Metrics;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// Replica number `i` of the database.
    Replica(usize),
}

/// Why (a fixed set: these are metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Writes, locks, volatile functions, unparseable text.
    Write,
    /// A read outside a transaction.
    Read,
    /// An explicit read-write transaction.
    Transaction,
    /// `BEGIN READ ONLY` / `SET TRANSACTION READ ONLY`.
    ReadOnlyTransaction,
    /// A `/* sluice: route=… */` comment.
    Hint,
    /// `SET sluice.route`.
    Setting,
    /// A read with every usable replica further behind than `max_lag`.
    Lag,
    /// A read with no replica yet holding the client's (or anyone's) last write.
    Consistency,
    /// A read with no usable replica (down, not in recovery, stale probes).
    Unavailable,
    /// Neither a read nor a write (SET, DISCARD, transaction control alone).
    Other,
    /// A cacheable read that missed: it runs on the primary so the result can be stored.
    CacheMiss,
}

impl Reason {
    const ALL: [Reason; 11] = [
        Reason::Write,
        Reason::Read,
        Reason::Transaction,
        Reason::ReadOnlyTransaction,
        Reason::Hint,
        Reason::Setting,
        Reason::Lag,
        Reason::Consistency,
        Reason::Unavailable,
        Reason::Other,
        Reason::CacheMiss,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::Read => "read",
            Reason::Transaction => "transaction",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::Hint => "hint",
            Reason::Setting => "setting",
            Reason::Lag => "lag",
            Reason::Consistency => "consistency",
            Reason::Unavailable => "unavailable",
            Reason::Other => "other",
            Reason::CacheMiss => "cache_miss",
        }
    }

    /// True for reasons that may put the primary's data behind a later read (the
    /// request may have written).
    pub fn may_write(self) -> bool {
        matches!(
            self,
            Reason::Write | Reason::Transaction | Reason::Hint | Reason::Setting
        )
    }
}

/// Metric handles of one replica.
pub struct ReplicaMetrics {
    /// Lag upper bound, seconds.
    pub lag_seconds: Gauge,
    /// Lag in bytes.
    pub lag_bytes: IntGauge,
    /// 1 when usable.
    pub available: IntGauge,
}

/// One replica's state.
pub struct ReplicaState {
    /// `host:port`.
    pub addr: String,
    /// The latest probe.
    pub view: ArcSwap<ReplicaView>,
    /// Requests running on it through this sluice.
    pub outstanding: AtomicUsize,
    /// Nanoseconds (since the router's epoch) when a session saw it fail; it is skipped
    /// until a probe succeeds after that.
    failed_at: AtomicU64,
    /// Metric handles.
    pub metrics: ReplicaMetrics,
}

/// Routing state of one database with replicas.
pub struct DbRouter {
    /// Client-facing database name.
    pub database: String,
    /// Primary `host:port`.
    pub primary_addr: String,
    /// The primary's latest probes.
    pub primary: ArcSwap<PrimaryView>,
    /// Replicas, in config order.
    pub replicas: Box<[ReplicaState]>,
    /// Function volatility.
    pub catalog: ArcSwap<Catalog>,
    /// Probe settings (updated on reload).
    pub settings: ArcSwap<LagSettings>,
    epoch: Instant,
    /// Nanoseconds since `epoch` + 1 of the newest write completion (0: none).
    last_write: AtomicU64,
    last_wake: AtomicU64,
    /// Wakes the probes early when a read waits for a watermark.
    pub wake: Notify,
    /// Stops the monitor tasks.
    pub cancel: CancellationToken,
    decisions: Box<[[IntCounter; 11]; 2]>,
    /// Primary availability gauge.
    pub primary_available: IntGauge,
    /// Probe result counters: primary ok/error, replica ok/error.
    pub probes: [IntCounter; 4],
}

impl DbRouter {
    /// State for `database` with the given upstreams (monitors are started separately).
    pub fn new(
        database: &str,
        primary: &str,
        replicas: &[String],
        settings: LagSettings,
        metrics: &Metrics,
        cancel: CancellationToken,
    ) -> Self {
        let decisions = Box::new(["primary", "replica"].map(|target| {
            Reason::ALL.map(|r| {
                metrics
                    .route_decisions
                    .with_label_values(&[database, target, r.label()])
            })
        }));
        let probes = [
            ("primary", "ok"),
            ("primary", "error"),
            ("replica", "ok"),
            ("replica", "error"),
        ]
        .map(|(role, result)| {
            metrics
                .lag_probes
                .with_label_values(&[database, role, result])
        });
        Self {
            database: database.to_owned(),
            primary_addr: primary.to_owned(),
            primary: ArcSwap::from_pointee(PrimaryView::default()),
            replicas: replicas
                .iter()
                .map(|addr| ReplicaState {
                    addr: addr.clone(),
                    view: ArcSwap::from_pointee(ReplicaView::default()),
                    outstanding: AtomicUsize::new(0),
                    failed_at: AtomicU64::new(0),
                    metrics: ReplicaMetrics {
                        lag_seconds: metrics
                            .replica_lag_seconds
                            .with_label_values(&[database, addr]),
                        lag_bytes: metrics
                            .replica_lag_bytes
                            .with_label_values(&[database, addr]),
                        available: metrics
                            .replica_available
                            .with_label_values(&[database, addr]),
                    },
                })
                .collect(),
            catalog: ArcSwap::from_pointee(Catalog::default()),
            settings: ArcSwap::from_pointee(settings),
            epoch: Instant::now(),
            last_write: AtomicU64::new(0),
            last_wake: AtomicU64::new(0),
            wake: Notify::new(),
            cancel,
            decisions,
            primary_available: metrics.primary_available.with_label_values(&[database]),
            probes,
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// Counts a decision.
    pub fn count(&self, target: Target, reason: Reason) {
        let t = usize::from(matches!(target, Target::Replica(_)));
        let r = Reason::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        self.decisions[t][r].inc();
    }

    /// Records that a request that may have written finished on the primary at `at`.
    pub fn note_write(&self, at: Instant) {
        self.last_write.fetch_max(self.nanos(at), Ordering::AcqRel);
    }

    /// When the newest write of any client finished.
    pub fn last_write(&self) -> Option<Instant> {
        match self.last_write.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Asks the monitors for an early probe (at most one request per 2ms).
    pub fn request_probe(&self) {
        let now = self.nanos(Instant::now());
        let last = self.last_wake.load(Ordering::Relaxed);
        if now.saturating_sub(last) > 2_000_000
            && self
                .last_wake
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_waiters();
        }
    }

    /// A session could not use replica `i` (connect failed, connection lost).
    pub fn mark_failed(&self, i: usize) {
        if let Some(r) = self.replicas.get(i) {
            r.failed_at
                .store(self.nanos(Instant::now()), Ordering::Release);
            r.metrics.available.set(0);
        }
    }

    /// Whether replica `i` is usable at all (probed, in recovery, fresh, not failed).
    fn usable(&self, r: &ReplicaState, view: &ReplicaView, now: Instant, stale: Duration) -> bool {
        let Some(good) = view.good_at.filter(|_| view.up) else {
            return false;
        };
        if now.saturating_duration_since(good) > stale {
            return false;
        }
        let failed = r.failed_at.load(Ordering::Acquire);
        failed == 0 || self.nanos(good) > failed
    }

    /// Picks the replica for a read: usable, within `limits`, holding `watermark`; the
    /// least busy, then the least behind. On failure, the reason the primary is used.
    pub fn pick_replica(
        &self,
        limits: LagLimits,
        watermark: Option<u64>,
        now: Instant,
    ) -> Result<usize, Reason> {
        let primary = self.primary.load();
        let stale = self.settings.load().stale_after;
        let mut best: Option<(usize, usize, Duration)> = None;
        let mut why = Reason::Unavailable;
        for (i, r) in self.replicas.iter().enumerate() {
            let view = r.view.load();
            if !self.usable(r, &view, now, stale) {
                continue;
            }
            let lag = primary.lag_bound(view.replay, now);
            let within = lag.is_some_and(|l| l <= limits.max_lag)
                && primary.byte_lag(view.replay) <= limits.max_lag_bytes;
            if !within {
                why = why_max(why, Reason::Lag);
                continue;
            }
            if watermark.is_some_and(|w| view.replay < w) {
                why = why_max(why, Reason::Consistency);
                continue;
            }
            let busy = r.outstanding.load(Ordering::Relaxed);
            let lag = lag.unwrap_or_default();
            if best.is_none_or(|(_, b, l)| (busy, lag) < (b, l)) {
                best = Some((i, busy, lag));
            }
        }
        best.map(|(i, _, _)| i).ok_or(why)
    }
}

/// The more specific of two reasons for not using a replica.
fn why_max(a: Reason, b: Reason) -> Reason {
    let rank = |r: Reason| match r {
        Reason::Consistency => 2,
        Reason::Lag => 1,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Counts a request running on a replica for as long as it lives.
pub struct Outstanding {
    router: Arc<DbRouter>,
    index: usize,
}

impl Outstanding {
    /// Starts counting on replica `index`.
    pub fn new(router: Arc<DbRouter>, index: usize) -> Self {
        if let Some(r) = router.replicas.get(index) {
            r.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        Self { router, index }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if let Some(r) = self.router.replicas.get(self.index) {
            r.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
