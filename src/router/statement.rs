//! What the session must know about a statement before sending it: the session settings
//! it changes, whether it creates state that only lives on one server connection, and
//! whether sluice answers it itself (DEALLOCATE, DISCARD ALL).

use super::lexer::{statements, string_value, tokenize, Kind, Token};

/// A change to the session that must follow the client to other server connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET [SESSION] name = value`; `value` is SQL text, re-sent verbatim.
    Set {
        /// Lower-cased parameter name.
        name: String,
        /// SQL text of the value.
        value: String,
    },
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset {
        /// Lower-cased parameter name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// A statement that drops every prepared statement on the server connection
    /// (`DEALLOCATE ALL` or `DISCARD ALL` sent to the server inside a larger query).
    DropsServerStatements,
}

/// A statement sluice answers without a server (only when it is the whole query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `SET`, `RESET` or `SHOW` of `sluice.route` (never sent to Postgres).
    RouteSetting,
}

/// Facts about one query string (one or more statements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementInfo {
    /// Session changes, in statement order.
    pub effects: Vec<Effect>,
    /// Why the query needs a dedicated server connection in transaction mode.
    pub pin: Option<&'static str>,
    /// Set when the whole query is one statement sluice answers itself.
    pub local: Option<Local>,
    /// Changes the schema (ALTER/CREATE/DROP): prepared plans may go stale.
    pub ddl: bool,
}

impl StatementInfo {
    /// True when nothing about the query needs the session's attention.
    pub fn is_plain(&self) -> bool {
        self.effects.is_empty() && self.pin.is_none() && self.local.is_none() && !self.ddl
    }
}

fn lower(src: &str, t: &Token) -> String {
    match t.kind {
        Kind::QuotedIdent => t.text(src).trim_matches('"').replace("\"\"", "\""),
        _ => t.text(src).to_ascii_lowercase(),
    }
}

/// Quotes a value as an SQL string literal.
pub fn quote_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

const SESSION_ADVISORY: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// A cheap first look: does the text possibly contain anything `analyze` cares about?
/// Plain DML/SELECT without `set_config`/advisory locks/TEMP/LISTEN skip the full pass.
fn needs_analysis(sql: &[u8]) -> bool {
    // First keyword.
    let first = sql
        .iter()
        .position(|c| c.is_ascii_alphabetic())
        .map(|i| {
            let end = sql[i..]
                .iter()
                .position(|c| !c.is_ascii_alphabetic())
                .map_or(sql.len(), |e| i + e);
            &sql[i..end]
        })
        .unwrap_or(&[]);
    let plain_first = [
        "select",
        "insert",
        "update",
        "delete",
        "with",
        "values",
        "table",
        "begin",
        "commit",
        "rollback",
        "start",
        "end",
        "savepoint",
        "release",
        "copy",
        "explain",
    ]
    .iter()
    .any(|k| first.eq_ignore_ascii_case(k.as_bytes()));
    if !plain_first {
        return true;
    }
    // One pass: a statement boundary (a trailing `;` is not one), a comment, a function
    // of interest (`pg_advisory_*`, `set_config`: both have `_` at a known place), or
    // `INTO` (SELECT … INTO TEMP).
    let selects = first.eq_ignore_ascii_case(b"select") || first.eq_ignore_ascii_case(b"with");
    let end = sql
        .iter()
        .rposition(|c| !c.is_ascii_whitespace() && *c != b';' && *c != 0)
        .map_or(0, |e| e + 1);
    let body = &sql[..end];
    for (i, &c) in body.iter().enumerate() {
        match c {
            b';' | b'/' | b'-' => return true,
            b'_' => {
                let before = |n: usize, w: &[u8]| i >= n && body[i - n..i].eq_ignore_ascii_case(w);
                let after = |w: &[u8]| {
                    body.get(i + 1..i + 1 + w.len())
                        .is_some_and(|x| x.eq_ignore_ascii_case(w))
                };
                if (before(2, b"pg") && (after(b"advisory") || after(b"try_advisory")))
                    || (before(3, b"set") && after(b"config"))
                {
                    return true;
                }
            }
            b'i' | b'I'
                if selects
                    && body
                        .get(i..i + 4)
                        .is_some_and(|x| x.eq_ignore_ascii_case(b"into")) =>
            {
                return true
            }
            _ => {}
        }
    }
    false
}

