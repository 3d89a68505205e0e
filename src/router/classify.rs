//! Statement classification with Postgres' own grammar (libpg_query): is a query text a
//! read a replica may serve, a write, or transaction control; which tables it reads and
//! writes; which functions it calls (their volatility is checked at routing time against
//! the database's catalog). Results are cached by full statement text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pg_query::protobuf::{a_const, TransactionStmtKind};
use pg_query::{Node, NodeEnum, NodeRef};

use super::hint::{self, Hint};

/// What a statement does to data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Neither reads nor writes rows (SET, DISCARD, transaction control).
    Neutral,
    /// Reads only (subject to the volatility of the functions it calls).
    Read,
    /// Writes, locks, or cannot be classified.
    Write,
}

/// A `SET sluice.route` statement, answered by sluice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSetting {
    /// `SET sluice.route = 'primary' | 'replica' | 'auto'`.
    Set(String),
    /// `RESET sluice.route` or `SET sluice.route TO DEFAULT`.
    Reset,
    /// `SHOW sluice.route`.
    Show,
}

/// The facts routing and caching need about a query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// Strongest access of any statement.
    pub access: Access,
    /// The first statement starts a transaction; `Some(read_only)`.
    pub begin: Option<bool>,
    /// The first statement is `SET TRANSACTION READ ONLY` (or a `SET TRANSACTION` that
    /// includes it).
    pub set_read_only: bool,
    /// The whole text is one COMMIT / END (`"COMMIT"`) or ROLLBACK / ABORT
    /// (`"ROLLBACK"`), without AND CHAIN: the command tag it completes with.
    pub end_tag: Option<&'static str>,
    /// Statements in the text.
    pub statements: usize,
    /// Functions called (last name component, as the parser gives it).
    pub functions: Box<[Box<str>]>,
    /// Tables read.
    pub tables_read: Box<[Box<str>]>,
    /// Tables written (DML or DDL).
    pub tables_written: Box<[Box<str>]>,
    /// The whole text is a `sluice.route` statement.
    pub route_setting: Option<RouteSetting>,
    /// The text did not parse (it goes to the primary; the server reports the error).
    pub unparsed: bool,
    /// `/* sluice: … */` directives.
    pub hint: Hint,
}

impl Class {
    fn unknown(hint: Hint) -> Self {
        Self {
            access: Access::Write,
            begin: None,
            set_read_only: false,
            end_tag: None,
            statements: 1,
            functions: Box::default(),
            tables_read: Box::default(),
            tables_written: Box::default(),
            route_setting: None,
            unparsed: true,
            hint,
        }
    }
}

/// Classifies one query text (one or more statements).
pub fn classify(sql: &str) -> Class {
    let hint = hint::parse(sql);
    // libpg_query is C behind a decoder that asserts on node shapes; a panic there must
    // not take the session down: such text is "unknown" and goes to the primary.
    let parsed =
        std::panic::catch_unwind(|| pg_query::parse(sql, pg_query::ParserOptions::DEFAULT));
    let result = match parsed {
        Ok(Ok(r)) => r,
        _ => return Class::unknown(hint),
    };
    let stmts: Vec<&NodeEnum> = result
        .protobuf
        .stmts
        .iter()
        .filter_map(|s| s.stmt.as_ref().and_then(|n| n.node.as_ref()))
        .collect();
    let mut access = Access::Neutral;
    for s in &stmts {
        access = access.max(statement_access(s));
    }
    // Writes nested anywhere (CTEs, subqueries) and locking or INTO clauses.
    for (node, _, _, _) in result.protobuf.nodes() {
        let writes = match node {
            NodeRef::InsertStmt(_)
            | NodeRef::UpdateStmt(_)
            | NodeRef::DeleteStmt(_)
            | NodeRef::MergeStmt(_) => true,
            NodeRef::SelectStmt(s) => !s.locking_clause.is_empty() || s.into_clause.is_some(),
            _ => false,
        };
        if writes && !explain_only(&stmts) {
            access = Access::Write;
        }
    }
    let first = stmts.first().copied();
    let begin = match first {
        Some(NodeEnum::TransactionStmt(t))
            if t.kind == TransactionStmtKind::TransStmtBegin as i32
                || t.kind == TransactionStmtKind::TransStmtStart as i32 =>
        {
            Some(has_read_only(&t.options))
        }
        _ => None,
    };
    let set_read_only = matches!(first, Some(NodeEnum::VariableSetStmt(v))
        if v.name.eq_ignore_ascii_case("transaction") && has_read_only(&v.args));
    let end_tag = match first {
        Some(NodeEnum::TransactionStmt(t)) if stmts.len() == 1 && !t.chain => {
            if t.kind == TransactionStmtKind::TransStmtCommit as i32 {
                Some("COMMIT")
            } else if t.kind == TransactionStmtKind::TransStmtRollback as i32 {
                Some("ROLLBACK")
            } else {
                None
            }
        }
        _ => None,
    };
    let route_setting = match (stmts.len(), first) {
        (1, Some(NodeEnum::VariableSetStmt(v))) if v.name == "sluice.route" => {
            Some(match v.args.first().and_then(const_string) {
                Some(value) => RouteSetting::Set(value),
                None => RouteSetting::Reset,
            })
        }
        (1, Some(NodeEnum::VariableShowStmt(v))) if v.name == "sluice.route" => {
            Some(RouteSetting::Show)
        }
        _ => None,
    };
    let mut functions: Vec<Box<str>> = Vec::new();
    let mut read = Vec::new();
    let mut written = Vec::new();
    for (name, ctx) in &result.functions {
        if *ctx == pg_query::Context::Call {
            let last = name.rsplit('.').next().unwrap_or(name);
            functions.push(last.into());
        }
    }
    for (name, ctx) in &result.tables {
        match ctx {
            pg_query::Context::Select => read.push(name.as_str().into()),
            pg_query::Context::DML | pg_query::Context::DDL => written.push(name.as_str().into()),
            _ => {}
        }
    }
    functions.sort();
    functions.dedup();
    read.sort();
    written.sort();
    Class {
        access,
        begin,
        set_read_only,
        end_tag,
        statements: stmts.len().max(1),
        functions: functions.into(),
        tables_read: read.into(),
        tables_written: written.into(),
        route_setting,
        unparsed: false,
        hint,
    }
}

