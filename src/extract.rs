//! OTLP span → request observation (SPEC §2): attribute aliases, the run from
//! span or resource, timestamp units, span events.
//!
//! Pure: no I/O, no clock. One [`Extractor`] is built from the configured
//! attribute names and reused for every span.

use std::borrow::Cow;
use std::convert::Infallible;

use serde::Deserialize;

use crate::lean::view::{RequestView, ResourceSpansView, SpanView, ValueView, WireError};
use crate::lean::{any_value::Value, AnyValue, ExportTraceServiceRequest, ResourceSpans, Span};
use crate::model::{
    hex, request_key, span_request_key, Nanos, Observation, SpanRef, Stamp, NANOS_PER_SEC,
};

/// OTLP `STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: i32 = 2;

/// A string attribute value, if it is valid UTF-8.
fn utf8(b: &[u8]) -> Result<&str, String> {
    match ascii(b) {
        Some(s) => Ok(s),
        None => std::str::from_utf8(b).map_err(|_| "value is not valid UTF-8".to_string()),
    }
}

/// A string that is ASCII. Ids are short and ASCII: a word-at-a-time ASCII
/// check costs less than half the general validation, which walks short
/// strings byte by byte.
#[inline]
fn ascii(b: &[u8]) -> Option<&str> {
    // SAFETY: ASCII bytes are valid UTF-8.
    b.is_ascii()
        .then(|| unsafe { std::str::from_utf8_unchecked(b) })
}

/// The attribute names read for each field; for every field the first name
/// found on a span wins. The defaults are SPEC §2's table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributeNames {
    pub run: Vec<String>,
    pub request: Vec<String>,
    pub queued_at: Vec<String>,
    pub admitted_at: Vec<String>,
    pub first_token_at: Vec<String>,
    pub last_token_at: Vec<String>,
    pub released_at: Vec<String>,
    pub output_tokens: Vec<String>,
    pub input_tokens: Vec<String>,
    pub model: Vec<String>,
    pub retry_count: Vec<String>,
    pub retry_causes: Vec<String>,
    pub cap: Vec<String>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Default for AttributeNames {
    fn default() -> Self {
        AttributeNames {
            run: names(&["run_id", "run.id"]),
            request: names(&["request_id", "request.id"]),
            queued_at: names(&[Stamp::Queued.attribute()]),
            admitted_at: names(&[Stamp::Admitted.attribute()]),
            first_token_at: names(&[Stamp::FirstToken.attribute()]),
            last_token_at: names(&[Stamp::LastToken.attribute()]),
            released_at: names(&[Stamp::Released.attribute()]),
            output_tokens: names(&[
                "output_tokens",
                "gen_ai.usage.output_tokens",
                "gen_ai.usage.completion_tokens",
                "llm.token_count.completion",
            ]),
            input_tokens: names(&[
                "input_tokens",
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.prompt_tokens",
                "llm.token_count.prompt",
            ]),
            model: names(&["gen_ai.response.model", "gen_ai.request.model", "model"]),
            retry_count: names(&["retry_count"]),
            retry_causes: names(&["retry_causes", "retry_cause"]),
            cap: names(&["cap"]),
        }
    }
}

/// Readers for instrumentation that already exists, so users need not add
/// custom attributes. See the README for how each timestamp is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// vLLM's `llm_request` spans: start = arrival, plus
    /// `gen_ai.latency.time_in_queue`, `.time_to_first_token`, `.e2e`.
    Vllm,
    /// OpenTelemetry GenAI semantic-convention spans: start/end, a
    /// first-token event or `gen_ai.response.time_to_first_chunk`.
    Genai,
}

impl Preset {
    /// The attribute names of the preset: the defaults plus its request id.
    pub fn names(self) -> AttributeNames {
        let mut n = AttributeNames::default();
        n.request.push(match self {
            Preset::Vllm => "gen_ai.request.id".to_string(),
            Preset::Genai => "gen_ai.response.id".to_string(),
        });
        n
    }
}

/// An attribute value as extraction reads it, from either decoder.
#[derive(Clone, Copy, Debug)]
pub enum Val<'a> {
    Empty,
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Array<'a>),
    KvList,
    Bytes,
    StrIndex,
}

/// The values of an array attribute.
#[derive(Clone, Copy, Debug)]
pub enum Array<'a> {
    Lean(&'a [AnyValue]),
    Wire(ValueView<'a>),
}

impl<'a> Array<'a> {
    fn try_each(self, mut f: impl FnMut(Val<'a>) -> Result<(), String>) -> Result<(), String> {
        match self {
            Array::Lean(vs) => vs.iter().try_for_each(|v| f(Val::from(v))),
            Array::Wire(v) => v.array_values().try_for_each(|v| f(Val::from(v))),
        }
    }
}

impl<'a> From<&'a AnyValue> for Val<'a> {
    fn from(v: &'a AnyValue) -> Val<'a> {
        match &v.value {
            None => Val::Empty,
            Some(Value::StringValue(s)) => Val::Str(s),
            Some(Value::BoolValue(b)) => Val::Bool(*b),
            Some(Value::IntValue(i)) => Val::Int(*i),
            Some(Value::DoubleValue(d)) => Val::Double(*d),
            Some(Value::ArrayValue(a)) => Val::Array(Array::Lean(&a.values)),
            Some(Value::KvlistValue(_)) => Val::KvList,
            Some(Value::BytesValue(_)) => Val::Bytes,
            Some(Value::StringValueStrindex(_)) => Val::StrIndex,
        }
    }
}

impl<'a> From<ValueView<'a>> for Val<'a> {
    fn from(v: ValueView<'a>) -> Val<'a> {
        match v {
            ValueView::Empty => Val::Empty,
            ValueView::String(s) => Val::Str(s),
            ValueView::Bool(b) => Val::Bool(b),
            ValueView::Int(i) => Val::Int(i),
            ValueView::Double(d) => Val::Double(d),
            ValueView::Array(_) => Val::Array(Array::Wire(v)),
            ValueView::KvList => Val::KvList,
            ValueView::Bytes(_) => Val::Bytes,
            ValueView::StringIndex(_) => Val::StrIndex,
        }
    }
}

/// What extraction reads of a span, from the lean messages or straight
/// from the wire ([`SpanView`]).
pub trait SpanSource<'a>: Copy {
    /// Why an attribute cannot be read (never, for decoded messages).
    type Error;
    /// Each attribute's key and value (`None`: the pair has no value).
    fn attributes(self) -> impl Iterator<Item = Result<Attr<'a>, Self::Error>> + Clone;
    /// A bound on the length of any attribute's value (`usize::MAX`: none
    /// known).
    fn attributes_len(self) -> usize;
    /// Each event's name and time.
    fn events(self) -> impl Iterator<Item = (&'a [u8], u64)>;
    fn trace_id(self) -> &'a [u8];
    fn span_id(self) -> &'a [u8];
    fn name(self) -> &'a [u8];
    fn start(self) -> u64;
    fn end(self) -> u64;
    /// The status code, 0 without a status.
    fn status_code(self) -> i32;
}

impl<'a> SpanSource<'a> for &'a Span {
    type Error = std::convert::Infallible;
    fn attributes(self) -> impl Iterator<Item = Result<Attr<'a>, Self::Error>> + Clone {
        self.attributes
            .iter()
            .map(|kv| Ok((&kv.key[..], kv.value.as_ref().map(Val::from))))
    }
    fn attributes_len(self) -> usize {
        usize::MAX
    }
    fn events(self) -> impl Iterator<Item = (&'a [u8], u64)> {
        self.events.iter().map(|e| (&e.name[..], e.time_unix_nano))
    }
    fn trace_id(self) -> &'a [u8] {
        &self.trace_id
    }
    fn span_id(self) -> &'a [u8] {
        &self.span_id
    }
    fn name(self) -> &'a [u8] {
        &self.name
    }
    fn start(self) -> u64 {
        self.start_time_unix_nano
    }
    fn end(self) -> u64 {
        self.end_time_unix_nano
    }
    fn status_code(self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.code)
    }
}

