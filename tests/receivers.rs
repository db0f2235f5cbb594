//! The OTLP receivers' answers: content types, partial success, error codes,
//! limits, and a paused-time run of the service's watermark and idle paths.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::{header, http_post, sample, TestServer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tpsgap::live::LiveConfig;
use tpsgap::model::Stamp;
use tpsgap::serve::ServeConfig;
use tpsgap::testutil::{export, kv_int, kv_str, request_span};
use tpsgap::window::WindowConfig;

const T0: i64 = 1_800_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

async fn start(cfg: ServeConfig) -> TestServer {
    TestServer::start(cfg).await
}

fn good_and_bad() -> ExportTraceServiceRequest {
    let good = request_span(
        "r",
        "ok",
        &[(Stamp::Queued, T0), (Stamp::Released, T0 + SEC)],
        vec![],
        1,
    );
    let bad = request_span(
        "r",
        "bad",
        &[(Stamp::Queued, T0)],
        vec![kv_str("admitted_at", "soon")],
        2,
    );
    export(vec![good, bad])
}

fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(b, 3).expect("zstd")
}

/// A compressor of request bodies.
type Compress = fn(&[u8]) -> Vec<u8>;

fn zlib(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("zlib");
    e.finish().expect("zlib")
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_receiver_answers_in_kind_and_maps_errors() {
    let s = start(ServeConfig {
        max_message: 64 * 1024,
        ..ServeConfig::default()
    })
    .await;
    let http = s.http;
    tokio::task::spawn_blocking(move || {
        let pb = good_and_bad().encode_to_vec();
        let proto = [("Content-Type", "application/x-protobuf")];
        let (code, h, body) = http_post(http, "/v1/traces", &proto, &pb);
        assert_eq!(code, 200);
        assert_eq!(header(&h, "content-type"), Some("application/x-protobuf"));
        let resp = ExportTraceServiceResponse::decode(&body[..]).expect("protobuf response");
        let ps = resp.partial_success.expect("partial success");
        assert_eq!(ps.rejected_spans, 1);
        assert!(
            ps.error_message.contains("attribute `admitted_at`"),
            "{}",
            ps.error_message
        );

        let json = serde_json::to_vec(&good_and_bad()).expect("json");
        let jh = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ];
        let (code, h, body) = http_post(http, "/v1/traces", &jh, &gzip(&json));
        assert_eq!(code, 200);
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json response");
        // proto3 JSON allows an int64 as a number or a string.
        let n = &v["partialSuccess"]["rejectedSpans"];
        assert!(n == 1 || n == "1", "{v}");

        let clean = serde_json::to_vec(&export(vec![])).expect("json");
        let (code, _, body) = http_post(
            http,
            "/v1/traces",
            &[("Content-Type", "application/json")],
            &clean,
        );
        assert_eq!((code, body), (200, b"{}".to_vec()));

        // Undecodable bodies: 400 with a google.rpc.Status in kind.
        let (code, h, body) = http_post(http, "/v1/traces", &proto, &[0x0a, 0xff, 0xff, 0x01]);
        assert_eq!(code, 400);
        assert_eq!(header(&h, "content-type"), Some("application/x-protobuf"));
        assert!(!body.is_empty());
        let (code, _, body) = http_post(
            http,
            "/v1/traces",
            &[("Content-Type", "application/json")],
            b"{\"resourceSpans\": [",
        );
        assert_eq!(code, 400);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json status");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or("")
                .contains("cannot decode"),
            "{v}"
        );
        let (code, _, _) = http_post(http, "/v1/traces", &jh, &gzip(&json)[..20]);
        assert_eq!(code, 400, "truncated gzip");
        // zstd, as the Collector's otlphttp exporter can send it, and
        // deflate (zlib's format), as the OpenTelemetry SDKs send it, also
        // under its other name: taken, cut short 400, a bomb 413.
        let zstd_deflate_zlib: [(&str, Compress); 3] =
            [("zstd", zstd), ("deflate", zlib), ("zlib", zlib)];
        for (name, compress) in zstd_deflate_zlib {
            let zh = [
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", name),
            ];
            let (code, _, body) = http_post(http, "/v1/traces", &zh, &compress(&pb));
            assert_eq!(code, 200, "{name}");
            let resp = ExportTraceServiceResponse::decode(&body[..]).expect("protobuf response");
            assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));
            let (code, _, body) = http_post(http, "/v1/traces", &zh, &compress(&pb)[..20]);
            assert_eq!(code, 400, "truncated {name}");
            let status = tonic_types::pb::Status::decode(&body[..]).expect("a google.rpc.Status");
            assert!(
                status
                    .message
                    .ends_with(&format!("{name}: compressed stream ends too soon")),
                "{}",
                status.message
            );
            let (code, _, _) = http_post(http, "/v1/traces", &zh, &compress(&vec![b' '; 1 << 20]));
            assert_eq!(code, 413, "{name}: decompressed size counts");
        }
        // snappy (which the Collector can be told to send) is not taken:
        // 415, naming what is.
        let (code, _, body) = http_post(
            http,
            "/v1/traces",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
            ],
            &pb,
        );
        assert_eq!(code, 415);
        let status = tonic_types::pb::Status::decode(&body[..]).expect("a google.rpc.Status");
        assert!(
            status.message.ends_with("use gzip, zstd, deflate or none"),
            "{}",
            status.message
        );
        // Wrong type or encoding: 415. Too large: 413.
        let (code, _, _) = http_post(http, "/v1/traces", &[("Content-Type", "text/plain")], b"hi");
        assert_eq!(code, 415);
        let (code, _, _) = http_post(
            http,
            "/v1/traces",
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "br"),
            ],
            b"{}",
        );
        assert_eq!(code, 415);
        let big = vec![b' '; 100 * 1024];
        let (code, _, _) = http_post(
            http,
            "/v1/traces",
            &[("Content-Type", "application/json")],
            &big,
        );
        assert_eq!(code, 413);
        let bomb = gzip(&vec![b' '; 1 << 20]);
        let (code, _, _) = http_post(http, "/v1/traces", &jh, &bomb);
        assert_eq!(code, 413, "decompressed size counts");
    })
    .await
    .expect("checks");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_receiver_partial_success_limits_and_refusals() {
    let s = start(ServeConfig {
        max_message: 64 * 1024,
        live: LiveConfig {
            max_runs: 1,
            ..LiveConfig::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let mut c = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect")
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let resp = c.export(good_and_bad()).await.expect("export").into_inner();
    assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));
    // A second run is over --max-runs 1: retryable UNAVAILABLE.
    let other = export(vec![request_span(
        "other",
        "x",
        &[(Stamp::Queued, T0)],
        vec![],
        3,
    )]);
    let err = c.export(other).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("--max-runs"), "{}", err.message());
    // Over the message limit (uncompressed size 64 KiB): tonic answers
    // INVALID_ARGUMENT (not retryable), not the gRPC library's OUT_OF_RANGE.
    let mut c = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect");
    let big = export(vec![request_span(
        "r",
        "big",
        &[(Stamp::Queued, T0)],
        vec![kv_str("pad", &"x".repeat(70_000))],
        4,
    )]);
    let err = c.export(big).await.expect_err("too large");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Compressed messages are decompressed by tpsgap: one that
    // decompresses past the limit, or whose data does not match its
    // checksum, is INVALID_ARGUMENT (not retryable), and the service stays
    // up.
    let spaces = vec![b' '; 1 << 20];
    for (encoding, bomb) in [
        ("gzip", gzip(&spaces)),
        ("zstd", zstd(&spaces)),
        ("deflate", zlib(&spaces)),
    ] {
        let status = raw_call(s.grpc, encoding, &bomb).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{encoding}");
        assert!(
            status
                .message()
                .contains("inflates to more than 65536 bytes"),
            "{encoding}: {}",
            status.message()
        );
    }
    let mut corrupt = gzip(&good_and_bad().encode_to_vec());
    let crc = corrupt.len() - 8;
    corrupt[crc] ^= 1;
    let status = raw_call(s.grpc, "gzip", &corrupt).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("compressed message: "),
        "{}",
        status.message()
    );
    let pb = good_and_bad().encode_to_vec();
    assert_eq!(
        raw_call(s.grpc, "gzip", &gzip(&pb)).await.code(),
        tonic::Code::Ok
    );
    // zstd likewise: what tonic's client sends, a frame cut short.
    let mut c = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect")
        .send_compressed(tonic::codec::CompressionEncoding::Zstd);
    let resp = c.export(good_and_bad()).await.expect("export").into_inner();
    assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));
    let status = raw_call(s.grpc, "zstd", &zstd(&pb)[..20]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // deflate (zlib's format, as gRPC's "deflate" is): taken; cut short,
    // INVALID_ARGUMENT. snappy is not taken: UNIMPLEMENTED.
    assert_eq!(
        raw_call(s.grpc, "deflate", &zlib(&pb)).await.code(),
        tonic::Code::Ok
    );
    let status = raw_call(s.grpc, "deflate", &zlib(&pb)[..20]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .ends_with("compressed stream ends too soon"),
        "{}",
        status.message()
    );
    let status = raw_call(s.grpc, "snappy", &pb).await;
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    s.stop().await;
}

