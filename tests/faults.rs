//! Bad input, failing servers and pool limits: each ends with a precise SQLSTATE, and the
//! proxy keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{cluster, config, connect, connect_err, Sluice, MD5_USER, SCRAM_USER};

fn app_url(s: &Sluice) -> String {
    s.url("alice", "alice_pw", "appdb")
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_times_out_with_53300_naming_the_pool() {
    let s = Sluice::start(&config(cluster(), 1, "checkout_timeout = \"300ms\""));
    let holder = connect(&app_url(&s)).await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("hold the only connection");
    let waiter = connect(&app_url(&s)).await;
    let started = Instant::now();
    let err = waiter
        .query("SELECT 1", &[])
        .await
        .expect_err("must time out");
    assert_eq!(code(&err), Some("53300"), "{err}");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("appdb/app"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.batch_execute("COMMIT").await.expect("commit");
    let v: i32 = waiter
        .query_one("SELECT 2", &[])
        .await
        .expect("works after release")
        .get(0);
    assert_eq!(v, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_turn_not_starved() {
    let s = Sluice::start(&config(cluster(), 2, "checkout_timeout = \"20s\""));
    let url = app_url(&s);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for _ in 0..10 {
                let v: i32 = c
                    .query_one("SELECT $1::int FROM pg_sleep(0.002)", &[&i])
                    .await
                    .expect("query")
                    .get(0);
                assert_eq!(v, i);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_28p01_and_unknown_db_3d000() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let err = connect_err(&s.url("alice", "nope", "appdb"), "wrong password").await;
    assert_eq!(code(&err), Some("28P01"), "{err}");
    let err = connect_err(&s.url("mallory", "x", "appdb"), "unknown user").await;
    assert_eq!(code(&err), Some("28P01"), "{err}");
    let err = connect_err(&s.url("bob", "nope", "appdb"), "md5 wrong password").await;
    assert_eq!(code(&err), Some("28P01"), "{err}");
    let err = connect_err(&s.url("alice", "alice_pw", "nodb"), "unknown database").await;
    assert_eq!(code(&err), Some("3D000"), "{err}");
    // md5 client auth works, and others are unaffected.
    let c = connect(&s.url("bob", "bob_pw", "appdb")).await;
    let v: i32 = c
        .query_one("SELECT 1", &[])
        .await
        .expect("md5 login works")
        .get(0);
    assert_eq!(v, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_scram_md5_and_passthrough() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    // passdb has no server credentials: the client's own are used (SCRAM to Postgres).
    let c = connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, "passdb")).await;
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("scram passthrough")
        .get(0);
    assert_eq!(who, SCRAM_USER.0);
    // md5 to Postgres for the md5 user.
    let c = connect(&s.url(MD5_USER.0, MD5_USER.1, "passdb")).await;
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("md5 passthrough")
        .get(0);
    assert_eq!(who, MD5_USER.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_end_only_that_connection() {
    let s = Sluice::start(
        &config(cluster(), 1, "")
            .replace("[pool]", "[limits]\nmax_message_size = \"64KiB\"\n\n[pool]"),
    );
    let good = connect(&app_url(&s)).await;
    // Garbage instead of a startup packet.
    let mut raw = std::net::TcpStream::connect(s.addr).expect("connect");
    raw.write_all(&[0, 0, 0, 3, 1, 2, 3, 4]).expect("write");
    let mut buf = Vec::new();
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = raw.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).contains("08P01"), "{buf:?}");
    // A valid session, then an unknown message tag and an oversized frame.
    for bad in [
        &b"z\0\0\0\x04"[..],
        &b"Q\x7f\xff\xff\xff"[..],
        &b"Q\0\0\0\x02"[..],
    ] {
        let mut c = support::raw_login(s.addr);
        c.write_all(bad).expect("write");
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("08P01"), "{bad:?}: {text}");
    }
    let v: i32 = good
        .query_one("SELECT 5", &[])
        .await
        .expect("others unaffected")
        .get(0);
    assert_eq!(v, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_that_never_completes_times_out() {
    let s = Sluice::start(
        &config(cluster(), 1, "").replace("[pool]", "[limits]\nauth_timeout = \"300ms\"\n\n[pool]"),
    );
    let mut raw = std::net::TcpStream::connect(s.addr).expect("connect");
    raw.write_all(&[0, 0, 0, 40]).expect("partial startup");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).contains("08P01"), "{buf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_running_query() {
    let s = Sluice::start(&config(cluster(), 2, ""));
    let c = connect(&app_url(&s)).await;
    let token = c.cancel_token();
    let other = connect(&app_url(&s)).await;
    let sleeper = tokio::spawn(async move { c.query("SELECT pg_sleep(30)", &[]).await });
    let bystander =
        tokio::spawn(async move { other.query_one("SELECT 1 FROM pg_sleep(1)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancel in time")
        .expect("join")
        .expect_err("canceled");
    assert_eq!(code(&err), Some("57014"), "{err}");
    bystander
        .await
        .expect("join")
        .expect("bystander query was not canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_query_gives_an_error_and_the_client_recovers() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let c = connect(&app_url(&s)).await;
    c.batch_execute("SET application_name = 'victim'")
        .await
        .expect("tag");
    let killer = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster().psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'");
    });
    let err = c
        .query("SELECT pg_sleep(20)", &[])
        .await
        .expect_err("killed");
    assert!(matches!(code(&err), Some("57P01") | Some("08006")), "{err}");
    killer.await.expect("killer");
    let v: i32 = c
        .query_one("SELECT 3", &[])
        .await
        .expect("client recovers on a new connection")
        .get(0);
    assert_eq!(v, 3);
    // Inside a transaction the client is told its session is gone.
    let c2 = connect(&app_url(&s)).await;
    c2.batch_execute("SET application_name = 'victim2'; BEGIN; SELECT 1")
        .await
        .expect("begin");
    cluster().psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim2'",
    );
    let err = c2
        .query("SELECT 1", &[])
        .await
        .expect_err("transaction lost");
    assert!(
        matches!(code(&err), Some("57P01") | Some("08006")) || err.is_closed(),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_08001_and_sluice_stays_up() {
    let dead = support::free_port();
    let toml = config(cluster(), 1, "connect_timeout = \"1s\"").replacen(
        &cluster().addr(),
        &format!("127.0.0.1:{dead}"),
        1,
    );
    let s = Sluice::start(&toml);
    // The startup needs a server connection to learn parameters: it fails cleanly.
    let err = connect_err(&app_url(&s), "no upstream").await;
    assert_eq!(code(&err), Some("08001"), "{err}");
    // The other database (same sluice) works.
    let c = connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, "passdb")).await;
    let v: i32 = c
        .query_one("SELECT 9", &[])
        .await
        .expect("other db fine")
        .get(0);
    assert_eq!(v, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_mid_transaction_is_rolled_back_before_reuse() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let c = connect(&app_url(&s)).await;
    c.batch_execute("DROP TABLE IF EXISTS vanish_t; CREATE TABLE vanish_t (id int primary key)")
        .await
        .expect("ddl");
    c.batch_execute("BEGIN; INSERT INTO vanish_t VALUES (1)")
        .await
        .expect("open transaction");
    drop(c);
    let c2 = connect(&app_url(&s)).await;
    // Same (only) server connection: it must be idle, the insert rolled back, no lock held.
    let n: i64 = c2
        .query_one("SELECT count(*) FROM vanish_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    c2.execute("INSERT INTO vanish_t VALUES (1)", &[])
        .await
        .expect("no lock left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_connections_is_enforced() {
    let s = Sluice::start(&config(cluster(), 1, "max_client_connections = 2"));
    let _a = connect(&app_url(&s)).await;
    let _b = connect(&app_url(&s)).await;
    let err = connect_err(&app_url(&s), "third refused").await;
    assert_eq!(code(&err), Some("53300"), "{err}");
}

/// A tiny deterministic PRNG for the garbage test (no extra dependency).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_never_takes_the_proxy_down() {
    let s = Sluice::start(&config(cluster(), 2, "").replace(
        "[pool]",
        "[limits]\nauth_timeout = \"1s\"\nmax_message_size = \"1MiB\"\n\n[pool]",
    ));
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..120 {
            let len = (rng.next() % 300) as usize + 1;
            let mut garbage = rng.bytes(len);
            if round % 3 == 0 {
                // A plausible length prefix so the parser goes further.
                let l = (len as i32).to_be_bytes();
                garbage[..4.min(len)].copy_from_slice(&l[..4.min(len)]);
            }
            let mut c = if round % 2 == 0 {
                std::net::TcpStream::connect(addr).expect("connect")
            } else {
                // Logged in first, then garbage where messages belong; some rounds start
                // with a real tag so the frame parser sees odd lengths and bodies.
                let mut c = support::raw_login(addr);
                let tags = b"QPBDECSHXdcfF";
                garbage[0] = tags[(rng.next() % tags.len() as u64) as usize];
                c.write_all(&garbage).ok();
                c
            };
            if round % 2 == 0 {
                c.write_all(&garbage).ok();
            }
            // Half the rounds hang up after the garbage; the rest leave it to the proxy.
            if round % 4 < 2 {
                c.shutdown(std::net::Shutdown::Write).ok();
            }
            c.set_read_timeout(Some(Duration::from_millis(1500))).ok();
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf);
        }
    })
    .await
    .expect("garbage rounds");
    let c = connect(&app_url(&s)).await;
    let v: i32 = c
        .query_one("SELECT 11", &[])
        .await
        .expect("proxy still serves")
        .get(0);
    assert_eq!(v, 11);
}