/// Every statement is a plain EXPLAIN (no ANALYZE): nested writes are not executed.
fn explain_only(stmts: &[&NodeEnum]) -> bool {
    stmts
        .iter()
        .all(|s| matches!(s, NodeEnum::ExplainStmt(e) if !explain_analyzes(&e.options)))
}

fn explain_analyzes(options: &[Node]) -> bool {
    options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname == "analyze" => match d.arg.as_deref() {
            None => true,
            Some(n) => const_bool(n).unwrap_or(true),
        },
        _ => false,
    })
}

fn statement_access(s: &NodeEnum) -> Access {
    match s {
        NodeEnum::SelectStmt(_) | NodeEnum::VariableShowStmt(_) => Access::Read,
        NodeEnum::ExplainStmt(e) => {
            if explain_analyzes(&e.options) {
                match e.query.as_deref().and_then(|q| q.node.as_ref()) {
                    Some(q) => statement_access(q).max(Access::Read),
                    None => Access::Write,
                }
            } else {
                Access::Read
            }
        }
        NodeEnum::CopyStmt(c) => {
            if c.is_from || c.is_program {
                Access::Write
            } else {
                match c.query.as_deref().and_then(|q| q.node.as_ref()) {
                    Some(q) => statement_access(q),
                    None => Access::Read,
                }
            }
        }
        NodeEnum::TransactionStmt(_)
        | NodeEnum::VariableSetStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_) => Access::Neutral,
        NodeEnum::DeclareCursorStmt(d) => match d.query.as_deref().and_then(|q| q.node.as_ref()) {
            Some(q) => statement_access(q),
            None => Access::Write,
        },
        _ => Access::Write,
    }
}

fn const_bool(n: &Node) -> Option<bool> {
    match n.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Boolval(b) => Some(b.boolval),
            a_const::Val::Ival(i) => Some(i.ival != 0),
            a_const::Val::Sval(s) => match s.sval.to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => Some(true),
                "false" | "off" | "no" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        },
        NodeEnum::Boolean(b) => Some(b.boolval),
        NodeEnum::Integer(i) => Some(i.ival != 0),
        NodeEnum::String(s) => Some(s.sval.eq_ignore_ascii_case("true") || s.sval == "on"),
        _ => None,
    }
}

fn const_string(n: &Node) -> Option<String> {
    match n.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Sval(s) => Some(s.sval.clone()),
            _ => None,
        },
        NodeEnum::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

fn has_read_only(options: &[Node]) -> bool {
    options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname == "transaction_read_only" => {
            d.arg.as_deref().and_then(const_bool).unwrap_or(false)
        }
        _ => false,
    })
}

/// A bounded, shared cache of classifications keyed by the full query text (compared in
/// full, so two texts never share an entry).
pub struct Classifier {
    map: Mutex<HashMap<Box<[u8]>, Arc<Class>>>,
    capacity: usize,
}

