//! OTLP push to `--otlp-endpoint`: the SPEC §3 metrics and `llm.idle_gap`
//! spans, with retries and a bounded buffer.
//!
//! Building requests ([`MetricsState`], [`gap_spans`]) is pure; [`spawn`]
//! adds the async sender.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, metric, number_data_point, AggregationTemporality, Exemplar, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use super::prom::ExportCounters;
use super::{GAUGES, HISTOGRAMS};
use crate::live::{FinalGap, RunOutput, MAX_EXEMPLARS};
use crate::model::{Cause, Nanos, SpanRef};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

fn resource() -> Resource {
    Resource {
        attributes: vec![kv_str("service.name", "tpsgap")],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tpsgap".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    }
}

fn unsigned(t: Nanos) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

fn exemplars(refs: &[SpanRef], value: f64, time: Nanos) -> Vec<Exemplar> {
    refs.iter()
        .take(MAX_EXEMPLARS)
        .map(|r| Exemplar {
            time_unix_nano: unsigned(time),
            span_id: r.span_id.to_vec(),
            trace_id: r.trace_id.to_vec(),
            value: Some(exemplar::Value::AsDouble(value)),
            ..Default::default()
        })
        .collect()
}

/// A cumulative explicit-bucket histogram.
#[derive(Clone, Debug)]
struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    min: f64,
    max: f64,
    /// The slowest samples of the latest update, as exemplars.
    top: Vec<(f64, SpanRef, Nanos)>,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Hist {
        Hist {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            top: Vec::new(),
        }
    }

    fn observe(&mut self, v: f64, span: SpanRef, t: Nanos) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.top.push((v, span, t));
        self.top.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.top.truncate(MAX_EXEMPLARS);
    }
}

/// Cumulative series of one run.
#[derive(Debug, Default)]
struct RunSeries {
    start: Nanos,
    /// (histogram index, model) → histogram.
    hists: BTreeMap<(usize, Option<std::sync::Arc<str>>), Hist>,
    /// (counter name, attribute key, attribute value) → total.
    sums: BTreeMap<(&'static str, &'static str, String), f64>,
}

/// Turns run outputs into OTLP metric requests, keeping the cumulative
/// state of histograms and counters per run.
#[derive(Debug, Default)]
pub struct MetricsState {
    runs: HashMap<String, RunSeries>,
}

