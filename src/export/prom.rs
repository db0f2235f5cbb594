//! `/metrics`: the SPEC §3 metrics in Prometheus (OpenMetrics text) format,
//! via the `prometheus-client` crate, plus tpsgap's own telemetry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{GAUGES, HISTOGRAMS};
use crate::join::FastHash;
use crate::live::{Engine, RunOutput};
use crate::model::Cause;

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

/// The most buckets of any of [`HISTOGRAMS`], +Inf included.
const MAX_BUCKETS: usize = 20;
const _: () = {
    let mut i = 0;
    while i < HISTOGRAMS.len() {
        assert!(HISTOGRAMS[i].buckets.len() < MAX_BUCKETS);
        i += 1;
    }
};

/// One classic histogram: sum, count and each bucket's own count (the
/// bounds are its [`HISTOGRAMS`] entry's, then +Inf), held inline so a run's
/// histograms take no allocation each.
#[derive(Clone, Debug, Default)]
struct Hist {
    sum: f64,
    count: u64,
    counts: [u64; MAX_BUCKETS],
}

impl Hist {
    /// Observes a value (NaN falls in the +Inf bucket, as
    /// `prometheus-client`'s histogram has it).
    fn observe(&mut self, bounds: &[f64], v: f64) {
        self.sum += v;
        self.count += 1;
        let i = if v.is_nan() {
            bounds.len()
        } else {
            bounds.partition_point(|ub| *ub < v)
        };
        self.counts[i] += 1;
    }

    fn encode(&self, bounds: &[f64], mut enc: MetricEncoder) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .take(bounds.len() + 1)
            .collect();
        enc.encode_histogram::<NoLabels>(self.sum, self.count, &buckets, None)
    }
}

type NoLabels = prometheus_client::encoding::NoLabelSet;

/// Every series of one run, as plain numbers; `None` (or absent) is a
/// series not created yet, as a metric family would have it.
#[derive(Debug, Default)]
struct RunSeries {
    /// The last final window's value of each of [`GAUGES`].
    gauges: [Option<f64>; GAUGES.len()],
    /// Per model (`None`: requests without one), one per [`HISTOGRAMS`]
    /// (the model name shared with the run's requests).
    histograms: Vec<(Option<Arc<str>>, [Hist; HISTOGRAMS.len()])>,
    /// Released requests: success, failure.
    requests: [Option<u64>; 2],
    /// Tokens: output, input; and retries.
    tokens: Option<[u64; 2]>,
    retries: Option<u64>,
    /// Gap seconds by cause ([`Cause::ALL`] order).
    gap: Option<[f64; 3]>,
    backlog: Option<f64>,
    active: Option<f64>,
}

const OUTCOMES: [&str; 2] = ["success", "failure"];
const TOKEN_TYPES: [&str; 2] = ["output", "input"];

/// The Prometheus view of tpsgap's output: each run's series held as plain
/// numbers under its id and written out at scrape time, so a run costs one
/// map entry to update and to forget, not a label set per series.
pub struct PromMetrics {
    registry: Registry,
    runs: Arc<Mutex<HashMap<String, RunSeries, FastHash>>>,
}

impl PromMetrics {
    pub fn new(engine: Arc<Engine>, export: Arc<ExportCounters>) -> PromMetrics {
        let mut registry = Registry::default();
        let runs = Arc::new(Mutex::new(HashMap::default()));
        registry.register_collector(Box::new(RunCollector(Arc::clone(&runs))));
        registry.register_collector(Box::new(SelfTelemetry { engine, export }));
        PromMetrics { registry, runs }
    }

    /// Applies what became final for one run.
    pub fn update(&self, out: &RunOutput) {
        if out.windows.is_empty() && out.slices.is_empty() && out.requests.is_empty() {
            return;
        }
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        let s = runs.entry(out.run_id.clone()).or_default();
        if let Some(w) = out.windows.last() {
            for (def, g) in GAUGES.iter().zip(&mut s.gauges) {
                if let Some(v) = (def.value)(w) {
                    *g = Some(v);
                }
            }
        }
        for sl in &out.slices {
            if let Some(g) = sl.gap_by_cause {
                let sum = s.gap.get_or_insert([0.0; 3]);
                for c in Cause::ALL {
                    sum[c as usize] += g[c as usize];
                }
            }
            *s.backlog.get_or_insert(0.0) += sl.backlog_seconds;
            *s.active.get_or_insert(0.0) += sl.active_seconds;
        }
        if out.requests.is_empty() {
            return;
        }
        let (mut failed, mut output, mut input, mut retries) = (0u64, 0u64, 0u64, 0u64);
        for r in &out.requests {
            failed += u64::from(r.failed);
            output = output.saturating_add(r.output_tokens);
            input = input.saturating_add(r.input_tokens);
            retries = retries.saturating_add(r.retries);
        }
        let succeeded = out.requests.len() as u64 - failed;
        for (slot, n) in s.requests.iter_mut().zip([succeeded, failed]) {
            if n > 0 {
                *slot = Some(slot.unwrap_or(0).saturating_add(n));
            }
        }
        let t = s.tokens.get_or_insert([0, 0]);
        t[0] = t[0].saturating_add(output);
        t[1] = t[1].saturating_add(input);
        let r = s.retries.get_or_insert(0);
        *r = r.saturating_add(retries);
        // Per model: a run has a handful, found by a short scan (the last
        // one found is tried first).
        let mut last = usize::MAX;
        for r in &out.requests {
            if s.histograms
                .get(last)
                .is_none_or(|(m, _)| !same_model(m, &r.model))
            {
                last = match s
                    .histograms
                    .iter()
                    .position(|(m, _)| same_model(m, &r.model))
                {
                    Some(i) => i,
                    None => {
                        let hs = std::array::from_fn(|_| Hist::default());
                        s.histograms.push((r.model.clone(), hs));
                        s.histograms.len() - 1
                    }
                };
            }
            for (def, h) in HISTOGRAMS.iter().zip(&mut s.histograms[last].1) {
                if let Some(v) = (def.value)(r) {
                    h.observe(def.buckets, v);
                }
            }
        }
    }

