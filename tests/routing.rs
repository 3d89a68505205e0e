//! Read routing against a real primary and a streaming replica (`pg_basebackup -R`):
//! classification, transactions, hints, lag limits under paused replay, read-your-writes
//! in session and global mode, a replica crash mid-load, and a primary outage.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{cluster, connect, Cluster, Sluice, SCRAM_USER};

/// The replica of this binary's cluster.
fn replica() -> &'static Cluster {
    static R: OnceLock<Cluster> = OnceLock::new();
    R.get_or_init(|| {
        let c = cluster();
        c.psql_db(
            "appdb",
            "CREATE TABLE IF NOT EXISTS route_t (id int PRIMARY KEY, v text); \
             INSERT INTO route_t VALUES (1, 'one') ON CONFLICT DO NOTHING; \
             CREATE SEQUENCE IF NOT EXISTS route_seq; \
             CREATE TABLE IF NOT EXISTS ticks (ts timestamptz NOT NULL); \
             CREATE TABLE IF NOT EXISTS ryw (id bigint PRIMARY KEY, owner int);",
        );
        // Commits ship to the replica as they happen (fsync stays off).
        c.psql("ALTER SYSTEM SET synchronous_commit = on");
        c.psql("SELECT pg_reload_conf()");
        c.start_replica()
    })
}

/// Tests here pause, stop and restart servers: one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static M: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    M.lock().await
}

fn routing_config(consistency: &str, max_lag: &str) -> String {
    support::appdb_config(
        &cluster().addr(),
        &format!(
            "[routing]\nconsistency = \"{consistency}\"\nmax_lag = \"{max_lag}\"\n\n[pool]\nsize = 12"
        ),
        &format!("replicas = [\"{}\"]", replica().addr()),
    )
}

fn url(s: &Sluice) -> String {
    s.url(SCRAM_USER.0, SCRAM_USER.1, "appdb")
}

