//! OTLP receivers. gRPC and HTTP decode their requests and call the one
//! shared [`Pipeline::handle`]; each maps outcomes to its protocol's codes in
//! one function.

pub mod decompress;
pub mod grpc;
pub mod http;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::extract::Extractor;
use crate::lean::view::RequestView;
use crate::lean::ExportTraceServiceRequest;
use crate::live::{Engine, Now, Refusal};

/// At most this many rejection reasons are quoted in a partial success.
const MAX_REASONS: usize = 5;

/// A token bucket of spans per second (capacity: one second's worth).
struct RateLimit {
    rate: u64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimit {
    /// Takes `n` tokens, or says how long until they would be there.
    fn take(&self, n: usize) -> Result<(), Refusal> {
        let now = tokio::time::Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return Ok(());
        };
        let rate = self.rate as f64;
        let (tokens, last) = *st;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
        let need = (n as f64).min(rate);
        if tokens >= need {
            *st = (tokens - need, now);
            Ok(())
        } else {
            *st = (tokens, now);
            Err(Refusal::RateLimited {
                rate: self.rate,
                retry_after: Duration::from_secs_f64(((need - tokens) / rate).max(0.05)),
            })
        }
    }
}

/// A decoded export request: lean messages (from OTLP JSON), or protobuf
/// read in place with the bytes it was read from (the write-ahead log
/// stores them as they are); its spans are checked as they are read
/// ([`RequestView::parse_framing`]).
#[derive(Clone, Copy)]
pub enum Export<'a> {
    Lean(&'a ExportTraceServiceRequest),
    Wire(RequestView<'a>, &'a Bytes),
}

/// Where the receivers stop with each export request, to measure what the
/// stages before it cost (`serve --bench-stop-after`, for benchmarks): they
/// answer success and keep nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StopAfter {
    /// The message received whole (decompressed), nothing read.
    Receive,
    /// Decoded: every span, attribute and event read and checked in place.
    Decode,
    /// Read and extracted into observations, not joined.
    Extract,
}

/// Extraction plus the live engine: what every receiver calls.
pub struct Pipeline {
    pub extractor: Extractor,
    pub engine: Arc<Engine>,
    rate: Option<RateLimit>,
    max_spans_per_batch: usize,
    /// When set, accepted requests are durable before they are acknowledged.
    pub wal: Option<crate::wal::Wal>,
    /// For benchmarks: answer after this stage and keep nothing.
    pub stop_after: Option<StopAfter>,
}

impl Pipeline {
    /// `max_spans_per_second` 0 means unlimited.
    pub fn new(
        extractor: Extractor,
        engine: Arc<Engine>,
        max_spans_per_second: u64,
        max_spans_per_batch: usize,
    ) -> Pipeline {
        Pipeline {
            extractor,
            engine,
            rate: (max_spans_per_second > 0).then(|| RateLimit {
                rate: max_spans_per_second,
                state: Mutex::new((max_spans_per_second as f64, tokio::time::Instant::now())),
            }),
            max_spans_per_batch,
            wal: None,
            stop_after: None,
        }
    }

    /// Whether a receiver answers as soon as it has the message
    /// ([`StopAfter::Receive`]).
    pub fn stops_at_receive(&self) -> bool {
        self.stop_after == Some(StopAfter::Receive)
    }

    /// Applies a request read back from the write-ahead log (no limits, no
    /// logging); a record that does not read is skipped with a warning.
    pub fn replay(&self, record: &[u8]) {
        let mut items = Vec::new();
        let read = RequestView::parse_framing(record)
            .and_then(|req| self.extractor.request_view(req, &mut items));
        if let Err(e) = read {
            tracing::warn!(error = %e, "undecodable write-ahead log record skipped");
            return;
        }
        let now = Now::system(tokio::time::Instant::now().into_std());
        if let Err(e) = self.engine.ingest(items, now) {
            tracing::warn!(error = %e, "replayed request refused");
        }
    }

    /// Extracts and joins every span of a request.
    ///
    /// # Errors
    /// [`Refusal`] when the request is refused as a whole; nothing of it was
    /// applied ([`Refusal::retryable`] tells whether a retry can succeed).
    pub async fn handle(&self, req: Export<'_>) -> Result<ExportTraceServiceResponse, Refusal> {
        let spans: usize = match req {
            Export::Lean(r) => r
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum(),
            Export::Wire(v, _) => v.span_count(),
        };
        let counters = &self.engine.counters;
        let refuse = |r: Refusal| {
            counters
                .spans_refused
                .fetch_add(spans as u64, Ordering::Relaxed);
            r
        };
        if spans > self.max_spans_per_batch {
            return Err(refuse(Refusal::TooManySpans {
                spans,
                max: self.max_spans_per_batch,
            }));
        }
        if let Some(rl) = &self.rate {
            rl.take(spans).map_err(refuse)?;
        }
        if self.stop_after == Some(StopAfter::Decode) {
            if let Export::Wire(v, _) = req {
                let visited = v
                    .visit_all()
                    .map_err(|e| Refusal::Malformed(e.to_string()))?;
                std::hint::black_box(visited);
            }
            return Ok(ExportTraceServiceResponse::default());
        }
        let mut items = Vec::with_capacity(spans);
        match req {
            Export::Lean(r) => self.extractor.request(r, |e| items.push(e)),
            // Spans are checked as they are read: a malformed one refuses the
            // whole request before anything of it is applied.
            Export::Wire(v, _) => self
                .extractor
                .request_view(v, &mut items)
                .map_err(|e| Refusal::Malformed(e.to_string()))?,
        }
        if self.stop_after == Some(StopAfter::Extract) {
            std::hint::black_box(items);
            return Ok(ExportTraceServiceResponse::default());
        }
        let now = Now::system(tokio::time::Instant::now().into_std());
        let out = self.engine.ingest(items, now)?;
        if let (Some(wal), true) = (&self.wal, out.accepted > 0) {
            let bytes = match req {
                Export::Lean(r) => Bytes::from(prost::Message::encode_to_vec(r)),
                Export::Wire(_, raw) => raw.clone(),
            };
            wal.append(bytes)
                .await
                .map_err(|e| Refusal::NotDurable(e.to_string()))?;
        }
        let n = out.rejected.len() + out.limited.len();
        let partial_success = (n > 0).then(|| {
            let mut msg: Vec<String> = out
                .rejected
                .iter()
                .map(ToString::to_string)
                .chain(out.limited.iter().cloned())
                .take(MAX_REASONS)
                .collect();
            if n > MAX_REASONS {
                msg.push(format!("and {} more", n - MAX_REASONS));
            }
            ExportTracePartialSuccess {
                rejected_spans: n as i64,
                error_message: msg.join("; "),
            }
        });
        Ok(ExportTraceServiceResponse { partial_success })
    }
}
