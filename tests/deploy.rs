//! The operator-facing files load in their tools: the alert rules pass `promtool check
//! rules`, live `/metrics` passes `promtool check metrics`, every metric the Grafana
//! dashboard and the alerts query exists, and the status page renders with data in
//! headless Chromium (a screenshot is written next to the test's temp files).

mod support;

use std::process::Command;

use support::{cluster, config, connect, http_get, Sluice};

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn metric_names(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_owned()
        })
        .collect()
}

/// Metric names (`sluice_…`) used in a PromQL-bearing file.
fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("sluice_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let name = text[start..end]
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum")
            .to_owned();
        out.push(name);
        i = end;
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_dashboard_and_metrics_check_out() {
    let out = Command::new("promtool")
        .args(["check", "rules", &repo("deploy/prometheus/alerts.yml")])
        .output()
        .expect("promtool (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Sluice::start(&config(cluster(), 2, ""));
    let c = connect(&s.url("alice", "alice_pw", "appdb")).await;
    c.simple_query("SELECT 1").await.expect("query");
    let addr = s.http;
    let (_, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("metrics");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Labelled families without samples yet are not printed: take every name defined
    // in the one metrics module as well.
    let mut known = metric_names(&text);
    let defined = std::fs::read_to_string(repo("src/metrics.rs")).expect("src/metrics.rs");
    known.extend(referenced(&defined));
    let dashboard = std::fs::read_to_string(repo("deploy/grafana/sluice.json")).expect("dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).expect("alerts");
    for name in referenced(&dashboard)
        .into_iter()
        .chain(referenced(&alerts))
    {
        assert!(
            known.contains(&name),
            "{name} is queried but sluice does not export it"
        );
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_with_data_in_headless_chromium() {
    let s = Sluice::start(&config(cluster(), 2, ""));
    let c = connect(&s.url("alice", "alice_pw", "appdb")).await;
    for _ in 0..10 {
        c.simple_query("SELECT 1").await.expect("query");
    }
    let url = format!("http://{}/", s.http);
    let dir = std::env::temp_dir().join(format!("sluice-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let shot = dir.join("status-page.png");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,1000",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(extra)
        .arg(&url);
        cmd.output()
    };
    let dom = run(&["--dump-dom"]).expect("chromium (scripts/install-deps.sh installs it)");
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("appdb/app"),
        "the pools table was not filled:\n{html}"
    );
    assert!(
        html.contains(">ready<"),
        "the readiness pill was not set:\n{html}"
    );
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = run(&[shot_arg.as_str()]).expect("chromium screenshot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot too small ({size} bytes)");
    eprintln!("status page screenshot: {}", shot.display());
    s.stop();
}
