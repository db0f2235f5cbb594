//! `tpsgap bench`: measures the service. It builds synthetic OTLP trace load
//! up front (serialized, framed and optionally gzip- or zstd-compressed
//! once, so the client's own encoding cost is not measured), starts
//! `tpsgap serve` (or loads a running one), sends the load with N requests
//! in flight and reports the server's CPU per million spans, spans per
//! second and peak RSS.
//!
//! Two halves: [`LoadBuilder`] / [`prepare`] are pure data (no I/O, no clock),
//! [`run`] is the async shell that spawns, sends and measures.
//!
//! CPU time comes from the kernel's CPU-time clock of the server process
//! and of the measuring thread, to the nanosecond; where that clock cannot
//! be read, from `/proc/<pid>/stat` (utime + stime, in clock ticks). The
//! tick rate is read once with `getconf CLK_TCK`; when that fails it is
//! assumed to be 100, the value on every Linux platform in practice.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};

use crate::ingest::decompress::{self, DecompressError};
use crate::ingest::grpc::{grpc_frame, EXPORT};

/// Unix seconds of the first queued request of every run: 2027-01-15T08:00:00Z.
pub const START_UNIX_S: i64 = 1_800_000_000;

/// How long one export request may keep being refused before the bench fails.
const RETRY_LIMIT: Duration = Duration::from_secs(60);

/// The OTLP transport of `bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP protobuf (`POST /v1/traces`).
    Http,
}

/// `tpsgap bench` flags.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Runs (`run_id`s) the load is spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Total spans sent per repeat (rounded down to whole requests).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub spans: u64,
    /// Spans per export request.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Spans per LLM request: 1 (one span), 2 (queue + inference) or
    /// 3 (queue + prefill + decode).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub spans_per_request: u8,
    /// Send a request's later spans (after its first) this many requests
    /// later, as a pipeline exports a queue span at admission and the
    /// inference span at release, seconds apart; 0 sends them together.
    #[arg(long, default_value_t = 0)]
    pub span_lag: u64,
    /// Inside a run, request i is queued at start + i × this many milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_ms: u64,
    /// Send at the load's own pace (a run's request every --interval-ms:
    /// 4,000 spans/s by default), so that its time moves as fast as the
    /// clock, as a live pipeline's does; by default the load goes as fast
    /// as the server takes it.
    #[arg(long)]
    pub real_time: bool,
    /// The `cap` attribute of every span.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..))]
    pub cap: i64,
    /// Number of the first run (`run-NNN`): move it to send new runs to a
    /// server that already holds earlier ones.
    #[arg(long, default_value_t = 0)]
    pub first_run: u64,
    /// Seed of the synthetic data (same seed, same bytes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Export requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub in_flight: u64,
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: Protocol,
    /// Send gzip-compressed bodies (compressed once, up front).
    #[arg(long, conflicts_with = "zstd")]
    pub gzip: bool,
    /// Send zstd-compressed bodies (compressed once, up front).
    #[arg(long)]
    pub zstd: bool,
    /// gRPC: HTTP/2 connections the requests are spread over (HTTP/1.1
    /// opens one connection per request in flight anyway).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Repeat the send phase this many times; the report gives each repeat
    /// and the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// With a spawned server: keep one server for all repeats (by default
    /// every repeat gets a fresh one, so state does not accumulate).
    #[arg(long)]
    pub reuse_server: bool,
    /// Wait this long after the last response before the final CPU reading.
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Load this already running server instead of spawning one (needs
    /// --grpc-endpoint or --http-endpoint for the chosen protocol).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// With --server-pid: its OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    #[arg(long, value_name = "URL", requires = "server_pid")]
    pub grpc_endpoint: Option<String>,
    /// With --server-pid: its OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is appended when the URL has no path).
    #[arg(long, value_name = "URL", requires = "server_pid")]
    pub http_endpoint: Option<String>,
    /// With --server-pid: its API endpoint, e.g. `http://127.0.0.1:9464`, to
    /// count the runs it lists (optional).
    #[arg(long, value_name = "URL", requires = "server_pid")]
    pub api_endpoint: Option<String>,
    /// Extra `tpsgap serve` arguments for the spawned server, after `--`,
    /// e.g. `tpsgap bench -- --wal-dir /tmp/x`.
    #[arg(last = true, value_name = "SERVE_ARGS")]
    pub server_args: Vec<String>,
}

// ---------------------------------------------------------------------------
// Pure data: the synthetic load.
// ---------------------------------------------------------------------------

/// What synthetic load to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSpec {
    /// Runs the requests are dealt over, round robin.
    pub runs: u64,
    /// Number of the first run (`run-NNN`).
    pub first_run: u64,
    /// Total spans (rounded down to whole requests).
    pub spans: u64,
    /// Spans per export request.
    pub batch: u64,
    /// Spans per LLM request, 1 to 3.
    pub spans_per_request: u8,
    /// A request's later spans are sent this many requests after its first.
    pub span_lag: u64,
    /// Queue interval between consecutive requests of a run, in ns.
    pub interval_ns: i64,
    /// The `cap` attribute.
    pub cap: i64,
    /// RNG seed.
    pub seed: u64,
}

impl LoadSpec {
    /// The spec of the command-line flags, starting at run `first_run`.
    pub fn from_args(a: &BenchArgs, first_run: u64) -> LoadSpec {
        LoadSpec {
            runs: a.runs,
            first_run,
            spans: a.spans,
            batch: a.batch,
            spans_per_request: a.spans_per_request,
            span_lag: a.span_lag,
            interval_ns: i64::try_from(a.interval_ms)
                .unwrap_or(i64::MAX / 1_000_000)
                .saturating_mul(1_000_000),
            cap: a.cap,
            seed: a.seed,
        }
    }

    /// LLM requests in the load.
    pub fn requests(&self) -> u64 {
        self.spans / u64::from(self.spans_per_request.clamp(1, 3))
    }

    /// Spans actually built: whole requests only.
    pub fn total_spans(&self) -> u64 {
        self.requests() * u64::from(self.spans_per_request.clamp(1, 3))
    }

    /// The load's own pace in spans per second: every run queues a request
    /// every `interval_ns`.
    pub fn spans_per_second(&self) -> f64 {
        self.runs as f64 * f64::from(self.spans_per_request.clamp(1, 3)) * 1e9
            / self.interval_ns.max(1) as f64
    }
}

/// With `--real-time`, the load's own pace in spans per second.
fn real_time_rate(a: &BenchArgs) -> Option<f64> {
    a.real_time
        .then(|| LoadSpec::from_args(a, 0).spans_per_second())
}

