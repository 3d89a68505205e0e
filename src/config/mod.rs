//! `proxy.toml`: read into a spanned tree, validated (every error with key path and line)
//! into a typed [`Config`]. Defaults live in [`PoolSettings::default`] and [`Config`]'s
//! loader, nowhere else.

mod cache;
mod http;
mod reader;
mod routing;
mod secret;
mod show;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use toml::de::DeTable;

use crate::auth::scram::ScramSecret;
pub use cache::{normalize_space, CacheRule, CacheSettings, RuleMatch};
pub use http::{HttpSettings, LogSettings};
pub use reader::parse_size;
use reader::{Ctx, Table};
pub use routing::{Consistency, Fallback, LagLimits, LagSettings, RoutingSettings};
pub use secret::Secret;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `databases[0].pool.size`.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Loading failed: the file could not be read, or it has errors.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Every problem found.
    #[error("{} error(s) in {path}:\n{}", .errors.len(), .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path.
        path: String,
        /// The problems.
        errors: Vec<ConfigError>,
    },
}

/// Pooling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per transaction.
    Transaction,
    /// A server connection per client session.
    Session,
}

/// What to do with statements that create session state in transaction mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatePolicy {
    /// Keep the client on its server connection until it disconnects.
    Pin,
    /// Refuse the statement with SQLSTATE 0A000.
    Error,
}

/// Pool knobs; `[pool]` gives defaults, `[databases.pool]` overrides them per database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Transaction or session pooling.
    pub mode: PoolMode,
    /// Most server connections per pool.
    pub size: usize,
    /// Idle connections kept open.
    pub min_idle: usize,
    /// Most client connections per database.
    pub max_client_connections: usize,
    /// Longest wait for a server connection.
    pub checkout_timeout: Duration,
    /// Idle server connections above `min_idle` are closed after this.
    pub idle_timeout: Duration,
    /// Server connections are closed after this age.
    pub max_lifetime: Duration,
    /// TCP connect plus login limit for a server connection.
    pub connect_timeout: Duration,
    /// Run on a session-mode connection when its client leaves.
    pub server_reset_query: String,
    /// Prepared statements kept per server connection (LRU).
    pub max_prepared_statements: usize,
    /// Session-state statements in transaction mode.
    pub session_state: SessionStatePolicy,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            max_client_connections: 10_000,
            checkout_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            server_reset_query: "DISCARD ALL".to_owned(),
            max_prepared_statements: 250,
            session_state: SessionStatePolicy::Pin,
        }
    }
}

/// `[prepare]`: automatic server-side preparation of frequent unnamed statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareSettings {
    /// Prepare frequent unnamed statements on the server.
    pub auto: bool,
    /// Executions within `window` before a statement shape is prepared.
    pub threshold: u32,
    /// Counts are halved every window.
    pub window: Duration,
    /// Most statement shapes tracked.
    pub max_shapes: usize,
}

impl Default for PrepareSettings {
    fn default() -> Self {
        Self {
            auto: true,
            threshold: 5,
            window: Duration::from_secs(60),
            max_shapes: 10_000,
        }
    }
}

/// How sluice logs in to a database's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCredentials {
    /// A fixed server user and password for every client.
    Fixed {
        /// Server user.
        user: String,
        /// Its password (plaintext or md5 secret).
        password: Secret,
    },
    /// The client's own user name and credentials.
    Passthrough,
}

/// A `[[databases]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Name clients connect to.
    pub name: String,
    /// Database name on the server.
    pub server_dbname: String,
    /// Primary `host:port`.
    pub primary: String,
    /// Replica `host:port`s (used by the routing layer).
    pub replicas: Vec<String>,
    /// Server login.
    pub credentials: ServerCredentials,
    /// Login of the lag monitor (the fixed credentials unless `monitor_user` is set).
    pub monitor: Option<(String, Secret)>,
    /// Lag limits for reads on replicas.
    pub lag: LagLimits,
    /// Effective pool settings.
    pub pool: PoolSettings,
}

/// How a client user proves its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256.
    ScramSha256,
    /// md5.
    Md5,
}

/// A client user's stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSecret {
    /// Plaintext (SCRAM secret derived at load).
    Plain {
        /// The password.
        password: Secret,
        /// Derived SCRAM secret.
        scram: ScramSecret,
    },
    /// `SCRAM-SHA-256$…`.
    Scram(ScramSecret),
    /// `md5…`.
    Md5(Secret),
}

/// A `[[users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Client user name.
    pub name: String,
    /// Credential.
    pub secret: UserSecret,
    /// Method offered to the client.
    pub auth: AuthMethod,
}

