//! Reliability: the OTLP export survives an endpoint outage, and garbage
//! thrown at both receivers leaves the service up and answering correctly.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use tpsgap::serve::{self, Listeners, ServeConfig};
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

    let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let (g, h, a) = (bind().await, bind().await, bind().await);
    let (grpc, api) = (g.local_addr().expect("a"), a.local_addr().expect("a"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
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
    let server = tokio::spawn(serve::run(
        cfg,
        Listeners {
            grpc: g,
            http: h,
            api: a,
        },
        async {
            let _ = rx.await;
        },
    ));

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
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
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
    let _ = tx.send(());
    server.await.expect("join").expect("clean stop");

    let got = gauge_ends(&sink, "outage");
    let mut unique = got.clone();
    unique.dedup();
    let first = run.truth.start_unix_s.floor() as i64;
    let last = (run.truth.end_unix_s - 1e-9).floor() as i64;
    let want: Vec<u64> = (first..=last).map(|k| ((k + 1) * SEC) as u64).collect();
    assert_eq!(unique, want, "every window of the run arrived");
    assert_eq!(got.len(), unique.len(), "none twice");
}
