//! The real `tpsgap serve` binary pushes metrics and `llm.idle_gap` spans to
//! an OTLP sink (a tonic server here), and SIGTERM finalizes and flushes
//! everything. Values are the worked example's hand calculation.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http_get, root, wait_for, ServeProc};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value as AnyV, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, Metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Sink {
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        r: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().expect("lock").push(r.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().expect("lock").push(r.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyV> {
    attrs
        .iter()
        .find(|k| k.key == key)
        .and_then(|k| k.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(AnyV::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn num(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => f64::NAN,
    }
}

const T0: u64 = 1_793_491_200_000_000_000;
const S: u64 = 1_000_000_000;

fn load(path: &str) -> Vec<ExportTraceServiceRequest> {
    std::fs::read_to_string(root().join(path))
        .expect("read")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("OTLP JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_gap_spans_reach_the_sink_and_sigterm_flushes() {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sink_addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder()
        .add_service(
            MetricsServiceServer::new(sink.clone())
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(
            TraceServiceServer::new(sink.clone())
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);

    let sink_endpoint = format!("http://{sink_addr}");
    let tpsgap = tokio::task::block_in_place(|| {
        ServeProc::start([
            "--window",
            "5s",
            "--step",
            "5s",
            "--otlp-endpoint",
            &sink_endpoint,
        ])
    });
    let (grpc, api_addr) = (tpsgap.grpc, tpsgap.api);

    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect")
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    for req in load("examples/small.jsonl")
        .into_iter()
        .chain(load("tests/fixtures/two_runs.jsonl"))
    {
        let resp = client.export(req).await.expect("export").into_inner();
        assert!(resp.partial_success.is_none_or(|p| p.rejected_spans == 0));
    }
    // Lateness is 60 s: nothing is final before shutdown.
    let (code, body) =
        tokio::task::spawn_blocking(move || http_get(api_addr, "/api/v1/runs/example"))
            .await
            .expect("join");
    assert_eq!(code, 200);
    let live: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(live["state"], "live");
    assert_eq!(live["windows"], serde_json::json!([]));
    assert_eq!(live["totals"]["gap_seconds"], 2.0);
    assert!(sink.metrics.lock().expect("lock").is_empty());

    let pid = tpsgap.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let mut tpsgap = tpsgap;
    let status = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(20), || {
            tpsgap.child.try_wait().expect("wait")
        })
    })
    .expect("tpsgap exits after SIGTERM");
    assert_eq!(status.code(), Some(0));

    let metrics: Vec<Metric> = sink
        .metrics
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|r| {
            let res = r.resource_metrics[0].resource.as_ref().expect("resource");
            assert_eq!(
                str_attr(&res.attributes, "service.name").as_deref(),
                Some("tpsgap")
            );
            r.resource_metrics
                .iter()
                .flat_map(|rm| rm.scope_metrics.iter().flat_map(|s| s.metrics.clone()))
        })
        .collect();
    let of_run = |name: &str| -> Vec<Metric> {
        metrics.iter().filter(|m| m.name == name).cloned().collect()
    };

    // Gauges: one point per final window of run "example", time = window end.
    let gauge = |name: &str, unit: &str| -> Vec<(u64, u64, f64, usize)> {
        of_run(name)
            .iter()
            .flat_map(|m| {
                assert_eq!(m.unit, unit, "{name}");
                match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.clone(),
                    other => panic!("{name} is not a gauge: {other:?}"),
                }
            })
            .filter(|p| str_attr(&p.attributes, "run_id").as_deref() == Some("example"))
            .map(|p| {
                (
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    num(&p.value),
                    p.exemplars.len(),
                )
            })
            .collect()
    };
    let w0 = (T0, T0 + 5 * S);
    let w1 = (T0 + 5 * S, T0 + 10 * S);
    let vals =
        |v: Vec<(u64, u64, f64, usize)>| v.iter().map(|p| (p.0, p.1, p.2)).collect::<Vec<_>>();
    assert_eq!(
        vals(gauge("llm.gap_fraction", "1")),
        vec![(w0.0, w0.1, 0.0), (w1.0, w1.1, 0.4)]
    );
    assert_eq!(
        vals(gauge("llm.backlog_fraction", "1")),
        vec![(w0.0, w0.1, 0.6), (w1.0, w1.1, 0.4)]
    );
    assert_eq!(
        vals(gauge("llm.utilization", "1")),
        vec![(w0.0, w0.1, 1.0), (w1.0, w1.1, 0.6)]
    );
    assert_eq!(
        vals(gauge("llm.system_tps", "{token}/s")),
        vec![(w0.0, w0.1, 6.0), (w1.0, w1.1, 0.0)]
    );
    assert_eq!(
        vals(gauge("llm.success_rate", "1")),
        vec![(w0.0, w0.1, 0.5), (w1.0, w1.1, 1.0)]
    );
    assert_eq!(
        vals(gauge("llm.retry_rate", "1")),
        vec![(w0.0, w0.1, 0.0), (w1.0, w1.1, 0.0)]
    );
    // Exemplar of the gap window: D, the request waiting in the gap [6, 8).
    let gap_points: Vec<_> = of_run("llm.gap_fraction")
        .iter()
        .flat_map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.clone(),
            _ => vec![],
        })
        .filter(|p| {
            p.time_unix_nano == w1.1
                && str_attr(&p.attributes, "run_id").as_deref() == Some("example")
        })
        .collect();
    let ex = &gap_points[0].exemplars;
    assert_eq!(ex.len(), 1);
    assert_eq!(tpsgap::model::hex(&ex[0].span_id), "0000000000000004");
    assert_eq!(
        tpsgap::model::hex(&ex[0].trace_id),
        "0000000000000000000000000000abc4"
    );

    // Counters: cumulative, monotonic; the last point of each series counts.
    let sum = |name: &str, unit: &str, key: &str, val: &str| -> f64 {
        let pts: Vec<_> = of_run(name)
            .iter()
            .flat_map(|m| {
                assert_eq!(m.unit, unit, "{name}");
                match &m.data {
                    Some(Data::Sum(s)) => {
                        assert!(s.is_monotonic);
                        assert_eq!(s.aggregation_temporality, 2, "cumulative");
                        s.data_points.clone()
                    }
                    other => panic!("{name} is not a sum: {other:?}"),
                }
            })
            .filter(|p| str_attr(&p.attributes, "run_id").as_deref() == Some("example"))
            .filter(|p| key.is_empty() || str_attr(&p.attributes, key).as_deref() == Some(val))
            .collect();
        let last = pts
            .last()
            .unwrap_or_else(|| panic!("no {name} {key}={val}"));
        assert!(
            pts.iter()
                .all(|p| p.start_time_unix_nano == last.start_time_unix_nano),
            "stable start time"
        );
        num(&last.value)
    };
    assert_eq!(sum("llm.requests", "{request}", "outcome", "success"), 3.0);
    assert_eq!(sum("llm.requests", "{request}", "outcome", "failure"), 1.0);
    assert_eq!(
        sum("llm.tokens", "{token}", "gen_ai.token.type", "output"),
        30.0
    );
    assert_eq!(sum("llm.retries", "{retry}", "", ""), 2.0);
    assert!((sum("llm.gap.time", "s", "cause", "stall") - 1.9).abs() < 1e-12);
    assert!((sum("llm.gap.time", "s", "cause", "refill") - 0.1).abs() < 1e-12);
    assert_eq!(sum("llm.gap.time", "s", "cause", "under_cap"), 0.0);
    assert_eq!(sum("llm.backlog.time", "s", "", ""), 5.0);
    assert_eq!(sum("llm.active.time", "s", "", ""), 10.0);

    // Histograms: successful requests A, B, D: t_queue 0, 3, 2.
    let hist = of_run("llm.request.queue_time");
    let pts: Vec<_> = hist
        .iter()
        .flat_map(|m| {
            assert_eq!(m.unit, "s");
            match &m.data {
                Some(Data::Histogram(h)) => h.data_points.clone(),
                other => panic!("not a histogram: {other:?}"),
            }
        })
        .filter(|p| str_attr(&p.attributes, "run_id").as_deref() == Some("example"))
        .collect();
    let p = pts.last().expect("queue_time point");
    assert_eq!(
        (p.count, p.sum, p.min, p.max),
        (3, Some(5.0), Some(0.0), Some(3.0))
    );
    assert_eq!(p.explicit_bounds.len() + 1, p.bucket_counts.len());
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 3);
    assert!(p.exemplars.len() <= 5 && !p.exemplars.is_empty());
    let tpot = of_run("llm.request.time_per_output_token");
    assert_eq!(tpot[0].unit, "s");

    // Gap spans: one trace per run, derived from the run id.
    let spans: Vec<Span> = sink
        .traces
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|r| {
            r.resource_spans
                .iter()
                .flat_map(|rs| rs.scope_spans.iter().flat_map(|s| s.spans.clone()))
        })
        .collect();
    let of = |run: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| str_attr(&s.attributes, "run_id").as_deref() == Some(run))
            .collect()
    };
    let ex = of("example");
    assert_eq!(ex.len(), 1);
    let g = ex[0];
    assert_eq!(g.name, "llm.idle_gap");
    assert_eq!(
        (g.start_time_unix_nano, g.end_time_unix_nano),
        (T0 + 6 * S, T0 + 8 * S)
    );
    assert_eq!(
        attr(&g.attributes, "max_queue_depth"),
        Some(&AnyV::IntValue(1))
    );
    assert_eq!(str_attr(&g.attributes, "cause").as_deref(), Some("stall"));
    assert_eq!(
        g.trace_id,
        tpsgap::export::otlp::gap_trace_id("example").to_vec()
    );
    assert_eq!(g.links.len(), 1);
    assert_eq!(tpsgap::model::hex(&g.links[0].span_id), "0000000000000004");
    let b = of("run-b");
    assert_eq!(b.len(), 2, "run-b has two gaps");
    assert_eq!(
        b[0].trace_id, b[1].trace_id,
        "all gaps of a run in one trace"
    );
    assert_ne!(b[0].trace_id, g.trace_id);
    assert_ne!(b[0].span_id, b[1].span_id);
    let causes: Vec<String> = b
        .iter()
        .filter_map(|s| str_attr(&s.attributes, "cause"))
        .collect();
    assert_eq!(causes, vec!["under_cap", "under_cap"]);
    assert_eq!(of("run-a").len(), 1);
}
