//! `--wal-dir`: a `tpsgap serve` killed with SIGKILL in the middle of a
//! stream and restarted gives the same final report as a run that was never
//! interrupted; so does a SIGTERM (checkpoint) and a periodic checkpoint
//! followed by a crash.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{assert_same, final_run, http_get, ServeProc};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;
use tpsgap::extract::Extractor;
use tpsgap::join::Store;
use tpsgap::sim::{batches, simulate, spans, SimConfig, SpanMode};
use tpsgap::window::WindowConfig;

const SEC: i64 = 1_000_000_000;

fn start(dir: &Path, checkpoint: &str) -> ServeProc {
    let mut args: Vec<std::ffi::OsString> = [
        "--window",
        "5s",
        "--step",
        "5s",
        "--lateness",
        "1h",
        "--run-idle-timeout",
        "3s",
        "--checkpoint-interval",
        checkpoint,
        "--wal-dir",
    ]
    .map(Into::into)
    .into();
    args.push(dir.into());
    tokio::task::block_in_place(|| ServeProc::start(args))
}

async fn send(grpc: SocketAddr, reqs: &[ExportTraceServiceRequest]) {
    let mut c = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    for r in reqs {
        c.export(r.clone()).await.expect("export acknowledged");
    }
}

/// The stream, and the report of an uninterrupted offline analysis of it.
fn stream(run: &str) -> (Vec<ExportTraceServiceRequest>, Value) {
    let cfg = SimConfig {
        run_id: run.into(),
        duration: 40 * SEC,
        stalls: vec![(15 * SEC, 3 * SEC)],
        ..SimConfig::default()
    };
    let sim = simulate(&cfg);
    let reqs = batches(&spans(&sim, &cfg, SpanMode::Two), 64);
    let store = Store::new();
    let x = Extractor::default();
    for r in &reqs {
        let lean = tpsgap::lean::ExportTraceServiceRequest::from(r.clone());
        x.request(&lean, |e| store.apply(&e));
    }
    let rep = store.report(&WindowConfig {
        window: 5 * SEC,
        step: 5 * SEC,
        ..WindowConfig::default()
    });
    let want = serde_json::to_value(&rep.runs[0]).expect("json");
    (reqs, want)
}

fn wal_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tpsgap-wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn finish(s: ServeProc, run: &str, want: &Value) {
    let api = s.api;
    let id = run.to_string();
    let got = tokio::task::spawn_blocking(move || final_run(api, &id))
        .await
        .expect("final");
    assert_same(&got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_gives_the_uninterrupted_report() {
    let (reqs, want) = stream("crash");
    assert!(
        want["gaps"].as_array().is_some_and(|g| !g.is_empty()),
        "the stream has a gap"
    );
    let dir = wal_dir("kill");
    let mut s = start(&dir, "1h");
    let half = reqs.len() / 2;
    send(s.grpc, &reqs[..half]).await;
    s.child.kill().expect("SIGKILL");
    s.child.wait().expect("reaped");
    let s = start(&dir, "1h");
    send(s.grpc, &reqs[half..]).await;
    finish(s, "crash", &want).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_and_a_restart_resumes_the_run() {
    let (reqs, want) = stream("term");
    let dir = wal_dir("term");
    let mut s = start(&dir, "1h");
    let third = reqs.len() / 3;
    send(s.grpc, &reqs[..third]).await;
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = s.child.wait().expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.join("checkpoint.json").exists(),
        "SIGTERM wrote a checkpoint"
    );
    let logged: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(logged, 0, "the checkpoint truncated the log");
    let s = start(&dir, "1h");
    // The run is still live after the restart.
    let (code, body) = http_get(s.api, "/api/v1/runs/term");
    assert_eq!(code, 200);
    assert!(body.contains("\"state\":\"live\""), "{body}");
    send(s.grpc, &reqs[third..]).await;
    finish(s, "term", &want).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoint_then_sigkill_recovers_checkpoint_and_log_tail() {
    let (reqs, want) = stream("tail");
    let dir = wal_dir("tail");
    let mut s = start(&dir, "1s");
    let third = reqs.len() / 3;
    send(s.grpc, &reqs[..third]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        dir.join("checkpoint.json").exists(),
        "a periodic checkpoint ran"
    );
    send(s.grpc, &reqs[third..2 * third]).await;
    s.child.kill().expect("SIGKILL");
    s.child.wait().expect("reaped");
    let s = start(&dir, "1s");
    send(s.grpc, &reqs[2 * third..]).await;
    finish(s, "tail", &want).await;
    std::fs::remove_dir_all(&dir).ok();
}
