//! Plain data shared by the core: timestamps, request records, observations.
//!
//! Every timestamp is Unix time in integer nanoseconds ([`Nanos`]); the core
//! never reads the clock.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Unix time in nanoseconds.
pub type Nanos = i64;

/// Nanoseconds per second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Converts Unix nanoseconds to Unix seconds without losing the integer part.
pub fn nanos_to_secs(t: Nanos) -> f64 {
    t.div_euclid(NANOS_PER_SEC) as f64 + t.rem_euclid(NANOS_PER_SEC) as f64 / 1e9
}

/// A duration in nanoseconds as seconds.
pub fn duration_secs(d: i64) -> f64 {
    nanos_to_secs(d)
}

/// The five request timestamps of SPEC §1, in lifecycle order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stamp {
    Queued = 0,
    Admitted = 1,
    FirstToken = 2,
    LastToken = 3,
    Released = 4,
}

impl Stamp {
    pub const ALL: [Stamp; 5] = [
        Stamp::Queued,
        Stamp::Admitted,
        Stamp::FirstToken,
        Stamp::LastToken,
        Stamp::Released,
    ];

    /// The span event name that sets this timestamp (the attribute name
    /// without `_at` also works as an event name, see `extract`).
    pub fn event_name(self) -> &'static str {
        match self {
            Stamp::Queued => "queued",
            Stamp::Admitted => "admitted",
            Stamp::FirstToken => "first_token",
            Stamp::LastToken => "last_token",
            Stamp::Released => "released",
        }
    }

    /// The default attribute name (SPEC §2), e.g. `queued_at`.
    pub fn attribute(self) -> &'static str {
        match self {
            Stamp::Queued => "queued_at",
            Stamp::Admitted => "admitted_at",
            Stamp::FirstToken => "first_token_at",
            Stamp::LastToken => "last_token_at",
            Stamp::Released => "released_at",
        }
    }

    /// Merge rule for two different values of one timestamp: the earliest
    /// start-like stamp and the latest end-like stamp win, so the result does
    /// not depend on the order in which spans arrive.
    fn merge(self, a: Nanos, b: Nanos) -> Nanos {
        match self {
            Stamp::Queued | Stamp::Admitted | Stamp::FirstToken => a.min(b),
            Stamp::LastToken | Stamp::Released => a.max(b),
        }
    }
}

/// The five timestamps of a request, each optional. Stored as integers with
/// a sentinel for "absent" (timestamps are never negative), 40 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamps([Nanos; 5]);

/// The "absent" sentinel of [`Stamps`].
const NO_STAMP: Nanos = Nanos::MIN;

impl Default for Stamps {
    fn default() -> Self {
        Stamps([NO_STAMP; 5])
    }
}

impl Stamps {
    pub fn get(&self, s: Stamp) -> Option<Nanos> {
        let t = self.0[s as usize];
        (t != NO_STAMP).then_some(t)
    }

    /// Sets a timestamp (`NO_STAMP` can never be set: it is not a valid time).
    pub fn set(&mut self, s: Stamp, t: Nanos) {
        self.0[s as usize] = t;
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&t| t == NO_STAMP)
    }

    /// The first two timestamps (or their sentinels): what orders most
    /// requests in the stamps' order.
    pub fn leading(&self) -> [Nanos; 2] {
        [self.0[0], self.0[1]]
    }

    /// The known timestamps, in lifecycle order.
    pub fn known(&self) -> impl Iterator<Item = Nanos> + '_ {
        self.0.iter().copied().filter(|&t| t != NO_STAMP)
    }

    /// Earliest and latest known timestamp.
    pub fn bounds(&self) -> Option<(Nanos, Nanos)> {
        // Without a branch a stamp: the sentinel is the least value, so it
        // never wins the largest, and counts as the greatest for the least.
        let hi = self.0.iter().copied().fold(NO_STAMP, Nanos::max);
        let lo = self
            .0
            .iter()
            .map(|&t| if t == NO_STAMP { Nanos::MAX } else { t })
            .fold(Nanos::MAX, Nanos::min);
        (hi != NO_STAMP).then_some((lo, hi))
    }

    /// Whether every known timestamp is at `t` or later (so when none is).
    /// Cheaper than [`Stamps::bounds`]: one subtraction and one minimum a
    /// stamp, the sentinel (the least value) wrapping to the greatest.
    #[inline(always)]
    pub fn all_from(&self, t: Nanos) -> bool {
        let least = self
            .0
            .iter()
            .fold(Nanos::MAX, |m, &s| m.min(s.wrapping_sub(1)));
        least >= t.saturating_sub(1)
    }

    /// Field-by-field merge (the earliest start-like stamp and the latest
    /// end-like stamp win); idempotent and commutative.
    pub fn merge(&mut self, other: &Stamps) {
        for s in Stamp::ALL {
            let (a, b) = (self.0[s as usize], other.0[s as usize]);
            self.0[s as usize] = if a == NO_STAMP {
                b
            } else if b == NO_STAMP {
                a
            } else {
                s.merge(a, b)
            };
        }
    }
}

