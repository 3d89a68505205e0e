//! The `sluice` binary: `check`, SIGHUP reload without dropping clients, and graceful
//! SIGTERM that lets a running transaction finish.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{cluster, config, connect, free_port, try_connect, wait_until};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let p = dir.join("proxy.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sluice-cli-{name}-{}", std::process::id()))
}

#[test]
fn check_prints_masked_config_or_every_error() {
    let dir = tmpdir("check");
    let good = write_config(&dir, &config(cluster(), 3, ""));
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("size = 3"), "{text}");
    assert!(
        !text.contains("alice_pw") && !text.contains("app_pw"),
        "secrets leaked: {text}"
    );

    let bad = write_config(
        &dir,
        "[pool]\nsize = -1\nbogus = 1\n[[databases]]\nname = \"x\"\n",
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 2: pool.size"), "{err}");
    assert!(err.contains("line 3: pool.bogus: unknown key"), "{err}");
    assert!(err.contains("databases[0].primary"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(cfg: &std::path::Path, port: u16) -> Proc {
    let child = Command::new(bin())
        .arg("--config")
        .arg(cfg)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice");
    wait_until("sluice to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Proc(child)
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

fn url(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=alice password=alice_pw dbname=appdb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_pool_size_without_dropping_clients() {
    let dir = tmpdir("hup");
    let port = free_port();
    let base = config(cluster(), 1, "checkout_timeout = \"300ms\"").replacen(
        "127.0.0.1:0",
        &format!("127.0.0.1:{port}"),
        1,
    );
    let path = write_config(&dir, &base);
    let p = start(&path, port);
    let holder = connect(&url(port)).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    holder.query("SELECT 1", &[]).await.expect("hold");
    let other = connect(&url(port)).await;
    let err = other
        .query("SELECT 1", &[])
        .await
        .expect_err("pool of one is busy");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"));

    // A change that needs a restart is refused; everything keeps working.
    write_config(
        &dir,
        &base.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        ),
    );
    signal(&p, "-HUP");
    write_config(&dir, &base.replace("size = 1", "size = 2"));
    signal(&p, "-HUP");
    let mut ok = false;
    for _ in 0..50 {
        if other.query("SELECT 1", &[]).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "bigger pool after reload");
    holder
        .batch_execute("COMMIT")
        .await
        .expect("holder's transaction survived the reload");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_transactions_finish() {
    let dir = tmpdir("term");
    let port = free_port();
    let cfg = config(cluster(), 2, "").replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    let path = write_config(
        &dir,
        &cfg.replace("[pool]", "[limits]\nshutdown_timeout = \"10s\"\n\n[pool]"),
    );
    let mut p = start(&path, port);
    let busy = connect(&url(port)).await;
    busy.batch_execute("DROP TABLE IF EXISTS term_t; CREATE TABLE term_t (a int)")
        .await
        .expect("ddl");
    busy.batch_execute("BEGIN; INSERT INTO term_t VALUES (1)")
        .await
        .expect("open tx");
    let idle = connect(&url(port)).await;
    signal(&p, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New clients are refused, the idle one is told to go, the busy one may commit.
    assert!(try_connect(&url(port)).await.is_err(), "listener closed");
    assert!(
        idle.query("SELECT 1", &[]).await.is_err(),
        "idle client ended"
    );
    busy.batch_execute("INSERT INTO term_t VALUES (2); COMMIT")
        .await
        .expect("transaction finishes");
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Ok(Some(s)) = p.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })
    .await
    .expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "sluice exits cleanly after the transaction: {status:?}"
    );
    let n = cluster().psql_db("appdb", "SELECT count(*) FROM term_t");
    assert_eq!(n, "2");
    let _ = std::fs::remove_dir_all(dir);
}
