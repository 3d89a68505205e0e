//! The statements one server connection holds, with LRU eviction.

use std::collections::HashMap;

/// Server statement ids prepared (or being prepared) on one connection.
#[derive(Debug, Default)]
pub struct PreparedSet {
    entries: HashMap<u64, u64>,
    tick: u64,
}

impl PreparedSet {
    /// True when `id` is prepared or in flight; refreshes its recency.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared.
    pub fn insert(&mut self, id: u64) {
        self.tick += 1;
        self.entries.insert(id, self.tick);
    }

    /// Forgets `id` (its Parse failed or it was closed).
    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// Forgets everything (`DISCARD ALL` / `DEALLOCATE ALL` ran on the server).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Picks the least recently used id not in `keep` and forgets it; the caller closes it.
    pub fn evict(&mut self, keep: &[u64]) -> Option<u64> {
        let victim = self
            .entries
            .iter()
            .filter(|(id, _)| !keep.contains(id))
            .min_by_key(|(_, t)| **t)
            .map(|(id, _)| *id)?;
        self.entries.remove(&victim);
        Some(victim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_not_kept() {
        let mut s = PreparedSet::default();
        s.insert(1);
        s.insert(2);
        s.insert(3);
        assert!(s.touch(1));
        assert_eq!(s.evict(&[]), Some(2));
        assert_eq!(s.evict(&[3]), Some(1));
        assert_eq!(s.evict(&[3]), None);
        assert!(!s.touch(2));
        assert_eq!(s.len(), 1);
    }
}
