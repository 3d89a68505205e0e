//! Which functions are safe on a replica: those Postgres marks immutable or stable in
//! `pg_proc` (every overload of the name), plus `routing.read_only_functions`, minus a
//! fixed list of functions that change state whatever their volatility says.

use std::collections::HashSet;

/// Functions that write, lock, assign transaction ids or notify.
const ALWAYS_WRITE: [&str; 8] = [
    "nextval",
    "setval",
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "lo_import",
    "lo_export",
];

/// The function volatility of one database.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Names with no volatile overload.
    safe: HashSet<Box<str>>,
    /// Names whose every overload is immutable.
    immutable: HashSet<Box<str>>,
    /// Loaded from the server (before that, every function counts as a write).
    pub loaded: bool,
}

impl Catalog {
    /// Builds from `(proname, any overload volatile, every overload immutable)` rows.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, bool, bool)>) -> Self {
        let mut c = Self {
            loaded: true,
            ..Self::default()
        };
        for (name, volatile, immutable) in rows {
            if immutable {
                c.immutable.insert(name.clone().into_boxed_str());
            }
            if !volatile {
                c.safe.insert(name.into_boxed_str());
            }
        }
        c
    }

    /// True when `name` always returns the same result for the same arguments (the
    /// only functions a cached result may depend on).
    pub fn immutable(&self, name: &str) -> bool {
        self.immutable.contains(name)
    }

    /// True when calling `name` cannot change state on the server.
    pub fn read_only(&self, name: &str, allowed: &[String]) -> bool {
        let lower = name.to_ascii_lowercase();
        if ALWAYS_WRITE.contains(&lower.as_str()) || lower.contains("advisory") {
            return false;
        }
        allowed.contains(&lower) || self.safe.contains(name)
    }
}

/// The catalog query: one row per function name, true when any overload is volatile.
pub const CATALOG_SQL: &str = "SELECT proname, bool_or(provolatile = 'v')::text, \
     bool_and(provolatile = 'i')::text FROM pg_catalog.pg_proc GROUP BY proname";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatility_and_lists() {
        let c = Catalog::from_rows([
            ("count".to_owned(), false, true),
            ("now".to_owned(), false, false),
            ("random".to_owned(), true, false),
            ("nextval".to_owned(), true, false),
            ("txid_current".to_owned(), false, false),
            ("pg_try_advisory_xact_lock".to_owned(), true, false),
        ]);
        assert!(c.immutable("count"));
        assert!(!c.immutable("now"));
        let allow = vec!["random".to_owned()];
        assert!(c.read_only("count", &allow));
        assert!(c.read_only("now", &allow));
        assert!(c.read_only("random", &allow));
        assert!(!c.read_only("random", &[]));
        assert!(!c.read_only("nextval", &allow));
        assert!(!c.read_only("txid_current", &allow));
        assert!(!c.read_only("pg_try_advisory_xact_lock", &allow));
        assert!(!c.read_only("my_unknown_fn", &allow));
    }
}
