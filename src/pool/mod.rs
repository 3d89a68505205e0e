//! Pools of server connections per (database, server user, upstream).
//!
//! Checkout takes the most recently used idle connection (so surplus ones age out), or
//! opens one while below `size`, or queues the client in FIFO order. A connection checked
//! in goes straight to the longest waiter; a slot freed by a closed connection lets the
//! longest waiter open a new one. Waiting ends at `checkout_timeout` with SQLSTATE 53300.

mod pause;
mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use tokio::sync::oneshot;

pub use pause::Pauses;
pub use registry::{PoolId, Pools};

use crate::config::PoolSettings;
use crate::error::Error;
use crate::metrics::PoolMetrics;
use crate::protocol::backend::TxStatus;
use crate::protocol::io::try_read_some;
use crate::server::params::ParamSet;
use crate::server::{connect, Login, ServerConn};

/// ParameterStatus values a server reports under one settings set.
pub type Reported = Arc<Vec<(String, String)>>;

#[allow(
    clippy::large_enum_variant,
    reason = "moved once per hand-off; boxing would allocate per checkout"
)]
enum Grant {
    Conn(Box<ServerConn>),
    Slot,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct Inner {
    // Boxed so checkout and checkin move a pointer, not the whole connection.
    #[allow(
        clippy::vec_box,
        reason = "connections move in and out of this vector on every transaction"
    )]
    idle: Vec<Box<ServerConn>>,
    total: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    retired: bool,
}

/// A pool.
pub struct Pool {
    /// `database/user` (a metric label and the name in errors).
    pub name: String,
    /// Upstream `host:port`.
    pub addr: String,
    settings: ArcSwap<PoolSettings>,
    login: Mutex<Login>,
    inner: Mutex<Inner>,
    /// Pre-resolved metric handles.
    pub metrics: PoolMetrics,
    empty: Arc<ParamSet>,
    reported: Mutex<HashMap<u64, Reported>>,
    retired: std::sync::atomic::AtomicBool,
}

#[allow(clippy::large_enum_variant, reason = "short-lived local value")]
enum Next {
    Ready(Box<ServerConn>),
    Open,
    Wait(u64, oneshot::Receiver<Grant>),
}