/// Analyzes a query string.
pub fn analyze(sql: &[u8]) -> StatementInfo {
    if !needs_analysis(sql) {
        return StatementInfo::default();
    }
    let Ok(src) = std::str::from_utf8(sql) else {
        return StatementInfo::default();
    };
    let tokens = tokenize(src);
    let stmts = statements(&tokens);
    let mut info = StatementInfo::default();
    let single = stmts.len() == 1;
    for st in &stmts {
        statement(src, st, single, &mut info);
        functions(src, st, &mut info);
    }
    info
}

fn statement(src: &str, t: &[Token], single: bool, info: &mut StatementInfo) {
    let word = |i: usize, w: &str| t.get(i).is_some_and(|tok| tok.is(src, w));
    let names_route = |i: usize| {
        word(i, "sluice")
            && t.get(i + 1).is_some_and(|x| x.kind == Kind::Dot)
            && word(i + 2, "route")
    };
    if (word(0, "set") && (names_route(1) || (word(1, "session") && names_route(2))))
        || ((word(0, "reset") || word(0, "show")) && names_route(1))
    {
        if single {
            info.local = Some(Local::RouteSetting);
        }
        return;
    }
    if word(0, "alter") || word(0, "create") || word(0, "drop") {
        info.ddl = true;
    }
    if word(0, "set") {
        set(src, t, info);
    } else if word(0, "reset") {
        if word(1, "all") {
            info.effects.push(Effect::ResetAll);
        } else if let Some(name) = reset_name(src, &t[1..]) {
            info.effects.push(Effect::Reset { name });
        }
    } else if word(0, "discard") && word(1, "all") {
        if single {
            info.local = Some(Local::DiscardAll);
        } else {
            info.effects.push(Effect::ResetAll);
            info.effects.push(Effect::DropsServerStatements);
        }
    } else if word(0, "deallocate") {
        let at = if word(1, "prepare") { 2 } else { 1 };
        match t.get(at) {
            Some(tok) if tok.is(src, "all") && t.len() == at + 1 => {
                if single {
                    info.local = Some(Local::DeallocateAll);
                } else {
                    info.effects.push(Effect::DropsServerStatements);
                }
            }
            Some(tok) if t.len() == at + 1 && single => {
                info.local = Some(Local::Deallocate(lower(src, tok)))
            }
            _ => {}
        }
    } else if word(0, "listen") {
        info.pin.get_or_insert("LISTEN");
    } else if word(0, "prepare") && !word(1, "transaction") {
        info.pin.get_or_insert("SQL PREPARE");
    } else if word(0, "load") {
        info.pin.get_or_insert("LOAD");
    } else if word(0, "declare") {
        let hold = t
            .windows(2)
            .any(|w| w[0].is(src, "with") && w[1].is(src, "hold"));
        if hold {
            info.pin.get_or_insert("a WITH HOLD cursor");
        }
    } else if word(0, "create") || word(0, "select") {
        let temp = t
            .iter()
            .any(|tok| tok.is(src, "temp") || tok.is(src, "temporary"));
        let on_commit_drop = t
            .windows(3)
            .any(|w| w[0].is(src, "on") && w[1].is(src, "commit") && w[2].is(src, "drop"));
        let creates = word(0, "create") || t.iter().any(|tok| tok.is(src, "into"));
        if temp && creates && !on_commit_drop {
            info.pin.get_or_insert("a temporary table");
        }
    }
}

fn reset_name(src: &str, t: &[Token]) -> Option<String> {
    let word = |i: usize, w: &str| t.get(i).is_some_and(|tok| tok.is(src, w));
    if word(0, "time") && word(1, "zone") {
        return Some("timezone".into());
    }
    if word(0, "session") && word(1, "authorization") {
        return Some("session_authorization".into());
    }
    dotted_name(src, t).map(|(n, _)| n)
}

