//! `tpsgap bench` end to end: it spawns the real binary as a server, loads
//! it and reports figures a script can parse.

use std::process::Command;

use serde_json::Value;

/// `tpsgap bench --json ARGS` (server flags after `--`), which must
/// succeed, as its one JSON object.
fn bench_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(["bench", "--json"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tpsgap bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench {args:?}: not one JSON object ({e}):\n{stdout}"))
}

/// 61,440 spans take a few 10 ms clock ticks of the server's CPU even in a
/// release build (about 0.45 CPU-s per million spans), so the figure and
/// the part after the load can be told apart where the bench falls back
/// to `/proc`'s ticks (it reads the CPU-time clocks, to the nanosecond,
/// where it can).
#[test]
fn bench_loads_a_spawned_server_and_reports_json() {
    let v = bench_json(&["--spans", "61440", "--runs", "10", "--settle-ms", "300"]);
    assert_eq!(v["spans"], 61440, "{v}");
    assert!(v["retries"].is_u64(), "retries: {v}");
    assert_eq!(v["rejected_spans"], 0, "{v}");
    let cpu = v["cpu_s_per_million_spans"].as_f64().expect("cpu figure");
    assert!(cpu > 0.0, "cpu_s_per_million_spans {cpu}");
    // The CPU after the last response is a part of the whole.
    let settle = v["settle_cpu_s_per_million_spans"]
        .as_f64()
        .expect("settle figure");
    assert!((0.0..cpu).contains(&settle), "settle {settle} of {cpu}");
    let rss = v["peak_rss_mib"].as_f64().expect("rss figure");
    assert!(rss > 0.0, "peak_rss_mib {rss}");
    assert!(v["spans_per_s"].as_f64().expect("throughput") > 0.0, "{v}");
    assert_eq!(v["runs_seen"], 10, "runs listed by the server: {v}");
    assert_eq!(v["repeats"].as_array().map(Vec::len), Some(1), "{v}");
}

/// `serve --bench-stop-after` (for `scripts/bench_stages.sh`): the server
/// answers every export request with success after the stage and keeps
/// nothing, so it lists no run.
#[test]
fn a_server_stopping_after_a_stage_takes_the_load_and_keeps_nothing() {
    for stage in ["receive", "decode", "extract"] {
        let v = bench_json(&[
            "--spans",
            "4096",
            "--runs",
            "4",
            "--",
            "--bench-stop-after",
            stage,
        ]);
        assert_eq!(v["spans"], 4096, "{stage}: {v}");
        assert_eq!(v["rejected_spans"], 0, "{stage}: {v}");
        assert_eq!(v["retries"], 0, "{stage}: {v}");
        assert_eq!(v["runs_seen"], 0, "{stage}: runs listed by the server: {v}");
    }
}

/// `--real-time` sends each export request when the load's time reaches it:
/// 1,000 runs queueing a request every 50 ms are 40,000 spans/s, so the
/// last of 40 requests of 512 spans goes 39 × 512 / 40,000 = 0.4992 s after
/// the first, and the whole send takes at least that long.
#[test]
fn real_time_paces_the_load_at_its_own_rate() {
    let v = bench_json(&["--spans", "20480", "--runs", "1000", "--real-time"]);
    assert_eq!(v["real_time_spans_per_s"], 40000.0, "{v}");
    assert_eq!(v["export_requests"], 40, "{v}");
    assert_eq!(v["rejected_spans"], 0, "{v}");
    let wall = v["repeats"][0]["wall_s"].as_f64().expect("wall time");
    assert!(wall >= 0.4992, "sent in {wall} s, before the load's time");
    // Without it, the same load carries no pace.
    let fast = bench_json(&["--spans", "20480", "--runs", "1000"]);
    assert!(fast["real_time_spans_per_s"].is_null(), "{fast}");
}
