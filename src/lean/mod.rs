//! Lean zero-copy OTLP trace decoding (`proto/lean_trace.proto`).
//!
//! The messages keep OTLP's field numbers but only the fields tpsgap reads,
//! with strings as [`bytes::Bytes`]: decoding a request held in a `Bytes`
//! slices it, with no allocation per attribute, and skips every other field.
//! The full `opentelemetry-proto` types remain for OTLP JSON (converted with
//! `From`) and for export.

#[allow(clippy::all, missing_docs)]
mod generated;
pub mod json;
pub mod view;

pub use generated::*;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1 as full_collector;
use opentelemetry_proto::tonic::common::v1 as full_common;
use opentelemetry_proto::tonic::trace::v1 as full_trace;

/// Decodes a binary `ExportTraceServiceRequest`, slicing `buf` for strings.
///
/// # Errors
/// When the bytes are not a well-formed protobuf message of this shape.
pub fn decode(buf: Bytes) -> Result<ExportTraceServiceRequest, prost::DecodeError> {
    prost::Message::decode(buf)
}

impl From<full_collector::ExportTraceServiceRequest> for ExportTraceServiceRequest {
    fn from(r: full_collector::ExportTraceServiceRequest) -> Self {
        ExportTraceServiceRequest {
            resource_spans: r.resource_spans.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<full_trace::ResourceSpans> for ResourceSpans {
    fn from(rs: full_trace::ResourceSpans) -> Self {
        ResourceSpans {
            resource: rs.resource.map(|r| Resource {
                attributes: attributes(r.attributes),
            }),
            scope_spans: rs
                .scope_spans
                .into_iter()
                .map(|ss| ScopeSpans {
                    spans: ss.spans.into_iter().map(Into::into).collect(),
                })
                .collect(),
        }
    }
}

impl From<full_trace::Span> for Span {
    fn from(s: full_trace::Span) -> Self {
        Span {
            trace_id: s.trace_id.into(),
            span_id: s.span_id.into(),
            name: s.name.into(),
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: attributes(s.attributes),
            events: s
                .events
                .into_iter()
                .map(|e| span::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name.into(),
                })
                .collect(),
            status: s.status.map(|st| Status { code: st.code }),
        }
    }
}

fn attributes(kvs: Vec<full_common::KeyValue>) -> Vec<KeyValue> {
    kvs.into_iter()
        .map(|kv| KeyValue {
            key: kv.key.into(),
            value: kv.value.map(Into::into),
        })
        .collect()
}

impl From<full_common::AnyValue> for AnyValue {
    fn from(v: full_common::AnyValue) -> Self {
        use any_value::Value as L;
        use full_common::any_value::Value as F;
        AnyValue {
            value: v.value.map(|v| match v {
                F::StringValue(s) => L::StringValue(s.into()),
                F::BoolValue(b) => L::BoolValue(b),
                F::IntValue(i) => L::IntValue(i),
                F::DoubleValue(d) => L::DoubleValue(d),
                F::ArrayValue(a) => L::ArrayValue(ArrayValue {
                    values: a.values.into_iter().map(Into::into).collect(),
                }),
                F::KvlistValue(_) => L::KvlistValue(KeyValueList {}),
                F::BytesValue(b) => L::BytesValue(b.into()),
                F::StringValueStrindex(i) => L::StringValueStrindex(i),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{
        any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use proptest::prelude::*;

    use super::full_collector::ExportTraceServiceRequest as Full;
    use crate::extract::{Extracted, Extractor, Preset};

    const KEYS: [&str; 16] = [
        "run_id",
        "request_id",
        "queued_at",
        "admitted_at",
        "first_token_at",
        "released_at",
        "output_tokens",
        "gen_ai.usage.input_tokens",
        "cap",
        "gen_ai.request.model",
        "retry_causes",
        "error.type",
        "gen_ai.latency.e2e",
        "gen_ai.system",
        "http.method",
        "user.id",
    ];

    fn value() -> impl Strategy<Value = AnyValue> {
        let t = 1_800_000_000i64;
        let leaf = prop_oneof![
            "[a-z0-9.:-]{0,12}".prop_map(Value::StringValue),
            (t..t + 100).prop_map(|s| Value::StringValue(s.to_string())),
            any::<bool>().prop_map(Value::BoolValue),
            prop_oneof![
                0i64..20,
                t * 1_000_000_000..t * 1_000_000_000 + 10_000,
                any::<i64>()
            ]
            .prop_map(Value::IntValue),
            prop_oneof![0.0f64..5.0, (t as f64)..(t as f64 + 50.0)].prop_map(Value::DoubleValue),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::BytesValue),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| {
                    Value::ArrayValue(ArrayValue {
                        values: v.into_iter().map(|x| AnyValue { value: Some(x) }).collect(),
                    })
                }),
                proptest::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(|v| {
                    Value::KvlistValue(KeyValueList {
                        values: v
                            .into_iter()
                            .map(|(k, x)| KeyValue {
                                key: k,
                                value: Some(AnyValue { value: Some(x) }),
                                ..Default::default()
                            })
                            .collect(),
                    })
                }),
            ]
        })
        .prop_map(|v| AnyValue { value: Some(v) })
    }

    fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
        proptest::collection::vec(
            (0..KEYS.len(), proptest::option::weighted(0.95, value())),
            0..10,
        )
        .prop_map(|kvs| {
            kvs.into_iter()
                .map(|(k, value)| KeyValue {
                    key: KEYS[k].to_string(),
                    value,
                    ..Default::default()
                })
                .collect()
        })
    }

    fn a_span() -> impl Strategy<Value = Span> {
        let event = (
            prop_oneof![Just("queued"), Just("last_token"), Just("x")],
            any::<u64>(),
            attributes(),
        )
            .prop_map(|(name, time_unix_nano, attributes)| span::Event {
                name: name.to_string(),
                time_unix_nano,
                attributes,
                ..Default::default()
            });
        (
            any::<[u8; 16]>(),
            proptest::collection::vec(any::<u8>(), 0..9),
            prop_oneof![Just("llm_request"), Just("other")],
            any::<u64>(),
            any::<u64>(),
            attributes(),
            proptest::collection::vec(event, 0..3),
            proptest::option::of(0i32..3),
        )
            .prop_map(
                |(trace, span_id, name, start, end, attributes, events, code)| Span {
                    trace_id: trace.to_vec(),
                    span_id,
                    name: name.to_string(),
                    start_time_unix_nano: start % 4_000_000_000_000_000_000,
                    end_time_unix_nano: end % 4_000_000_000_000_000_000,
                    attributes,
                    events,
                    status: code.map(|code| Status {
                        code,
                        message: "m".into(),
                    }),
                    trace_state: "k=v".into(),
                    dropped_attributes_count: 1,
                    ..Default::default()
                },
            )
    }

    fn request() -> impl Strategy<Value = Full> {
        let rs = (attributes(), proptest::collection::vec(a_span(), 0..6)).prop_map(
            |(resource, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "scope".into(),
                        version: "1".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: "u".into(),
                }],
                schema_url: "u".into(),
            },
        );
        proptest::collection::vec(rs, 0..3).prop_map(|resource_spans| Full { resource_spans })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Cut short or with a byte changed, a request is refused by the
        /// in-place reader exactly when the lean decoder refuses it: checked
        /// whole, and checked span by span as extraction reads it (the
        /// receivers' way).
        #[test]
        fn view_and_lean_refuse_the_same_damage(req in request(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let bytes = prost::Message::encode_to_vec(&req);
            if bytes.is_empty() {
                return Ok(());
            }
            let mut damaged = vec![bytes[..cut.index(bytes.len())].to_vec()];
            let mut flipped = bytes.clone();
            let i = flip.0.index(bytes.len());
            flipped[i] ^= flip.1.max(1);
            damaged.push(flipped);
            for d in damaged {
                let lean = super::decode(bytes::Bytes::from(d.clone()));
                let view = super::view::RequestView::parse(&d);
                prop_assert_eq!(lean.is_ok(), view.is_ok(), "lean {:?} vs view {:?}", lean.err(), view.err());
                let read = super::view::RequestView::parse_framing(&d)
                    .and_then(|v| Extractor::default().request_view(v, &mut Vec::new()));
                prop_assert_eq!(lean.is_ok(), read.is_ok(), "lean {:?} vs reading {:?}", lean.err(), read.err());
            }
        }
    }

    /// What an extractor makes of a request, in a comparable form.
    fn extracted(x: &Extractor, req: &super::ExportTraceServiceRequest) -> Vec<String> {
        let mut out = Vec::new();
        x.request(req, |e: Extracted<'_>| out.push(format!("{e:?}")));
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The same bytes decoded lean, and decoded with the full OTLP types
        /// (then converted), give the same observations, with the default
        /// names and with each preset; so does the same request as OTLP JSON,
        /// decoded lean or full (and both JSON decoders build the same
        /// request).
        #[test]
        fn lean_and_full_decoding_extract_the_same(req in request()) {
            let bytes = prost::Message::encode_to_vec(&req);
            let lean = super::decode(bytes::Bytes::from(bytes.clone())).expect("lean decodes");
            let full: Full = prost::Message::decode(&bytes[..]).expect("full decodes");
            let text = bytes::Bytes::from(serde_json::to_vec(&req).unwrap());
            let json: Full = serde_json::from_slice(&text).unwrap();
            let (full, json) = (super::ExportTraceServiceRequest::from(full), super::ExportTraceServiceRequest::from(json));
            let lean_json = super::json::decode(&text).expect("lean JSON decodes");
            prop_assert_eq!(&lean_json, &json);
            let view = super::view::RequestView::parse_framing(&bytes).expect("the view reads it");
            let spans: usize = lean.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            prop_assert_eq!(view.span_count(), spans);
            prop_assert_eq!(super::view::RequestView::parse(&bytes).expect("checks").span_count(), spans);
            for preset in [None, Some(Preset::Vllm), Some(Preset::Genai)] {
                let x = Extractor::with_preset(preset, &Default::default());
                let want = extracted(&x, &full);
                let mut in_place = Vec::new();
                x.request_view(view, &mut in_place).expect("every span reads");
                let in_place: Vec<String> = in_place.iter().map(|e| format!("{e:?}")).collect();
                prop_assert_eq!(&in_place, &want);
                prop_assert_eq!(&extracted(&x, &lean), &want);
                prop_assert_eq!(&extracted(&x, &json), &want);
                prop_assert_eq!(&extracted(&x, &lean_json), &want);
            }
        }
    }

    /// Encodings an SDK does not make but may send: a field after an
    /// attribute's value, a field after a value, a repeated value, a long
    /// key, a multi-byte integer. The in-place reader gives what prost
    /// gives, whether a shortcut for the usual encoding applies or not.
    #[test]
    fn unusual_attribute_encodings_read_as_prost_reads_them() {
        use super::generated::{any_value::Value as V, KeyValue as Kv};
        use super::view::{KeyValueView, ValueView};
        let long = vec![b'k'; 200];
        let cases: Vec<Vec<u8>> = vec![
            // key "k", value "ab": the usual encoding.
            vec![0x0a, 1, b'k', 0x12, 4, 0x0a, 2, b'a', b'b'],
            // ... then an unknown varint field 3 after the value.
            vec![0x0a, 1, b'k', 0x12, 4, 0x0a, 2, b'a', b'b', 0x18, 5],
            // ... the value with an unknown field 9 after its string.
            vec![0x0a, 1, b'k', 0x12, 6, 0x0a, 2, b'a', b'b', 0x48, 1],
            // ... the value set twice: the last wins.
            vec![0x0a, 1, b'k', 0x12, 5, 0x0a, 1, b'a', 0x18, 7],
            // value first, then key.
            vec![0x12, 2, 0x18, 9, 0x0a, 1, b'k'],
            // an integer of several bytes, then a bool: the last wins.
            vec![0x0a, 1, b'k', 0x12, 5, 0x18, 0x80, 0x01, 0x10, 1],
            // an integer of several bytes alone.
            vec![0x0a, 1, b'k', 0x12, 3, 0x18, 0xac, 0x02],
            // a key of 200 bytes (a two-byte length).
            [&[0x0a, 0xc8, 0x01][..], &long, &[0x12, 2, 0x18, 1]].concat(),
        ];
        for bytes in cases {
            let want: Kv = prost::Message::decode(&bytes[..]).expect("prost reads it");
            let got = KeyValueView::read(&bytes).expect("the view reads it");
            assert_eq!(got.key, &want.key[..], "{bytes:?}");
            let got = match got.value {
                None | Some(ValueView::Empty) => None,
                Some(ValueView::String(s)) => {
                    Some(V::StringValue(bytes::Bytes::copy_from_slice(s)))
                }
                Some(ValueView::Int(i)) => Some(V::IntValue(i)),
                Some(ValueView::Bool(b)) => Some(V::BoolValue(b)),
                Some(other) => panic!("not in these cases: {other:?}"),
            };
            assert_eq!(got, want.value.and_then(|v| v.value), "{bytes:?}");
        }
    }

    /// The checked-in code is what prost-build makes of the schema today.
    #[test]
    fn generated_code_is_current() {
        let root = env!("CARGO_MANIFEST_DIR");
        let dir = std::env::temp_dir().join(format!("tpsgap-lean-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fds = protox::compile([format!("{root}/proto/lean_trace.proto")], [root])
            .expect("schema compiles");
        prost_build::Config::new()
            .bytes(["."])
            .out_dir(&dir)
            .compile_fds(fds)
            .expect("prost-build");
        let fresh = std::fs::read_to_string(dir.join("tpsgap.lean.rs")).expect("generated");
        let _ = std::fs::remove_dir_all(&dir);
        let path = format!("{root}/src/lean/generated.rs");
        if std::env::var_os("TPSGAP_REGENERATE").is_some() {
            std::fs::write(&path, &fresh).expect("write generated.rs");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "src/lean/generated.rs is stale: run TPSGAP_REGENERATE=1 cargo test --lib lean"
        );
    }
}
