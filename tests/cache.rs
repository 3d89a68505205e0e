//! The query cache against real Postgres and a real Valkey: hits that never reach the
//! server (simple and extended protocol, text and binary), invalidation by writes
//! (same client, other clients, another sluice sharing Valkey), transactions that see
//! their own writes, role / search_path / RLS isolation, single flight, TTL and
//! stale-while-revalidate, Valkey crashes, and a randomized staleness checker.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::valkey::Valkey;
use support::{cluster, connect, Sluice, SCRAM_USER};

fn cache_config(rules: &str, valkey: Option<&str>) -> String {
    let valkey = valkey
        .map(|u| format!("valkey = \"{u}\"\n"))
        .unwrap_or_default();
    support::appdb_config(
        &cluster().addr(),
        &format!("[pool]\nsize = 8\n\n[cache]\n{valkey}\n{rules}"),
        "",
    )
}

fn url(s: &Sluice) -> String {
    s.url(SCRAM_USER.0, SCRAM_USER.1, "appdb")
}

/// Executions of statements mentioning `needle`, as Postgres counted them.
fn calls(needle: &str) -> i64 {
    cluster()
        .psql_db(
            "appdb",
            &format!(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%{needle}%' AND query NOT LIKE '%pg_stat_statements%'"
            ),
        )
        .parse()
        .unwrap_or(-1)
}

fn metric(s: &Sluice, name: &str, labels: &str) -> u64 {
    s.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits for the function catalog (the cache checks function volatility).
async fn ready(c: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.simple_query("SELECT 1").await.is_err() {
        assert!(Instant::now() < deadline);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn repeated_lookups_are_served_from_memory() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE perm_a (id int PRIMARY KEY, v text, n int); \
         INSERT INTO perm_a VALUES (1, 'read', 10), (2, 'write', 20);",
    );
    let s = Sluice::start(&cache_config(
        "[[cache.rules]]\nname = \"perms\"\ntables = [\"perm_a\"]\nttl = \"5m\"",
        None,
    ));
    let c = connect(&url(&s)).await;
    ready(&c).await;
    // Extended protocol, binary results (tokio-postgres asks for binary).
    for _ in 0..20 {
        let row = c
            .query_one("SELECT v, n FROM perm_a WHERE id = $1", &[&1i32])
            .await
            .expect("extended read");
        assert_eq!(row.get::<_, &str>(0), "read");
        assert_eq!(row.get::<_, i32>(1), 10);
    }
    assert_eq!(
        calls("FROM perm_a WHERE id = $1"),
        1,
        "extended reads reached Postgres"
    );
    // Other parameters are other entries.
    let row = c
        .query_one("SELECT v, n FROM perm_a WHERE id = $1", &[&2i32])
        .await
        .expect("id 2");
    assert_eq!(row.get::<_, &str>(0), "write");
    assert_eq!(calls("FROM perm_a WHERE id = $1"), 2);
    // Simple protocol, text results.
    for _ in 0..20 {
        let rows = c
            .simple_query("SELECT v, n AS m FROM perm_a WHERE id = 2")
            .await
            .expect("simple read");
        let row = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
            }
            _ => None,
        });
        assert_eq!(row, Some((Some("write".into()), Some("20".into()))));
    }
    assert_eq!(
        calls("n AS m FROM perm_a"),
        1,
        "simple reads reached Postgres"
    );
    assert!(metric(&s, "sluice_cache_requests_total", "result=\"hit\"") >= 38);
    // A hint caches without a rule; nocache bypasses a rule.
    for _ in 0..5 {
        c.simple_query("/* sluice: cache ttl=60s */ SELECT 41 + 1")
            .await
            .expect("hinted");
        c.simple_query("/* sluice: nocache */ SELECT v FROM perm_a WHERE id = 1")
            .await
            .expect("nocache");
    }
    assert_eq!(calls("SELECT $1 + $2"), 1);
    assert_eq!(calls("nocache"), 5);
    s.stop();
}