/// Trace context of the span that carried an observation (for exemplars,
/// links and `request_id` fallback).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SpanRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanRef {
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The join key of a request: a 64-bit hash (XXH3, a fixed published
/// algorithm, so keys survive restarts) of its `request_id`, or of the span id
/// in lowercase hex when the span names no request. Two distinct ids of one
/// run collide with probability about n²/2⁶⁵ (3·10⁻⁸ for a million requests).
pub type RequestKey = u64;

/// The key of a request id.
pub fn request_key(id: &str) -> RequestKey {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// The key of the request id that a span without one falls back to: its span
/// id in lowercase hex (hashed without allocating).
pub fn span_request_key(span_id: &[u8; 8]) -> RequestKey {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, b) in span_id.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// What one span says about one request (the output of `extract`). It
/// borrows the strings of the decoded request it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation<'a> {
    pub run_id: std::borrow::Cow<'a, str>,
    pub request: RequestKey,
    /// True when the request id came from an attribute, not the span id.
    pub explicit_request_id: bool,
    pub stamps: Stamps,
    pub output_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub retry_count: Option<u64>,
    pub model: Option<&'a str>,
    pub failed: bool,
    pub cap: Option<u32>,
    pub span: SpanRef,
    pub span_start: Nanos,
}

impl Default for Observation<'_> {
    fn default() -> Self {
        Observation {
            run_id: std::borrow::Cow::Borrowed(""),
            request: 0,
            explicit_request_id: false,
            stamps: Stamps::default(),
            output_tokens: None,
            input_tokens: None,
            retry_count: None,
            model: None,
            failed: false,
            cap: None,
            span: SpanRef::default(),
            span_start: 0,
        }
    }
}

impl Observation<'_> {
    /// SPEC §2: a span is a request observation when it carries at least one
    /// of the five timestamps.
    pub fn is_request(&self) -> bool {
        !self.stamps.is_empty()
    }
}

/// A cap observation not carried by a request observation: `value` observed
/// on a span; its time is resolved against the merged request named by
/// `request` if that exists when the run is computed, else the span's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CapObservation {
    pub value: u32,
    pub request: Option<RequestKey>,
    pub span_start: Nanos,
    /// Receive order within the run (of two caps at one instant, the later
    /// one wins).
    pub seq: u32,
}

/// No model, or no cap (in [`Request`]).
pub const NONE: u32 = u32::MAX;

/// A request as joined from all its observations: 112 bytes, no heap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub stamps: Stamps,
    pub key: RequestKey,
    output_tokens: u64,
    input_tokens: u64,
    retry_count: u64,
    /// The smallest span reference seen, a stable pick for exemplars.
    pub span: SpanRef,
    /// Index into the run's model names, or [`NONE`].
    pub model: u32,
    /// The cap observed last on a span of this request, or [`NONE`], and its
    /// receive order in the run.
    pub cap: u32,
    pub cap_seq: u32,
    flags: u8,
    /// Live-service bookkeeping: which of this request's sweep events a live
    /// run has already swept past (see `live`).
    pub swept: u8,
}

const HAS_OUTPUT: u8 = 1;
const HAS_INPUT: u8 = 2;
const HAS_RETRY: u8 = 4;
const FAILED: u8 = 8;
const COUNTED: u8 = 16;

impl Default for Request {
    fn default() -> Self {
        Request {
            stamps: Stamps::default(),
            key: 0,
            output_tokens: 0,
            input_tokens: 0,
            retry_count: 0,
            span: SpanRef::default(),
            model: NONE,
            cap: NONE,
            cap_seq: 0,
            flags: 0,
            swept: 0,
        }
    }
}

