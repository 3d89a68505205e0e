//! The process-wide registry of server statements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};

use crate::protocol::frontend::write_parse;
use crate::router::StatementInfo;

/// What makes two client statements the same server statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatementKey {
    /// Query text.
    pub query: Bytes,
    /// Raw parameter-type section of the Parse (count + OIDs).
    pub param_types: Bytes,
    /// The client's `search_path` setting (SQL text) when it set one.
    pub search_path: Option<Arc<str>>,
    /// 0 for statements a client named; the auto-prepare epoch for the others, so a
    /// schema change gives them fresh server statements.
    pub generation: u64,
}

/// A statement prepared on server connections under a sluice-chosen name.
#[derive(Debug)]
pub struct ServerStatement {
    /// Unique id; the server name is derived from it.
    pub id: u64,
    /// The server-side name (`sluice_<id>`).
    pub name: Box<[u8]>,
    /// A ready-to-send Parse under the server name.
    pub parse: Bytes,
    /// What the statement does to the session.
    pub info: StatementInfo,
    /// The key.
    pub key: StatementKey,
    /// Executions timed through sluice (bind to ReadyForQuery).
    pub executions: AtomicU64,
    /// Their total time in nanoseconds.
    pub total_nanos: AtomicU64,
    /// Their times in buckets doubling from 50µs (for percentiles).
    pub buckets: [AtomicU32; BUCKETS],
}

/// Latency buckets per statement: 50µs, 100µs, ... (doubling), the last open-ended.
pub const BUCKETS: usize = 20;

fn bucket_of(elapsed: std::time::Duration) -> usize {
    let us = elapsed.as_micros() as u64;
    let mut bound = 50u64;
    for i in 0..BUCKETS - 1 {
        if us <= bound {
            return i;
        }
        bound *= 2;
    }
    BUCKETS - 1
}

impl ServerStatement {
    /// Records one execution.
    pub fn record(&self, elapsed: std::time::Duration) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.total_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.buckets[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` of the timed executions.
    pub fn quantile(&self, q: f64) -> Option<std::time::Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        let mut bound = 50u64;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank || i == BUCKETS - 1 {
                return Some(std::time::Duration::from_micros(bound));
            }
            bound *= 2;
        }
        None
    }
}

/// Shared statements, alive while any client maps a name to them.
#[derive(Default)]
pub struct StatementRegistry {
    next_id: AtomicU64,
    map: Mutex<HashMap<StatementKey, Weak<ServerStatement>>>,
}

impl StatementRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server statement for `key`, created on first use.
    pub fn get_or_create(
        &self,
        key: StatementKey,
        info: impl FnOnce() -> StatementInfo,
    ) -> Arc<ServerStatement> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("sluice_{id}").into_bytes().into_boxed_slice();
        let mut parse = BytesMut::new();
        write_parse(&mut parse, &name, &key.query, &key.param_types);
        let stmt = Arc::new(ServerStatement {
            id,
            name,
            parse: parse.freeze(),
            info: info(),
            key: key.clone(),
            executions: AtomicU64::new(0),
            total_nanos: AtomicU64::new(0),
            buckets: Default::default(),
        });
        if map.len() > 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&stmt));
        stmt
    }

    /// Every live statement.
    pub fn all(&self) -> Vec<Arc<ServerStatement>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// Live entries (for tests and metrics).
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    /// True when no statement is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(q: &str, sp: Option<&str>) -> StatementKey {
        StatementKey {
            query: Bytes::from(q.to_owned()),
            param_types: Bytes::from_static(&[0, 0]),
            search_path: sp.map(Arc::from),
            generation: 0,
        }
    }

    #[test]
    fn same_key_shares_a_statement_and_keys_compare_fully() {
        let r = StatementRegistry::new();
        let a = r.get_or_create(key("SELECT 1", None), StatementInfo::default);
        let b = r.get_or_create(key("SELECT 1", None), StatementInfo::default);
        let c = r.get_or_create(key("SELECT 1", Some("tenant_a")), StatementInfo::default);
        let d = r.get_or_create(key("SELECT 2", None), StatementInfo::default);
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, d.id);
        assert_eq!(&*a.name, format!("sluice_{}", a.id).as_bytes());
        drop((a, b));
        let e = r.get_or_create(key("SELECT 1", None), StatementInfo::default);
        assert_ne!(e.id, c.id);
        assert_eq!(r.len(), 3);
        for ms in [1u64, 1, 1, 1, 1, 1, 1, 1, 1, 30] {
            e.record(std::time::Duration::from_millis(ms));
        }
        assert_eq!(
            e.quantile(0.5),
            Some(std::time::Duration::from_micros(1600))
        );
        assert_eq!(
            e.quantile(0.99),
            Some(std::time::Duration::from_micros(51_200))
        );
        assert_eq!(r.all().len(), 3);
    }
}
