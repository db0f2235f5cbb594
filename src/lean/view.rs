//! The fastest way in: a read-only view of a binary
//! `ExportTraceServiceRequest` that walks the protobuf wire format in place.
//!
//! [`RequestView::parse`] checks the whole message (every length, every
//! wire type of the fields tpsgap reads); [`RequestView::parse_framing`]
//! checks it down to each span, and [`SpanView::read`] and
//! [`SpanView::attributes`] check each span as they read it, so the
//! receivers walk each byte once. The views hand out spans, attributes and
//! events as slices of the buffer: no allocation, no reference count,
//! nothing built for the fields tpsgap skips. It reads the same fields as
//! `proto/lean_trace.proto` (a property test shows both give the same
//! observations and refuse the same damage).

use std::fmt;

/// Why bytes are not a well-formed trace export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(&'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid protobuf: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// A field's payload by wire type: the two tpsgap reads, and the wire type
/// of one it skipped.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Fixed64(u64),
    Len(&'a [u8]),
    Skipped(u8),
}

/// The fields of a message, in order. On malformed input it stops with an
/// error (`parse` has checked every message tpsgap reads, so views stop
/// only where `parse` failed first).
#[derive(Clone)]
struct Fields<'a> {
    buf: &'a [u8],
}

#[inline(always)]
fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    // Most varints (keys, short lengths) are one byte; a span's length is
    // usually two.
    let s: &[u8] = buf;
    match s {
        [b, rest @ ..] if *b < 0x80 => {
            *buf = rest;
            Ok(u64::from(*b))
        }
        [b0, b1, rest @ ..] if *b1 < 0x80 => {
            *buf = rest;
            Ok(u64::from(b0 & 0x7f) | u64::from(*b1) << 7)
        }
        _ => varint_slow(buf),
    }
}

#[inline(never)]
fn varint_slow(buf: &mut &[u8]) -> Result<u64, WireError> {
    // Eight bytes at once: long varints are mostly integer attributes such
    // as nanosecond timestamps (nine bytes). A truncated or ten-byte one
    // takes the loop below, which says what is wrong.
    let (w, have) = match buf.first_chunk::<8>() {
        Some(c) => (u64::from_le_bytes(*c), 8),
        None => {
            // Zero padding ends the varint after the bytes there are.
            let mut c = [0u8; 8];
            c[..buf.len()].copy_from_slice(buf);
            (u64::from_le_bytes(c), buf.len())
        }
    };
    let stops = !w & 0x8080_8080_8080_8080;
    if stops != 0 {
        // The bytes up to the first without the continuation bit.
        let n = stops.trailing_zeros() as usize / 8 + 1;
        if n <= have {
            *buf = &buf[n..];
            return Ok(seven_bit_groups(w & (u64::MAX >> (64 - 8 * n))));
        }
    } else if let Some(&b8) = buf.get(8).filter(|b| **b < 0x80) {
        *buf = &buf[9..];
        return Ok(seven_bit_groups(w) | u64::from(b8) << 56);
    }
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(WireError("truncated varint"))?;
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(WireError("varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(WireError("varint longer than 10 bytes"))
}

/// The 7-bit groups of up to eight varint bytes (little-endian in `w`),
/// joined: the value they encode.
#[inline(always)]
fn seven_bit_groups(w: u64) -> u64 {
    let x = w & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | (x & 0x7f00_7f00_7f00_7f00) >> 1;
    let x = (x & 0x0000_3fff_0000_3fff) | (x & 0x3fff_0000_3fff_0000) >> 2;
    (x & 0x0000_0000_0fff_ffff) | (x & 0x0fff_ffff_0000_0000) >> 4
}

#[inline(always)]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError("truncated field"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf }
    }

    #[inline(always)]
    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let (field, wire) = key(&mut self.buf)?;
        let w = match wire {
            1 => Wire::Fixed64(fixed64(&mut self.buf)?),
            2 => Wire::Len(len_delimited(&mut self.buf)?),
            _ => {
                skip(&mut self.buf, field, wire)?;
                Wire::Skipped(wire)
            }
        };
        Ok(Some((field, w)))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Wire<'a>);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_field().ok().flatten()
    }
}

