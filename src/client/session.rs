//! One task per client: handshake, then a loop that reads client messages, attaches a
//! server connection for each transaction, relays responses and releases the connection
//! at `ReadyForQuery` with status idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use super::cancel::{CancelOutcome, Slot};
use super::login::{fail, login, upstreams_for, ClientCount, Identity, Upstreams};
use super::routing::{Deferred, Failover, UnitRoute};
use super::startup::{read_startup, Hello};
use super::state::ClientState;
use super::Shared;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::error::Error;
use crate::pool::Pool;
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::error_response::parse_error_fields;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::frontend::FrontendTag;
use crate::protocol::io::{read_some, write_all, write_all2};
use crate::protocol::{ErrorResponse, Severity, SqlState};
use crate::router::{DbRouter, Reason, RouteHint, Target};
use crate::server::expect::ExpectQueue;
use crate::server::params::{from_startup, sync_sql};
use crate::server::ServerConn;

/// Runs a client connection to completion.
pub async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let cfg = shared.config.load_full();
    let mut buf = BytesMut::with_capacity(4096);
    let hello =
        tokio::time::timeout(cfg.limits.auth_timeout, read_startup(&stream, &mut buf)).await;
    let mut params = match hello {
        Ok(Ok(Hello::Session { params })) => params,
        Ok(Ok(Hello::Cancel { pid, secret })) => {
            let outcome = shared.cancels.cancel(pid, secret).await;
            let label = match outcome {
                CancelOutcome::Forwarded => "forwarded",
                CancelOutcome::Idle => "idle",
                CancelOutcome::Unknown => "unknown",
            };
            shared.metrics.cancels.with_label_values(&[label]).inc();
            return;
        }
        Ok(Err(e)) => return fail(&shared, &stream, e, peer).await,
        Err(_) => return fail(&shared, &stream, Error::AuthTimeout, peer).await,
    };
    let login = tokio::time::timeout(
        cfg.limits.auth_timeout,
        login(&shared, &stream, &mut buf, &params),
    )
    .await;
    let (database, ups, identity) = match login {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(&shared, &stream, e, peer).await,
        Err(_) => return fail(&shared, &stream, Error::AuthTimeout, peer).await,
    };
    let _guard = ClientCount::new(&shared, &database.name);
    if _guard.over_limit(database.pool.max_client_connections) {
        return fail(
            &shared,
            &stream,
            Error::TooManyClients(database.name.clone()),
            peer,
        )
        .await;
    }
    // sluice's own startup option, never passed on to Postgres.
    let report = params
        .iter()
        .any(|(k, v)| k == "sluice.report" && v == "on");
    params.retain(|(k, _)| k != "sluice.report");
    let (pid, secret, slot) = shared.cancels.register();
    let startup = shared.params.intern(from_startup(&params));
    let mut session = Session {
        max_msg: cfg.limits.max_message_size,
        mode: database.pool.mode,
        policy: database.pool.session_state,
        shared: shared.clone(),
        client: stream,
        cbuf: buf,
        out: BytesMut::with_capacity(1024),
        sout: BytesMut::new(),
        sbody: BytesMut::with_capacity(1024),
        id: pid as u64,
        pool: ups.primary.clone(),
        router: shared.routers.get(&database.name),
        ups,
        unit: None,
        next: None,
        route_override: None,
        deferred: None,
        write_at: None,
        watermark_lsn: None,
        failover: None,
        skip_frames: 0,
        capture: None,
        unit_writes: None,
        request_at: None,
        request_frame: Vec::new(),
        report,
        state: ClientState::new(startup),
        server: None,
        attached_at: Instant::now(),
        expect: ExpectQueue::default(),
        pending: Vec::new(),
        pinned: None,
        discard_until_sync: false,
        passthrough: 0,
        server_fatal: false,
        fatal_seen: false,
        cancel: slot,
        identity,
        saw_ddl: false,
        retry: None,
        retry_buf: BytesMut::new(),
        resend: false,
        timing: None,
    };
    tracing::debug!(%peer, user = %session.identity.user, database = %database.name, "client connected");
    shared.hot.clients_idle.inc();
    let result = session.start(pid, secret).await;
    let result = match result {
        Ok(()) => session.serve().await,
        Err(e) => Err(e),
    };
    shared.hot.clients_idle.dec();
    if let Err(e) = &result {
        session
            .shared
            .metrics
            .errors
            .with_label_values(&[e.metric_label()])
            .inc();
        if !matches!(e, Error::ClientIo(_)) {
            tracing::debug!(%peer, error = %e, "client session ended with error");
            let mut out = BytesMut::new();
            e.to_response_as(Severity::Fatal).encode(&mut out);
            let _ = write_all(&session.client, &out).await;
        }
    }
    session.finish().await;
    shared.cancels.unregister(pid);
}

