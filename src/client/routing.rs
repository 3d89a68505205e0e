//! Read routing inside a client session: where the next transaction or autocommit
//! request goes; BEGIN held back until the first statement shows whether the
//! transaction is read-only; `SET sluice.route`; read-your-writes watermarks; and the
//! transparent retry of a replica read whose server died before answering.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::session::{internal_query, Session};
use crate::config::{Consistency, Fallback, PoolMode};
use crate::error::Error;
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::frontend::{query_text, Bind, Parse};
use crate::protocol::io::read_some;
use crate::protocol::SqlState;
use crate::router::catalog::Catalog;
use crate::router::{
    Access, Class, DbRouter, Outstanding, Reason, RouteHint, RouteSetting, Target,
};

/// Where the attached unit (transaction or autocommit request) was sent, and why.
pub(super) struct UnitRoute {
    pub(super) target: Target,
    pub(super) reason: Reason,
    _busy: Option<Outstanding>,
}

/// A BEGIN answered locally; sent to the server chosen by the next statement.
pub(super) struct Deferred {
    frame: Bytes,
    read_only: bool,
}

/// The first request of a replica unit, kept to retry it elsewhere if the replica
/// fails before anything reached the client.
pub(super) struct Failover {
    frames: Vec<Bytes>,
    sync: bool,
    /// Responses already relayed (all of kinds every server answers identically).
    pub(super) delivered: usize,
}

/// What a decision needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    access: Access,
    functions_read_only: bool,
    begin: Option<bool>,
    set_read_only: bool,
    end_tag: Option<&'static str>,
    hint: Option<RouteHint>,
}

impl Facts {
    fn new() -> Self {
        Self {
            access: Access::Neutral,
            functions_read_only: true,
            begin: None,
            set_read_only: false,
            end_tag: None,
            hint: None,
        }
    }

    fn add(&mut self, class: &Class, catalog: &Catalog, allowed: &[String], first: bool) {
        self.access = self.access.max(class.access);
        self.functions_read_only &= class
            .functions
            .iter()
            .all(|f| catalog.read_only(f, allowed));
        if first {
            self.begin = class.begin;
            self.set_read_only = class.set_read_only;
            self.end_tag = class.end_tag;
        }
        self.hint = self.hint.or(class.hint.route);
    }

    /// A replica may serve it outside a transaction.
    fn is_read(&self) -> bool {
        self.access == Access::Read && self.functions_read_only && self.begin.is_none()
    }
}

impl Session {
    /// True when requests of this session are routed (a database with replicas, in
    /// transaction mode, not pinned).
    pub(super) fn routing(&self) -> bool {
        self.router.as_ref().is_some_and(|r| !r.replicas.is_empty())
            && self.mode == PoolMode::Transaction
            && self.pinned.is_none()
    }