#[tokio::test]
async fn writes_through_sluice_invalidate_and_transactions_see_their_own() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE perm_b (id int PRIMARY KEY, v text); INSERT INTO perm_b VALUES (1, 'old');",
    );
    let s = Sluice::start(&cache_config(
        "[[cache.rules]]\nname = \"perms\"\ntables = [\"perm_b\"]\nttl = \"5m\"",
        None,
    ));
    let a = connect(&url(&s)).await;
    let b = connect(&url(&s)).await;
    ready(&a).await;
    async fn read(c: &tokio_postgres::Client) -> String {
        c.query_one("SELECT v FROM perm_b WHERE id = $1", &[&1i32])
            .await
            .expect("read")
            .get::<_, String>(0)
    }
    let _ = (read(&a).await, read(&b).await);
    assert_eq!(read(&b).await, "old");
    a.execute("UPDATE perm_b SET v = 'new' WHERE id = 1", &[])
        .await
        .expect("update");
    assert_eq!(
        read(&a).await,
        "new",
        "the writer read a stale cached value"
    );
    assert_eq!(
        read(&b).await,
        "new",
        "another client read a stale cached value"
    );
    // Uncommitted: the writer sees its own change, others the committed value.
    a.batch_execute("BEGIN; UPDATE perm_b SET v = 'pending' WHERE id = 1")
        .await
        .expect("begin");
    let mine: String = a
        .query_one("SELECT v FROM perm_b WHERE id = $1", &[&1i32])
        .await
        .expect("own")
        .get(0);
    assert_eq!(mine, "pending");
    assert_eq!(read(&b).await, "new");
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(read(&b).await, "pending");
    s.stop();
}

#[tokio::test]
async fn roles_schemas_and_tenants_never_share_results() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE perm_c (tenant int, v text); \
         INSERT INTO perm_c VALUES (1, 'tenant-1'), (2, 'tenant-2'); \
         ALTER TABLE perm_c ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY per_tenant ON perm_c USING (tenant = current_setting('app.tenant_id')::int); \
         CREATE ROLE cache_reader_a; CREATE ROLE cache_reader_b; \
         GRANT SELECT ON perm_c TO cache_reader_a, cache_reader_b; \
         CREATE SCHEMA s1; CREATE SCHEMA s2; \
         CREATE TABLE s1.perm_d (v text); CREATE TABLE s2.perm_d (v text); \
         INSERT INTO s1.perm_d VALUES ('schema-1'); INSERT INTO s2.perm_d VALUES ('schema-2'); \
         GRANT cache_reader_a, cache_reader_b TO app;",
    );
    let s = Sluice::start(&cache_config(
        "[[cache.rules]]\nname = \"tenant\"\ntables = [\"perm_c\", \"perm_d\"]\nttl = \"5m\"\nkey_settings = [\"app.tenant_id\"]",
        None,
    ));
    let c1 = connect(&url(&s)).await;
    let c2 = connect(&url(&s)).await;
    ready(&c1).await;
    // RLS keyed on a setting, read as non-superuser roles.
    c1.batch_execute("SET ROLE cache_reader_a; SET app.tenant_id = '1'")
        .await
        .expect("set 1");
    c2.batch_execute("SET ROLE cache_reader_b; SET app.tenant_id = '2'")
        .await
        .expect("set 2");
    for _ in 0..5 {
        let v1: Vec<String> = c1
            .query("SELECT v FROM perm_c", &[])
            .await
            .expect("q1")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let v2: Vec<String> = c2
            .query("SELECT v FROM perm_c", &[])
            .await
            .expect("q2")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(v1, vec!["tenant-1".to_owned()]);
        assert_eq!(v2, vec!["tenant-2".to_owned()]);
    }
    // Same tenant, different role: separate entries, same answer.
    c2.batch_execute("SET app.tenant_id = '1'")
        .await
        .expect("set");
    let v: String = c2
        .query_one("SELECT v FROM perm_c", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(v, "tenant-1");
    // search_path decides which table the same text reads.
    c1.batch_execute("RESET ROLE; SET search_path = s1")
        .await
        .expect("s1");
    c2.batch_execute("RESET ROLE; SET search_path = s2")
        .await
        .expect("s2");
    for _ in 0..5 {
        let a: String = c1
            .query_one("SELECT v FROM perm_d", &[])
            .await
            .expect("d1")
            .get(0);
        let b: String = c2
            .query_one("SELECT v FROM perm_d", &[])
            .await
            .expect("d2")
            .get(0);
        assert_eq!((a.as_str(), b.as_str()), ("schema-1", "schema-2"));
    }
    s.stop();
}