/// The length-delimited occurrences of field `n` (stopping where the
/// message is malformed, which a check has ruled out first).
fn messages(buf: &[u8], n: u32) -> impl Iterator<Item = &[u8]> + Clone {
    Occurrences { buf, field: n }
}

#[derive(Clone)]
struct Occurrences<'a> {
    buf: &'a [u8],
    field: u32,
}

impl<'a> Iterator for Occurrences<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        // The usual case: the field's one-byte tag and a one-byte length.
        if let [tag, len, rest @ ..] = self.buf {
            let n = usize::from(*len);
            if *tag < 0x80 && u32::from(*tag) == self.field << 3 | 2 && n < 0x80 && rest.len() >= n
            {
                let (m, rest) = rest.split_at(n);
                self.buf = rest;
                return Some(m);
            }
        }
        while !self.buf.is_empty() {
            match key(&mut self.buf).ok()? {
                (n, 2) if n == self.field => return len_delimited(&mut self.buf).ok(),
                (n, w) => skip(&mut self.buf, n, w).ok()?,
            }
        }
        None
    }
}

/// Checks every field of a message: known fields have their wire type
/// (`expect` gives it by field number, `None` for unknown fields), and
/// `inner` checks the length-delimited ones.
fn check<'a>(
    buf: &'a [u8],
    expect: impl Fn(u32) -> Option<u8>,
    mut inner: impl FnMut(u32, &'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut f = Fields::new(buf);
    while let Some((n, w)) = f.next_field()? {
        let ty = match w {
            Wire::Fixed64(_) => 1,
            Wire::Len(_) => 2,
            Wire::Skipped(t) => t,
        };
        match expect(n) {
            Some(t) if t != ty => return Err(WRONG_TYPE),
            Some(_) => {
                if let Wire::Len(b) = w {
                    inner(n, b)?;
                }
            }
            None => {}
        }
    }
    Ok(())
}

const WRONG_TYPE: WireError = WireError("wrong wire type for a known field");

/// A field's key: its number and wire type.
#[inline(always)]
fn key(buf: &mut &[u8]) -> Result<(u32, u8), WireError> {
    let k = varint(buf)?;
    match u32::try_from(k >> 3) {
        Ok(n) if (1..1 << 29).contains(&n) => Ok((n, (k & 7) as u8)),
        _ => Err(WireError("invalid field number")),
    }
}

#[inline(always)]
fn len_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let n = usize::try_from(varint(buf)?).map_err(|_| WireError("length too large"))?;
    take(buf, n)
}

