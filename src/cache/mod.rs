//! The query cache: rules say what is cached; an in-process L1 (moka, bounded by bytes)
//! answers hot reads without a server; Valkey, when configured, is the shared L2 and
//! carries invalidations between sidecars. Every write through sluice bumps the
//! generations of the tables it touches; an entry is served only while the
//! generations it was read under are current, and a fill is stored only if they did
//! not move while the read ran. Concurrent misses of one key become one backend query.

pub mod entry;
pub mod generations;
pub mod key;
pub mod listen;
pub mod rules;
pub mod valkey;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{Histogram, IntCounterVec, IntGauge};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use entry::{Age, Entry};
use generations::{Generations, ALL_TABLES};
pub use rules::Choice;
use valkey::Valkey;

use crate::config::CacheSettings;
use crate::metrics::Metrics;

/// The pseudo-table every entry of a rule also depends on, so a rule can be
/// invalidated like a table (and across sidecars).
pub fn rule_tag(rule: &str) -> String {
    format!("\u{1}rule:{rule}")
}

/// Metric handles of the cache.
pub struct CacheMetrics {
    /// Lookups by rule and result (hit, stale, miss, bypass).
    pub requests: IntCounterVec,
    /// Fills by rule and result (stored, rejected, too_large).
    pub fills: IntCounterVec,
    /// Entries evicted for space.
    pub evictions: prometheus::IntCounter,
    /// Bytes in L1.
    pub bytes: IntGauge,
    /// Valkey errors by operation.
    pub valkey_errors: IntCounterVec,
    /// Valkey round trips.
    pub valkey_latency: Histogram,
    /// 1 while the Valkey subscription is live.
    pub valkey_up: IntGauge,
    /// Invalidations by source (write, notify, api).
    pub invalidations: IntCounterVec,
}

impl CacheMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            requests: m.cache_requests.clone(),
            fills: m.cache_fills.clone(),
            evictions: m.cache_evictions.clone(),
            bytes: m.cache_bytes.clone(),
            valkey_errors: m.valkey_errors.clone(),
            valkey_latency: m.valkey_latency.clone(),
            valkey_up: m.valkey_up.clone(),
            invalidations: m.cache_invalidations.clone(),
        }
    }

    /// Counts a Valkey failure.
    pub fn valkey_error(&self, op: &'static str) {
        self.valkey_errors.with_label_values(&[op]).inc();
    }
}

struct PerEntry;

impl moka::Expiry<Bytes, Arc<Entry>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &Bytes,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.remaining(entry::now_ms()))
    }
}

/// What a lookup found.
pub enum Lookup {
    /// Serve this.
    Hit(Arc<Entry>),
    /// Serve this stale entry (another request is refreshing it).
    Stale(Arc<Entry>),
    /// Go to the server; `Flight` is held until the fill (it wakes the waiters).
    Miss(Flight),
    /// The cache cannot be used now (Valkey down).
    Bypass,
}

/// A running backend query for a key; dropping it lets waiters look again.
pub struct Flight {
    cache: Arc<Cache>,
    key: Option<Bytes>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.cache.land(&k);
        }
    }
}

/// The cache.
pub struct Cache {
    l1: moka::sync::Cache<Bytes, Arc<Entry>>,
    gens: Arc<Generations>,
    valkey: Option<Arc<Valkey>>,
    flights: Mutex<HashMap<Bytes, Vec<oneshot::Sender<()>>>>,
    refreshing: Mutex<HashSet<Bytes>>,
    /// Metric handles.
    pub metrics: Arc<CacheMetrics>,
    compress_above: usize,
    /// An entry was stored on a hint (without a rule): writes must be tracked.
    hinted: std::sync::atomic::AtomicBool,
}

