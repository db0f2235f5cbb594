//! OTLP JSON straight into the lean types.
//!
//! The same mapping as the `opentelemetry-proto` serde types (lowerCamelCase
//! names, hex trace and span ids, 64-bit integers as numbers or strings,
//! base64 bytes), but only the fields tpsgap reads: the rest is skipped
//! without being built. Strings without escapes are not copied: they are
//! sliced from the buffer that holds the JSON.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::{
    any_value, span, AnyValue, ArrayValue, ExportTraceServiceRequest, KeyValue, KeyValueList,
    Resource, ResourceSpans, ScopeSpans, Span, Status,
};

/// Parses one OTLP JSON `ExportTraceServiceRequest` held in `buf`.
///
/// # Errors
/// When `buf` is not such a JSON object.
pub fn decode(buf: &Bytes) -> Result<ExportTraceServiceRequest, serde_json::Error> {
    // Checking the whole text for UTF-8 at once is faster than string by
    // string (which `from_slice` does).
    let req: JRequest<'_> = match std::str::from_utf8(buf) {
        Ok(text) => serde_json::from_str(text)?,
        Err(_) => serde_json::from_slice(buf)?,
    };
    let b = Buf(buf);
    Ok(ExportTraceServiceRequest {
        resource_spans: req
            .resource_spans
            .into_iter()
            .map(|rs| b.resource_spans(rs))
            .collect(),
    })
}

/// The buffer the borrowed strings point into.
#[derive(Clone, Copy)]
struct Buf<'b>(&'b Bytes);

impl Buf<'_> {
    fn bytes(self, s: Cow<'_, str>) -> Bytes {
        match s {
            Cow::Borrowed(s) if !s.is_empty() => self.0.slice_ref(s.as_bytes()),
            Cow::Borrowed(_) => Bytes::new(),
            Cow::Owned(s) => Bytes::from(s),
        }
    }

    fn resource_spans(self, rs: JResourceSpans<'_>) -> ResourceSpans {
        ResourceSpans {
            resource: rs.resource.map(|r| Resource {
                attributes: self.attributes(r.attributes),
            }),
            scope_spans: rs
                .scope_spans
                .into_iter()
                .map(|ss| ScopeSpans {
                    spans: ss.spans.into_iter().map(|s| self.span(s)).collect(),
                })
                .collect(),
        }
    }

    fn span(self, s: JSpan<'_>) -> Span {
        Span {
            trace_id: s.trace_id.into(),
            span_id: s.span_id.into(),
            name: self.bytes(s.name),
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: self.attributes(s.attributes),
            events: s
                .events
                .into_iter()
                .map(|e| span::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: self.bytes(e.name),
                })
                .collect(),
            status: s.status.map(|st| Status { code: st.code }),
        }
    }

    fn attributes(self, kvs: Vec<JKeyValue<'_>>) -> Vec<KeyValue> {
        kvs.into_iter()
            .map(|kv| KeyValue {
                key: self.bytes(kv.key),
                value: kv.value.map(|v| self.value(v)),
            })
            .collect()
    }

    fn value(self, v: JAnyValue<'_>) -> AnyValue {
        use any_value::Value as L;
        AnyValue {
            value: v.0.map(|v| match v {
                JValue::String(s) => L::StringValue(self.bytes(s)),
                JValue::Bool(b) => L::BoolValue(b),
                JValue::Int(i) => L::IntValue(i),
                JValue::Double(d) => L::DoubleValue(d),
                JValue::Array(a) => L::ArrayValue(ArrayValue {
                    values: a.values.into_iter().map(|x| self.value(x)).collect(),
                }),
                JValue::Kvlist => L::KvlistValue(KeyValueList {}),
                JValue::Bytes(b) => L::BytesValue(b.into()),
            }),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JRequest<'a> {
    #[serde(borrow)]
    resource_spans: Vec<JResourceSpans<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JResourceSpans<'a> {
    #[serde(borrow)]
    resource: Option<JResource<'a>>,
    #[serde(borrow)]
    scope_spans: Vec<JScopeSpans<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JResource<'a> {
    #[serde(borrow)]
    attributes: Vec<JKeyValue<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JScopeSpans<'a> {
    #[serde(borrow)]
    spans: Vec<JSpan<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JSpan<'a> {
    #[serde(deserialize_with = "hex")]
    trace_id: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    span_id: Vec<u8>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(deserialize_with = "u64_any")]
    start_time_unix_nano: u64,
    #[serde(deserialize_with = "u64_any")]
    end_time_unix_nano: u64,
    #[serde(borrow)]
    attributes: Vec<JKeyValue<'a>>,
    #[serde(borrow)]
    events: Vec<JEvent<'a>>,
    status: Option<JStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JEvent<'a> {
    #[serde(deserialize_with = "u64_any")]
    time_unix_nano: u64,
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JStatus {
    code: i32,
}

/// `key` is required, as in the full types.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JKeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<JAnyValue<'a>>,
}