impl Request {
    /// A request from one observation (model and cap aside: see
    /// [`Request::merge`]): what merging it into a blank record of its key
    /// and span gives, made whole instead (every request starts so, and
    /// most have only a few spans).
    #[inline]
    pub fn from_observation(o: &Observation<'_>) -> Request {
        let flag = |v: Option<u64>, f: u8| if v.is_some() { f } else { 0 };
        Request {
            stamps: o.stamps,
            key: o.request,
            output_tokens: o.output_tokens.unwrap_or(0),
            input_tokens: o.input_tokens.unwrap_or(0),
            retry_count: o.retry_count.unwrap_or(0),
            span: o.span,
            model: NONE,
            cap: NONE,
            cap_seq: 0,
            flags: flag(o.output_tokens, HAS_OUTPUT)
                | flag(o.input_tokens, HAS_INPUT)
                | flag(o.retry_count, HAS_RETRY)
                | if o.failed { FAILED } else { 0 },
            swept: 0,
        }
    }

    /// Field-by-field merge. Idempotent and order-independent: timestamps per
    /// [`Stamps::merge`], counts take the maximum, failure is sticky. The
    /// model (an index into the run's names, chosen by the caller: the
    /// smallest name wins) and the cap are set by the run.
    pub fn merge(&mut self, o: &Observation<'_>) {
        self.stamps.merge(&o.stamps);
        let mut count = |flag: u8, dst: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *dst = if self.flags & flag != 0 {
                    (*dst).max(v)
                } else {
                    v
                };
                self.flags |= flag;
            }
        };
        count(HAS_OUTPUT, &mut self.output_tokens, o.output_tokens);
        count(HAS_INPUT, &mut self.input_tokens, o.input_tokens);
        count(HAS_RETRY, &mut self.retry_count, o.retry_count);
        if o.failed {
            self.flags |= FAILED;
        }
        self.span = self.span.min(o.span);
    }

    pub fn get(&self, s: Stamp) -> Option<Nanos> {
        self.stamps.get(s)
    }

    pub fn output_tokens(&self) -> Option<u64> {
        (self.flags & HAS_OUTPUT != 0).then_some(self.output_tokens)
    }

    pub fn input_tokens(&self) -> Option<u64> {
        (self.flags & HAS_INPUT != 0).then_some(self.input_tokens)
    }

    pub fn retry_count(&self) -> Option<u64> {
        (self.flags & HAS_RETRY != 0).then_some(self.retry_count)
    }

    pub fn failed(&self) -> bool {
        self.flags & FAILED != 0
    }

    /// Live-service bookkeeping: already counted in the cumulative metrics
    /// (never touched by merging).
    pub fn counted(&self) -> bool {
        self.flags & COUNTED != 0
    }

    pub fn set_counted(&mut self) {
        self.flags |= COUNTED;
    }
}

/// Why a gap instant happened (SPEC §1 "Gap causes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Cause {
    Stall = 0,
    Refill = 1,
    UnderCap = 2,
}

impl Cause {
    /// In tie-break order.
    pub const ALL: [Cause; 3] = [Cause::Stall, Cause::Refill, Cause::UnderCap];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Stall => "stall",
            Cause::Refill => "refill",
            Cause::UnderCap => "under_cap",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secs_keep_precision() {
        assert_eq!(nanos_to_secs(1_793_491_200_000_000_000), 1_793_491_200.0);
        assert_eq!(nanos_to_secs(1_500_000_000), 1.5);
        assert_eq!(nanos_to_secs(-500_000_000), -0.5);
    }

