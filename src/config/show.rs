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
    let _ = writeln!(
        out,
        "[cache]\nmax_bytes = {}\nvalkey = {:?}\ncompress_above = {}\nvalkey_timeout = {:?}",
        cfg.cache.max_bytes,
        cfg.cache.valkey.as_deref().unwrap_or("(none)"),
        cfg.cache.compress_above,
        dur(cfg.cache.valkey_timeout)
    );
    for r in &cfg.cache.rules {
        let matches = match &r.matches {
            super::RuleMatch::Tables(t) => format!("tables = {t:?}"),
            super::RuleMatch::Query(q) => format!("query = {q:?}"),
        };
        let _ = writeln!(
            out,
            "[[cache.rules]]\nname = {:?}\n{matches}\nttl = {:?}\nstale_while_revalidate = {:?}\nmax_entry_bytes = {}\nkey_settings = {:?}",
            r.name,
            dur(r.ttl),
            dur(r.stale_while_revalidate),
            r.max_entry_bytes,
            r.key_settings
        );
    }
    let _ = writeln!(
        out,
        "\n[http]\nadmin_token = {:?}\nmax_request_bytes = {}\nmax_response_bytes = {}\nquery_timeout = {:?}\n",
        cfg.http
            .admin_token
            .as_ref()
            .map_or_else(|| "(none: admin calls refused)".to_owned(), |t| t.masked()),
        cfg.http.max_request_bytes,
        cfg.http.max_response_bytes,
        dur(cfg.http.query_timeout)
    );
    let _ = writeln!(out, "[log]\nslow_query = {:?}\n", dur(cfg.log.slow_query));
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
