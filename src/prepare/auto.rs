//! Auto-prepare: counts executions of unnamed statements by shape (query text, parameter
//! types, `search_path`) and, once a shape is frequent, hands back a shared server
//! statement so the session prepares it once per server connection instead of parsing
//! and planning it on every execution.
//!
//! Counting costs one hash of the text and one full comparison under an uncontended
//! lock; nothing is allocated for a shape already seen. Counts decay every `window`
//! (halved), so "frequent" means recent. Schema changes bump an epoch: shapes then get
//! fresh server statements (new names), so no stale plan can fail with
//! `cached plan must not change result type`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::registry::{ServerStatement, StatementKey, StatementRegistry};
use crate::config::PrepareSettings;
use crate::router::analyze;

/// FNV-1a, enough to bucket shapes (entries are compared in full).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn shape_hash(query: &[u8], types: &[u8], search_path: Option<&str>) -> u64 {
    let mut h = Fnv::default();
    h.write(query);
    h.write(types);
    if let Some(sp) = search_path {
        h.write(sp.as_bytes());
    }
    h.finish()
}

struct Shape {
    query: Bytes,
    types: Bytes,
    search_path: Option<Arc<str>>,
    count: u32,
    executions: u64,
    statement: Option<Arc<ServerStatement>>,
}

impl Shape {
    fn matches(&self, query: &[u8], types: &[u8], search_path: Option<&str>) -> bool {
        self.query == query && self.types == types && self.search_path.as_deref() == search_path
    }
}

/// A shape's numbers, for metrics and the HTTP views.
#[derive(Debug, Clone)]
pub struct ShapeStats {
    /// Query text.
    pub query: String,
    /// Executions counted since the shape was first seen.
    pub executions: u64,
    /// Whether it is prepared on the server.
    pub prepared: bool,
    /// Total time of the executions timed since it was prepared (bind to ReadyForQuery).
    pub total_time: std::time::Duration,
}

/// The shape table.
pub struct AutoPrepare {
    shapes: Mutex<HashMap<u64, Vec<Shape>, BuildHasherDefault<Fnv>>>,
    epoch: AtomicU64,
}

impl Default for AutoPrepare {
    fn default() -> Self {
        Self::new()
    }
}

