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