/// One client session after authentication.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) client: TcpStream,
    /// Bytes from the client not yet processed.
    pub(super) cbuf: BytesMut,
    /// Bytes for the client assembled when frames are dropped or synthesized.
    pub(super) out: BytesMut,
    /// Bytes for the server injected ahead of a batch (LRU closes).
    pub(super) sout: BytesMut,
    /// Bytes for the server: a rewritten batch.
    pub(super) sbody: BytesMut,
    pub(super) id: u64,
    pub(super) max_msg: usize,
    pub(super) mode: PoolMode,
    pub(super) policy: SessionStatePolicy,
    /// The pool of the attached (or last attached) server connection.
    pub(super) pool: Arc<Pool>,
    /// The database's pools.
    pub(super) ups: Upstreams,
    /// Routing state, for a database with replicas.
    pub(super) router: Option<Arc<DbRouter>>,
    /// Where the attached unit went.
    pub(super) unit: Option<UnitRoute>,
    /// Where the next unit goes (decided before the checkout).
    pub(super) next: Option<(Target, Reason)>,
    /// `SET sluice.route`.
    pub(super) route_override: Option<RouteHint>,
    /// A BEGIN answered locally, not yet sent.
    pub(super) deferred: Option<Deferred>,
    /// When this client's last write finished (read-your-writes).
    pub(super) write_at: Option<Instant>,
    /// The primary LSN that write is known to be included in.
    pub(super) watermark_lsn: Option<u64>,
    /// The current replica request, kept for a retry elsewhere.
    pub(super) failover: Option<Failover>,
    /// Responses of a retried request the client already has from the failed attempt.
    pub(super) skip_frames: usize,
    /// A cache miss whose responses are being captured.
    pub(super) capture: Option<Box<super::cached::Capture>>,
    /// Tables the current unit wrote (bumped again when it ends).
    pub(super) unit_writes: Option<super::cached::UnitWrites>,
    /// When the oldest request in flight was sent.
    pub(super) request_at: Option<Instant>,
    /// The start of its first frame (reused buffer).
    pub(super) request_frame: Vec<u8>,
    /// The client asked for route and cache reports (`sluice.report=on`).
    pub(super) report: bool,
    pub(super) state: ClientState,
    pub(super) server: Option<Box<ServerConn>>,
    pub(super) attached_at: Instant,
    pub(super) expect: ExpectQueue,
    /// Extended-protocol frames waiting for Sync/Flush.
    pub(super) pending: Vec<Bytes>,
    /// Why this client keeps its server connection (transaction mode).
    pub(super) pinned: Option<&'static str>,
    /// After a locally raised error in an extended batch: drop frames until Sync.
    pub(super) discard_until_sync: bool,
    /// Bytes of a large frame still to forward without buffering.
    pub(super) passthrough: usize,
    /// The server sent FATAL for an autocommit request; it was relayed as ERROR.
    pub(super) server_fatal: bool,
    /// The server sent FATAL: the connection is dropped once the relay is done.
    pub(super) fatal_seen: bool,
    pub(super) cancel: Arc<Slot>,
    pub(super) identity: Identity,
    /// A statement that changes the schema was sent in the current transaction.
    pub(super) saw_ddl: bool,
    /// The batch in flight may be replayed once if its auto-prepared plan went stale.
    pub(super) retry: Option<Retry>,
    /// Reused buffer for [`Retry::frames`].
    pub(super) retry_buf: BytesMut,
    /// A stale plan was detected: replay the batch after relaying.
    pub(super) resend: bool,
    /// The server statement bound first in the request in flight, and when.
    pub(super) timing: Option<(Arc<crate::prepare::ServerStatement>, Instant)>,
}

/// A batch kept for one replay.
pub(super) struct Retry {
    /// The client frames from the first Bind on, concatenated.
    pub(super) frames: BytesMut,
    /// The server reported a stale plan for it.
    pub(super) armed: bool,
}

enum Wake {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
}