/// One gRPC call whose message is `z`, sent as it is with the compressed
/// flag and `grpc-encoding: <encoding>`; the status it is answered with.
async fn raw_call(addr: SocketAddr, encoding: &str, z: &[u8]) -> tonic::Status {
    use http_body_util::{BodyExt, Full};
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut framed = vec![1u8];
    framed.extend_from_slice(&(z.len() as u32).to_be_bytes());
    framed.extend_from_slice(z);
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", encoding)
        .body(tonic::body::Body::new(Full::new(bytes::Bytes::from(
            framed,
        ))))
        .expect("request");
    let resp = tower::ServiceExt::oneshot(ch, req).await.expect("answered");
    let (head, body) = resp.into_parts();
    let trailers = body.collect().await.expect("body").trailers().cloned();
    tonic::Status::from_header_map(&head.headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("a grpc-status")
}

async fn get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// The service's clock paths under tokio's paused time: windows close as
/// the watermark passes, a late span is counted, idle runs are finalized.
#[tokio::test(start_paused = true)]
async fn watermark_late_span_and_idle_timeout_with_paused_time() {
    let s = start(ServeConfig {
        live: LiveConfig {
            window: WindowConfig {
                window: 5 * SEC,
                step: 5 * SEC,
                ..WindowConfig::default()
            },
            lateness: 2 * SEC,
            idle_timeout: Duration::from_secs(60),
            ..LiveConfig::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let mut c = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect");
    let span = |id: &str, q: i64, a: i64, r: i64, n: u64| {
        request_span(
            "p",
            id,
            &[
                (Stamp::Queued, T0 + q * SEC),
                (Stamp::Admitted, T0 + a * SEC),
                (Stamp::Released, T0 + r * SEC),
            ],
            vec![kv_int("cap", 1)],
            n,
        )
    };
    c.export(export(vec![
        span("A", 0, 0, 4, 1),
        span("B", 1, 4, 6, 2),
        span("D", 6, 8, 10, 3),
    ]))
    .await
    .expect("export");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // max 10 s − lateness 2 s = 8 s: [0,5) is final, [5,10) is not.
    let v = get(s.api, "/api/v1/runs/p").await;
    assert_eq!(v["state"], "live");
    assert_eq!(v["windows"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["windows"][0]["gap_seconds"], 0.0);
    // A span for the exported window [0,5) is late.
    c.export(export(vec![span("C", 2, 3, 3, 4)]))
        .await
        .expect("export");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let v = get(s.api, "/api/v1/runs/p").await;
    assert_eq!(v["late_spans"], 1);
    assert_eq!(v["state"], "live", "30 s idle");
    tokio::time::sleep(Duration::from_secs(31)).await;
    let v = get(s.api, "/api/v1/runs/p").await;
    assert_eq!(v["state"], "final", "61 s idle");
    let gaps: Vec<f64> = v["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .filter_map(|w| w["gap_seconds"].as_f64())
        .collect();
    assert_eq!(gaps, vec![0.0, 2.0]);
    assert_eq!(v["gaps"][0]["cause"], "stall");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_give_specific_answers() {
    use tonic_types::StatusExt;
    let s = start(ServeConfig {
        max_spans_per_batch: 3,
        max_attribute_length: 100,
        live: LiveConfig {
            max_runs: 1,
            max_requests_per_run: 2,
            ..LiveConfig::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let mut c = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect");
    let span = |id: &str, n: u64, extra| {
        request_span("r", id, &[(Stamp::Queued, T0 + n as i64 * SEC)], extra, n)
    };
    // Per-run request limit and attribute length: partial success, per span.
    let resp = c
        .export(export(vec![
            span("a", 1, vec![]),
            span("b", 2, vec![]),
            span("c", 3, vec![]),
        ]))
        .await
        .expect("export")
        .into_inner();
    let ps = resp.partial_success.expect("partial success");
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message.contains("--max-requests-per-run"),
        "{}",
        ps.error_message
    );
    let resp = c
        .export(export(vec![
            span("a", 4, vec![kv_str("note", &"x".repeat(101))]),
            span("b", 5, vec![kv_str("note", &"x".repeat(100))]),
        ]))
        .await
        .expect("export")
        .into_inner();
    let ps = resp.partial_success.expect("partial success");
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message
            .contains("attribute `note`: value longer than 100 bytes (--max-attribute-length)"),
        "{}",
        ps.error_message
    );
    // Too many spans in one request: not retryable.
    let big = export((10..14).map(|n| span("a", n, vec![])).collect());
    let err = c.export(big.clone()).await.expect_err("too many spans");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("--max-spans-per-batch"));
    assert!(err.get_details_retry_info().is_none());
    // Over --max-runs: UNAVAILABLE with a RetryInfo delay.
    let other = export(vec![request_span(
        "other",
        "x",
        &[(Stamp::Queued, T0)],
        vec![],
        20,
    )]);
    let err = c.export(other.clone()).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let delay = err.get_details_retry_info().and_then(|r| r.retry_delay);
    assert_eq!(delay, Some(Duration::from_secs(1)));
    let http = s.http;
    tokio::task::spawn_blocking(move || {
        let pb = [("Content-Type", "application/x-protobuf")];
        let (code, h, _) = http_post(http, "/v1/traces", &pb, &other.encode_to_vec());
        assert_eq!(code, 503);
        assert_eq!(header(&h, "retry-after"), Some("1"));
        let (code, h, _) = http_post(http, "/v1/traces", &pb, &big.encode_to_vec());
        assert_eq!(code, 400);
        assert_eq!(header(&h, "retry-after"), None);
    })
    .await
    .expect("http checks");
    let text = tokio::task::spawn_blocking({
        let api = s.api;
        move || common::http_get(api, "/metrics").1
    })
    .await
    .expect("scrape");
    let counter = |name: &str| sample(&text, name);
    assert_eq!(counter("tpsgap_spans_limited_total"), Some(1.0));
    assert_eq!(counter("tpsgap_spans_rejected_total"), Some(1.0));
    assert_eq!(
        counter("tpsgap_spans_refused_total"),
        Some(4.0 + 1.0 + 1.0 + 4.0)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_with_retry_delays() {
    use tonic_types::StatusExt;
    let s = start(ServeConfig {
        max_spans_per_second: 10,
        ..ServeConfig::default()
    })
    .await;
    let mut c = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect");
    let batch = |from: u64| {
        export(
            (from..from + 8)
                .map(|n| request_span("r", &n.to_string(), &[(Stamp::Queued, T0)], vec![], n))
                .collect(),
        )
    };
    c.export(batch(0)).await.expect("within the burst");
    let err = c.export(batch(100)).await.expect_err("over the rate");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let delay = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    // 2 tokens left, 8 needed, 10 per second: about 0.6 s.
    assert!(
        delay > Duration::from_millis(400) && delay <= Duration::from_millis(650),
        "{delay:?}"
    );
    tokio::time::sleep(delay).await;
    c.export(batch(100)).await.expect("after the delay");
    let http = s.http;
    tokio::task::spawn_blocking(move || {
        let (code, h, _) = http_post(
            http,
            "/v1/traces",
            &[("Content-Type", "application/x-protobuf")],
            &batch(200).encode_to_vec(),
        );
        assert_eq!(code, 429);
        assert_eq!(header(&h, "retry-after"), Some("1"));
    })
    .await
    .expect("http");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_runs_leave_metrics() {
    let mut cfg = common::example_config();
    cfg.live.keep_final_runs = 1;
    let s = TestServer::start(cfg).await;
    let (http, api) = (s.http, s.api);
    tokio::task::spawn_blocking(move || {
        let body =
            std::fs::read_to_string(common::root().join("examples/small.jsonl")).expect("example");
        let send = |run: &str| {
            let b = body.replace(
                "\"stringValue\":\"example\"}}",
                &format!("\"stringValue\":\"{run}\"}}}}"),
            );
            assert_eq!(
                http_post(
                    http,
                    "/v1/traces",
                    &[("Content-Type", "application/json")],
                    b.as_bytes()
                )
                .0,
                200
            );
            common::final_run(api, run);
        };
        send("first");
        let text = common::http_get(api, "/metrics").1;
        assert!(text.contains("llm_gap_fraction{run_id=\"first\"}"));
        send("second");
        // Keeping one finished run, `first` left the API: its series go too.
        let gone = common::wait_for(Duration::from_secs(10), || {
            let text = common::http_get(api, "/metrics").1;
            (!text.contains("run_id=\"first\"")).then_some(text)
        })
        .expect("first's series removed");
        assert!(gone.contains("llm_gap_fraction{run_id=\"second\"} 0.4"));
        assert!(
            gone.contains("llm_requests_total{run_id=\"second\",outcome=\"success\"} 3"),
            "{gone}"
        );
    })
    .await
    .expect("checks");
    s.stop().await;
}