impl Pool {
    /// A new, empty pool.
    pub fn new(
        name: String,
        addr: String,
        settings: PoolSettings,
        login: Login,
        metrics: PoolMetrics,
        empty: Arc<ParamSet>,
    ) -> Self {
        Self {
            name,
            addr,
            settings: ArcSwap::from_pointee(settings),
            login: Mutex::new(login),
            inner: Mutex::new(Inner::default()),
            metrics,
            empty,
            reported: Mutex::new(HashMap::new()),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Applies reloaded settings; extra idle connections are closed by the reaper.
    pub fn update_settings(&self, s: PoolSettings) {
        self.settings.store(Arc::new(s));
        // New slots may let waiters open connections now (sent under the lock, see
        // `abandon_wait`).
        let mut inner = self.lock();
        let size = self.settings.load().size;
        while inner.total < size {
            match inner.waiters.pop_front() {
                Some(w) => {
                    if w.tx.send(Grant::Slot).is_ok() {
                        inner.total += 1;
                    }
                }
                None => break,
            }
        }
    }

    /// Replaces the login (passthrough pools follow the latest client credential).
    pub fn set_login(&self, login: Login) {
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = login;
    }

    /// The current login.
    pub fn login(&self) -> Login {
        self.login.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops handing out new connections; idle ones close.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        let idle = {
            let mut inner = self.lock();
            inner.retired = true;
            let idle = std::mem::take(&mut inner.idle);
            inner.total -= idle.len();
            idle
        };
        for c in idle {
            self.metrics.idle.dec();
            self.metrics.closed("retired");
            drop(c);
        }
    }

    /// True once a reload replaced this pool; clients move to the new one.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// (total, idle, waiting) right now.
    pub fn stats(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.total, inner.idle.len(), inner.waiters.len())
    }

    /// Takes a server connection, waiting up to `checkout_timeout`.
    pub async fn checkout(&self) -> Result<Box<ServerConn>, Error> {
        let settings = self.settings.load();
        let mut started: Option<Instant> = None;
        loop {
            let next = {
                let mut inner = self.lock();
                let mut found = None;
                while let Some(conn) = inner.idle.pop() {
                    self.metrics.idle.dec();
                    if usable(&conn, &settings) {
                        found = Some(conn);
                        break;
                    }
                    inner.total -= 1;
                    self.metrics.closed("stale");
                }
                match found {
                    Some(c) => Next::Ready(c),
                    None if inner.total < settings.size => {
                        inner.total += 1;
                        Next::Open
                    }
                    None => {
                        let (tx, rx) = oneshot::channel();
                        inner.next_waiter += 1;
                        let id = inner.next_waiter;
                        inner.waiters.push_back(Waiter { id, tx });
                        Next::Wait(id, rx)
                    }
                }
            };
            match next {
                Next::Ready(conn) => return Ok(self.hand_out(conn, started)),
                Next::Open => return self.open_for_checkout(started).await,
                Next::Wait(id, mut rx) => {
                    let begun = *started.get_or_insert_with(Instant::now);
                    let remaining = settings.checkout_timeout.saturating_sub(begun.elapsed());
                    let grant = match tokio::time::timeout(remaining, &mut rx).await {
                        Ok(Ok(g)) => g,
                        Ok(Err(_)) => continue,
                        Err(_) => match self.abandon_wait(id, &mut rx) {
                            Some(g) => g,
                            None => {
                                self.metrics.checkout_timeouts.inc();
                                return Err(Error::CheckoutTimeout {
                                    pool: self.name.clone(),
                                    waited: begun.elapsed(),
                                    size: settings.size,
                                });
                            }
                        },
                    };
                    match grant {
                        Grant::Conn(conn) => {
                            if usable(&conn, &settings) {
                                return Ok(self.hand_out(conn, started));
                            }
                            // Keep the slot and open a fresh connection.
                            self.metrics.closed("stale");
                            drop(conn);
                            return self.open_for_checkout(started).await;
                        }
                        Grant::Slot => return self.open_for_checkout(started).await,
                    }
                }
            }
        }
    }

    /// Removes a timed-out waiter; if a grant raced in, returns it instead.
    fn abandon_wait(&self, id: u64, rx: &mut oneshot::Receiver<Grant>) -> Option<Grant> {
        let mut inner = self.lock();
        if let Some(pos) = inner.waiters.iter().position(|w| w.id == id) {
            inner.waiters.remove(pos);
            return None;
        }
        // Not queued any more: a granter popped us and sent while holding the lock, so
        // the grant is already in the channel.
        rx.try_recv().ok()
    }

    fn hand_out(&self, conn: Box<ServerConn>, started: Option<Instant>) -> Box<ServerConn> {
        self.metrics.active.inc();
        if let Some(s) = started {
            self.metrics
                .checkout_wait
                .observe(s.elapsed().as_secs_f64());
        }
        conn
    }

    async fn open_for_checkout(&self, started: Option<Instant>) -> Result<Box<ServerConn>, Error> {
        match self.open().await {
            Ok(c) => Ok(self.hand_out(c, started)),
            Err(e) => {
                self.release_slot();
                Err(e)
            }
        }
    }

    /// Opens a connection for a slot already counted in `total`.
    async fn open(&self) -> Result<Box<ServerConn>, Error> {
        let login = self.login.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let timeout = self.settings.load().connect_timeout;
        let fut = connect(&self.addr, &login, self.empty.clone());
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(c)) => {
                self.metrics.opened.inc();
                tracing::debug!(pool = %self.name, server = c.id, "server connection opened");
                Ok(Box::new(c))
            }
            Ok(Err(f)) => Err(Error::ServerConnect {
                pool: self.name.clone(),
                addr: self.addr.clone(),
                reason: f.0,
            }),
            Err(_) => Err(Error::ServerConnect {
                pool: self.name.clone(),
                addr: self.addr.clone(),
                reason: format!("timed out after {timeout:?}"),
            }),
        }
    }

    /// A slot is free: give it to the longest waiter, or shrink.
    fn release_slot(&self) {
        let mut inner = self.lock();
        while let Some(w) = inner.waiters.pop_front() {
            if w.tx.send(Grant::Slot).is_ok() {
                return;
            }
        }
        inner.total -= 1;
    }

    /// Returns a connection after a transaction (status must be idle).
    pub fn checkin(&self, conn: Box<ServerConn>) {
        self.checkin_at(conn, Instant::now());
    }

    /// [`Pool::checkin`] with the caller's clock reading.
    pub fn checkin_at(&self, mut conn: Box<ServerConn>, now: Instant) {
        self.metrics.active.dec();
        let settings = self.settings.load();
        if conn.status != TxStatus::Idle
            || conn.cancel_was_sent()
            || now.duration_since(conn.created) >= settings.max_lifetime
            || !conn.rbuf.is_empty()
        {
            let reason = if conn.cancel_was_sent() {
                "cancel_sent"
            } else {
                "not_reusable"
            };
            self.close_counted(conn, reason);
            return;
        }
        conn.last_used = now;
        let mut inner = self.lock();
        if inner.retired || inner.total > settings.size {
            drop(inner);
            self.close_counted(conn, "pool_shrunk");
            return;
        }
        while let Some(w) = inner.waiters.pop_front() {
            match w.tx.send(Grant::Conn(conn)) {
                // The waiter counts it active when it takes it (`hand_out`).
                Ok(()) => return,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Slot) => return,
            }
        }
        self.metrics.idle.inc();
        inner.idle.push(conn);
    }

    /// Closes a checked-out connection (broken, or not safe to reuse).
    pub fn discard(&self, conn: Box<ServerConn>, reason: &'static str) {
        self.metrics.active.dec();
        self.close_counted(conn, reason);
    }

    /// Accounts for a checked-out connection that was dropped elsewhere (e.g. a cleanup
    /// task that failed): frees its slot.
    pub fn forget_dropped(&self, reason: &'static str) {
        self.metrics.active.dec();
        self.metrics.closed(reason);
        self.release_slot();
    }

    fn close_counted(&self, conn: Box<ServerConn>, reason: &'static str) {
        tracing::debug!(pool = %self.name, server = conn.id, reason, "server connection closed");
        self.metrics.closed(reason);
        drop(conn);
        self.release_slot();
    }

    /// Reported parameters cached for a settings set.
    pub fn reported_for(&self, set: &ParamSet) -> Option<Reported> {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&set.id())
            .cloned()
    }

    /// Caches what the server reports under a settings set.
    pub fn remember_reported(
        &self,
        set: &ParamSet,
        values: Vec<(String, String)>,
    ) -> Arc<Vec<(String, String)>> {
        let v = Arc::new(values);
        let mut map = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            map.clear();
        }
        map.insert(set.id(), v.clone());
        v
    }

    /// Closes idle connections past `idle_timeout` (above `min_idle`) or `max_lifetime`,
    /// drops dead ones, and opens connections up to `min_idle`.
    pub async fn maintain(&self) {
        let settings = self.settings.load_full();
        let doomed = {
            let mut inner = self.lock();
            let mut keep = Vec::with_capacity(inner.idle.len());
            let mut doomed = Vec::new();
            let idle: Vec<Box<ServerConn>> = std::mem::take(&mut inner.idle);
            let mut spare = idle.len().saturating_sub(settings.min_idle);
            // Oldest-used first.
            for conn in idle {
                let expired = conn.created.elapsed() >= settings.max_lifetime;
                let idle_long = spare > 0 && conn.last_used.elapsed() >= settings.idle_timeout;
                let too_many = inner.total - doomed.len() > settings.size;
                if expired || idle_long || too_many || inner.retired || !usable(&conn, &settings) {
                    if idle_long {
                        spare -= 1;
                    }
                    doomed.push(conn);
                } else {
                    keep.push(conn);
                }
            }
            inner.idle = keep;
            doomed
        };
        for conn in doomed {
            self.metrics.idle.dec();
            self.metrics.active.inc();
            self.discard(conn, "reaped");
        }
        loop {
            let open = {
                let mut inner = self.lock();
                if !inner.retired
                    && inner.idle.len() < settings.min_idle
                    && inner.total < settings.size
                {
                    inner.total += 1;
                    true
                } else {
                    false
                }
            };
            if !open {
                break;
            }
            match self.open().await {
                Ok(c) => {
                    self.metrics.active.inc();
                    self.checkin(c);
                }
                Err(e) => {
                    self.release_slot();
                    tracing::warn!(pool = %self.name, error = %e, "could not open min_idle connection");
                    break;
                }
            }
        }
    }
}

/// An idle connection is usable when its socket shows no EOF or unexpected bytes
/// (checked through the reactor's readiness: no syscall while quiet). Age limits are
/// enforced at checkin and by the reaper.
fn usable(conn: &ServerConn, _settings: &PoolSettings) -> bool {
    if !conn.rbuf.is_empty() {
        return false;
    }
    let ready = std::future::poll_fn(|cx| conn.stream.poll_read_ready(cx)).now_or_never();
    match ready {
        None => true,
        Some(Err(_)) => false,
        Some(Ok(())) => {
            let mut probe = bytes::BytesMut::new();
            matches!(try_read_some(&conn.stream, &mut probe), Ok(None))
        }
    }
}

/// Runs [`Pool::maintain`] on every pool once a second until shutdown.
pub async fn reaper(pools: Arc<Pools>, shutdown: crate::shutdown::Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.triggered() => return,
        }
        for pool in pools.all() {
            pool.maintain().await;
        }
    }
}