/// When export request `k` (of `batch` spans) is due after the start, at
/// `rate` spans per second: when the load's time reaches its first span.
pub fn due(k: usize, batch: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(k as f64 * batch as f64 / rate)
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

fn int(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

const MODELS: [&str; 3] = [
    "llama-3.1-8b-instruct",
    "mistral-7b-instruct",
    "qwen2.5-14b-instruct",
];

/// One LLM request's stamps (Unix ns) and tokens.
struct Stamps {
    queued: i64,
    admitted: i64,
    first_token: i64,
    last_token: i64,
    released: i64,
    output_tokens: i64,
    input_tokens: i64,
}

/// Yields the export requests of a [`LoadSpec`], one batch at a time, so
/// that a million spans never sit in memory as structs. Deterministic: the
/// same spec yields the same requests.
///
/// LLM request k belongs to run `k % runs` and is the `k / runs`-th request
/// of that run, so every batch holds requests of many runs.
pub struct LoadBuilder {
    spec: LoadSpec,
    rng: StdRng,
    next_request: u64,
    /// Spans built but not yet handed out (a request may straddle batches).
    pending: Vec<Span>,
    /// Later spans held back by `span_lag`, with the request number after
    /// which they are sent, in that order.
    later: std::collections::VecDeque<(u64, Span)>,
}

impl LoadBuilder {
    /// A builder at the first request.
    pub fn new(spec: LoadSpec) -> LoadBuilder {
        LoadBuilder {
            rng: StdRng::seed_from_u64(spec.seed),
            spec,
            next_request: 0,
            pending: Vec::new(),
            later: std::collections::VecDeque::new(),
        }
    }

    fn stamps(&mut self, i: u64) -> Stamps {
        let ms = 1_000_000_i64;
        let queued = START_UNIX_S * 1_000_000_000
            + i64::try_from(i)
                .unwrap_or(i64::MAX)
                .saturating_mul(self.spec.interval_ns);
        let admitted = queued + self.rng.random_range(10 * ms..=200 * ms);
        let first_token = admitted + self.rng.random_range(50 * ms..=300 * ms);
        let released = admitted + self.rng.random_range(1_000 * ms..=4_000 * ms);
        let last_token = released - self.rng.random_range(0..=5 * ms);
        Stamps {
            queued,
            admitted,
            first_token,
            last_token,
            released,
            output_tokens: self.rng.random_range(50..=400),
            input_tokens: self.rng.random_range(200..=800),
        }
    }

    /// Appends the spans of LLM request k to `pending`.
    fn push_request(&mut self, k: u64) {
        let runs = self.spec.runs.max(1);
        let (run, i) = (self.spec.first_run + k % runs, k / runs);
        let t = self.stamps(i);
        let trace_id: [u8; 16] = self.rng.random();
        let root_id: [u8; 8] = self.rng.random();
        let user = self.rng.random_range(1_000..10_000);
        let model = MODELS[self.rng.random_range(0..MODELS.len())];
        let cap = self.spec.cap;
        let run_id = format!("run-{run:03}");
        let request_id = format!("req-{run}-{i}");
        let common = |extra: Vec<KeyValue>| -> Vec<KeyValue> {
            let mut a = vec![
                s("run_id", run_id.clone()),
                s("request_id", request_id.clone()),
                int("cap", cap),
                s("gen_ai.system", "vllm"),
                s("gen_ai.operation.name", "chat"),
                s("user.id", format!("user-{user}")),
            ];
            a.extend(extra);
            a
        };
        let http = || {
            vec![
                s("http.method", "POST"),
                int("http.status_code", 200),
                s("server.address", "llm-gw-3.internal"),
                s("service.version", "2.14.1"),
            ]
        };
        let tokens = |t: &Stamps| {
            vec![
                int("output_tokens", t.output_tokens),
                int("input_tokens", t.input_tokens),
                s("gen_ai.request.model", model),
            ]
        };
        let mut spans: Vec<(&str, i64, i64, Vec<KeyValue>)> = Vec::with_capacity(3);
        match self.spec.spans_per_request {
            1 => {
                let mut a = vec![
                    int("queued_at", t.queued),
                    int("admitted_at", t.admitted),
                    int("first_token_at", t.first_token),
                    int("last_token_at", t.last_token),
                    int("released_at", t.released),
                ];
                a.extend(tokens(&t));
                a.extend(http());
                spans.push(("chat", t.queued, t.released, common(a)));
            }
            2 => {
                let mut q = vec![int("queued_at", t.queued), int("admitted_at", t.admitted)];
                q.extend(http());
                spans.push(("queue", t.queued, t.admitted, common(q)));
                let mut g = vec![
                    int("first_token_at", t.first_token),
                    int("last_token_at", t.last_token),
                    int("released_at", t.released),
                ];
                g.extend(tokens(&t));
                spans.push(("inference", t.admitted, t.released, common(g)));
            }
            _ => {
                let mut q = vec![int("queued_at", t.queued), int("admitted_at", t.admitted)];
                q.extend(http());
                spans.push(("queue", t.queued, t.admitted, common(q)));
                let p = vec![
                    int("admitted_at", t.admitted),
                    int("first_token_at", t.first_token),
                    s("gen_ai.request.model", model),
                    int("input_tokens", t.input_tokens),
                ];
                spans.push(("prefill", t.admitted, t.first_token, common(p)));
                let d = vec![
                    int("last_token_at", t.last_token),
                    int("released_at", t.released),
                    int("output_tokens", t.output_tokens),
                    s("gen_ai.request.model", model),
                ];
                spans.push(("decode", t.first_token, t.released, common(d)));
            }
        }
        for (n, (name, start, end, attributes)) in spans.into_iter().enumerate() {
            let (span_id, parent) = if n == 0 {
                (root_id.to_vec(), Vec::new())
            } else {
                (self.rng.random::<[u8; 8]>().to_vec(), root_id.to_vec())
            };
            let span = Span {
                trace_id: trace_id.to_vec(),
                span_id,
                parent_span_id: parent,
                name: name.to_string(),
                kind: if n == 0 {
                    SpanKind::Server as i32
                } else {
                    SpanKind::Internal as i32
                },
                start_time_unix_nano: u64::try_from(start).unwrap_or(0),
                end_time_unix_nano: u64::try_from(end).unwrap_or(0),
                attributes,
                ..Span::default()
            };
            if n > 0 && self.spec.span_lag > 0 {
                self.later
                    .push_back((k.saturating_add(self.spec.span_lag), span));
            } else {
                self.pending.push(span);
            }
        }
    }

    fn wrap(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        s("service.name", "llm-gateway"),
                        s("service.instance.id", "llm-gateway-7f9c4"),
                    ],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tpsgap-bench".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }
}

impl Iterator for LoadBuilder {
    type Item = ExportTraceServiceRequest;

    fn next(&mut self) -> Option<ExportTraceServiceRequest> {
        let batch = usize::try_from(self.spec.batch.max(1)).unwrap_or(usize::MAX);
        while self.pending.len() < batch && self.next_request < self.spec.requests() {
            self.push_request(self.next_request);
            self.next_request += 1;
            while let Some((due, _)) = self.later.front() {
                if *due >= self.next_request {
                    break;
                }
                if let Some((_, span)) = self.later.pop_front() {
                    self.pending.push(span);
                }
            }
        }
        if self.next_request >= self.spec.requests() {
            // The last requests' later spans go out at the end.
            self.pending
                .extend(self.later.drain(..).map(|(_, span)| span));
        }
        if self.pending.is_empty() {
            return None;
        }
        let rest = self.pending.split_off(batch.min(self.pending.len()));
        let spans = std::mem::replace(&mut self.pending, rest);
        Some(Self::wrap(spans))
    }
}

/// The load ready to send: one body per export request, in the wire form of
/// the protocol (gRPC bodies carry their 5-byte frame header).
#[derive(Clone, Debug, Default)]
pub struct Payloads {
    /// Request bodies, sent as they are.
    pub bodies: Vec<Bytes>,
    /// Spans in all bodies.
    pub spans: u64,
    /// Serialized protobuf bytes (before compression and framing).
    pub raw_bytes: u64,
    /// Bytes of the bodies on the wire (after compression and framing).
    pub wire_bytes: u64,
}

impl Payloads {
    /// Mean serialized protobuf bytes per span.
    pub fn bytes_per_span(&self) -> f64 {
        self.raw_bytes as f64 / self.spans.max(1) as f64
    }
}

/// A compression the load can be sent with (`--gzip`, `--zstd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Gzip,
    Zstd,
}

impl Encoding {
    /// The one `args` asks for, if any.
    pub fn of(args: &BenchArgs) -> Option<Encoding> {
        match (args.gzip, args.zstd) {
            (true, _) => Some(Encoding::Gzip),
            (_, true) => Some(Encoding::Zstd),
            _ => None,
        }
    }

    /// Its name in `grpc-encoding` and `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }

    /// `data` compressed at the level senders use by default (compressing
    /// into memory cannot fail but for OOM).
    fn compress(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 3),
                    flate2::Compression::default(),
                );
                e.write_all(data)?;
                e.finish()
            }
            Encoding::Zstd => zstd::bulk::compress(data, zstd::DEFAULT_COMPRESSION_LEVEL),
        }
    }

    /// `data` decompressed as the receivers decompress it (the
    /// decompressor they find by this name), the fastest way tpsgap has.
    fn decompress(self, data: &[u8]) -> Result<Vec<u8>, DecompressError> {
        let decompress = decompress::for_encoding(self.name())
            .ok_or_else(|| DecompressError::Corrupt(format!("no {} decompressor", self.name())))?;
        decompress(data, usize::MAX)
    }
}