impl Session {
    /// Sends AuthenticationOk, ParameterStatus, BackendKeyData and ReadyForQuery.
    async fn start(&mut self, pid: i32, secret: i32) -> Result<(), Error> {
        let reported = match self.ups.primary.reported_for(&self.state.params) {
            Some(r) => r,
            None => {
                // Learn the server's canonical values for this client's settings (from
                // a replica when the primary is down).
                let mut conn = self.pool.checkout().await;
                for replica in &self.ups.replicas {
                    if conn.is_ok() {
                        break;
                    }
                    if let Ok(c) = replica.checkout().await {
                        self.pool = replica.clone();
                        conn = Ok(c);
                    }
                }
                self.attach(conn?);
                if let Some(err) = self.sync_params().await? {
                    self.release_or_discard(false);
                    let f = parse_error_fields(&err[HEADER_LEN..]);
                    return Err(Error::ServerConnect {
                        pool: self.pool.name.clone(),
                        addr: self.pool.addr.clone(),
                        reason: format!("startup parameter rejected: {}", f.message),
                    });
                }
                let values = self
                    .server
                    .as_ref()
                    .map(|s| s.reported.clone())
                    .unwrap_or_default();
                let r = self
                    .ups
                    .primary
                    .remember_reported(&self.state.params, values);
                if self.mode == PoolMode::Transaction || !Arc::ptr_eq(&self.pool, &self.ups.primary)
                {
                    self.release_or_discard(true);
                }
                r
            }
        };
        let mut out = BytesMut::with_capacity(512);
        backend::auth_ok(&mut out);
        for (n, v) in reported.iter() {
            backend::parameter_status(&mut out, n, v);
        }
        backend::backend_key_data(&mut out, pid, secret);
        backend::ready_for_query(&mut out, TxStatus::Idle);
        self.write_client(&out).await
    }

    /// The request loop.
    async fn serve(&mut self) -> Result<(), Error> {
        // Registered once, not per loop iteration.
        let shutdown = self.shared.shutdown.clone();
        let mut shutdown = std::pin::pin!(shutdown.triggered());
        loop {
            if self.process_client().await? {
                return Ok(());
            }
            let wake = match self.server.as_mut() {
                Some(server) => {
                    tokio::select! {
                        biased;
                        r = read_some(&server.stream, &mut server.rbuf) => Wake::Server(r),
                        r = read_some(&self.client, &mut self.cbuf) => Wake::Client(r),
                    }
                }
                None => {
                    if self.shared.shutdown.is_triggered() {
                        return Err(Error::Shutdown);
                    }
                    tokio::select! {
                        biased;
                        r = read_some(&self.client, &mut self.cbuf) => Wake::Client(r),
                        _ = &mut shutdown => Wake::Shutdown,
                    }
                }
            };
            match wake {
                Wake::Client(Ok(0)) => return Ok(()),
                Wake::Client(Ok(n)) => {
                    self.shared.hot.bytes_in.inc_by(n as u64);
                }
                Wake::Client(Err(e)) => return Err(Error::ClientIo(e)),
                Wake::Server(Ok(0)) => {
                    self.server_lost(std::io::ErrorKind::UnexpectedEof.into())
                        .await?
                }
                Wake::Server(Ok(_)) => self.on_server_data().await?,
                Wake::Server(Err(e)) => self.server_lost(e).await?,
                Wake::Shutdown => return Err(Error::Shutdown),
            }
        }
    }

    /// Handles every complete client frame buffered. Returns true on Terminate.
    async fn process_client(&mut self) -> Result<bool, Error> {
        while let Some(h) = complete_frame(&self.cbuf, self.max_msg)? {
            let t = FrontendTag::from_byte(h.tag)?;
            match t {
                FrontendTag::Query => {
                    let frame = self.cbuf.split_to(h.total);
                    self.on_query(frame).await?;
                }
                FrontendTag::Parse
                | FrontendTag::Bind
                | FrontendTag::Describe
                | FrontendTag::Execute
                | FrontendTag::Close => {
                    let frame = self.cbuf.split_to(h.total).freeze();
                    self.pending.push(frame);
                }
                FrontendTag::Sync | FrontendTag::Flush => {
                    let frame = self.cbuf.split_to(h.total).freeze();
                    self.pending.push(frame);
                    self.flush_batch(t == FrontendTag::Sync).await?;
                }
                FrontendTag::FunctionCall => {
                    let frame = self.cbuf.split_to(h.total).freeze();
                    self.on_function_call(frame).await?;
                }
                FrontendTag::CopyData | FrontendTag::CopyDone | FrontendTag::CopyFail => {
                    let frame = self.cbuf.split_to(h.total);
                    if !self.pending.is_empty() {
                        self.flush_batch(false).await?;
                    }
                    if let Some(server) = self.server.as_ref() {
                        write_all(&server.stream, &frame)
                            .await
                            .map_err(Error::ServerLost)?;
                    }
                }
                FrontendTag::Terminate => return Ok(true),
                FrontendTag::Password => {
                    return Err(Error::UnexpectedMessage(
                        "password message after authentication",
                    ))
                }
            }
        }
        Ok(false)
    }