/// Limits and timeouts of the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted from a client or server.
    pub max_message_size: usize,
    /// Startup plus authentication must finish within this.
    pub auth_timeout: Duration,
    /// Running transactions get this long on shutdown.
    pub shutdown_timeout: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Postgres listener.
    pub listen_postgres: SocketAddr,
    /// HTTP listener (reserved).
    pub listen_http: SocketAddr,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Limits.
    pub limits: Limits,
    /// Default pool settings.
    pub pool: PoolSettings,
    /// Auto-prepare settings.
    pub prepare: PrepareSettings,
    /// Read routing.
    pub routing: RoutingSettings,
    /// Lag measurement.
    pub lag: LagSettings,
    /// Query cache.
    pub cache: CacheSettings,
    /// HTTP admin and SQL-over-HTTP settings.
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
    /// Databases.
    pub databases: Vec<Database>,
    /// Client users.
    pub users: Vec<User>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let src = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&src).map_err(|errors| LoadError::Invalid {
            path: path.display().to_string(),
            errors,
        })
    }

    /// Validates TOML text.
    pub fn parse(src: &str) -> Result<Self, Vec<ConfigError>> {
        let doc = DeTable::parse(src).map_err(|e| {
            let ctx = Ctx::new(src);
            vec![ConfigError {
                path: "(syntax)".into(),
                line: e.span().map(|s| ctx.line_of(s.start)),
                message: e.message().to_owned(),
            }]
        })?;
        let ctx = Ctx::new(src);
        let mut root = Table::new(&ctx, doc.get_ref(), String::new(), 0);
        let cfg = read_root(&mut root);
        root.finish();
        let mut errors = ctx.into_errors();
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        match cfg {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors),
        }
    }

    /// The database named `name`.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Settings that cannot change without a restart, compared with `other`.
    pub fn restart_required_changes(&self, other: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.listen_postgres != other.listen_postgres {
            out.push("listen.postgres");
        }
        if self.cache.valkey != other.cache.valkey {
            out.push("cache.valkey");
        }
        if self.cache.max_bytes != other.cache.max_bytes {
            out.push("cache.max_bytes");
        }
        if self.listen_http != other.listen_http {
            out.push("listen.http");
        }
        if self.worker_threads != other.worker_threads {
            out.push("runtime.worker_threads");
        }
        if self.limits.max_message_size != other.limits.max_message_size {
            out.push("limits.max_message_size");
        }
        out
    }

    /// The effective configuration as TOML-like text, secrets masked.
    pub fn display_masked(&self) -> String {
        show::render(self)
    }
}

fn addr(t: &mut Table<'_, '_>, key: &str, default: &str) -> Option<SocketAddr> {
    let s = t.string(key).unwrap_or_else(|| default.to_owned());
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            t.error(key, format!("{s:?} is not an ip:port address"));
            None
        }
    }
}