async fn on_replica(c: &tokio_postgres::Client, sql: &str) -> bool {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Waits until sluice serves a plain read from the replica (monitor up, catalog loaded).
async fn wait_replica_reads(c: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), count(*) FROM route_t WHERE now() IS NOT NULL",
                &[],
            )
            .await
            .expect("read");
        if row.get::<_, bool>(0) {
            return;
        }
        assert!(Instant::now() < deadline, "reads never reached the replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_everything_else_to_the_primary() {
    let _g = serial().await;
    replica();
    let s = Sluice::start(&routing_config("eventual", "10s"));
    let c = connect(&url(&s)).await;
    wait_replica_reads(&c).await;

    assert!(on_replica(&c, "SELECT pg_is_in_recovery()").await);
    assert!(on_replica(&c, "SELECT pg_is_in_recovery() FROM route_t WHERE id = 1").await);
    assert!(!on_replica(&c, "SELECT pg_is_in_recovery(), nextval('route_seq')").await);
    assert!(
        !on_replica(
            &c,
            "SELECT pg_is_in_recovery() FROM route_t WHERE id = 1 FOR UPDATE"
        )
        .await
    );
    assert!(
        !on_replica(
            &c,
            "WITH u AS (UPDATE route_t SET v = v WHERE id = 1 RETURNING 1) SELECT pg_is_in_recovery() FROM u"
        )
        .await
    );
    assert!(!on_replica(&c, "INSERT INTO route_t VALUES (2, 'x') ON CONFLICT (id) DO UPDATE SET v = 'y' RETURNING pg_is_in_recovery()").await);
    assert!(!on_replica(&c, "/* sluice: route=primary */ SELECT pg_is_in_recovery()").await);
    assert!(
        !on_replica(
            &c,
            "SELECT pg_is_in_recovery(), set_config('a.b', 'c', true)"
        )
        .await
    );

    // Extended protocol (named statements), text and binary.
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), v FROM route_t WHERE id = $1",
            &[&1i32],
        )
        .await
        .expect("read");
    assert!(row.get::<_, bool>(0));
    let row = c
        .query_one("SELECT pg_is_in_recovery(), nextval('route_seq')", &[])
        .await
        .expect("nextval");
    assert!(!row.get::<_, bool>(0));

    // Transactions.
    c.batch_execute("BEGIN READ ONLY").await.expect("begin ro");
    assert!(on_replica(&c, "SELECT pg_is_in_recovery()").await);
    assert!(on_replica(&c, "SELECT pg_is_in_recovery()").await);
    c.batch_execute("COMMIT").await.expect("commit");
    c.batch_execute("BEGIN").await.expect("begin");
    assert!(!on_replica(&c, "SELECT pg_is_in_recovery()").await);
    c.batch_execute("COMMIT").await.expect("commit");
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("SET TRANSACTION READ ONLY")
        .await
        .expect("set ro");
    assert!(on_replica(&c, "SELECT pg_is_in_recovery()").await);
    c.batch_execute("COMMIT").await.expect("commit");
    // A BEGIN that never ran anything costs no server round trip, and ROLLBACK works.
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let tx = {
        let mut c2 = connect(&url(&s)).await;
        let tx = c2
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .expect("ro tx");
        let r: bool = tx
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("q")
            .get(0);
        tx.commit().await.expect("commit");
        r
    };
    assert!(
        tx,
        "tokio-postgres read-only transaction ran on the primary"
    );

    // SET sluice.route is answered by sluice and never reaches Postgres.
    c.batch_execute("SET sluice.route = 'primary'")
        .await
        .expect("set route");
    assert!(!on_replica(&c, "SELECT pg_is_in_recovery()").await);
    let shown = c.simple_query("SHOW sluice.route").await.expect("show");
    assert!(shown.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("primary"))
    ));
    c.batch_execute("RESET sluice.route")
        .await
        .expect("reset route");
    assert!(on_replica(&c, "SELECT pg_is_in_recovery()").await);
    let err = c
        .batch_execute("SET sluice.route = 'moon'")
        .await
        .expect_err("bad value");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));

    // The HTTP views show the replica as sluice measures it.
    let http = s.http;
    let (status, body) = blocking(move || support::http_get(http, "/replicas"))
        .await
        .expect("replicas");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rep = &v["databases"][0]["replicas"][0];
    assert_eq!(rep["address"], replica().addr(), "{body}");
    assert_eq!(rep["available"], true, "{body}");
    assert!(
        rep["lag_seconds"].as_f64().is_some_and(|l| l < 10.0),
        "{body}"
    );
    let (_, body) = blocking(move || support::http_get(http, "/ready"))
        .await
        .expect("ready");
    assert!(body.contains(&replica().addr()), "{body}");
    let text = s.metrics.render();
    for needle in [
        "sluice_route_decisions_total{database=\"appdb\",reason=\"read\",target=\"replica\"}",
        "sluice_route_decisions_total{database=\"appdb\",reason=\"write\",target=\"primary\"}",
        "sluice_route_decisions_total{database=\"appdb\",reason=\"read_only_transaction\",target=\"replica\"}",
        "sluice_route_decisions_total{database=\"appdb\",reason=\"hint\",target=\"primary\"}",
        "sluice_replica_available{database=\"appdb\",replica=",
        "sluice_replica_lag_seconds{database=\"appdb\"",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    s.stop();
}

