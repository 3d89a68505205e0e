//! Client requests on their way to the server: simple queries forwarded untouched unless
//! sluice answers them itself, extended batches rewritten so client statement names map
//! to shared server statements, with re-`Parse` and LRU `Close` injected as needed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::cached::{Cached, Capture};
use super::session::{error_frame, Retry, Session};
use super::state::Unnamed;
use crate::error::Error;
use crate::prepare::StatementKey;
use crate::protocol::backend::{self, TxStatus, CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::frontend::{
    self, execute_portal, query_text, write_bind, write_statement_target, Bind, DescribeOrClose,
    Parse, Target,
};
use crate::protocol::SqlState;
use crate::router::statement::Local;
use crate::router::Class;
use crate::router::{analyze, StatementInfo};
use crate::router::{Reason, Target as Upstream};
use crate::server::expect::{Expect, ParseTrack};

impl Session {
    /// A simple Query.
    pub(super) async fn on_query(&mut self, frame: BytesMut) -> Result<(), Error> {
        if !self.pending.is_empty() {
            // Extended messages without Sync before a Query: send them first.
            self.flush_batch(false).await?;
        }
        let frame = frame.freeze();
        let text = query_text(&frame)?;
        let info = analyze(text);
        if let Some(local) = &info.local {
            if self.expect.is_empty() {
                return self.answer_local(local.clone(), text).await;
            }
        }
        if !self.check_pin(info.pin, true).await? {
            return Ok(());
        }
        let capture = match self.cache_query(text).await? {
            Cached::Served => return Ok(()),
            Cached::Pass => None,
            Cached::Fill(c) => Some(c),
        };
        if capture.is_some() {
            self.next = Some((Upstream::Primary, Reason::CacheMiss));
        } else if self.routing() && (self.server.is_none() || self.on_replica()) {
            let facts = self.query_facts(text);
            if self.hold_transaction(&frame, &facts).await? || !self.route(&facts, true).await? {
                return Ok(());
            }
        }
        if !self.ensure_server(true).await? || !self.send_deferred(true).await? {
            return Ok(());
        }
        self.sending(capture, &frame, |s| Ok(vec![s.shared.classifier.get(text)]))
            .await?;
        if info.ddl {
            self.saw_ddl = true;
        }
        let info = (!info.is_plain()).then(|| Arc::new(info));
        self.state.unnamed = None;
        if let Some(server) = self.server.as_mut() {
            server.unnamed = None;
        }
        self.keep_for_failover(std::slice::from_ref(&frame), true);
        self.expect.push(Expect::Query(info));
        let sent = self.write_server(&[], &frame).await;
        self.after_send(sent).await
    }

    /// With a server attached and the request about to go: writes are noted for the
    /// cache, a client that asked is told the route, a cache miss starts capturing, and
    /// the request's clock starts.
    async fn sending(
        &mut self,
        capture: Option<Box<Capture>>,
        first: &Bytes,
        classes: impl FnOnce(&Self) -> Result<Vec<Arc<Class>>, Error>,
    ) -> Result<(), Error> {
        if self.tracks_writes() {
            let classes = classes(self)?;
            self.note_writes(&classes).await;
        }
        if self.report {
            let cache = if capture.is_some() { "MISS" } else { "BYPASS" };
            let route = self.route_label();
            self.report_status(route, cache).await?;
        }
        self.capture = capture;
        self.start_request(first);
        Ok(())
    }

    /// A FunctionCall: forwarded as its own request.
    pub(super) async fn on_function_call(&mut self, frame: Bytes) -> Result<(), Error> {
        if !self.pending.is_empty() {
            self.flush_batch(false).await?;
        }
        if !self.ensure_server(true).await? {
            return Ok(());
        }
        self.expect.push(Expect::FunctionCall);
        self.write_server(&[], &frame).await
    }

    /// Answers DEALLOCATE / DISCARD ALL / `sluice.route` without a server.
    async fn answer_local(&mut self, local: Local, text: &[u8]) -> Result<(), Error> {
        let mut out = BytesMut::new();
        match local {
            Local::RouteSetting => return self.answer_route_setting(text).await,
            Local::Deallocate(name) => {
                if self.state.statements.remove(name.as_bytes()).is_some() {
                    backend::command_complete(&mut out, "DEALLOCATE");
                } else {
                    error_frame(
                        &mut out,
                        SqlState::INVALID_STATEMENT_NAME,
                        format!("prepared statement \"{name}\" does not exist"),
                    );
                }
            }
            Local::DeallocateAll => {
                self.state.statements.clear();
                backend::command_complete(&mut out, "DEALLOCATE ALL");
            }
            Local::DiscardAll => {
                if self.state.status != TxStatus::Idle
                    || self.pinned.is_some()
                    || self.mode == crate::config::PoolMode::Session
                {
                    // Inside a transaction Postgres refuses it; on a dedicated connection
                    // it really must run there. Forward it.
                    return self.forward_discard_all().await;
                }
                self.state.statements.clear();
                self.state.unnamed = None;
                self.state.params = self.state.startup.clone();
                backend::command_complete(&mut out, "DISCARD ALL");
            }
        }
        backend::ready_for_query(&mut out, self.state.status);
        self.write_client(&out).await
    }

    async fn forward_discard_all(&mut self) -> Result<(), Error> {
        let mut frame = BytesMut::new();
        frontend::write_query(&mut frame, "DISCARD ALL");
        if !self.ensure_server(true).await? {
            return Ok(());
        }
        let info = StatementInfo {
            effects: vec![
                crate::router::Effect::ResetAll,
                crate::router::Effect::DropsServerStatements,
            ],
            ..Default::default()
        };
        self.state.statements.clear();
        self.expect.push(Expect::Query(Some(Arc::new(info))));
        self.write_server(&[], &frame).await
    }

    /// Sends the buffered extended-protocol batch (ending with Sync, or with Flush /
    /// before a Query or copy data when `sync` is false).
    pub(super) async fn flush_batch(&mut self, sync: bool) -> Result<(), Error> {
        // Keep the vector's capacity across batches.
        let mut frames = std::mem::take(&mut self.pending);
        let result = self.send_frames(&frames, sync).await;
        frames.clear();
        if self.pending.is_empty() {
            self.pending = frames;
        }
        result
    }

    pub(super) async fn send_frames(&mut self, frames: &[Bytes], sync: bool) -> Result<(), Error> {
        if self.discard_until_sync {
            if sync {
                self.discard_until_sync = false;
                let mut out = BytesMut::new();
                backend::ready_for_query(&mut out, self.state.status);
                self.write_client(&out).await?;
            }
            return Ok(());
        }
        if self.server.is_none() && self.answer_batch_locally(frames).await? {
            return Ok(());
        }
        // Facts of Parse texts decide pinning before anything is sent; a name defined
        // twice is refused as Postgres would.
        let mut pin = None;
        let mut added: Vec<&[u8]> = Vec::new();
        let mut closed: Vec<&[u8]> = Vec::new();
        let mut duplicate = None;
        for f in frames {
            match f[0] {
                b'P' => {
                    let p = Parse::read(f)?;
                    if !p.name.is_empty() {
                        let exists = (self.state.statements.contains_key(p.name)
                            && !closed.contains(&p.name))
                            || added.contains(&p.name);
                        if exists && duplicate.is_none() {
                            duplicate = Some(String::from_utf8_lossy(p.name).into_owned());
                        }
                        added.push(p.name);
                        closed.retain(|n| *n != p.name);
                    }
                    pin = pin.or(analyze(p.query).pin);
                }
                b'C' => {
                    let c = DescribeOrClose::read(f)?;
                    if c.target == Target::Statement && !c.name.is_empty() {
                        added.retain(|n| *n != c.name);
                        closed.push(c.name);
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = duplicate {
            let mut out = BytesMut::new();
            error_frame(
                &mut out,
                SqlState::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{name}\" already exists"),
            );
            if sync {
                backend::ready_for_query(&mut out, self.state.status);
            } else {
                self.discard_until_sync = true;
            }
            return self.write_client(&out).await;
        }
        if !self.check_pin(pin, sync).await? {
            return Ok(());
        }
        let capture = match self.cache_batch(frames).await? {
            Cached::Served => return Ok(()),
            Cached::Pass => None,
            Cached::Fill(c) => Some(c),
        };
        if capture.is_some() {
            self.next = Some((Upstream::Primary, Reason::CacheMiss));
        } else if self.routing() && (self.server.is_none() || self.on_replica()) {
            let facts = self.batch_facts(frames)?;
            if !self.route(&facts, sync).await? {
                return Ok(());
            }
        }
        if !self.ensure_server(sync).await? || !self.send_deferred(sync).await? {
            return Ok(());
        }
        if let Some(first) = frames.first() {
            self.sending(capture, first, |s| s.batch_classes(frames))
                .await?;
        }
        self.keep_for_failover(frames, sync);
        let sent = self.translate_and_send(frames, true).await;
        self.after_send(sent).await
    }

    /// Rewrites `frames` for the attached server and sends them, reusing the session's
    /// output buffers.
    pub(super) async fn translate_and_send(
        &mut self,
        frames: &[Bytes],
        allow_retry: bool,
    ) -> Result<(), Error> {
        let mut front = std::mem::take(&mut self.sout);
        let mut body = std::mem::take(&mut self.sbody);
        front.clear();
        body.clear();
        let result = match self.translate(frames, &mut front, &mut body, allow_retry) {
            Ok(()) => self.write_server(&front, &body).await,
            Err(e) => Err(e),
        };
        front.clear();
        body.clear();
        self.sout = front;
        self.sbody = body;
        result
    }

    /// A batch of only Close and Sync while idle: answered without a server.
    async fn answer_batch_locally(&mut self, frames: &[Bytes]) -> Result<bool, Error> {
        let Some((last, rest)) = frames.split_last() else {
            return Ok(true);
        };
        if last[0] != b'S' || !rest.iter().all(|f| f[0] == b'C') {
            return Ok(false);
        }
        let mut out = BytesMut::new();
        for f in rest {
            let c = DescribeOrClose::read(f)?;
            if c.target == Target::Statement {
                if c.name.is_empty() {
                    self.state.unnamed = None;
                } else {
                    self.state.statements.remove(c.name);
                }
            }
            out.extend_from_slice(&CLOSE_COMPLETE);
        }
        backend::ready_for_query(&mut out, self.state.status);
        self.write_client(&out).await?;
        Ok(true)
    }

    /// Rewrites a batch for the attached server. Injected messages that must precede the
    /// batch (LRU closes) go to `front`, the rest to `body`. With `allow_retry`, a batch
    /// that starts by binding an auto-prepared statement keeps a copy of its frames so a
    /// stale plan can be re-prepared and the batch replayed once.
    pub(super) fn translate(
        &mut self,
        frames: &[Bytes],
        front: &mut BytesMut,
        body: &mut BytesMut,
        allow_retry: bool,
    ) -> Result<(), Error> {
        let cfg = self.shared.config.load();
        let mut b = Batch {
            used: Vec::new(),
            at: self.expect.len(),
            evictions: 0,
            max: self.pool.settings().max_prepared_statements,
        };
        let fresh_batch = b.at == 0;
        let client_id = self.id;
        let search_path = self.state.search_path();
        let mut parsed_unnamed = false;
        let mut executed = false;
        for (i, f) in frames.iter().enumerate() {
            let server = self
                .server
                .as_mut()
                .ok_or(Error::UnexpectedMessage("no server attached"))?;
            match f[0] {
                b'P' => {
                    let p = Parse::read(f)?;
                    if p.name.is_empty() {
                        self.state.unnamed_seq += 1;
                        let seq = self.state.unnamed_seq;
                        // Own copies, never slices of the read buffer (which they would pin);
                        // the common case re-parses the same text and reuses both.
                        let (parse, info) = match self.state.unnamed.take() {
                            Some(u) if u.parse == *f => (u.parse, u.info),
                            _ => (Bytes::copy_from_slice(f), Arc::new(analyze(p.query))),
                        };
                        let auto = self.shared.auto.observe(
                            &cfg.prepare,
                            p.query,
                            p.param_types,
                            search_path.as_ref(),
                            &self.shared.statements,
                        );
                        parsed_unnamed = true;
                        if let Some(stmt) = &auto {
                            // Frequent: use the shared server statement; the client still
                            // sees exactly the replies of its unnamed statement.
                            match b.ensure(
                                server,
                                stmt,
                                front,
                                body,
                                &mut self.expect,
                                &self.shared,
                                true,
                            ) {
                                true => self
                                    .shared
                                    .metrics
                                    .prepared_statements
                                    .with_label_values(&["auto_prepared"])
                                    .inc(),
                                false => {
                                    self.shared
                                        .metrics
                                        .prepared_statements
                                        .with_label_values(&["reused"])
                                        .inc();
                                    self.expect.push(Expect::Synthetic(Bytes::from_static(
                                        &PARSE_COMPLETE,
                                    )));
                                }
                            }
                        } else {
                            server.unnamed = Some((client_id, seq));
                            body.extend_from_slice(f);
                            self.expect.push(Expect::Parse {
                                forward: true,
                                track: ParseTrack {
                                    client_name: None,
                                    statement: None,
                                },
                            });
                        }
                        if info.ddl {
                            self.saw_ddl = true;
                        }
                        self.state.unnamed = Some(Unnamed {
                            seq,
                            parse,
                            info,
                            prepared: auto,
                        });
                        continue;
                    }
                    let key = StatementKey {
                        query: Bytes::copy_from_slice(p.query),
                        param_types: Bytes::copy_from_slice(p.param_types),
                        search_path: search_path.clone(),
                        generation: 0,
                    };
                    let stmt = self
                        .shared
                        .statements
                        .get_or_create(key, || analyze(p.query));
                    self.state.statements.insert(p.name.to_vec(), stmt.clone());
                    if b.ensure(
                        server,
                        &stmt,
                        front,
                        body,
                        &mut self.expect,
                        &self.shared,
                        true,
                    ) {
                        self.shared
                            .metrics
                            .prepared_statements
                            .with_label_values(&["prepared"])
                            .inc();
                        // Bookkeeping to undo if the Parse fails.
                        if let Some(Expect::Parse { track, .. }) = self.expect.back_mut() {
                            track.client_name = Some(p.name.to_vec());
                        }
                    } else {
                        self.shared
                            .metrics
                            .prepared_statements
                            .with_label_values(&["reused"])
                            .inc();
                        self.expect
                            .push(Expect::Synthetic(Bytes::from_static(&PARSE_COMPLETE)));
                    }
                }
                b'B' => {
                    let bind = Bind::read(f)?;
                    let stmt = if bind.statement.is_empty() {
                        self.state.unnamed.as_ref().and_then(|u| u.prepared.clone())
                    } else {
                        self.state.statements.get(bind.statement).cloned()
                    };
                    let info = match stmt {
                        Some(stmt) => {
                            if bind.statement.is_empty()
                                && allow_retry
                                && fresh_batch
                                && !executed
                                && self.retry.is_none()
                                && self.state.status == TxStatus::Idle
                            {
                                let mut copy = std::mem::take(&mut self.retry_buf);
                                copy.clear();
                                for g in &frames[i..] {
                                    copy.extend_from_slice(g);
                                }
                                self.retry = Some(Retry {
                                    frames: copy,
                                    armed: false,
                                });
                            }
                            if b.ensure(
                                server,
                                &stmt,
                                front,
                                body,
                                &mut self.expect,
                                &self.shared,
                                false,
                            ) {
                                self.shared
                                    .metrics
                                    .prepared_statements
                                    .with_label_values(&["prepared"])
                                    .inc();
                            }
                            write_bind(body, &bind, &stmt.name);
                            if self.timing.is_none() {
                                self.timing = Some((stmt.clone(), std::time::Instant::now()));
                            }
                            if stmt.info.ddl {
                                self.saw_ddl = true;
                            }
                            (!stmt.info.is_plain()).then(|| Arc::new(stmt.info.clone()))
                        }
                        None if bind.statement.is_empty() => {
                            let unnamed = self
                                .state
                                .unnamed
                                .as_ref()
                                .map(|u| (u.seq, u.parse.clone(), u.info.clone()));
                            let info = match unnamed {
                                Some((seq, parse, info)) => {
                                    if !parsed_unnamed && server.unnamed != Some((client_id, seq)) {
                                        // Another client's unnamed statement replaced ours.
                                        body.extend_from_slice(&parse);
                                        server.unnamed = Some((client_id, seq));
                                        self.expect.push(Expect::Parse {
                                            forward: false,
                                            track: ParseTrack {
                                                client_name: None,
                                                statement: None,
                                            },
                                        });
                                    }
                                    Some(info)
                                }
                                None => None,
                            };
                            body.extend_from_slice(f);
                            info
                        }
                        None => {
                            // Unknown name: let the server report it.
                            body.extend_from_slice(f);
                            None
                        }
                    };
                    match info.filter(|i| !i.is_plain()) {
                        Some(i) => {
                            self.state.portals.insert(bind.portal.to_vec(), i);
                        }
                        None => {
                            if !self.state.portals.is_empty() {
                                self.state.portals.remove(bind.portal);
                            }
                        }
                    }
                    self.expect.push(Expect::Bind);
                }
                b'D' => {
                    let d = DescribeOrClose::read(f)?;
                    let stmt = match d.target {
                        Target::Portal => None,
                        Target::Statement if d.name.is_empty() => {
                            self.state.unnamed.as_ref().and_then(|u| u.prepared.clone())
                        }
                        Target::Statement => self.state.statements.get(d.name).cloned(),
                    };
                    match (d.target, stmt) {
                        (Target::Portal, _) => {
                            body.extend_from_slice(f);
                            self.expect.push(Expect::DescribePortal);
                        }
                        (Target::Statement, Some(stmt)) => {
                            b.ensure(
                                server,
                                &stmt,
                                front,
                                body,
                                &mut self.expect,
                                &self.shared,
                                false,
                            );
                            write_statement_target(body, b'D', &stmt.name);
                            self.expect.push(Expect::DescribeStatement);
                        }
                        (Target::Statement, None) => {
                            if d.name.is_empty() {
                                if let Some(u) = &self.state.unnamed {
                                    if !parsed_unnamed && server.unnamed != Some((client_id, u.seq))
                                    {
                                        body.extend_from_slice(&u.parse);
                                        server.unnamed = Some((client_id, u.seq));
                                        self.expect.push(Expect::Parse {
                                            forward: false,
                                            track: ParseTrack {
                                                client_name: None,
                                                statement: None,
                                            },
                                        });
                                    }
                                }
                            }
                            body.extend_from_slice(f);
                            self.expect.push(Expect::DescribeStatement);
                        }
                    }
                }
                b'E' => {
                    let portal = execute_portal(f)?;
                    let info = if self.state.portals.is_empty() {
                        None
                    } else {
                        self.state.portals.get(portal).cloned()
                    };
                    body.extend_from_slice(f);
                    self.expect.push(Expect::Execute(info));
                    executed = true;
                }
                b'C' => {
                    let c = DescribeOrClose::read(f)?;
                    match c.target {
                        Target::Statement => {
                            if c.name.is_empty() {
                                self.state.unnamed = None;
                            } else {
                                self.state.statements.remove(c.name);
                            }
                            self.expect
                                .push(Expect::Synthetic(Bytes::from_static(&CLOSE_COMPLETE)));
                        }
                        Target::Portal => {
                            self.state.portals.remove(c.name);
                            body.extend_from_slice(f);
                            self.expect.push(Expect::Close { forward: true });
                        }
                    }
                }
                b'S' => {
                    body.extend_from_slice(f);
                    self.expect.push(Expect::Sync);
                }
                b'H' => body.extend_from_slice(f),
                _ => {
                    return Err(Error::UnexpectedMessage(
                        "unexpected message in extended batch",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Per-batch bookkeeping for statements placed on the server connection.
struct Batch {
    /// Statement ids this batch relies on (never evicted by it).
    used: Vec<u64>,
    /// Where this batch's expectations begin in the queue.
    at: usize,
    /// LRU closes queued ahead of the batch so far.
    evictions: usize,
    /// The per-connection statement limit.
    max: usize,
}

impl Batch {
    /// Makes sure `server` holds `stmt`, queuing its Parse when it does not (forwarding
    /// the ParseComplete when `forward`). Returns true when a Parse was sent.
    #[allow(
        clippy::too_many_arguments,
        reason = "disjoint borrows of the session's parts"
    )]
    fn ensure(
        &mut self,
        server: &mut crate::server::ServerConn,
        stmt: &Arc<crate::prepare::ServerStatement>,
        front: &mut BytesMut,
        body: &mut BytesMut,
        expect: &mut crate::server::expect::ExpectQueue,
        shared: &super::Shared,
        forward: bool,
    ) -> bool {
        self.used.push(stmt.id);
        if server.prepared.touch(stmt.id) {
            return false;
        }
        self.evictions += evict(
            server,
            self.max,
            &self.used,
            front,
            expect,
            self.at + self.evictions,
            shared,
        );
        server.prepared.insert(stmt.id);
        body.extend_from_slice(&stmt.parse);
        expect.push(Expect::Parse {
            forward,
            track: ParseTrack {
                client_name: None,
                statement: Some(stmt.clone()),
            },
        });
        true
    }
}

/// Makes room for one more statement on `server`, queuing a Close for each victim ahead
/// of the batch (its expectation goes at `at`, where the batch's entries begin). Returns
/// how many were evicted.
fn evict(
    server: &mut crate::server::ServerConn,
    max: usize,
    keep: &[u64],
    front: &mut BytesMut,
    expect: &mut crate::server::expect::ExpectQueue,
    at: usize,
    shared: &super::Shared,
) -> usize {
    let mut n = 0;
    while server.prepared.len() >= max {
        let Some(victim) = server.prepared.evict(keep) else {
            break;
        };
        write_statement_target(front, b'C', format!("sluice_{victim}").as_bytes());
        expect.insert(at + n, Expect::Close { forward: false });
        shared
            .metrics
            .prepared_statements
            .with_label_values(&["evicted"])
            .inc();
        n += 1;
    }
    n
}
