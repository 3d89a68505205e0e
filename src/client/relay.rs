//! Server responses on their way to the client. Frames are scanned by header only and
//! forwarded in place; the expected-response queue decides which are dropped (replies
//! to injected messages) and where synthetic replies go. ReadyForQuery closes a request:
//! session effects are settled and the connection is released when the transaction is over.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::session::Session;
use crate::error::Error;
use crate::protocol::backend::{command_tag, parse_parameter_status, tag, TxStatus};
use crate::protocol::error_response::parse_error_fields;
use crate::protocol::frame::{peek_header, HEADER_LEN};
use crate::protocol::{ErrorResponse, SqlState};
use crate::router::Effect;
use crate::server::expect::Expect;

/// Frames larger than this are streamed through instead of buffered whole.
const STREAM_THRESHOLD: usize = 64 * 1024;

enum Action {
    Forward,
    Drop,
    /// Forward a replacement instead of the frame.
    Replace(bytes::Bytes),
}

impl Session {
    /// Relays whatever complete frames the server sent.
    pub(super) async fn on_server_data(&mut self) -> Result<(), Error> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let mut rbuf = std::mem::take(&mut server.rbuf);
        let mut result = self.relay(&mut rbuf).await;
        if let Some(server) = self.server.as_mut() {
            // Keep the (possibly grown) buffer with the connection.
            if server.rbuf.is_empty() {
                server.rbuf = rbuf;
            } else {
                rbuf.extend_from_slice(&server.rbuf);
                server.rbuf = rbuf;
            }
        }
        if result.is_ok() && self.resend {
            self.resend = false;
            result = self.replay().await;
        }
        if result.is_ok() && self.fatal_seen {
            // The server ended this connection: nothing more may be sent on it, even if
            // its EOF has not been read yet.
            self.fatal_seen = false;
            let e = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "server ended the connection",
            );
            result = self.server_lost(e).await;
        }
        result?;
        if self.server.is_some() && self.can_release() {
            self.release_or_discard(true);
        }
        Ok(())
    }

    async fn relay(&mut self, rbuf: &mut BytesMut) -> Result<(), Error> {
        let mut pos = 0;
        let mut run_start = 0;
        self.out.clear();
        while pos < rbuf.len() {
            if self.passthrough > 0 {
                self.failover = None;
                if let Some(c) = self.capture.as_mut() {
                    c.spoil();
                }
                let n = self.passthrough.min(rbuf.len() - pos);
                pos += n;
                self.passthrough -= n;
                continue;
            }
            let h = match peek_header(&rbuf[pos..], self.max_msg) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(Error::ServerProtocol(e.to_string())),
            };
            if rbuf.len() - pos < h.total {
                let avail = rbuf.len() - pos;
                let streamable = matches!(h.tag, tag::DATA_ROW | tag::COPY_DATA);
                if streamable
                    && avail >= STREAM_THRESHOLD
                    && matches!(
                        self.expect.front(),
                        Some(Expect::Execute(_)) | Some(Expect::Query(_)) | None
                    )
                {
                    self.passthrough = h.total - avail;
                    pos = rbuf.len();
                }
                break;
            }
            // Synthetic replies precede the server's next response.
            if matches!(self.expect.front(), Some(Expect::Synthetic(_))) {
                self.out.extend_from_slice(&rbuf[run_start..pos]);
                run_start = pos;
                while let Some(b) = self.expect.pop_synthetic() {
                    if self.failover_visible(b.first().copied().unwrap_or(0)) {
                        self.out.extend_from_slice(&b);
                    }
                }
            }
            if h.tag == tag::READY_FOR_QUERY {
                self.finish_request();
                self.finish_capture();
                if rbuf.get(pos + HEADER_LEN) == Some(&b'I') && self.unit_writes.is_some() {
                    // The unit's writes are committed (or rolled back): bump again
                    // before the client can learn that.
                    self.end_writes().await;
                }
            }
            let mut action = self.on_server_frame(h.tag, &rbuf[pos..pos + h.total])?;
            if let Some(c) = self.capture.as_mut() {
                if !matches!(action, Action::Drop) {
                    c.see(h.tag, &rbuf[pos..pos + h.total]);
                }
            }
            if !matches!(action, Action::Drop) && !self.failover_visible(h.tag) {
                action = Action::Drop;
            }
            match action {
                Action::Forward => {}
                Action::Drop => {
                    self.out.extend_from_slice(&rbuf[run_start..pos]);
                    run_start = pos + h.total;
                }
                Action::Replace(b) => {
                    self.out.extend_from_slice(&rbuf[run_start..pos]);
                    self.out.extend_from_slice(&b);
                    run_start = pos + h.total;
                }
            }
            pos += h.total;
        }
        let result = if self.out.is_empty() {
            self.write_client(&rbuf[run_start..pos]).await
        } else {
            self.out.extend_from_slice(&rbuf[run_start..pos]);
            let out = std::mem::take(&mut self.out);
            let r = self.write_client(&out).await;
            self.out = out;
            self.out.clear();
            r
        };
        rbuf.advance(pos);
        result
    }

    /// Bookkeeping for a replica request that may be retried elsewhere: responses that
    /// are the same on every server (parse, bind, describe) are counted, so a retry can
    /// skip them; anything else ends the chance of a retry. Returns false when the frame
    /// is a response the client already got from a failed attempt.
    fn failover_visible(&mut self, tag: u8) -> bool {
        if self.skip_frames > 0 {
            self.skip_frames -= 1;
            return false;
        }
        if let Some(f) = self.failover.as_mut() {
            let same_everywhere = matches!(
                tag,
                tag::PARSE_COMPLETE
                    | tag::BIND_COMPLETE
                    | tag::CLOSE_COMPLETE
                    | tag::PARAMETER_DESCRIPTION
                    | tag::ROW_DESCRIPTION
                    | tag::NO_DATA
            );
            if same_everywhere {
                f.delivered += 1;
            } else if tag != tag::NOTICE_RESPONSE {
                // (A notice, such as a dying server's warning, is harmless to repeat.)
                self.failover = None;
            }
        }
        true
    }

    fn on_server_frame(&mut self, t: u8, frame: &[u8]) -> Result<Action, Error> {
        let body = &frame[HEADER_LEN..];
        match t {
            tag::PARSE_COMPLETE => match self.expect.pop() {
                Some(Expect::Parse { forward, .. }) => Ok(if forward {
                    Action::Forward
                } else {
                    Action::Drop
                }),
                other => self.desync("ParseComplete", other),
            },
            tag::BIND_COMPLETE => match self.expect.pop() {
                Some(Expect::Bind) => Ok(Action::Forward),
                other => self.desync("BindComplete", other),
            },
            tag::CLOSE_COMPLETE => match self.expect.pop() {
                Some(Expect::Close { forward }) => Ok(if forward {
                    Action::Forward
                } else {
                    Action::Drop
                }),
                other => self.desync("CloseComplete", other),
            },
            tag::PARAMETER_DESCRIPTION => {
                self.expect.seen_param_desc = true;
                Ok(Action::Forward)
            }
            tag::ROW_DESCRIPTION | tag::NO_DATA => {
                if matches!(
                    self.expect.front(),
                    Some(Expect::DescribeStatement | Expect::DescribePortal)
                ) {
                    self.expect.pop();
                }
                Ok(Action::Forward)
            }
            tag::COMMAND_COMPLETE => {
                let ctag = command_tag(body);
                self.state.unit.committed = ctag == b"COMMIT";
                if let Some(Expect::Execute(info)) = self.expect.front() {
                    if let Some(i) = info {
                        let effects = i.effects.clone();
                        self.state.unit.effects.extend(effects);
                    }
                    self.expect.pop();
                }
                Ok(Action::Forward)
            }
            tag::EMPTY_QUERY | tag::PORTAL_SUSPENDED => {
                if matches!(self.expect.front(), Some(Expect::Execute(_))) {
                    self.expect.pop();
                }
                Ok(Action::Forward)
            }
            tag::PARAMETER_STATUS => {
                if let (Some((n, v)), Some(server)) =
                    (parse_parameter_status(body), self.server.as_mut())
                {
                    server.set_reported(n, v);
                }
                Ok(Action::Forward)
            }
            tag::COPY_IN => {
                self.expect.copy_in_started();
                Ok(Action::Forward)
            }
            tag::ERROR_RESPONSE => self.on_server_error(body),
            tag::READY_FOR_QUERY => self.on_ready(body),
            _ => Ok(Action::Forward),
        }
    }

    fn on_server_error(&mut self, body: &[u8]) -> Result<Action, Error> {
        let fields = parse_error_fields(body);
        if fields.is_fatal() && self.failover.is_some() {
            // A replica going away before answering: the read is retried elsewhere
            // once the connection is dropped (see `retry_elsewhere`).
            self.fatal_seen = true;
            return Ok(Action::Drop);
        }
        if self.retry.as_ref().is_some_and(|r| !r.armed)
            && matches!(self.expect.front(), Some(Expect::Bind))
            && (fields.code == "0A000" || fields.code == "26000")
        {
            // An auto-prepared plan went stale (schema changed behind sluice's back) and
            // nothing of this batch's results reached the client: replay it instead.
            tracing::debug!(client = self.id, code = %fields.code, "stale auto-prepared statement; replaying");
            if let Some(r) = self.retry.as_mut() {
                r.armed = true;
            }
            if let Some(e) = self.expect.pop() {
                self.undo(e);
            }
            for e in self.expect.skip_to_sync() {
                self.undo(e);
            }
            return Ok(Action::Drop);
        }
        self.state.unit.error = true;
        let mut action = Action::Forward;
        if fields.is_fatal() {
            self.fatal_seen = true;
            // The server is going away. An autocommit request can be failed without
            // ending the client: relay it as ERROR and answer ReadyForQuery on EOF.
            let autocommit = self.state.status == TxStatus::Idle
                && self.expect.sync_points() <= 1
                && self.mode == crate::config::PoolMode::Transaction
                && self.pinned.is_none();
            if autocommit {
                self.server_fatal = true;
                let code = if fields.code.len() == 5 {
                    fields.code.clone()
                } else {
                    "08006".into()
                };
                let mut b = BytesMut::new();
                ErrorResponse::error(sqlstate_static(&code), fields.message.clone())
                    .with_hint("the server connection was closed; sluice will use another one")
                    .encode(&mut b);
                action = Action::Replace(b.freeze());
            }
        }
        match self.expect.front() {
            Some(Expect::Query(_) | Expect::FunctionCall | Expect::Sync) | None => {}
            Some(_) => {
                // Extended batch: this unit failed and the server skips to Sync.
                if let Some(e) = self.expect.pop() {
                    self.undo(e);
                }
                for e in self.expect.skip_to_sync() {
                    self.undo(e);
                }
            }
        }
        Ok(action)
    }

    /// Undoes the bookkeeping of an entry the server did not carry out.
    fn undo(&mut self, e: Expect) {
        if let Expect::Parse { track, .. } = e {
            if let Some(stmt) = track.statement {
                if let Some(server) = self.server.as_mut() {
                    server.prepared.remove(stmt.id);
                }
                if let Some(name) = track.client_name {
                    if self
                        .state
                        .statements
                        .get(&name)
                        .is_some_and(|s| Arc::ptr_eq(s, &stmt))
                    {
                        self.state.statements.remove(&name);
                    }
                }
            }
        }
    }

    fn on_ready(&mut self, body: &[u8]) -> Result<Action, Error> {
        let after = body
            .first()
            .and_then(|&b| TxStatus::from_byte(b))
            .ok_or_else(|| Error::ServerProtocol("bad ReadyForQuery".into()))?;
        let query_info = match self.expect.pop() {
            Some(Expect::Query(info)) => info,
            Some(e) if e.is_sync_point() => None,
            other => return self.desync("ReadyForQuery", other),
        };
        match self.retry.take() {
            Some(r) if r.armed => {
                // The replay's ReadyForQuery is the one the client will see.
                self.retry = Some(r);
                self.resend = true;
                return Ok(Action::Drop);
            }
            Some(r) => self.retry_buf = r.frames,
            None => {}
        }
        if let Some((stmt, started)) = self.timing.take() {
            stmt.record(started.elapsed());
        }
        if after == TxStatus::Idle && self.saw_ddl {
            // The schema may have changed: auto-prepared statements start afresh.
            self.saw_ddl = false;
            self.shared.auto.invalidate();
        }
        let before = self.state.status;
        let unit = std::mem::take(&mut self.state.unit);
        let mut effects = unit.effects;
        // A simple query's effects are known up front; Execute ones were collected at
        // CommandComplete.
        if let Some(info) = query_info {
            effects.extend(info.effects.iter().cloned());
        }
        let Some(server) = self.server.as_mut() else {
            return Ok(Action::Forward);
        };
        if effects
            .iter()
            .any(|e| matches!(e, Effect::DropsServerStatements))
        {
            server.prepared.clear();
            server.unnamed = None;
            effects.retain(|e| !matches!(e, Effect::DropsServerStatements));
        }
        let in_tx = |s: TxStatus| s != TxStatus::Idle;
        match (in_tx(before), in_tx(after)) {
            (false, false) => {
                if !unit.error && !effects.is_empty() {
                    let mut p = self.state.params.clone();
                    for e in &effects {
                        p = self.shared.params.intern(p.apply(e, &self.state.startup));
                    }
                    self.state.params = p.clone();
                    server.applied = p;
                }
            }
            (false, true) | (true, true) => self.state.tx_effects.extend(effects),
            (true, false) => {
                self.state.tx_effects.extend(effects);
                let tx = std::mem::take(&mut self.state.tx_effects);
                if unit.committed && !tx.is_empty() {
                    let mut p = self.state.params.clone();
                    for e in &tx {
                        p = self.shared.params.intern(p.apply(e, &self.state.startup));
                    }
                    self.state.params = p;
                    // Savepoint rollbacks may have undone some: resync fully next time.
                    server.params_dirty = true;
                }
            }
        }
        self.state.status = after;
        server.status = after;
        Ok(Action::Forward)
    }

    /// Replays the kept batch with a fresh server statement for its auto-prepared shape.
    async fn replay(&mut self) -> Result<(), Error> {
        let Some(retry) = self.retry.take() else {
            return Ok(());
        };
        self.shared.auto.invalidate();
        if let Some(u) = self.state.unnamed.as_mut() {
            if let Some(old) = &u.prepared {
                u.prepared = Some(self.shared.auto.refresh(old, &self.shared.statements));
            }
        }
        self.shared
            .metrics
            .prepared_statements
            .with_label_values(&["re_prepared"])
            .inc();
        let bytes = retry.frames.freeze();
        let mut frames = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let h = peek_header(&bytes[pos..], usize::MAX)
                .ok()
                .flatten()
                .ok_or_else(|| Error::ServerProtocol("corrupt replay buffer".into()))?;
            frames.push(bytes.slice(pos..pos + h.total));
            pos += h.total;
        }
        self.translate_and_send(&frames, false).await
    }

    fn desync(&mut self, what: &str, got: Option<Expect>) -> Result<Action, Error> {
        tracing::warn!(client = self.id, message = what, expected = ?got, "server response out of step; closing server connection");
        Err(Error::ServerProtocol(format!(
            "unexpected {what} from server"
        )))
    }
}

/// Maps a backend SQLSTATE string to the proxy's constants where one exists.
fn sqlstate_static(code: &str) -> SqlState {
    match code {
        "57P01" => SqlState::ADMIN_SHUTDOWN,
        "08P01" => SqlState::PROTOCOL_VIOLATION,
        _ => SqlState::CONNECTION_FAILURE,
    }
}
