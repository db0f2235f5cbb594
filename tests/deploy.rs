//! Every shipped deployment file is exercised: the alert rules by promtool,
//! the dashboard against the metrics tpsgap really exports.

mod common;

use std::process::Command;

use common::root;

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = root().join("deploy/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian package `prometheus`, installed by .ci/run)");
    let text = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let text =
        String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Metric names (llm_* and tpsgap_*) that an expression or text mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("llm_") || t.starts_with("tpsgap_"))
        .map(str::to_string)
        .collect()
}

/// What a real `tpsgap serve` exposes at /metrics after a run with failures,
/// retries, gaps and a rejected span.
fn exported_names() -> std::collections::BTreeSet<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let bind = || async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind")
        };
        let (g, h, a) = (bind().await, bind().await, bind().await);
        let (http, api) = (h.local_addr().expect("a"), a.local_addr().expect("a"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = tpsgap::serve::ServeConfig {
            live: tpsgap::live::LiveConfig {
                idle_timeout: std::time::Duration::from_secs(1),
                ..Default::default()
            },
            tick: std::time::Duration::from_millis(50),
            ..Default::default()
        };
        let task = tokio::spawn(tpsgap::serve::run(
            cfg,
            tpsgap::serve::Listeners {
                grpc: g,
                http: h,
                api: a,
            },
            async {
                let _ = rx.await;
            },
        ));
        let text = tokio::task::spawn_blocking(move || {
            for f in [
                "examples/small.jsonl",
                "tests/fixtures/two_runs.jsonl",
                "tests/fixtures/bad.jsonl",
            ] {
                for line in std::fs::read_to_string(root().join(f))
                    .expect("fixture")
                    .lines()
                {
                    common::http_post(
                        http,
                        "/v1/traces",
                        &[("Content-Type", "application/json")],
                        line.as_bytes(),
                    );
                }
            }
            common::final_run(api, "example");
            common::http_get(api, "/metrics").1
        })
        .await
        .expect("scrape");
        let _ = tx.send(());
        task.await.expect("join").expect("clean");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect()
    })
}

#[test]
fn dashboard_and_rules_query_only_metrics_tpsgap_exports() {
    let exported = exported_names();
    for must in [
        "llm_gap_fraction",
        "llm_gap_seconds_total",
        "llm_request_queue_time_seconds_bucket",
        "tpsgap_spans_rejected_total",
    ] {
        assert!(
            exported.contains(must),
            "{must} missing from /metrics: {exported:?}"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/tpsgap.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        exprs.push(v["definition"].as_str().unwrap_or_default().to_string());
    }
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    let rules =
        std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).expect("rules");
    let mut used = metric_names(&rules);
    for e in &exprs {
        used.extend(metric_names(e));
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    // The dashboard covers what the issue lists.
    let all = exprs.join("\n");
    for m in [
        "llm_gap_fraction",
        "llm_backlog_fraction",
        "llm_system_tps",
        "llm_utilization",
        "histogram_quantile",
        "tpsgap_spans_received_total",
        "sum by (cause)",
    ] {
        assert!(all.contains(m), "the dashboard shows {m}");
    }
}
