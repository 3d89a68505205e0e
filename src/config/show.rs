//! The effective configuration printed by `sluice check`, with secrets masked.

use std::fmt::Write;

use super::{
    AuthMethod, Config, PoolMode, PoolSettings, ServerCredentials, SessionStatePolicy, UserSecret,
};

fn pool(out: &mut String, p: &PoolSettings) {
    let mode = match p.mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    };
    let state = match p.session_state {
        SessionStatePolicy::Pin => "pin",
        SessionStatePolicy::Error => "error",
    };
    let _ = writeln!(out, "mode = {mode:?}");
    let _ = writeln!(out, "size = {}", p.size);
    let _ = writeln!(out, "min_idle = {}", p.min_idle);
    let _ = writeln!(out, "max_client_connections = {}", p.max_client_connections);
    let _ = writeln!(
        out,
        "checkout_timeout = {:?}",
        humantime::format_duration(p.checkout_timeout).to_string()
    );
    let _ = writeln!(
        out,
        "idle_timeout = {:?}",
        humantime::format_duration(p.idle_timeout).to_string()
    );
    let _ = writeln!(
        out,
        "max_lifetime = {:?}",
        humantime::format_duration(p.max_lifetime).to_string()
    );
    let _ = writeln!(
        out,
        "connect_timeout = {:?}",
        humantime::format_duration(p.connect_timeout).to_string()
    );
    let _ = writeln!(out, "server_reset_query = {:?}", p.server_reset_query);
    let _ = writeln!(
        out,
        "max_prepared_statements = {}",
        p.max_prepared_statements
    );
    let _ = writeln!(out, "session_state = {state:?}");
}

/// Renders `cfg` as TOML-like text.
pub fn render(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[listen]\npostgres = \"{}\"\nhttp = \"{}\"\n",
        cfg.listen_postgres, cfg.listen_http
    );
    let _ = writeln!(out, "[runtime]\nworker_threads = {}\n", cfg.worker_threads);
    let _ = writeln!(
        out,
        "[limits]\nmax_message_size = {}\nauth_timeout = {:?}\nshutdown_timeout = {:?}\n",
        cfg.limits.max_message_size,
        humantime::format_duration(cfg.limits.auth_timeout).to_string(),
        humantime::format_duration(cfg.limits.shutdown_timeout).to_string()
    );
    let _ = writeln!(
        out,
        "[prepare]\nauto = {}\nthreshold = {}\nwindow = {:?}\nmax_shapes = {}\n",
        cfg.prepare.auto,
        cfg.prepare.threshold,
        humantime::format_duration(cfg.prepare.window).to_string(),
        cfg.prepare.max_shapes
    );
    let dur = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let fallback = match cfg.routing.fallback {
        super::Fallback::Primary => "primary",
        super::Fallback::Error => "error",
    };
    let _ = writeln!(
        out,
        "[routing]\nconsistency = {:?}\nfallback = {fallback:?}\nread_only_functions = {:?}\nmax_lag = {:?}\nmax_lag_bytes = {}\n",
        cfg.routing.consistency.as_str(),
        cfg.routing.read_only_functions,
        dur(cfg.routing.max_lag),
        cfg.routing.max_lag_bytes
    );
    let _ = writeln!(
        out,
        "[lag]\nprobe_interval = {:?}\nstale_after = {:?}\n",
        dur(cfg.lag.probe_interval),
        dur(cfg.lag.stale_after)
    );
    out.push_str("[pool]\n");
    pool(&mut out, &cfg.pool);
    for db in &cfg.databases {
        let _ = writeln!(
            out,
            "\n[[databases]]\nname = {:?}\ndbname = {:?}\nprimary = {:?}",
            db.name, db.server_dbname, db.primary
        );
        let _ = writeln!(out, "replicas = {:?}", db.replicas);
        let _ = writeln!(
            out,
            "max_lag = {:?}\nmax_lag_bytes = {}",
            humantime::format_duration(db.lag.max_lag).to_string(),
            db.lag.max_lag_bytes
        );
        if let Some((user, password)) = &db.monitor {
            let _ = writeln!(
                out,
                "monitor_user = {user:?}\nmonitor_password = {:?}",
                password.masked()
            );
        }
        match &db.credentials {
            ServerCredentials::Fixed { user, password } => {
                let _ = writeln!(out, "user = {user:?}\npassword = {:?}", password.masked());
            }
            ServerCredentials::Passthrough => {
                out.push_str("# credentials: passthrough (the client's own)\n")
            }
        }
        out.push_str("[databases.pool]\n");
        pool(&mut out, &db.pool);
    }
    for u in &cfg.users {
        let kind = match &u.secret {
            UserSecret::Plain { password, .. } => password.masked(),
            UserSecret::Scram(_) => "SCRAM-SHA-256$**** (masked)".to_owned(),
            UserSecret::Md5(_) => "md5**** (masked)".to_owned(),
        };
        let auth = match u.auth {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        };
        let _ = writeln!(
            out,
            "\n[[users]]\nname = {:?}\npassword = {kind:?}\nauth = {auth:?}",
            u.name
        );
    }
    out
}