#[inline(always)]
fn fixed64(buf: &mut &[u8]) -> Result<u64, WireError> {
    let b = take(buf, 8)?;
    Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

const END_GROUP: WireError = WireError("unexpected end group tag");

/// Skips the payload of field `field`, which tpsgap does not read.
#[inline]
fn skip(buf: &mut &[u8], field: u32, wire: u8) -> Result<(), WireError> {
    match wire {
        0 => varint(buf).map(drop),
        1 => take(buf, 8).map(drop),
        2 => len_delimited(buf).map(drop),
        5 => take(buf, 4).map(drop),
        3 => skip_group(buf, field, 0),
        4 => Err(END_GROUP),
        _ => Err(WireError("invalid wire type")),
    }
}

/// Skips a group's fields up to its end tag (prost reads groups of
/// unknown fields this way).
#[inline(never)]
fn skip_group(buf: &mut &[u8], field: u32, depth: u32) -> Result<(), WireError> {
    if depth > 100 {
        return Err(WireError("groups nested too deep"));
    }
    loop {
        match key(buf)? {
            (n, 4) if n == field => return Ok(()),
            (_, 4) => return Err(END_GROUP),
            (n, 3) => skip_group(buf, n, depth + 1)?,
            (n, w) => skip(buf, n, w)?,
        }
    }
}

/// Checks a span: its fields and every attribute.
fn check_span(buf: &[u8]) -> Result<(), WireError> {
    SpanView::read(buf)?
        .attributes()
        .try_for_each(|kv| kv.map(drop))
}

/// Checks a `ResourceSpans` (its spans whole when `spans`), counting its
/// spans into `count`.
fn check_resource_spans(rs: &[u8], spans: bool, count: &mut usize) -> Result<(), WireError> {
    check(
        rs,
        |n| match n {
            1 | 2 => Some(2),
            _ => None,
        },
        |n, b| match n {
            1 => check(
                b,
                |n| (n == 1).then_some(2),
                |_, kv| KeyValueView::read(kv).map(drop),
            ),
            _ => check(
                b,
                |n| (n == 2).then_some(2),
                |_, s| {
                    *count += 1;
                    if spans {
                        check_span(s)
                    } else {
                        Ok(())
                    }
                },
            ),
        },
    )
}

fn check_request(buf: &[u8], spans: bool) -> Result<usize, WireError> {
    let mut count = 0;
    check(
        buf,
        |n| (n == 1).then_some(2),
        |_, rs| check_resource_spans(rs, spans, &mut count),
    )?;
    Ok(count)
}

/// A checked `ExportTraceServiceRequest`.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    buf: &'a [u8],
    /// The number of spans, counted by the check.
    spans: usize,
}

impl<'a> RequestView<'a> {
    /// Checks `buf` as a whole.
    ///
    /// # Errors
    /// When it is not a well-formed trace export (a truncated or
    /// mis-typed field anywhere in the fields tpsgap reads).
    pub fn parse(buf: &'a [u8]) -> Result<RequestView<'a>, WireError> {
        let spans = check_request(buf, true)?;
        Ok(RequestView { buf, spans })
    }

    /// Checks `buf` down to the framing of each span (and the resources
    /// whole): the spans' own fields are checked as [`SpanView::read`] and
    /// [`SpanView::attributes`] read them, so each byte is walked once. A
    /// reader must treat an error there as the whole request's.
    ///
    /// # Errors
    /// When the framing is not well-formed.
    pub fn parse_framing(buf: &'a [u8]) -> Result<RequestView<'a>, WireError> {
        let spans = check_request(buf, false)?;
        Ok(RequestView { buf, spans })
    }

    pub fn resource_spans(self) -> impl Iterator<Item = ResourceSpansView<'a>> {
        messages(self.buf, 1).map(ResourceSpansView)
    }

    /// Reads every span with its attributes and events, as decoding would,
    /// checking what [`RequestView::parse_framing`] left (the yardstick of
    /// the in-process decode-only cost); returns the number of fields
    /// visited.
    ///
    /// # Errors
    /// When a span is not well-formed.
    pub fn visit_all(self) -> Result<usize, WireError> {
        let mut n = 0usize;
        for rs in self.resource_spans() {
            n += rs.resource_attributes().count();
            for s in rs.spans() {
                let s = s?;
                n += 1 + s.events().count();
                for kv in s.attributes() {
                    n += usize::from(kv?.value.is_some());
                }
            }
        }
        Ok(n)
    }

    /// The number of spans.
    pub fn span_count(self) -> usize {
        self.spans
    }
}

/// One `ResourceSpans`.
#[derive(Clone, Copy, Debug)]
pub struct ResourceSpansView<'a>(&'a [u8]);

