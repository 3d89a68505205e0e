//! What a session reports about its requests: duration by route target (a histogram in
//! the metrics module), slow requests (logged as a shape, never with values, and kept
//! for `GET /queries`), and, for sessions that ask (SQL over HTTP), where each request
//! went and what the cache did, as ParameterStatus messages ahead of its response.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::session::Session;
use crate::error::Error;
use crate::protocol::backend;
use crate::protocol::frontend::{query_text, Bind, Parse};
use crate::router::lexer::literal_shape;
use crate::router::Target;

/// One slow request.
#[derive(Debug, Clone)]
pub struct SlowQuery {
    /// When it finished (ms since the Unix epoch).
    pub at_ms: u64,
    /// How long it took.
    pub duration: Duration,
    /// Database.
    pub database: String,
    /// Where it ran (`primary`, `replica`).
    pub target: &'static str,
    /// Its text with literals replaced by `?` (truncated).
    pub shape: String,
}

/// The most recent slow requests.
#[derive(Debug, Default)]
pub struct SlowLog {
    entries: Mutex<VecDeque<SlowQuery>>,
}

const SLOW_KEPT: usize = 200;
const SHAPE_CHARS: usize = 500;
/// Bytes of a request's first frame kept for the slow-query log.
const FRAME_KEPT: usize = 4096;

impl SlowLog {
    fn push(&self, q: SlowQuery) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() == SLOW_KEPT {
            e.pop_front();
        }
        e.push_back(q);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<SlowQuery> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().rev().cloned().collect()
    }
}

/// The text of a request's first statement as a shape (no values).
fn shape_of(frame: &[u8], session: &Session) -> String {
    let text: Option<Vec<u8>> = match frame.first() {
        Some(b'Q') => query_text(frame).ok().map(<[u8]>::to_vec),
        Some(b'P') => Parse::read(frame).ok().map(|p| p.query.to_vec()),
        Some(b'B') => Bind::read(frame).ok().and_then(|b| {
            if b.statement.is_empty() {
                session
                    .state
                    .unnamed
                    .as_ref()
                    .and_then(|u| Parse::read(&u.parse).ok().map(|p| p.query.to_vec()))
            } else {
                session
                    .state
                    .statements
                    .get(b.statement)
                    .map(|s| s.key.query.to_vec())
            }
        }),
        _ => None,
    };
    let Some(text) = text else {
        return "(unknown)".into();
    };
    let s = String::from_utf8_lossy(&text).into_owned();
    let shaped = literal_shape(&s).map_or(s, |v| String::from_utf8_lossy(&v).into_owned());
    let collapsed = shaped.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(SHAPE_CHARS).collect()
}

impl Session {
    /// A request was sent to the server. Its first frame is copied into a reused buffer
    /// (for the slow-query log): holding the frame itself would keep the client read
    /// buffer shared, and every later read would have to allocate a new one.
    pub(super) fn start_request(&mut self, first_frame: &[u8]) {
        if self.request_at.is_none() {
            self.request_at = Some(Instant::now());
            self.request_frame.clear();
            self.request_frame
                .extend_from_slice(&first_frame[..first_frame.len().min(FRAME_KEPT)]);
        }
    }

    /// The server answered the oldest request in flight (at its ReadyForQuery).
    pub(super) fn finish_request(&mut self) {
        let Some(started) = self.request_at.take() else {
            return;
        };
        let elapsed = started.elapsed();
        let target = match self.unit.as_ref().map(|u| u.target) {
            Some(Target::Replica(_)) => "replica",
            _ => "primary",
        };
        let h = if target == "replica" {
            &self.shared.hot.query_replica
        } else {
            &self.shared.hot.query_primary
        };
        h.observe(elapsed.as_secs_f64());
        let limit = self.shared.config.load().log.slow_query;
        if elapsed >= limit {
            let shape = shape_of(&self.request_frame, self);
            tracing::warn!(
                database = %self.identity.database,
                target,
                duration_ms = elapsed.as_millis() as u64,
                query = %shape,
                "slow query"
            );
            self.shared.slow.push(SlowQuery {
                at_ms: crate::cache::entry::now_ms(),
                duration: elapsed,
                database: self.identity.database.clone(),
                target,
                shape,
            });
        }
    }

    /// For sessions that asked (`sluice.report=on` at startup): tells the client where
    /// the next response comes from, ahead of it.
    pub(super) async fn report_status(&mut self, route: &str, cache: &str) -> Result<(), Error> {
        if !self.report {
            return Ok(());
        }
        let mut out = BytesMut::new();
        backend::parameter_status(&mut out, "sluice.route", route);
        backend::parameter_status(&mut out, "sluice.cache", cache);
        self.write_client(&out).await
    }
}