impl<'a> SpanSource<'a> for SpanView<'a> {
    type Error = WireError;
    fn attributes(self) -> impl Iterator<Item = Result<Attr<'a>, Self::Error>> + Clone {
        SpanView::attributes(self).map(|kv| kv.map(|kv| (kv.key, kv.value.map(Val::from))))
    }
    fn attributes_len(self) -> usize {
        SpanView::attributes_len(self)
    }
    fn events(self) -> impl Iterator<Item = (&'a [u8], u64)> {
        SpanView::events(self)
    }
    fn trace_id(self) -> &'a [u8] {
        self.trace_id
    }
    fn span_id(self) -> &'a [u8] {
        self.span_id
    }
    fn name(self) -> &'a [u8] {
        self.name
    }
    fn start(self) -> u64 {
        self.start_time_unix_nano
    }
    fn end(self) -> u64 {
        self.end_time_unix_nano
    }
    fn status_code(self) -> i32 {
        self.status_code
    }
}

/// An attribute's key and value (`None`: the pair has no value).
pub type Attr<'a> = (&'a [u8], Option<Val<'a>>);

/// An attribute's value by key (after [`Extractor::span`] read them all,
/// so none fails to read here).
fn attr<'a, S: SpanSource<'a>>(span: S, key: &str) -> Option<Val<'a>> {
    span.attributes()
        .filter_map(Result::ok)
        .find(|(k, _)| *k == key.as_bytes())
        .and_then(|(_, v)| v)
}

/// A duration in seconds (a double, an integer or a numeric string).
fn parse_seconds(v: Val<'_>) -> Result<Nanos, String> {
    let secs = match v {
        Val::Double(d) => d,
        Val::Int(i) => i as f64,
        Val::Str(b) => {
            let s = utf8(b)?;
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("cannot parse {s:?} as seconds"))?
        }
        other => return Err(format!("expected seconds, got {}", describe(other))),
    };
    if !secs.is_finite() || !(0.0..1e9).contains(&secs) {
        return Err(format!("{secs} is not a duration in seconds"));
    }
    Ok((secs * 1e9).round() as Nanos)
}

/// Fills the timestamps a preset derives from span times and latencies;
/// attributes and events given explicitly win.
fn derive_stamps<'a, S: SpanSource<'a>>(
    p: Preset,
    span: S,
    o: &mut Observation<'_>,
) -> Result<(), (String, String)> {
    let (start, end) = (clamp_u64(span.start()), clamp_u64(span.end()));
    if start <= 0 {
        return Ok(());
    }
    let mut set = |s: Stamp, t: Nanos| {
        if o.stamps.get(s).is_none() {
            o.stamps.set(s, t);
        }
    };
    let secs = |key: &str| -> Result<Option<Nanos>, (String, String)> {
        attr(span, key)
            .map(|v| parse_seconds(v).map_err(|e| (key.to_string(), e)))
            .transpose()
    };
    match p {
        Preset::Vllm => {
            let queue = secs("gen_ai.latency.time_in_queue")?;
            let ttft = secs("gen_ai.latency.time_to_first_token")?;
            let e2e = secs("gen_ai.latency.e2e")?;
            if queue.is_none()
                && ttft.is_none()
                && e2e.is_none()
                && span.name() != "llm_request".as_bytes()
            {
                return Ok(());
            }
            set(Stamp::Queued, start);
            if let Some(q) = queue {
                set(Stamp::Admitted, start.saturating_add(q));
            }
            if let Some(t) = ttft {
                set(Stamp::FirstToken, start.saturating_add(t));
            }
            let released = e2e.map_or(end, |e| start.saturating_add(e));
            if released > 0 {
                set(Stamp::Released, released);
                set(Stamp::LastToken, released);
            }
        }
        Preset::Genai => {
            let genai = [
                "gen_ai.operation.name",
                "gen_ai.request.model",
                "gen_ai.system",
                "gen_ai.provider.name",
            ]
            .iter()
            .any(|k| attr(span, k).is_some());
            if !genai {
                return Ok(());
            }
            set(Stamp::Admitted, start);
            if let Some(t) = secs("gen_ai.response.time_to_first_chunk")? {
                set(Stamp::FirstToken, start.saturating_add(t));
            }
            for (name, time) in span.events() {
                if name == "gen_ai.first_token".as_bytes() || name == "first_chunk".as_bytes() {
                    if let Ok(t) = i64::try_from(time) {
                        set(Stamp::FirstToken, t);
                    }
                }
            }
            if end > 0 {
                set(Stamp::LastToken, end);
                set(Stamp::Released, end);
            }
        }
    }
    Ok(())
}

/// Fields a span attribute can fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Run,
    Request,
    Stamp(Stamp),
    OutputTokens,
    InputTokens,
    Model,
    RetryCount,
    RetryCauses,
    Cap,
    ErrorType,
}

const FIELD_COUNT: usize = 15;

impl Field {
    fn slot(self) -> usize {
        match self {
            Field::Run => 0,
            Field::Request => 1,
            Field::Stamp(s) => 2 + s as usize,
            Field::OutputTokens => 7,
            Field::InputTokens => 8,
            Field::Model => 9,
            Field::RetryCount => 10,
            Field::RetryCauses => 11,
            Field::Cap => 12,
            Field::ErrorType => 13,
        }
    }
}

/// Why a span was rejected: the attribute and what was wrong with its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("span {span_id}: attribute `{attribute}`: {reason}")]
pub struct Rejection {
    pub span_id: String,
    pub attribute: String,
    pub reason: String,
}

/// The result of extracting one span.
#[derive(Clone, Debug, PartialEq)]
pub enum Extracted<'a> {
    /// The span belongs to a run (it may or may not be a request observation).
    Observation(Observation<'a>),
    /// No `run_id` on the span or its resource: ignored and counted.
    NoRun,
    /// A value could not be parsed: the span is rejected and counted.
    Rejected(Rejection),
}

