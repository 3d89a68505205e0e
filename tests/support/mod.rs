//! Test support: a real PostgreSQL cluster per test binary (initdb in a temp dir, free
//! loopback port, SCRAM/md5/trust users), polled for readiness with a deadline, and
//! sluice started in-process on its own runtime thread.
#![allow(dead_code)]

pub mod valkey;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::shutdown::Shutdown;

/// Where the PostgreSQL server binaries are.
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    for v in ["15", "16", "17", "18"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return p;
        }
    }
    panic!("PostgreSQL server binaries not found: run scripts/install-deps.sh (or set PG_BIN)");
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command as the unprivileged `postgres` OS user when we are root.
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Polls `f` until it returns true or the deadline passes.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A fresh temp dir for a server, owned by the `postgres` OS user when we are root.
fn server_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sluice-pg-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success(), "chown failed");
    }
    dir
}

/// A running PostgreSQL cluster, stopped and removed when the test process exits.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    _watchdog: Child,
}

pub const SCRAM_USER: (&str, &str) = ("app", "app_pw");
pub const MD5_USER: (&str, &str) = ("md5_user", "md5_pw");
pub const TRUST_USER: &str = "trust_user";

impl Cluster {
    /// Starts a fresh cluster.
    pub fn start() -> Cluster {
        let bin = pg_bin();
        let dir = server_dir();
        let data = dir.join("data");
        let out = as_pg_user(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hba = format!(
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\nhost all {TRUST_USER} 127.0.0.1/32 trust\n\
             host all {} 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n",
            MD5_USER.0
        );
        write_as_pg(&data.join("pg_hba.conf"), &hba);
        let c = Self::launch_retrying(&bin, &dir, &data);
        c.psql(&format!(
            "CREATE ROLE {a} LOGIN PASSWORD '{ap}' SUPERUSER; \
             SET password_encryption = 'md5'; CREATE ROLE {m} LOGIN PASSWORD '{mp}'; \
             CREATE ROLE {t} LOGIN;",
            a = SCRAM_USER.0,
            ap = SCRAM_USER.1,
            m = MD5_USER.0,
            mp = MD5_USER.1,
            t = TRUST_USER
        ));
        c.psql(&format!("CREATE DATABASE appdb OWNER {}", SCRAM_USER.0));
        c.psql(&format!(
            "GRANT ALL ON DATABASE appdb TO {}, {}",
            MD5_USER.0, TRUST_USER
        ));
        c.psql_db(
            "appdb",
            "CREATE EXTENSION pg_stat_statements; GRANT ALL ON SCHEMA public TO PUBLIC;",
        );
        c
    }

    /// Starts postgres on a free port. A port from free_port() can be taken by someone
    /// else before postgres binds it: retry with another port when postgres exits,
    /// rather than wait in vain.
    fn launch_retrying(bin: &Path, dir: &Path, data: &Path) -> Cluster {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            match Self::launch(bin, dir, data, port) {
                Ok(c) => return c,
                Err(log) if attempt < 4 => {
                    eprintln!("postgres did not start on port {port}, retrying: {log}")
                }
                Err(log) => {
                    panic!("postgres did not start after {attempt} attempts; last log:\n{log}")
                }
            }
        }
    }