    #[test]
    fn stamps_merge_is_order_independent() {
        let mut a = Stamps::default();
        a.set(Stamp::Queued, 5);
        a.set(Stamp::Released, 10);
        let mut b = Stamps::default();
        b.set(Stamp::Queued, 3);
        b.set(Stamp::Released, 12);
        b.set(Stamp::Admitted, 7);
        let mut ab = a;
        ab.merge(&b);
        let mut ba = b;
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.get(Stamp::Queued), Some(3));
        assert_eq!(ab.get(Stamp::Released), Some(12));
        assert_eq!(ab.get(Stamp::Admitted), Some(7));
        assert_eq!(ab.get(Stamp::FirstToken), None);
        let again = {
            let mut x = ab;
            x.merge(&b);
            x
        };
        assert_eq!(again, ab);
    }

    proptest! {
        /// The least and greatest known stamp, as a filtered fold of the
        /// known stamps gives them (none when no stamp is known), for any
        /// values, the extremes beside the sentinel included.
        #[test]
        fn bounds_are_the_least_and_greatest_known_stamp(
            picks in prop::array::uniform5(prop::option::of(prop_oneof![
                any::<i64>().prop_filter("the sentinel", |&t| t != NO_STAMP),
                Just(NO_STAMP + 1),
                Just(Nanos::MAX),
                Just(0),
            ])),
        ) {
            let mut st = Stamps::default();
            for (s, t) in Stamp::ALL.into_iter().zip(picks) {
                if let Some(t) = t {
                    st.set(s, t);
                }
            }
            let known: Vec<Nanos> = picks.iter().flatten().copied().collect();
            let want = known.iter().min().zip(known.iter().max()).map(|(&a, &b)| (a, b));
            prop_assert_eq!(st.bounds(), want);
        }

        /// `all_from` is "the least known stamp is at `t` or later", for
        /// any `t` and stamps, the extremes and their neighbours included.
        #[test]
        fn all_from_is_a_bound_on_the_least_known_stamp(
            picks in prop::array::uniform5(prop::option::of(prop_oneof![
                any::<i64>().prop_filter("the sentinel", |&t| t != NO_STAMP),
                Just(NO_STAMP + 1),
                Just(NO_STAMP + 2),
                Just(Nanos::MAX),
                Just(0),
                Just(1),
            ])),
            t in prop_oneof![any::<i64>(), Just(NO_STAMP), Just(NO_STAMP + 1), Just(NO_STAMP + 2), Just(Nanos::MAX), Just(0), Just(1)],
        ) {
            let mut st = Stamps::default();
            for (s, v) in Stamp::ALL.into_iter().zip(picks) {
                if let Some(v) = v {
                    st.set(s, v);
                }
            }
            let want = picks.iter().flatten().all(|&v| v >= t);
            prop_assert_eq!(st.all_from(t), want);
        }
    }

    proptest! {
        /// A request made from one observation is the one merging it into
        /// a blank record gives, for any stamps, counts, failure and span.
        #[test]
        fn a_request_from_an_observation_is_it_merged_into_a_new_one(
            stamps in prop::array::uniform5(prop::option::of(0..Nanos::MAX)),
            counts in prop::array::uniform3(prop::option::of(any::<u64>())),
            failed in any::<bool>(),
            request in any::<u64>(),
            trace in any::<[u8; 16]>(),
            span in any::<[u8; 8]>(),
        ) {
            let mut o = Observation {
                request,
                output_tokens: counts[0],
                input_tokens: counts[1],
                retry_count: counts[2],
                failed,
                span: SpanRef { trace_id: trace, span_id: span },
                ..Observation::default()
            };
            for (s, t) in Stamp::ALL.into_iter().zip(stamps) {
                if let Some(t) = t {
                    o.stamps.set(s, t);
                }
            }
            let mut merged = Request { key: o.request, span: o.span, ..Request::default() };
            merged.merge(&o);
            prop_assert_eq!(Request::from_observation(&o), merged);
        }
    }

    #[test]
    fn compact_request() {
        assert_eq!(std::mem::size_of::<Request>(), 112);
        assert_eq!(
            span_request_key(&[0, 0, 0, 0, 0, 0, 0xab, 7]),
            request_key("000000000000ab07")
        );
        let mut r = Request {
            key: 1,
            ..Request::default()
        };
        assert_eq!(r.output_tokens(), None);
        let o = Observation {
            output_tokens: Some(0),
            retry_count: Some(3),
            failed: true,
            ..Observation::default()
        };
        r.merge(&o);
        r.merge(&Observation {
            output_tokens: Some(9),
            retry_count: Some(1),
            ..Observation::default()
        });
        assert_eq!(r.output_tokens(), Some(9));
        assert_eq!(r.retry_count(), Some(3));
        assert_eq!(r.input_tokens(), None);
        assert!(r.failed() && !r.counted());
        r.set_counted();
        assert!(r.counted() && r.failed());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