/// Turns OTLP spans into observations using the configured attribute names.
#[derive(Clone, Debug)]
pub struct Extractor {
    /// Each name's field (as its slot in [`Found`]) and priority.
    keys: KeyTable<(u8, u8)>,
    events: KeyTable<Stamp>,
    preset: Option<Preset>,
    max_attribute_length: usize,
}

impl Default for Extractor {
    fn default() -> Self {
        Extractor::new(&AttributeNames::default())
    }
}

/// A small map from attribute keys, looked up once per attribute: keys are
/// grouped by length and compared by their first eight bytes before the
/// rest, so an unknown key usually costs one length check and no hashing.
#[derive(Clone, Debug)]
struct KeyTable<V> {
    by_len: Vec<Vec<KeyEntry<V>>>,
}

/// A key's first, last and second eight bytes as words, the key, and its
/// value.
type KeyEntry<V> = (u64, u64, u64, Box<[u8]>, V);

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable { by_len: Vec::new() }
    }
}

/// A key of up to eight bytes as one word, or the first eight bytes of a
/// longer one. Keys are compared within one length, so a short key only
/// needs a word that differs for every key of its length: four to seven
/// bytes as their first and last four (which overlap), one to three as
/// the first, middle and last byte. No loop over the bytes.
#[inline(always)]
fn key_prefix(k: &[u8]) -> u64 {
    if let Some(w) = k.first_chunk::<8>() {
        return u64::from_le_bytes(*w);
    }
    match (k.first_chunk::<4>(), k.last_chunk::<4>()) {
        (Some(a), Some(b)) => {
            u64::from(u32::from_le_bytes(*a)) | u64::from(u32::from_le_bytes(*b)) << 32
        }
        _ => match k {
            [] => 0,
            [first, ..] => {
                u64::from(*first) | u64::from(k[k.len() / 2]) << 8 | u64::from(k[k.len() - 1]) << 16
            }
        },
    }
}

/// A key's first and last words ([`key_prefix`] and [`key_suffix`]):
/// with its length, the whole key when it is at most 16 bytes.
#[inline(always)]
pub(crate) fn key_words(k: &[u8]) -> (u64, u64) {
    (key_prefix(k), key_suffix(k))
}

/// The last eight bytes of a key of at least eight, as one word (zero for
/// a shorter key, which its first word holds whole).
#[inline(always)]
fn key_suffix(k: &[u8]) -> u64 {
    k.last_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w))
}

/// Bytes 8 to 16 of a key of at least sixteen, as one word (zero for a
/// shorter key, which its first and last words hold whole).
#[inline(always)]
fn key_second(k: &[u8]) -> u64 {
    k.get(8..16)
        .and_then(|w| w.first_chunk::<8>())
        .map_or(0, |w| u64::from_le_bytes(*w))
}

impl<V> KeyTable<V> {
    /// Adds `key` unless it is there already (the first name wins).
    fn insert_first(&mut self, key: &[u8], v: V) {
        if self.get(key).is_some() {
            return;
        }
        if self.by_len.len() <= key.len() {
            self.by_len.resize_with(key.len() + 1, Vec::new);
        }
        self.by_len[key.len()].push((
            key_prefix(key),
            key_suffix(key),
            key_second(key),
            key.into(),
            v,
        ));
    }

    /// Keys in a bucket have the key's length: up to sixteen bytes, the
    /// first and last words (which overlap below sixteen) are the key, up
    /// to 24 with the second word too. A longer key is looked up out of
    /// line ([`KeyTable::get_long`]), so that the usual lookup calls
    /// nothing and saves no registers.
    #[inline]
    fn get(&self, key: &[u8]) -> Option<&V> {
        let n = key.len();
        if n > 24 {
            return self.get_long(key);
        }
        let bucket = self.by_len.get(n)?;
        let (p, q) = (key_prefix(key), key_suffix(key));
        bucket
            .iter()
            .find(|(kp, kq, ks, _, _)| {
                *kp == p && (n <= 8 || (*kq == q && (n <= 16 || *ks == key_second(key))))
            })
            .map(|(_, _, _, _, v)| v)
    }

    /// [`KeyTable::get`] of a key over 24 bytes: the bytes between its
    /// second and last words are compared one by one.
    #[cold]
    #[inline(never)]
    fn get_long(&self, key: &[u8]) -> Option<&V> {
        let n = key.len();
        let (p, q, s) = (key_prefix(key), key_suffix(key), key_second(key));
        self.by_len
            .get(n)?
            .iter()
            .find(|(kp, kq, ks, k, _)| {
                *kp == p && *kq == q && *ks == s && k[16..n - 8] == key[16..n - 8]
            })
            .map(|(_, _, _, _, v)| v)
    }
}

type Found<'a> = [Option<(u8, &'a [u8], Val<'a>)>; FIELD_COUNT];

