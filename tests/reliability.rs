//! Reliability: the OTLP export survives an endpoint outage, and garbage
//! thrown at both receivers leaves the service up and answering correctly.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use tokio::net::TcpListener;
use tpsgap::live::LiveConfig;
use tpsgap::serve::ServeConfig;
use tpsgap::sim::{batches, simulate, spans, SimConfig, SpanMode};
use tpsgap::window::WindowConfig;

const SEC: i64 = 1_000_000_000;

#[derive(Clone, Default)]
struct Sink {
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().expect("lock").push(r.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves the sink on `addr` until `stop` fires.
async fn sink_on(addr: SocketAddr, sink: Sink) -> tokio::sync::oneshot::Sender<()> {
    let listener = TcpListener::bind(addr).await.expect("bind sink");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                MetricsServiceServer::new(sink)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = rx.await;
                },
            ),
    );
    tx
}

/// Window ends (ns) of the `llm.gap_fraction` points the sink holds for a run.
fn gauge_ends(sink: &Sink, run: &str) -> Vec<u64> {
    let mut ends: Vec<u64> = sink
        .metrics
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|r| r.resource_metrics.iter().flat_map(|rm| rm.scope_metrics.iter().flat_map(|s| s.metrics.clone())))
        .filter(|m| m.name == "llm.system_tps")
        .flat_map(|m| match m.data {
            Some(Data::Gauge(g)) => g.data_points,
            _ => vec![],
        })
        .filter(|p| {
            p.attributes.iter().any(|a| {
                a.key == "run_id"
                    && matches!(a.value.as_ref().and_then(|v| v.value.as_ref()), Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) if s == run)
            })
        })
        .map(|p| p.time_unix_nano)
        .collect();
    ends.sort_unstable();
    ends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_buffered_during_a_10s_outage_all_arrive() {
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("addr");
    let sink = Sink::default();
    let stop_sink = sink_on(sink_addr, sink.clone()).await;

    let cfg = ServeConfig {
        live: LiveConfig {
            window: WindowConfig {
                window: SEC,
                step: SEC,
                ..WindowConfig::default()
            },
            lateness: 5 * SEC,
            ..LiveConfig::default()
        },
        otlp_endpoint: Some(format!("http://{sink_addr}")),
        tick: Duration::from_millis(50),
        ..ServeConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let (grpc, api) = (server.grpc, server.api);

    // A 60 s run (synthetic time), sent in three parts; windows close as the
    // timestamps advance.
    let sim_cfg = SimConfig {
        run_id: "outage".into(),
        duration: 60 * SEC,
        ..SimConfig::default()
    };
    let run = simulate(&sim_cfg);
    let all = spans(&run, &sim_cfg, SpanMode::One);
    let third = all.len() / 3;
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    for req in batches(&all[..third], 64) {
        client.export(req).await.expect("export");
    }
    let before = common::wait_for_async(Duration::from_secs(10), || {
        let n = gauge_ends(&sink, "outage").len();
        async move { (n > 5).then_some(n) }
    })
    .await
    .expect("windows arrive before the outage");

    // The endpoint goes down for 10 s while windows keep closing.
    let _ = stop_sink.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for req in batches(&all[third..2 * third], 64) {
        client.export(req).await.expect("export");
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = gauge_ends(&sink, "outage").len();
    assert!(
        during <= before + 1,
        "the sink was down: {before} → {during}"
    );
    let _stop_again = sink_on(sink_addr, sink.clone()).await;
    for req in batches(&all[2 * third..], 64) {
        client.export(req).await.expect("export");
    }
    let metrics = tokio::task::spawn_blocking(move || common::http_get(api, "/metrics").1)
        .await
        .expect("scrape");
    let counter = |name: &str| common::sample(&metrics, name).unwrap_or(-1.0);
    assert!(
        counter("tpsgap_export_errors_total") > 0.0,
        "the outage was seen"
    );
    assert_eq!(
        counter("tpsgap_export_dropped_total"),
        0.0,
        "nothing dropped"
    );
    // Shutdown finalizes the run and flushes the buffer.
    server.stop().await;

    let got = gauge_ends(&sink, "outage");
    let mut unique = got.clone();
    unique.dedup();
    let first = run.truth.start_unix_s.floor() as i64;
    let last = (run.truth.end_unix_s - 1e-9).floor() as i64;
    let want: Vec<u64> = (first..=last).map(|k| ((k + 1) * SEC) as u64).collect();
    assert_eq!(unique, want, "every window of the run arrived");
    assert_eq!(got.len(), unique.len(), "none twice");
}

/// A gRPC codec that sends raw bytes as the request message, so garbage
/// reaches the server's decoder.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RespDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RespDecoder {
    type Item = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, tonic::Status> {
        use prost::Message;
        Self::Item::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = RespDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RespDecoder {
        RespDecoder
    }
}

async fn raw_grpc(addr: SocketAddr, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = axum::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|_| ())
}

/// A protobuf request whose one span has an attribute nested `depth` arrays
/// deep, written byte by byte (building it as structs would itself recurse).
fn nested_protobuf(depth: usize) -> Vec<u8> {
    fn wrap(tag: u8, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let mut n = inner.len() as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(inner);
        out
    }
    let mut v: Vec<u8> = vec![0x18, 0x01]; // AnyValue { int_value: 1 }
    for _ in 0..depth {
        // AnyValue { array_value (5): ArrayValue { values (1): [v] } }
        v = wrap(0x2a, &wrap(0x0a, &v));
    }
    let kv = [wrap(0x0a, b"deep"), wrap(0x12, &v)].concat(); // KeyValue { key, value }
    let span = wrap(0x4a, &kv); // Span { attributes (9) }
    let scope = wrap(0x12, &span); // ScopeSpans { spans (2) }
    let resource = wrap(0x12, &scope); // ResourceSpans { scope_spans (2) }
    wrap(0x0a, &resource) // ExportTraceServiceRequest { resource_spans (1) }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_both_receivers_leaves_the_service_up() {
    let server = TestServer::start(ServeConfig::default()).await;
    let (grpc, http, api) = (server.grpc, server.http, server.api);

    // gRPC: random bytes, a length prefix of 2 GiB, nesting 10,000 deep.
    for seed in 1..20u64 {
        let err = raw_grpc(grpc, pseudo_random(64 + seed as usize * 37, seed)).await;
        assert!(
            err.is_err_and(|s| s.code() != tonic::Code::Ok),
            "random bytes are refused"
        );
    }
    let huge = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x07, 0x01, 0x02];
    assert!(
        raw_grpc(grpc, huge).await.is_err(),
        "declared length beyond the body"
    );
    assert!(
        raw_grpc(grpc, nested_protobuf(10_000)).await.is_err(),
        "recursion limit"
    );
    // Plain TCP garbage on the gRPC port.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(grpc).await.expect("connect");
        let _ = s.write_all(&pseudo_random(4096, 99)).await;
    }

    let checks = tokio::task::spawn_blocking(move || {
        let post = |ct: &str, ce: Option<&str>, body: &[u8]| {
            let mut h = vec![("Content-Type", ct)];
            if let Some(e) = ce {
                h.push(("Content-Encoding", e));
            }
            common::http_post(http, "/v1/traces", &h, body).0
        };
        for seed in 1..20u64 {
            assert_eq!(post("application/x-protobuf", None, &pseudo_random(100 + seed as usize, seed)), 400);
            assert_eq!(post("application/json", None, &pseudo_random(100, seed)), 400);
        }
        assert_eq!(post("application/x-protobuf", Some("gzip"), &[0x1f, 0x8b, 0x08, 0x00, 1, 2, 3]), 400, "truncated gzip");
        assert_eq!(post("image/png", None, b"\x89PNG"), 415);
        assert_eq!(post("application/x-protobuf", None, &nested_protobuf(10_000)), 400);
        let deep_json = format!("{{\"resourceSpans\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(post("application/json", None, deep_json.as_bytes()), 400, "deeply nested JSON");
        // A declared length far beyond the limit is refused before any read.
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(s, "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 99999999999\r\n\r\nabc").expect("send");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&buf[..n]));
        // Still up: health, and a valid export is taken.
        assert_eq!(common::http_get(api, "/healthz").0, 200);
        let example = std::fs::read(common::root().join("examples/small.jsonl")).expect("example");
        assert_eq!(post("application/json", None, &example), 200);
        let (code, body) = common::http_get(api, "/api/v1/runs/example");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["requests"]["total"], 4);
    })
    .await;
    checks.expect("checks");
    let mut c = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let ok = c
        .export(tpsgap::testutil::export(vec![
            tpsgap::testutil::request_span(
                "g",
                "fine",
                &[(tpsgap::model::Stamp::Queued, 1_800_000_000 * SEC)],
                vec![],
                7,
            ),
        ]))
        .await;
    assert!(ok.is_ok(), "gRPC still takes valid requests");
    server.stop().await;
}