impl MetricsState {
    /// Updates the run's cumulative series and returns the request to push:
    /// one gauge point per new final window, and the run's cumulative
    /// histograms and counters as of `now`.
    pub fn build(&mut self, out: &RunOutput, now: Nanos) -> ExportMetricsServiceRequest {
        let series = self.runs.entry(out.run_id.clone()).or_default();
        if series.start == 0 {
            series.start = out.start_unix_ns;
        }
        let run_attr = || vec![kv_str("run_id", &out.run_id)];
        let mut metrics = Vec::new();
        for def in GAUGES {
            let points: Vec<NumberDataPoint> = out
                .windows
                .iter()
                .filter_map(|w| {
                    let v = (def.value)(w)?;
                    Some(NumberDataPoint {
                        attributes: run_attr(),
                        start_time_unix_nano: unsigned(w.start),
                        time_unix_nano: unsigned(w.end),
                        value: Some(number_data_point::Value::AsDouble(v)),
                        exemplars: exemplars(&w.exemplars, v, w.end),
                        ..Default::default()
                    })
                })
                .collect();
            if !points.is_empty() {
                metrics.push(Metric {
                    name: def.otlp.to_string(),
                    description: def.help.to_string(),
                    unit: def.unit.to_string(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: points,
                    })),
                    ..Default::default()
                });
            }
        }
        for r in &out.requests {
            for (i, def) in HISTOGRAMS.iter().enumerate() {
                if let Some(v) = (def.value)(r) {
                    series
                        .hists
                        .entry((i, r.model.clone()))
                        .or_insert_with(|| Hist::new(def.buckets))
                        .observe(v, r.span, r.released);
                }
            }
            let outcome = if r.failed { "failure" } else { "success" };
            *series
                .sums
                .entry(("llm.requests", "outcome", outcome.to_string()))
                .or_default() += 1.0;
            for (kind, n) in [("output", r.output_tokens), ("input", r.input_tokens)] {
                *series
                    .sums
                    .entry(("llm.tokens", "gen_ai.token.type", kind.to_string()))
                    .or_default() += n as f64;
            }
            *series
                .sums
                .entry(("llm.retries", "", String::new()))
                .or_default() += r.retries as f64;
        }
        for s in &out.slices {
            if let Some(g) = s.gap_by_cause {
                for c in Cause::ALL {
                    *series
                        .sums
                        .entry(("llm.gap.time", "cause", c.as_str().to_string()))
                        .or_default() += g[c as usize];
                }
            }
            *series
                .sums
                .entry(("llm.backlog.time", "", String::new()))
                .or_default() += s.backlog_seconds;
            *series
                .sums
                .entry(("llm.active.time", "", String::new()))
                .or_default() += s.active_seconds;
        }
        let start = unsigned(series.start);
        for (i, def) in HISTOGRAMS.iter().enumerate() {
            let points: Vec<HistogramDataPoint> = series
                .hists
                .iter()
                .filter(|((j, _), _)| *j == i)
                .map(|((_, model), h)| {
                    let mut attributes = run_attr();
                    if let Some(m) = model {
                        attributes.push(kv_str("gen_ai.request.model", m));
                    }
                    HistogramDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: unsigned(now),
                        count: h.counts.iter().sum(),
                        sum: Some(h.sum),
                        bucket_counts: h.counts.clone(),
                        explicit_bounds: h.bounds.to_vec(),
                        exemplars: h
                            .top
                            .iter()
                            .flat_map(|(v, s, t)| exemplars(std::slice::from_ref(s), *v, *t))
                            .collect(),
                        min: Some(h.min),
                        max: Some(h.max),
                        ..Default::default()
                    }
                })
                .collect();
            if !points.is_empty() {
                metrics.push(Metric {
                    name: def.otlp.to_string(),
                    description: def.help.to_string(),
                    unit: def.unit.to_string(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })),
                    ..Default::default()
                });
            }
        }
        for (name, unit) in COUNTERS {
            let points: Vec<NumberDataPoint> = series
                .sums
                .iter()
                .filter(|((n, _, _), _)| n == name)
                .map(|((_, k, v), total)| {
                    let mut attributes = run_attr();
                    if !k.is_empty() {
                        attributes.push(kv_str(k, v));
                    }
                    let value = if unit.starts_with('{') {
                        number_data_point::Value::AsInt(*total as i64)
                    } else {
                        number_data_point::Value::AsDouble(*total)
                    };
                    NumberDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: unsigned(now),
                        value: Some(value),
                        ..Default::default()
                    }
                })
                .collect();
            if !points.is_empty() {
                metrics.push(Metric {
                    name: name.to_string(),
                    unit: unit.to_string(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                });
            }
        }
        if out.finalized {
            self.runs.remove(&out.run_id);
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// The counters of SPEC §3 with their units.
const COUNTERS: &[(&str, &str)] = &[
    ("llm.requests", "{request}"),
    ("llm.tokens", "{token}"),
    ("llm.retries", "{retry}"),
    ("llm.gap.time", "s"),
    ("llm.backlog.time", "s"),
    ("llm.active.time", "s"),
];

/// FNV-1a, for stable ids derived from names.
fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// The trace id of a run's idle gaps: derived from the run id, so every gap
/// of a run lands in one trace.
pub fn gap_trace_id(run_id: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&fnv(1, &[run_id.as_bytes()]).to_be_bytes());
    id[8..].copy_from_slice(&fnv(2, &[run_id.as_bytes()]).to_be_bytes());
    id
}