#[tokio::test]
async fn concurrent_misses_become_one_query_and_ttl_and_stale_while_revalidate_apply() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE perm_f AS SELECT i FROM generate_series(1, 300000) AS g(i); ANALYZE perm_f;",
    );
    let s = Sluice::start(&cache_config(
        "[[cache.rules]]\nname = \"slow\"\nquery = \"SELECT count(*) FROM perm_f WHERE i % 7 = 3\"\nttl = \"1s\"\nstale_while_revalidate = \"3s\"",
        None,
    ));
    let sql = "SELECT count(*) FROM perm_f WHERE i % 7 = 3";
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Arc::new(connect(&url(&s)).await));
    }
    ready(&clients[0]).await;
    let before = calls("FROM perm_f WHERE");
    let start = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for c in clients.drain(..) {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            c.simple_query(sql).await.expect("cold read");
            c
        }));
    }
    for t in tasks {
        clients.push(t.await.expect("client"));
    }
    assert_eq!(
        calls("FROM perm_f WHERE") - before,
        1,
        "100 concurrent misses ran more than one query"
    );
    // Past ttl, within stale-while-revalidate: stale answers while one request refreshes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale_before = metric(&s, "sluice_cache_requests_total", "result=\"stale\"");
    let mut tasks = Vec::new();
    for c in &clients[..10] {
        let c = Arc::clone(c);
        tasks.push(tokio::spawn(async move {
            c.simple_query(sql).await.expect("stale read")
        }));
    }
    for t in tasks {
        t.await.expect("stale");
    }
    assert_eq!(
        calls("FROM perm_f WHERE") - before,
        2,
        "more than one refresh ran"
    );
    assert!(metric(&s, "sluice_cache_requests_total", "result=\"stale\"") > stale_before);
    // Past ttl + swr: a plain miss.
    tokio::time::sleep(Duration::from_millis(4600)).await;
    clients[0].simple_query(sql).await.expect("expired read");
    assert_eq!(calls("FROM perm_f WHERE") - before, 3);
    s.stop();
}

