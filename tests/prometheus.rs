//! A real Prometheus server (Debian's `prometheus`) scrapes a real
//! `tpsgap serve` while two runs stream in real time. In run `prom`, every
//! second the slot freed at the second's start stays empty for 250 ms while
//! the next request waits (cap 1), so gap_fraction = 0.25; run `steady`
//! admits each request the instant the previous one leaves. Prometheus loads
//! our alert rules (deploy/prometheus/alerts.yml, with ranges and `for`
//! shortened to seconds): the idle-gap alert fires for `prom` only.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{free_port, http_get, wait_for, Killed, ServeProc};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::Value;
use tpsgap::model::Stamp;
use tpsgap::testutil::{export, kv_int, request_span};

fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={enc}"));
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The shipped rules with their ranges, offsets and `for` durations cut to
/// seconds, so a test of a few seconds can see them fire.
fn shorten(rules: &str) -> String {
    let mut out = String::new();
    for line in rules.lines() {
        let mut l = line.to_string();
        for unit in ["1h", "15m", "10m", "5m"] {
            l = l.replace(&format!("[{unit}]"), "[5s]");
            l = l.replace(&format!("offset {unit}"), "offset 5s");
        }
        if l.trim_start().starts_with("for:") {
            l = format!("{}for: 2s", &l[..l.len() - l.trim_start().len()]);
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_gap_fraction_and_the_counter_ratio_agrees() {
    let tpsgap = tokio::task::block_in_place(|| {
        ServeProc::start(["--window", "1s", "--step", "1s", "--lateness", "0s"])
    });
    let (grpc, api) = (tpsgap.grpc, tpsgap.api);
    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().expect("addr");
    let dir = std::env::temp_dir().join(format!("tpsgap-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let rules = std::fs::read_to_string(common::root().join("deploy/prometheus/alerts.yml"))
        .expect("rules");
    let rules = shorten(&rules);
    std::fs::write(dir.join("alerts.yml"), rules).expect("rules copy");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: tpsgap\n    static_configs:\n      - targets: ['{api}']\n",
            dir.join("alerts.yml").display()
        ),
    )
    .expect("config");
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package `prometheus`, installed by .ci/run)"),
    );
    let ready = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(30), || {
            (http_get(prom_addr, "/-/ready").0 == 200).then_some(())
        })
    })
    .await
    .expect("join");
    assert!(ready.is_some(), "prometheus comes up");

    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let k0 = now.as_secs() as i64 + 1;
    let sec = 1_000_000_000i64;
    // Request k: queued at k, admitted at k + 0.25, released at k + 1; its
    // span is sent at its release, in real time.
    for k in k0..k0 + 16 {
        let release = (k + 1) * sec;
        let wait = release
            - SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as i64;
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
        }
        let span = request_span(
            "prom",
            &format!("req-{k}"),
            &[
                (Stamp::Queued, k * sec),
                (Stamp::Admitted, k * sec + sec / 4),
                (Stamp::Released, release),
            ],
            vec![kv_int("cap", 1), kv_int("output_tokens", 100)],
            k as u64,
        );
        let steady = request_span(
            "steady",
            &format!("req-{k}"),
            &[
                (Stamp::Queued, k * sec),
                (Stamp::Admitted, k * sec),
                (Stamp::Released, release),
            ],
            vec![kv_int("cap", 1), kv_int("output_tokens", 100)],
            1000 + k as u64,
        );
        client
            .export(export(vec![span, steady]))
            .await
            .expect("export");
    }
    let results = tokio::task::spawn_blocking(move || {
        let gauge = query(prom_addr, "llm_gap_fraction{run_id=\"prom\"}");
        let ratio = query(
            prom_addr,
            "sum(rate(llm_gap_seconds_total{run_id=\"prom\"}[8s])) / sum(rate(llm_active_seconds_total{run_id=\"prom\"}[8s]))",
        );
        let stall = query(
            prom_addr,
            "sum(rate(llm_gap_seconds_total{run_id=\"prom\",cause=\"stall\"}[8s])) / sum(rate(llm_active_seconds_total{run_id=\"prom\"}[8s]))",
        );
        let tps = query(prom_addr, "llm_system_tps{run_id=\"prom\"}");
        let spans = query(prom_addr, "tpsgap_spans_accepted_total");
        let (_, body) = http_get(prom_addr, "/api/v1/query?query=ALERTS%7Balertstate%3D%22firing%22%7D");
        let alerts: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (gauge, ratio, stall, tps, spans, alerts)
    })
    .await
    .expect("join");
    let (gauge, ratio, stall, tps, spans, alerts) = results;
    let firing: Vec<(String, String)> = alerts["data"]["result"]
        .as_array()
        .expect("ALERTS result")
        .iter()
        .map(|a| {
            let m = &a["metric"];
            (
                m["alertname"].as_str().unwrap_or("").to_string(),
                m["run_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        firing,
        vec![("LLMIdleGapWithBacklog".to_string(), "prom".to_string())],
        "only the run with a stall alerts"
    );
    assert_eq!(
        gauge,
        Some(0.25),
        "llm_gap_fraction of the latest final window"
    );
    let ratio = ratio.expect("rate ratio");
    assert!(
        (ratio - 0.25).abs() < 1e-6,
        "rate(gap)/rate(active) = {ratio}"
    );
    // Of each 250 ms gap, the first 100 ms are a refill, the rest a stall.
    let stall = stall.expect("stall ratio");
    assert!((stall - 0.15).abs() < 1e-6, "stall share {stall}");
    assert_eq!(
        tps,
        Some(100.0),
        "one 100-token request released per second"
    );
    assert!(
        spans.is_some_and(|s| s >= 10.0),
        "self-telemetry scraped: {spans:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