/// One read through sluice: served by the replica?, the server's now(), the newest tick
/// it sees (epoch seconds).
type Record = (bool, f64, Option<f64>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_beyond_max_lag() {
    let _g = serial().await;
    let (p, r) = (cluster(), replica());
    let max_lag = 0.5;
    let s = Sluice::start(&routing_config("eventual", "500ms"));
    let c = connect(&url(&s)).await;
    wait_replica_reads(&c).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Writer: a tick every 10ms, straight to the primary.
    let direct = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=appdb",
        p.port, SCRAM_USER.0, SCRAM_USER.1
    );
    let w = connect(&direct).await;
    let st = stop.clone();
    let writer = tokio::spawn(async move {
        while !st.load(Ordering::Relaxed) {
            w.execute("INSERT INTO ticks VALUES (clock_timestamp())", &[])
                .await
                .expect("tick");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let (st, rec) = (stop.clone(), records.clone());
    let reader = tokio::spawn(async move {
        while !st.load(Ordering::Relaxed) {
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(), extract(epoch from now())::float8, \
                     extract(epoch from (SELECT max(ts) FROM ticks))::float8",
                    &[],
                )
                .await
                .expect("read through sluice");
            rec.lock()
                .unwrap()
                .push((row.get(0), row.get(1), row.get(2)));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    blocking(move || r.psql("SELECT pg_wal_replay_pause()"))
        .await
        .expect("pause");
    let paused_at = records.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mid = records.lock().unwrap().len();
    blocking(move || r.psql("SELECT pg_wal_replay_resume()"))
        .await
        .expect("resume");
    // Reads come back to the replica.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let back = records.lock().unwrap()[mid..].iter().any(|x| x.0);
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads did not return to the replica after resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    reader.await.expect("reader");
    let records = records.lock().unwrap().clone();
    assert!(
        records[..paused_at].iter().any(|x| x.0),
        "no replica reads before the pause"
    );
    // The last second of the pause: everything on the primary.
    let late: Vec<&Record> = records[paused_at..mid]
        .iter()
        .filter(|x| x.1 > records[mid - 1].1 - 1.0)
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|x| !x.0),
        "replica still read while paused"
    );
    // The checker: for each replica read, the true lag at that moment (age of the oldest
    // tick committed on the primary but not visible) never exceeds max_lag.
    let check = connect(&direct).await;
    let mut worst: f64 = 0.0;
    for (on_replica, now, seen) in records.iter().filter(|x| x.0) {
        let Some(seen) = seen else { continue };
        let next: Option<f64> = check
            .query_one(
                "SELECT extract(epoch from min(ts))::float8 FROM ticks WHERE ts > to_timestamp($1)",
                &[seen],
            )
            .await
            .expect("checker")
            .get(0);
        if let Some(next) = next.filter(|n| n < now) {
            worst = worst.max(now - next);
            assert!(
                !*on_replica || now - next <= max_lag + 0.15,
                "a replica read was {:.3}s behind (max_lag {max_lag}s)",
                now - next
            );
        }
    }
    eprintln!(
        "{} reads, worst replica lag seen {worst:.3}s",
        records.len()
    );
    s.stop();
}

async fn ryw_round(consistency: &str, cross_connection: bool) -> (usize, usize) {
    let r = replica();
    let s = Sluice::start(&routing_config(consistency, "30s"));
    let probe = connect(&url(&s)).await;
    wait_replica_reads(&probe).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Replay paused and resumed at random moments.
    let st = stop.clone();
    let pauser = std::thread::spawn(move || {
        let mut paused = false;
        let mut n: u64 = 7;
        while !st.load(Ordering::Relaxed) {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_millis(30 + (n >> 33) % 200));
            paused = !paused;
            let _ = r.try_psql(
                "postgres",
                if paused {
                    "SELECT pg_wal_replay_pause()"
                } else {
                    "SELECT pg_wal_replay_resume()"
                },
            );
        }
        let _ = r.try_psql("postgres", "SELECT pg_wal_replay_resume()");
    });
    let misses = Arc::new(AtomicUsize::new(0));
    let replica_reads = Arc::new(AtomicUsize::new(0));
    let base: i64 = rand_base();
    let mut workers = Vec::new();
    for w in 0..6i64 {
        let u = url(&s);
        let (misses, replica_reads) = (misses.clone(), replica_reads.clone());
        workers.push(tokio::spawn(async move {
            let writer = connect(&u).await;
            let other = if cross_connection {
                Some(connect(&u).await)
            } else {
                None
            };
            let reader = other.as_ref().unwrap_or(&writer);
            for i in 0..40i64 {
                let id = base + w * 1000 + i;
                writer
                    .execute("INSERT INTO ryw VALUES ($1, $2)", &[&id, &(w as i32)])
                    .await
                    .expect("insert");
                for _ in 0..3 {
                    let row = reader
                        .query_one(
                            "SELECT count(*)::int, pg_is_in_recovery() FROM ryw WHERE id = $1",
                            &[&id],
                        )
                        .await
                        .expect("read back");
                    if row.get::<_, i32>(0) != 1 {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                    if row.get::<_, bool>(1) {
                        replica_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = blocking(move || pauser.join()).await;
    s.stop();
    (
        misses.load(Ordering::Relaxed),
        replica_reads.load(Ordering::Relaxed),
    )
}

fn rand_base() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    (nanos % 1_000_000_000) * 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_always_see_their_own_writes() {
    let _g = serial().await;
    let (misses, on_replica) = ryw_round("session", false).await;
    eprintln!("session: {misses} misses, {on_replica} of 720 reads on the replica");
    assert_eq!(
        misses, 0,
        "session consistency: a client missed its own write"
    );
    assert!(
        on_replica > 0,
        "session consistency sent every read to the primary"
    );
    let (misses, on_replica) = ryw_round("global", true).await;
    eprintln!("global: {misses} misses, {on_replica} of 720 reads on the replica");
    assert_eq!(
        misses, 0,
        "global consistency: a write was missed on another connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_crash_moves_reads_to_the_primary_without_errors() {
    let _g = serial().await;
    let r = replica();
    let s = Sluice::start(&routing_config("eventual", "10s"));
    let probe = connect(&url(&s)).await;
    wait_replica_reads(&probe).await;
    let stop = Arc::new(AtomicBool::new(false));
    let replica_reads = Arc::new(AtomicUsize::new(0));
    let primary_reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let u = url(&s);
        let (st, rr, pr) = (stop.clone(), replica_reads.clone(), primary_reads.clone());
        readers.push(tokio::spawn(async move {
            let c = connect(&u).await;
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed) {
                let on_rep = if n.is_multiple_of(2) {
                    c.query_one("SELECT pg_is_in_recovery(), count(*) FROM route_t", &[])
                        .await
                        .map(|r| r.get::<_, bool>(0))
                } else {
                    c.simple_query("SELECT pg_is_in_recovery()").await.map(|m| {
                        m.iter().any(|x| {
                            matches!(x, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
                        })
                    })
                };
                n += 1;
                match on_rep {
                    Ok(true) => rr.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => pr.fetch_add(1, Ordering::Relaxed),
                    Err(e) => panic!("a read failed during the replica crash: {e:?}"),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    blocking(move || r.stop_immediate())
        .await
        .expect("stop replica");
    let before = primary_reads.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        primary_reads.load(Ordering::Relaxed) > before,
        "no reads on the primary while the replica was down"
    );
    blocking(move || r.restart())
        .await
        .expect("restart replica");
    let back_from = replica_reads.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica_reads.load(Ordering::Relaxed) == back_from {
        assert!(
            Instant::now() < deadline,
            "the restarted replica was not used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in readers {
        h.await.expect("a reader failed");
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_reads_continue_and_writes_fail_clearly() {
    let _g = serial().await;
    let (p, r) = (cluster(), replica());
    let s = Sluice::start(&routing_config("eventual", "10s"));
    let c = connect(&url(&s)).await;
    wait_replica_reads(&c).await;
    blocking(move || p.stop_immediate())
        .await
        .expect("stop primary");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c
            .execute(
                "INSERT INTO route_t VALUES (3, 'z') ON CONFLICT DO NOTHING",
                &[],
            )
            .await
        {
            Err(e) => {
                let code = e.code().map(|c| c.code().to_owned());
                if code.as_deref() == Some("08006") {
                    break;
                }
                assert!(Instant::now() < deadline, "write error was {e:?}");
            }
            Ok(_) => assert!(
                Instant::now() < deadline,
                "write succeeded with the primary down"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), v FROM route_t WHERE id = 1",
                &[],
            )
            .await
            .expect("a read failed with the primary down");
        assert!(row.get::<_, bool>(0));
    }
    // A new client can still log in and read.
    let c2 = connect(&url(&s)).await;
    assert!(on_replica(&c2, "SELECT pg_is_in_recovery()").await);
    blocking(move || p.restart())
        .await
        .expect("restart primary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .execute(
            "INSERT INTO route_t VALUES (3, 'z') ON CONFLICT DO NOTHING",
            &[],
        )
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::wait_until(
        "the replica to stream again",
        Duration::from_secs(60),
        || {
            r.try_psql("postgres", "SELECT status FROM pg_stat_wal_receiver")
                == Some("streaming".into())
        },
    );
    s.stop();
}
