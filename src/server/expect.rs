//! The queue of responses the proxy expects from a server connection, in order.
//!
//! Every message sent to the server that produces a response pushes an entry; messages
//! sluice answers itself push a `Synthetic` entry holding the reply, emitted when the
//! queue reaches it. Injected messages (a re-`Parse` on a connection lacking a statement,
//! an LRU `Close`) push entries whose replies are dropped. An ErrorResponse in an extended
//! batch makes the server skip everything up to `Sync`, and so does the queue.
//!
//! Unit boundaries: Parse→`1`, Bind→`2`, Close→`3`, Describe(statement)→`t` then `T`/`n`,
//! Describe(portal)→`T`/`n`, Execute→`C`/`I`/`s` (after any rows or COPY), Sync, Query
//! and FunctionCall→`Z`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::prepare::ServerStatement;
use crate::router::StatementInfo;

/// What to do when a Parse entry completes or is skipped.
#[derive(Debug, Clone)]
pub struct ParseTrack {
    /// The client statement name registered by this Parse (to undo if it fails).
    pub client_name: Option<Vec<u8>>,
    /// The server statement it prepares (to forget if it fails).
    pub statement: Option<Arc<ServerStatement>>,
}

/// One expected response unit.
#[derive(Debug)]
pub enum Expect {
    /// Parse; `forward` is false for injected ones.
    Parse {
        /// Relay ParseComplete to the client.
        forward: bool,
        /// Bookkeeping.
        track: ParseTrack,
    },
    /// Bind.
    Bind,
    /// Describe of a statement (ParameterDescription then RowDescription/NoData).
    DescribeStatement,
    /// Describe of a portal.
    DescribePortal,
    /// Execute; carries the statement's facts for session effects.
    Execute(Option<Arc<StatementInfo>>),
    /// Close; `forward` is false for injected LRU evictions.
    Close {
        /// Relay CloseComplete.
        forward: bool,
    },
    /// Sync: ends with ReadyForQuery.
    Sync,
    /// A simple Query: everything up to ReadyForQuery; facts for session effects.
    Query(Option<Arc<StatementInfo>>),
    /// FunctionCall: up to ReadyForQuery.
    FunctionCall,
    /// A reply sluice produced itself, emitted in order.
    Synthetic(Bytes),
}

impl Expect {
    /// Ends at ReadyForQuery.
    pub fn is_sync_point(&self) -> bool {
        matches!(self, Expect::Sync | Expect::Query(_) | Expect::FunctionCall)
    }
}

/// The queue itself.
#[derive(Debug, Default)]
pub struct ExpectQueue {
    q: VecDeque<Expect>,
    sync_points: usize,
    /// Describe(statement) has seen its ParameterDescription.
    pub seen_param_desc: bool,
}

impl ExpectQueue {
    /// Pushes an entry.
    pub fn push(&mut self, e: Expect) {
        if e.is_sync_point() {
            self.sync_points += 1;
        }
        self.q.push_back(e);
    }

    /// Inserts an entry at `index` (for messages sent ahead of a batch).
    pub fn insert(&mut self, index: usize, e: Expect) {
        if e.is_sync_point() {
            self.sync_points += 1;
        }
        let at = index.min(self.q.len());
        self.q.insert(at, e);
    }

    /// An extended-protocol COPY FROM entered copy-in mode: the server ignores Sync
    /// messages until the copy ends, so the one already sent after Execute will get no
    /// ReadyForQuery. Forget it.
    pub fn copy_in_started(&mut self) {
        if !matches!(self.q.front(), Some(Expect::Execute(_))) {
            return;
        }
        if let Some(i) = self
            .q
            .iter()
            .skip(1)
            .position(|e| matches!(e, Expect::Sync))
        {
            self.q.remove(i + 1);
            self.sync_points -= 1;
        }
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// ReadyForQuery messages still to come.
    pub fn sync_points(&self) -> usize {
        self.sync_points
    }

    /// True when nothing is expected.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The head entry.
    pub fn front(&self) -> Option<&Expect> {
        self.q.front()
    }

    /// Mutable head entry.
    pub fn front_mut(&mut self) -> Option<&mut Expect> {
        self.q.front_mut()
    }

    /// The last entry.
    pub fn back_mut(&mut self) -> Option<&mut Expect> {
        self.q.back_mut()
    }

    /// Removes the head entry.
    pub fn pop(&mut self) -> Option<Expect> {
        let e = self.q.pop_front()?;
        if e.is_sync_point() {
            self.sync_points -= 1;
        }
        self.seen_param_desc = false;
        Some(e)
    }

    /// Pops leading synthetic replies.
    pub fn pop_synthetic(&mut self) -> Option<Bytes> {
        if matches!(self.q.front(), Some(Expect::Synthetic(_))) {
            if let Some(Expect::Synthetic(b)) = self.q.pop_front() {
                return Some(b);
            }
        }
        None
    }

    /// After an ErrorResponse in an extended batch: removes entries up to (not including)
    /// the next Sync and returns them so their bookkeeping can be undone. Synthetic
    /// replies in that range are dropped, as the server would have skipped them too.
    pub fn skip_to_sync(&mut self) -> Vec<Expect> {
        let mut skipped = Vec::new();
        while let Some(front) = self.q.front() {
            if front.is_sync_point() {
                break;
            }
            if let Some(e) = self.pop() {
                skipped.push(e);
            }
        }
        skipped
    }

    /// Forgets everything (the connection is being discarded).
    pub fn clear(&mut self) {
        self.q.clear();
        self.sync_points = 0;
        self.seen_param_desc = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_to_sync_stops_at_sync_and_counts() {
        let mut q = ExpectQueue::default();
        q.push(Expect::Bind);
        q.push(Expect::Execute(None));
        q.push(Expect::Synthetic(Bytes::from_static(b"x")));
        q.push(Expect::Sync);
        q.push(Expect::Query(None));
        assert_eq!(q.sync_points(), 2);
        q.pop();
        let skipped = q.skip_to_sync();
        assert_eq!(skipped.len(), 2);
        assert!(matches!(q.front(), Some(Expect::Sync)));
        q.pop();
        assert_eq!(q.sync_points(), 1);
        assert!(q.pop_synthetic().is_none());
    }
}