    /// Attaches a checked-out server connection.
    pub(super) fn attach(&mut self, conn: Box<ServerConn>) {
        self.cancel.attach(super::cancel::Target {
            key: conn.cancel.clone(),
            mark: conn.cancel_sent.clone(),
        });
        self.attached_at = Instant::now();
        self.shared.hot.clients_active.inc();
        self.server = Some(conn);
    }

    /// Detaches the server connection: back to the pool when `reusable`, else closed.
    pub(super) fn release_or_discard(&mut self, reusable: bool) {
        let Some(conn) = self.server.take() else {
            return;
        };
        self.cancel.detach();
        self.shared.hot.clients_active.dec();
        self.end_unit();
        self.expect.clear();
        self.passthrough = 0;
        self.pool.metrics.transactions.inc();
        self.pool
            .metrics
            .transaction_duration
            .observe(self.attached_at.elapsed().as_secs_f64());
        if reusable {
            self.pool.checkin(conn);
        } else {
            self.pool.discard(conn, "broken");
        }
    }

    /// Makes sure a server connection is attached and carries the client's settings.
    /// On failure the error has been reported to the client and `false` is returned.
    pub(super) async fn ensure_server(&mut self, answers_rfq: bool) -> Result<bool, Error> {
        if self.server.is_some() {
            return Ok(true);
        }
        if self.ups.retired() {
            // A reload moved this database (new upstreams or credentials): follow it.
            let cfg = self.shared.config.load_full();
            match cfg.database(&self.identity.database) {
                Some(db) => {
                    self.ups = upstreams_for(&self.shared, db, &self.identity);
                    self.router = self.shared.routers.get(&db.name);
                }
                None => {
                    self.next = None;
                    let e = Error::UnknownDatabase(self.identity.database.clone());
                    self.report(&e, answers_rfq).await?;
                    return Ok(false);
                }
            }
        }
        let limit = self.pool.settings().checkout_timeout;
        if !self
            .shared
            .pauses
            .wait(&self.identity.database, limit)
            .await
        {
            self.next = None;
            let e = Error::Paused(self.identity.database.clone());
            self.report(&e, answers_rfq).await?;
            return Ok(false);
        }
        let (mut target, mut reason) = self.next.take().unwrap_or((Target::Primary, Reason::Write));
        loop {
            let pool = match target {
                Target::Replica(i) if i < self.ups.replicas.len() => self.ups.replicas[i].clone(),
                _ => {
                    target = Target::Primary;
                    self.ups.primary.clone()
                }
            };
            self.shared.hot.clients_waiting.inc();
            let checked = pool.checkout().await;
            self.shared.hot.clients_waiting.dec();
            match checked {
                Ok(conn) => {
                    self.pool = pool;
                    self.attach(conn);
                    break;
                }
                Err(Error::ServerConnect { reason: why, .. }) if self.router.is_some() => {
                    if let Target::Replica(i) = target {
                        // The replica is down: this read goes to the primary.
                        if let Some(r) = &self.router {
                            r.mark_failed(i);
                        }
                        target = Target::Primary;
                        reason = Reason::Unavailable;
                        continue;
                    }
                    let e = Error::PrimaryUnavailable {
                        database: self.identity.database.clone(),
                        reason: why,
                    };
                    self.report(&e, answers_rfq).await?;
                    return Ok(false);
                }
                Err(e) => {
                    self.report(&e, answers_rfq).await?;
                    return Ok(false);
                }
            }
        }
        if self.router.is_some() {
            self.begin_unit(target, reason);
        }
        match self.sync_params().await {
            Ok(None) => Ok(true),
            Ok(Some(err)) => {
                // The server refused the client's settings: relay its error.
                self.release_or_discard(true);
                self.out.clear();
                self.out.extend_from_slice(&err);
                if answers_rfq {
                    backend::ready_for_query(&mut self.out, self.state.status);
                } else {
                    self.discard_until_sync = true;
                }
                let out = std::mem::take(&mut self.out);
                let r = self.write_client(&out).await;
                self.out = out;
                self.out.clear();
                r.map(|_| false)
            }
            Err(e) => {
                let replica = match self.unit.as_ref().map(|u| u.target) {
                    Some(Target::Replica(i)) => Some(i),
                    _ => None,
                };
                self.release_or_discard(false);
                if let (Some(i), Some(r)) = (replica, &self.router) {
                    // The replica died under us before the request was sent: use the
                    // primary instead.
                    r.mark_failed(i);
                    self.next = Some((Target::Primary, Reason::Unavailable));
                    return Box::pin(self.ensure_server(answers_rfq)).await;
                }
                self.report(&e, answers_rfq).await?;
                Ok(false)
            }
        }
    }