    /// Removes every series of a run that left the API, so `/metrics` stays
    /// bounded by the runs tpsgap keeps.
    pub fn forget(&self, run_id: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.remove(run_id);
        }
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

/// One of a run's seconds counters.
type SecondsOf = fn(&RunSeries) -> Option<f64>;

/// Writes every run's series, family by family in SPEC §3's order.
struct RunCollector(Arc<Mutex<HashMap<String, RunSeries, FastHash>>>);

impl std::fmt::Debug for RunCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunCollector")
    }
}

/// Writes one family: its descriptor, then `each` run's series.
fn family<'a>(
    enc: &mut DescriptorEncoder,
    runs: &'a HashMap<String, RunSeries, FastHash>,
    name: &str,
    help: &str,
    ty: MetricType,
    mut each: impl FnMut(&'a str, &'a RunSeries, &mut MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    let help = format!("{help}.");
    let mut m = enc.encode_descriptor(name, &help, None, ty)?;
    for (run, s) in runs {
        each(run, s, &mut m)?;
    }
    Ok(())
}

fn labels<'a>(run: &'a str, k: &'a str, v: &'a str) -> [(&'a str, &'a str); 2] {
    [("run_id", run), (k, v)]
}

impl Collector for RunCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let runs = self.0.lock().map_err(|_| std::fmt::Error)?;
        let runs = &*runs;
        for (i, def) in GAUGES.iter().enumerate() {
            family(
                &mut enc,
                runs,
                def.prom,
                def.help,
                MetricType::Gauge,
                |run, s, m| match s.gauges[i] {
                    Some(v) => ConstGauge::new(v).encode(m.encode_family(&[("run_id", run)])?),
                    None => Ok(()),
                },
            )?;
        }
        for (i, def) in HISTOGRAMS.iter().enumerate() {
            family(
                &mut enc,
                runs,
                def.prom,
                def.help,
                MetricType::Histogram,
                |run, s, m| {
                    for (model, hs) in &s.histograms {
                        match model {
                            Some(model) => {
                                let l = labels(run, "gen_ai_request_model", model);
                                hs[i].encode(def.buckets, m.encode_family(&l)?)?;
                            }
                            None => {
                                hs[i].encode(def.buckets, m.encode_family(&[("run_id", run)])?)?
                            }
                        }
                    }
                    Ok(())
                },
            )?;
        }
        let help = "Released requests by outcome";
        family(
            &mut enc,
            runs,
            "llm_requests",
            help,
            MetricType::Counter,
            |run, s, m| {
                for (outcome, n) in OUTCOMES.iter().zip(s.requests) {
                    if let Some(n) = n {
                        ConstCounter::new(n)
                            .encode(m.encode_family(&labels(run, "outcome", outcome))?)?;
                    }
                }
                Ok(())
            },
        )?;
        let help = "Tokens of released requests by gen_ai_token_type";
        family(
            &mut enc,
            runs,
            "llm_tokens",
            help,
            MetricType::Counter,
            |run, s, m| {
                let Some(tokens) = s.tokens else {
                    return Ok(());
                };
                for (kind, n) in TOKEN_TYPES.iter().zip(tokens) {
                    let l = labels(run, "gen_ai_token_type", kind);
                    ConstCounter::new(n).encode(m.encode_family(&l)?)?;
                }
                Ok(())
            },
        )?;
        let help = "Retries of released requests";
        family(
            &mut enc,
            runs,
            "llm_retries",
            help,
            MetricType::Counter,
            |run, s, m| match s.retries {
                Some(n) => ConstCounter::new(n).encode(m.encode_family(&[("run_id", run)])?),
                None => Ok(()),
            },
        )?;
        let help = "Seconds of the gap set (waiting below the cap) by cause, per final step slice";
        family(
            &mut enc,
            runs,
            "llm_gap_seconds",
            help,
            MetricType::Counter,
            |run, s, m| {
                let Some(gap) = s.gap else {
                    return Ok(());
                };
                for c in Cause::ALL {
                    let l = labels(run, "cause", c.as_str());
                    ConstCounter::new(gap[c as usize]).encode(m.encode_family(&l)?)?;
                }
                Ok(())
            },
        )?;
        let seconds: [(&str, &str, SecondsOf); 2] = [
            (
                "llm_backlog_seconds",
                "Seconds when requests waited, per final step slice",
                |s| s.backlog,
            ),
            (
                "llm_active_seconds",
                "Seconds of the runs' active ranges, per final step slice",
                |s| s.active,
            ),
        ];
        for (name, help, get) in seconds {
            family(
                &mut enc,
                runs,
                name,
                help,
                MetricType::Counter,
                |run, s, m| match get(s) {
                    Some(v) => ConstCounter::new(v).encode(m.encode_family(&[("run_id", run)])?),
                    None => Ok(()),
                },
            )?;
        }
        Ok(())
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

