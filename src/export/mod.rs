//! Everything tpsgap sends out: OTLP metrics and gap spans, the Prometheus
//! endpoint and the JSON API. The metric table below is the one place where
//! SPEC §3's names, units and buckets are written down.

pub mod api;
pub mod otlp;
pub mod prom;
pub mod web;

use crate::live::{DoneRequest, FinalWindow};

/// GenAI semantic conventions' duration boundaries (seconds).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// The same, extended past 300 s for stream and in-flight times.
pub const LONG_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68, 655.36, 1310.72,
];
/// GenAI conventions' time-to-first-token boundaries (seconds).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// GenAI conventions' time-per-output-token boundaries (seconds).
pub const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Tokens per second.
pub const TPS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// A per-request histogram of SPEC §3.
pub struct HistogramDef {
    pub otlp: &'static str,
    pub prom: &'static str,
    pub unit: &'static str,
    pub help: &'static str,
    pub buckets: &'static [f64],
    pub value: fn(&DoneRequest) -> Option<f64>,
}

pub const HISTOGRAMS: &[HistogramDef] = &[
    HistogramDef {
        otlp: "llm.request.queue_time",
        prom: "llm_request_queue_time_seconds",
        unit: "s",
        help: "Time from queued to admitted (successful requests)",
        buckets: DURATION_BUCKETS,
        value: |r| r.t_queue,
    },
    HistogramDef {
        otlp: "llm.request.time_to_first_token",
        prom: "llm_request_time_to_first_token_seconds",
        unit: "s",
        help: "Time from admitted to the first token (successful requests)",
        buckets: TTFT_BUCKETS,
        value: |r| r.t_first_token,
    },
    HistogramDef {
        otlp: "llm.request.stream_time",
        prom: "llm_request_stream_time_seconds",
        unit: "s",
        help: "Time from the first to the last token (successful requests)",
        buckets: LONG_DURATION_BUCKETS,
        value: |r| r.t_stream,
    },
    HistogramDef {
        otlp: "llm.request.in_flight_time",
        prom: "llm_request_in_flight_time_seconds",
        unit: "s",
        help: "Time from admitted to released (successful requests)",
        buckets: LONG_DURATION_BUCKETS,
        value: |r| r.t_in_flight,
    },
    HistogramDef {
        otlp: "llm.request.stream_tps",
        prom: "llm_request_stream_tps",
        unit: "{token}/s",
        help: "Output tokens per second of streaming (successful requests)",
        buckets: TPS_BUCKETS,
        value: |r| r.stream_tps,
    },
    HistogramDef {
        otlp: "llm.request.end_to_end_tps",
        prom: "llm_request_end_to_end_tps",
        unit: "{token}/s",
        help: "Output tokens per second in flight (successful requests)",
        buckets: TPS_BUCKETS,
        value: |r| r.end_to_end_tps,
    },
    HistogramDef {
        otlp: "llm.request.time_per_output_token",
        prom: "llm_request_time_per_output_token_seconds",
        unit: "s",
        help: "Stream time per output token after the first (successful requests)",
        buckets: TPOT_BUCKETS,
        value: |r| r.time_per_output_token,
    },
];

/// A per-window gauge of SPEC §3.
pub struct GaugeDef {
    pub otlp: &'static str,
    pub prom: &'static str,
    pub unit: &'static str,
    pub help: &'static str,
    pub value: fn(&FinalWindow) -> Option<f64>,
}

pub const GAUGES: &[GaugeDef] = &[
    GaugeDef {
        otlp: "llm.gap_fraction",
        prom: "llm_gap_fraction",
        unit: "1",
        help: "Share of the window when requests waited while in-flight was below the cap",
        value: |w| w.report.stats.gap_fraction,
    },
    GaugeDef {
        otlp: "llm.backlog_fraction",
        prom: "llm_backlog_fraction",
        unit: "1",
        help: "Share of the window when requests waited",
        value: |w| w.report.stats.backlog_fraction,
    },
    GaugeDef {
        otlp: "llm.utilization",
        prom: "llm_utilization",
        unit: "1",
        help: "Time average of in-flight / cap over the window",
        value: |w| w.report.stats.utilization,
    },
    GaugeDef {
        otlp: "llm.system_tps",
        prom: "llm_system_tps",
        unit: "{token}/s",
        help: "Output tokens of successful requests released in the window per second",
        value: |w| w.report.stats.system_tps,
    },
    GaugeDef {
        otlp: "llm.success_rate",
        prom: "llm_success_rate",
        unit: "1",
        help: "Succeeded / (succeeded + failed) of requests released in the window",
        value: |w| w.report.stats.success_rate,
    },
    GaugeDef {
        otlp: "llm.retry_rate",
        prom: "llm_retry_rate",
        unit: "1",
        help: "Retries per request released in the window",
        value: |w| w.report.stats.retry_rate,
    },
];
