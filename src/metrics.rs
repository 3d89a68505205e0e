//! Every metric sluice exports, defined once. Names carry the `sluice_` prefix and unit
//! suffixes; label values come from fixed sets (pool names come from the config file).
//! Hot paths hold pre-resolved handles ([`PoolMetrics`]), so recording never allocates.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry and the process-wide metric families.
pub struct Metrics {
    registry: Registry,
    /// Client connections by state (`active`: attached to a server; `waiting`: queued for
    /// one; `idle`: between transactions).
    pub clients: IntGaugeVec,
    /// Client connections accepted.
    pub clients_accepted: IntCounter,
    /// Server connections by pool and state (`active`, `idle`).
    pub servers: IntGaugeVec,
    /// Server connections opened, by pool.
    pub servers_opened: IntCounterVec,
    /// Server connections closed, by pool and reason.
    pub servers_closed: IntCounterVec,
    /// Time clients waited for a server connection, by pool.
    pub checkout_wait: HistogramVec,
    /// Checkouts that gave up after `checkout_timeout`, by pool.
    pub checkout_timeouts: IntCounterVec,
    /// Transactions completed, by pool.
    pub transactions: IntCounterVec,
    /// Time a server connection was held per transaction, by pool.
    pub transaction_duration: HistogramVec,
    /// Bytes relayed, by direction (`client_to_server`, `server_to_client`).
    pub bytes: IntCounterVec,
    /// Errors sent to clients, by kind (see `Error::metric_label`).
    pub errors: IntCounterVec,
    /// Named-statement events: `prepared`, `reused`, `evicted`.
    pub prepared_statements: IntCounterVec,
    /// Clients pinned to a server connection by session state, by reason.
    pub pinned_clients: IntCounterVec,
    /// Cancel requests by outcome (`forwarded`, `idle`, `unknown`).
    pub cancels: IntCounterVec,
    /// Config reloads by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    /// Build information (constant 1).
    pub build_info: IntGaugeVec,
    /// Request duration (sent to ReadyForQuery) by target (`primary`, `replica`, `cache`).
    pub query_duration: HistogramVec,
    /// Routing decisions by database, target (`primary`, `replica`) and reason.
    pub route_decisions: IntCounterVec,
    /// Replica time lag (upper bound used for routing), by database and replica.
    pub replica_lag_seconds: GaugeVec,
    /// Replica byte lag, by database and replica.
    pub replica_lag_bytes: IntGaugeVec,
    /// 1 when a replica is usable (probed, in recovery, fresh), by database and replica.
    pub replica_available: IntGaugeVec,
    /// 1 when the primary answered its last probe, by database.
    pub primary_available: IntGaugeVec,
    /// Lag probes by database, server role and result.
    pub lag_probes: IntCounterVec,
    /// Cache lookups by rule and result (`hit`, `stale`, `miss`, `bypass`).
    pub cache_requests: IntCounterVec,
    /// Cache fills by rule and result (`stored`, `rejected`, `too_large`).
    pub cache_fills: IntCounterVec,
    /// Cache entries evicted for space.
    pub cache_evictions: IntCounter,
    /// Bytes in the in-process cache.
    pub cache_bytes: IntGauge,
    /// Table invalidations by source (`write`, `notify`, `api`).
    pub cache_invalidations: IntCounterVec,
    /// Valkey errors by operation.
    pub valkey_errors: IntCounterVec,
    /// Valkey round-trip time.
    pub valkey_latency: Histogram,
    /// 1 while the Valkey subscription is live.
    pub valkey_up: IntGauge,
}

/// Handles used on every request, resolved once.
#[derive(Clone)]
pub struct HotMetrics {
    /// Bytes client to server.
    pub bytes_in: IntCounter,
    /// Bytes server to client.
    pub bytes_out: IntCounter,
    /// Clients attached to a server connection.
    pub clients_active: IntGauge,
    /// Clients waiting for one.
    pub clients_waiting: IntGauge,
    /// Clients connected.
    pub clients_idle: IntGauge,
    /// Request duration, requests served by the primary.
    pub query_primary: Histogram,
    /// Request duration, requests served by a replica.
    pub query_replica: Histogram,
    /// Request duration, requests answered from the cache.
    pub query_cache: Histogram,
}

