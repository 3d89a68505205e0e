//! Transaction pooling through sluice with tokio-postgres against a real Postgres.

mod support;

use std::time::Duration;

use std::io::Write;

use support::{cluster, config, connect, msg, raw_login, read_until_ready, show, Sluice};

fn app_url(s: &Sluice) -> String {
    s.url("alice", "alice_pw", "appdb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let s = Sluice::start(&config(cluster(), 2, ""));
    let c = connect(&app_url(&s)).await;
    let rows = c
        .simple_query("SELECT 1 AS a; SELECT 'x' AS b")
        .await
        .expect("simple");
    assert_eq!(rows.len(), 6, "{rows:?}"); // description, row, complete, twice
    let v: i32 = c
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .expect("extended")
        .get(0);
    assert_eq!(v, 42);
    let many = c
        .query("SELECT g FROM generate_series(1, 5000) g", &[])
        .await
        .expect("rows");
    assert_eq!(many.len(), 5000);
    let big: String = c
        .query_one("SELECT repeat('x', 300000)", &[])
        .await
        .expect("big")
        .get(0);
    assert_eq!(big.len(), 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_across_transactions_with_more_clients_than_connections() {
    let s = Sluice::start(&config(cluster(), 2, "max_prepared_statements = 4"));
    let url = app_url(&s);
    let mut tasks = Vec::new();
    for i in 0..12i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            // Same client-side statement names, different text per client.
            let st = c
                .prepare(&format!("SELECT $1::int * {i}"))
                .await
                .expect("prepare");
            let st2 = c
                .prepare("SELECT $1::text || '!'")
                .await
                .expect("prepare 2");
            for n in 0..60i32 {
                let v: i32 = c.query_one(&st, &[&n]).await.expect("exec").get(0);
                assert_eq!(v, n * i);
                let t: String = c
                    .query_one(&st2, &[&format!("{n}")])
                    .await
                    .expect("exec 2")
                    .get(0);
                assert_eq!(t, format!("{n}!"));
                // A fresh statement each time too (Parse/Describe/Close cycles).
                let w: i64 = c
                    .query_one(&format!("SELECT {n}::bigint + {i}"), &[])
                    .await
                    .expect("adhoc")
                    .get(0);
                assert_eq!(w, i64::from(n + i));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    // This sluice never opened more server connections than its pool size.
    let metrics = s.metrics.render();
    let opened: u64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_server_connections_opened_total{pool=\"appdb/app\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        opened <= 2,
        "server connections opened: {opened}\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_rollback_and_errors_recover() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let mut c = connect(&app_url(&s)).await;
    c.batch_execute("DROP TABLE IF EXISTS tx_t; CREATE TABLE tx_t (id int primary key)")
        .await
        .expect("ddl");
    {
        let tx = c.transaction().await.expect("begin");
        tx.execute("INSERT INTO tx_t VALUES (1)", &[])
            .await
            .expect("insert");
        tx.rollback().await.expect("rollback");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM tx_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    {
        let tx = c.transaction().await.expect("begin");
        tx.execute("INSERT INTO tx_t VALUES (2)", &[])
            .await
            .expect("insert");
        let err = tx
            .execute("INSERT INTO tx_t VALUES (2)", &[])
            .await
            .expect_err("duplicate");
        assert_eq!(err.code().map(|c| c.code()), Some("23505"));
        let err = tx.execute("SELECT 1", &[]).await.expect_err("aborted");
        assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    }
    let err = c.query("SELEC 1", &[]).await.expect_err("syntax");
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    let n: i64 = c
        .query_one("SELECT count(*) FROM tx_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    c.batch_execute("BEGIN; INSERT INTO tx_t VALUES (3); COMMIT")
        .await
        .expect("commit");
    let n: i64 = c
        .query_one("SELECT count(*) FROM tx_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    use futures_util::SinkExt;
    let s = Sluice::start(&config(cluster(), 1, ""));
    let c = connect(&app_url(&s)).await;
    c.batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (a int, b text)")
        .await
        .expect("ddl");
    let sink = c.copy_in("COPY copy_t FROM STDIN").await.expect("copy in");
    let mut sink = Box::pin(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.expect("send");
    let n = sink.as_mut().finish().await.expect("finish");
    assert_eq!(n, 1000);
    let stream = c.copy_out("COPY copy_t TO STDOUT").await.expect("copy out");
    use futures_util::StreamExt;
    let chunks: Vec<_> = stream.collect().await;
    let total: usize = chunks.into_iter().map(|c| c.expect("chunk").len()).sum();
    assert!(total > 8000, "{total}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_follows_its_client_and_never_leaks() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let a = connect(&app_url(&s)).await;
    let b = connect(&app_url(&s)).await;
    a.batch_execute("SET application_name = 'client_a'; SET statement_timeout = '7s'")
        .await
        .expect("set a");
    b.batch_execute("SET application_name = 'client_b'")
        .await
        .expect("set b");
    a.batch_execute("SET app.tenant = '42'")
        .await
        .expect("custom guc");
    for _ in 0..5 {
        let an = show(&a, "application_name").await;
        let bn = show(&b, "application_name").await;
        assert_eq!((an.as_str(), bn.as_str()), ("client_a", "client_b"));
        let bt = show(&b, "statement_timeout").await;
        assert_eq!(bt, "0");
        let at = show(&a, "statement_timeout").await;
        assert_eq!(at, "7s");
        let tenant: String = a
            .query_one("SELECT current_setting('app.tenant')", &[])
            .await
            .expect("guc")
            .get(0);
        assert_eq!(tenant, "42");
        let missing = b
            .query_one("SELECT current_setting('app.tenant', true)", &[])
            .await
            .expect("guc");
        let v: Option<String> = missing.get(0);
        assert!(v.is_none() || v.as_deref() == Some(""), "{v:?}");
    }
    // SET LOCAL is transaction scoped; a rolled-back SET reverts.
    a.batch_execute("BEGIN; SET LOCAL statement_timeout = '1s'; COMMIT")
        .await
        .expect("local");
    a.batch_execute("BEGIN; SET application_name = 'rolled_back'; ROLLBACK")
        .await
        .expect("rollback");
    let an = show(&a, "application_name").await;
    assert_eq!(an, "client_a");
    let at = show(&a, "statement_timeout").await;
    assert_eq!(at, "7s");
    a.batch_execute("BEGIN; SET application_name = 'committed'; COMMIT")
        .await
        .expect("commit");
    let bn = show(&b, "application_name").await;
    assert_eq!(bn, "client_b");
    let an = show(&a, "application_name").await;
    assert_eq!(an, "committed");
    a.batch_execute("RESET ALL").await.expect("reset");
    let at = show(&a, "statement_timeout").await;
    assert_eq!(at, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let c = connect(&app_url(&s)).await;
    let st = c.prepare("SELECT 7").await.expect("prepare");
    c.batch_execute("DEALLOCATE ALL")
        .await
        .expect("deallocate all");
    let err = c.query(&st, &[]).await.expect_err("statement is gone");
    assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{err}");
    c.batch_execute("SET application_name = 'x'")
        .await
        .expect("set");
    c.batch_execute("DISCARD ALL").await.expect("discard");
    let an = show(&c, "application_name").await;
    assert_ne!(an, "x");
    let err = c
        .batch_execute("DEALLOCATE nope")
        .await
        .expect_err("unknown");
    assert_eq!(err.code().map(|c| c.code()), Some("26000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_or_errors() {
    let s = Sluice::start(&config(cluster(), 2, ""));
    let c = connect(&app_url(&s)).await;
    c.batch_execute("CREATE TEMP TABLE pinned_t (a int); INSERT INTO pinned_t VALUES (1)")
        .await
        .expect("temp");
    for _ in 0..5 {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pinned_t", &[])
            .await
            .expect("temp visible")
            .get(0);
        assert_eq!(n, 1);
    }
    drop(c);
    let s2 = Sluice::start(&config(cluster(), 2, "session_state = \"error\""));
    let c2 = connect(&app_url(&s2)).await;
    let err = c2.batch_execute("LISTEN chan").await.expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    let v: i32 = c2
        .query_one("SELECT 1", &[])
        .await
        .expect("still usable")
        .get(0);
    assert_eq!(v, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_connection() {
    let s = Sluice::start(&config(cluster(), 2, "mode = \"session\""));
    let c = connect(&app_url(&s)).await;
    let p1: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    c.batch_execute("SET application_name = 'sess'; CREATE TEMP TABLE st (a int)")
        .await
        .expect("state");
    let p2: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_eq!(p1, p2);
    drop(c);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = connect(&app_url(&s)).await;
    let an = show(&c, "application_name").await;
    assert_ne!(
        an, "sess",
        "server_reset_query must have reset the previous session"
    );
    let exists: bool = c
        .query_one("SELECT to_regclass('st') IS NOT NULL", &[])
        .await
        .expect("q")
        .get(0);
    assert!(!exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let c = connect(&app_url(&s)).await;
    for round in 0..20i32 {
        // tokio-postgres pipelines concurrent queries on one connection.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&round];
        let (a, b, d) = tokio::join!(
            c.query_one("SELECT $1::int + 1", &params),
            c.query_one("SELECT $1::int + 2", &params),
            c.query_one("SELECT $1::int + 3", &params),
        );
        let got: Vec<i32> = [a, b, d]
            .into_iter()
            .map(|r| r.expect("pipelined").get(0))
            .collect();
        assert_eq!(got, vec![round + 1, round + 2, round + 3]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_survives_a_change_of_server_connection() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        let mut a = raw_login(addr);
        let mut b = raw_login(addr);
        // A parses the unnamed statement in one transaction...
        let mut req = msg(b'P', b"\0SELECT $1::int * 10\0\0\0");
        req.extend(msg(b'S', b""));
        a.write_all(&req).expect("parse");
        let r = read_until_ready(&mut a);
        assert_eq!(
            r.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![b'1', b'Z']
        );
        // ...B replaces the unnamed statement on the only server connection...
        let mut req = msg(b'P', b"\0SELECT 'other'\0\0\0");
        req.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        req.extend(msg(b'E', b"\0\0\0\0\0"));
        req.extend(msg(b'S', b""));
        b.write_all(&req).expect("b");
        read_until_ready(&mut b);
        // ...and A's Bind still finds its own statement.
        let mut req = msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x017\0\0");
        req.extend(msg(b'E', b"\0\0\0\0\0"));
        req.extend(msg(b'S', b""));
        a.write_all(&req).expect("bind");
        let r = read_until_ready(&mut a);
        let tags: Vec<u8> = r.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![b'2', b'D', b'C', b'Z'], "{r:?}");
        let row = &r[1].1;
        assert_eq!(&row[6..], b"70");
    })
    .await
    .expect("raw protocol task");
}
