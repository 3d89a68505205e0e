use super::*;

const GOOD: &str = r#"
[listen]
postgres = "127.0.0.1:7432"

[pool]
size = 4
checkout_timeout = "250ms"

[[databases]]
name = "app"
primary = "127.0.0.1:5432"
user = "app"
password = "secret"
[databases.pool]
size = 8
mode = "session"

[[databases]]
name = "other"
primary = "db.internal:5432"

[[users]]
name = "alice"
password = "wonderland"

[[users]]
name = "bob"
password = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
"#;

#[test]
fn parses_and_merges_pool_overrides() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.listen_postgres.port(), 7432);
    assert_eq!(c.pool.size, 4);
    assert_eq!(c.pool.checkout_timeout, Duration::from_millis(250));
    let app = c.database("app").unwrap();
    assert_eq!(app.pool.size, 8);
    assert_eq!(app.pool.mode, PoolMode::Session);
    assert_eq!(app.pool.checkout_timeout, Duration::from_millis(250));
    assert_eq!(
        c.database("other").unwrap().credentials,
        ServerCredentials::Passthrough
    );
    assert_eq!(c.user("bob").unwrap().auth, AuthMethod::Md5);
    assert_eq!(c.user("alice").unwrap().auth, AuthMethod::ScramSha256);
    let shown = c.display_masked();
    assert!(!shown.contains("secret\""), "{shown}");
    assert!(!shown.contains("wonderland"), "{shown}");
}

#[test]
fn reports_every_error_with_path_and_line() {
    let bad = r#"
[listen]
postgres = "nowhere"

[pool]
size = 0
checkout_timeout = "soon"
sise = 3

[[databases]]
name = "app"
primary = "127.0.0.1"
user = "x"

[[users]]
name = "u"
password = "env:SLUICE_TEST_DEFINITELY_UNSET"
auth = "plain"
"#;
    let errs = Config::parse(bad).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(has("line 3: listen.postgres"), "{text:#?}");
    assert!(has("line 6: pool.size: 0 is out of range"), "{text:#?}");
    assert!(
        has("line 7: pool.checkout_timeout: invalid duration"),
        "{text:#?}"
    );
    assert!(has("line 8: pool.sise: unknown key"), "{text:#?}");
    assert!(has("databases[0].primary"), "{text:#?}");
    assert!(has("databases[0].password"), "{text:#?}");
    assert!(
        has("users[0].password: environment variable SLUICE_TEST_DEFINITELY_UNSET is not set"),
        "{text:#?}"
    );
    assert!(has("users[0].auth"), "{text:#?}");
    assert!(errs.len() >= 8, "{text:#?}");
}

#[test]
fn syntax_errors_have_a_line() {
    let errs = Config::parse("[pool]\nsize = = 3\n").unwrap_err();
    assert_eq!(errs[0].line, Some(2), "{errs:?}");
}

#[test]
fn restart_required_fields_are_detected() {
    let a = Config::parse(GOOD).unwrap();
    let b = Config::parse(&GOOD.replace("7432", "7433").replace("size = 4", "size = 5")).unwrap();
    assert_eq!(a.restart_required_changes(&b), vec!["listen.postgres"]);
}

#[test]
fn routing_settings_and_per_database_limits() {
    let src = r#"
[routing]
consistency = "global"
fallback = "error"
max_lag = "2s"
read_only_functions = ["My_Fn"]
[lag]
probe_interval = "20ms"
stale_after = "200ms"
[[databases]]
name = "app"
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433"]
user = "app"
password = "pw"
max_lag_bytes = "1MiB"
[[users]]
name = "app"
password = "pw"
"#;
    let c = Config::parse(src).unwrap();
    assert_eq!(c.routing.consistency, Consistency::Global);
    assert_eq!(c.routing.fallback, Fallback::Error);
    assert_eq!(c.routing.read_only_functions, vec!["my_fn".to_owned()]);
    assert_eq!(c.lag.probe_interval, Duration::from_millis(20));
    let db = c.database("app").unwrap();
    assert_eq!(db.lag.max_lag, Duration::from_secs(2));
    assert_eq!(db.lag.max_lag_bytes, 1 << 20);
    assert_eq!(db.monitor.as_ref().map(|m| m.0.as_str()), Some("app"));
    let shown = c.display_masked();
    assert!(shown.contains("consistency = \"global\""), "{shown}");
    assert!(!shown.contains("\"pw\""), "{shown}");
}

#[test]
fn routing_errors_are_reported() {
    let src = r#"
[routing]
consistency = "strong"
[lag]
probe_interval = "100ms"
stale_after = "150ms"
[[databases]]
name = "app"
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433"]
[[users]]
name = "app"
password = "pw"
"#;
    let errs = Config::parse(src).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter().any(|e| e.contains("routing.consistency")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|e| e.contains("lag.stale_after")),
        "{text:?}"
    );
    assert!(text.iter().any(|e| e.contains("monitor_user")), "{text:?}");
}
