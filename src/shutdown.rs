//! Graceful shutdown: one cancellation token observed by every task, and a tracker that
//! lets the listener wait for client tasks to finish within `shutdown_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared shutdown state.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    /// Mirrors the token for a lock-free check on hot paths.
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// True once shutdown started.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves when shutdown starts.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// A token cancelled when shutdown starts (for untracked background tasks).
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Spawns a tracked task with a name for logs.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tracing::trace!(task = name, "spawn");
        self.tracker.spawn(fut);
    }

    /// Waits for every tracked task (call after [`Shutdown::trigger`]).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await
    }
}
