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

/// The five timestamps of a request, each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamps(pub [Option<Nanos>; 5]);

impl Stamps {
    pub fn get(&self, s: Stamp) -> Option<Nanos> {
        self.0[s as usize]
    }

    pub fn set(&mut self, s: Stamp, t: Nanos) {
        self.0[s as usize] = Some(t);
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Earliest and latest known timestamp.
    pub fn bounds(&self) -> Option<(Nanos, Nanos)> {
        let mut it = self.0.iter().flatten();
        let first = *it.next()?;
        Some(it.fold((first, first), |(lo, hi), &t| (lo.min(t), hi.max(t))))
    }

    /// Field-by-field merge (see [`Stamp::merge`]); idempotent and commutative.
    pub fn merge(&mut self, other: &Stamps) {
        for s in Stamp::ALL {
            let v = match (self.get(s), other.get(s)) {
                (Some(a), Some(b)) => Some(s.merge(a, b)),
                (a, b) => a.or(b),
            };
            self.0[s as usize] = v;
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

/// A cap observation: `value` observed on a span; its time is resolved
/// against the merged request when the run is computed (SPEC §1: admitted_at,
/// else queued_at, else released_at, else the span's start).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CapObservation {
    pub value: u32,
    /// The request the span named explicitly, if any.
    pub request_id: Option<String>,
    pub span_start: Nanos,
}

/// What one span says about one request (the output of `extract`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub run_id: String,
    pub request_id: String,
    /// True when `request_id` came from an attribute, not the span id.
    pub explicit_request_id: bool,
    pub stamps: Stamps,
    pub output_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub retry_count: Option<u64>,
    pub retry_causes: Vec<String>,
    pub model: Option<String>,
    pub failed: bool,
    pub cap: Option<u32>,
    pub span: SpanRef,
    pub span_start: Nanos,
}

impl Observation {
    /// SPEC §2: a span is a request observation when it carries at least one
    /// of the five timestamps.
    pub fn is_request(&self) -> bool {
        !self.stamps.is_empty()
    }

    /// The cap observation this span carries, if any.
    pub fn cap_observation(&self) -> Option<CapObservation> {
        self.cap.map(|value| CapObservation {
            value,
            request_id: (self.is_request() || self.explicit_request_id)
                .then(|| self.request_id.clone()),
            span_start: self.span_start,
        })
    }
}

/// A request as joined from all its observations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub stamps: Stamps,
    pub output_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub retry_count: Option<u64>,
    pub retry_causes: Vec<String>,
    pub model: Option<String>,
    pub failed: bool,
    /// The smallest span reference seen, a stable pick for exemplars.
    pub span: SpanRef,
    /// Live-service bookkeeping: already counted in the cumulative metrics
    /// (never touched by merging).
    pub counted: bool,
}

impl Request {
    pub fn from_observation(o: &Observation) -> Request {
        let mut r = Request {
            span: o.span,
            ..Request::default()
        };
        r.merge(o);
        r
    }

    /// Field-by-field merge. Idempotent and order-independent: timestamps per
    /// [`Stamps::merge`], counts take the maximum, causes form a sorted set,
    /// the model keeps the smallest name, failure is sticky.
    pub fn merge(&mut self, o: &Observation) {
        self.stamps.merge(&o.stamps);
        self.output_tokens = max_opt(self.output_tokens, o.output_tokens);
        self.input_tokens = max_opt(self.input_tokens, o.input_tokens);
        self.retry_count = max_opt(self.retry_count, o.retry_count);
        for c in &o.retry_causes {
            if let Err(i) = self.retry_causes.binary_search(c) {
                self.retry_causes.insert(i, c.clone());
            }
        }
        if let Some(m) = &o.model {
            if self.model.as_ref().is_none_or(|cur| m < cur) {
                self.model = Some(m.clone());
            }
        }
        self.failed |= o.failed;
        self.span = self.span.min(o.span);
    }

    pub fn get(&self, s: Stamp) -> Option<Nanos> {
        self.stamps.get(s)
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Why a gap instant happened (SPEC §1 "Gap causes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
        let again = {
            let mut x = ab;
            x.merge(&b);
            x
        };
        assert_eq!(again, ab);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