/// Builds the load of `spec` and serializes it once: protobuf, optionally
/// compressed, and for gRPC the frame header.
///
/// # Errors
/// Only when compression fails (out of memory).
pub fn prepare(
    spec: &LoadSpec,
    protocol: Protocol,
    compress: Option<Encoding>,
) -> std::io::Result<Payloads> {
    let mut out = Payloads::default();
    for req in LoadBuilder::new(spec.clone()) {
        out.spans += req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum::<u64>();
        let raw = req.encode_to_vec();
        out.raw_bytes += raw.len() as u64;
        let data = match compress {
            Some(e) => e.compress(&raw)?,
            None => raw,
        };
        let body = match protocol {
            Protocol::Grpc => grpc_frame(&data, compress.is_some()),
            Protocol::Http => Bytes::from(data),
        };
        out.wire_bytes += body.len() as u64;
        out.bodies.push(body);
    }
    Ok(out)
}

/// The median (mean of the middle two for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

// ---------------------------------------------------------------------------
// /proc readings.
// ---------------------------------------------------------------------------

/// User + system CPU seconds of a process (`pid` a number, or "self" for
/// this process) or of this thread ("thread-self"): from the kernel's
/// CPU-time clock of that process or thread, to the nanosecond
/// ([`cpu_clock_seconds`]); where that clock cannot be read, from
/// `/proc/<pid>/stat`, in clock ticks ([`proc_cpu_seconds`]).
///
/// # Errors
/// When neither can be read (e.g. the process is gone).
pub fn cpu_seconds(pid: &str, ticks_per_s: f64) -> anyhow::Result<f64> {
    match cpu_clock_seconds(pid) {
        Some(s) => Ok(s),
        None => proc_cpu_seconds(pid, ticks_per_s),
    }
}

/// The CPU-time clock of a process (`clock_getcpuclockid`: every thread,
/// those that ended included) or of this thread, in seconds; `None` when it
/// cannot be read (the process is gone, or not Linux).
pub fn cpu_clock_seconds(pid: &str) -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        let clock = match pid {
            "thread-self" => libc::CLOCK_THREAD_CPUTIME_ID,
            "self" => libc::CLOCK_PROCESS_CPUTIME_ID,
            n => {
                let pid: libc::pid_t = n.parse().ok()?;
                let mut clock: libc::clockid_t = 0;
                // SAFETY: `clock` is a valid place for the result.
                let rc = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
                (rc == 0).then_some(clock)?
            }
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid place for the result.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// User + system CPU seconds of a process from `/proc/<pid>/stat`, in
/// clock ticks (10 ms on most systems).
///
/// # Errors
/// When the file cannot be read or parsed (e.g. the process is gone).
pub fn proc_cpu_seconds(pid: &str, ticks_per_s: f64) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Then state is field 3, utime 14, stime 15.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| anyhow!("{path}: no ')' in {text:?}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| anyhow!("{path}: field {} is not a tick count", i + 3))
    };
    Ok((field(11)? + field(12)?) / ticks_per_s)
}

/// (peak RSS `VmHWM`, current RSS `VmRSS`) in MiB from `/proc/<pid>/status`.
///
/// # Errors
/// When the file cannot be read or lacks the fields.
pub fn rss_mib(pid: &str) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb = |name: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow!("{path}: no {name} line"))
    };
    Ok((kb("VmHWM:")? / 1024.0, kb("VmRSS:")? / 1024.0))
}

/// Clock ticks per second: `getconf CLK_TCK`, else 100.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------
// The async shell: server, sender, measurement.
// ---------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `uri`: (status, body).
async fn http_get(client: &HttpClient, uri: &str) -> anyhow::Result<(u16, Bytes)> {
    let uri: hyper::Uri = uri.parse().with_context(|| format!("bad URL {uri:?}"))?;
    let req = hyper::Request::get(uri.clone())
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("GET {uri}"))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("GET {uri}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("GET {uri}: reading the body"))?
        .to_bytes();
    Ok((status, body))
}