/// Handles for one pool, resolved once.
#[derive(Clone)]
pub struct PoolMetrics {
    /// Active server connections.
    pub active: IntGauge,
    /// Idle server connections.
    pub idle: IntGauge,
    /// Connections opened.
    pub opened: IntCounter,
    /// Checkout waits.
    pub checkout_wait: Histogram,
    /// Checkout timeouts.
    pub checkout_timeouts: IntCounter,
    /// Transactions.
    pub transactions: IntCounter,
    /// Transaction durations.
    pub transaction_duration: Histogram,
    closed: IntCounterVec,
    pool: String,
}

impl PoolMetrics {
    /// Counts a closed server connection with a fixed reason label.
    pub fn closed(&self, reason: &'static str) {
        self.closed
            .with_label_values(&[self.pool.as_str(), reason])
            .inc();
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    v
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    // 50µs .. ~26s
    let buckets = exponential_buckets(0.000_05, 2.0, 20).unwrap_or_default();
    let v = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    v
}

impl Metrics {
    /// Creates and registers every metric. Names are static, so registration cannot fail
    /// except by a programming error caught by the unit test below.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Self {
            clients: gauge_vec(
                &r,
                "sluice_client_connections",
                "Client connections by state.",
                &["state"],
            ),
            clients_accepted: {
                let c = IntCounter::new(
                    "sluice_client_connections_accepted_total",
                    "Client connections accepted.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            servers: gauge_vec(
                &r,
                "sluice_server_connections",
                "Server connections by pool and state.",
                &["pool", "state"],
            ),
            servers_opened: counter_vec(
                &r,
                "sluice_server_connections_opened_total",
                "Server connections opened.",
                &["pool"],
            ),
            servers_closed: counter_vec(
                &r,
                "sluice_server_connections_closed_total",
                "Server connections closed, by reason.",
                &["pool", "reason"],
            ),
            checkout_wait: histogram_vec(
                &r,
                "sluice_pool_checkout_wait_seconds",
                "Time a client waited for a server connection.",
                &["pool"],
            ),
            checkout_timeouts: counter_vec(
                &r,
                "sluice_pool_checkout_timeouts_total",
                "Checkouts that gave up after checkout_timeout.",
                &["pool"],
            ),
            transactions: counter_vec(
                &r,
                "sluice_transactions_total",
                "Transactions completed.",
                &["pool"],
            ),
            transaction_duration: histogram_vec(
                &r,
                "sluice_transaction_duration_seconds",
                "Time a server connection was attached to a client per transaction.",
                &["pool"],
            ),
            bytes: counter_vec(
                &r,
                "sluice_bytes_total",
                "Bytes relayed, by direction.",
                &["direction"],
            ),
            errors: counter_vec(
                &r,
                "sluice_errors_total",
                "Errors sent to clients, by kind.",
                &["kind"],
            ),
            prepared_statements: counter_vec(
                &r,
                "sluice_prepared_statements_total",
                "Server-side prepared statement events.",
                &["event"],
            ),
            pinned_clients: counter_vec(
                &r,
                "sluice_pinned_clients_total",
                "Clients pinned to one server connection by session state.",
                &["reason"],
            ),
            cancels: counter_vec(
                &r,
                "sluice_cancel_requests_total",
                "Cancel requests by outcome.",
                &["outcome"],
            ),
            config_reloads: counter_vec(
                &r,
                "sluice_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            build_info: gauge_vec(&r, "sluice_build_info", "Build information.", &["version"]),
            query_duration: histogram_vec(
                &r,
                "sluice_query_duration_seconds",
                "Request duration, from sending it to its ReadyForQuery, by where it was served.",
                &["target"],
            ),
            route_decisions: counter_vec(
                &r,
                "sluice_route_decisions_total",
                "Where requests were sent, and why.",
                &["database", "target", "reason"],
            ),
            replica_lag_seconds: {
                let v = GaugeVec::new(
                    Opts::new(
                        "sluice_replica_lag_seconds",
                        "Replica time lag as measured by sluice (upper bound).",
                    ),
                    &["database", "replica"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(v.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                v
            },
            replica_lag_bytes: gauge_vec(
                &r,
                "sluice_replica_lag_bytes",
                "WAL bytes the replica has not replayed.",
                &["database", "replica"],
            ),
            replica_available: gauge_vec(
                &r,
                "sluice_replica_available",
                "1 when the replica answers probes and is in recovery.",
                &["database", "replica"],
            ),
            primary_available: gauge_vec(
                &r,
                "sluice_primary_available",
                "1 when the primary answered its last probe.",
                &["database"],
            ),
            lag_probes: counter_vec(
                &r,
                "sluice_lag_probes_total",
                "Lag probes by server role and result.",
                &["database", "role", "result"],
            ),
            cache_requests: counter_vec(
                &r,
                "sluice_cache_requests_total",
                "Cache lookups by rule and result.",
                &["rule", "result"],
            ),
            cache_fills: counter_vec(
                &r,
                "sluice_cache_fills_total",
                "Cache fills by rule and result.",
                &["rule", "result"],
            ),
            cache_evictions: {
                let c = IntCounter::new(
                    "sluice_cache_evictions_total",
                    "Cache entries evicted for space.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            cache_bytes: {
                let g = IntGauge::new("sluice_cache_bytes", "Bytes in the in-process cache.")
                    .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            cache_invalidations: counter_vec(
                &r,
                "sluice_cache_invalidations_total",
                "Table invalidations by source.",
                &["source"],
            ),
            valkey_errors: counter_vec(
                &r,
                "sluice_valkey_errors_total",
                "Valkey errors by operation.",
                &["op"],
            ),
            valkey_latency: {
                let h = Histogram::with_opts(
                    HistogramOpts::new("sluice_valkey_latency_seconds", "Valkey round-trip time.")
                        .buckets(exponential_buckets(0.000_05, 2.0, 16).unwrap_or_default()),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                h
            },
            valkey_up: {
                let g = IntGauge::new(
                    "sluice_valkey_up",
                    "1 while the Valkey subscription is live.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Handles for the per-request hot path.
    pub fn hot(&self) -> HotMetrics {
        HotMetrics {
            bytes_in: self.bytes.with_label_values(&["client_to_server"]),
            bytes_out: self.bytes.with_label_values(&["server_to_client"]),
            clients_active: self.clients.with_label_values(&["active"]),
            clients_waiting: self.clients.with_label_values(&["waiting"]),
            clients_idle: self.clients.with_label_values(&["idle"]),
            query_primary: self.query_duration.with_label_values(&["primary"]),
            query_replica: self.query_duration.with_label_values(&["replica"]),
            query_cache: self.query_duration.with_label_values(&["cache"]),
        }
    }

    /// Handles for a pool.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            active: self.servers.with_label_values(&[pool, "active"]),
            idle: self.servers.with_label_values(&[pool, "idle"]),
            opened: self.servers_opened.with_label_values(&[pool]),
            checkout_wait: self.checkout_wait.with_label_values(&[pool]),
            checkout_timeouts: self.checkout_timeouts.with_label_values(&[pool]),
            transactions: self.transactions.with_label_values(&[pool]),
            transaction_duration: self.transaction_duration.with_label_values(&[pool]),
            closed: self.servers_closed.clone(),
            pool: pool.to_owned(),
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        let p = m.pool("app/alice");
        p.transactions.inc();
        p.closed("broken");
        m.errors.with_label_values(&["protocol"]).inc();
        let text = m.render();
        assert!(
            text.contains("sluice_transactions_total{pool=\"app/alice\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_build_info"), "{text}");
    }
}