impl Cache {
    /// Builds the cache for `settings`; connects to Valkey in the background.
    pub fn new(
        settings: &CacheSettings,
        metrics: &Metrics,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let cm = Arc::new(CacheMetrics::new(metrics));
        let evictions = cm.evictions.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &Bytes, v: &Arc<Entry>| {
                (k.len() + v.weight()).min(u32::MAX as usize) as u32
            })
            .expire_after(PerEntry)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        let gens = Arc::new(Generations::default());
        let cache = Arc::new_cyclic(|weak: &std::sync::Weak<Cache>| {
            let valkey = settings.valkey.as_deref().and_then(|url| {
                let w = weak.clone();
                let flush: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                    if let Some(c) = w.upgrade() {
                        c.l1.invalidate_all();
                    }
                });
                match Valkey::start(
                    url,
                    settings.valkey_timeout,
                    gens.clone(),
                    cm.clone(),
                    flush,
                    cancel.clone(),
                ) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::error!(error = %e, "valkey disabled");
                        None
                    }
                }
            });
            Cache {
                l1,
                gens: gens.clone(),
                valkey,
                flights: Mutex::new(HashMap::new()),
                refreshing: Mutex::new(HashSet::new()),
                metrics: cm.clone(),
                compress_above: settings.compress_above,
                hinted: std::sync::atomic::AtomicBool::new(false),
            }
        });
        cache
    }

    /// Whether writes must be tracked even without rules (shared Valkey, or entries
    /// stored on a hint).
    pub fn tracks_writes(&self) -> bool {
        self.valkey.is_some() || self.hinted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// False while Valkey is configured but unreachable (the cache is bypassed).
    pub fn usable(&self) -> bool {
        self.valkey.as_ref().is_none_or(|v| v.is_up())
    }

    /// The generations of `tables` in `db`, plus the database-wide one; `None` when
    /// they cannot be known now.
    pub async fn snapshot(
        &self,
        db: &str,
        tables: &[Box<str>],
    ) -> Option<(Vec<(String, u64)>, u64)> {
        let mut names: Vec<&str> = tables.iter().map(|t| &**t).collect();
        names.push(ALL_TABLES);
        if let Some(v) = &self.valkey {
            if !v.is_up() {
                return None;
            }
            let unknown: Vec<&str> = names
                .iter()
                .copied()
                .filter(|t| self.gens.get(db, t).is_none())
                .collect();
            if !unknown.is_empty() && !v.fetch(db, &unknown, &self.gens).await {
                return None;
            }
        }
        let mut out = Vec::with_capacity(tables.len());
        for t in &names[..names.len() - 1] {
            out.push(((*t).to_owned(), self.gen_of(db, t)?));
        }
        Some((out, self.gen_of(db, ALL_TABLES)?))
    }

    /// A generation as far as it can be trusted: local counters start at zero; with
    /// Valkey an unmirrored counter is unknown.
    fn gen_of(&self, db: &str, table: &str) -> Option<u64> {
        match &self.valkey {
            Some(_) => self.gens.get(db, table),
            None => Some(self.gens.get_or_zero(db, table)),
        }
    }

    fn current(&self, db: &str, e: &Entry) -> bool {
        e.tables.iter().all(|(t, g)| self.gen_of(db, t) == Some(*g))
            && self.gen_of(db, ALL_TABLES) == Some(e.db_gen)
    }

    async fn valid(&self, db: &str, e: &Entry) -> bool {
        if self.current(db, e) {
            return true;
        }
        let Some(v) = &self.valkey else {
            return false;
        };
        let mut unknown: Vec<&str> = e
            .tables
            .iter()
            .map(|(t, _)| t.as_str())
            .filter(|t| self.gens.get(db, t).is_none())
            .collect();
        if self.gens.get(db, ALL_TABLES).is_none() {
            unknown.push(ALL_TABLES);
        }
        !unknown.is_empty() && v.fetch(db, &unknown, &self.gens).await && self.current(db, e)
    }

    async fn find(&self, key: &Bytes, db: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.l1.get(key) {
            if self.valkey.is_some() {
                // Let the runtime poll its sockets first: an invalidation another sidecar
                // published before this request arrived is applied before the check.
                tokio::task::yield_now().await;
            }
            if self.valid(db, &e).await && e.age(entry::now_ms()) != Age::Expired {
                return Some(e);
            }
            self.l1.invalidate(key);
        }
        let v = self.valkey.as_ref()?;
        let raw = v.get(&key::valkey_key(key)).await?;
        let e = Arc::new(Entry::decode(&raw).filter(|e| e.key == *key)?);
        if !self.valid(db, &e).await || e.age(entry::now_ms()) == Age::Expired {
            return None;
        }
        self.l1.insert(key.clone(), e.clone());
        Some(e)
    }

    /// Looks `key` up; on a miss, waits for a running query of the same key once.
    pub async fn lookup(self: &Arc<Self>, key: &Bytes, db: &str) -> Lookup {
        if !self.usable() {
            return Lookup::Bypass;
        }
        let mut waited = false;
        loop {
            if let Some(e) = self.find(key, db).await {
                match e.age(entry::now_ms()) {
                    Age::Fresh => return Lookup::Hit(e),
                    _ => {
                        let first = self
                            .refreshing
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key.clone());
                        if !first {
                            return Lookup::Stale(e);
                        }
                        return Lookup::Miss(Flight {
                            cache: self.clone(),
                            key: Some(key.clone()),
                        });
                    }
                }
            }
            let rx = {
                let mut f = self.flights.lock().unwrap_or_else(|p| p.into_inner());
                match f.get_mut(key) {
                    Some(waiters) if !waited => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        Some(rx)
                    }
                    Some(_) => None,
                    None => {
                        f.insert(key.clone(), Vec::new());
                        return Lookup::Miss(Flight {
                            cache: self.clone(),
                            key: Some(key.clone()),
                        });
                    }
                }
            };
            let Some(rx) = rx else {
                // The leader's result never arrived: query without it.
                return Lookup::Miss(Flight {
                    cache: self.clone(),
                    key: None,
                });
            };
            waited = true;
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    fn land(&self, key: &Bytes) {
        self.refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let waiters = self
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(());
        }
    }

    /// Stores a result read under `entry.tables` / `entry.db_gen`, unless a write moved
    /// them meanwhile. Returns whether it was stored.
    pub fn fill(self: &Arc<Self>, db: &str, entry: Entry, rule: &str) -> bool {
        if !self.usable() || !self.current(db, &entry) {
            self.metrics
                .fills
                .with_label_values(&[rule, "rejected"])
                .inc();
            return false;
        }
        if entry.rule == 0 {
            self.hinted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let entry = Arc::new(entry);
        self.l1.insert(entry.key.clone(), entry.clone());
        self.metrics
            .fills
            .with_label_values(&[rule, "stored"])
            .inc();
        self.metrics.bytes.set(self.l1.weighted_size() as i64);
        if let Some(v) = self.valkey.clone() {
            let raw = entry.encode(self.compress_above);
            let ttl = entry.remaining(entry::now_ms());
            let k = key::valkey_key(&entry.key);
            tokio::spawn(async move { v.set(&k, raw, ttl).await });
        }
        true
    }

    /// A write through sluice touched `tables` of `db` (empty: it could not be
    /// attributed, so everything of `db` is invalidated).
    pub async fn invalidate(&self, db: &str, tables: &[&str], source: &'static str) {
        let all = [ALL_TABLES];
        let tables = if tables.is_empty() { &all[..] } else { tables };
        self.metrics
            .invalidations
            .with_label_values(&[source])
            .inc_by(tables.len() as u64);
        match &self.valkey {
            Some(v) => v.bump(db, tables, &self.gens).await,
            None => {
                for t in tables {
                    self.gens.bump_local(db, t);
                }
            }
        }
    }

    /// Drops every entry of `dbs` (the API's "all").
    pub async fn invalidate_everything(&self, dbs: &[String]) {
        self.l1.invalidate_all();
        for db in dbs {
            self.invalidate(db, &[], "api").await;
        }
    }

    /// Drops every entry a rule stored, in `dbs`.
    pub async fn invalidate_rule(&self, dbs: &[String], rule: &str) {
        let tag = rule_tag(rule);
        for db in dbs {
            self.invalidate(db, &[tag.as_str()], "api").await;
        }
    }
}