/// `llm.idle_gap` spans of final gaps (`None` when there are none).
pub fn gap_spans(run_id: &str, gaps: &[FinalGap]) -> Option<ExportTraceServiceRequest> {
    if gaps.is_empty() {
        return None;
    }
    let trace_id = gap_trace_id(run_id);
    let spans = gaps
        .iter()
        .map(|g| Span {
            trace_id: trace_id.to_vec(),
            span_id: fnv(3, &[run_id.as_bytes(), &g.start.to_be_bytes()])
                .to_be_bytes()
                .to_vec(),
            name: "llm.idle_gap".to_string(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: unsigned(g.start),
            end_time_unix_nano: unsigned(g.end),
            attributes: vec![
                kv_str("run_id", run_id),
                kv(
                    "max_queue_depth",
                    any_value::Value::IntValue(i64::from(g.max_queue_depth)),
                ),
                kv_str("cause", g.cause.as_str()),
            ],
            links: g
                .waiting
                .iter()
                .map(|r| span::Link {
                    trace_id: r.trace_id.to_vec(),
                    span_id: r.span_id.to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    Some(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// One request waiting to be pushed.
#[derive(Debug)]
enum Pending {
    Metrics(ExportMetricsServiceRequest),
    Spans(ExportTraceServiceRequest),
}

/// Settings of the OTLP pusher.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Where to push, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// At most this many export requests wait for delivery; beyond it the
    /// oldest is dropped and counted.
    pub buffer: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How long shutdown may spend flushing.
    pub flush_deadline: Duration,
}

/// Handle to the pusher task: send outputs, drop it to flush and stop.
pub struct Pusher {
    pub tx: mpsc::Sender<RunOutput>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the pusher. Dropping `Pusher::tx` makes it flush (within
/// `flush_deadline`) and end.
///
/// # Errors
/// When the endpoint is not a valid URI.
pub fn spawn(cfg: PushConfig, counters: Arc<ExportCounters>) -> Result<Pusher, String> {
    let endpoint = if cfg.endpoint.contains("://") {
        cfg.endpoint.clone()
    } else {
        format!("http://{}", cfg.endpoint)
    };
    let channel = Channel::from_shared(endpoint.clone())
        .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}"))?
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .connect_lazy();
    let metrics =
        MetricsServiceClient::new(channel.clone()).send_compressed(CompressionEncoding::Gzip);
    let traces = TraceServiceClient::new(channel).send_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
    let task = tokio::spawn(push_loop(cfg, rx, metrics, traces, counters));
    Ok(Pusher { tx, task })
}

async fn push_loop(
    cfg: PushConfig,
    mut rx: mpsc::Receiver<RunOutput>,
    mut metrics: MetricsServiceClient<Channel>,
    mut traces: TraceServiceClient<Channel>,
    counters: Arc<ExportCounters>,
) {
    let mut state = MetricsState::default();
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let mut open = true;
    let mut flush_until: Option<tokio::time::Instant> = None;
    loop {
        // Take everything that is ready without waiting.
        while let Ok(out) = rx.try_recv() {
            enqueue(&mut queue, &mut state, &out, &cfg, &counters);
        }
        if queue.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(out) => enqueue(&mut queue, &mut state, &out, &cfg, &counters),
                None => open = false,
            }
            continue;
        }
        if !open {
            let deadline = *flush_until
                .get_or_insert_with(|| tokio::time::Instant::now() + cfg.flush_deadline);
            if tokio::time::Instant::now() >= deadline {
                counters
                    .dropped
                    .fetch_add(queue.len() as u64, Ordering::Relaxed);
                tracing::warn!(dropped = queue.len(), "OTLP flush deadline passed");
                return;
            }
        }
        let ok = match queue.front() {
            Some(Pending::Metrics(m)) => metrics.export(m.clone()).await.map(|_| ()),
            Some(Pending::Spans(s)) => traces.export(s.clone()).await.map(|_| ()),
            None => Ok(()),
        };
        match ok {
            Ok(()) => {
                queue.pop_front();
                counters.sent.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
            }
            Err(status) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%status, "OTLP export failed; retrying");
                // Keep taking outputs while waiting, so the producer never blocks.
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        got = rx.recv(), if open => match got {
                            Some(out) => enqueue(&mut queue, &mut state, &out, &cfg, &counters),
                            None => open = false,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn enqueue(
    queue: &mut VecDeque<Pending>,
    state: &mut MetricsState,
    out: &RunOutput,
    cfg: &PushConfig,
    counters: &ExportCounters,
) {
    let now = crate::live::Now::system(std::time::Instant::now()).unix_ns;
    queue.push_back(Pending::Metrics(state.build(out, now)));
    if let Some(spans) = gap_spans(&out.run_id, &out.gaps) {
        queue.push_back(Pending::Spans(spans));
    }
    while queue.len() > cfg.buffer.max(1) {
        queue.pop_front();
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}