impl AutoPrepare {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            shapes: Mutex::new(HashMap::default()),
            epoch: AtomicU64::new(1),
        }
    }

    /// Counts one execution of an unnamed `Parse`; returns the server statement to use
    /// once the shape reached `threshold` within the window.
    pub fn observe(
        &self,
        settings: &PrepareSettings,
        query: &[u8],
        types: &[u8],
        search_path: Option<&Arc<str>>,
        registry: &StatementRegistry,
    ) -> Option<Arc<ServerStatement>> {
        if !settings.auto {
            return None;
        }
        let sp = search_path.map(|s| &**s);
        let hash = shape_hash(query, types, sp);
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        if shapes.len() >= settings.max_shapes && !shapes.contains_key(&hash) {
            // Full: forget shapes that never became frequent.
            shapes.retain(|_, v| {
                v.retain(|s| s.statement.is_some());
                !v.is_empty()
            });
            if shapes.len() >= settings.max_shapes {
                return None;
            }
        }
        let bucket = shapes.entry(hash).or_default();
        let shape = match bucket.iter().position(|s| s.matches(query, types, sp)) {
            Some(i) => &mut bucket[i],
            None => {
                bucket.push(Shape {
                    query: Bytes::copy_from_slice(query),
                    types: Bytes::copy_from_slice(types),
                    search_path: search_path.cloned(),
                    count: 0,
                    executions: 0,
                    statement: None,
                });
                let last = bucket.len() - 1;
                &mut bucket[last]
            }
        };
        shape.count = shape.count.saturating_add(1);
        shape.executions += 1;
        if let Some(s) = &shape.statement {
            if s.key.generation == epoch {
                return Some(s.clone());
            }
        }
        if shape.count < settings.threshold {
            return None;
        }
        let key = StatementKey {
            query: shape.query.clone(),
            param_types: shape.types.clone(),
            search_path: shape.search_path.clone(),
            generation: epoch,
        };
        let q = shape.query.clone();
        let stmt = registry.get_or_create(key, || analyze(&q));
        shape.statement = Some(stmt.clone());
        Some(stmt)
    }

    /// A fresh server statement (current epoch) for the shape of `old`.
    pub fn refresh(
        &self,
        old: &ServerStatement,
        registry: &StatementRegistry,
    ) -> Arc<ServerStatement> {
        let key = StatementKey {
            generation: self.epoch(),
            ..old.key.clone()
        };
        registry.get_or_create(key, || old.info.clone())
    }

    /// Halves every count; shapes that fell to zero and are not prepared are forgotten.
    pub fn decay(&self) {
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        shapes.retain(|_, v| {
            for s in v.iter_mut() {
                s.count /= 2;
            }
            v.retain(|s| s.count > 0 || s.statement.is_some());
            !v.is_empty()
        });
    }

    /// The schema changed: later executions get fresh server statements.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The current epoch (the `generation` of auto-prepared statement keys).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The `n` shapes with the most executions.
    pub fn top(&self, n: usize) -> Vec<ShapeStats> {
        let shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<ShapeStats> = shapes
            .values()
            .flatten()
            .map(|s| ShapeStats {
                query: String::from_utf8_lossy(&s.query).into_owned(),
                executions: s.executions,
                prepared: s.statement.is_some(),
                total_time: std::time::Duration::from_nanos(
                    s.statement
                        .as_ref()
                        .map_or(0, |st| st.total_nanos.load(Ordering::Relaxed)),
                ),
            })
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.executions));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threshold: u32) -> PrepareSettings {
        PrepareSettings {
            threshold,
            ..PrepareSettings::default()
        }
    }

    #[test]
    fn prepares_after_threshold_and_keys_compare_fully() {
        let a = AutoPrepare::new();
        let r = StatementRegistry::new();
        let s = settings(3);
        let q = b"SELECT $1::int";
        assert!(a.observe(&s, q, &[0, 0], None, &r).is_none());
        assert!(a.observe(&s, q, &[0, 0], None, &r).is_none());
        let st = a.observe(&s, q, &[0, 0], None, &r).unwrap();
        assert_eq!(&st.key.query[..], q);
        let again = a.observe(&s, q, &[0, 0], None, &r).unwrap();
        assert!(Arc::ptr_eq(&st, &again));
        // A different search_path is a different shape.
        let sp: Arc<str> = Arc::from("tenant_b");
        assert!(a.observe(&s, q, &[0, 0], Some(&sp), &r).is_none());
        // Invalidation gives a new statement (new name) for the same shape.
        a.invalidate();
        let fresh = a.observe(&s, q, &[0, 0], None, &r).unwrap();
        assert_ne!(fresh.id, st.id);
        assert_eq!(a.top(1)[0].executions, 5);
    }

    #[test]
    fn disabled_and_bounded() {
        let a = AutoPrepare::new();
        let r = StatementRegistry::new();
        let off = PrepareSettings {
            auto: false,
            ..PrepareSettings::default()
        };
        assert!(a.observe(&off, b"x", &[0, 0], None, &r).is_none());
        let tiny = PrepareSettings {
            threshold: 1,
            max_shapes: 2,
            ..PrepareSettings::default()
        };
        assert!(a.observe(&tiny, b"a", &[0, 0], None, &r).is_some());
        assert!(a.observe(&tiny, b"b", &[0, 0], None, &r).is_some());
        // Table full of prepared shapes: new shapes are not tracked, nothing breaks.
        assert!(a.observe(&tiny, b"c", &[0, 0], None, &r).is_none());
        a.decay();
        assert_eq!(a.top(10).len(), 2);
    }
}