/// Spans are checked as they are read: a request whose second span holds
/// a malformed attribute (a string value re-tagged as a varint) is refused
/// whole at both receivers, and its first, well-formed span is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_span_refuses_its_whole_request() {
    use prost::Message;
    use tpsgap::model::Stamp;
    use tpsgap::testutil::{export, kv_str, request_span};
    let server = TestServer::start(ServeConfig::default()).await;
    let (grpc, http, api) = (server.grpc, server.http, server.api);
    let t = 1_800_000_000 * SEC;
    let req = export(vec![
        request_span("whole-a", "ok", &[(Stamp::Queued, t)], vec![], 1),
        request_span(
            "whole-b",
            "bad",
            &[(Stamp::Queued, t)],
            vec![kv_str("zz", "v")],
            2,
        ),
    ]);
    let good = req.encode_to_vec();
    // The attribute `zz` = "v": key, then the value `0a 01 76` (field 1,
    // length-delimited); `08 01 76` makes field 1 a varint.
    let at = good
        .windows(9)
        .position(|w| w == b"\x0a\x02zz\x12\x03\x0a\x01v")
        .expect("the attribute is encoded as expected");
    let mut bad = good.clone();
    bad[at + 6] = 0x08;
    assert!(
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
            &bad[..]
        )
        .is_err(),
        "prost refuses it too"
    );

    let status = raw_grpc(grpc, bad.clone()).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("not an OTLP trace export: invalid protobuf: wrong wire type"),
        "{}",
        status.message()
    );
    let checks = tokio::task::spawn_blocking(move || {
        let post = |body: &[u8]| {
            let ct = [("Content-Type", "application/x-protobuf")];
            common::http_post(http, "/v1/traces", &ct, body).0
        };
        assert_eq!(post(&bad), 400);
        assert_eq!(
            common::http_get(api, "/api/v1/runs/whole-a").0,
            404,
            "nothing applied"
        );
        assert_eq!(post(&good), 200, "the same request undamaged is taken");
        assert_eq!(common::http_get(api, "/api/v1/runs/whole-a").0, 200);
    })
    .await;
    checks.expect("checks");
    server.stop().await;
}