/// Reads `a` or `a.b` at the start; returns the name and tokens consumed.
fn dotted_name(src: &str, t: &[Token]) -> Option<(String, usize)> {
    let first = t
        .first()
        .filter(|x| matches!(x.kind, Kind::Word | Kind::QuotedIdent))?;
    let mut name = lower(src, first);
    let mut used = 1;
    while t.get(used).is_some_and(|x| x.kind == Kind::Dot) {
        let part = t
            .get(used + 1)
            .filter(|x| matches!(x.kind, Kind::Word | Kind::QuotedIdent))?;
        name.push('.');
        name.push_str(&lower(src, part));
        used += 2;
    }
    Some((name, used))
}

fn rest_text(src: &str, t: &[Token]) -> Option<String> {
    let (first, last) = (t.first()?, t.last()?);
    Some(src[first.start..last.end].trim().to_owned())
}

fn set(src: &str, t: &[Token], info: &mut StatementInfo) {
    let word = |i: usize, w: &str| t.get(i).is_some_and(|tok| tok.is(src, w));
    let mut i = 1;
    if word(1, "local") {
        return; // transaction-scoped
    }
    if word(1, "session") {
        if word(2, "characteristics") {
            info.pin.get_or_insert("SET SESSION CHARACTERISTICS");
            return;
        }
        if word(2, "authorization") {
            if let Some(v) = rest_text(src, &t[3..]) {
                push_set(info, "session_authorization", v);
            }
            return;
        }
        i = 2;
    }
    if word(i, "transaction") || word(i, "constraints") {
        return;
    }
    let (name, value_at) = if word(i, "time") && word(i + 1, "zone") {
        ("timezone".to_owned(), i + 2)
    } else if word(i, "role")
        && !t
            .get(i + 1)
            .is_some_and(|x| matches!(x.kind, Kind::Equals) || x.is(src, "to"))
    {
        ("role".to_owned(), i + 1)
    } else if word(i, "schema") {
        ("search_path".to_owned(), i + 1)
    } else if word(i, "names") {
        ("client_encoding".to_owned(), i + 1)
    } else if word(i, "xml") && word(i + 1, "option") {
        ("xmloption".to_owned(), i + 2)
    } else {
        let Some((name, used)) = dotted_name(src, &t[i..]) else {
            return;
        };
        let after = i + used;
        match t.get(after) {
            Some(x) if x.kind == Kind::Equals || x.is(src, "to") => (name, after + 1),
            _ => return,
        }
    };
    let Some(value) = t.get(value_at..).and_then(|v| rest_text(src, v)) else {
        return;
    };
    push_set(info, &name, value);
}

fn push_set(info: &mut StatementInfo, name: &str, value: String) {
    if value.eq_ignore_ascii_case("default") {
        info.effects.push(Effect::Reset {
            name: name.to_owned(),
        });
    } else {
        info.effects.push(Effect::Set {
            name: name.to_owned(),
            value,
        });
    }
}

fn functions(src: &str, t: &[Token], info: &mut StatementInfo) {
    for (i, w) in t.windows(2).enumerate() {
        if w[0].kind != Kind::Word || w[1].kind != Kind::LParen {
            continue;
        }
        let name = w[0].text(src);
        if SESSION_ADVISORY
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f))
        {
            info.pin.get_or_insert("a session-level advisory lock");
        } else if name.eq_ignore_ascii_case("set_config") {
            set_config(src, &t[i + 2..], info);
        }
    }
}

