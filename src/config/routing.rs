//! `[routing]` and `[lag]`: how reads are steered to replicas, and how replication lag is
//! measured. Per-database `max_lag` / `max_lag_bytes` override the `[routing]` defaults.

use std::time::Duration;

use super::reader::Table;

/// Read-your-writes guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Only `max_lag` applies.
    Eventual,
    /// A client's reads wait (on the primary) until replicas have its own writes.
    Session,
    /// Every client's reads wait until replicas have the newest write of any client.
    Global,
}

impl Consistency {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Eventual => "eventual",
            Consistency::Session => "session",
            Consistency::Global => "global",
        }
    }
}

/// Where a read goes when no replica is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// To the primary.
    Primary,
    /// Refused with an error.
    Error,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingSettings {
    /// Read-your-writes mode.
    pub consistency: Consistency,
    /// No eligible replica.
    pub fallback: Fallback,
    /// Functions that never write, beyond those Postgres marks immutable or stable.
    pub read_only_functions: Vec<String>,
    /// Default time lag limit.
    pub max_lag: Duration,
    /// Default byte lag limit.
    pub max_lag_bytes: u64,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            consistency: Consistency::Session,
            fallback: Fallback::Primary,
            read_only_functions: [
                "random",
                "gen_random_uuid",
                "clock_timestamp",
                "timeofday",
                "statement_timestamp",
                "pg_is_in_recovery",
                "pg_last_wal_replay_lsn",
                "pg_last_wal_receive_lsn",
                "pg_last_xact_replay_timestamp",
            ]
            .map(String::from)
            .to_vec(),
            max_lag: Duration::from_secs(1),
            max_lag_bytes: 16 << 20,
        }
    }
}

/// `[lag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSettings {
    /// Time between probes.
    pub probe_interval: Duration,
    /// A replica whose last good probe is older than this is unavailable.
    pub stale_after: Duration,
}

impl Default for LagSettings {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(100),
            stale_after: Duration::from_secs(1),
        }
    }
}

/// Per-database lag limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    /// Time lag limit.
    pub max_lag: Duration,
    /// Byte lag limit.
    pub max_lag_bytes: u64,
}

pub(super) fn read_routing(t: &mut Table<'_, '_>) -> RoutingSettings {
    let mut r = RoutingSettings::default();
    if let Some(s) = t.string("consistency") {
        match s.as_str() {
            "eventual" => r.consistency = Consistency::Eventual,
            "session" => r.consistency = Consistency::Session,
            "global" => r.consistency = Consistency::Global,
            other => t.error(
                "consistency",
                format!("{other:?} is not one of \"eventual\", \"session\", \"global\""),
            ),
        }
    }
    if let Some(s) = t.string("fallback") {
        match s.as_str() {
            "primary" => r.fallback = Fallback::Primary,
            "error" => r.fallback = Fallback::Error,
            other => t.error(
                "fallback",
                format!("{other:?} is not one of \"primary\", \"error\""),
            ),
        }
    }
    if let Some(f) = t.strings("read_only_functions") {
        r.read_only_functions = f.into_iter().map(|s| s.to_ascii_lowercase()).collect();
    }
    let limits = read_limits(
        t,
        LagLimits {
            max_lag: r.max_lag,
            max_lag_bytes: r.max_lag_bytes,
        },
    );
    r.max_lag = limits.max_lag;
    r.max_lag_bytes = limits.max_lag_bytes;
    t.finish();
    r
}

/// Reads `max_lag` and `max_lag_bytes` from `t`, defaulting to `base`.
pub(super) fn read_limits(t: &mut Table<'_, '_>, base: LagLimits) -> LagLimits {
    let mut l = base;
    if let Some(d) = t.duration("max_lag") {
        l.max_lag = d;
    }
    if let Some(n) = t.size("max_lag_bytes") {
        l.max_lag_bytes = n;
    }
    l
}

pub(super) fn read_lag(t: &mut Table<'_, '_>) -> LagSettings {
    let mut l = LagSettings::default();
    if let Some(d) = t.duration("probe_interval") {
        if d < Duration::from_millis(5) {
            t.error("probe_interval", "must be at least 5ms");
        } else {
            l.probe_interval = d;
        }
    }
    if let Some(d) = t.duration("stale_after") {
        l.stale_after = d;
    }
    if l.stale_after < l.probe_interval * 2 {
        t.error(
            "stale_after",
            "must be at least twice probe_interval (one late probe must not mark a replica down)",
        );
    }
    t.finish();
    l
}
