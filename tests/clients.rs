//! The client libraries our users run (asyncpg, psycopg 3, SQLAlchemy 2 async,
//! node-postgres), each with more concurrent clients than server connections, through
//! sluice in transaction mode. The scripts live in tests/clients/; scripts/install-deps.sh
//! installs their packages.

mod support;

use std::process::Command;

use support::{cluster, config, Sluice};

const POOL: usize = 2;

fn run_script(program: &str, script: &str, s: &Sluice) {
    let url = format!(
        "postgresql://alice:alice_pw@127.0.0.1:{}/appdb",
        s.addr.port()
    );
    let root = env!("CARGO_MANIFEST_DIR");
    for round in 1..=2 {
        let out = Command::new(program)
            .arg(format!("{root}/{script}"))
            .env("SLUICE_URL", &url)
            .env("SLUICE_POOL_SIZE", POOL.to_string())
            .env("CUSTOM_GUC", "1")
            .current_dir(root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/install-deps.sh): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{script} round {round} failed (did scripts/install-deps.sh run?)\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let last = stdout.lines().last().unwrap_or_default();
        assert!(last.contains("passed, 0 failed"), "{script}: {last}");
        eprintln!("{script} round {round}: {last}");
    }
}

#[test]
fn python_clients_asyncpg_psycopg_sqlalchemy() {
    let s = Sluice::start(&config(cluster(), POOL, "checkout_timeout = \"30s\""));
    run_script("python3", "tests/clients/python_clients.py", &s);
}

#[test]
fn node_postgres_named_statements() {
    let s = Sluice::start(&config(cluster(), POOL, "checkout_timeout = \"30s\""));
    run_script("node", "tests/clients/node/node_clients.js", &s);
}
