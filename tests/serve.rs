//! End to end: `tpsgap serve` fed by real OpenTelemetry SDK exporters
//! (Python gRPC + HTTP, Rust opentelemetry-otlp), read back over the JSON
//! API, and pushing to an OTLP sink. Expected values are the worked
//! example's hand calculation (examples/small.expected.json).

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    assert_same, example_config, example_run, final_run, http_get, node, python, root, sample,
    TestServer,
};
use serde_json::Value;
use tpsgap::serve::ServeConfig;
use tpsgap::window::WindowConfig;

async fn start(cfg: ServeConfig) -> TestServer {
    TestServer::start(cfg).await
}

/// Runs a worked-example sender (`tests/<sdk>/send_example.*`) with `args`
/// under `program`; it must succeed.
fn run_sender(program: std::path::PathBuf, script: &str, args: &[&str]) {
    let out = Command::new(&program)
        .arg(root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program:?} (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python SDK's `protocol` exporter sends the example to `endpoint`
/// as run `run_id`, compressed with `compression`.
fn send_python(protocol: &str, endpoint: &str, run_id: &str, compression: &str) {
    let args = [
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--run-id",
        run_id,
        "--compression",
        compression,
    ];
    run_sender(python(), "tests/python/send_example.py", &args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_grpc_and_http_exporters_give_the_hand_computed_report() {
    let s = start(example_config()).await;
    let (grpc, http, api) = (s.grpc, s.http, s.api);
    tokio::task::spawn_blocking(move || {
        // gzip (the SDK's usual choice, as the Collector's) and deflate,
        // the SDK's other compression, one run each.
        for (protocol, endpoint) in [
            ("grpc", format!("http://{grpc}")),
            ("http", format!("http://{http}/v1/traces")),
        ] {
            for (compression, run_id) in [
                ("gzip", format!("py-{protocol}")),
                ("deflate", format!("py-{protocol}-deflate")),
            ] {
                send_python(protocol, &endpoint, &run_id, compression);
            }
        }
        for id in ["py-grpc", "py-grpc-deflate", "py-http", "py-http-deflate"] {
            assert_same(&final_run(api, id), &example_run(id));
        }
        let (code, body) = http_get(api, "/api/v1/runs");
        assert_eq!(code, 200);
        let list: Value = serde_json::from_str(&body).expect("json");
        let ids: Vec<&str> = list["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .filter_map(|r| r["run_id"].as_str())
            .collect();
        assert_eq!(
            ids,
            vec!["py-grpc", "py-grpc-deflate", "py-http", "py-http-deflate"]
        );
        assert_eq!(list["runs"][0]["state"], "final");
        assert_eq!(list["runs"][0]["totals"]["gap_fraction"], 0.2);
        let (code, body) = http_get(api, "/api/v1/runs/nope");
        assert_eq!(code, 404, "{body}");
    })
    .await
    .expect("checks");
    s.stop().await;
}

/// rotel's agent binary, from its Python package in the test venv
/// (`tests/requirements.txt`), or `TPSGAP_TEST_ROTEL`.
fn rotel() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TPSGAP_TEST_ROTEL") {
        return p.into();
    }
    let out = Command::new(python())
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("run python (scripts/test.sh installs the venv)");
    assert!(out.status.success(), "rotel is not installed in the venv");
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// A collector in front of tpsgap, as users run one: the Python SDK
/// exports to rotel (a Rust OpenTelemetry collector), whose OTLP exporter
/// forwards to tpsgap over gRPC or HTTP, each to its own run; the reports
/// are the hand-computed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_in_front_forwards_over_grpc_and_http() {
    let s = start(example_config()).await;
    let (grpc, http, api) = (s.grpc, s.http, s.api);
    tokio::task::spawn_blocking(move || {
        let dir = std::env::temp_dir().join(format!("tpsgap-rotel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (protocol, to) in [("grpc", grpc), ("http", http)] {
            let [in_grpc, in_http] = common::free_ports();
            let collector = Command::new(rotel())
                .args(["start", "--exporter", "otlp"])
                .args(["--otlp-exporter-protocol", protocol])
                .args(["--otlp-exporter-endpoint", &format!("http://{to}")])
                .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{in_grpc}")])
                .args(["--otlp-http-endpoint", &format!("127.0.0.1:{in_http}")])
                .arg("--pid-file")
                .arg(dir.join(format!("{protocol}.pid")))
                .arg("--log-file")
                .arg(dir.join(format!("{protocol}.log")))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start rotel");
            let _collector = common::Killed(collector);
            let listen = format!(
                "127.0.0.1:{}",
                if protocol == "grpc" { in_grpc } else { in_http }
            );
            common::wait_for(Duration::from_secs(30), || {
                std::net::TcpStream::connect(&listen).ok()
            })
            .expect("rotel listens");
            let endpoint = match protocol {
                "grpc" => format!("http://{listen}"),
                _ => format!("http://{listen}/v1/traces"),
            };
            let run_id = format!("via-collector-{protocol}");
            send_python(protocol, &endpoint, &run_id, "gzip");
            assert_same(&final_run(api, &run_id), &example_run(&run_id));
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("checks");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_exporters_give_the_hand_computed_report() {
    let s = start(example_config()).await;
    let (grpc, http, api) = (s.grpc, s.http, s.api);
    tokio::task::spawn_blocking(move || {
        // Over HTTP: JSON (as browsers and Node services send it), plain
        // and gzip, and protobuf with gzip; over gRPC (grpc-js), gzip and
        // plain: one run each.
        let cases = [
            ("json", "none", "js-json"),
            ("json", "gzip", "js-json-gzip"),
            ("proto", "gzip", "js-proto"),
            ("grpc", "gzip", "js-grpc"),
            ("grpc", "none", "js-grpc-plain"),
        ];
        for (format, compression, run_id) in cases {
            let endpoint = match format {
                "grpc" => format!("http://{grpc}"),
                _ => format!("http://{http}/v1/traces"),
            };
            run_sender(
                node(),
                "tests/node/send_example.cjs",
                &[
                    "--format",
                    format,
                    "--compression",
                    compression,
                    "--endpoint",
                    &endpoint,
                    "--run-id",
                    run_id,
                ],
            );
            assert_same(&final_run(api, run_id), &example_run(run_id));
        }
    })
    .await
    .expect("checks");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_opentelemetry_otlp_exporter_gives_the_hand_computed_report() {
    use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{
        Compression, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
    };

    let s = start(example_config()).await;
    // gRPC with gzip (the exporter's usual choice) and zstd, HTTP protobuf
    // with gzip, and HTTP JSON: one run each.
    let grpc = |c| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", s.grpc))
            .with_compression(c)
            .build()
            .expect("exporter")
    };
    let http = |p, c: Option<Compression>| {
        let b = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://{}/v1/traces", s.http))
            .with_protocol(p);
        match c {
            Some(c) => b.with_compression(c),
            None => b,
        }
        .build()
        .expect("exporter")
    };
    let cases = [
        ("rust-grpc", grpc(Compression::Gzip)),
        ("rust-grpc-zstd", grpc(Compression::Zstd)),
        (
            "rust-http",
            http(Protocol::HttpBinary, Some(Compression::Gzip)),
        ),
        ("rust-http-json", http(Protocol::HttpJson, None)),
    ];
    for (run_id, exporter) in cases {
        // The HTTP exporter's client needs the runtime's reactor, which the
        // batch processor's own thread has not: spans go as they end.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder();
        let provider = if run_id.starts_with("rust-http") {
            provider.with_simple_exporter(exporter)
        } else {
            provider.with_batch_exporter(exporter)
        };
        let provider = provider
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("tpsgap-e2e-rust")
                    .build(),
            )
            .build();
        let api = s.api;
        tokio::task::spawn_blocking(move || {
            let tracer = provider.tracer("tpsgap.e2e");
            let t0 = 1_793_491_200u64;
            let at = |s: u64| UNIX_EPOCH + Duration::from_secs(t0 + s);
            let ns = |s: u64| ((t0 + s) * 1_000_000_000) as i64;
            // The example: (id, queued, admitted, first, last, released, extra, error)
            type Req = (&'static str, [Option<u64>; 5], Vec<KeyValue>, bool);
            let reqs: Vec<Req> = vec![
                (
                    "A",
                    [Some(0), Some(0), Some(1), Some(3), Some(4)],
                    vec![
                        KeyValue::new("output_tokens", 30i64),
                        KeyValue::new("cap", 1i64),
                    ],
                    false,
                ),
                ("B", [Some(1), Some(4), None, None, Some(6)], vec![], false),
                ("C", [Some(2), None, None, None, Some(3)], vec![], true),
                (
                    "D",
                    [Some(6), Some(8), None, None, Some(10)],
                    vec![KeyValue::new("retry_count", 2i64)],
                    false,
                ),
            ];
            for (id, times, extra, error) in reqs {
                let mut attrs = vec![
                    KeyValue::new("run_id", run_id),
                    KeyValue::new("request_id", id),
                ];
                for (st, t) in tpsgap::model::Stamp::ALL.iter().zip(times) {
                    if let Some(t) = t {
                        attrs.push(KeyValue::new(st.attribute(), ns(t)));
                    }
                }
                attrs.extend(extra);
                let known: Vec<u64> = times.iter().flatten().copied().collect();
                let start: SystemTime = at(*known.iter().min().unwrap_or(&0));
                let end: SystemTime = at(*known.iter().max().unwrap_or(&0));
                let mut span = tracer
                    .span_builder("llm.request")
                    .with_start_time(start)
                    .with_attributes(attrs)
                    .start(&tracer);
                if error {
                    span.set_status(Status::error("abandoned"));
                }
                span.end_with_timestamp(end);
            }
            provider.force_flush().expect("flush");
            provider.shutdown().expect("shutdown");
            assert_same(&final_run(api, run_id), &example_run(run_id));
        })
        .await
        .expect("checks");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_preset_in_the_live_service_gives_the_hand_computed_report() {
    let mut cfg = example_config();
    cfg.live.window = WindowConfig {
        window: 10_000_000_000,
        step: 10_000_000_000,
        default_cap: Some(2),
        ..WindowConfig::default()
    };
    cfg.preset = Some(tpsgap::extract::Preset::Vllm);
    let s = start(cfg).await;
    let (http, api) = (s.http, s.api);
    tokio::task::spawn_blocking(move || {
        let body = std::fs::read(root().join("tests/fixtures/vllm.jsonl")).expect("fixture");
        let (code, _, _) = common::http_post(
            http,
            "/v1/traces",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(code, 200);
        let want = common::expected("tests/fixtures/vllm.expected.json")["runs"][0].clone();
        assert_same(&final_run(api, "vllm-0"), &want);
    })
    .await
    .expect("checks");
    s.stop().await;
}

/// Overload: real SDK exporters offer 8,000 spans each, as fast as they can,
/// to a service that takes 2,000 spans/s. Refusals carry retry delays; the
/// exporters retry; in the end every span sent was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_with_retrying_sdk_exporters_loses_nothing() {
    let mut cfg = ServeConfig {
        max_spans_per_second: 2_000,
        ..example_config()
    };
    // Exporters back off between retries: a run must not go idle meanwhile.
    cfg.live.idle_timeout = Duration::from_secs(8);
    let s = start(cfg).await;
    let (grpc, http, api) = (s.grpc, s.http, s.api);
    tokio::task::spawn_blocking(move || {
        for (proto, ep, run) in [
            ("grpc", format!("http://{grpc}"), "load-grpc"),
            ("http", format!("http://{http}/v1/traces"), "load-http"),
        ] {
            let start = std::time::Instant::now();
            let out = Command::new(python())
                .arg(root().join("tests/python/send_load.py"))
                .args(["--protocol", proto, "--endpoint", &ep, "--run-id", run, "--spans", "8000"])
                .output()
                .expect("python");
            let took = start.elapsed().as_secs_f64();
            assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let v = final_run(api, run);
            assert_eq!(v["requests"]["total"], 8000, "{proto}: every span sent was accepted");
            eprintln!(
                "{proto}: 8000 spans through a 2000 spans/s limit in {took:.1} s ({:.0} spans/s held); {}",
                8000.0 / took,
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        let text = http_get(api, "/metrics").1;
        let counter = |name: &str| sample(&text, name).unwrap_or(-1.0);
        assert_eq!(counter("tpsgap_spans_accepted_total"), 16_000.0);
        assert!(counter("tpsgap_spans_refused_total") > 0.0, "the load was over capacity");
    })
    .await
    .expect("checks");
    s.stop().await;
}
