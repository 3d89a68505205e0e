//! Valkey as the shared L2 and the invalidation bus. Table generations live in Valkey
//! (`INCR`) and every bump is published; each sidecar mirrors them through its
//! subscription. Valkey down is degraded, never broken: while the subscription is not
//! live the cache is bypassed (this sidecar could miss another's write), writes are
//! remembered and bumped once Valkey is back, and no client sees an error.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use super::generations::Generations;
use super::CacheMetrics;

const CHANNEL: &str = "sluice:invalidate";

fn gen_key(db: &str, table: &str) -> String {
    format!("sluice:gen:{db}:{table}")
}

/// The connection state and the writes waiting for Valkey.
pub struct Valkey {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// The subscription is live: mirrored generations can be trusted.
    up: AtomicBool,
    pending: Mutex<HashSet<(String, String)>>,
    timeout: Duration,
    metrics: Arc<CacheMetrics>,
}

impl Valkey {
    /// Connects lazily to `url` and starts the subscriber.
    pub fn start(
        url: &str,
        timeout: Duration,
        gens: Arc<Generations>,
        metrics: Arc<CacheMetrics>,
        on_reconnect: Arc<dyn Fn() + Send + Sync>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad valkey URL: {e}"))?;
        let v = Arc::new(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(false),
            pending: Mutex::new(HashSet::new()),
            timeout,
            metrics,
        });
        let me = v.clone();
        tokio::spawn(async move { me.subscriber(gens, on_reconnect, cancel).await });
        Ok(v)
    }

    /// True while the cache may be used.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn failed(&self, op: &'static str, e: &dyn std::fmt::Display) {
        self.metrics.valkey_error(op);
        tracing::debug!(op, error = %e, "valkey request failed");
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        match tokio::time::timeout(
            Duration::from_secs(1),
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.failed("connect", &e);
                None
            }
            Err(_) => {
                self.failed("connect", &"timed out");
                None
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut redis::Pipeline),
    ) -> Option<T> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        f(&mut pipe);
        let started = Instant::now();
        let r = tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await;
        self.metrics
            .valkey_latency
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(op, &e);
                None
            }
            Err(_) => {
                self.failed(op, &"timed out");
                None
            }
        }
    }

    /// Reads an encoded entry.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let (v,): (Option<Vec<u8>>,) = self
            .run("get", |p| {
                p.cmd("GET").arg(key);
            })
            .await?;
        v
    }

    /// Stores an encoded entry for `ttl`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        let ms = ttl.as_millis().max(1) as u64;
        let _: Option<()> = self
            .run("set", |p| {
                p.cmd("SET").arg(key).arg(value).arg("PX").arg(ms).ignore();
            })
            .await;
    }

    /// Fetches generations not mirrored yet (missing counters are zero).
    pub async fn fetch(&self, db: &str, tables: &[&str], gens: &Generations) -> bool {
        let keys: Vec<String> = tables.iter().map(|t| gen_key(db, t)).collect();
        let got: Option<(Vec<Option<u64>>,)> = self
            .run("fetch_generations", |p| {
                p.cmd("MGET").arg(&keys);
            })
            .await;
        match got {
            Some((values,)) if values.len() == tables.len() => {
                for (t, v) in tables.iter().zip(values) {
                    gens.raise(db, t, v.unwrap_or(0));
                }
                true
            }
            _ => false,
        }
    }

    /// Bumps the generations of `tables` in Valkey and publishes them. When Valkey
    /// cannot be reached they are kept and bumped on reconnect.
    pub async fn bump(&self, db: &str, tables: &[&str], gens: &Generations) {
        let keys: Vec<String> = tables.iter().map(|t| gen_key(db, t)).collect();
        let got: Option<Vec<u64>> = self
            .run("bump", |p| {
                for k in &keys {
                    p.cmd("INCR").arg(k);
                }
            })
            .await;
        match got {
            Some(values) if values.len() == tables.len() => {
                let mut payload = Vec::new();
                for (t, v) in tables.iter().zip(&values) {
                    gens.raise(db, t, *v);
                    payload.push(format!("{db}\0{t}\0{v}"));
                }
                let _: Option<()> = self
                    .run("publish", |p| {
                        for m in &payload {
                            p.cmd("PUBLISH").arg(CHANNEL).arg(m).ignore();
                        }
                    })
                    .await;
            }
            _ => {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for t in tables {
                    pending.insert((db.to_owned(), (*t).to_owned()));
                }
            }
        }
    }

    async fn flush_pending(&self, gens: &Generations) -> bool {
        let pending: Vec<(String, String)> = {
            let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.iter().cloned().collect()
        };
        for (db, t) in &pending {
            self.bump(db, &[t.as_str()], gens).await;
        }
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for item in &pending {
            p.remove(item);
        }
        p.is_empty()
    }

    async fn subscriber(
        self: Arc<Self>,
        gens: Arc<Generations>,
        on_reconnect: Arc<dyn Fn() + Send + Sync>,
        cancel: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let session = async {
                let mut ps = match self.client.get_async_pubsub().await {
                    Ok(ps) => ps,
                    Err(e) => {
                        self.failed("subscribe", &e);
                        return;
                    }
                };
                if let Err(e) = ps.subscribe(CHANNEL).await {
                    self.failed("subscribe", &e);
                    return;
                }
                // Whatever was mirrored or cached may have missed a bump.
                gens.clear();
                on_reconnect();
                if !self.flush_pending(&gens).await {
                    return;
                }
                self.up.store(true, Ordering::Release);
                self.metrics.valkey_up.set(1);
                tracing::info!("valkey connected: shared cache and invalidation are live");
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let payload = msg.get_payload_bytes();
                    let mut parts = payload.split(|b| *b == 0);
                    let (Some(db), Some(t), Some(g)) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let (Ok(db), Ok(t)) = (std::str::from_utf8(db), std::str::from_utf8(t)) else {
                        continue;
                    };
                    if let Some(g) = std::str::from_utf8(g).ok().and_then(|g| g.parse().ok()) {
                        gens.raise(db, t, g);
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = session => {}
            }
            if self.up.swap(false, Ordering::AcqRel) {
                tracing::warn!("valkey subscription lost: cache bypassed until it is back");
            }
            self.metrics.valkey_up.set(0);
            gens.clear();
            *self.conn.lock().await = None;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if self.is_up() {
                backoff = Duration::from_millis(50);
            }
        }
    }
}
