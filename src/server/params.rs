//! Session settings as sets that can be compared in O(1): identical settings share one
//! interned `Arc<ParamSet>`, so a checkout only compares pointers, and the SQL that moves a
//! server connection from one set to another is built only when they differ.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::router::statement::quote_literal;
use crate::router::Effect;

/// An immutable, sorted set of `name -> SQL value` settings.
#[derive(Debug, PartialEq, Eq)]
pub struct ParamSet {
    id: u64,
    entries: Vec<(String, String)>,
}

impl ParamSet {
    /// Unique id of this interned set.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The SQL value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.entries[i].1.as_str())
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The entries after applying `effect`; `startup` gives what RESET returns to.
    pub fn apply(&self, effect: &Effect, startup: &ParamSet) -> Vec<(String, String)> {
        let mut map: HashMap<String, String> = self.entries.iter().cloned().collect();
        match effect {
            Effect::Set { name, value } => {
                map.insert(name.clone(), value.clone());
            }
            Effect::Reset { name } => match startup.get(name) {
                Some(v) => {
                    map.insert(name.clone(), v.to_owned());
                }
                None => {
                    map.remove(name);
                }
            },
            Effect::ResetAll => return startup.entries.clone(),
            Effect::DropsServerStatements => {}
        }
        map.into_iter().collect()
    }
}

type Entries = Vec<(String, String)>;

/// Interns parameter sets so equal sets are the same `Arc`.
#[derive(Default)]
pub struct ParamInterner {
    next: AtomicU64,
    map: Mutex<HashMap<Entries, Weak<ParamSet>>>,
}

impl ParamInterner {
    /// A new interner.
    pub fn new() -> Self {
        Self::default()
    }

    /// The interned set for `entries` (any order).
    pub fn intern(&self, mut entries: Vec<(String, String)>) -> Arc<ParamSet> {
        entries.sort();
        entries.dedup_by(|a, b| a.0 == b.0);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&entries).and_then(Weak::upgrade) {
            return s;
        }
        if map.len() > 256 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let set = Arc::new(ParamSet {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            entries: entries.clone(),
        });
        map.insert(entries, Arc::downgrade(&set));
        set
    }

    /// The empty set (a server connection's state right after login).
    pub fn empty(&self) -> Arc<ParamSet> {
        self.intern(Vec::new())
    }
}

/// Startup parameters of a client, turned into settings. `user`, `database`,
/// `replication` and protocol options are not settings; `options` (`-c name=value`) is
/// unpacked.
pub fn from_startup(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            k if k.starts_with("_pq_.") => {}
            "options" => {
                let mut words = v.split_whitespace();
                while let Some(w) = words.next() {
                    let kv = if w == "-c" {
                        words.next()
                    } else {
                        w.strip_prefix("-c").or_else(|| w.strip_prefix("--"))
                    };
                    if let Some((n, val)) = kv.and_then(|kv| kv.split_once('=')) {
                        out.push((n.to_ascii_lowercase().replace('-', "_"), quote_literal(val)));
                    }
                }
            }
            _ => out.push((k.to_ascii_lowercase(), quote_literal(v))),
        }
    }
    out
}

fn set_stmt(out: &mut String, name: &str, value: &str) {
    out.push_str("SET ");
    out.push_str(name);
    out.push_str(" = ");
    out.push_str(value);
    out.push_str("; ");
}

/// SQL that moves a connection whose settings are `from` to `to`; `None` when equal.
/// With `full`, the connection's state is unknown and everything is reset first.
pub fn sync_sql(from: &ParamSet, to: &ParamSet, full: bool) -> Option<String> {
    let mut sql = String::new();
    if full {
        sql.push_str("RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; ");
        for (n, v) in &to.entries {
            set_stmt(&mut sql, n, v);
        }
        return Some(sql);
    }
    if std::ptr::eq(from, to) {
        return None;
    }
    for (n, _) in &from.entries {
        if to.get(n).is_none() {
            sql.push_str("RESET ");
            sql.push_str(n);
            sql.push_str("; ");
        }
    }
    for (n, v) in &to.entries {
        if from.get(n) != Some(v.as_str()) {
            set_stmt(&mut sql, n, v);
        }
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn interning_shares_equal_sets() {
        let i = ParamInterner::new();
        let a = i.intern(e(&[("b", "2"), ("a", "1")]));
        let b = i.intern(e(&[("a", "1"), ("b", "2")]));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.get("b"), Some("2"));
        assert!(!Arc::ptr_eq(&a, &i.empty()));
    }

    #[test]
    fn sync_builds_minimal_sql() {
        let i = ParamInterner::new();
        let from = i.intern(e(&[("application_name", "'a'"), ("timezone", "'UTC'")]));
        let to = i.intern(e(&[("application_name", "'b'"), ("search_path", "s1")]));
        let sql = sync_sql(&from, &to, false).unwrap();
        assert_eq!(
            sql,
            "RESET timezone; SET application_name = 'b'; SET search_path = s1; "
        );
        assert_eq!(sync_sql(&to, &to, false), None);
        assert!(sync_sql(&to, &to, true)
            .unwrap()
            .starts_with("RESET SESSION AUTHORIZATION"));
    }

    #[test]
    fn startup_params_become_settings() {
        let s = from_startup(&[
            ("user".into(), "u".into()),
            ("application_name".into(), "it's".into()),
            (
                "options".into(),
                "-c search_path=x --statement-timeout=5".into(),
            ),
        ]);
        assert_eq!(
            s,
            e(&[
                ("application_name", "'it''s'"),
                ("search_path", "'x'"),
                ("statement_timeout", "'5'")
            ])
        );
    }

    #[test]
    fn effects_apply_with_reset_to_startup() {
        let i = ParamInterner::new();
        let startup = i.intern(e(&[("application_name", "'app'")]));
        let cur = i.intern(startup.apply(
            &Effect::Set {
                name: "application_name".into(),
                value: "'x'".into(),
            },
            &startup,
        ));
        assert_eq!(cur.get("application_name"), Some("'x'"));
        let back = i.intern(cur.apply(
            &Effect::Reset {
                name: "application_name".into(),
            },
            &startup,
        ));
        assert!(Arc::ptr_eq(&back, &startup));
        let all = i.intern(cur.apply(&Effect::ResetAll, &startup));
        assert!(Arc::ptr_eq(&all, &startup));
    }
}