/// Spans of one run dated two centuries apart (1973 and 2191, both inside
/// the accepted 1970–2200): the run's watermark jumps over some 690
/// million 10 s windows. `tpsgap serve` makes only the latest 100,000 of
/// them final (as a report keeps them), so its tick finishes, `/metrics`
/// shows the run's latest window, and the process stays small.
#[test]
fn spans_two_centuries_apart_leave_the_server_small() {
    let server = common::ServeProc::start(Vec::<&str>::new());
    let span = |id: &str, queued: i64, released: i64, n: u8| {
        let int =
            |k: &str, v: i64| serde_json::json!({"key": k, "value": {"intValue": v.to_string()}});
        serde_json::json!({
            "traceId": "0000000000000000000000000000abc1",
            "spanId": format!("{n:016x}"),
            "name": "llm.request",
            "startTimeUnixNano": queued.to_string(),
            "endTimeUnixNano": released.to_string(),
            "attributes": [
                {"key": "run_id", "value": {"stringValue": "far"}},
                {"key": "request_id", "value": {"stringValue": id}},
                int("queued_at", queued),
                int("admitted_at", queued + SEC),
                int("released_at", released),
                int("cap", 1),
            ],
        })
    };
    let (t1, t2) = (100_000_005 * SEC, 7_000_000_000 * SEC);
    let body = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        span("a", t1, t1 + 3 * SEC, 1),
        span("b", t2, t2 + 3 * SEC, 2),
        span("c", t2 + 100 * SEC, t2 + 107 * SEC, 3),
    ]}]}]});
    let (code, _, _) = common::http_post(
        server.http,
        "/v1/traces",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 200);
    let final_window = common::wait_for(Duration::from_secs(20), || {
        let (code, text) = common::http_get(server.api, "/metrics");
        (code == 200 && text.contains("llm_gap_fraction{run_id=\"far\"")).then_some(())
    });
    let (_, rss_mib) =
        tpsgap::cli::bench::rss_mib(&server.child.id().to_string()).expect("the server's RSS");
    assert!(
        final_window.is_some(),
        "no final window in 20 s:\n{}",
        server.log()
    );
    assert!(rss_mib < 300.0, "the server holds {rss_mib} MiB");
}
