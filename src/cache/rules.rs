//! Which rule (or hint) makes a statement cacheable, and on what terms.

use std::time::Duration;

use crate::config::{normalize_space, CacheRule, CacheSettings, RuleMatch};
use crate::router::Class;

/// The terms a statement is cached under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Rule index + 1, or 0 for a hint.
    pub rule: u32,
    /// Metric label: the rule's name, or `hint`.
    pub label: String,
    /// Fresh for this long.
    pub ttl: Duration,
    /// Then stale for this long.
    pub swr: Duration,
    /// Largest result stored.
    pub max_bytes: usize,
    /// Settings that are part of the key.
    pub key_settings: Vec<String>,
}

fn table_matches(rule_tables: &[String], table: &str) -> bool {
    let short = table.rsplit('.').next().unwrap_or(table);
    rule_tables
        .iter()
        .any(|r| r.eq_ignore_ascii_case(table) || r.eq_ignore_ascii_case(short))
}

fn rule_matches(rule: &CacheRule, class: &Class, text: &str) -> bool {
    match &rule.matches {
        RuleMatch::Tables(ts) => {
            !class.tables_read.is_empty() && class.tables_read.iter().all(|t| table_matches(ts, t))
        }
        RuleMatch::Query(q) => normalize_space(text) == *q,
    }
}

/// The terms for `class` / `text`, or `None` when nothing says to cache it. A
/// `nocache` hint wins; a `cache ttl=…` hint applies without a rule.
pub fn choose(settings: &CacheSettings, class: &Class, text: &str) -> Option<Choice> {
    if class.hint.nocache {
        return None;
    }
    if let Some(ttl) = class.hint.cache_ttl {
        return Some(Choice {
            rule: 0,
            label: "hint".into(),
            ttl,
            swr: Duration::ZERO,
            max_bytes: 1 << 20,
            key_settings: Vec::new(),
        });
    }
    let (i, r) = settings
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| rule_matches(r, class, text))?;
    Some(Choice {
        rule: i as u32 + 1,
        label: r.name.clone(),
        ttl: r.ttl,
        swr: r.stale_while_revalidate,
        max_bytes: r.max_entry_bytes,
        key_settings: r.key_settings.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::classify;

    fn settings() -> CacheSettings {
        CacheSettings {
            rules: vec![
                CacheRule {
                    name: "perms".into(),
                    matches: RuleMatch::Tables(vec![
                        "user_roles".into(),
                        "role_permissions".into(),
                    ]),
                    ttl: Duration::from_secs(300),
                    stale_while_revalidate: Duration::from_secs(30),
                    max_entry_bytes: 1000,
                    key_settings: vec!["app.tenant_id".into()],
                },
                CacheRule {
                    name: "tenant".into(),
                    matches: RuleMatch::Query("SELECT * FROM tenants WHERE id = $1".into()),
                    ttl: Duration::from_secs(900),
                    stale_while_revalidate: Duration::ZERO,
                    max_entry_bytes: 1000,
                    key_settings: vec![],
                },
            ],
            ..CacheSettings::default()
        }
    }

    #[test]
    fn rules_and_hints() {
        let s = settings();
        let q = "SELECT p FROM user_roles ur JOIN public.role_permissions rp ON rp.r = ur.r WHERE ur.u = $1";
        assert_eq!(
            choose(&s, &classify(q), q).map(|c| c.label),
            Some("perms".into())
        );
        let q = "SELECT p FROM user_roles ur JOIN users u ON true";
        assert_eq!(choose(&s, &classify(q), q), None);
        let q = "SELECT *  FROM tenants\n WHERE id = $1";
        assert_eq!(choose(&s, &classify(q), q).map(|c| c.rule), Some(2));
        let q = "/* sluice: nocache */ SELECT p FROM user_roles";
        assert_eq!(choose(&s, &classify(q), q), None);
        let q = "/* sluice: cache ttl=60s */ SELECT 1 FROM anything";
        let c = choose(&s, &classify(q), q).expect("hint");
        assert_eq!((c.rule, c.ttl), (0, Duration::from_secs(60)));
    }
}