    /// Starts postgres on `port` under a watchdog; on failure returns the log tail.
    fn launch(bin: &Path, dir: &Path, data: &Path, port: u16) -> Result<Cluster, String> {
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\nshared_buffers = 64MB\n\
             log_min_messages = warning\nshared_preload_libraries = 'pg_stat_statements'\nwal_keep_size = 128MB\n",
            dir.display()
        );
        // Later settings win, so each attempt's port overrides the previous one.
        append_as_pg(&data.join("postgresql.conf"), &conf);
        let log = dir.join(format!("postgres-{port}.log"));
        // The watchdog shell stops and removes the cluster when our stdin closes, i.e.
        // when this test process exits for any reason. It stops the cluster through
        // pg_ctl: a signal to the background job would reach `runuser`, not postgres.
        let run = if is_root() {
            "runuser -u postgres --"
        } else {
            ""
        };
        let script = format!(
            "{run} {pg} -D {data} >{log} 2>&1 & read _; {run} {ctl} -D {data} stop -m immediate -w >/dev/null 2>&1; \
             wait; rm -rf {dir}",
            pg = bin.join("postgres").display(),
            ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            log = log.display(),
            dir = dir.display()
        );
        let mut watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let isready = bin.join("pg_isready");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(5);
        loop {
            let ready = Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-q",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(Cluster {
                    port,
                    dir: dir.to_path_buf(),
                    _watchdog: watchdog,
                });
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let died = text.contains("could not create any TCP/IP sockets")
                || text.contains("Address already in use");
            if died || Instant::now() > deadline {
                // Kill the watchdog without letting it remove the data directory (a retry
                // reuses it), and stop whatever postgres did start.
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                let _ = as_pg_user(&bin.join("pg_ctl"))
                    .args(["-D"])
                    .arg(data)
                    .args(["stop", "-m", "immediate", "-w"])
                    .output();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                return Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Runs SQL as the superuser in `postgres`.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// Runs SQL as the superuser in `db`; panics on failure.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        match self.run_psql(db, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql failed: {sql}: {e}"),
        }
    }

    /// psql as the superuser: stdout, or stderr on failure.
    fn run_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`), running on its own port.
    pub fn start_replica(&self) -> Cluster {
        let bin = pg_bin();
        let dir = server_dir();
        let data = dir.join("data");
        let out = as_pg_user(&bin.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--checkpoint=fast"])
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let replica = Self::launch_retrying(&bin, &dir, &data);
        wait_until("the replica to stream", Duration::from_secs(60), || {
            replica.try_psql("postgres", "SELECT status FROM pg_stat_wal_receiver")
                == Some("streaming".into())
        });
        replica
    }

    /// Runs SQL as the superuser; `None` on failure.
    pub fn try_psql(&self, db: &str, sql: &str) -> Option<String> {
        self.run_psql(db, sql).ok()
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash.
    pub fn stop_immediate(&self) {
        let out = as_pg_user(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate", "-w"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server again after [`Cluster::stop_immediate`], on the same port.
    pub fn restart(&self) {
        let log = self.dir.join(format!("postgres-{}-restart.log", self.port));
        let out = as_pg_user(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(&log)
            .args(["start", "-w", "-t", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|c| c.wait_with_output())
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

fn write_as_pg(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
    if is_root() {
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(path)
            .status();
    }
}

fn append_as_pg(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open conf");
    f.write_all(text.as_bytes()).expect("append conf");
}

/// The cluster shared by every test in this binary.
pub fn cluster() -> &'static Cluster {
    // A failed start is remembered, so every test fails at once with its reason instead
    // of each one trying (and waiting) again.
    static C: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let c = C.get_or_init(|| {
        std::panic::catch_unwind(Cluster::start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match c {
        Ok(c) => c,
        Err(e) => panic!("the test cluster failed to start: {e}"),
    }
}

/// A sluice running in-process on its own thread and runtime.
pub struct Sluice {
    pub addr: SocketAddr,
    /// The HTTP listener.
    pub http: SocketAddr,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
    pub metrics: std::sync::Arc<sluice::metrics::Metrics>,
    top: sluice::TopShapes,
}

impl Sluice {
    /// Starts sluice with `toml` (its `listen.postgres` should use port 0).
    pub fn start(toml: &str) -> Sluice {
        let cfg = Config::parse(toml).unwrap_or_else(|e| panic!("bad test config: {e:?}\n{toml}"));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let proxy = sluice::Proxy::bind(cfg, None).await.expect("bind");
                tx.send((
                    proxy.local_addr,
                    proxy.http_addr,
                    proxy.shutdown(),
                    proxy.metrics(),
                    proxy.top_shapes(),
                ))
                .expect("send addr");
                proxy.serve().await;
            });
        });
        let (addr, http, shutdown, metrics, top) = rx.recv().expect("sluice started");
        Sluice {
            addr,
            http,
            shutdown,
            thread: Some(thread),
            metrics,
            top,
        }
    }

    /// The most executed statement shapes.
    pub fn top_shapes(&self) -> Vec<sluice::prepare::auto::ShapeStats> {
        self.top.top(20)
    }

    /// A connection string for tokio-postgres.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.addr.port()
        )
    }

    /// Stops it and waits.
    pub fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A config for the shared cluster's `appdb` with pool `size`, plus extra TOML lines
/// appended to `[pool]`.
pub fn config(cluster: &Cluster, size: usize, pool_extra: &str) -> String {
    format!(
        r#"
[listen]
postgres = "127.0.0.1:0"
http = "127.0.0.1:0"

[pool]
size = {size}
{pool_extra}

[[databases]]
name = "appdb"
primary = "{addr}"
user = "{su}"
password = "{sp}"

[[databases]]
name = "passdb"
dbname = "appdb"
primary = "{addr}"

[[users]]
name = "alice"
password = "alice_pw"

[[users]]
name = "bob"
password = "bob_pw"
auth = "md5"

[[users]]
name = "{su}"
password = "{sp}"

[[users]]
name = "{mu}"
password = "{mp}"
auth = "md5"
"#,
        addr = cluster.addr(),
        su = SCRAM_USER.0,
        sp = SCRAM_USER.1,
        mu = MD5_USER.0,
        mp = MD5_USER.1,
    )
}

/// A config for `appdb` on `primary` (fixed login as the SCRAM user, who is also the
/// client user), probing lag every 50ms: `sections` are inserted before
/// `[[databases]]`, `database` lines go into that database's table.
pub fn appdb_config(primary: &str, sections: &str, database: &str) -> String {
    format!(
        r#"
[listen]
postgres = "127.0.0.1:0"
http = "127.0.0.1:0"

[lag]
probe_interval = "50ms"
stale_after = "1s"

{sections}

[[databases]]
name = "appdb"
primary = "{primary}"
user = "{u}"
password = "{pw}"
{database}

[[users]]
name = "{u}"
password = "{pw}"

[[users]]
name = "alice"
password = "alice_pw"
"#,
        u = SCRAM_USER.0,
        pw = SCRAM_USER.1,
    )
}

/// Connects with tokio-postgres and drives the connection on the current runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Tries to connect, returning the error.
pub async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects expecting failure; returns the error.
pub async fn connect_err(url: &str, why: &str) -> tokio_postgres::Error {
    match try_connect(url).await {
        Ok(_) => panic!("connection unexpectedly succeeded: {why}"),
        Err(e) => e,
    }
}

/// A raw socket logged in as bob (md5), positioned after the first ReadyForQuery.
pub fn raw_login(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut pkt = Vec::new();
    pkt.extend(196_608i32.to_be_bytes());
    pkt.extend(b"user\0bob\0database\0appdb\0\0");
    let mut msg = ((pkt.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(pkt);
    c.write_all(&msg).expect("startup");
    let mut head = [0u8; 13];
    c.read_exact(&mut head).expect("md5 request");
    assert_eq!(head[0], b'R');
    let salt = [head[9], head[10], head[11], head[12]];
    let inner = postgres_protocol::password::md5(b"bob_pw", "bob");
    let resp = sluice::auth::md5::response_from_secret(&inner, salt);
    let mut p = vec![b'p'];
    p.extend(((resp.len() + 5) as i32).to_be_bytes());
    p.extend(resp.as_bytes());
    p.push(0);
    c.write_all(&p).expect("password");
    // Read until ReadyForQuery.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        c.read_exact(&mut byte).expect("greeting");
        seen.push(byte[0]);
    }
    c
}

/// Frames a frontend message.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(((body.len() + 4) as i32).to_be_bytes());
    v.extend(body);
    v
}

/// Reads backend messages until ReadyForQuery; returns (tag, body) pairs.
pub fn read_until_ready(c: &mut std::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        c.read_exact(&mut head).expect("message header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        c.read_exact(&mut body).expect("message body");
        let done = head[0] == b'Z';
        out.push((head[0], body));
        if done {
            return out;
        }
    }
}

/// The value of a setting as the client sees it.
pub async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
        .get(0)
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect http");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = String::new();
    c.read_to_string(&mut raw).expect("response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP/1.1 request; returns (status, lower-cased headers, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect http");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).expect("request");
    c.write_all(body.as_bytes()).expect("body");
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
