//! A real Prometheus server (Debian's `prometheus`) scrapes a real
//! `tpsgap serve` while a run streams in real time with a known idle gap:
//! every second, the slot freed at the second's start stays empty for
//! 250 ms while the next request waits (cap 1), so gap_fraction = 0.25.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{free_port, http_get, wait_for};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::Value;
use tpsgap::model::Stamp;
use tpsgap::testutil::{export, kv_int, request_span};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_gap_fraction_and_the_counter_ratio_agrees() {
    let (grpc, http, api, prom_port) = (free_port(), free_port(), free_port(), free_port());
    let api_addr: SocketAddr = format!("127.0.0.1:{api}").parse().expect("addr");
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().expect("addr");
    let _tpsgap = Proc(
        Command::new(env!("CARGO_BIN_EXE_tpsgap"))
            .args([
                "serve",
                "--window",
                "1s",
                "--step",
                "1s",
                "--lateness",
                "0s",
            ])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .stderr(Stdio::null())
            .spawn()
            .expect("start tpsgap"),
    );
    let dir = std::env::temp_dir().join(format!("tpsgap-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tpsgap\n    static_configs:\n      - targets: ['127.0.0.1:{api}']\n"
        ),
    )
    .expect("config");
    let _prom = Proc(
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
            (http_get(api_addr, "/healthz").0 == 200 && http_get(prom_addr, "/-/ready").0 == 200)
                .then_some(())
        })
    })
    .await
    .expect("join");
    assert!(ready.is_some(), "tpsgap and prometheus come up");

    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
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
        client.export(export(vec![span])).await.expect("export");
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
        (gauge, ratio, stall, tps, spans)
    })
    .await
    .expect("join");
    let (gauge, ratio, stall, tps, spans) = results;
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
