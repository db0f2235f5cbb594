//! The fastest way in: a read-only view of a binary
//! `ExportTraceServiceRequest` that walks the protobuf wire format in place.
//!
//! [`RequestView::parse`] checks the whole message once (every length,
//! every wire type of the fields tpsgap reads), then the views hand out
//! spans, attributes and events as slices of the buffer: no allocation, no
//! reference count, nothing built for the fields tpsgap skips. It reads the
//! same fields as `proto/lean_trace.proto` (a property test shows both give
//! the same observations).

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

/// A field's payload by wire type.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32,
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
    // Most varints (keys, short lengths) are one byte.
    if let Some((&b, rest)) = buf.split_first() {
        if b < 0x80 {
            *buf = rest;
            return Ok(u64::from(b));
        }
    }
    varint_slow(buf)
}

#[inline(never)]
fn varint_slow(buf: &mut &[u8]) -> Result<u64, WireError> {
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
        let key = varint(&mut self.buf)?;
        let field = u32::try_from(key >> 3)
            .ok()
            .filter(|f| (1..1 << 29).contains(f))
            .ok_or(WireError("invalid field number"))?;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(&mut self.buf)?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                take(&mut self.buf, 8)?.try_into().unwrap_or_default(),
            )),
            2 => {
                let n = usize::try_from(varint(&mut self.buf)?)
                    .map_err(|_| WireError("length too large"))?;
                Wire::Len(take(&mut self.buf, n)?)
            }
            5 => {
                take(&mut self.buf, 4)?;
                Wire::Fixed32
            }
            _ => return Err(WireError("unsupported wire type (group)")),
        };
        Ok(Some((field, wire)))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Wire<'a>);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_field().ok().flatten()
    }
}

