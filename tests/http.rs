//! The HTTP face: Prometheus metrics that move with the workload, liveness, readiness that
//! follows the primary, and the pools view.

mod support;

use support::{cluster, config, connect, free_port, http_get, Sluice};

/// The value of a sample line `name{labels} value` in Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every non-comment line is `name{labels} value`, and every family has HELP and TYPE.
fn assert_prometheus_text(text: &str) {
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(name.starts_with("sluice_"), "unprefixed metric: {line}");
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_the_workload() {
    let s = Sluice::start(&config(cluster(), 2, ""));
    let addr = s.http;
    let (status, before) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("get");
    assert_eq!(status, 200);
    assert_prometheus_text(&before);
    let tx0 = sample(&before, "sluice_transactions_total{pool=\"appdb/app\"}");
    let c = connect(&s.url("alice", "alice_pw", "appdb")).await;
    for _ in 0..25 {
        c.simple_query("SELECT 1").await.expect("query");
    }
    let (_, after) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("get");
    assert_prometheus_text(&after);
    let tx1 = sample(&after, "sluice_transactions_total{pool=\"appdb/app\"}");
    // The login's parameter probe may add one more.
    assert!(
        tx1 - tx0 >= 25.0 && tx1 - tx0 <= 26.0,
        "transactions {tx0} -> {tx1}"
    );
    assert!(sample(&after, "sluice_client_connections{state=\"idle\"}") >= 1.0);
    assert!(
        after.contains("sluice_transaction_duration_seconds_bucket{pool=\"appdb/app\""),
        "{after}"
    );
    assert!(after.contains("sluice_build_info{version="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_pools() {
    let s = Sluice::start(&config(cluster(), 3, ""));
    let addr = s.http;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/health"))
        .await
        .expect("get");
    assert_eq!((status, body.contains("\"ok\"")), (200, true), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/ready"))
        .await
        .expect("get");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["ready"], true);
    let _c = connect(&s.url("alice", "alice_pw", "appdb")).await;
    let (_, body) = tokio::task::spawn_blocking(move || http_get(addr, "/pools"))
        .await
        .expect("get");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let pool = v["pools"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "appdb/app"))
        .cloned();
    assert_eq!(
        pool.as_ref().map(|p| p["size"].clone()),
        Some(serde_json::json!(3)),
        "{body}"
    );

    // A primary that is down makes /ready 503.
    let dead = free_port();
    let down = Sluice::start(&config(cluster(), 1, "").replacen(
        &cluster().addr(),
        &format!("127.0.0.1:{dead}"),
        1,
    ));
    let daddr = down.http;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(daddr, "/ready"))
        .await
        .expect("get");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"primary_reachable\":false"), "{body}");
}

const TOKEN: &str = "test-admin-token-0123456789";

fn admin_config(extra: &str) -> String {
    format!(
        "{}\n[http]\nadmin_token = \"{TOKEN}\"\nmax_request_bytes = \"4KiB\"\n{extra}",
        config(cluster(), 4, "")
    )
    .replace(
        "[[databases]]\nname = \"appdb\"",
        "[cache]\n[[cache.rules]]\nname = \"http_t\"\ntables = [\"http_t\", \"http_s\"]\nttl = \"5m\"\n\n[[databases]]\nname = \"appdb\"",
    )
}