/// An attribute key for messages (keys are not checked for UTF-8).
fn key_str(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

impl Extractor {
    pub fn new(n: &AttributeNames) -> Extractor {
        let mut keys = KeyTable::default();
        let mut events = KeyTable::default();
        let mut add = |list: &[String], f: Field| {
            for (i, k) in list.iter().enumerate() {
                keys.insert_first(
                    k.as_bytes(),
                    (f.slot() as u8, u8::try_from(i).unwrap_or(u8::MAX)),
                );
            }
        };
        add(&n.run, Field::Run);
        add(&n.request, Field::Request);
        let stamp_names = [
            (&n.queued_at, Stamp::Queued),
            (&n.admitted_at, Stamp::Admitted),
            (&n.first_token_at, Stamp::FirstToken),
            (&n.last_token_at, Stamp::LastToken),
            (&n.released_at, Stamp::Released),
        ];
        for (list, s) in stamp_names {
            add(list, Field::Stamp(s));
        }
        add(&n.output_tokens, Field::OutputTokens);
        add(&n.input_tokens, Field::InputTokens);
        add(&n.model, Field::Model);
        add(&n.retry_count, Field::RetryCount);
        add(&n.retry_causes, Field::RetryCauses);
        add(&n.cap, Field::Cap);
        add(&names(&["error.type"]), Field::ErrorType);
        for (list, s) in stamp_names {
            events.insert_first(s.event_name().as_bytes(), s);
            for k in list {
                events.insert_first(k.as_bytes(), s);
            }
        }
        Extractor {
            keys,
            events,
            preset: None,
            max_attribute_length: usize::MAX,
        }
    }

    /// Rejects spans with a string attribute value longer than `max` bytes.
    pub fn max_attribute_length(mut self, max: usize) -> Extractor {
        self.max_attribute_length = max;
        self
    }

    /// An extractor for a preset's spans (its names, its derived timestamps,
    /// and the run falling back to the resource's `service.instance.id` or
    /// `service.name`).
    pub fn with_preset(preset: Option<Preset>, names: &AttributeNames) -> Extractor {
        let mut x = Extractor::new(&preset.map_or_else(|| names.clone(), Preset::names));
        x.preset = preset;
        x
    }

    /// Finds the attributes of each field.
    fn scan<'a, E>(
        &self,
        attrs: impl Iterator<Item = Result<Attr<'a>, E>>,
        found: &mut Found<'a>,
    ) -> Result<(), E> {
        for a in attrs {
            let (key, value) = a?;
            let (Some(&(slot, prio)), Some(v)) = (self.keys.get(key), value) else {
                continue;
            };
            let slot = &mut found[usize::from(slot)];
            if slot.is_none_or(|(p, _, _)| prio < p) {
                *slot = Some((prio, key, v));
            }
        }
        Ok(())
    }

    /// The first attribute of `span` whose string value is over the length
    /// limit, if any: looked for only when the stretch that holds them all
    /// is over it ([`SpanSource::attributes_len`]), so the usual span read
    /// in place is not read twice. A decoded message has no such bound and
    /// is always looked through again when a limit is set: a walk of its
    /// attribute list, little beside decoding it (it came as OTLP JSON).
    #[inline(always)]
    fn too_long<'a, S: SpanSource<'a>>(&self, span: S) -> Option<&'a [u8]> {
        if span.attributes_len() <= self.max_attribute_length {
            return None;
        }
        self.first_too_long(span)
    }

    #[cold]
    #[inline(never)]
    fn first_too_long<'a, S: SpanSource<'a>>(&self, span: S) -> Option<&'a [u8]> {
        span.attributes()
            .filter_map(Result::ok)
            .find(|(_, v)| matches!(v, Some(Val::Str(s)) if s.len() > self.max_attribute_length))
            .map(|(k, _)| k)
    }

    /// The run named by a resource's attributes, if any (the fallback for
    /// spans without their own run attribute).
    pub fn resource_run<'a>(
        &self,
        resource: impl Iterator<Item = (&'a [u8], Option<Val<'a>>)> + Clone,
    ) -> Option<(&'a [u8], Val<'a>)> {
        let mut found: Found<'a> = [None; FIELD_COUNT];
        let Ok(_) = self.scan(resource.clone().map(Ok::<_, Infallible>), &mut found);
        found[Field::Run.slot()]
            .map(|(_, k, v)| (k, v))
            .or_else(|| {
                self.preset?;
                ["service.instance.id", "service.name"]
                    .iter()
                    .find_map(|k| resource.clone().find(|(key, _)| *key == k.as_bytes()))
                    .and_then(|(key, v)| v.map(|v| (key, v)))
            })
    }

    /// Extracts one span. `resource_run` comes from [`Extractor::resource_run`].
    ///
    /// # Errors
    /// When an attribute cannot be read (a malformed span read in place).
    pub fn span<'a, S: SpanSource<'a>>(
        &self,
        resource_run: Option<(&'a [u8], Val<'a>)>,
        span: S,
    ) -> Result<Extracted<'a>, S::Error> {
        let mut found: Found<'a> = [None; FIELD_COUNT];
        self.scan(span.attributes(), &mut found)?;
        Ok(self.observe(resource_run, span, &found, self.too_long(span)))
    }

    /// The observation of a span whose attributes `scan` found.
    #[inline(always)]
    fn observe<'a, S: SpanSource<'a>>(
        &self,
        resource_run: Option<(&'a [u8], Val<'a>)>,
        span: S,
        found: &Found<'a>,
        too_long: Option<&'a [u8]>,
    ) -> Extracted<'a> {
        let mut out = Extracted::NoRun;
        self.observe_into(&mut out, resource_run, span, found, too_long);
        out
    }

    /// [`Extractor::observe`] into `out` (which it overwrites), each field
    /// written in place rather than the whole observation copied there.
    ///
    /// Not inlined: inlined into the loop over a request's spans it made
    /// the attribute scan beside it spill, 320 instructions a span more.
    #[inline(never)]
    fn observe_into<'a, S: SpanSource<'a>>(
        &self,
        out: &mut Extracted<'a>,
        resource_run: Option<(&'a [u8], Val<'a>)>,
        span: S,
        found: &Found<'a>,
        too_long: Option<&'a [u8]>,
    ) {
        let span_ref = span_ref(span);
        let reject = |key: &[u8], reason: String| {
            Extracted::Rejected(Rejection {
                span_id: hex(&span_ref.span_id),
                attribute: key_str(key),
                reason,
            })
        };
        if let Some(key) = too_long {
            *out = reject(
                key,
                format!(
                    "value longer than {} bytes (--max-attribute-length)",
                    self.max_attribute_length
                ),
            );
            return;
        }
        let run = found[Field::Run.slot()]
            .map(|(_, k, v)| (k, v))
            .or(resource_run);
        let Some((run_key, run_value)) = run else {
            *out = Extracted::NoRun;
            return;
        };
        let run_id = match parse_id(run_value) {
            Ok(Some(id)) => id,
            Ok(None) => {
                *out = Extracted::NoRun;
                return;
            }
            Err(e) => {
                *out = reject(run_key, e);
                return;
            }
        };
        *out = Extracted::Observation(Observation {
            run_id,
            request: 0,
            span: span_ref,
            span_start: clamp_u64(span.start()).min(MAX_TIMESTAMP),
            ..Observation::default()
        });
        let Extracted::Observation(o) = out else {
            return;
        };
        if let Err((k, e)) = self.fill(o, span, found) {
            *out = reject(&k, e);
        }
    }

    /// Fills in an observation of `span` from its attributes `found` and its
    /// events; the attribute (or what stands for one) that cannot be read,
    /// and why, when it is rejected.
    #[inline(always)]
    fn fill<'a, S: SpanSource<'a>>(
        &self,
        o: &mut Observation<'a>,
        span: S,
        found: &Found<'a>,
    ) -> Result<(), (Cow<'a, [u8]>, String)> {
        for s in Stamp::ALL {
            if let Some((_, k, v)) = found[Field::Stamp(s).slot()] {
                match timestamp(v) {
                    Ok(t) => o.stamps.set(s, t),
                    Err(e) => return Err((k.into(), e)),
                }
            }
        }
        for (name, time) in span.events() {
            if let Some(&s) = self.events.get(name) {
                if o.stamps.get(s).is_none() {
                    match i64::try_from(time)
                        .map_err(|e| e.to_string())
                        .and_then(in_range)
                    {
                        Ok(t) => o.stamps.set(s, t),
                        Err(e) => return Err((name.into(), format!("event time: {e}"))),
                    }
                }
            }
        }
        if let Some(p) = self.preset {
            if let Err((k, e)) = derive_stamps(p, span, o) {
                return Err((k.into_bytes().into(), e));
            }
            if let Some(t) = o.stamps.known().find(|t| in_range(*t).is_err()) {
                return Err((
                    b"(span times)"[..].into(),
                    format!("derived {}", in_range(t).err().unwrap_or_default()),
                ));
            }
        }
        let explicit = match found[Field::Request.slot()] {
            Some((_, k, v)) => match parse_id(v) {
                Ok(id) => id,
                Err(e) => return Err((k.into(), e)),
            },
            None => None,
        };
        match explicit {
            Some(id) => {
                o.request = request_key(&id);
                o.explicit_request_id = true;
            }
            None => o.request = span_request_key(&o.span.span_id),
        }
        let counts = [
            (Field::OutputTokens, &mut o.output_tokens),
            (Field::InputTokens, &mut o.input_tokens),
            (Field::RetryCount, &mut o.retry_count),
        ];
        for (f, dst) in counts {
            if let Some((_, k, v)) = found[f.slot()] {
                match parse_count(v) {
                    Ok(n) => *dst = Some(n),
                    Err(e) => return Err((k.into(), e)),
                }
            }
        }
        if let Some((_, k, v)) = found[Field::Cap.slot()] {
            match parse_count(v) {
                Ok(0) => return Err((k.into(), "cap must be at least 1".to_string())),
                Ok(n) => match u32::try_from(n).ok().filter(|c| *c != crate::model::NONE) {
                    Some(c) => o.cap = Some(c),
                    None => return Err((k.into(), format!("cap {n} is out of range"))),
                },
                Err(e) => return Err((k.into(), e)),
            }
        }
        if let Some((_, k, v)) = found[Field::Model.slot()] {
            match v {
                Val::Str(s) if !s.is_empty() => match utf8(s) {
                    Ok(m) => o.model = Some(m),
                    Err(e) => return Err((k.into(), e)),
                },
                Val::Str(_) | Val::Empty => {}
                _ => return Err((k.into(), "expected a string".to_string())),
            }
        }
        // Retry causes are checked, not kept: no SPEC output reports them.
        if let Some((_, k, v)) = found[Field::RetryCauses.slot()] {
            if let Err(e) = check_string_list(v) {
                return Err((k.into(), e));
            }
        }
        let error_status = span.status_code() == STATUS_CODE_ERROR;
        o.failed = error_status || found[Field::ErrorType.slot()].is_some();
        Ok(())
    }

    /// Extracts every span of a request, in order, handing each result to `sink`.
    pub fn request<'a>(
        &self,
        req: &'a ExportTraceServiceRequest,
        mut sink: impl FnMut(Extracted<'a>),
    ) {
        for rs in &req.resource_spans {
            self.resource_spans(rs, &mut sink);
        }
    }

    /// Extracts every span of one `ResourceSpans`.
    pub fn resource_spans<'a>(&self, rs: &'a ResourceSpans, sink: &mut impl FnMut(Extracted<'a>)) {
        let resource_attrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let resource_run = self.resource_run(
            resource_attrs
                .iter()
                .map(|kv| (&kv.key[..], kv.value.as_ref().map(Val::from))),
        );
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let Ok(e) = self.span(resource_run, span);
                sink(e);
            }
        }
    }

    /// Extracts every span of a request read in place ([`RequestView`]),
    /// appending each result to `out`.
    ///
    /// # Errors
    /// When a span is not well-formed; spans before it are in `out`, so a
    /// caller that applies a request whole drops them.
    #[inline(always)]
    pub fn request_view<'a>(
        &self,
        req: RequestView<'a>,
        out: &mut Vec<Extracted<'a>>,
    ) -> Result<(), WireError> {
        req.resource_spans()
            .try_for_each(|rs| self.resource_spans_view(rs, out))
    }

    /// Extracts every span of one `ResourceSpans` read in place, appending
    /// each result to `out` (written where it stays: an observation is
    /// not moved after it is made).
    ///
    /// # Errors
    /// As [`Extractor::request_view`].
    #[inline(always)]
    pub fn resource_spans_view<'a>(
        &self,
        rs: ResourceSpansView<'a>,
        out: &mut Vec<Extracted<'a>>,
    ) -> Result<(), WireError> {
        let resource_run = self.resource_run(
            rs.resource_attributes()
                .map(|kv| (kv.key, kv.value.map(Val::from))),
        );
        for span in rs.spans() {
            // (As `span`, without its `Result` around each observation: a
            // copy of it fewer.)
            let span = span?;
            let mut found: Found<'a> = [None; FIELD_COUNT];
            self.scan(SpanSource::attributes(span), &mut found)?;
            // The slot past the end is written in place: a `push` would
            // copy the whole enum (184 bytes) to place a `NoRun`.
            out.reserve(1);
            let len = out.len();
            let slot = out.spare_capacity_mut()[0].write(Extracted::NoRun);
            self.observe_into(slot, resource_run, span, &found, self.too_long(span));
            // SAFETY: the slot at `len`, within the capacity reserved above,
            // was initialized by the `write` (and `observe_into` leaves it
            // initialized: it only assigns to it).
            unsafe { out.set_len(len + 1) };
        }
        Ok(())
    }
}

