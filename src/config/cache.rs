//! `[cache]` and `[[cache.rules]]`: which read results sluice keeps, for how long, and
//! where (in-process L1, optionally Valkey as the shared L2).

use std::collections::HashSet;
use std::time::Duration;

use super::reader::Table;

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleMatch {
    /// Statements that read only these tables (and at least one of them).
    Tables(Vec<String>),
    /// Statements whose text, with whitespace collapsed, equals this.
    Query(String),
}

/// One `[[cache.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    /// Name (a metric label).
    pub name: String,
    /// What it matches.
    pub matches: RuleMatch,
    /// How long a result is served.
    pub ttl: Duration,
    /// How long after `ttl` a stale result is still served while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// Larger results are not cached.
    pub max_entry_bytes: usize,
    /// Settings whose values are part of the key (e.g. `app.tenant_id` read by RLS).
    pub key_settings: Vec<String>,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes of results kept in process.
    pub max_bytes: u64,
    /// `redis://host:port[/db]` of the shared Valkey, if any.
    pub valkey: Option<String>,
    /// Results larger than this are compressed in Valkey.
    pub compress_above: usize,
    /// Longest wait for Valkey before a lookup counts as a miss.
    pub valkey_timeout: Duration,
    /// Rules, first match wins.
    pub rules: Vec<CacheRule>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            valkey: None,
            compress_above: 1024,
            valkey_timeout: Duration::from_millis(50),
            rules: Vec::new(),
        }
    }
}

/// Collapses runs of whitespace to one space and trims (how `query` rules compare).
pub fn normalize_space(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn read_cache(t: &mut Table<'_, '_>) -> CacheSettings {
    let mut c = CacheSettings::default();
    if let Some(n) = t.size("max_bytes") {
        c.max_bytes = n;
    }
    if let Some(v) = t.string("valkey") {
        if v.starts_with("redis://") || v.starts_with("valkey://") {
            c.valkey = Some(v.replacen("valkey://", "redis://", 1));
        } else {
            t.error("valkey", format!("{v:?} is not a redis://host:port URL"));
        }
    }
    if let Some(n) = t.size("compress_above") {
        c.compress_above = n as usize;
    }
    if let Some(d) = t.duration("valkey_timeout") {
        c.valkey_timeout = d;
    }
    let mut names = HashSet::new();
    for mut r in t.tables("rules") {
        if let Some(rule) = read_rule(&mut r) {
            if !names.insert(rule.name.clone()) {
                r.error("name", format!("rule {:?} is defined twice", rule.name));
            }
            c.rules.push(rule);
        }
        r.finish();
    }
    t.finish();
    c
}

fn read_rule(t: &mut Table<'_, '_>) -> Option<CacheRule> {
    let name = t.string("name").filter(|n| !n.is_empty());
    if name.is_none() {
        t.error("name", "a non-empty name is required");
    }
    let matches = match (t.strings("tables"), t.string("query")) {
        (Some(tables), None) if !tables.is_empty() => Some(RuleMatch::Tables(
            tables.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
        )),
        (None, Some(q)) if !q.trim().is_empty() => Some(RuleMatch::Query(normalize_space(&q))),
        _ => {
            t.error(
                "tables",
                "exactly one of tables = [..] or query = \"..\" is required",
            );
            None
        }
    };
    let ttl = t.duration("ttl");
    if ttl.is_none_or(|d| d.is_zero()) {
        t.error(
            "ttl",
            "a ttl greater than zero is required, e.g. ttl = \"5m\"",
        );
    }
    let swr = t.duration("stale_while_revalidate").unwrap_or_default();
    let max_entry_bytes = t.size("max_entry_bytes").unwrap_or(1 << 20) as usize;
    let key_settings = t
        .strings("key_settings")
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    Some(CacheRule {
        name: name?,
        matches: matches?,
        ttl: ttl.filter(|d| !d.is_zero())?,
        stale_while_revalidate: swr,
        max_entry_bytes,
        key_settings,
    })
}