#[tokio::test]
async fn two_sluices_share_valkey_and_survive_its_crash() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE perm_e (id int PRIMARY KEY, v int); INSERT INTO perm_e VALUES (1, 1);",
    );
    let mut valkey = Valkey::start();
    let rules = "[[cache.rules]]\nname = \"e\"\ntables = [\"perm_e\"]\nttl = \"5m\"";
    let s1 = Sluice::start(&cache_config(rules, Some(&valkey.url())));
    let s2 = Sluice::start(&cache_config(rules, Some(&valkey.url())));
    let a = connect(&url(&s1)).await;
    let b = connect(&url(&s2)).await;
    ready(&a).await;
    let wait_up = |s: &Sluice| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(s, "sluice_valkey_up", "") != 1 {
            assert!(Instant::now() < deadline, "valkey never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_up(&s1);
    wait_up(&s2);
    let http = s1.http;
    let (_, body) = tokio::task::spawn_blocking(move || support::http_get(http, "/cache"))
        .await
        .expect("cache view");
    assert!(body.contains("\"valkey\":{\"up\":true}"), "{body}");
    async fn read(c: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
        c.query_one("SELECT v FROM perm_e WHERE id = $1", &[&1i32])
            .await
            .map(|r| r.get::<_, i32>(0))
    }
    let (a, b) = (Arc::new(a), Arc::new(b));
    assert_eq!(read(&a).await.expect("fill"), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = calls("FROM perm_e WHERE id");
    assert_eq!(read(&b).await.expect("l2 hit"), 1);
    assert_eq!(
        calls("FROM perm_e WHERE id"),
        before,
        "the second sluice did not use the shared entry"
    );
    a.execute("UPDATE perm_e SET v = 2 WHERE id = 1", &[])
        .await
        .expect("update");
    assert_eq!(
        read(&b).await.expect("after write"),
        2,
        "the other sluice served a stale result"
    );
    // Valkey crashes mid-load: no client errors; the cache comes back after restart.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in [a.clone(), b.clone()] {
        let (stop, errors) = (stop.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if c.query_one("SELECT v FROM perm_e WHERE id = $1", &[&1i32])
                    .await
                    .is_err()
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    valkey.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    valkey.restart();
    wait_up(&s1);
    wait_up(&s2);
    let hits = metric(&s2, "sluice_cache_requests_total", "result=\"hit\"");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load");
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "clients saw errors while Valkey was down"
    );
    assert!(
        metric(&s2, "sluice_cache_requests_total", "result=\"hit\"") > hits,
        "hits did not recover"
    );
    assert!(
        metric(&s1, "sluice_valkey_errors_total", "") > 0
            || metric(&s1, "sluice_cache_requests_total", "result=\"bypass\"") > 0
    );
    s1.stop();
    s2.stop();
}

/// One observation: (row, value, when the read started / the write's commit was seen).
type Seen = (i32, i64, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_finds_no_stale_reads_across_two_sluices() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE perm_kv (k int PRIMARY KEY, v bigint NOT NULL); \
         INSERT INTO perm_kv SELECT k, 0 FROM generate_series(1, 4) k;",
    );
    let secs: u64 = std::env::var("SLUICE_CHECKER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let valkey = Valkey::start();
    let rules = "[[cache.rules]]\nname = \"kv\"\ntables = [\"perm_kv\"]\nttl = \"5m\"";
    let s1 = Sluice::start(&cache_config(rules, Some(&valkey.url())));
    let s2 = Sluice::start(&cache_config(rules, Some(&valkey.url())));
    let reads: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let writes: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..6u64 {
        let u = if w % 2 == 0 { url(&s1) } else { url(&s2) };
        let (reads, writes) = (reads.clone(), writes.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&u).await;
            ready(&c).await;
            let mut n = w.wrapping_mul(0x9E3779B97F4A7C15) | 1;
            while Instant::now() < deadline {
                n ^= n << 13;
                n ^= n >> 7;
                n ^= n << 17;
                let k = (n % 4) as i32 + 1;
                if n % 5 == 0 {
                    let v: i64 = c
                        .query_one(
                            "UPDATE perm_kv SET v = v + 1 WHERE k = $1 RETURNING v",
                            &[&k],
                        )
                        .await
                        .expect("write")
                        .get(0);
                    writes.lock().unwrap().push((k, v, Instant::now()));
                } else {
                    let started = Instant::now();
                    let v: i64 = c
                        .query_one("SELECT v FROM perm_kv WHERE k = $1", &[&k])
                        .await
                        .expect("read")
                        .get(0);
                    reads.lock().unwrap().push((k, v, started));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let reads = reads.lock().unwrap().clone();
    let writes = writes.lock().unwrap().clone();
    let mut stale = 0;
    for (k, v, started) in &reads {
        let newest = writes
            .iter()
            .filter(|(wk, _, seen)| wk == k && seen < started)
            .map(|(_, wv, _)| *wv)
            .max()
            .unwrap_or(0);
        if *v < newest {
            stale += 1;
        }
    }
    let hits = metric(&s1, "sluice_cache_requests_total", "result=\"hit\"")
        + metric(&s2, "sluice_cache_requests_total", "result=\"hit\"");
    eprintln!(
        "{} reads ({hits} cache hits), {} writes, {stale} stale",
        reads.len(),
        writes.len()
    );
    assert_eq!(stale, 0, "stale reads found");
    assert!(hits > 0, "the checker never exercised the cache");
    s1.stop();
    s2.stop();
}

#[tokio::test]
async fn writes_that_bypass_sluice_invalidate_through_the_notify_trigger() {
    let c = cluster();
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/sql/sluice_invalidate.sql"
    ))
    .expect("deploy/sql/sluice_invalidate.sql");
    c.psql_db("appdb", &sql);
    c.psql_db(
        "appdb",
        "CREATE TABLE perm_g (id int PRIMARY KEY, v text); INSERT INTO perm_g VALUES (1, 'before'); \
         SELECT sluice_watch('perm_g');",
    );
    let s = Sluice::start(&cache_config(
        "[[cache.rules]]\nname = \"g\"\ntables = [\"perm_g\"]\nttl = \"5m\"",
        None,
    ));
    let client = connect(&url(&s)).await;
    ready(&client).await;
    let read = || async {
        client
            .query_one("SELECT v FROM perm_g WHERE id = $1", &[&1i32])
            .await
            .expect("read")
            .get::<_, String>(0)
    };
    assert_eq!(read().await, "before");
    assert_eq!(read().await, "before");
    // A write straight to Postgres, as a migration or cron job would do.
    c.psql_db("appdb", "UPDATE perm_g SET v = 'after' WHERE id = 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while read().await != "after" {
        assert!(
            Instant::now() < deadline,
            "the NOTIFY invalidation never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&s, "sluice_cache_invalidations_total", "source=\"notify\"") > 0);
    s.stop();
}
