//! Builders shared by tests, benchmarks and the simulator: requests and
//! OTLP spans from a few numbers.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::model::{Nanos, Request, Stamp, Stamps};

/// A request from its five optional timestamps (queued, admitted, first
/// token, last token, released), in nanoseconds.
pub fn request(t: [Option<Nanos>; 5]) -> Request {
    let mut stamps = Stamps::default();
    for (s, t) in Stamp::ALL.into_iter().zip(t) {
        if let Some(t) = t {
            stamps.set(s, t);
        }
    }
    let mut r = Request::default();
    r.stamps = stamps;
    r
}

/// A request that is queued at `q`, admitted at `a` and released at `r`
/// (each optional), times in seconds scaled by `unit` nanoseconds.
pub fn qar(q: Option<f64>, a: Option<f64>, r: Option<f64>, unit: f64) -> Request {
    let ns = |x: Option<f64>| x.map(|s| (s * unit).round() as Nanos);
    request([ns(q), ns(a), None, None, ns(r)])
}

/// A string attribute.
pub fn kv_str(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

/// An OTLP span for request `request_id` of `run_id` with the given
/// timestamps (ns) as integer attributes, plus `extra` attributes.
pub fn request_span(
    run_id: &str,
    request_id: &str,
    stamps: &[(Stamp, Nanos)],
    extra: Vec<KeyValue>,
    span_seq: u64,
) -> Span {
    let mut attributes = vec![kv_str("run_id", run_id), kv_str("request_id", request_id)];
    for (s, t) in stamps {
        attributes.push(kv_int(s.attribute(), *t));
    }
    attributes.extend(extra);
    let start = stamps.iter().map(|x| x.1).min().unwrap_or(0);
    let end = stamps.iter().map(|x| x.1).max().unwrap_or(0);
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&span_seq.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (span_seq + 1).to_be_bytes().to_vec(),
        name: "llm.request".to_string(),
        start_time_unix_nano: u64::try_from(start).unwrap_or(0),
        end_time_unix_nano: u64::try_from(end).unwrap_or(0),
        attributes,
        ..Default::default()
    }
}

/// Wraps spans in one export request under a resource with `service.name`.
pub fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "tpsgap-test")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A realistic synthetic export: `runs` runs, each request new, two spans
/// per request (a queue span and a generate span joined by `request_id`),
/// about a dozen attributes per span, 512 spans per export request. Returns
/// the export requests in send order.
pub fn synthetic_exports(total_spans: usize, runs: usize) -> Vec<ExportTraceServiceRequest> {
    let base: Nanos = 1_800_000_000 * crate::model::NANOS_PER_SEC;
    let mut out = Vec::new();
    let mut spans = Vec::with_capacity(512);
    let mut seq = 0u64;
    let requests = total_spans / 2;
    for i in 0..requests {
        let run = format!("run-{:03}", i % runs.max(1));
        let req = format!("req-{i:08}");
        // Per run, a request arrives every 50 ms and lives about 2 s.
        let k = (i / runs.max(1)) as i64;
        let q = base + k * 50_000_000 + (i as i64 % 7) * 1_000_000;
        let a = q + 20_000_000 + (i as i64 % 5) * 10_000_000;
        let f = a + 150_000_000;
        let l = f + 1_500_000_000 + (i as i64 % 11) * 20_000_000;
        let r = l + 5_000_000;
        spans.push(request_span(
            &run,
            &req,
            &[(Stamp::Queued, q), (Stamp::Admitted, a)],
            vec![
                kv_int("cap", 64),
                kv_str("gen_ai.request.model", "llama-3-8b"),
            ],
            seq,
        ));
        seq += 1;
        {
            spans.push(request_span(
                &run,
                &req,
                &[
                    (Stamp::FirstToken, f),
                    (Stamp::LastToken, l),
                    (Stamp::Released, r),
                ],
                vec![
                    kv_int("gen_ai.usage.output_tokens", 100 + (i as i64 % 300)),
                    kv_int("gen_ai.usage.input_tokens", 500),
                    kv_str("gen_ai.response.model", "llama-3-8b"),
                ],
                seq,
            ));
            seq += 1;
        }
        if spans.len() >= 512 {
            out.push(export(std::mem::take(&mut spans)));
        }
    }
    if !spans.is_empty() {
        out.push(export(spans));
    }
    out
}