    /// Where the attached unit runs, as reported to clients that ask.
    pub(super) fn route_label(&self) -> &'static str {
        if self.on_replica() {
            "replica"
        } else {
            "primary"
        }
    }

    /// The attached unit runs on a replica.
    pub(super) fn on_replica(&self) -> bool {
        matches!(
            self.unit.as_ref().map(|u| u.target),
            Some(Target::Replica(_))
        )
    }

    /// A failed write to a replica that may still be retried is handled like its loss.
    pub(super) async fn after_send(&mut self, sent: Result<(), Error>) -> Result<(), Error> {
        match sent {
            Err(Error::ServerLost(e)) if self.failover.is_some() => self.server_lost(e).await,
            r => r,
        }
    }

    fn router_now(&mut self) -> Option<Arc<DbRouter>> {
        let r = self.router.as_ref()?;
        if r.cancel.is_cancelled() {
            // A reload replaced it.
            self.router = self.shared.routers.get(&self.identity.database);
        }
        self.router.clone()
    }

    fn classes_facts(&self, classes: &[Arc<Class>]) -> Facts {
        let mut f = Facts::new();
        let cfg = self.shared.config.load();
        let catalog = match &self.router {
            Some(r) => r.catalog.load_full(),
            None => Arc::new(Catalog::default()),
        };
        for (i, c) in classes.iter().enumerate() {
            f.add(c, &catalog, &cfg.routing.read_only_functions, i == 0);
        }
        f
    }

    /// Facts of a simple query.
    pub(super) fn query_facts(&self, text: &[u8]) -> Facts {
        self.classes_facts(&[self.shared.classifier.get(text)])
    }

    /// Facts of an extended batch: its Parse texts and the statements its Binds use.
    pub(super) fn batch_facts(&self, frames: &[Bytes]) -> Result<Facts, Error> {
        Ok(self.classes_facts(&self.batch_classes(frames)?))
    }

    /// Classifications of a batch's Parse texts and of the statements its Binds use.
    pub(super) fn batch_classes(&self, frames: &[Bytes]) -> Result<Vec<Arc<Class>>, Error> {
        let mut classes = Vec::new();
        for f in frames {
            match f[0] {
                b'P' => classes.push(self.shared.classifier.get(Parse::read(f)?.query)),
                b'B' => {
                    let b = Bind::read(f)?;
                    if b.statement.is_empty() {
                        if frames.iter().any(|g| g[0] == b'P') {
                            continue;
                        }
                        if let Some(u) = &self.state.unnamed {
                            classes.push(self.shared.classifier.get(Parse::read(&u.parse)?.query));
                        }
                    } else if let Some(s) = self.state.statements.get(b.statement) {
                        classes.push(self.shared.classifier.get(&s.key.query));
                    }
                }
                _ => {}
            }
        }
        Ok(classes)
    }

    /// Chooses the server for the next unit; `Ok(false)` when an error was sent.
    pub(super) async fn route(&mut self, facts: &Facts, answers_rfq: bool) -> Result<bool, Error> {
        let replica_busy = self.on_replica();
        if self.server.is_some() {
            // A pipelined request behind a replica read that the replica cannot serve:
            // let the replica finish, then route afresh.
            if !(replica_busy && self.state.status == TxStatus::Idle && !facts.is_read()) {
                return Ok(true);
            }
            self.drain().await?;
            if self.server.is_some() {
                return Ok(true);
            }
        }
        match self.decide(facts) {
            Ok(d) => {
                self.next = Some(d);
                Ok(true)
            }
            Err(e) => {
                self.report(&e, answers_rfq).await?;
                Ok(false)
            }
        }
    }

    /// Where a unit with these facts goes.
    fn decide(&mut self, f: &Facts) -> Result<(Target, Reason), Error> {
        let Some(router) = self.router_now() else {
            return Ok((Target::Primary, Reason::Write));
        };
        let forced = f
            .hint
            .map(|h| (h, Reason::Hint))
            .or(self.route_override.map(|h| (h, Reason::Setting)));
        let (reason, needs_watermark) = match forced {
            Some((RouteHint::Primary, r)) => return Ok((Target::Primary, r)),
            Some((RouteHint::Replica, r)) => (r, false),
            None => match (&self.deferred, f.begin) {
                (Some(d), _) => {
                    if !(d.read_only || f.set_read_only) {
                        return Ok((Target::Primary, Reason::Transaction));
                    }
                    (Reason::ReadOnlyTransaction, true)
                }
                (None, Some(read_only)) => {
                    if !(read_only && f.access <= Access::Read && f.functions_read_only) {
                        return Ok((Target::Primary, Reason::Transaction));
                    }
                    (Reason::ReadOnlyTransaction, true)
                }
                (None, None) if f.is_read() => (Reason::Read, true),
                (None, None) if f.access == Access::Neutral => {
                    return Ok((Target::Primary, Reason::Other))
                }
                (None, None) => return Ok((Target::Primary, Reason::Write)),
            },
        };
        let cfg = self.shared.config.load();
        let Some(db) = cfg.database(&self.identity.database) else {
            return Ok((Target::Primary, reason));
        };
        let watermark = if needs_watermark {
            match self.watermark(&router, cfg.routing.consistency) {
                Some(w) => w,
                None => {
                    router.request_probe();
                    return Ok((Target::Primary, Reason::Consistency));
                }
            }
        } else {
            None
        };
        match router.pick_replica(db.lag, watermark, Instant::now()) {
            Ok(i) if i < self.ups.replicas.len() => Ok((Target::Replica(i), reason)),
            Ok(_) => Ok((Target::Primary, Reason::Unavailable)),
            Err(Reason::Consistency) => {
                router.request_probe();
                Ok((Target::Primary, Reason::Consistency))
            }
            Err(why) if cfg.routing.fallback == Fallback::Error => Err(Error::NoReplica {
                database: self.identity.database.clone(),
                reason: why.label(),
            }),
            Err(why) => Ok((Target::Primary, why)),
        }
    }

    /// The LSN a replica must have replayed for this client's next read: `Some(None)`
    /// when nothing is required, `None` while it is not known yet.
    fn watermark(&mut self, router: &DbRouter, mode: Consistency) -> Option<Option<u64>> {
        let since = match mode {
            Consistency::Eventual => return Some(None),
            Consistency::Session => {
                if let Some(w) = self.watermark_lsn {
                    return Some(Some(w));
                }
                self.write_at
            }
            Consistency::Global => match (self.write_at, router.last_write()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        };
        let Some(t) = since else {
            return Some(None);
        };
        let w = router.primary.load().watermark_after(t)?;
        if mode == Consistency::Session {
            self.watermark_lsn = Some(w);
        }
        Some(Some(w))
    }

    /// The unit just attached to `target` for `reason`.
    pub(super) fn begin_unit(&mut self, target: Target, reason: Reason) {
        let busy = match (target, &self.router) {
            (Target::Replica(i), Some(r)) => Some(Outstanding::new(r.clone(), i)),
            _ => None,
        };
        if let Some(r) = &self.router {
            r.count(target, reason);
        }
        self.unit = Some(UnitRoute {
            target,
            reason,
            _busy: busy,
        });
    }

    /// The unit's server connection is being released: a unit that may have written
    /// on the primary moves this client's (and, for global consistency, everyone's)
    /// watermark.
    pub(super) fn end_unit(&mut self) {
        self.failover = None;
        self.skip_frames = 0;
        let Some(u) = self.unit.take() else {
            return;
        };
        if u.target == Target::Primary && u.reason.may_write() {
            let now = Instant::now();
            self.write_at = Some(now);
            self.watermark_lsn = None;
            if let Some(r) = &self.router {
                r.note_write(now);
            }
        }
    }

    /// Keeps the first request of a replica unit for a retry elsewhere.
    pub(super) fn keep_for_failover(&mut self, frames: &[Bytes], sync: bool) {
        let fresh = matches!(
            self.unit.as_ref().map(|u| u.target),
            Some(Target::Replica(_))
        ) && self.state.status == TxStatus::Idle
            && self.expect.is_empty();
        self.failover = fresh.then(|| Failover {
            frames: frames.to_vec(),
            sync,
            delivered: 0,
        });
    }

    /// The replica serving the current unit failed before answering anything: mark it,
    /// and send the request again to another server. Returns false when a retry is not
    /// possible (the caller reports the loss as usual).
    pub(super) async fn retry_elsewhere(&mut self, e: &std::io::Error) -> Result<bool, Error> {
        let Some(Target::Replica(i)) = self.unit.as_ref().map(|u| u.target) else {
            return Ok(false);
        };
        if let Some(r) = &self.router {
            r.mark_failed(i);
        }
        let Some(copy) = self.failover.take() else {
            return Ok(false);
        };
        tracing::info!(client = self.id, error = %e, "replica lost before answering; retrying the read elsewhere");
        self.release_or_discard(false);
        self.server_fatal = false;
        self.fatal_seen = false;
        self.skip_frames = copy.delivered;
        for f in &copy.frames {
            if f[0] == b'P' {
                let p = Parse::read(f)?;
                if !p.name.is_empty() {
                    self.state.statements.remove(p.name);
                }
            }
        }
        // Boxed: this runs inside the handlers it calls.
        if copy.frames.first().is_some_and(|f| f[0] == b'Q') {
            Box::pin(self.on_query(BytesMut::from(&copy.frames[0][..]))).await?;
        } else {
            Box::pin(self.send_frames(&copy.frames, copy.sync)).await?;
        }
        Ok(true)
    }

    /// Relays until the attached server has answered everything, releasing it.
    async fn drain(&mut self) -> Result<(), Error> {
        while let Some(server) = self.server.as_mut() {
            if self.expect.is_empty() {
                if self.can_release() {
                    self.release_or_discard(true);
                }
                return Ok(());
            }
            match read_some(&server.stream, &mut server.rbuf).await {
                Ok(0) => {
                    self.server_lost(std::io::ErrorKind::UnexpectedEof.into())
                        .await?
                }
                Ok(_) => self.on_server_data().await?,
                Err(e) => self.server_lost(e).await?,
            }
        }
        Ok(())
    }

    /// A simple query while routing: BEGIN is held back, and COMMIT/ROLLBACK of a
    /// transaction that never reached a server are answered. Returns true when answered.
    pub(super) async fn hold_transaction(
        &mut self,
        frame: &Bytes,
        facts: &Facts,
    ) -> Result<bool, Error> {
        if self.server.is_some() || facts.hint.is_some() {
            return Ok(false);
        }
        let mut out = BytesMut::new();
        match (&self.deferred, facts.begin, facts.end_tag) {
            (None, Some(read_only), _)
                if self.state.status == TxStatus::Idle && facts.access == Access::Neutral =>
            {
                let text = query_text(frame)?;
                let starts = text
                    .iter()
                    .position(|c| !c.is_ascii_whitespace())
                    .is_some_and(|i| {
                        text[i..].len() >= 5 && text[i..i + 5].eq_ignore_ascii_case(b"start")
                    });
                self.deferred = Some(Deferred {
                    frame: frame.clone(),
                    read_only,
                });
                self.state.status = TxStatus::InTransaction;
                backend::command_complete(
                    &mut out,
                    if starts { "START TRANSACTION" } else { "BEGIN" },
                );
            }
            (Some(_), _, Some(tag)) => {
                self.deferred = None;
                self.state.status = TxStatus::Idle;
                backend::command_complete(&mut out, tag);
            }
            _ => return Ok(false),
        }
        backend::ready_for_query(&mut out, self.state.status);
        self.write_client(&out).await?;
        Ok(true)
    }

    /// Sends a held-back BEGIN to the server just attached. Returns false when the
    /// server refused it (the error was sent; the client's transaction is over).
    pub(super) async fn send_deferred(&mut self, answers_rfq: bool) -> Result<bool, Error> {
        let Some(d) = self.deferred.take() else {
            return Ok(true);
        };
        let Some(server) = self.server.as_mut() else {
            return Ok(true);
        };
        let sql = String::from_utf8_lossy(query_text(&d.frame)?).into_owned();
        let Some(err) = internal_query(server, &sql, self.max_msg).await? else {
            return Ok(true);
        };
        self.release_or_discard(true);
        self.state.status = TxStatus::Idle;
        let mut out = BytesMut::from(&err[..]);
        if answers_rfq {
            backend::ready_for_query(&mut out, self.state.status);
        } else {
            self.discard_until_sync = true;
        }
        self.write_client(&out).await?;
        Ok(false)
    }

    /// Answers `SET sluice.route`, `RESET sluice.route` and `SHOW sluice.route`.
    pub(super) async fn answer_route_setting(&mut self, text: &[u8]) -> Result<(), Error> {
        // Not the shared classifier: it merges texts that differ only in literals.
        let class = crate::router::classify::classify(&String::from_utf8_lossy(text));
        let mut out = BytesMut::new();
        match &class.route_setting {
            Some(RouteSetting::Set(v)) => match v.to_ascii_lowercase().as_str() {
                "primary" => self.route_override = Some(RouteHint::Primary),
                "replica" => self.route_override = Some(RouteHint::Replica),
                "auto" | "default" => self.route_override = None,
                other => {
                    super::session::error_frame(
                        &mut out,
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("invalid value for parameter \"sluice.route\": \"{other}\" (use primary, replica or auto)"),
                    );
                }
            },
            Some(RouteSetting::Reset) => self.route_override = None,
            Some(RouteSetting::Show) => {
                let v = match self.route_override {
                    Some(RouteHint::Primary) => "primary",
                    Some(RouteHint::Replica) => "replica",
                    None => "auto",
                };
                backend::single_text_row(&mut out, "sluice.route", v);
            }
            None => {}
        }
        if out.is_empty() {
            backend::command_complete(
                &mut out,
                if class.route_setting == Some(RouteSetting::Reset) {
                    "RESET"
                } else {
                    "SET"
                },
            );
        } else if class.route_setting == Some(RouteSetting::Show) {
            backend::command_complete(&mut out, "SHOW");
        }
        backend::ready_for_query(&mut out, self.state.status);
        self.write_client(&out).await
    }
}