    /// Sends an ERROR for a request that never reached a server.
    pub(super) async fn report(&mut self, e: &Error, answers_rfq: bool) -> Result<(), Error> {
        self.shared
            .metrics
            .errors
            .with_label_values(&[e.metric_label()])
            .inc();
        tracing::debug!(client = self.id, error = %e, "request failed");
        self.skip_frames = 0;
        let mut out = BytesMut::new();
        e.to_response_as(Severity::Error).encode(&mut out);
        if answers_rfq {
            backend::ready_for_query(&mut out, self.state.status);
        } else {
            self.discard_until_sync = true;
        }
        self.write_client(&out).await
    }

    /// Brings the attached connection's settings to the client's. Returns the server's
    /// ErrorResponse frame if it refused them.
    pub(super) async fn sync_params(&mut self) -> Result<Option<Bytes>, Error> {
        let Some(server) = self.server.as_mut() else {
            return Ok(None);
        };
        let Some(sql) = sync_sql(&server.applied, &self.state.params, server.params_dirty) else {
            return Ok(None);
        };
        tracing::trace!(client = self.id, server = server.id, %sql, "syncing settings");
        let err = internal_query(server, &sql, self.max_msg).await?;
        if err.is_none() {
            server.applied = self.state.params.clone();
            server.params_dirty = false;
        }
        Ok(err)
    }

    /// Writes bytes to the client.
    pub(super) async fn write_client(&self, data: &[u8]) -> Result<(), Error> {
        self.shared.hot.bytes_out.inc_by(data.len() as u64);
        write_all(&self.client, data).await.map_err(Error::ClientIo)
    }

    /// Writes bytes to the attached server (`prefix` first, e.g. injected messages).
    pub(super) async fn write_server(&self, prefix: &[u8], data: &[u8]) -> Result<(), Error> {
        match self.server.as_ref() {
            Some(s) => write_all2(&s.stream, prefix, data)
                .await
                .map_err(Error::ServerLost),
            None => Ok(()),
        }
    }

    /// Pins the client to its server connection (transaction mode) or refuses.
    /// Returns false when refused (the error was sent).
    pub(super) async fn check_pin(
        &mut self,
        reason: Option<&'static str>,
        answers_rfq: bool,
    ) -> Result<bool, Error> {
        let Some(reason) = reason else {
            return Ok(true);
        };
        if self.mode == PoolMode::Session || self.pinned.is_some() {
            return Ok(true);
        }
        match self.policy {
            SessionStatePolicy::Pin => {
                tracing::info!(
                    client = self.id,
                    reason,
                    "client pinned to its server connection"
                );
                self.shared
                    .metrics
                    .pinned_clients
                    .with_label_values(&[pin_label(reason)])
                    .inc();
                self.pinned = Some(reason);
                Ok(true)
            }
            SessionStatePolicy::Error => {
                self.report(&Error::SessionStateRefused(reason), answers_rfq)
                    .await?;
                Ok(false)
            }
        }
    }

    /// Whether the attached connection should go back to the pool now.
    pub(super) fn can_release(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.pinned.is_none()
            && self.state.status == TxStatus::Idle
            && self.expect.is_empty()
            && self.pending.is_empty()
            && self.passthrough == 0
            && !self.resend
    }