impl<'a> ResourceSpansView<'a> {
    /// Checks `buf` as one `ResourceSpans` message.
    ///
    /// # Errors
    /// When it is not well-formed.
    pub fn parse(buf: &'a [u8]) -> Result<ResourceSpansView<'a>, WireError> {
        check_resource_spans(buf, true, &mut 0)?;
        Ok(ResourceSpansView(buf))
    }

    /// The encoded message.
    pub fn raw(self) -> &'a [u8] {
        self.0
    }

    /// The resource's attributes (checked by `parse` and `parse_framing`).
    pub fn resource_attributes(self) -> impl Iterator<Item = KeyValueView<'a>> + Clone {
        messages(self.0, 1)
            .flat_map(|r| messages(r, 1))
            .filter_map(|kv| KeyValueView::read(kv).ok())
    }

    /// The spans of every scope, each read with [`SpanView::read`].
    pub fn spans(self) -> impl Iterator<Item = Result<SpanView<'a>, WireError>> {
        self.span_messages().map(SpanView::read)
    }

    /// The encoded spans of every scope (counted without reading them).
    fn span_messages(self) -> impl Iterator<Item = &'a [u8]> {
        messages(self.0, 2).flat_map(|ss| messages(ss, 2))
    }
}

/// An attribute: its key and value (`None` when the pair has no value).
#[derive(Clone, Copy, Debug)]
pub struct KeyValueView<'a> {
    pub key: &'a [u8],
    pub value: Option<ValueView<'a>>,
}

