//! Pausing a database (`POST /pools/{db}/pause`, e.g. for a primary switchover): new
//! transactions wait until it is resumed (or `checkout_timeout` passes); transactions
//! already running finish normally.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// Paused databases.
#[derive(Default)]
pub struct Pauses {
    any: AtomicUsize,
    map: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Pauses {
    fn sender(&self, db: &str) -> watch::Sender<bool> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(db.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .clone()
    }

    /// Pauses `db`; returns false if it already was.
    pub fn pause(&self, db: &str) -> bool {
        let changed = self
            .sender(db)
            .send_if_modified(|p| !std::mem::replace(p, true));
        if changed {
            self.any.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// Resumes `db`; returns false if it was not paused.
    pub fn resume(&self, db: &str) -> bool {
        let changed = self
            .sender(db)
            .send_if_modified(|p| std::mem::replace(p, false));
        if changed {
            self.any.fetch_sub(1, Ordering::AcqRel);
        }
        changed
    }

    /// Whether `db` is paused.
    pub fn is_paused(&self, db: &str) -> bool {
        self.any.load(Ordering::Acquire) > 0 && *self.sender(db).borrow()
    }

    /// Waits while `db` is paused, up to `limit`; false when the limit passed.
    pub async fn wait(&self, db: &str, limit: Duration) -> bool {
        if self.any.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut rx = self.sender(db).subscribe();
        let resumed = tokio::time::timeout(limit, rx.wait_for(|paused| !*paused))
            .await
            .is_ok_and(|r| r.is_ok());
        resumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_holds_until_resume() {
        let p = std::sync::Arc::new(Pauses::default());
        assert!(p.wait("db", Duration::from_millis(1)).await);
        assert!(p.pause("db"));
        assert!(!p.pause("db"));
        assert!(p.is_paused("db"));
        assert!(!p.wait("db", Duration::from_millis(20)).await);
        let q = p.clone();
        let waiter = tokio::spawn(async move { q.wait("db", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(p.resume("db"));
        assert!(waiter.await.unwrap());
        assert!(!p.is_paused("db"));
        assert!(p.wait("other", Duration::from_millis(1)).await);
    }
}
