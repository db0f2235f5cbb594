//! `/metrics`: the SPEC §3 metrics in Prometheus (OpenMetrics text) format,
//! via the `prometheus-client` crate, plus tpsgap's own telemetry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::{GAUGES, HISTOGRAMS};
use crate::live::{DoneRequest, Engine, RunOutput};
use crate::model::Cause;

type Labels = Vec<(&'static str, String)>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Builds histograms with one metric's bucket boundaries.
#[derive(Clone)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0)
    }
}

/// A classic histogram that takes a batch of observations under one lock
/// (`prometheus-client`'s own locks once per observation, and a run's
/// requests arrive in batches). Encoded exactly as that one encodes.
#[derive(Debug)]
pub struct Histogram(std::sync::Mutex<HistogramState>);

#[derive(Debug)]
struct HistogramState {
    sum: f64,
    count: u64,
    /// Upper bounds (the last is +Inf) and each bucket's own count.
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        let buckets = bounds
            .iter()
            .copied()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        Histogram(std::sync::Mutex::new(HistogramState {
            sum: 0.0,
            count: 0,
            buckets,
        }))
    }

    /// Observes every value (NaN falls in the +Inf bucket).
    pub fn observe_all(&self, values: impl Iterator<Item = f64>) {
        let Ok(mut st) = self.0.lock() else { return };
        let HistogramState {
            sum,
            count,
            buckets,
        } = &mut *st;
        let last = buckets.len() - 1;
        for v in values {
            *sum += v;
            *count += 1;
            let i = if v.is_nan() {
                last
            } else {
                buckets.partition_point(|(ub, _)| *ub < v).min(last)
            };
            buckets[i].1 += 1;
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.lock().map_err(|_| std::fmt::Error)?;
        encoder.encode_histogram::<NoLabelSet>(st.sum, st.count, &st.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Counters of the OTLP exporter, shared with the self-telemetry.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Export requests that failed (each retry counts).
    pub errors: AtomicU64,
    /// Export requests dropped because the retry buffer was full.
    pub dropped: AtomicU64,
    /// Export requests delivered.
    pub sent: AtomicU64,
}

/// The Prometheus view of tpsgap's output.
pub struct PromMetrics {
    registry: Registry,
    /// Models seen per run: the label sets to remove when a run is forgotten.
    models: std::sync::Mutex<std::collections::HashMap<String, std::collections::BTreeSet<String>>>,
    gauges: Vec<Family<Labels, Gauge<f64, AtomicU64>>>,
    histograms: Vec<Family<Labels, Histogram, Buckets>>,
    requests: Family<Labels, Counter>,
    tokens: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    gap: Family<Labels, FloatCounter>,
    backlog: Family<Labels, FloatCounter>,
    active: Family<Labels, FloatCounter>,
}

impl PromMetrics {
    pub fn new(engine: Arc<Engine>, export: Arc<ExportCounters>) -> PromMetrics {
        let mut registry = Registry::default();
        let gauges: Vec<_> = GAUGES
            .iter()
            .map(|d| {
                let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                registry.register(d.prom, d.help, f.clone());
                f
            })
            .collect();
        let histograms: Vec<_> = HISTOGRAMS
            .iter()
            .map(|d| {
                let f = Family::new_with_constructor(Buckets(d.buckets));
                registry.register(d.prom, d.help, f.clone());
                f
            })
            .collect();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "llm_requests",
            "Released requests by outcome",
            requests.clone(),
        );
        let tokens = Family::<Labels, Counter>::default();
        registry.register(
            "llm_tokens",
            "Tokens of released requests by gen_ai_token_type",
            tokens.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "llm_retries",
            "Retries of released requests",
            retries.clone(),
        );
        let gap = Family::<Labels, FloatCounter>::default();
        registry.register(
            "llm_gap_seconds",
            "Seconds of the gap set (waiting below the cap) by cause, per final step slice",
            gap.clone(),
        );
        let backlog = Family::<Labels, FloatCounter>::default();
        registry.register(
            "llm_backlog_seconds",
            "Seconds when requests waited, per final step slice",
            backlog.clone(),
        );
        let active = Family::<Labels, FloatCounter>::default();
        registry.register(
            "llm_active_seconds",
            "Seconds of the runs' active ranges, per final step slice",
            active.clone(),
        );
        registry.register_collector(Box::new(SelfTelemetry { engine, export }));
        PromMetrics {
            registry,
            models: std::sync::Mutex::default(),
            gauges,
            histograms,
            requests,
            tokens,
            retries,
            gap,
            backlog,
            active,
        }
    }

    /// Applies what became final for one run.
    pub fn update(&self, out: &RunOutput) {
        let run = || vec![("run_id", out.run_id.clone())];
        // Each label set is built once (a lookup clones it only to insert).
        let run_only = run();
        if let Some(w) = out.windows.last() {
            for (def, fam) in GAUGES.iter().zip(&self.gauges) {
                if let Some(v) = (def.value)(w) {
                    fam.get_or_create(&run_only).set(v);
                }
            }
        }
        if !out.slices.is_empty() {
            let by_cause: Vec<Vec<(&'static str, String)>> = Cause::ALL
                .iter()
                .map(|c| {
                    let mut l = run();
                    l.push(("cause", c.as_str().to_string()));
                    l
                })
                .collect();
            for s in &out.slices {
                if let Some(g) = s.gap_by_cause {
                    for (c, l) in Cause::ALL.iter().zip(&by_cause) {
                        self.gap.get_or_create(l).inc_by(g[*c as usize]);
                    }
                }
                self.backlog
                    .get_or_create(&run_only)
                    .inc_by(s.backlog_seconds);
                self.active
                    .get_or_create(&run_only)
                    .inc_by(s.active_seconds);
            }
        }
        if out.requests.is_empty() {
            return;
        }
        // Counters take each batch's sums; histograms are looked up once per
        // model (label lookups hash and allocate: once per request would cost
        // more than the rest of the update).
        let (mut failed, mut output, mut input, mut retries) = (0u64, 0u64, 0u64, 0u64);
        for r in &out.requests {
            failed += u64::from(r.failed);
            output = output.saturating_add(r.output_tokens);
            input = input.saturating_add(r.input_tokens);
            retries = retries.saturating_add(r.retries);
        }
        let succeeded = out.requests.len() as u64 - failed;
        for (outcome, n) in [("success", succeeded), ("failure", failed)] {
            if n > 0 {
                let mut l = run();
                l.push(("outcome", outcome.to_string()));
                self.requests.get_or_create(&l).inc_by(n);
            }
        }
        for (kind, n) in [("output", output), ("input", input)] {
            let mut l = run();
            l.push(("gen_ai_token_type", kind.to_string()));
            self.tokens.get_or_create(&l).inc_by(n);
        }
        self.retries.get_or_create(&run_only).inc_by(retries);
        let mut by_model: Vec<&DoneRequest> = out.requests.iter().collect();
        by_model.sort_by(|a, b| a.model.cmp(&b.model));
        for group in by_model.chunk_by(|a, b| a.model == b.model) {
            let mut l = run();
            if let Some(m) = &group[0].model {
                l.push(("gen_ai_request_model", m.clone()));
                if let Ok(mut models) = self.models.lock() {
                    models
                        .entry(out.run_id.clone())
                        .or_default()
                        .insert(m.clone());
                }
            }
            for (def, fam) in HISTOGRAMS.iter().zip(&self.histograms) {
                fam.get_or_create(&l)
                    .observe_all(group.iter().filter_map(|r| (def.value)(r)));
            }
        }
    }

    /// Removes every series of a run that left the API, so `/metrics` stays
    /// bounded by the runs tpsgap keeps.
    pub fn forget(&self, run_id: &str) {
        let run = || vec![("run_id", run_id.to_string())];
        let with = |k: &'static str, v: &str| {
            let mut l = run();
            l.push((k, v.to_string()));
            l
        };
        for fam in &self.gauges {
            fam.remove(&run());
        }
        let models = self
            .models
            .lock()
            .ok()
            .and_then(|mut m| m.remove(run_id))
            .unwrap_or_default();
        for fam in &self.histograms {
            fam.remove(&run());
            for m in &models {
                fam.remove(&with("gen_ai_request_model", m));
            }
        }
        for o in ["success", "failure"] {
            self.requests.remove(&with("outcome", o));
        }
        for t in ["output", "input"] {
            self.tokens.remove(&with("gen_ai_token_type", t));
        }
        self.retries.remove(&run());
        for c in Cause::ALL {
            self.gap.remove(&with("cause", c.as_str()));
        }
        self.backlog.remove(&run());
        self.active.remove(&run());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

/// tpsgap's own counters, read at scrape time.
struct SelfTelemetry {
    engine: Arc<Engine>,
    export: Arc<ExportCounters>,
}

impl std::fmt::Debug for SelfTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfTelemetry")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for SelfTelemetry {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.engine.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (acc, ign, rej, refused, limited) = (
            get(&c.spans_accepted),
            get(&c.spans_ignored),
            get(&c.spans_rejected),
            get(&c.spans_refused),
            get(&c.spans_limited),
        );
        let rows = [
            (
                "tpsgap_spans_received",
                "Spans received over OTLP",
                acc + ign + rej + refused + limited,
            ),
            ("tpsgap_spans_accepted", "Spans accepted into a run", acc),
            (
                "tpsgap_spans_ignored",
                "Spans without a run_id (ignored)",
                ign,
            ),
            (
                "tpsgap_spans_rejected",
                "Spans with an unparseable value (partial success)",
                rej,
            ),
            (
                "tpsgap_spans_refused",
                "Spans of requests refused as a whole (rate, live runs, batch size)",
                refused,
            ),
            (
                "tpsgap_spans_limited",
                "Spans rejected through partial success by a per-run limit",
                limited,
            ),
            (
                "tpsgap_late_spans",
                "Spans that arrived for an already exported window",
                get(&c.late_spans),
            ),
            (
                "tpsgap_windows_exported",
                "Final windows exported",
                get(&c.windows_final),
            ),
            (
                "tpsgap_runs_finalized",
                "Runs finalized (idle timeout or shutdown)",
                get(&c.runs_finalized),
            ),
            (
                "tpsgap_export_errors",
                "Failed OTLP export attempts",
                get(&self.export.errors),
            ),
            (
                "tpsgap_export_dropped",
                "OTLP export requests dropped from a full retry buffer",
                get(&self.export.dropped),
            ),
            (
                "tpsgap_export_sent",
                "OTLP export requests delivered",
                get(&self.export.sent),
            ),
        ];
        for (name, help, v) in rows {
            counter(&mut enc, name, help, v)?;
        }
        let g = ConstGauge::new(self.engine.live_runs() as i64);
        g.encode(enc.encode_descriptor(
            "tpsgap_live_runs",
            "Runs currently live",
            None,
            g.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One histogram in a registry, as OpenMetrics text.
    fn text(metric: impl prometheus_client::registry::Metric) -> String {
        let mut r = Registry::default();
        r.register("llm_t", "help", metric);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encodes");
        out
    }

    /// The batch histogram encodes exactly as `prometheus-client`'s own one
    /// fed the same values one by one: bucket edges (a value on a bound
    /// falls in that bucket), +Inf, NaN, sum and count.
    #[test]
    fn batch_histogram_matches_the_library_one() {
        let bounds = [0.1, 1.0, 10.0];
        let values = [0.05, 0.1, 0.2, 1.0, 5.0, 10.0, 11.0, f64::INFINITY, 0.0];
        let ours = Histogram::new(&bounds);
        ours.observe_all(values[..4].iter().copied());
        ours.observe_all(values[4..].iter().copied());
        let theirs = prometheus_client::metrics::histogram::Histogram::new(bounds);
        for v in values {
            theirs.observe(v);
        }
        let want = text(theirs);
        assert!(want.contains("llm_t_bucket{le=\"1.0\"} 5"), "{want}");
        assert_eq!(text(ours), want);

        let nan = Histogram::new(&bounds);
        nan.observe_all([f64::NAN, 0.5].into_iter());
        let lib = prometheus_client::metrics::histogram::Histogram::new(bounds);
        lib.observe(f64::NAN);
        lib.observe(0.5);
        assert_eq!(text(nan), text(lib));
    }
}