async fn req(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> (u16, Vec<(String, String)>, String) {
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        support::http_request(addr, method, path, &h, &body)
    })
    .await
    .expect("request")
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE IF NOT EXISTS http_t (id int PRIMARY KEY, v text); \
         INSERT INTO http_t VALUES (1, 'one') ON CONFLICT DO NOTHING;",
    );
    // No token configured: refused outright.
    let open = Sluice::start(&config(cluster(), 2, ""));
    let (status, _, _) = req(open.http, "POST", "/reload", vec![], String::new()).await;
    assert_eq!(status, 403);
    open.stop();

    let s = Sluice::start(&admin_config(""));
    let auth = ("Authorization", format!("Bearer {TOKEN}"));
    let (status, _, _) = req(s.http, "POST", "/reload", vec![], String::new()).await;
    assert_eq!(status, 401);
    let (status, _, _) = req(
        s.http,
        "POST",
        "/reload",
        vec![("Authorization", "Bearer wrong-token-000000000000".into())],
        String::new(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = req(s.http, "POST", "/reload", vec![auth.clone()], String::new()).await;
    // Started from a string, not a file: the reload is refused, with the reason.
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no config file"), "{body}");

    // Invalidation through the API is visible in the next read.
    let c = connect(&s.url("alice", "alice_pw", "appdb")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    async fn read(c: &tokio_postgres::Client) -> String {
        c.query_one("SELECT v FROM http_t WHERE id = $1", &[&1i32])
            .await
            .expect("read")
            .get::<_, String>(0)
    }
    assert_eq!(read(&c).await, "one");
    assert_eq!(read(&c).await, "one");
    cluster().psql_db("appdb", "UPDATE http_t SET v = 'uno' WHERE id = 1");
    assert_eq!(
        read(&c).await,
        "one",
        "served from cache (the write bypassed sluice)"
    );
    let (status, _, body) = req(
        s.http,
        "POST",
        "/cache/invalidate",
        vec![],
        r#"{"tables": ["http_t"]}"#.into(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = req(
        s.http,
        "POST",
        "/cache/invalidate",
        vec![auth.clone()],
        r#"{"tables": ["http_t"]}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(read(&c).await, "uno");
    cluster().psql_db("appdb", "UPDATE http_t SET v = 'one' WHERE id = 1");

    // Views are open.
    for path in ["/cache", "/queries", "/replicas", "/"] {
        let (status, _, body) = req(s.http, "GET", path, vec![], String::new()).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, _, body) = req(s.http, "GET", "/cache", vec![], String::new()).await;
    assert!(body.contains("\"rule\":\"http_t\""), "{body}");

    // Pause holds new transactions; resume lets them through.
    let (status, _, _) = req(
        s.http,
        "POST",
        "/pools/appdb/pause",
        vec![auth.clone()],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    let c2 = connect(&s.url("alice", "alice_pw", "appdb")).await;
    let held = tokio::spawn(async move {
        c2.simple_query("SELECT 1")
            .await
            .map(|_| std::time::Instant::now())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a transaction ran while paused");
    let resumed_at = std::time::Instant::now();
    let (status, _, _) = req(
        s.http,
        "POST",
        "/pools/appdb/resume",
        vec![auth.clone()],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    let ran_at = held.await.expect("join").expect("query after resume");
    assert!(ran_at >= resumed_at);
    let (status, _, _) = req(
        s.http,
        "POST",
        "/pools/nope/pause",
        vec![auth],
        String::new(),
    )
    .await;
    assert_eq!(status, 404);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_http_round_trips_types_errors_and_the_cache() {
    cluster().psql_db(
        "appdb",
        "CREATE TABLE IF NOT EXISTS http_s (id int PRIMARY KEY, v text); \
         INSERT INTO http_s VALUES (1, 'one') ON CONFLICT DO NOTHING;",
    );
    let s = Sluice::start(&admin_config(""));
    let basic = {
        use base64::Engine;
        (
            "Authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice:alice_pw")
            ),
        )
    };
    let (status, headers, body) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![basic.clone()],
        r#"{"sql": "SELECT $1::int AS i, 12.50::numeric AS n, 'x'::text AS t, true AS b, '2024-01-02 03:04:05+00'::timestamptz AS ts, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '{\"k\": [1, 2]}'::jsonb AS j, ARRAY[1,2,NULL] AS a, ARRAY['p','q r'] AS ta, '\\x0102'::bytea AS by, NULL::text AS nul, 2.5::float8 AS f", "params": [7]}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let row = &v["rows"][0];
    assert_eq!(row[0], serde_json::json!(7));
    assert_eq!(row[1], serde_json::json!("12.50"));
    assert_eq!(row[2], serde_json::json!("x"));
    assert_eq!(row[3], serde_json::json!(true));
    assert!(
        row[4].as_str().is_some_and(|t| t.starts_with("2024-01-02")),
        "{row}"
    );
    assert_eq!(
        row[5],
        serde_json::json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    );
    assert_eq!(row[6], serde_json::json!({"k": [1, 2]}));
    assert_eq!(row[7], serde_json::json!([1, 2, null]));
    assert_eq!(row[8], serde_json::json!(["p", "q r"]));
    assert_eq!(row[9], serde_json::json!("\\x0102"));
    assert_eq!(row[10], serde_json::Value::Null);
    assert_eq!(row[11], serde_json::json!(2.5));
    assert_eq!(v["columns"][0]["name"], "i");
    assert_eq!(v["columns"][0]["type_oid"], 23);
    assert_eq!(v["row_count"], 1);
    assert_eq!(header(&headers, "x-sluice-route"), Some("primary"));

    // Errors carry the SQLSTATE.
    let (status, _, body) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![basic.clone()],
        r#"{"sql": "SELECT 1/0"}"#.into(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"code\":\"22012\""), "{body}");
    // Wrong password, no credentials.
    let (status, _, _) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![("Authorization", "Bearer alice:nope".into())],
        r#"{"sql": "SELECT 1"}"#.into(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![],
        r#"{"sql": "SELECT 1"}"#.into(),
    )
    .await;
    assert_eq!(status, 401);
    // The cache: MISS, then HIT; a bypass header skips it.
    let q = r#"{"sql": "SELECT v FROM http_s WHERE id = $1", "params": [1]}"#;
    let (_, h1, _) = req(s.http, "POST", "/v1/query", vec![basic.clone()], q.into()).await;
    let (_, h2, b2) = req(s.http, "POST", "/v1/query", vec![basic.clone()], q.into()).await;
    assert_eq!(header(&h1, "x-cache"), Some("MISS"));
    assert_eq!(header(&h2, "x-cache"), Some("HIT"), "{b2}");
    assert!(b2.contains("\"one\""), "{b2}");
    let (_, h3, _) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![basic.clone(), ("X-Cache-Bypass", "true".into())],
        q.into(),
    )
    .await;
    assert_eq!(header(&h3, "x-cache"), Some("BYPASS"));
    // A batch is one transaction: a failure rolls back the earlier statements.
    let (status, _, body) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![basic.clone()],
        r#"{"batch": [{"sql": "UPDATE http_s SET v = 'two' WHERE id = 1"}, {"sql": "SELECT 1/0"}]}"#.into(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"statement\":1"), "{body}");
    let (_, _, body) = req(s.http, "POST", "/v1/query", vec![basic.clone()], q.into()).await;
    assert!(
        body.contains("\"one\""),
        "the failed batch was not rolled back: {body}"
    );
    // Settings made by one request do not leak into the next on a reused connection.
    let (status, _, body) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![basic.clone()],
        r#"{"sql": "SET application_name = 'leaky'"}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = req(
        s.http,
        "POST",
        "/v1/query",
        vec![basic.clone()],
        r#"{"sql": "SHOW application_name"}"#.into(),
    )
    .await;
    assert!(
        !body.contains("leaky"),
        "a setting leaked between requests: {body}"
    );
    // Oversized request: 413.
    let big = format!(r#"{{"sql": "SELECT '{}'"}}"#, "x".repeat(8000));
    let (status, _, _) = req(s.http, "POST", "/v1/query", vec![basic], big).await;
    assert_eq!(status, 413);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauges_return_to_rest_after_contention() {
    let s = Sluice::start(&config(cluster(), 1, ""));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let u = s.url("alice", "alice_pw", "appdb");
        tasks.push(tokio::spawn(async move {
            let c = connect(&u).await;
            for _ in 0..20 {
                c.simple_query("SELECT pg_sleep(0.001)")
                    .await
                    .expect("query");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let addr = s.http;
    let (_, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("metrics");
    let waited = sample(
        &text,
        "sluice_pool_checkout_wait_seconds_count{pool=\"appdb/app\"}",
    );
    assert!(waited > 4.0, "no checkout waited: {waited}");
    assert_eq!(
        sample(
            &text,
            "sluice_server_connections{pool=\"appdb/app\",state=\"active\"}"
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sluice_server_connections{pool=\"appdb/app\",state=\"idle\"}"
        ),
        1.0
    );
    s.stop();
}