/// `values` is required, as in the full types.
#[derive(Deserialize)]
struct JArray<'a> {
    #[serde(borrow)]
    values: Vec<JAnyValue<'a>>,
}

/// The key-value list's entries are checked for shape and skipped.
#[derive(Deserialize)]
struct JKvlist {
    #[serde(rename = "values")]
    _values: Vec<JKvlistEntry>,
}

#[derive(Deserialize)]
struct JKvlistEntry {
    #[serde(rename = "key")]
    _key: IgnoredAny,
    #[serde(rename = "value", default)]
    _value: Option<IgnoredAny>,
}

enum JValue<'a> {
    String(Cow<'a, str>),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(JArray<'a>),
    Kvlist,
    Bytes(Vec<u8>),
}

/// The keys of an `AnyValue` object (matched without allocating).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum ValueKey {
    StringValue,
    BoolValue,
    IntValue,
    DoubleValue,
    ArrayValue,
    KvlistValue,
    BytesValue,
    #[serde(other)]
    Other,
}

/// An `AnyValue` object: the last known key that is not `null` wins,
/// unknown keys are ignored (the OTLP/JSON rules the full types follow).
struct JAnyValue<'a>(Option<JValue<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for JAnyValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = JAnyValue<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object for AnyValue")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<JAnyValue<'a>, M::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<ValueKey>()? {
                    let v = match key {
                        ValueKey::StringValue => map
                            .next_value::<Option<BorrowedStr<'a>>>()?
                            .map(|s| JValue::String(s.0)),
                        ValueKey::BoolValue => map.next_value::<Option<bool>>()?.map(JValue::Bool),
                        ValueKey::IntValue => map
                            .next_value::<Option<IntAny>>()?
                            .map(|i| JValue::Int(i.0)),
                        ValueKey::DoubleValue => {
                            map.next_value::<Option<f64>>()?.map(JValue::Double)
                        }
                        ValueKey::ArrayValue => {
                            map.next_value::<Option<JArray<'a>>>()?.map(JValue::Array)
                        }
                        ValueKey::KvlistValue => {
                            map.next_value::<Option<JKvlist>>()?.map(|_| JValue::Kvlist)
                        }
                        ValueKey::BytesValue => {
                            match map.next_value::<Option<BorrowedStr<'a>>>()? {
                                Some(s) => Some(JValue::Bytes(
                                    base64::engine::general_purpose::STANDARD
                                        .decode(s.0.as_bytes())
                                        .map_err(de::Error::custom)?,
                                )),
                                None => None,
                            }
                        }
                        ValueKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            None
                        }
                    };
                    if v.is_some() {
                        value = v;
                    }
                }
                Ok(JAnyValue(value))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A string, borrowed from the input when it has no escapes.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct W<'a>(#[serde(borrow)] Cow<'a, str>);
        W::deserialize(d).map(|w| BorrowedStr(w.0))
    }
}

/// An `int64` as a JSON number or a decimal string.
struct IntAny(i64);

impl<'de> Deserialize<'de> for IntAny {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntAny;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string holding one")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntAny, E> {
                Ok(IntAny(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntAny, E> {
                i64::try_from(v).map(IntAny).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntAny, E> {
                v.parse::<i64>().map(IntAny).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `fixed64` as a JSON number or a decimal string.
fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a u64 integer or a string containing a u64 integer")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.parse::<u64>().map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Trace and span ids: hex strings.
fn hex<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string representing hex-encoded bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            const_hex::decode(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}
