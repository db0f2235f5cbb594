//! `tpsgap simulate`: a load generator that sends the spans of a simulated
//! LLM serving run over OTLP (or writes them to a file), with injected idle
//! gaps and their ground truth.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::config::{nanos, parse_duration};
use crate::model::Nanos;
use crate::sim::{batches, simulate, spans, Dist, GroundTruth, SimConfig, SpanMode, TimedSpan};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC (gzip).
    Grpc,
    /// OTLP/HTTP protobuf.
    Http,
}

fn parse_stall(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected OFFSET:LENGTH, e.g. 20s:3s"))?;
    let off = humantime::parse_duration(a).map_err(|e| format!("{a:?}: {e}"))?;
    Ok((off, parse_duration(b)?))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected a probability between 0 and 1")),
    }
}

#[derive(Args, Clone, Debug)]
pub struct SimulateArgs {
    /// Where to send: `http://127.0.0.1:4317` (grpc) or
    /// `http://127.0.0.1:4318/v1/traces` (http) by default.
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: Protocol,
    /// Write the spans as OTLP JSON lines to this file instead of sending.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Write the ground truth (injected gaps with causes) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<std::path::PathBuf>,
    #[arg(long, default_value = "sim")]
    pub run_id: String,
    /// The server's concurrency cap.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub cap: u32,
    /// Requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 8.0)]
    pub rate: f64,
    /// Requests already waiting at the start.
    #[arg(long, default_value_t = 0)]
    pub initial_queue: u32,
    /// Arrivals happen during this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Output tokens per request: N, uniform:MIN:MAX, exp:MEAN, normal:MEAN:SD.
    #[arg(long, default_value = "uniform:50:400")]
    pub output_tokens: Dist,
    #[arg(long, default_value = "uniform:200:800")]
    pub input_tokens: Dist,
    /// Seconds per output token after the first.
    #[arg(long, default_value = "uniform:0.002:0.004")]
    pub per_token: Dist,
    /// Seconds from admission to the first token.
    #[arg(long, default_value = "uniform:0.05:0.2")]
    pub ttft: Dist,
    /// Share of requests that fail.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub failure_rate: f64,
    /// Share of requests that needed retries.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub retry_rate: f64,
    /// Retry causes, comma-separated.
    #[arg(
        long,
        default_value = "timeout,rate_limited,connection_reset",
        value_delimiter = ','
    )]
    pub retry_causes: Vec<String>,
    /// Inject a stall: an admission pause OFFSET:LENGTH after the start
    /// (repeatable), e.g. `--stall 20s:3s`.
    #[arg(long, value_parser = parse_stall)]
    pub stall: Vec<(Duration, Duration)>,
    /// Inject refills: a freed slot takes the next request only after this
    /// handoff delay (connection churn), e.g. `--handoff 40ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub handoff: Duration,
    /// Inject under_cap: the client admits at most this many at once.
    #[arg(long)]
    pub client_limit: Option<u32>,
    /// One span per request, or a queue span and a generate span.
    #[arg(long, value_enum, default_value = "one")]
    pub spans: SpanMode,
    /// Send in real time (timestamps start now and spans leave when their
    /// time comes); otherwise send as fast as the receiver accepts.
    #[arg(long)]
    pub realtime: bool,
    /// With --realtime: play faster than real time by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Unix seconds of the run's start (default: now).
    #[arg(long)]
    pub start: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Spans per export request when not in real time.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
}

/// Unix nanoseconds now.
pub fn unix_now() -> Nanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl SimulateArgs {
    pub fn config(&self) -> SimConfig {
        SimConfig {
            run_id: self.run_id.clone(),
            start: self
                .start
                .map_or_else(unix_now, |s| (s * 1e9).round() as Nanos),
            duration: nanos(self.duration),
            cap: self.cap,
            client_limit: self.client_limit,
            arrival_rate: self.rate.max(0.0),
            initial_queue: self.initial_queue,
            output_tokens: self.output_tokens.clone(),
            input_tokens: self.input_tokens.clone(),
            per_token: self.per_token.clone(),
            ttft: self.ttft.clone(),
            failure_rate: self.failure_rate,
            retry_rate: self.retry_rate,
            retry_causes: self.retry_causes.clone(),
            stalls: self
                .stall
                .iter()
                .map(|(o, l)| (nanos(*o), nanos(*l)))
                .collect(),
            handoff: nanos(self.handoff),
            seed: self.seed,
        }
    }
}

/// An OTLP trace client over gRPC or HTTP.
pub enum Sender {
    Grpc(TraceServiceClient<Channel>),
    Http {
        client: Box<Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>>,
        uri: hyper::Uri,
    },
}

