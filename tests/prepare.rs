//! Auto-prepare: frequent unnamed statements become server-side prepared statements,
//! once per server connection, invisibly to the client.

mod support;

use std::process::Command;

use support::{cluster, config, connect, Sluice};
use tokio_postgres::types::Type;

fn sluice(pool: usize, pool_extra: &str, prepare: &str) -> Sluice {
    let cfg = config(cluster(), pool, pool_extra)
        .replace("[pool]", &format!("[prepare]\n{prepare}\n\n[pool]"));
    Sluice::start(&cfg)
}

fn url(s: &Sluice) -> String {
    s.url("alice", "alice_pw", "appdb")
}

/// Statement texts prepared on the (only) server connection, via a simple query.
async fn server_statements(c: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = c
        .simple_query("SELECT name, statement FROM pg_prepared_statements")
        .await
        .expect("list");
    rows.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or_default().to_owned(),
                r.get(1).unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_are_prepared_after_the_threshold() {
    let s = sluice(1, "", "threshold = 3");
    let c = connect(&url(&s)).await;
    let sql = "SELECT $1::int * 2 AS doubled";
    for i in 0..2i32 {
        let r = c
            .query_typed(sql, &[(&i, Type::INT4)])
            .await
            .expect("unnamed");
        assert_eq!(r[0].get::<_, i32>(0), i * 2);
    }
    assert!(
        !server_statements(&c).await.iter().any(|(_, st)| st == sql),
        "not yet frequent"
    );
    for i in 2..20i32 {
        let r = c
            .query_typed(sql, &[(&i, Type::INT4)])
            .await
            .expect("unnamed");
        assert_eq!(r[0].get::<_, i32>(0), i * 2);
        assert_eq!(r[0].columns()[0].name(), "doubled");
    }
    let stmts = server_statements(&c).await;
    let hit = stmts
        .iter()
        .find(|(_, st)| st == sql)
        .unwrap_or_else(|| panic!("not prepared: {stmts:?}"));
    assert!(hit.0.starts_with("sluice_"), "{hit:?}");
    assert_eq!(
        stmts.iter().filter(|(_, st)| st == sql).count(),
        1,
        "prepared once per connection: {stmts:?}"
    );
    let text = s.metrics.render();
    assert!(
        text.contains("sluice_prepared_statements_total{event=\"auto_prepared\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_never_reach_the_client_as_errors() {
    let s = sluice(1, "", "threshold = 2");
    let c = connect(&url(&s)).await;
    c.batch_execute("DROP TABLE IF EXISTS ap_shape; CREATE TABLE ap_shape (a int); INSERT INTO ap_shape VALUES (1)")
        .await
        .expect("setup");
    let sql = "SELECT * FROM ap_shape WHERE a = $1";
    for _ in 0..5 {
        let r = c
            .query_typed(sql, &[(&1i32, Type::INT4)])
            .await
            .expect("before");
        assert_eq!(r[0].len(), 1);
    }
    // Through sluice: the DDL invalidates auto-prepared statements.
    c.batch_execute("ALTER TABLE ap_shape ADD COLUMN b int DEFAULT 7")
        .await
        .expect("alter via sluice");
    let r = c
        .query_typed(sql, &[(&1i32, Type::INT4)])
        .await
        .expect("after DDL through sluice");
    assert_eq!(r[0].len(), 2);
    assert_eq!(r[0].get::<_, i32>(1), 7);
    for _ in 0..3 {
        c.query_typed(sql, &[(&1i32, Type::INT4)])
            .await
            .expect("warm again");
    }
    // Behind sluice's back: the stale plan is re-prepared and the request replayed.
    cluster().psql_db("appdb", "ALTER TABLE ap_shape ADD COLUMN c int DEFAULT 9");
    let r = c
        .query_typed(sql, &[(&1i32, Type::INT4)])
        .await
        .expect("after DDL behind sluice");
    assert_eq!(r[0].len(), 3);
    assert_eq!(r[0].get::<_, i32>(2), 9);
    assert!(s
        .metrics
        .render()
        .contains("sluice_prepared_statements_total{event=\"re_prepared\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_shapes_than_the_per_connection_limit_evict_cleanly() {
    let s = sluice(1, "max_prepared_statements = 3", "threshold = 1");
    let c = connect(&url(&s)).await;
    for round in 0..3 {
        for shape in 0..20i32 {
            let sql = format!("SELECT $1::int + {shape}");
            let r = c
                .query_typed(&sql, &[(&round, Type::INT4)])
                .await
                .expect("shape");
            assert_eq!(r[0].get::<_, i32>(0), round + shape);
        }
    }
    let stmts = server_statements(&c).await;
    assert!(stmts.len() <= 3, "evicted statements are closed: {stmts:?}");
    assert!(s.metrics.render().contains("event=\"evicted\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_auto_prepare_leaves_unnamed_statements_alone() {
    let s = sluice(1, "", "auto = false\nthreshold = 1");
    let c = connect(&url(&s)).await;
    let sql = "SELECT $1::int - 1";
    for i in 0..5i32 {
        c.query_typed(sql, &[(&i, Type::INT4)])
            .await
            .expect("unnamed");
    }
    assert!(!server_statements(&c).await.iter().any(|(_, st)| st == sql));
}

fn script_output(program: &str, args: &[&str], url: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .env("SLUICE_URL", url)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/install-deps.sh): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn psycopg_and_node_postgres_unnamed_statements_get_prepared() {
    let s = sluice(1, "", "threshold = 3");
    let url = format!(
        "postgresql://alice:alice_pw@127.0.0.1:{}/appdb",
        s.addr.port()
    );
    let py = r#"
import os, psycopg
with psycopg.connect(os.environ["SLUICE_URL"], prepare_threshold=None, autocommit=True) as c:
    for i in range(10):
        assert c.execute("SELECT %s::int + 100 AS v", (i,)).fetchone()[0] == i + 100
    rows = c.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    print("\n".join(r[0] for r in rows))
"#;
    let out = script_output("python3", &["-c", py], &url);
    assert!(
        out.contains("+ 100 AS v"),
        "psycopg statement not prepared on the server:\n{out}"
    );
    let js = r#"
const { Client } = require('pg');
(async () => {
  const c = new Client({ connectionString: process.env.SLUICE_URL });
  await c.connect();
  for (let i = 0; i < 10; i++) {
    const r = await c.query('SELECT $1::int + 200 AS v', [i]);
    if (r.rows[0].v !== i + 200) throw new Error('bad value');
  }
  const r = await c.query('SELECT statement FROM pg_prepared_statements');
  console.log(r.rows.map((x) => x.statement).join('\n'));
  await c.end();
})().catch((e) => { console.error(e); process.exit(1); });
"#;
    let out = script_output("node", &["-e", js], &url);
    assert!(
        out.contains("$1::int + 200 AS v"),
        "node-postgres statement not prepared on the server:\n{out}"
    );
}