impl<'a> KeyValueView<'a> {
    /// Reads and checks one `KeyValue`.
    ///
    /// # Errors
    /// When it is not well-formed (its value included).
    #[inline(always)]
    pub fn read(buf: &'a [u8]) -> Result<KeyValueView<'a>, WireError> {
        // The usual encoding: the key, then the value and nothing after it,
        // each with a one-byte length (the same result as the loop below).
        if let [0x0a, kl, rest @ ..] = buf {
            let kl = usize::from(*kl);
            if kl < 0x80 && rest.len() >= kl {
                let (key, rest) = rest.split_at(kl);
                if let [0x12, vl, value @ ..] = rest {
                    if *vl < 0x80 && usize::from(*vl) == value.len() {
                        return Ok(KeyValueView {
                            key,
                            value: Some(ValueView::read(value, 0)?),
                        });
                    }
                }
            }
        }
        let mut kv = KeyValueView {
            key: &[],
            value: None,
        };
        let mut p = buf;
        while !p.is_empty() {
            match key(&mut p)? {
                (1, 2) => kv.key = len_delimited(&mut p)?,
                (2, 2) => kv.value = Some(ValueView::read(len_delimited(&mut p)?, 0)?),
                (1 | 2, _) => return Err(WRONG_TYPE),
                (n, w) => skip(&mut p, n, w)?,
            }
        }
        Ok(kv)
    }
}

/// An `AnyValue`: the variant set last, as the wire format says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueView<'a> {
    Empty,
    String(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// The encoded `ArrayValue`.
    Array(&'a [u8]),
    KvList,
    Bytes(&'a [u8]),
    StringIndex(i32),
}

impl<'a> ValueView<'a> {
    /// Reads and checks an `AnyValue` nested `depth` arrays deep (an array's
    /// values are checked, a key-value list only for its framing).
    ///
    /// # Errors
    /// When it is not well-formed or nested too deep.
    #[inline(always)]
    pub fn read(buf: &'a [u8], depth: u32) -> Result<ValueView<'a>, WireError> {
        if depth > 100 {
            return Err(WireError("values nested too deep"));
        }
        // The usual values: a string with a one-byte length, or an integer
        // (the same result as the loop below).
        match buf {
            [0x0a, n, s @ ..] if usize::from(*n) == s.len() && *n < 0x80 => {
                return Ok(ValueView::String(s))
            }
            [0x18, rest @ ..] => {
                let mut p = rest;
                if let Ok(i) = varint(&mut p) {
                    if p.is_empty() {
                        return Ok(ValueView::Int(i as i64));
                    }
                }
            }
            _ => {}
        }
        let mut v = ValueView::Empty;
        let mut p = buf;
        while !p.is_empty() {
            v = match key(&mut p)? {
                (1, 2) => ValueView::String(len_delimited(&mut p)?),
                (2, 0) => ValueView::Bool(varint(&mut p)? != 0),
                (3, 0) => ValueView::Int(varint(&mut p)? as i64),
                (4, 1) => ValueView::Double(f64::from_bits(fixed64(&mut p)?)),
                (5, 2) => {
                    let b = len_delimited(&mut p)?;
                    check_array(b, depth)?;
                    ValueView::Array(b)
                }
                (6, 2) => {
                    check(len_delimited(&mut p)?, |_| None, |_, _| Ok(()))?;
                    ValueView::KvList
                }
                (7, 2) => ValueView::Bytes(len_delimited(&mut p)?),
                (8, 0) => ValueView::StringIndex(varint(&mut p)? as i32),
                (1..=8, _) => return Err(WRONG_TYPE),
                (n, w) => {
                    skip(&mut p, n, w)?;
                    continue;
                }
            };
        }
        Ok(v)
    }

    /// The values of an array (empty for other variants; checked when the
    /// array was read).
    pub fn array_values(self) -> impl Iterator<Item = ValueView<'a>> {
        let buf = match self {
            ValueView::Array(b) => b,
            _ => &[],
        };
        messages(buf, 1).filter_map(|v| ValueView::read(v, 0).ok())
    }
}

/// Checks the values of an array nested `depth` arrays deep.
#[inline(never)]
fn check_array(b: &[u8], depth: u32) -> Result<(), WireError> {
    check(
        b,
        |n| (n == 1).then_some(2),
        |_, v| ValueView::read(v, depth + 1).map(drop),
    )
}

/// Where the occurrences of one repeated field lie in a message.
#[derive(Default)]
struct Region {
    start: usize,
    end: usize,
    seen: bool,
    /// Another field came between two occurrences.
    broken: bool,
    /// The last field seen was this one.
    open: bool,
}

impl Region {
    fn note(&mut self, this: bool, at: usize, end: usize) {
        if this {
            if !self.seen {
                self.seen = true;
                self.start = at;
            } else if !self.open {
                self.broken = true;
            }
            self.end = end;
        }
        self.open = this;
    }

    fn slice(self, raw: &[u8]) -> &[u8] {
        match (self.seen, self.broken) {
            (false, _) => &[],
            (true, false) => &raw[self.start..self.end],
            (true, true) => raw,
        }
    }
}

/// A span's scalar fields, read in one pass; attributes and events are
/// walked when asked for.
#[derive(Clone, Copy, Debug)]
pub struct SpanView<'a> {
    /// The stretch of the message that holds the attributes (all of it when
    /// they are interleaved with other fields), and the same for events.
    attrs: &'a [u8],
    events: &'a [u8],
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub name: &'a [u8],
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// The status code, 0 (unset) without a status.
    pub status_code: i32,
}

impl<'a> SpanView<'a> {
    /// Reads and checks a span's own fields, its status and its events, in
    /// one pass; its attributes are checked as [`SpanView::attributes`]
    /// reads them.
    ///
    /// # Errors
    /// When a field is not well-formed.
    pub fn read(raw: &'a [u8]) -> Result<SpanView<'a>, WireError> {
        let mut s = SpanView {
            attrs: &[],
            events: &[],
            trace_id: &[],
            span_id: &[],
            name: &[],
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            status_code: 0,
        };
        // Where fields 9 and 11 start and end, and whether other fields
        // come between (then the whole message is walked for them).
        let (mut attrs, mut events) = (Region::default(), Region::default());
        let mut p = raw;
        while !p.is_empty() {
            let at = raw.len() - p.len();
            let (n, w) = key(&mut p)?;
            match (n, w) {
                (1, 2) => s.trace_id = len_delimited(&mut p)?,
                (2, 2) => s.span_id = len_delimited(&mut p)?,
                (5, 2) => s.name = len_delimited(&mut p)?,
                (7, 1) => s.start_time_unix_nano = fixed64(&mut p)?,
                (8, 1) => s.end_time_unix_nano = fixed64(&mut p)?,
                (9, 2) => {
                    len_delimited(&mut p)?;
                    // The attributes usually follow one another: skipped
                    // here at once (a one-byte tag, 9 << 3 | 2), one stretch
                    // for the region below.
                    while let [0x4a, rest @ ..] = p {
                        p = rest;
                        len_delimited(&mut p)?;
                    }
                }
                (11, 2) => check(
                    len_delimited(&mut p)?,
                    |n| match n {
                        1 => Some(1),
                        2 => Some(2),
                        _ => None,
                    },
                    |_, _| Ok(()),
                )?,
                (15, 2) => {
                    let mut st = len_delimited(&mut p)?;
                    while !st.is_empty() {
                        match key(&mut st)? {
                            (3, 0) => s.status_code = varint(&mut st)? as i32,
                            (3, _) => return Err(WRONG_TYPE),
                            (n, w) => skip(&mut st, n, w)?,
                        }
                    }
                }
                (1 | 2 | 5 | 7 | 8 | 9 | 11 | 15, _) => return Err(WRONG_TYPE),
                (n, w) => skip(&mut p, n, w)?,
            }
            let end = raw.len() - p.len();
            attrs.note(n == 9, at, end);
            events.note(n == 11, at, end);
        }
        s.attrs = attrs.slice(raw);
        s.events = events.slice(raw);
        Ok(s)
    }

    /// The length of the stretch that holds the attributes: no value of
    /// one is longer.
    pub fn attributes_len(self) -> usize {
        self.attrs.len()
    }

    /// Each attribute, read and checked.
    pub fn attributes(self) -> impl Iterator<Item = Result<KeyValueView<'a>, WireError>> + Clone {
        messages(self.attrs, 9).map(KeyValueView::read)
    }

    /// Each event's name and time (checked by [`SpanView::read`]).
    pub fn events(self) -> impl Iterator<Item = (&'a [u8], u64)> {
        messages(self.events, 11).map(|ev| {
            let (mut name, mut t) = (&[][..], 0u64);
            for (n, w) in Fields::new(ev) {
                match (n, w) {
                    (1, Wire::Fixed64(x)) => t = x,
                    (2, Wire::Len(b)) => name = b,
                    _ => {}
                }
            }
            (name, t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that are mostly varint continuations, to reach every length.
    fn varint_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![3 => 0x80u8..=0xff, 1 => 0u8..0x80, 1 => Just(0x80u8), 1 => Just(1u8)],
            0..14,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// The varint reader against prost's: the same value, the same
        /// bytes used, and an error where prost has one.
        #[test]
        fn varints_read_as_prost_reads_them(
            bytes in varint_bytes(),
            value in any::<u64>(),
            tail in prop::collection::vec(any::<u8>(), 0..4),
            encoded in any::<bool>(),
        ) {
            let bytes = if encoded {
                let mut b = Vec::new();
                prost::encoding::encode_varint(value, &mut b);
                b.extend_from_slice(&tail);
                b
            } else {
                bytes
            };
            let (mut ours, mut theirs) = (&bytes[..], &bytes[..]);
            let got = varint(&mut ours);
            let want = prost::encoding::decode_varint(&mut theirs);
            prop_assert_eq!(got.is_ok(), want.is_ok(), "{:02x?}: {:?} vs {:?}", bytes, got, want);
            if let (Ok(g), Ok(w)) = (got, want) {
                prop_assert_eq!(g, w);
                prop_assert_eq!(ours.len(), theirs.len());
            }
        }
    }
}