/// `set_config('name', 'value', is_local)`: tracked when all three are literals,
/// transaction-scoped when `is_local` is `true`, pinned otherwise.
fn set_config(src: &str, args: &[Token], info: &mut StatementInfo) {
    let lit = |i: usize| args.get(i).and_then(|t| string_value(src, t));
    let sep = |i: usize| args.get(i).is_some_and(|t| t.kind == Kind::Comma);
    let local = args.get(4).map(|t| t.text(src).to_ascii_lowercase());
    let closes = args.get(5).is_some_and(|t| t.kind == Kind::RParen);
    match (lit(0), sep(1), lit(2), sep(3), local.as_deref(), closes) {
        (_, true, _, true, Some("true"), true) => {}
        (Some(name), true, Some(value), true, Some("false"), true) => {
            info.effects.push(Effect::Set {
                name: name.to_ascii_lowercase(),
                value: quote_literal(&value),
            })
        }
        _ => {
            info.pin
                .get_or_insert("set_config() with non-literal arguments");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<Effect> {
        analyze(sql.as_bytes()).effects
    }

    fn set(name: &str, value: &str) -> Effect {
        Effect::Set {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn set_forms() {
        assert_eq!(
            effects("SET application_name = 'x'"),
            vec![set("application_name", "'x'")]
        );
        assert_eq!(
            effects("set session search_path to \"$user\", public"),
            vec![set("search_path", "\"$user\", public")]
        );
        assert_eq!(
            effects("SET TIME ZONE 'UTC'"),
            vec![set("timezone", "'UTC'")]
        );
        assert_eq!(
            effects("SET app.tenant_id = '42'"),
            vec![set("app.tenant_id", "'42'")]
        );
        assert_eq!(effects("SET ROLE reader"), vec![set("role", "reader")]);
        assert_eq!(effects("SET role TO reader"), vec![set("role", "reader")]);
        assert_eq!(
            effects("SET SESSION AUTHORIZATION bob"),
            vec![set("session_authorization", "bob")]
        );
        assert_eq!(
            effects("SET statement_timeout TO DEFAULT"),
            vec![Effect::Reset {
                name: "statement_timeout".into()
            }]
        );
        assert!(effects("SET LOCAL statement_timeout = 5").is_empty());
        assert!(effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_empty());
        assert_eq!(effects("RESET ALL"), vec![Effect::ResetAll]);
        assert_eq!(
            effects("RESET TIME ZONE"),
            vec![Effect::Reset {
                name: "timezone".into()
            }]
        );
        assert_eq!(
            effects("SET a.b = 1; SELECT 1; RESET a.b"),
            vec![set("a.b", "1"), Effect::Reset { name: "a.b".into() }]
        );
    }

    #[test]
    fn pins_and_locals() {
        let pin = |s: &str| analyze(s.as_bytes()).pin;
        assert_eq!(pin("LISTEN chan"), Some("LISTEN"));
        assert_eq!(
            pin("select pg_advisory_lock(1)"),
            Some("a session-level advisory lock")
        );
        assert_eq!(pin("select pg_advisory_xact_lock(1)"), None);
        assert_eq!(
            pin("CREATE TEMP TABLE t (a int)"),
            Some("a temporary table")
        );
        assert_eq!(pin("CREATE TEMP TABLE t (a int) ON COMMIT DROP"), None);
        assert_eq!(pin("SELECT 'temp'"), None);
        assert_eq!(
            pin("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Some("a WITH HOLD cursor")
        );
        assert_eq!(pin("PREPARE p AS SELECT 1"), Some("SQL PREPARE"));
        assert_eq!(pin("PREPARE TRANSACTION 'x'"), None);
        assert_eq!(pin("SELECT set_config('a.b', $1, true)"), None);
        assert_eq!(
            pin("SELECT set_config('a.b', $1, false)"),
            Some("set_config() with non-literal arguments")
        );
        assert_eq!(
            effects("SELECT set_config('A.b', 'it''s', false)"),
            vec![set("a.b", "'it''s'")]
        );
        assert_eq!(
            analyze(b"DEALLOCATE s1").local,
            Some(Local::Deallocate("s1".into()))
        );
        assert_eq!(
            analyze(b"deallocate prepare all").local,
            Some(Local::DeallocateAll)
        );
        assert_eq!(analyze(b"DISCARD ALL").local, Some(Local::DiscardAll));
        assert_eq!(
            analyze(b"SET sluice.route = 'replica'").local,
            Some(Local::RouteSetting)
        );
        assert_eq!(
            analyze(b"show sluice.route").local,
            Some(Local::RouteSetting)
        );
        assert!(analyze(b"SET sluice.route = 'replica'").effects.is_empty());
        assert_eq!(
            analyze(b"DISCARD ALL; SELECT 1").effects,
            vec![Effect::ResetAll, Effect::DropsServerStatements]
        );
        assert!(analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = 5").is_plain());
        assert!(analyze(b"/* set x = 1 */ SELECT 1").is_plain());
        assert!(analyze(b"ALTER TABLE t ADD COLUMN c int").ddl);
        assert!(!analyze(b"SELECT 'alter'").ddl);
        assert!(!needs_analysis(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 5;\n"
        ));
        assert!(needs_analysis(b"SELECT 1; SET x = 1"));
        assert!(needs_analysis(b"SET x = 1"));
    }
}
