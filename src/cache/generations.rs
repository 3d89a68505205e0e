//! Table generations: a counter per (database, table), bumped by every write through
//! sluice, plus one per database for writes sluice cannot attribute to tables. An entry
//! remembers the generations it was read under; it is valid only while they are
//! unchanged. Without Valkey the counters are local; with Valkey they live there and
//! this is a mirror kept current by pub/sub (an unknown counter is fetched first).

use std::collections::HashMap;
use std::sync::Mutex;

/// The name of a database-wide counter.
pub const ALL_TABLES: &str = "*";

/// Counters by `database\0table`.
#[derive(Debug, Default)]
pub struct Generations {
    map: Mutex<HashMap<String, u64>>,
}

fn name(db: &str, table: &str) -> String {
    let mut s = String::with_capacity(db.len() + table.len() + 1);
    s.push_str(db);
    s.push('\0');
    s.push_str(table);
    s
}

impl Generations {
    /// The counter, if known.
    pub fn get(&self, db: &str, table: &str) -> Option<u64> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name(db, table))
            .copied()
    }

    /// The counter, zero when unknown (the local, Valkey-less mode).
    pub fn get_or_zero(&self, db: &str, table: &str) -> u64 {
        self.get(db, table).unwrap_or(0)
    }

    /// Sets the counter to at least `value` (updates can arrive out of order).
    pub fn raise(&self, db: &str, table: &str, value: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let slot = m.entry(name(db, table)).or_insert(0);
        *slot = (*slot).max(value);
    }

    /// Adds one locally and returns the new value.
    pub fn bump_local(&self, db: &str, table: &str) -> u64 {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let slot = m.entry(name(db, table)).or_insert(0);
        *slot += 1;
        *slot
    }

    /// Forgets every counter (after losing the Valkey subscription).
    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        let g = Generations::default();
        assert_eq!(g.get("d", "t"), None);
        assert_eq!(g.bump_local("d", "t"), 1);
        g.raise("d", "t", 5);
        g.raise("d", "t", 3);
        assert_eq!(g.get("d", "t"), Some(5));
        assert_eq!(g.get_or_zero("d", "u"), 0);
        assert_eq!(g.get("e", "t"), None);
        g.clear();
        assert_eq!(g.get("d", "t"), None);
    }
}