fn read_root(root: &mut Table<'_, '_>) -> Option<Config> {
    let (listen_postgres, listen_http) = match root.table("listen") {
        Some(mut t) => {
            let pg = addr(&mut t, "postgres", "127.0.0.1:6432");
            let http = addr(&mut t, "http", "127.0.0.1:9930");
            t.finish();
            (pg, http)
        }
        None => ("127.0.0.1:6432".parse().ok(), "127.0.0.1:9930".parse().ok()),
    };
    let mut worker_threads = 1;
    if let Some(mut t) = root.table("runtime") {
        worker_threads = t.int("worker_threads", 1, 256).unwrap_or(1) as usize;
        t.finish();
    }
    let mut limits = Limits {
        max_message_size: 1 << 30,
        auth_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(30),
    };
    if let Some(mut t) = root.table("limits") {
        if let Some(n) = t.size("max_message_size") {
            if !(1024..=(1u64 << 30)).contains(&n) {
                t.error("max_message_size", "must be between 1KiB and 1GiB");
            } else {
                limits.max_message_size = n as usize;
            }
        }
        limits.auth_timeout = t.duration("auth_timeout").unwrap_or(limits.auth_timeout);
        limits.shutdown_timeout = t
            .duration("shutdown_timeout")
            .unwrap_or(limits.shutdown_timeout);
        t.finish();
    }
    let mut prepare = PrepareSettings::default();
    if let Some(mut t) = root.table("prepare") {
        if let Some(b) = t.bool("auto") {
            prepare.auto = b;
        }
        if let Some(n) = t.int("threshold", 1, 1_000_000) {
            prepare.threshold = n as u32;
        }
        if let Some(d) = t.duration("window") {
            if d < Duration::from_secs(1) {
                t.error("window", "must be at least 1s");
            } else {
                prepare.window = d;
            }
        }
        if let Some(n) = t.int("max_shapes", 1, 10_000_000) {
            prepare.max_shapes = n as usize;
        }
        t.finish();
    }
    let routing = match root.table("routing") {
        Some(mut t) => routing::read_routing(&mut t),
        None => RoutingSettings::default(),
    };
    let lag = match root.table("lag") {
        Some(mut t) => routing::read_lag(&mut t),
        None => LagSettings::default(),
    };
    let http = match root.table("http") {
        Some(mut t) => http::read_http(&mut t),
        None => HttpSettings::default(),
    };
    let log = match root.table("log") {
        Some(mut t) => http::read_log(&mut t),
        None => LogSettings::default(),
    };
    let cache = match root.table("cache") {
        Some(mut t) => cache::read_cache(&mut t),
        None => CacheSettings::default(),
    };
    let limits_default = LagLimits {
        max_lag: routing.max_lag,
        max_lag_bytes: routing.max_lag_bytes,
    };
    let defaults = PoolSettings::default();
    let pool = match root.table("pool") {
        Some(mut t) => read_pool(&mut t, &defaults),
        None => defaults,
    };
    let mut databases = Vec::new();
    let mut names = HashSet::new();
    let db_tables = root.tables("databases");
    let any_db = !db_tables.is_empty();
    for mut t in db_tables {
        if let Some(db) = read_database(&mut t, &pool, limits_default) {
            if !names.insert(db.name.clone()) {
                t.error("name", format!("database {:?} is defined twice", db.name));
            }
            databases.push(db);
        }
        t.finish();
    }
    if !any_db {
        root.error("databases", "at least one [[databases]] entry is required");
    }
    let mut users = Vec::new();
    let mut unames = HashSet::new();
    for mut t in root.tables("users") {
        if let Some(u) = read_user(&mut t) {
            if !unames.insert(u.name.clone()) {
                t.error("name", format!("user {:?} is defined twice", u.name));
            }
            users.push(u);
        }
        t.finish();
    }
    Some(Config {
        listen_postgres: listen_postgres?,
        listen_http: listen_http?,
        worker_threads,
        limits,
        pool,
        prepare,
        routing,
        lag,
        cache,
        http,
        log,
        databases,
        users,
    })
}

fn read_pool(t: &mut Table<'_, '_>, base: &PoolSettings) -> PoolSettings {
    let mut p = base.clone();
    if let Some(m) = t.string("mode") {
        match m.as_str() {
            "transaction" => p.mode = PoolMode::Transaction,
            "session" => p.mode = PoolMode::Session,
            other => t.error(
                "mode",
                format!("{other:?} is not one of \"transaction\", \"session\""),
            ),
        }
    }
    if let Some(n) = t.int("size", 1, 100_000) {
        p.size = n as usize;
    }
    if let Some(n) = t.int("min_idle", 0, 100_000) {
        p.min_idle = n as usize;
    }
    if let Some(n) = t.int("max_client_connections", 1, 1_000_000) {
        p.max_client_connections = n as usize;
    }
    if let Some(n) = t.int("max_prepared_statements", 1, 100_000) {
        p.max_prepared_statements = n as usize;
    }
    for (key, slot) in [
        ("checkout_timeout", &mut p.checkout_timeout),
        ("idle_timeout", &mut p.idle_timeout),
        ("max_lifetime", &mut p.max_lifetime),
        ("connect_timeout", &mut p.connect_timeout),
    ] {
        if let Some(d) = t.duration(key) {
            *slot = d;
        }
    }
    if let Some(q) = t.string("server_reset_query") {
        p.server_reset_query = q;
    }
    if let Some(s) = t.string("session_state") {
        match s.as_str() {
            "pin" => p.session_state = SessionStatePolicy::Pin,
            "error" => p.session_state = SessionStatePolicy::Error,
            other => t.error(
                "session_state",
                format!("{other:?} is not one of \"pin\", \"error\""),
            ),
        }
    }
    if p.min_idle > p.size {
        t.error(
            "min_idle",
            format!("min_idle ({}) exceeds size ({})", p.min_idle, p.size),
        );
    }
    if p.checkout_timeout.is_zero() {
        t.error("checkout_timeout", "must be greater than zero");
    }
    if p.connect_timeout.is_zero() {
        t.error("connect_timeout", "must be greater than zero");
    }
    t.finish();
    p
}

fn host_port(t: &Table<'_, '_>, key: &str, s: &str) -> bool {
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        t.error(key, format!("{s:?} is not host:port"));
    }
    ok
}