/// Whether two requests' model names are the same. A run's requests share
/// one `Arc` a name, so the pointers usually answer without comparing bytes.
fn same_model(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{DoneRequest, LiveConfig};

    fn done(model: Option<&str>, t_queue: Option<f64>, failed: bool) -> DoneRequest {
        DoneRequest {
            model: model.map(Into::into),
            failed,
            released: 0,
            output_tokens: 10,
            input_tokens: 3,
            retries: 1,
            span: Default::default(),
            t_queue,
            t_first_token: None,
            t_stream: None,
            t_in_flight: None,
            stream_tps: None,
            end_to_end_tps: None,
            time_per_output_token: None,
        }
    }

    fn output(run: &str, requests: Vec<DoneRequest>) -> RunOutput {
        RunOutput {
            run_id: run.to_string(),
            start_unix_ns: 0,
            windows: vec![],
            slices: vec![],
            requests,
            gaps: vec![],
            finalized: false,
        }
    }

    /// The lines of one series family in OpenMetrics text.
    fn series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        let mut v: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        v.sort_unstable();
        v
    }

    /// A run's histograms, fed over two batches and two models, encode as
    /// `prometheus-client`'s own histogram family fed the same values one by
    /// one (bucket edges: a value on a bound falls in that bucket; +Inf;
    /// NaN); counters add up over batches; a forgotten run leaves no series.
    #[test]
    fn run_series_match_the_library_families() {
        let prom = PromMetrics::new(Arc::new(Engine::new(LiveConfig::default())), Arc::default());
        let a = [
            Some(0.01),
            Some(0.02),
            Some(0.3),
            None,
            Some(81.92),
            Some(100.0),
        ];
        let b = [Some(f64::NAN), Some(0.0)];
        let first: Vec<_> = a.iter().map(|&q| done(Some("m-a"), q, false)).collect();
        let mut second: Vec<_> = b.iter().map(|&q| done(None, q, false)).collect();
        second.push(done(Some("m-a"), Some(5.0), true));
        prom.update(&output("r1", first));
        prom.update(&output("r1", second));
        let ours = prom.encode();

        type Fam = prometheus_client::metrics::family::Family<
            Vec<(&'static str, String)>,
            prometheus_client::metrics::histogram::Histogram,
        >;
        let lib = Fam::new_with_constructor(|| {
            prometheus_client::metrics::histogram::Histogram::new(
                super::super::DURATION_BUCKETS.iter().copied(),
            )
        });
        let run = || vec![("run_id", "r1".to_string())];
        let mut with_model = run();
        with_model.push(("gen_ai_request_model", "m-a".to_string()));
        for q in a.iter().flatten().chain([5.0].iter()) {
            lib.get_or_create(&with_model).observe(*q);
        }
        for q in b.iter().flatten() {
            lib.get_or_create(&run()).observe(*q);
        }
        let mut r = Registry::default();
        r.register(
            "llm_request_queue_time_seconds",
            "Time from queued to admitted (successful requests)",
            lib,
        );
        let mut want = String::new();
        prometheus_client::encoding::text::encode(&mut want, &r).expect("encodes");
        let prefix = "llm_request_queue_time_seconds";
        assert_eq!(series(&ours, prefix), series(&want, prefix));
        assert!(ours.contains(
            "llm_request_queue_time_seconds_bucket{le=\"0.02\",run_id=\"r1\",gen_ai_request_model=\"m-a\"} 2"
        ), "{ours}");

        assert!(ours.contains("llm_requests_total{run_id=\"r1\",outcome=\"success\"} 8\n"));
        assert!(ours.contains("llm_requests_total{run_id=\"r1\",outcome=\"failure\"} 1\n"));
        assert!(ours.contains("llm_tokens_total{run_id=\"r1\",gen_ai_token_type=\"output\"} 90\n"));
        assert!(ours.contains("llm_retries_total{run_id=\"r1\"} 9\n"));

        prom.forget("r1");
        assert!(!prom.encode().contains("r1"));
    }
}
