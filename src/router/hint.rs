//! Directives in comments: `/* sluice: route=primary */`, `/* sluice: route=replica */`,
//! `/* sluice: cache ttl=60s */`, `/* sluice: nocache */`. Several may share a comment.
//! Unknown words are ignored (a hint never makes a query fail).

use std::time::Duration;

/// A forced route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHint {
    /// Always the primary.
    Primary,
    /// A replica (within the lag limits), even for statements classified as writes.
    Replica,
}

/// Directives found in a query's comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    /// `route=…`.
    pub route: Option<RouteHint>,
    /// `cache` with `ttl=…`.
    pub cache_ttl: Option<Duration>,
    /// `nocache`.
    pub nocache: bool,
}

/// Reads every `/* sluice: … */` comment of `sql`.
pub fn parse(sql: &str) -> Hint {
    let mut hint = Hint::default();
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let body_start = start + 2;
        let Some(len) = rest[body_start..].find("*/") else {
            break;
        };
        let body = rest[body_start..body_start + len].trim();
        if let Some(d) = body.strip_prefix("sluice:") {
            directives(d, &mut hint);
        }
        rest = &rest[body_start + len + 2..];
    }
    hint
}

fn directives(text: &str, hint: &mut Hint) {
    for word in text.split(|c: char| c.is_whitespace() || c == ',') {
        match word.split_once('=') {
            Some(("route", "primary")) => hint.route = Some(RouteHint::Primary),
            Some(("route", "replica")) => hint.route = Some(RouteHint::Replica),
            Some(("ttl", v)) => hint.cache_ttl = humantime::parse_duration(v).ok(),
            None if word == "nocache" => hint.nocache = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_directives() {
        assert_eq!(
            parse("/* sluice: route=replica */ SELECT 1").route,
            Some(RouteHint::Replica)
        );
        assert_eq!(
            parse("SELECT 1 /*sluice: route=primary*/").route,
            Some(RouteHint::Primary)
        );
        let h = parse("/* app: x */ SELECT /* sluice: cache ttl=60s */ 1");
        assert_eq!(h.cache_ttl, Some(Duration::from_secs(60)));
        assert!(parse("/* sluice: nocache */ SELECT 1").nocache);
        assert_eq!(parse("SELECT '/* sluice: route=replica'").route, None);
        assert_eq!(
            parse("/* sluice: route=elsewhere */ SELECT 1"),
            Hint::default()
        );
    }
}