/// The length-delimited occurrences of field `n`.
fn messages(buf: &[u8], n: u32) -> impl Iterator<Item = &[u8]> + Clone {
    Fields::new(buf).filter_map(move |(f, w)| match (f, w) {
        (f, Wire::Len(b)) if f == n => Some(b),
        _ => None,
    })
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
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Len(_) => 2,
            Wire::Fixed32 => 5,
        };
        match expect(n) {
            Some(t) if t != ty => return Err(WireError("wrong wire type for a known field")),
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

fn check_key_value(buf: &[u8], depth: u32) -> Result<(), WireError> {
    check(
        buf,
        |n| match n {
            1 | 2 => Some(2),
            _ => None,
        },
        |n, b| match n {
            2 => check_any_value(b, depth),
            _ => Ok(()),
        },
    )
}

fn check_any_value(buf: &[u8], depth: u32) -> Result<(), WireError> {
    if depth > 100 {
        return Err(WireError("values nested too deep"));
    }
    check(
        buf,
        |n| match n {
            1 | 5 | 6 | 7 => Some(2),
            2 | 3 | 8 => Some(0),
            4 => Some(1),
            _ => None,
        },
        |n, b| match n {
            5 => check(
                b,
                |n| (n == 1).then_some(2),
                |_, v| check_any_value(v, depth + 1),
            ),
            // A key-value list is recognized, not read: only its framing.
            6 => check(b, |_| None, |_, _| Ok(())),
            _ => Ok(()),
        },
    )
}

fn check_attributes_of(field: u32) -> impl Fn(u32, &[u8]) -> Result<(), WireError> {
    move |n, b| {
        if n == field {
            check_key_value(b, 0)
        } else {
            Ok(())
        }
    }
}

fn check_span(buf: &[u8]) -> Result<(), WireError> {
    check(
        buf,
        |n| match n {
            1 | 2 | 5 | 9 | 11 | 15 => Some(2),
            7 | 8 => Some(1),
            _ => None,
        },
        |n, b| match n {
            9 => check_key_value(b, 0),
            11 => check(
                b,
                |n| match n {
                    1 => Some(1),
                    2 => Some(2),
                    _ => None,
                },
                |_, _| Ok(()),
            ),
            15 => check(b, |n| (n == 3).then_some(0), |_, _| Ok(())),
            _ => Ok(()),
        },
    )
}

fn check_resource_spans(rs: &[u8]) -> Result<(), WireError> {
    check(
        rs,
        |n| match n {
            1 | 2 => Some(2),
            _ => None,
        },
        |n, b| match n {
            1 => check(b, |n| (n == 1).then_some(2), check_attributes_of(1)),
            _ => check(b, |n| (n == 2).then_some(2), |_, s| check_span(s)),
        },
    )
}

fn check_request(buf: &[u8]) -> Result<(), WireError> {
    check(
        buf,
        |n| (n == 1).then_some(2),
        |_, rs| check_resource_spans(rs),
    )
}

/// A checked `ExportTraceServiceRequest`.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a>(&'a [u8]);

impl<'a> RequestView<'a> {
    /// Checks `buf` as a whole.
    ///
    /// # Errors
    /// When it is not a well-formed trace export (a truncated or
    /// mis-typed field anywhere in the fields tpsgap reads).
    pub fn parse(buf: &'a [u8]) -> Result<RequestView<'a>, WireError> {
        check_request(buf)?;
        Ok(RequestView(buf))
    }

    pub fn resource_spans(self) -> impl Iterator<Item = ResourceSpansView<'a>> {
        messages(self.0, 1).map(ResourceSpansView)
    }

    /// Visits every span with its attributes and events, as decoding would
    /// (the yardstick of the in-process decode-only cost); returns the
    /// number of fields visited.
    pub fn visit_all(self) -> usize {
        let mut n = 0usize;
        for rs in self.resource_spans() {
            n += rs.resource_attributes().count();
            for s in rs.spans() {
                n += 1 + s
                    .attributes()
                    .map(|kv| usize::from(kv.value.is_some()))
                    .sum::<usize>();
                n += s.events().count();
            }
        }
        n
    }

    /// The number of spans.
    pub fn span_count(self) -> usize {
        self.resource_spans()
            .map(|rs| rs.span_messages().count())
            .sum()
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
        check_resource_spans(buf)?;
        Ok(ResourceSpansView(buf))
    }

    /// The encoded message.
    pub fn raw(self) -> &'a [u8] {
        self.0
    }

    /// The resource's attributes.
    pub fn resource_attributes(self) -> impl Iterator<Item = KeyValueView<'a>> + Clone {
        messages(self.0, 1)
            .flat_map(|r| messages(r, 1))
            .map(KeyValueView::new)
    }

    /// The spans of every scope.
    pub fn spans(self) -> impl Iterator<Item = SpanView<'a>> {
        self.span_messages().map(SpanView::new)
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
    fn new(buf: &'a [u8]) -> KeyValueView<'a> {
        let mut kv = KeyValueView {
            key: &[],
            value: None,
        };
        for (n, w) in Fields::new(buf) {
            match (n, w) {
                (1, Wire::Len(b)) => kv.key = b,
                (2, Wire::Len(b)) => kv.value = Some(ValueView::new(b)),
                _ => {}
            }
        }
        kv
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
    fn new(buf: &'a [u8]) -> ValueView<'a> {
        let mut v = ValueView::Empty;
        for (n, w) in Fields::new(buf) {
            v = match (n, w) {
                (1, Wire::Len(b)) => ValueView::String(b),
                (2, Wire::Varint(x)) => ValueView::Bool(x != 0),
                (3, Wire::Varint(x)) => ValueView::Int(x as i64),
                (4, Wire::Fixed64(x)) => ValueView::Double(f64::from_bits(x)),
                (5, Wire::Len(b)) => ValueView::Array(b),
                (6, Wire::Len(_)) => ValueView::KvList,
                (7, Wire::Len(b)) => ValueView::Bytes(b),
                (8, Wire::Varint(x)) => ValueView::StringIndex(x as i32),
                _ => continue,
            };
        }
        v
    }

    /// The values of an array (empty for other variants).
    pub fn array_values(self) -> impl Iterator<Item = ValueView<'a>> {
        let buf = match self {
            ValueView::Array(b) => b,
            _ => &[],
        };
        messages(buf, 1).map(ValueView::new)
    }
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
    fn new(raw: &'a [u8]) -> SpanView<'a> {
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
        let mut f = Fields::new(raw);
        loop {
            let at = raw.len() - f.buf.len();
            let Some((n, w)) = f.next() else { break };
            let end = raw.len() - f.buf.len();
            attrs.note(n == 9, at, end);
            events.note(n == 11, at, end);
            match (n, w) {
                (1, Wire::Len(b)) => s.trace_id = b,
                (2, Wire::Len(b)) => s.span_id = b,
                (5, Wire::Len(b)) => s.name = b,
                (7, Wire::Fixed64(t)) => s.start_time_unix_nano = t,
                (8, Wire::Fixed64(t)) => s.end_time_unix_nano = t,
                (15, Wire::Len(b)) => {
                    for (n, w) in Fields::new(b) {
                        if let (3, Wire::Varint(c)) = (n, w) {
                            s.status_code = c as i32;
                        }
                    }
                }
                _ => {}
            }
        }
        s.attrs = attrs.slice(raw);
        s.events = events.slice(raw);
        s
    }

    pub fn attributes(self) -> impl Iterator<Item = KeyValueView<'a>> + Clone {
        messages(self.attrs, 9).map(KeyValueView::new)
    }

    /// Each event's name and time.
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