fn span_ref<'a>(span: impl SpanSource<'a>) -> SpanRef {
    let mut r = SpanRef::default();
    if span.trace_id().len() == 16 {
        r.trace_id.copy_from_slice(span.trace_id());
    }
    if span.span_id().len() == 8 {
        r.span_id.copy_from_slice(span.span_id());
    }
    r
}

fn clamp_u64(v: u64) -> Nanos {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A run or request id: a non-empty string, or an integer in decimal.
/// `Ok(None)` for an empty string (treated as absent).
#[inline]
fn parse_id(v: Val<'_>) -> Result<Option<Cow<'_, str>>, String> {
    // The usual id, a non-empty ASCII string: as `utf8` reads it, inline.
    if let Val::Str(s @ [_, ..]) = v {
        if let Some(id) = ascii(s) {
            return Ok(Some(Cow::Borrowed(id)));
        }
    }
    any_id(v)
}

/// [`parse_id`] of any value: the general path, out of line.
#[inline(never)]
fn any_id(v: Val<'_>) -> Result<Option<Cow<'_, str>>, String> {
    match v {
        Val::Str([]) | Val::Empty => Ok(None),
        Val::Str(s) => utf8(s).map(|s| Some(Cow::Borrowed(s))),
        Val::Int(i) => Ok(Some(Cow::Owned(i.to_string()))),
        _ => Err("expected a string or an integer id".to_string()),
    }
}

/// A non-negative count: an integer, an integral double, or a numeric string.
#[inline]
fn parse_count(v: Val<'_>) -> Result<u64, String> {
    // The usual count, a non-negative integer, inline.
    if let Val::Int(i @ 0..) = v {
        return Ok(i as u64);
    }
    any_count(v)
}

/// [`parse_count`] of any value: the general path, out of line.
#[inline(never)]
fn any_count(v: Val<'_>) -> Result<u64, String> {
    match v {
        Val::Int(i) => {
            u64::try_from(i).map_err(|_| format!("expected a non-negative count, got {i}"))
        }
        Val::Double(d) if d.fract() == 0.0 && (0.0..1.8e19).contains(&d) => Ok(d as u64),
        Val::Str(b) => {
            let s = utf8(b)?;
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("cannot parse {s:?} as a non-negative count"))
        }
        other => Err(format!(
            "expected a non-negative count, got {}",
            describe(other)
        )),
    }
}

/// Checks a string or an array of strings.
fn check_string_list(v: Val<'_>) -> Result<(), String> {
    match v {
        Val::Str(s) => utf8(s).map(|_| ()),
        Val::Array(a) => a.try_each(|x| match x {
            Val::Str(s) => utf8(s).map(|_| ()),
            other => Err(format!("expected strings, got {}", describe(other))),
        }),
        other => Err(format!(
            "expected a string or string array, got {}",
            describe(other)
        )),
    }
}

fn describe(v: Val<'_>) -> &'static str {
    match v {
        Val::Empty => "an empty value",
        Val::Str(_) => "a string",
        Val::Bool(_) => "a bool",
        Val::Int(_) => "an integer",
        Val::Double(_) => "a double",
        Val::Array(_) => "an array",
        Val::KvList => "a key-value list",
        Val::Bytes => "bytes",
        Val::StrIndex => "a string-table index",
    }
}

/// Parses a timestamp attribute value (SPEC §2): an integer is Unix time
/// whose unit follows its magnitude, a double is Unix seconds, a string is
/// RFC 3339 or a number in those forms.
///
/// # Errors
/// A human-readable reason when the value is not a timestamp or is outside
/// the range of `i64` nanoseconds (years 1677–2262).
pub fn parse_timestamp(v: &AnyValue) -> Result<Nanos, String> {
    timestamp(Val::from(v))
}

#[inline]
fn timestamp(v: Val<'_>) -> Result<Nanos, String> {
    // The usual value, integer nanoseconds in range: what `int_timestamp`
    // and `in_range` make of it, without a call.
    if let Val::Int(i) = v {
        if (NANOS_FROM..MAX_TIMESTAMP).contains(&i) {
            return Ok(i);
        }
    }
    any_timestamp(v)
}

/// [`timestamp`] of any value: the general path, out of line.
#[inline(never)]
fn any_timestamp(v: Val<'_>) -> Result<Nanos, String> {
    let t = match v {
        Val::Int(i) => int_timestamp(i),
        Val::Double(d) => double_seconds(d),
        Val::Str(s) => string_timestamp(utf8(s)?),
        other => Err(format!("expected a timestamp, got {}", describe(other))),
    }?;
    in_range(t)
}

/// 2200-01-01T00:00:00Z: timestamps are accepted from the Unix epoch up to
/// here, which leaves the window arithmetic far from `i64` overflow.
pub const MAX_TIMESTAMP: Nanos = 7_258_118_400 * NANOS_PER_SEC;

/// A timestamp inside 1970–2200, or why not.
pub fn in_range(t: Nanos) -> Result<Nanos, String> {
    if (0..MAX_TIMESTAMP).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "timestamp {t} ns is outside 1970-01-01 to 2200-01-01"
        ))
    }
}