/// Where the server under load listens, and its process.
struct Server {
    pid: u32,
    /// Present when this bench spawned it.
    child: Option<Child>,
    log: Option<PathBuf>,
    grpc: Option<String>,
    http: Option<String>,
    api: Option<String>,
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Server {
    /// Spawns `tpsgap serve` on free loopback ports and waits for `/readyz`.
    async fn spawn(extra: &[String], n: u64) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding the tpsgap executable")?;
        // Hold all three listeners at once so the ports differ, then free them.
        let ports = {
            let ls = (0..3)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<Vec<_>, _>>()
                .context("binding 127.0.0.1:0 to find free ports")?;
            ls.iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<Result<Vec<_>, _>>()
                .context("local address")?
        };
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let (grpc, http, api) = (addr(ports[0]), addr(ports[1]), addr(ports[2]));
        let log = std::env::temp_dir().join(format!(
            "tpsgap-bench-{}-server-{n}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let child = std::process::Command::new(&exe)
            .arg("serve")
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--api-listen", &api.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let mut server = Server {
            pid: child.id(),
            child: Some(child),
            log: Some(log),
            grpc: Some(format!("http://{grpc}")),
            http: Some(format!("http://{http}/v1/traces")),
            api: Some(format!("http://{api}")),
        };
        if let Err(e) = server.wait_ready().await {
            let _ = server.stop();
            return Err(e);
        }
        Ok(server)
    }

    /// A server that runs already.
    fn external(a: &BenchArgs, pid: u32) -> anyhow::Result<Server> {
        let http = a.http_endpoint.as_ref().map(|u| {
            let u = u.trim_end_matches('/');
            let has_path = u.split_once("://").map_or(u, |(_, r)| r).contains('/');
            if has_path {
                u.to_string()
            } else {
                format!("{u}/v1/traces")
            }
        });
        let server = Server {
            pid,
            child: None,
            log: None,
            grpc: a.grpc_endpoint.clone(),
            http,
            api: a
                .api_endpoint
                .clone()
                .map(|u| u.trim_end_matches('/').into()),
        };
        std::fs::metadata(format!("/proc/{pid}"))
            .with_context(|| format!("no process {pid} (--server-pid)"))?;
        match a.protocol {
            Protocol::Grpc if server.grpc.is_none() => {
                bail!("--server-pid with --protocol grpc needs --grpc-endpoint")
            }
            Protocol::Http if server.http.is_none() => {
                bail!("--server-pid with --protocol http needs --http-endpoint")
            }
            _ => Ok(server),
        }
    }

    fn log_hint(&self) -> String {
        self.log.as_ref().map_or_else(String::new, |p| {
            format!("\nserver log {}:\n{}", p.display(), log_tail(p))
        })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let api = self.api.clone().context("no API endpoint")?;
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait().context("checking the server")? {
                    bail!("the server exited at start ({st}){}", self.log_hint());
                }
            }
            if let Ok((200, _)) = http_get(&client, &format!("{api}/readyz")).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server's {api}/readyz did not answer 200 within 30 s{}",
                    self.log_hint()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The number of runs `GET /api/v1/runs` lists; None without an API endpoint.
    async fn runs_seen(&self) -> anyhow::Result<Option<u64>> {
        let Some(api) = &self.api else {
            return Ok(None);
        };
        let uri = format!("{api}/api/v1/runs");
        let (code, body) = http_get(&http_client(), &uri).await?;
        if code != 200 {
            bail!("GET {uri}: HTTP {code}");
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).with_context(|| format!("GET {uri}: not JSON"))?;
        let runs = v["runs"]
            .as_array()
            .ok_or_else(|| anyhow!("GET {uri}: no \"runs\" array"))?;
        Ok(Some(runs.len() as u64))
    }

    /// Stops a spawned server with SIGTERM (SIGKILL after 30 s) and waits
    /// for it; leaves an external one alone.
    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait().context("checking the server")?.is_none() {
            let st = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .context("running kill -TERM")?;
            if !st.success() {
                bail!("kill -TERM {} failed ({st})", self.pid);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().context("waiting for the server")? {
                if !st.success() {
                    bail!("the server stopped with {st}{}", self.log_hint());
                }
                if let Some(p) = &self.log {
                    let _ = std::fs::remove_file(p);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the server did not stop within 30 s of SIGTERM; killed{}",
                    self.log_hint()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one send attempt got.
enum Answer {
    /// Accepted, with the spans the server rejected through partial success.
    Accepted(i64),
    /// Refused for now (gRPC UNAVAILABLE / RESOURCE_EXHAUSTED, HTTP 429 /
    /// 503, a transport error): send again after a pause.
    Retry(String),
}

/// Sends pre-serialized bodies.
#[derive(Clone)]
enum Sender {
    /// Raw gRPC calls over tonic channels: the bodies already carry the
    /// frame header, so nothing is encoded or compressed per call (tonic's
    /// `Grpc` client would compress each call itself for `--gzip`, `--zstd`).
    Grpc {
        channels: Vec<Channel>,
        encoding: Option<Encoding>,
    },
    Http {
        client: Box<HttpClient>,
        uri: hyper::Uri,
        encoding: Option<Encoding>,
    },
}

fn decode_response(data: &[u8], what: &str) -> anyhow::Result<i64> {
    let r = ExportTraceServiceResponse::decode(data)
        .with_context(|| format!("{what}: undecodable ExportTraceServiceResponse"))?;
    Ok(r.partial_success.map_or(0, |p| p.rejected_spans))
}

impl Sender {
    async fn new(
        server: &Server,
        protocol: Protocol,
        encoding: Option<Encoding>,
        conns: u64,
    ) -> anyhow::Result<Sender> {
        match protocol {
            Protocol::Grpc => {
                let url = server.grpc.clone().context("no gRPC endpoint")?;
                let ep = Endpoint::from_shared(url.clone())
                    .with_context(|| format!("bad gRPC endpoint {url:?}"))?
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(16 << 20)
                    .tcp_nodelay(true);
                let mut channels = Vec::new();
                for _ in 0..conns {
                    channels.push(
                        ep.connect()
                            .await
                            .with_context(|| format!("connecting to {url}"))?,
                    );
                }
                Ok(Sender::Grpc { channels, encoding })
            }
            Protocol::Http => {
                let url = server.http.clone().context("no HTTP endpoint")?;
                let uri = url
                    .parse()
                    .with_context(|| format!("bad HTTP endpoint {url:?}"))?;
                Ok(Sender::Http {
                    client: Box::new(http_client()),
                    uri,
                    encoding,
                })
            }
        }
    }

    async fn send(&self, body: &Bytes, worker: usize) -> anyhow::Result<Answer> {
        match self {
            Sender::Grpc { channels, encoding } => {
                let ch = channels[worker % channels.len()].clone();
                let mut b = http::Request::builder()
                    .method(http::Method::POST)
                    .uri(EXPORT)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers");
                if let Some(e) = encoding {
                    b = b.header("grpc-encoding", e.name());
                }
                let req = b
                    .body(tonic::body::Body::new(Full::new(body.clone())))
                    .context("building the gRPC request")?;
                let resp = match tower::ServiceExt::oneshot(ch, req).await {
                    Ok(r) => r,
                    Err(e) => return Ok(Answer::Retry(format!("gRPC transport: {e}"))),
                };
                let (head, body) = resp.into_parts();
                if head.status != http::StatusCode::OK {
                    bail!("gRPC call answered HTTP {}", head.status);
                }
                let collected = match body.collect().await {
                    Ok(c) => c,
                    Err(e) => return Ok(Answer::Retry(format!("gRPC response: {e}"))),
                };
                let trailers = collected.trailers().cloned();
                let status = tonic::Status::from_header_map(&head.headers)
                    .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
                    .ok_or_else(|| anyhow!("gRPC response without grpc-status"))?;
                match status.code() {
                    tonic::Code::Ok => {
                        let data = collected.to_bytes();
                        let msg = data.get(5..).unwrap_or_default();
                        if data.first() == Some(&1) {
                            bail!("the server sent a compressed response it was not asked for");
                        }
                        Ok(Answer::Accepted(decode_response(msg, "gRPC")?))
                    }
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                        Ok(Answer::Retry(format!("gRPC {status}")))
                    }
                    _ => bail!("the server refused an export request: {status}"),
                }
            }
            Sender::Http {
                client,
                uri,
                encoding,
            } => {
                let mut b = hyper::Request::post(uri.clone())
                    .header("content-type", "application/x-protobuf");
                if let Some(e) = encoding {
                    b = b.header("content-encoding", e.name());
                }
                let req = b
                    .body(Full::new(body.clone()))
                    .context("building the HTTP request")?;
                let resp = match client.request(req).await {
                    Ok(r) => r,
                    Err(e) => return Ok(Answer::Retry(format!("HTTP transport: {e}"))),
                };
                let code = resp.status();
                let data = match resp.into_body().collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) => return Ok(Answer::Retry(format!("HTTP response: {e}"))),
                };
                match code.as_u16() {
                    200..=299 => Ok(Answer::Accepted(decode_response(&data, "HTTP")?)),
                    429 | 503 => Ok(Answer::Retry(format!("HTTP {code}"))),
                    _ => bail!(
                        "the server refused an export request: HTTP {code}: {}",
                        String::from_utf8_lossy(&data[..data.len().min(300)])
                    ),
                }
            }
        }
    }
}

/// What the send phase counted.
#[derive(Default)]
struct Counts {
    retries: AtomicU64,
    rejected: AtomicU64,
}

/// Sends every body with `in_flight` workers; each takes the next unsent
/// body, retrying refusals with a growing pause. With `pace` (batch size,
/// spans per second), none goes before it is [`due`].
async fn send_all(
    sender: &Sender,
    bodies: Arc<Vec<Bytes>>,
    in_flight: u64,
    pace: Option<(u64, f64)>,
) -> anyhow::Result<(u64, u64)> {
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Counts::default());
    let mut set = tokio::task::JoinSet::new();
    for w in 0..usize::try_from(in_flight).unwrap_or(usize::MAX) {
        let (sender, bodies, next, counts) =
            (sender.clone(), bodies.clone(), next.clone(), counts.clone());
        set.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(k) else {
                    return Ok::<(), anyhow::Error>(());
                };
                if let Some((batch, rate)) = pace {
                    tokio::time::sleep_until(start + due(k, batch, rate)).await;
                }
                let first = Instant::now();
                let mut pause = Duration::from_millis(10);
                loop {
                    match sender.send(body, w).await? {
                        Answer::Accepted(rejected) => {
                            let r = u64::try_from(rejected.max(0)).unwrap_or(0);
                            counts.rejected.fetch_add(r, Ordering::Relaxed);
                            break;
                        }
                        Answer::Retry(why) => {
                            counts.retries.fetch_add(1, Ordering::Relaxed);
                            if first.elapsed() > RETRY_LIMIT {
                                bail!(
                                    "export request {k} still refused after {RETRY_LIMIT:?}: {why}"
                                );
                            }
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(500));
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a sender task panicked")??;
    }
    Ok((
        counts.retries.load(Ordering::Relaxed),
        counts.rejected.load(Ordering::Relaxed),
    ))
}

/// The measurements of one repeat of the send phase.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// 1-based repeat number.
    pub repeat: u64,
    pub spans: u64,
    /// Body bytes sent (after compression and framing).
    pub bytes: u64,
    /// From the first request to the last response.
    pub wall_s: f64,
    pub spans_per_s: f64,
    /// Server user + system CPU from the first request to the last response
    /// (plus --settle-ms).
    pub server_cpu_s: f64,
    pub cpu_s_per_million_spans: f64,
    /// Of that, what the server spent after the last response, during
    /// --settle-ms: runs ending at their idle timeout, windows becoming final.
    pub settle_cpu_s_per_million_spans: f64,
    /// `VmHWM` of the server: its peak RSS since it started.
    pub peak_rss_mib: f64,
    /// `VmRSS` of the server at the end.
    pub rss_end_mib: f64,
    /// Refused attempts that were sent again.
    pub retries: u64,
    /// Spans rejected through partial success.
    pub rejected_spans: u64,
    /// This bench's own CPU during the send phase (for information).
    pub client_cpu_s: f64,
    /// Runs the server's `GET /api/v1/runs` listed at the end (None without API).
    pub runs_seen: Option<u64>,
}

/// The `--json` object.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub protocol: Protocol,
    /// Whether the bodies were gzip (kept beside `compression` for readers
    /// of earlier reports).
    pub gzip: bool,
    /// `"gzip"`, `"zstd"` or null.
    pub compression: Option<Encoding>,
    pub in_flight: u64,
    pub connections: u64,
    /// "spawned" or "external".
    pub server: &'static str,
    pub runs: u64,
    /// Spans per repeat.
    pub spans: u64,
    pub spans_per_request: u8,
    /// A request's later spans were sent this many requests after its first.
    pub span_lag: u64,
    /// Sent at the load's own pace (`--real-time`), in spans per second.
    pub real_time_spans_per_s: Option<f64>,
    pub batch: u64,
    /// Export requests per repeat.
    pub export_requests: u64,
    /// Mean serialized protobuf bytes per span.
    pub avg_bytes_per_span: f64,
    /// Body bytes on the wire per repeat.
    pub wire_bytes: u64,
    /// Clock ticks per second used for the CPU readings.
    pub clock_ticks_per_s: f64,
    /// Median over the repeats.
    pub spans_per_s: f64,
    /// Median over the repeats.
    pub cpu_s_per_million_spans: f64,
    /// Median over the repeats: the part after the last response.
    pub settle_cpu_s_per_million_spans: f64,
    /// Largest peak RSS over the repeats.
    pub peak_rss_mib: f64,
    /// Retries over all repeats.
    pub retries: u64,
    /// Rejected spans over all repeats.
    pub rejected_spans: u64,
    /// Runs listed by the server after the last repeat.
    pub runs_seen: Option<u64>,
    /// The limit: CPU-seconds per million spans to only decode the same
    /// bodies in this process with the fastest decoder (decompressed as the
    /// receivers do when compressed, then the in-place reader visiting
    /// every span, attribute and event), median of 5 passes.
    pub decode_only_cpu_s_per_million_spans: f64,
    /// `cpu_s_per_million_spans` over the decode-only cost.
    pub limit_ratio: f64,
    pub repeats: Vec<Measurement>,
}

/// This thread's CPU seconds ([`cpu_seconds`] of "thread-self").
fn thread_cpu_seconds(ticks_per_s: f64) -> anyhow::Result<f64> {
    cpu_seconds("thread-self", ticks_per_s)
}

/// The decode-only cost of `load` in this process: CPU-seconds per million
/// spans, median of 5 passes. A symbol of its own, not inlined:
/// `scripts/bench_instructions.sh` counts its instructions by name.
#[inline(never)]
fn decode_only(
    load: &Payloads,
    protocol: Protocol,
    encoding: Option<Encoding>,
    ticks: f64,
) -> anyhow::Result<f64> {
    let mut per = Vec::new();
    for _ in 0..5 {
        let c0 = thread_cpu_seconds(ticks)?;
        let mut visited = 0usize;
        for body in &load.bodies {
            let data = match protocol {
                Protocol::Grpc => &body[5.min(body.len())..],
                Protocol::Http => &body[..],
            };
            let plain;
            let data = if let Some(e) = encoding {
                plain = e
                    .decompress(data)
                    .context("decompressing a prepared body")?;
                &plain[..]
            } else {
                data
            };
            visited += crate::lean::view::RequestView::parse_framing(data)
                .and_then(|v| v.visit_all())
                .context("a prepared body does not parse")?;
        }
        std::hint::black_box(visited);
        per.push((thread_cpu_seconds(ticks)? - c0) / (load.spans as f64 / 1e6));
    }
    Ok(median(&per))
}

/// One send phase against `server`, measured.
async fn measure(
    a: &BenchArgs,
    server: &Server,
    load: &Payloads,
    bodies: Arc<Vec<Bytes>>,
    repeat: u64,
    ticks: f64,
) -> anyhow::Result<Measurement> {
    let pid = server.pid.to_string();
    let sender = Sender::new(server, a.protocol, Encoding::of(a), a.connections).await?;
    let gone = |e: anyhow::Error| {
        e.context(format!(
            "reading the server's /proc entry{}",
            server.log_hint()
        ))
    };
    let cpu0 = cpu_seconds(&pid, ticks).map_err(gone)?;
    let self0 = cpu_seconds("self", ticks)?;
    let t0 = Instant::now();
    let pace = real_time_rate(a).map(|rate| (a.batch, rate));
    let sent = send_all(&sender, bodies, a.in_flight, pace).await;
    let wall_s = t0.elapsed().as_secs_f64();
    let self1 = cpu_seconds("self", ticks)?;
    let cpu_sent = cpu_seconds(&pid, ticks).map_err(gone)?;
    let (retries, rejected) = sent.map_err(|e| {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        let hint = if alive {
            String::new()
        } else {
            format!(" (the server is gone){}", server.log_hint())
        };
        e.context(format!("sending the load{hint}"))
    })?;
    if a.settle_ms > 0 {
        tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    }
    let cpu1 = cpu_seconds(&pid, ticks).map_err(gone)?;
    let (peak, end) = rss_mib(&pid).map_err(gone)?;
    let runs_seen = server.runs_seen().await?;
    let server_cpu_s = cpu1 - cpu0;
    let per_million = load.spans as f64 / 1e6;
    Ok(Measurement {
        repeat,
        spans: load.spans,
        bytes: load.wire_bytes,
        wall_s,
        spans_per_s: load.spans as f64 / wall_s.max(1e-9),
        server_cpu_s,
        cpu_s_per_million_spans: server_cpu_s / per_million,
        settle_cpu_s_per_million_spans: (cpu1 - cpu_sent) / per_million,
        peak_rss_mib: peak,
        rss_end_mib: end,
        retries,
        rejected_spans: rejected,
        client_cpu_s: self1 - self0,
        runs_seen,
    })
}

fn build(a: &BenchArgs, first_run: u64) -> anyhow::Result<Payloads> {
    let spec = LoadSpec::from_args(a, first_run);
    if spec.requests() == 0 {
        bail!(
            "--spans {} is fewer than one request of --spans-per-request {}",
            a.spans,
            a.spans_per_request
        );
    }
    let t = Instant::now();
    let load = prepare(&spec, a.protocol, Encoding::of(a)).context("building the load")?;
    eprintln!(
        "built {} spans in {} export requests ({} LLM requests over {} runs from run-{:03}): \
         {:.1} bytes/span serialized, {:.1} MiB on the wire, {:.1} s",
        load.spans,
        load.bodies.len(),
        spec.requests(),
        a.runs,
        first_run,
        load.bytes_per_span(),
        load.wire_bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    Ok(load)
}

/// Runs every repeat; stops spawned servers.
async fn repeats(a: &BenchArgs, ticks: f64) -> anyhow::Result<(Payloads, Vec<Measurement>)> {
    let external = a.server_pid;
    // A server that sees several repeats gets new runs each time.
    let fresh_runs = external.is_some() || a.reuse_server;
    let mut load = build(a, a.first_run)?;
    let mut shared: Option<Server> = match external {
        Some(pid) => Some(Server::external(a, pid)?),
        None if a.reuse_server => Some(Server::spawn(&a.server_args, 0).await?),
        None => None,
    };
    let mut out = Vec::new();
    for r in 0..a.repeat {
        if r > 0 && fresh_runs {
            load = build(a, a.first_run + r * a.runs)?;
        }
        let bodies = Arc::new(std::mem::take(&mut load.bodies));
        let m = match shared.as_ref() {
            Some(server) => measure(a, server, &load, bodies.clone(), r + 1, ticks).await?,
            None => {
                let mut server = Server::spawn(&a.server_args, r).await?;
                let m = measure(a, &server, &load, bodies.clone(), r + 1, ticks).await;
                let stopped = server.stop();
                let m = m?;
                stopped?;
                m
            }
        };
        load.bodies = Arc::try_unwrap(bodies).unwrap_or_else(|b| b.as_ref().clone());
        eprintln!(
            "repeat {}/{}: {:.0} spans/s, {:.3} server CPU-s per million spans, peak RSS {:.1} MiB, {} retries",
            r + 1,
            a.repeat,
            m.spans_per_s,
            m.cpu_s_per_million_spans,
            m.peak_rss_mib,
            m.retries
        );
        out.push(m);
    }
    if let Some(mut s) = shared.take() {
        s.stop()?;
    }
    Ok((load, out))
}

/// Writes the human table.
///
/// # Errors
/// When writing fails.
pub fn write_table(out: &mut impl Write, r: &BenchReport) -> std::io::Result<()> {
    writeln!(
        out,
        "tpsgap bench: {}{}, {} server, {} in flight, {} connection(s)",
        match r.protocol {
            Protocol::Grpc => "OTLP/gRPC",
            Protocol::Http => "OTLP/HTTP",
        },
        r.compression
            .map_or(String::new(), |e| format!(" {}", e.name())),
        r.server,
        r.in_flight,
        r.connections
    )?;
    writeln!(
        out,
        "load: {} spans in {} export requests of {} spans, {} runs, {} spans/request{}, {:.1} bytes/span, {:.1} MiB on the wire",
        r.spans,
        r.export_requests,
        r.batch,
        r.runs,
        r.spans_per_request,
        if r.span_lag > 0 {
            format!(" (later ones {} requests later)", r.span_lag)
        } else {
            String::new()
        },
        r.avg_bytes_per_span,
        r.wire_bytes as f64 / 1048576.0
    )?;
    if let Some(rate) = r.real_time_spans_per_s {
        writeln!(
            out,
            "sent at the load's own pace (--real-time): {rate:.0} spans/s"
        )?;
    }
    writeln!(
        out,
        "{:>6} {:>9} {:>11} {:>8} {:>11} {:>10} {:>9} {:>9} {:>7} {:>8} {:>9} {:>5}",
        "repeat",
        "spans",
        "MiB sent",
        "wall s",
        "spans/s",
        "server s",
        "CPU-s/M",
        "peak MiB",
        "end MiB",
        "retries",
        "client s",
        "runs"
    )?;
    for m in &r.repeats {
        writeln!(
            out,
            "{:>6} {:>9} {:>11.1} {:>8.2} {:>11.0} {:>10.2} {:>9.3} {:>9.1} {:>7.1} {:>8} {:>9.2} {:>5}",
            m.repeat,
            m.spans,
            m.bytes as f64 / 1048576.0,
            m.wall_s,
            m.spans_per_s,
            m.server_cpu_s,
            m.cpu_s_per_million_spans,
            m.peak_rss_mib,
            m.rss_end_mib,
            m.retries,
            m.client_cpu_s,
            m.runs_seen.map_or_else(|| "-".to_string(), |n| n.to_string())
        )?;
    }
    writeln!(
        out,
        "median: {:.0} spans/s, {:.3} server CPU-s per million spans ({:.3} after the last response); max peak RSS {:.1} MiB; {} retries, {} rejected spans",
        r.spans_per_s,
        r.cpu_s_per_million_spans,
        r.settle_cpu_s_per_million_spans,
        r.peak_rss_mib,
        r.retries,
        r.rejected_spans
    )?;
    writeln!(
        out,
        "limit: decoding only, in process, {:.3} CPU-s per million spans; end to end is {:.2}x that",
        r.decode_only_cpu_s_per_million_spans, r.limit_ratio
    )
}

/// Runs `tpsgap bench`: builds the load, sends it and prints the report.
///
/// # Errors
/// When the server cannot be started or measured, an export request fails
/// for good, or spans were rejected.
pub async fn run(a: &BenchArgs, out: &mut impl Write) -> anyhow::Result<()> {
    if a.server_pid.is_none() && (a.grpc_endpoint.is_some() || a.http_endpoint.is_some()) {
        bail!("--grpc-endpoint / --http-endpoint need --server-pid");
    }
    if a.server_pid.is_some() && !a.server_args.is_empty() {
        bail!("serve arguments after -- apply only to a spawned server, not with --server-pid");
    }
    let ticks = clock_ticks();
    let (load, ms) = repeats(a, ticks).await?;
    let decode = decode_only(&load, a.protocol, Encoding::of(a), ticks)?;
    let col = |f: fn(&Measurement) -> f64| ms.iter().map(f).collect::<Vec<f64>>();
    let report = BenchReport {
        protocol: a.protocol,
        gzip: a.gzip,
        compression: Encoding::of(a),
        in_flight: a.in_flight,
        connections: a.connections,
        server: if a.server_pid.is_some() {
            "external"
        } else {
            "spawned"
        },
        runs: a.runs,
        spans: load.spans,
        spans_per_request: a.spans_per_request,
        span_lag: a.span_lag,
        real_time_spans_per_s: real_time_rate(a),
        batch: a.batch,
        export_requests: load.bodies.len() as u64,
        avg_bytes_per_span: load.bytes_per_span(),
        wire_bytes: load.wire_bytes,
        clock_ticks_per_s: ticks,
        spans_per_s: median(&col(|m| m.spans_per_s)),
        cpu_s_per_million_spans: median(&col(|m| m.cpu_s_per_million_spans)),
        settle_cpu_s_per_million_spans: median(&col(|m| m.settle_cpu_s_per_million_spans)),
        peak_rss_mib: col(|m| m.peak_rss_mib).into_iter().fold(0.0, f64::max),
        retries: ms.iter().map(|m| m.retries).sum(),
        rejected_spans: ms.iter().map(|m| m.rejected_spans).sum(),
        runs_seen: ms.last().and_then(|m| m.runs_seen),
        decode_only_cpu_s_per_million_spans: decode,
        limit_ratio: median(&col(|m| m.cpu_s_per_million_spans)) / decode,
        repeats: ms,
    };
    if a.json {
        serde_json::to_writer(&mut *out, &report).context("writing the JSON report")?;
        writeln!(out).context("writing the JSON report")?;
    } else {
        write_table(out, &report).context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    if report.rejected_spans > 0 {
        bail!(
            "the server rejected {} spans through partial success",
            report.rejected_spans
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(spans: u64, spr: u8) -> LoadSpec {
        LoadSpec {
            runs: 10,
            first_run: 0,
            spans,
            batch: 64,
            spans_per_request: spr,
            span_lag: 0,
            interval_ns: 50_000_000,
            cap: 8,
            seed: 7,
        }
    }

    fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn all_spans(spec: &LoadSpec) -> Vec<Span> {
        LoadBuilder::new(spec.clone())
            .flat_map(|r| r.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// With a lag, a request's later spans come after the first span of the
    /// request that many requests later, and no span is lost or repeated.
    #[test]
    fn a_span_lag_sends_later_spans_that_many_requests_later() {
        let mut lagged = spec(3000, 2);
        lagged.span_lag = 100;
        let spans = all_spans(&lagged);
        let together = all_spans(&spec(3000, 2));
        assert_eq!(spans.len(), 3000);
        let ids = |v: &[Span]| {
            let mut ids: Vec<Vec<u8>> = v.iter().map(|s| s.span_id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&spans), ids(&together));
        // Request k is the k-th root span; its inference span follows the
        // root span of request k + 100 (and precedes request k + 101's).
        let roots: Vec<usize> = (0..spans.len())
            .filter(|&i| spans[i].parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1500);
        for k in [0usize, 7, 1398] {
            let root = &spans[roots[k]];
            let child = spans
                .iter()
                .position(|s| s.parent_span_id == root.span_id)
                .expect("the inference span is sent");
            assert!(
                child > roots[k + 100] && child < roots[k + 101],
                "request {k}"
            );
        }
        // The last hundred requests' later spans come at the end, in order.
        let root = &spans[roots[1450]];
        let child = spans
            .iter()
            .position(|s| s.parent_span_id == root.span_id)
            .expect("sent");
        assert_eq!(child, 3000 - 50);
        // A lag past the load holds every later span to the end.
        lagged.span_lag = u64::MAX;
        let spans = all_spans(&lagged);
        assert_eq!(ids(&spans), ids(&together));
        assert!(spans[..1500].iter().all(|s| s.parent_span_id.is_empty()));
    }

    #[test]
    fn real_time_sends_each_request_when_the_loads_time_reaches_it() {
        // 10 runs, two spans a request, a request per run every 50 ms.
        let sp = spec(1000, 2);
        assert_eq!(sp.spans_per_second(), 400.0);
        assert_eq!(spec(1000, 3).spans_per_second(), 600.0);
        // Requests of 64 spans: one every 160 ms.
        assert_eq!(due(0, 64, 400.0), Duration::ZERO);
        assert_eq!(due(1, 64, 400.0), Duration::from_millis(160));
        assert_eq!(due(25, 64, 400.0), Duration::from_secs(4));
        // The defaults: 100 runs, 4,000 spans/s, a 512-span request every 128 ms.
        let d = LoadSpec {
            runs: 100,
            batch: 512,
            ..spec(1000, 2)
        };
        assert_eq!(d.spans_per_second(), 4000.0);
        assert_eq!(due(10, 512, 4000.0), Duration::from_millis(1280));
    }

    #[test]
    fn builds_whole_requests_in_batches_of_many_runs() {
        let sp = spec(1000, 3);
        let reqs: Vec<_> = LoadBuilder::new(sp.clone()).collect();
        let n: Vec<usize> = reqs
            .iter()
            .map(|r| r.resource_spans[0].scope_spans[0].spans.len())
            .collect();
        assert_eq!(n.iter().sum::<usize>(), 999);
        assert!(n[..n.len() - 1].iter().all(|&k| k == 64));
        let first = &reqs[0].resource_spans[0].scope_spans[0].spans;
        let runs: std::collections::HashSet<_> = first
            .iter()
            .filter_map(|s| attr(s, "run_id"))
            .map(|v| format!("{v:?}"))
            .collect();
        assert_eq!(runs.len(), 10);
    }

    #[test]
    fn same_seed_same_bytes_and_stamps_in_order() {
        let sp = spec(400, 2);
        let a: Vec<Vec<u8>> = LoadBuilder::new(sp.clone())
            .map(|r| r.encode_to_vec())
            .collect();
        let b: Vec<Vec<u8>> = LoadBuilder::new(sp.clone())
            .map(|r| r.encode_to_vec())
            .collect();
        assert_eq!(a, b);
        let spans = all_spans(&sp);
        let ids: std::collections::HashSet<String> = spans
            .iter()
            .filter_map(|s| match attr(s, "request_id") {
                Some(Value::StringValue(v)) => Some(v.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 200);
        for pair in spans.chunks(2) {
            let stamp = |s: &Span, k| match attr(s, k) {
                Some(Value::IntValue(v)) => *v,
                other => panic!("{k}: {other:?}"),
            };
            let (q, g) = (&pair[0], &pair[1]);
            assert_eq!((q.name.as_str(), g.name.as_str()), ("queue", "inference"));
            let (queued, admitted) = (stamp(q, "queued_at"), stamp(q, "admitted_at"));
            let (first, last, rel) = (
                stamp(g, "first_token_at"),
                stamp(g, "last_token_at"),
                stamp(g, "released_at"),
            );
            assert!(queued >= START_UNIX_S * 1_000_000_000);
            assert!((10_000_000..=200_000_000).contains(&(admitted - queued)));
            assert!((50_000_000..=300_000_000).contains(&(first - admitted)));
            assert!((1_000_000_000..=4_000_000_000).contains(&(rel - admitted)));
            assert!(first <= last && last <= rel);
            assert_eq!(q.trace_id, g.trace_id);
            assert_eq!(g.parent_span_id, q.span_id);
            assert_eq!(q.start_time_unix_nano as i64, queued);
            assert_eq!(g.end_time_unix_nano as i64, rel);
        }
    }

    #[test]
    fn grpc_frames_and_gzip_round_trip() {
        let sp = spec(200, 1);
        let p = prepare(&sp, Protocol::Grpc, Some(Encoding::Gzip)).expect("prepare");
        assert_eq!(p.spans, 200);
        let body = &p.bodies[0];
        assert_eq!(body[0], 1);
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!(len, body.len() - 5);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[5..]), &mut raw)
            .expect("gunzip");
        let req = ExportTraceServiceRequest::decode(raw.as_slice()).expect("decode");
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 64);
        let h = prepare(&sp, Protocol::Http, None).expect("prepare");
        assert_eq!(h.raw_bytes, h.wire_bytes);
        assert_eq!(h.raw_bytes, p.raw_bytes);
        // zstd bodies hold the same requests.
        let z = prepare(&sp, Protocol::Http, Some(Encoding::Zstd)).expect("prepare");
        let raw = zstd::stream::decode_all(&z.bodies[0][..]).expect("unzstd");
        assert_eq!(raw, h.bodies[0]);
        assert!(
            z.wire_bytes < z.raw_bytes / 2,
            "{} of {}",
            z.wire_bytes,
            z.raw_bytes
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn reads_own_proc_entry() {
        assert!(proc_cpu_seconds("self", 100.0).expect("stat") >= 0.0);
        // The CPU-time clocks: this process by number and as "self" agree,
        // and this thread's clock moves by less than a millisecond as it
        // works (the /proc figure moves in 10 ms ticks). Work until it shows
        // 50 ms: it read 50.0-51 ms then, at most the wall time that passed
        // (one thread), and the process's clock moved at least as much. A
        // busy machine only makes the wall time longer.
        let own = std::process::id().to_string();
        let (by_pid, own_clock) = (cpu_clock_seconds(&own), cpu_clock_seconds("self"));
        let (by_pid, own_clock) = (by_pid.expect("clock"), own_clock.expect("clock"));
        assert!((by_pid - own_clock).abs() < 0.05, "{by_pid} {own_clock}");
        let thread = || cpu_clock_seconds("thread-self").expect("thread clock");
        let (t0, p0, start) = (
            thread(),
            cpu_clock_seconds("self").expect("clock"),
            Instant::now(),
        );
        let mut busy = 0.0;
        while busy < 0.050 && start.elapsed() < Duration::from_secs(60) {
            busy = thread() - t0;
        }
        let (wall, process) = (start.elapsed().as_secs_f64(), cpu_clock_seconds("self"));
        assert!((0.050..0.051).contains(&busy), "{busy}");
        assert!(busy <= wall + 1e-3, "{busy} {wall}");
        assert!(process.expect("clock") - p0 >= busy - 1e-6);
        assert!(cpu_clock_seconds("not-a-pid").is_none());
        let (peak, now) = rss_mib("self").expect("status");
        assert!(peak >= now && now > 0.0);
    }
}