impl Classifier {
    /// A cache holding at most `capacity` texts.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The classification of `sql`, computed once per distinct text up to literal
    /// values (texts that differ only in literals classify alike).
    pub fn get(&self, sql: &[u8]) -> Arc<Class> {
        let shape = std::str::from_utf8(sql)
            .ok()
            .and_then(super::lexer::literal_shape);
        let key: &[u8] = shape.as_deref().unwrap_or(sql);
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = map.get(key) {
                return c.clone();
            }
        }
        let class = Arc::new(match std::str::from_utf8(sql) {
            Ok(s) => classify(s.trim_end_matches('\0')),
            Err(_) => Class::unknown(Hint::default()),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            // Texts with literals inlined can be endless; start over rather than grow.
            map.clear();
        }
        map.insert(key.into(), class.clone());
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(sql: &str) -> Access {
        classify(sql).access
    }

    #[test]
    fn reads_and_writes() {
        assert_eq!(access("SELECT 1"), Access::Read);
        assert_eq!(access("select * from t where a = $1"), Access::Read);
        assert_eq!(access("VALUES (1)"), Access::Read);
        assert_eq!(access("TABLE users"), Access::Read);
        assert_eq!(access("SHOW search_path"), Access::Read);
        assert_eq!(access("EXPLAIN DELETE FROM t"), Access::Read);
        assert_eq!(access("EXPLAIN ANALYZE DELETE FROM t"), Access::Write);
        assert_eq!(access("EXPLAIN (ANALYZE) SELECT 1"), Access::Read);
        assert_eq!(access("INSERT INTO t VALUES (1)"), Access::Write);
        assert_eq!(access("SELECT * FROM t FOR UPDATE"), Access::Write);
        assert_eq!(
            access("SELECT * FROM (SELECT * FROM t FOR SHARE) s"),
            Access::Write
        );
        assert_eq!(
            access("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED"),
            Access::Write
        );
        assert_eq!(access("SELECT * INTO n FROM t"), Access::Write);
        assert_eq!(
            access("WITH d AS (DELETE FROM q RETURNING *) SELECT * FROM d"),
            Access::Write
        );
        assert_eq!(access("COPY t FROM STDIN"), Access::Write);
        assert_eq!(access("COPY t TO STDOUT"), Access::Read);
        assert_eq!(access("CALL p()"), Access::Write);
        assert_eq!(access("DO $$ BEGIN END $$"), Access::Write);
        assert_eq!(access("LISTEN c"), Access::Write);
        assert_eq!(access("NOTIFY c"), Access::Write);
        assert_eq!(access("CREATE TABLE x (a int)"), Access::Write);
        assert_eq!(access("SET x.y = 1"), Access::Neutral);
        assert_eq!(access("SELECT 1; INSERT INTO t VALUES (1)"), Access::Write);
        assert_eq!(access("SELEC oops"), Access::Write);
        assert!(classify("SELEC oops").unparsed);
    }

    #[test]
    fn transactions_and_settings() {
        assert_eq!(classify("BEGIN").begin, Some(false));
        assert_eq!(classify("begin read only").begin, Some(true));
        assert_eq!(
            classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").begin,
            Some(true)
        );
        assert_eq!(classify("BEGIN READ WRITE").begin, Some(false));
        assert!(classify("SET TRANSACTION READ ONLY").set_read_only);
        assert!(!classify("SET TRANSACTION READ WRITE").set_read_only);
        assert_eq!(classify("COMMIT").end_tag, Some("COMMIT"));
        assert_eq!(classify("end").end_tag, Some("COMMIT"));
        assert_eq!(classify("rollback").end_tag, Some("ROLLBACK"));
        assert_eq!(classify("ABORT").end_tag, Some("ROLLBACK"));
        assert_eq!(classify("ROLLBACK TO SAVEPOINT a").end_tag, None);
        assert_eq!(classify("COMMIT AND CHAIN").end_tag, None);
        assert_eq!(
            classify("SET sluice.route = 'replica'").route_setting,
            Some(RouteSetting::Set("replica".into()))
        );
        assert_eq!(
            classify("SET sluice.route TO DEFAULT").route_setting,
            Some(RouteSetting::Reset)
        );
        assert_eq!(
            classify("RESET sluice.route").route_setting,
            Some(RouteSetting::Reset)
        );
        assert_eq!(
            classify("SHOW sluice.route").route_setting,
            Some(RouteSetting::Show)
        );
    }

    #[test]
    fn tables_and_functions() {
        let c = classify(
            "WITH ins AS (INSERT INTO audit (x) SELECT x FROM src RETURNING id) \
             SELECT nextval('s'), public.f(1), count(*) FROM ins",
        );
        assert_eq!(&*c.tables_written, &["audit".into()] as &[Box<str>]);
        assert_eq!(&*c.tables_read, &["src".into()] as &[Box<str>]);
        let f: Vec<&str> = c.functions.iter().map(|s| &**s).collect();
        assert_eq!(f, vec!["count", "f", "nextval"]);
    }

    #[test]
    fn cache_compares_full_text() {
        let c = Classifier::new(2);
        assert_eq!(c.get(b"SELECT 1").access, Access::Read);
        assert_eq!(c.get(b"DELETE FROM t").access, Access::Write);
        assert_eq!(c.get(b"SELECT 1").access, Access::Read);
        assert_eq!(c.get(b"SELECT 2").access, Access::Read);
        // Literals do not split entries; hints in comments do.
        assert_eq!(c.get(b"SELECT * FROM t WHERE id = 7").access, Access::Read);
        assert!(Arc::ptr_eq(
            &c.get(b"SELECT * FROM t WHERE id = 7"),
            &c.get(b"SELECT * FROM t WHERE id = 8")
        ));
        assert_eq!(
            c.get(b"/* sluice: route=primary */ SELECT * FROM t WHERE id = 7")
                .hint
                .route,
            Some(super::super::hint::RouteHint::Primary)
        );
    }
}
