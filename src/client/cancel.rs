//! Cancel keys: each client gets its own BackendKeyData; a CancelRequest carrying it is
//! forwarded to the server connection that client holds at that moment, and nowhere else.
//!
//! Invariant: the slot's target is set while a server connection is attached and cleared
//! (under the same lock) before it is released. The cancel path marks the connection
//! under that lock, and a marked connection is closed instead of reused, so a late cancel
//! can never reach another client's query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::server::connect::send_cancel;
use crate::server::CancelKey;

/// What a cancel would hit.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's key.
    pub key: CancelKey,
    /// The connection's "cancel sent" mark.
    pub mark: Arc<AtomicBool>,
}

/// One client's cancel slot.
#[derive(Debug)]
pub struct Slot {
    secret: i32,
    target: Mutex<Option<Target>>,
}

impl Slot {
    /// Records the attached server connection.
    pub fn attach(&self, t: Target) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    /// Clears it before release.
    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Outcome of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Sent to the client's server connection.
    Forwarded,
    /// The client holds no server connection; nothing to cancel.
    Idle,
    /// No such key (or a wrong secret).
    Unknown,
}

/// All clients' slots.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, Arc<Slot>>>,
}

impl CancelRegistry {
    /// A new registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a fresh (pid, secret) and its slot.
    pub fn register(&self) -> (i32, i32, Arc<Slot>) {
        let mut rng = rand::rng();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid = rng.random_range(1..i32::MAX);
            if map.contains_key(&pid) {
                continue;
            }
            let secret = rng.random::<i32>();
            let slot = Arc::new(Slot {
                secret,
                target: Mutex::new(None),
            });
            map.insert(pid, slot.clone());
            return (pid, secret, slot);
        }
    }

    /// Forgets a client.
    pub fn unregister(&self, pid: i32) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// Handles a CancelRequest.
    pub async fn cancel(&self, pid: i32, secret: i32) -> CancelOutcome {
        let slot = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned();
        let Some(slot) = slot.filter(|s| s.secret == secret) else {
            return CancelOutcome::Unknown;
        };
        let target = {
            let guard = slot.target.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(t) => {
                    t.mark.store(true, Ordering::Release);
                    t.key.clone()
                }
                None => return CancelOutcome::Idle,
            }
        };
        if let Err(e) = send_cancel(&target).await {
            tracing::warn!(error = %e, "forwarding cancel request failed");
        }
        CancelOutcome::Forwarded
    }
}