/// From this magnitude up, an integer timestamp is in nanoseconds.
const NANOS_FROM: i64 = 100_000_000_000_000_000;

/// An integer Unix time, unit by magnitude: < 1e11 seconds, < 1e14
/// milliseconds, < 1e17 microseconds, else nanoseconds.
pub fn int_timestamp(i: i64) -> Result<Nanos, String> {
    let m = i.unsigned_abs();
    let scale = if m < 100_000_000_000 {
        NANOS_PER_SEC
    } else if m < 100_000_000_000_000 {
        1_000_000
    } else if m < NANOS_FROM as u64 {
        1_000
    } else {
        1
    };
    i.checked_mul(scale)
        .ok_or_else(|| format!("timestamp {i} is out of range"))
}

/// Double Unix seconds. The shortest decimal that round-trips the double is
/// converted exactly, so `1800000000.1` is 1800000000.100000000 s, not the
/// binary neighbour 1800000000.099999905.
pub fn double_seconds(d: f64) -> Result<Nanos, String> {
    if !d.is_finite() {
        return Err(format!("timestamp {d} is not finite"));
    }
    decimal_seconds(&format!("{d}")).ok_or_else(|| format!("timestamp {d} is out of range"))
}

fn string_timestamp(s: &str) -> Result<Nanos, String> {
    let t = s.trim();
    if t.contains(['T', 't', ' ']) && t.contains(['-']) {
        return rfc3339(t);
    }
    if let Ok(i) = t.parse::<i64>() {
        return int_timestamp(i);
    }
    if let Some(ns) = decimal_seconds(t) {
        return Ok(ns);
    }
    match t.parse::<f64>() {
        Ok(d) if d.is_finite() => double_seconds(d),
        _ => rfc3339(t).map_err(|_| format!("cannot parse {s:?} as a timestamp")),
    }
}

fn rfc3339(s: &str) -> Result<Nanos, String> {
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("cannot parse {s:?} as an RFC 3339 timestamp: {e}"))?;
    i64::try_from(dt.unix_timestamp_nanos()).map_err(|_| format!("timestamp {s:?} is out of range"))
}