impl Sender {
    /// # Errors
    /// When the endpoint is not a valid URI.
    pub fn new(protocol: Protocol, endpoint: Option<&str>) -> Result<Sender, String> {
        match protocol {
            Protocol::Grpc => {
                let ep = endpoint.unwrap_or("http://127.0.0.1:4317").to_string();
                let ch = Channel::from_shared(ep.clone())
                    .map_err(|e| format!("{ep:?}: {e}"))?
                    .connect_lazy();
                Ok(Sender::Grpc(
                    TraceServiceClient::new(ch).send_compressed(CompressionEncoding::Gzip),
                ))
            }
            Protocol::Http => {
                let ep = endpoint.unwrap_or("http://127.0.0.1:4318/v1/traces");
                let uri: hyper::Uri = ep.parse().map_err(|e| format!("{ep:?}: {e}"))?;
                Ok(Sender::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build_http()),
                    uri,
                })
            }
        }
    }

    /// Sends one request, retrying retryable refusals (gRPC UNAVAILABLE,
    /// HTTP 429/503) for up to a minute. Returns the rejected span count.
    ///
    /// # Errors
    /// A non-retryable answer or a minute of refusals.
    pub async fn send(&mut self, req: &ExportTraceServiceRequest) -> Result<i64, String> {
        let mut delay = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let retry = match self {
                Sender::Grpc(c) => match c.export(req.clone()).await {
                    Ok(r) => {
                        return Ok(r
                            .into_inner()
                            .partial_success
                            .map_or(0, |p| p.rejected_spans))
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        s.to_string()
                    }
                    Err(s) => return Err(s.to_string()),
                },
                Sender::Http { client, uri } => {
                    let body = Full::new(Bytes::from(req.encode_to_vec()));
                    let http_req = hyper::Request::post(uri.clone())
                        .header("content-type", "application/x-protobuf")
                        .body(body)
                        .map_err(|e| e.to_string())?;
                    match client.request(http_req).await {
                        Ok(resp) => {
                            let code = resp.status();
                            let bytes = resp
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| e.to_string())?
                                .to_bytes();
                            if code.is_success() {
                                let r = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(bytes)
                                    .map_err(|e| e.to_string())?;
                                return Ok(r.partial_success.map_or(0, |p| p.rejected_spans));
                            }
                            if code.as_u16() == 429 || code.as_u16() == 503 {
                                format!("HTTP {code}")
                            } else {
                                return Err(format!("HTTP {code}"));
                            }
                        }
                        Err(e) => e.to_string(),
                    }
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("gave up after a minute of refusals: {retry}"));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Sends spans: in real time (each when its time comes, `speed`× faster), or
/// in batches as fast as accepted. Returns (spans sent, spans rejected).
///
/// # Errors
/// When sending fails for good.
pub async fn send_spans(
    sender: &mut Sender,
    spans: &[TimedSpan],
    realtime: Option<(Nanos, f64)>,
    batch: usize,
    progress: &indicatif::ProgressBar,
) -> Result<(u64, i64), String> {
    let mut rejected = 0;
    match realtime {
        Some((sim_start, speed)) => {
            let wall0 = tokio::time::Instant::now();
            let mut i = 0;
            while i < spans.len() {
                let due = spans[i].send_at;
                let wait = Duration::from_nanos(
                    ((due - sim_start).max(0) as f64 / speed.max(1e-6)) as u64,
                );
                tokio::time::sleep_until(wall0 + wait).await;
                let mut j = i;
                while j < spans.len() && spans[j].send_at <= due && j - i < batch {
                    j += 1;
                }
                rejected += sender.send(&batches(&spans[i..j], batch)[0]).await?;
                progress.inc((j - i) as u64);
                i = j;
            }
        }
        None => {
            for (k, req) in batches(spans, batch).iter().enumerate() {
                rejected += sender.send(req).await?;
                let sent = ((k + 1) * batch).min(spans.len()) - k * batch;
                progress.inc(sent as u64);
            }
        }
    }
    Ok((spans.len() as u64, rejected))
}

/// Writes the ground truth as pretty JSON.
///
/// # Errors
/// When the file cannot be written.
pub fn write_truth(path: &std::path::Path, truth: &GroundTruth) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(truth).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Why `simulate` failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("sending: {0}")]
    Send(String),
}

/// Runs `tpsgap simulate`.
///
/// # Errors
/// When sending or writing fails.
pub async fn run(args: &SimulateArgs) -> Result<(), SimulateError> {
    let cfg = args.config();
    let sim = simulate(&cfg);
    let spans = spans(&sim, &cfg, args.spans);
    if let Some(p) = &args.ground_truth {
        write_truth(p, &sim.truth)?;
    }
    eprintln!(
        "run {}: {} requests, {} spans; injected gaps: {} ({:.3} s: stall {:.3}, refill {:.3}, under_cap {:.3})",
        cfg.run_id,
        sim.requests.len(),
        spans.len(),
        sim.truth.gaps.len(),
        sim.truth.gap_seconds,
        sim.truth.gap_seconds_by_cause.stall,
        sim.truth.gap_seconds_by_cause.refill,
        sim.truth.gap_seconds_by_cause.under_cap
    );
    if let Some(path) = &args.output {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for req in batches(&spans, args.batch) {
            serde_json::to_writer(&mut f, &req)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        return Ok(());
    }
    let mut sender =
        Sender::new(args.protocol, args.endpoint.as_deref()).map_err(SimulateError::Send)?;
    let bar = indicatif::ProgressBar::new(spans.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} spans {elapsed_precise} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let realtime = args.realtime.then_some((cfg.start, args.speed));
    let (sent, rejected) = send_spans(&mut sender, &spans, realtime, args.batch, &bar)
        .await
        .map_err(SimulateError::Send)?;
    bar.finish_and_clear();
    eprintln!("sent {sent} spans ({rejected} rejected)");
    Ok(())
}