fn read_database(
    t: &mut Table<'_, '_>,
    defaults: &PoolSettings,
    limits: LagLimits,
) -> Option<Database> {
    let name = t.string("name");
    if name.as_deref().is_some_and(str::is_empty) || name.is_none() {
        t.error("name", "a non-empty name is required");
    }
    let primary = t.string("primary");
    match &primary {
        Some(p) => {
            host_port(t, "primary", p);
        }
        None => t.error("primary", "primary = \"host:port\" is required"),
    }
    let replicas = t.strings("replicas").unwrap_or_default();
    for r in &replicas {
        host_port(t, "replicas", r);
    }
    let server_dbname = t.string("dbname");
    let user = t.string("user");
    let password = t.string("password");
    let credentials = match (user, password) {
        (Some(user), Some(pw)) => match Secret::resolve(&pw) {
            Ok(password) => Some(ServerCredentials::Fixed { user, password }),
            Err(e) => {
                t.error("password", e);
                None
            }
        },
        (None, None) => Some(ServerCredentials::Passthrough),
        (Some(_), None) => {
            t.error(
                "password",
                "user is set but password is not (omit both for passthrough)",
            );
            None
        }
        (None, Some(_)) => {
            t.error(
                "user",
                "password is set but user is not (omit both for passthrough)",
            );
            None
        }
    };
    let pool = match t.table("pool") {
        Some(mut pt) => read_pool(&mut pt, defaults),
        None => defaults.clone(),
    };
    let lag = routing::read_limits(t, limits);
    let monitor = match (t.string("monitor_user"), t.string("monitor_password")) {
        (Some(u), Some(p)) => match Secret::resolve(&p) {
            Ok(p) => Some((u, p)),
            Err(e) => {
                t.error("monitor_password", e);
                None
            }
        },
        (None, None) => match &credentials {
            Some(ServerCredentials::Fixed { user, password }) => {
                Some((user.clone(), password.clone()))
            }
            _ => None,
        },
        _ => {
            t.error(
                "monitor_user",
                "monitor_user and monitor_password go together",
            );
            None
        }
    };
    if !replicas.is_empty() && monitor.is_none() {
        t.error(
            "monitor_user",
            "a database with replicas needs a login for the lag monitor: set user/password or monitor_user/monitor_password",
        );
    }
    let name = name.filter(|n| !n.is_empty())?;
    Some(Database {
        monitor,
        lag,
        server_dbname: server_dbname.unwrap_or_else(|| name.clone()),
        name,
        primary: primary?,
        replicas,
        credentials: credentials?,
        pool,
    })
}

fn read_user(t: &mut Table<'_, '_>) -> Option<User> {
    let name = t.string("name").filter(|n| !n.is_empty());
    if name.is_none() {
        t.error("name", "a non-empty name is required");
    }
    let raw = t.string("password");
    let secret = match raw {
        None => {
            t.error(
                "password",
                "password is required (plaintext, env:NAME, md5… or SCRAM-SHA-256$…)",
            );
            None
        }
        Some(raw) => match Secret::resolve(&raw) {
            Err(e) => {
                t.error("password", e);
                None
            }
            Ok(s) if s.expose().starts_with("SCRAM-SHA-256$") => {
                match ScramSecret::parse(s.expose()) {
                    Some(sc) => Some(UserSecret::Scram(sc)),
                    None => {
                        t.error("password", "malformed SCRAM-SHA-256 secret");
                        None
                    }
                }
            }
            Ok(s) if s.expose().len() == 35 && s.expose().starts_with("md5") => {
                Some(UserSecret::Md5(s))
            }
            Ok(s) => {
                let scram = ScramSecret::from_password(s.expose());
                Some(UserSecret::Plain { password: s, scram })
            }
        },
    };
    let auth = match t.string("auth").as_deref() {
        None => match &secret {
            Some(UserSecret::Md5(_)) => AuthMethod::Md5,
            _ => AuthMethod::ScramSha256,
        },
        Some("scram-sha-256") => AuthMethod::ScramSha256,
        Some("md5") => AuthMethod::Md5,
        Some(other) => {
            t.error(
                "auth",
                format!("{other:?} is not one of \"scram-sha-256\", \"md5\""),
            );
            AuthMethod::ScramSha256
        }
    };
    match (&secret, auth) {
        (Some(UserSecret::Scram(_)), AuthMethod::Md5) => t.error(
            "auth",
            "md5 needs a plaintext or md5 password, not a SCRAM secret",
        ),
        (Some(UserSecret::Md5(_)), AuthMethod::ScramSha256) => t.error(
            "auth",
            "scram-sha-256 needs a plaintext or SCRAM password, not an md5 secret",
        ),
        _ => {}
    }
    Some(User {
        name: name?,
        secret: secret?,
        auth,
    })
}

#[cfg(test)]
mod tests;