/// Exact decimal seconds (`[-]digits[.digits]`) to nanoseconds, rounding
/// half away from zero past the ninth decimal. `None` if not of that form or
/// out of range.
fn decimal_seconds(s: &str) -> Option<Nanos> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || !all_digits(frac_part) {
        return None;
    }
    let secs: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut frac: i128 = 0;
    for (i, b) in frac_part.bytes().take(9).enumerate() {
        frac += i128::from(b - b'0') * 10i128.pow(8 - i as u32);
    }
    if frac_part.as_bytes().get(9).is_some_and(|b| *b >= b'5') {
        frac += 1;
    }
    let ns = secs
        .checked_mul(i128::from(NANOS_PER_SEC))?
        .checked_add(frac)?;
    i64::try_from(if neg { -ns } else { ns }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lean::{span::Event, ArrayValue, KeyValue, Status};

    #[test]
    fn utf8_takes_ascii_and_valid_utf8_and_rejects_the_rest() {
        assert_eq!(utf8(b"run-042"), Ok("run-042"));
        assert_eq!(utf8(b""), Ok(""));
        assert_eq!(
            utf8("mod\u{e8}le-\u{1f600}".as_bytes()),
            Ok("mod\u{e8}le-\u{1f600}")
        );
        let bad = "value is not valid UTF-8".to_string();
        assert_eq!(utf8(b"req-\xff"), Err(bad.clone()));
        // A lone continuation byte, and a sequence cut short, after ASCII.
        assert_eq!(utf8(b"abcdefghijklmnop\x80"), Err(bad.clone()));
        assert_eq!(utf8(b"abcdefgh\xe2\x82"), Err(bad));
    }

    fn int(i: i64) -> AnyValue {
        AnyValue {
            value: Some(Value::IntValue(i)),
        }
    }
    fn dbl(d: f64) -> AnyValue {
        AnyValue {
            value: Some(Value::DoubleValue(d)),
        }
    }
    fn st(s: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::StringValue(s.to_string().into())),
        }
    }
    fn kv(k: &str, v: AnyValue) -> KeyValue {
        KeyValue {
            key: k.to_string().into(),
            value: Some(v),
        }
    }
    fn span(attrs: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16].into(),
            span_id: vec![0, 0, 0, 0, 0, 0, 0, 7].into(),
            start_time_unix_nano: 42,
            attributes: attrs,
            ..Default::default()
        }
    }
    fn obs(e: Result<Extracted<'_>, Infallible>) -> Observation<'_> {
        let Ok(e) = e;
        match e {
            Extracted::Observation(o) => o,
            other => panic!("expected an observation, got {other:?}"),
        }
    }

    const T: i64 = 1_800_000_000; // seconds
    const TNS: i64 = T * NANOS_PER_SEC;

    #[test]
    fn integer_units_follow_magnitude() {
        assert_eq!(parse_timestamp(&int(T)), Ok(TNS));
        assert_eq!(parse_timestamp(&int(T * 1000 + 250)), Ok(TNS + 250_000_000));
        assert_eq!(
            parse_timestamp(&int(T * 1_000_000 + 250)),
            Ok(TNS + 250_000)
        );
        assert_eq!(parse_timestamp(&int(TNS + 7)), Ok(TNS + 7));
        // The unit boundaries themselves.
        assert_eq!(
            int_timestamp(9_000_000_000),
            Ok(9_000_000_000 * NANOS_PER_SEC)
        );
        assert!(
            int_timestamp(99_999_999_999).is_err(),
            "seconds past year 2262"
        );
        assert_eq!(int_timestamp(100_000_000_000), Ok(100_000_000_000_000_000));
        assert_eq!(
            int_timestamp(100_000_000_000_000),
            Ok(100_000_000_000_000_000)
        );
        assert_eq!(
            int_timestamp(100_000_000_000_000_000),
            Ok(100_000_000_000_000_000)
        );
        // 9.3e10 seconds is beyond year 2262: out of range, not a panic.
        assert!(int_timestamp(93_000_000_000).is_err());
        // Accepted timestamps lie in 1970–2200.
        assert!(parse_timestamp(&int(9_000_000_000)).is_err(), "year 2255");
        assert!(parse_timestamp(&int(-1)).is_err(), "before 1970");
        assert!(parse_timestamp(&int(i64::MAX)).is_err());
        assert!(parse_timestamp(&int(i64::MIN)).is_err());
        assert_eq!(parse_timestamp(&int(0)), Ok(0));
        assert!(parse_timestamp(&st("2200-01-01T00:00:00Z")).is_err());
        assert!(parse_timestamp(&st("2199-12-31T23:59:59Z")).is_ok());
    }

    #[test]
    fn doubles_are_exact_decimal_seconds() {
        assert_eq!(
            parse_timestamp(&dbl(1_800_000_000.1)),
            Ok(TNS + 100_000_000)
        );
        assert_eq!(parse_timestamp(&dbl(1_800_000_000.0)), Ok(TNS));
        assert_eq!(parse_timestamp(&dbl(0.5)), Ok(500_000_000));
        assert!(parse_timestamp(&dbl(f64::NAN)).is_err());
        assert!(parse_timestamp(&dbl(f64::INFINITY)).is_err());
        assert!(parse_timestamp(&dbl(1e30)).is_err());
    }

    #[test]
    fn strings_rfc3339_and_numeric() {
        assert_eq!(
            parse_timestamp(&st("2027-01-15T08:00:00Z")),
            Ok(1_800_000_000 * NANOS_PER_SEC)
        );
        assert_eq!(
            parse_timestamp(&st("2027-01-15T09:00:00.25+01:00")),
            Ok(TNS + 250_000_000)
        );
        assert_eq!(parse_timestamp(&st("1800000000")), Ok(TNS));
        assert_eq!(parse_timestamp(&st("1800000000250")), Ok(TNS + 250_000_000));
        assert_eq!(parse_timestamp(&st("1800000000.25")), Ok(TNS + 250_000_000));
        assert_eq!(parse_timestamp(&st("1.8e9")), Ok(TNS));
        assert_eq!(
            parse_timestamp(&st("1800000000.0000000015")),
            Ok(TNS + 2),
            "rounds half away from zero at the tenth decimal"
        );
        for bad in [
            "not a time",
            "",
            "12:00",
            "2027-13-45T00:00:00Z",
            "NaN",
            "inf",
        ] {
            assert!(
                parse_timestamp(&st(bad)).is_err(),
                "{bad:?} must be rejected"
            );
        }
        assert!(parse_timestamp(&AnyValue { value: None }).is_err());
        assert!(parse_timestamp(&AnyValue {
            value: Some(Value::BoolValue(true))
        })
        .is_err());
    }

    #[test]
    fn aliases_first_name_wins() {
        let x = Extractor::default();
        let sp = span(vec![
            kv("llm.token_count.completion", int(5)),
            kv("gen_ai.usage.output_tokens", int(9)),
            kv("gen_ai.usage.prompt_tokens", int(3)),
            kv("run.id", st("second")),
            kv("run_id", st("first")),
            kv("request.id", st("req")),
            kv("model", st("m-b")),
            kv("gen_ai.request.model", st("m-a")),
            kv("queued_at", int(T)),
        ]);
        let o = obs(x.span(None, &sp));
        assert_eq!(o.run_id, "first");
        assert_eq!(o.request, request_key("req"));
        assert_eq!(o.output_tokens, Some(9));
        assert_eq!(o.input_tokens, Some(3));
        assert_eq!(o.model, Some("m-a"));
        assert!(o.is_request());
    }

    #[test]
    fn run_from_resource_and_request_from_span_id() {
        let x = Extractor::default();
        let res = [kv("run.id", st("res-run"))];
        let rr = x.resource_run(
            res.iter()
                .map(|kv| (&kv.key[..], kv.value.as_ref().map(Val::from))),
        );
        let sp = span(vec![kv("admitted_at", int(T))]);
        let o = obs(x.span(rr, &sp));
        assert_eq!(o.run_id, "res-run");
        assert_eq!(o.request, request_key("0000000000000007"));
        assert!(!o.explicit_request_id);
        // The span's own attribute beats the resource.
        let sp = span(vec![kv("run_id", int(12))]);
        let o = obs(x.span(rr, &sp));
        assert_eq!(o.run_id, "12");
        assert!(!o.is_request());
        assert_eq!(
            x.span(None, &span(vec![kv("admitted_at", int(T))])),
            Ok(Extracted::NoRun)
        );
    }

    #[test]
    fn events_set_timestamps_and_status_sets_failure() {
        let x = Extractor::default();
        let mut s = span(vec![kv("run_id", st("r")), kv("queued_at", int(T))]);
        s.events = vec![
            Event {
                name: "queued".into(),
                time_unix_nano: 5,
            },
            Event {
                name: "admitted".into(),
                time_unix_nano: (TNS + 1) as u64,
            },
            Event {
                name: "last_token_at".into(),
                time_unix_nano: (TNS + 9) as u64,
            },
            Event {
                name: "unrelated".into(),
                time_unix_nano: 1,
            },
        ];
        s.status = Some(Status {
            code: STATUS_CODE_ERROR,
        });
        let o = obs(x.span(None, &s));
        assert_eq!(
            o.stamps.get(Stamp::Queued),
            Some(TNS),
            "attribute beats event"
        );
        assert_eq!(o.stamps.get(Stamp::Admitted), Some(TNS + 1));
        assert_eq!(o.stamps.get(Stamp::LastToken), Some(TNS + 9));
        assert_eq!(o.stamps.get(Stamp::FirstToken), None);
        assert!(o.failed);
        let sp = span(vec![kv("run_id", st("r")), kv("error.type", st("timeout"))]);
        let o = obs(x.span(None, &sp));
        assert!(o.failed);
    }

    #[test]
    fn retries_cap_and_rejections() {
        let x = Extractor::default();
        let causes = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![st("timeout"), st("429"), st("timeout")],
            })),
        };
        let sp = span(vec![
            kv("run_id", st("r")),
            kv("retry_count", st("2")),
            kv("retry_causes", causes),
            kv("retry_cause", st("ignored")),
            kv("cap", dbl(8.0)),
        ]);
        let o = obs(x.span(None, &sp));
        assert_eq!(o.retry_count, Some(2));
        assert_eq!(o.cap, Some(8));
        assert_eq!(o.span_start, 42);

        let cases = [
            ("admitted_at", st("not a time")),
            ("cap", int(0)),
            ("cap", int(-3)),
            ("output_tokens", int(-1)),
            ("output_tokens", dbl(1.5)),
            ("retry_causes", int(1)),
            ("model", int(1)),
            ("request_id", dbl(1.0)),
        ];
        for (k, v) in cases {
            match x.span(None, &span(vec![kv("run_id", st("r")), kv(k, v.clone())])) {
                Ok(Extracted::Rejected(r)) => {
                    assert_eq!(r.attribute, k);
                    assert_eq!(r.span_id, "0000000000000007");
                }
                other => panic!("{k}={v:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn custom_names() {
        let n = AttributeNames {
            run: vec!["job".into()],
            admitted_at: vec!["start".into()],
            ..AttributeNames::default()
        };
        let x = Extractor::new(&n);
        let sp = span(vec![kv("job", st("j")), kv("start", int(T))]);
        let o = obs(x.span(None, &sp));
        assert_eq!(o.run_id, "j");
        assert_eq!(o.stamps.get(Stamp::Admitted), Some(TNS));
        assert_eq!(
            x.span(None, &span(vec![kv("run_id", st("r"))])),
            Ok(Extracted::NoRun)
        );
    }

    /// Keys cut from one template with at most one byte changed: many
    /// share their length and first, second and last eight bytes (up to
    /// 37 bytes: keys compared by words alone and keys compared beyond).
    fn near_keys() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        (
            0usize..38,
            any::<usize>(),
            prop_oneof![Just(None), Just(Some(b'x')), Just(Some(b'y'))],
        )
            .prop_map(|(len, pos, letter)| {
                let mut k = b"gen_ai.request.model.abc.def.ghi.jklm"[..len].to_vec();
                if let (Some(l), false) = (letter, k.is_empty()) {
                    let at = pos % k.len();
                    k[at] = l;
                }
                k
            })
    }

    /// The length limit, read in place and from decoded messages: values
    /// at the limit pass though all of them together are over it; the
    /// first value over it rejects the span, naming its attribute.
    #[test]
    fn the_first_value_over_the_length_limit_rejects_its_span() {
        let at_limit = span(vec![
            kv("run_id", st("r1")),
            kv("note", st("0123456789")),
            kv("other", st("abcdefghij")),
        ]);
        let over = span(vec![
            kv("run_id", st("r1")),
            kv("note", st("short")),
            kv("first", st("0123456789a")),
            kv("second", st("0123456789ab")),
        ]);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![crate::lean::ScopeSpans {
                    spans: vec![at_limit.clone(), over.clone()],
                }],
            }],
        };
        let bytes = prost::Message::encode_to_vec(&req);
        let view = RequestView::parse_framing(&bytes).expect("reads");
        let x = Extractor::default().max_attribute_length(10);
        let mut in_place = Vec::new();
        x.request_view(view, &mut in_place).expect("reads");
        let decoded = [&at_limit, &over].map(|s| {
            let Ok(e) = x.span(None, s);
            e
        });
        for got in [&in_place[..], &decoded[..]] {
            assert!(
                matches!(&got[0], Extracted::Observation(o) if o.run_id == "r1"),
                "{:?}",
                got[0]
            );
            match &got[1] {
                Extracted::Rejected(r) => {
                    assert_eq!(r.attribute, "first");
                    assert_eq!(
                        r.reason,
                        "value longer than 10 bytes (--max-attribute-length)"
                    );
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// The inline paths of timestamps, ids and counts give what the
        /// general ones give, for any integer and any bytes (the inline
        /// paths take integer nanoseconds, non-negative integers and ASCII
        /// strings; the general ones everything).
        #[test]
        fn inline_paths_agree_with_the_general_ones(
            i in proptest::prop_oneof![
                proptest::prelude::any::<i64>(),
                99_999_999_999_999_990i64..100_000_000_000_000_010,
                MAX_TIMESTAMP - 10..MAX_TIMESTAMP + 10,
                -10i64..10,
            ],
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            ascii in "[ -~]{0,24}",
        ) {
            proptest::prop_assert_eq!(timestamp(Val::Int(i)), any_timestamp(Val::Int(i)));
            proptest::prop_assert_eq!(parse_count(Val::Int(i)), any_count(Val::Int(i)));
            proptest::prop_assert_eq!(parse_id(Val::Int(i)), any_id(Val::Int(i)));
            for s in [&b[..], ascii.as_bytes()] {
                proptest::prop_assert_eq!(parse_id(Val::Str(s)), any_id(Val::Str(s)));
                proptest::prop_assert_eq!(timestamp(Val::Str(s)), any_timestamp(Val::Str(s)));
                proptest::prop_assert_eq!(parse_count(Val::Str(s)), any_count(Val::Str(s)));
            }
        }

        /// The key table finds what a map finds, among keys that differ
        /// in one byte anywhere.
        #[test]
        fn the_key_table_finds_what_a_map_finds(
            keys in proptest::collection::vec(near_keys(), 0..60),
            probes in proptest::collection::vec(near_keys(), 0..60),
        ) {
            let mut table = KeyTable::default();
            let mut map = std::collections::HashMap::new();
            for (i, k) in keys.iter().enumerate() {
                table.insert_first(k, i);
                map.entry(k.clone()).or_insert(i);
            }
            for k in probes.iter().chain(&keys) {
                proptest::prop_assert_eq!(table.get(k), map.get(k));
            }
        }
    }
}