    /// The server connection broke while attached.
    pub(super) async fn server_lost(&mut self, e: std::io::Error) -> Result<(), Error> {
        tracing::info!(client = self.id, error = %e, "server connection lost");
        if self.retry_elsewhere(&e).await? {
            return Ok(());
        }
        let autocommit = self.server_fatal
            || (self.state.status == TxStatus::Idle
                && self.expect.sync_points() <= 1
                && self.mode == PoolMode::Transaction
                && self.pinned.is_none());
        let outstanding = self.expect.sync_points();
        self.release_or_discard(false);
        self.server_fatal = false;
        if !autocommit {
            // Transaction or session state is gone: end the client like Postgres would.
            return Err(Error::ServerLost(e));
        }
        if outstanding > 0 {
            // Every request still waiting for a ReadyForQuery gets one (requests queued
            // after the failure, such as a driver's Close of the failed statement, too),
            // each after an error, unless the server's own error was already relayed.
            let err = Error::ServerLost(e).to_response_as(Severity::Error);
            let mut out = BytesMut::new();
            for i in 0..outstanding {
                if i > 0 || !self.server_fatal_sent_error() {
                    err.encode(&mut out);
                }
                backend::ready_for_query(&mut out, TxStatus::Idle);
            }
            self.state.status = TxStatus::Idle;
            self.state.unit = Default::default();
            self.write_client(&out).await?;
        }
        Ok(())
    }

    fn server_fatal_sent_error(&self) -> bool {
        self.state.unit.error
    }

    /// Cleans up at disconnect: a server connection still attached is rolled back and
    /// reset in the background, or closed if that fails.
    async fn finish(&mut self) {
        let Some(mut conn) = self.server.take() else {
            return;
        };
        self.cancel.detach();
        self.shared.hot.clients_active.dec();
        let pool = self.pool.clone();
        let needs_reset = self.mode == PoolMode::Session || self.pinned.is_some();
        let reset = pool.settings().server_reset_query.clone();
        let reset = if self.pinned.is_some() && reset.trim().is_empty() {
            "DISCARD ALL".to_owned()
        } else {
            reset
        };
        let max = self.max_msg;
        let empty = self.shared.params.empty();
        if !self.expect.is_empty() {
            // The vanished client left work running: cancel it and close the connection
            // (a cancel may land late, so this connection is never reused).
            conn.cancel_sent
                .store(true, std::sync::atomic::Ordering::Release);
            let key = conn.cancel.clone();
            pool.discard(conn, "client_gone_mid_request");
            self.shared.shutdown.spawn("cancel-orphan", async move {
                let _ = crate::server::connect::send_cancel(&key).await;
            });
            return;
        }
        self.shared.shutdown.spawn("server-cleanup", async move {
            let work = async {
                if conn.status != TxStatus::Idle && internal_query(&mut conn, "ROLLBACK", max).await?.is_some() {
                    return Err(Error::ServerProtocol("ROLLBACK failed".into()));
                }
                if needs_reset && !reset.trim().is_empty() {
                    if internal_query(&mut conn, &reset, max).await?.is_some() {
                        return Err(Error::ServerProtocol("server_reset_query failed".into()));
                    }
                    conn.applied = empty;
                    conn.params_dirty = true;
                    conn.prepared.clear();
                    conn.unnamed = None;
                }
                Ok::<_, Error>(conn)
            };
            match tokio::time::timeout(std::time::Duration::from_secs(5), work).await {
                Ok(Ok(conn)) => pool.checkin(conn),
                Ok(Err(e)) => {
                    tracing::debug!(pool = %pool.name, error = %e, "cleanup failed; server connection closed");
                    pool.forget_dropped("cleanup_failed");
                }
                Err(_) => pool.forget_dropped("cleanup_timeout"),
            }
        });
    }
}

fn pin_label(reason: &'static str) -> &'static str {
    match reason {
        "LISTEN" => "listen",
        "SQL PREPARE" => "sql_prepare",
        "a temporary table" => "temp_table",
        "a session-level advisory lock" => "advisory_lock",
        "a WITH HOLD cursor" => "with_hold_cursor",
        _ => "other",
    }
}

/// Runs a query on a server connection outside any client's view. Returns the server's
/// ErrorResponse frame if it failed.
pub(super) async fn internal_query(
    conn: &mut ServerConn,
    sql: &str,
    max: usize,
) -> Result<Option<Bytes>, Error> {
    crate::server::query::run_simple(conn, sql, max, |_| Ok(())).await
}

/// Builds an ErrorResponse with an explicit code (used by local answers).
pub(super) fn error_frame(out: &mut BytesMut, code: SqlState, msg: String) {
    ErrorResponse::error(code, msg).encode(out);
}
