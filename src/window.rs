//! The sweep line of SPEC §1: queue depth, in-flight and cap over time, the
//! gap and backlog sets with their causes, epoch-aligned sliding windows,
//! totals and latency summaries.
//!
//! Pure: no I/O, no clock; integer nanoseconds, half-open intervals.
//!
//! Cost is O(n log n) per run: the interval endpoints are sorted once into a
//! piecewise-constant [`Profile`] with prefix integrals, so a window's
//! measures are two binary searches, and each release touches only the
//! ⌈W/S⌉ windows that contain it.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::model::{duration_secs, nanos_to_secs, Cause, Nanos, Request, Stamp};
use crate::report::{ByCause, Gap, Latency, RunReport, Stats, Summary, WindowReport};

/// How windows and gaps are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Window length `W` in nanoseconds (default 60 s).
    pub window: Nanos,
    /// Window step `S` in nanoseconds (default 10 s).
    pub step: Nanos,
    /// The cap used when no span carries one.
    pub default_cap: Option<u32>,
    /// Refill threshold `T` in nanoseconds (default 100 ms): a free slot
    /// older than this is a stall, a younger one a refill.
    pub refill_threshold: Nanos,
    /// At most this many windows per run (the latest are kept), so that one
    /// absurd timestamp cannot make a run span centuries of windows.
    pub max_windows: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window: 60 * crate::model::NANOS_PER_SEC,
            step: 10 * crate::model::NANOS_PER_SEC,
            default_cap: None,
            refill_threshold: 100_000_000,
            max_windows: 100_000,
        }
    }
}

/// A cap observation with its time resolved. Points are given in receive
/// order; of two at one instant the later one wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapPoint {
    pub t: Nanos,
    pub value: u32,
}

/// A piece of the timeline on which queue depth, in-flight, cap and the gap
/// cause are constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub start: Nanos,
    pub end: Nanos,
    pub queue_depth: u32,
    pub in_flight: u32,
    pub cap: Option<u32>,
    /// `Some` when this piece belongs to the gap set.
    pub gap: Option<Cause>,
}

impl Segment {
    fn rates(&self) -> Acc {
        let mut a = Acc {
            backlog: i64::from(self.queue_depth > 0),
            in_flight: i128::from(self.in_flight),
            queue: i128::from(self.queue_depth),
            util: self
                .cap
                .map_or(0.0, |c| f64::from(self.in_flight) / f64::from(c)),
            ..Acc::default()
        };
        if let Some(c) = self.gap {
            a.gap[c as usize] = 1;
        }
        a
    }
}

/// Integrals over time (nanosecond-weighted).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Acc {
    backlog: i64,
    gap: [i64; 3],
    in_flight: i128,
    queue: i128,
    util: f64,
}

impl Acc {
    fn add_scaled(&self, r: &Acc, dt: i64) -> Acc {
        Acc {
            backlog: self.backlog + r.backlog * dt,
            gap: [
                self.gap[0] + r.gap[0] * dt,
                self.gap[1] + r.gap[1] * dt,
                self.gap[2] + r.gap[2] * dt,
            ],
            in_flight: self.in_flight + r.in_flight * i128::from(dt),
            queue: self.queue + r.queue * i128::from(dt),
            util: self.util + r.util * dt as f64,
        }
    }

    /// The integral through the end of piece `s`, from this one up to its
    /// start: the one running sum of a timeline's pieces.
    fn through(&self, s: &Segment) -> Acc {
        self.add_scaled(&s.rates(), s.end - s.start)
    }

    fn minus(&self, o: &Acc) -> Acc {
        Acc {
            backlog: self.backlog - o.backlog,
            gap: [
                self.gap[0] - o.gap[0],
                self.gap[1] - o.gap[1],
                self.gap[2] - o.gap[2],
            ],
            in_flight: self.in_flight - o.in_flight,
            queue: self.queue - o.queue,
            util: self.util - o.util,
        }
    }
}

/// Queue depth, in-flight and cap over a run's active range, as segments with
/// prefix integrals.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// Active range `[start, end)`.
    pub start: Nanos,
    pub end: Nanos,
    segments: Vec<Segment>,
    /// `cum[i + 1] - cum[i]` integrates over `segments[i]`.
    cum: Vec<Acc>,
    /// Whether any cap (observed or default) applies.
    pub has_cap: bool,
}

/// A change of the sweep line at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ev {
    QueueIn,
    QueueOut,
    Admit,
    /// A request leaves the queue as it is admitted: `QueueOut` and
    /// `Admit` at one instant, as one event (a run's whole sweep).
    Handoff,
    /// `slot`: the release frees a slot (it is not the open end of the run).
    Release {
        slot: bool,
    },
    /// A cap observation; `order` is its receive order among the caps at
    /// one instant (the last one wins).
    Cap {
        order: u32,
        value: u32,
    },
}

/// The sweep line's state at an instant, after every event before it: what
/// a live run carries from one finalization to the next, so that each one
/// sweeps only the requests that are still open ([`Ledger::extend`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepState {
    pub at: Nanos,
    pub queue_depth: i64,
    pub in_flight: i64,
    /// Release times of the slots freed while requests waited (oldest first).
    pub pending: VecDeque<Nanos>,
    pub cap: Option<u32>,
    pub has_cap: bool,
}

impl SweepState {
    /// The state at the start of a run: nothing queued or in flight, and the
    /// cap in force at `start` (caps are in receive order). Before the first
    /// observation the cap is the first one's value (of several at that
    /// instant, the one received last); caps after `start` are events.
    pub fn initial(caps: &[CapPoint], start: Nanos, cfg: &WindowConfig) -> SweepState {
        let first_t = caps.iter().map(|c| c.t).min().unwrap_or(start);
        let mut cap = None;
        let mut best = Nanos::MIN;
        for c in caps {
            if c.t <= start.max(first_t) && c.t >= best {
                best = c.t;
                cap = Some(c.value);
            }
        }
        let cap = cap.or(cfg.default_cap);
        SweepState {
            at: start,
            cap,
            has_cap: cap.is_some(),
            ..SweepState::default()
        }
    }
}

/// The active range `[min, max]` over every known timestamp of the requests.
pub fn active_range<'a>(requests: impl IntoIterator<Item = &'a Request>) -> Option<(Nanos, Nanos)> {
    requests
        .into_iter()
        .filter_map(|r| r.stamps.bounds())
        .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
}

/// The queued interval `[queued_at, q_end)` of SPEC §1, if it is non-empty.
pub fn queued_interval(r: &Request, run_end: Nanos) -> Option<(Nanos, Nanos)> {
    let q = r.get(Stamp::Queued)?;
    let end = r
        .get(Stamp::Admitted)
        .or(r.get(Stamp::Released))
        .unwrap_or(run_end);
    (end > q).then_some((q, end))
}

/// The in-flight interval `[admitted_at, f_end)` of SPEC §1, if its end is not
/// before its start (a zero-length one still admits and releases).
pub fn in_flight_interval(r: &Request, run_end: Nanos) -> Option<(Nanos, Nanos)> {
    let a = r.get(Stamp::Admitted)?;
    let end = r
        .get(Stamp::Released)
        .or(r.get(Stamp::LastToken))
        .unwrap_or(run_end);
    (end >= a).then_some((a, end))
}

impl Profile {
    /// Sweeps the requests' interval endpoints and the cap step function over
    /// the active range `[start, end)`.
    pub fn build(
        requests: &[&Request],
        caps: &[CapPoint],
        start: Nanos,
        end: Nanos,
        cfg: &WindowConfig,
    ) -> Profile {
        let (segments, state) = sweep_all(requests, caps, start, end, cfg);
        Profile::of_segments(start, end, segments, state.has_cap)
    }

    /// A profile of `[start, end)` from its pieces: their prefix integrals.
    fn of_segments(start: Nanos, end: Nanos, segments: Vec<Segment>, has_cap: bool) -> Profile {
        let mut cum = Vec::with_capacity(segments.len() + 1);
        cum.push(Acc::default());
        cum.extend(running_integrals(&segments));
        Profile {
            start,
            end,
            segments,
            cum,
            has_cap,
        }
    }
}

/// The integrals from the first piece's start to each piece's end, summed
/// in order: the prefix integrals of a profile, and (the last) a run's
/// totals without them are the same sums.
fn running_integrals(segments: &[Segment]) -> impl Iterator<Item = Acc> + '_ {
    segments.iter().scan(Acc::default(), |acc, s| {
        *acc = acc.through(s);
        Some(*acc)
    })
}

/// The pieces of a run's whole sweep over `[start, end)` (as
/// [`Profile::build`] without the prefix integrals), and the state at `end`.
fn sweep_all(
    requests: &[&Request],
    caps: &[CapPoint],
    start: Nanos,
    end: Nanos,
    cfg: &WindowConfig,
) -> (Vec<Segment>, SweepState) {
    let (init, events) = whole_sweep(requests, caps, start, end, cfg);
    let mut segments = Vec::with_capacity(events.len() + 1);
    let state = sweep(init, events, end, cfg, |s| segments.push(s));
    (segments, state)
}

/// The start state and the events of a sweep of a run's whole active range
/// `[start, end)`, for [`sweep`].
fn whole_sweep(
    requests: &[&Request],
    caps: &[CapPoint],
    start: Nanos,
    end: Nanos,
    cfg: &WindowConfig,
) -> (SweepState, Vec<(Nanos, Ev)>) {
    let init = SweepState::initial(caps, start, cfg);
    // The caps as events, less those equal to the last one kept before
    // them: such a cap changes nothing (after every instant the cap in
    // force is still the value received last).
    let sorted_caps: Vec<CapPoint> = match caps.split_first() {
        // One value throughout (the usual case): the start state has it
        // (`SweepState::initial`), and no cap changes it.
        Some((first, rest)) if rest.iter().all(|c| c.value == first.value) => Vec::new(),
        _ => {
            let mut sorted = caps.to_vec();
            sorted.sort_by_key(|c| c.t);
            sorted.dedup_by(|later, kept| later.value == kept.value);
            sorted
        }
    };
    let mut events: Vec<(Nanos, Ev)> = Vec::with_capacity(requests.len() * 4 + sorted_caps.len());
    for r in requests {
        let queued = queued_interval(r, end);
        let in_flight = in_flight_interval(r, end);
        let handoff = matches!((queued, in_flight), (Some((_, q)), Some((a, _))) if q == a);
        if let Some((a, b)) = queued {
            events.push((a, Ev::QueueIn));
            if !handoff {
                events.push((b, Ev::QueueOut));
            }
        }
        if let Some((a, b)) = in_flight {
            events.push((a, if handoff { Ev::Handoff } else { Ev::Admit }));
            events.push((b, Ev::Release { slot: b < end }));
        }
    }
    events.extend(
        sorted_caps
            .iter()
            .filter(|c| c.t > start && c.t < end)
            .zip(0u32..)
            .map(|(c, order)| {
                (
                    c.t,
                    Ev::Cap {
                        order,
                        value: c.value,
                    },
                )
            }),
    );
    (init, events)
}

/// Event lists from this many up to [`RADIX_UP_TO`] are sorted by radix,
/// shorter ones as packed words ([`sort_packed`]), longer ones by
/// comparison.
const RADIX_FROM: usize = 1 << 12;

/// Beyond this many events (4 MiB) a radix pass scatters over more memory
/// than the caches hold: over a 500,000-request run's 2M events the
/// comparison sort was faster.
const RADIX_UP_TO: usize = 1 << 18;

/// Sorts sweep events by time: a list shorter than [`RADIX_FROM`]
/// (a finalization's) as [`sort_packed`] does; one of [`RADIX_FROM`] to
/// [`RADIX_UP_TO`] events (a mid-sized run's whole sweep) by radix, 11 bits
/// of the time a pass, least significant first, over the bits in which its
/// times differ; a longer one by comparison.
fn sort_by_time(events: &mut Vec<(Nanos, Ev)>) {
    if events.len() < RADIX_FROM {
        sort_packed(events, |e| e.0);
        return;
    }
    if events.len() > RADIX_UP_TO {
        events.sort_unstable_by_key(|e| e.0);
        return;
    }
    let Some((lo, hi)) = time_range(events, |e| e.0) else {
        return;
    };
    // Offsets from the earliest time fit in 64 bits unsigned.
    let offset = |e: &(Nanos, Ev)| e.0.wrapping_sub(lo) as u64;
    let bits = 64 - (hi.wrapping_sub(lo) as u64).leading_zeros();
    let mut other = events.clone();
    let (mut from, mut to) = (events, &mut other);
    let mut in_other = false;
    for shift in (0..bits).step_by(11) {
        let digit = |e: &(Nanos, Ev)| (offset(e) >> shift) as usize & 0x7ff;
        let mut next = [0usize; 0x800];
        for e in from.iter() {
            next[digit(e)] += 1;
        }
        let mut at = 0;
        for n in next.iter_mut() {
            (*n, at) = (at, at + *n);
        }
        for e in from.iter() {
            let d = digit(e);
            to[next[d]] = *e;
            next[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
        in_other = !in_other;
    }
    if in_other {
        std::mem::swap(from, to);
    }
}

/// The earliest and latest `time` of `items` (none when empty).
fn time_range<T>(items: &[T], time: impl Fn(&T) -> Nanos) -> Option<(Nanos, Nanos)> {
    let lo = items.iter().map(&time).min()?;
    Some((lo, items.iter().map(time).max()?))
}

/// Sorts `items` by `time`, stably. A list shorter than [`RADIX_FROM`]
/// whose times span less than 2^52 ns (52 days) is sorted as one word an
/// item, the time from the earliest above the item's place, and then put in
/// that order: a comparison sort of 8-byte keys costs a third less than one
/// of the items (a finalization's sweep events and released requests).
pub(crate) fn sort_packed<T: Copy>(items: &mut Vec<T>, time: impl Fn(&T) -> Nanos) {
    const PLACE: u32 = RADIX_FROM.trailing_zeros();
    let Some((lo, hi)) = time_range(items, &time) else {
        return;
    };
    if items.len() >= RADIX_FROM || (hi.wrapping_sub(lo) as u64) >> (64 - PLACE) != 0 {
        items.sort_by_key(time);
        return;
    }
    let mut keys: Vec<u64> = (0u64..)
        .zip(items.iter())
        .map(|(i, x)| (time(x).wrapping_sub(lo) as u64) << PLACE | i)
        .collect();
    keys.sort_unstable();
    let place = (1u64 << PLACE) - 1;
    *items = keys.iter().map(|k| items[(k & place) as usize]).collect();
}

/// Sorts `items` by `time` and then `cmp`, which compares only the items
/// whose times tie: [`sort_packed`], then each run of one time ordered.
pub(crate) fn sort_by_time_then<T: Copy>(
    items: &mut Vec<T>,
    time: impl Fn(&T) -> Nanos + Copy,
    mut cmp: impl FnMut(&T, &T) -> Ordering,
) {
    sort_packed(items, time);
    let mut rest = &mut items[..];
    while let Some(first) = rest.first() {
        let t = time(first);
        let n = rest.iter().position(|x| time(x) != t).unwrap_or(rest.len());
        let (tie, after) = rest.split_at_mut(n);
        if n > 1 {
            tie.sort_unstable_by(&mut cmp);
        }
        rest = after;
    }
}

/// A sweep from `init` over `[init.at, end)` with `events` (none before
/// `init.at`; those at `end` or later are ignored): hands each piece, in
/// time order, to `piece`, and returns the state at `end`, after every event
/// before it.
fn sweep(
    init: SweepState,
    mut events: Vec<(Nanos, Ev)>,
    end: Nanos,
    cfg: &WindowConfig,
    mut piece: impl FnMut(Segment),
) -> SweepState {
    // By time only: at one instant the counts commute, and of the caps
    // the last received (`Ev::Cap::order`) wins below.
    sort_by_time(&mut events);
    let start = init.at;
    let has_cap = init.has_cap || events.iter().any(|e| matches!(e.1, Ev::Cap { .. }));
    let mut cap = init.cap;
    let (mut q, mut f) = (init.queue_depth, init.in_flight);
    let mut pending = init.pending;
    let mut i = 0;
    let mut t = start;
    while t < end {
        let (mut releases, mut admits) = (0usize, 0usize);
        let mut last_cap: Option<(u32, u32)> = None;
        while i < events.len() && events[i].0 <= t {
            match events[i].1 {
                Ev::QueueIn => q += 1,
                Ev::QueueOut => q -= 1,
                Ev::Admit => {
                    f += 1;
                    admits += 1;
                }
                Ev::Handoff => {
                    q -= 1;
                    f += 1;
                    admits += 1;
                }
                Ev::Release { slot } => {
                    f -= 1;
                    releases += usize::from(slot);
                }
                Ev::Cap { order, value } => {
                    if last_cap.is_none_or(|(o, _)| order >= o) {
                        last_cap = Some((order, value));
                    }
                }
            }
            i += 1;
        }
        if let Some((_, value)) = last_cap {
            cap = Some(value);
        }
        // Releases come before admissions at one instant. (Most instants
        // have neither, or one of them and an empty list: no call.)
        match releases {
            0 => {}
            // The usual release, one at an instant: no general extend.
            1 => pending.push_back(t),
            n => pending.extend(std::iter::repeat_n(t, n)),
        }
        match admits {
            0 => {}
            1 => {
                pending.pop_front();
            }
            n => {
                pending.drain(..n.min(pending.len()));
            }
        }
        if q <= 0 {
            pending.clear();
        }
        if let Some(c) = cap {
            let room = usize::try_from(i64::from(c) - f).unwrap_or(0);
            pending.truncate(room);
        }
        let next = events.get(i).map_or(end, |e| e.0.min(end));
        let seg = Segment {
            start: t,
            end: next,
            queue_depth: u32::try_from(q).unwrap_or(0),
            in_flight: u32::try_from(f).unwrap_or(0),
            cap,
            gap: None,
        };
        let in_gap = cap.is_some_and(|c| q > 0 && f < i64::from(c));
        match (in_gap, pending.front()) {
            (false, _) => piece(seg),
            (true, None) => piece(Segment {
                gap: Some(Cause::UnderCap),
                ..seg
            }),
            (true, Some(&slot)) => {
                let stall_from = slot.saturating_add(cfg.refill_threshold);
                if stall_from > t {
                    piece(Segment {
                        end: stall_from.min(next),
                        gap: Some(Cause::Refill),
                        ..seg
                    });
                }
                if stall_from < next {
                    piece(Segment {
                        start: stall_from.max(t),
                        gap: Some(Cause::Stall),
                        ..seg
                    });
                }
            }
        }
        t = next;
    }
    SweepState {
        at: end,
        queue_depth: q,
        in_flight: f,
        pending,
        cap,
        has_cap,
    }
}

impl Profile {
    /// The pieces of the timeline, in time order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Integral up to `t` (clamped to the active range), from a base that
    /// differences cancel.
    fn integral(&self, t: Nanos) -> Acc {
        let t = t.clamp(self.start, self.end);
        let i = self.segments.partition_point(|s| s.start <= t);
        if i == 0 {
            return Acc::default();
        }
        let s = &self.segments[i - 1];
        self.cum[i - 1].add_scaled(&s.rates(), t.min(s.end) - s.start)
    }

    /// The time-based metrics over `[lo, hi)` ∩ active range, combined with
    /// the request counts of the same range.
    pub fn stats(&self, lo: Nanos, hi: Nanos, c: &Counts) -> Stats {
        let range = (self.start, self.end);
        range_stats(range, |t| self.integral(t), lo, hi, self.has_cap, c)
    }
}

/// The time-based metrics over `[lo, hi)` ∩ `range` of a timeline whose
/// running integral up to an instant is `integral`, combined with the
/// request counts of the same range ([`Profile::stats`], [`Ledger::stats`]).
fn range_stats(
    (start, end): (Nanos, Nanos),
    integral: impl Fn(Nanos) -> Acc,
    lo: Nanos,
    hi: Nanos,
    has_cap: bool,
    c: &Counts,
) -> Stats {
    let lo = lo.max(start);
    let hi = hi.min(end).max(lo);
    stats_of(&integral(hi).minus(&integral(lo)), hi - lo, has_cap, c)
}

/// The time-based metrics of integrals `a` over `d` nanoseconds, combined
/// with the request counts of the same range.
fn stats_of(a: &Acc, d: Nanos, has_cap: bool, c: &Counts) -> Stats {
    let per = |x: f64| (d > 0).then(|| x / d as f64);
    let gap_ns: i64 = a.gap.iter().sum();
    let secs = duration_secs(d);
    Stats {
        effective_seconds: secs,
        gap_seconds: has_cap.then(|| duration_secs(gap_ns)),
        gap_fraction: if has_cap { per(gap_ns as f64) } else { None },
        backlog_seconds: duration_secs(a.backlog),
        backlog_fraction: per(a.backlog as f64),
        mean_in_flight: per(a.in_flight as f64),
        mean_queue_depth: per(a.queue as f64),
        utilization: if has_cap { per(a.util) } else { None },
        system_tps: (d > 0).then(|| c.output_tokens as f64 / secs),
        output_tokens: c.output_tokens,
        requests: c.requests,
        succeeded: c.succeeded,
        failed: c.failed,
        success_rate: (c.succeeded + c.failed > 0)
            .then(|| c.succeeded as f64 / (c.succeeded + c.failed) as f64),
        retry_rate: (c.requests > 0).then(|| c.retries as f64 / c.requests as f64),
        gap_seconds_by_cause: has_cap.then(|| ByCause {
            stall: duration_secs(a.gap[Cause::Stall as usize]),
            refill: duration_secs(a.gap[Cause::Refill as usize]),
            under_cap: duration_secs(a.gap[Cause::UnderCap as usize]),
        }),
    }
}

impl Profile {
    /// The maximal intervals of the gap set, each with its dominant cause.
    pub fn gaps(&self) -> Vec<GapInterval> {
        gaps_of(self.segments())
    }
}

/// The maximal intervals of the gap set of `segments`, each with its
/// dominant cause.
fn gaps_of(segments: &[Segment]) -> Vec<GapInterval> {
    let mut out = Vec::new();
    for s in segments {
        add_gap_piece(&mut out, s);
    }
    out
}

/// Adds piece `s`, the one after the last piece added, to `gaps` if it is in
/// the gap set: it extends the last gap if that ends where `s` starts (the
/// piece before was in the gap set; pieces are never empty).
fn add_gap_piece(gaps: &mut Vec<GapInterval>, s: &Segment) {
    let Some(cause) = s.gap else {
        return;
    };
    let g = match gaps.last_mut() {
        Some(g) if g.end == s.start => g,
        _ => {
            gaps.push(GapInterval {
                start: s.start,
                end: s.start,
                max_queue_depth: 0,
                by_cause: [0; 3],
            });
            let last = gaps.len() - 1;
            &mut gaps[last]
        }
    };
    g.end = s.end;
    g.max_queue_depth = g.max_queue_depth.max(s.queue_depth);
    g.by_cause[cause as usize] += s.end - s.start;
}

/// What a live run keeps of its swept timeline `[start, end)`: the running
/// integral at `start`, at every window or step-slice bound inside it
/// (`k·S` and `k·S + W`) and at `end`, and its gaps. The windows and slices
/// that become final are bounded by those instants (or by the run's start
/// and end), so their stats need nothing between them, and the pieces of
/// the sweep (one or two per event) are not kept.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    pub start: Nanos,
    pub end: Nanos,
    /// `(t, integral up to t)`, `t` ascending from `start` to `end`; the
    /// integrals share a base that differences cancel.
    marks: Vec<(Nanos, Acc)>,
    /// The maximal intervals of the gap set, in time order; the last may go
    /// on in the next sweep.
    gaps: Vec<GapInterval>,
    pub has_cap: bool,
}

/// The first window or slice bound after `t`: `k·S` or `k·S + W`.
fn next_bound(t: Nanos, cfg: &WindowConfig) -> Nanos {
    let s = cfg.step;
    let off = cfg.window.rem_euclid(s);
    let on_step = t.div_euclid(s).saturating_mul(s).saturating_add(s);
    let on_window = (t - off)
        .div_euclid(s)
        .saturating_mul(s)
        .saturating_add(s + off);
    on_step.min(on_window)
}

impl Ledger {
    /// Sweeps on from `init` (the state where this ledger ends, or where a
    /// new one starts) over `[init.at, end)`, as [`Profile::build`] sweeps
    /// (`events` as there, none before `init.at`), and returns the state at
    /// `end`. Each piece is also handed to `piece`. Bounds before
    /// `asked_from` get no mark: no stats are asked there.
    pub fn extend(
        &mut self,
        init: SweepState,
        events: Vec<(Nanos, Ev)>,
        end: Nanos,
        asked_from: Nanos,
        cfg: &WindowConfig,
        mut piece: impl FnMut(&Segment),
    ) -> SweepState {
        let mut acc = match self.marks.last() {
            Some(&(_, acc)) => acc,
            None => {
                self.start = init.at;
                self.marks.push((init.at, Acc::default()));
                Acc::default()
            }
        };
        let mut bound = next_bound(init.at.max(asked_from.saturating_sub(1)), cfg);
        // Two bounds a step at most (window starts and ends), and the end.
        let bounds = (end - bound).max(0) / cfg.step.max(1) * 2 + 3;
        self.marks
            .reserve(usize::try_from(bounds).unwrap_or(0).min(1 << 12));
        let (marks, gaps) = (&mut self.marks, &mut self.gaps);
        let state = sweep(
            init,
            events,
            end,
            cfg,
            // Inlined into the sweep's loop, where a call a piece saved and
            // restored registers.
            #[inline(always)]
            |s| {
                let r = s.rates();
                // The integral at a bound inside the piece, as
                // [`Profile::stats`] takes it.
                while bound < s.end {
                    marks.push((bound, acc.add_scaled(&r, bound - s.start)));
                    bound = next_bound(bound, cfg);
                }
                acc = acc.add_scaled(&r, s.end - s.start);
                add_gap_piece(gaps, &s);
                piece(&s);
            },
        );
        if self.marks.last().is_some_and(|m| m.0 < end) {
            self.marks.push((end, acc));
        }
        self.end = end;
        self.has_cap |= state.has_cap;
        state
    }

    /// The integral up to `t`, which must be one of the marks (clamped to
    /// `[start, end]`).
    fn integral(&self, t: Nanos) -> Acc {
        let t = t.clamp(self.start, self.end);
        let i = self.marks.partition_point(|m| m.0 < t);
        match self.marks.get(i) {
            Some(&(at, acc)) if at == t => acc,
            _ => {
                debug_assert!(false, "no mark at {t}");
                self.marks.get(i).map(|m| m.1).unwrap_or_default()
            }
        }
    }

    /// The time-based metrics over `[lo, hi)` ∩ `[start, end)` (whose bounds
    /// are marks), combined with the request counts of the same range.
    pub fn stats(&self, lo: Nanos, hi: Nanos, c: &Counts) -> Stats {
        let range = (self.start, self.end);
        range_stats(range, |t| self.integral(t), lo, hi, self.has_cap, c)
    }

    /// The gaps that end after `start` or reach `end` (so may go on).
    pub fn gaps(&self) -> &[GapInterval] {
        &self.gaps
    }

    /// Drops the timeline before `t` (a mark, at most `end`), and the gaps
    /// that ended before it; a gap that `t` cuts, or that ends at `end`, is
    /// kept whole.
    pub fn drop_before(&mut self, t: Nanos) {
        let i = self.marks.partition_point(|m| m.0 < t);
        if i > 0 && self.marks.get(i).is_some_and(|m| m.0 == t) {
            self.marks.drain(..i);
            self.start = t;
        }
        let end = self.end;
        self.gaps.retain(|g| g.end > t || g.end == end);
    }
}

/// One column of a run's timeline: time averages over `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelinePoint {
    pub start: Nanos,
    pub end: Nanos,
    pub in_flight: f64,
    pub queue_depth: f64,
    pub cap: Option<u32>,
}

impl Profile {
    /// The active range cut into `columns` equal pieces (for drawing): see
    /// [`timeline`].
    pub fn timeline(&self, columns: usize) -> Vec<TimelinePoint> {
        timeline(self.start, self.end, self.segments(), columns)
    }
}

/// `[start, end)` cut into `columns` equal pieces (for drawing): mean
/// in-flight and queue depth of each over `segs`, and the cap at its middle.
/// One walk: columns and segments both go forward in time.
pub fn timeline(start: Nanos, end: Nanos, segs: &[Segment], columns: usize) -> Vec<TimelinePoint> {
    let span = end - start;
    if span <= 0 || columns == 0 {
        return Vec::new();
    }
    let n = columns as i64;
    // i128 only when a span of centuries times the column index would
    // overflow i64 (the same result either way).
    let small = span <= i64::MAX / (n + 1);
    let at = |i: i64| {
        if small {
            start + span * i / n
        } else {
            start + (i128::from(span) * i128::from(i) / i128::from(n)) as i64
        }
    };
    let mut k = 0usize;
    let mut out = Vec::with_capacity(columns);
    let mut b = at(0);
    for i in 0..n {
        let a = b;
        b = at(i + 1);
        if b <= a {
            continue;
        }
        while k < segs.len() && segs[k].end <= a {
            k += 1;
        }
        // A column inside one segment (most columns of a sparse run)
        // takes its levels as they are.
        if let Some(s) = segs.get(k).filter(|s| s.start <= a && s.end >= b) {
            out.push(TimelinePoint {
                start: a,
                end: b,
                in_flight: f64::from(s.in_flight),
                queue_depth: f64::from(s.queue_depth),
                cap: s.cap,
            });
            continue;
        }
        let (mut fl, mut q) = (0i128, 0i128);
        let mid = a + (b - a) / 2;
        let mut cap = None;
        let mut j = k;
        while j < segs.len() && segs[j].start < b {
            let s = &segs[j];
            let dt = i128::from(s.end.min(b) - s.start.max(a));
            if dt > 0 {
                fl += i128::from(s.in_flight) * dt;
                q += i128::from(s.queue_depth) * dt;
            }
            if s.start <= mid {
                cap = s.cap;
            }
            j += 1;
        }
        let d = (b - a) as f64;
        // Sums almost always fit i64, whose conversion is one instruction
        // (i128's is a library call).
        let f = |x: i128| match i64::try_from(x) {
            Ok(x) => x as f64,
            Err(_) => x as f64,
        };
        out.push(TimelinePoint {
            start: a,
            end: b,
            in_flight: f(fl) / d,
            queue_depth: f(q) / d,
            cap,
        });
    }
    out
}

/// A finished run's timeline as it is kept for drawing: the profile's
/// pieces while there are no more of them than columns (drawn when the
/// page is asked for, which most finished runs never are), else the
/// columns already drawn. Either is at most `columns` entries.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Drawing {
    Columns(Vec<TimelinePoint>),
    Pieces {
        start: Nanos,
        end: Nanos,
        segments: Vec<Segment>,
    },
}

impl Default for Drawing {
    fn default() -> Self {
        Drawing::Columns(Vec::new())
    }
}

impl Drawing {
    /// The drawing of `segments` over `[start, end)`.
    pub fn of(start: Nanos, end: Nanos, segments: &[Segment], columns: usize) -> Drawing {
        if segments.len() <= columns {
            Drawing::Pieces {
                start,
                end,
                segments: segments.to_vec(),
            }
        } else {
            Drawing::Columns(timeline(start, end, segments, columns))
        }
    }

    /// The timeline in `columns` columns (as [`Profile::timeline`]).
    pub fn columns(&self, columns: usize) -> Vec<TimelinePoint> {
        match self {
            Drawing::Columns(c) => c.clone(),
            Drawing::Pieces {
                start,
                end,
                segments,
            } => timeline(*start, *end, segments, columns),
        }
    }
}

/// A maximal interval of the gap set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GapInterval {
    pub start: Nanos,
    pub end: Nanos,
    pub max_queue_depth: u32,
    /// Nanoseconds of each cause, indexed by `Cause as usize`.
    pub by_cause: [i64; 3],
}

impl GapInterval {
    /// The cause with the most time (ties: stall, refill, under_cap).
    pub fn cause(&self) -> Cause {
        let mut best = Cause::Stall;
        for c in Cause::ALL {
            if self.by_cause[c as usize] > self.by_cause[best as usize] {
                best = c;
            }
        }
        best
    }

    pub fn to_report(&self) -> Gap {
        Gap {
            start_unix_s: nanos_to_secs(self.start),
            end_unix_s: nanos_to_secs(self.end),
            seconds: duration_secs(self.end - self.start),
            max_queue_depth: u64::from(self.max_queue_depth),
            cause: self.cause().as_str().into(),
        }
    }
}

/// Request counts of released requests in a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    pub retries: u64,
}

impl Counts {
    pub fn add(&mut self, r: &Request) {
        self.requests += 1;
        if r.failed() {
            self.failed += 1;
        } else {
            self.succeeded += 1;
            self.output_tokens = self
                .output_tokens
                .saturating_add(r.output_tokens().unwrap_or(0));
        }
        self.retries = self.retries.saturating_add(r.retry_count().unwrap_or(0));
    }

    /// Adds the counts of other requests.
    pub fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.retries = self.retries.saturating_add(o.retries);
    }
}

/// Window `k` is `[k·S, k·S + W)`; the windows overlapping `[lo, hi)` are
/// `first..=last` (empty when `first > last`).
pub fn windows_overlapping(lo: Nanos, hi: Nanos, cfg: &WindowConfig) -> (i64, i64) {
    let first = (lo - cfg.window).div_euclid(cfg.step) + 1;
    let last = (hi - 1).div_euclid(cfg.step);
    (first, last)
}

/// The time windows `first..=last` lie in: `[first·S, last·S + W)`.
pub fn windows_cover(first: i64, last: i64, cfg: &WindowConfig) -> (Nanos, Nanos) {
    (first * cfg.step, last * cfg.step + cfg.window)
}

/// The windows containing instant `t`.
pub fn windows_containing(t: Nanos, cfg: &WindowConfig) -> (i64, i64) {
    (
        (t - cfg.window).div_euclid(cfg.step) + 1,
        t.div_euclid(cfg.step),
    )
}

/// The windows of `first..=last` containing instant `t`, as the first and
/// last (`a > b` when none): [`windows_containing`] clipped, but an
/// instant outside their cover costs no division, and among a few windows
/// (a finalization's usual lot) they are found by comparing `t` with their
/// bounds, which costs less than the two divisions. Inlined: a
/// finalization asks it of every request it holds, most of them outside
/// the cover, and a call for each cost more than the answer.
#[inline]
pub fn windows_among(t: Nanos, first: i64, last: i64, cfg: &WindowConfig) -> (i64, i64) {
    let (lo, hi) = windows_cover(first, last, cfg);
    if !(lo..hi).contains(&t) {
        return (first, first - 1);
    }
    if last - first >= 8 {
        let (a, b) = windows_containing(t, cfg);
        return (a.max(first), b.min(last));
    }
    // Window k is [k·step, k·step + window): both bounds grow with k.
    let a = (first..=last)
        .find(|&k| t < k * cfg.step + cfg.window)
        .unwrap_or(last + 1);
    let b = (first..=last)
        .rev()
        .find(|&k| k * cfg.step <= t)
        .unwrap_or(first - 1);
    (a, b)
}

/// The reports of windows `first..=last`: `stats` of each window's range
/// ([`Profile::stats`] or [`Ledger::stats`]) with the requests released in
/// it.
pub fn window_reports(
    stats: impl Fn(Nanos, Nanos, &Counts) -> Stats,
    requests: &[&Request],
    first: i64,
    last: i64,
    cfg: &WindowConfig,
) -> Vec<WindowReport> {
    if first > last {
        return Vec::new();
    }
    let mut counts = vec![Counts::default(); (last - first + 1) as usize];
    for r in requests {
        let Some(t) = r.get(Stamp::Released) else {
            continue;
        };
        let (a, b) = windows_among(t, first, last, cfg);
        for k in a..=b {
            counts[(k - first) as usize].add(r);
        }
    }
    reports_of(stats, &counts, first, cfg)
}

/// The reports of windows `first..`, one for each of `counts` (the
/// requests released in the window): `stats` of each window's range with
/// its counts.
pub fn reports_of(
    stats: impl Fn(Nanos, Nanos, &Counts) -> Stats,
    counts: &[Counts],
    first: i64,
    cfg: &WindowConfig,
) -> Vec<WindowReport> {
    (first..)
        .zip(counts)
        .map(|(k, c)| {
            let ws = k * cfg.step;
            let we = ws + cfg.window;
            WindowReport {
                start_unix_s: nanos_to_secs(ws),
                end_unix_s: nanos_to_secs(we),
                stats: stats(ws, we, c),
            }
        })
        .collect()
}

/// Per-request derived metrics (SPEC §1), each `None` when an input is
/// missing; `Some(Err(()))` for a negative interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Derived {
    pub t_queue: Option<Result<Nanos, ()>>,
    pub t_first_token: Option<Result<Nanos, ()>>,
    pub t_stream: Option<Result<Nanos, ()>>,
    pub t_in_flight: Option<Result<Nanos, ()>>,
}

impl Derived {
    pub fn of(r: &Request) -> Derived {
        let iv = |a: Stamp, b: Stamp| {
            let (a, b) = (r.get(a)?, r.get(b)?);
            Some(if b >= a { Ok(b - a) } else { Err(()) })
        };
        Derived {
            t_queue: iv(Stamp::Queued, Stamp::Admitted),
            t_first_token: iv(Stamp::Admitted, Stamp::FirstToken),
            t_stream: iv(Stamp::FirstToken, Stamp::LastToken),
            t_in_flight: iv(Stamp::Admitted, Stamp::Released),
        }
    }

    pub fn negative_count(&self) -> u64 {
        [
            self.t_queue,
            self.t_first_token,
            self.t_stream,
            self.t_in_flight,
        ]
        .iter()
        .filter(|x| matches!(x, Some(Err(()))))
        .count() as u64
    }
}

fn ok(x: Option<Result<Nanos, ()>>) -> Option<Nanos> {
    x.and_then(Result::ok)
}

/// Latency samples of successful requests: seven lists of at most `n`
/// each, kept in one buffer (a run's end allocates once for them).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    n: usize,
    buf: Vec<f64>,
    len: [usize; 7],
}

/// The lists of [`Samples`], in the order of [`Latency`]'s fields.
const T_QUEUE: usize = 0;
const T_FIRST_TOKEN: usize = 1;
const T_STREAM: usize = 2;
const T_IN_FLIGHT: usize = 3;
const STREAM_TPS: usize = 4;
const END_TO_END_TPS: usize = 5;
const TIME_PER_OUTPUT_TOKEN: usize = 6;

impl Samples {
    /// Room for `n` requests.
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            n,
            buf: vec![0.0; n.saturating_mul(7)],
            len: [0; 7],
        }
    }

    fn push(&mut self, list: usize, x: f64) {
        let at = list * self.n + self.len[list];
        if let Some(slot) = self.buf.get_mut(at).filter(|_| self.len[list] < self.n) {
            *slot = x;
            self.len[list] += 1;
        }
    }

    /// Adds request `r` (each request once: a list holds at most `n`).
    pub fn add(&mut self, r: &Request, d: &Derived) {
        let secs = |x: Option<Result<Nanos, ()>>| ok(x).map(duration_secs);
        for (list, x) in [
            (T_QUEUE, d.t_queue),
            (T_FIRST_TOKEN, d.t_first_token),
            (T_STREAM, d.t_stream),
            (T_IN_FLIGHT, d.t_in_flight),
        ] {
            if let Some(v) = secs(x) {
                self.push(list, v);
            }
        }
        let Some(tokens) = r.output_tokens() else {
            return;
        };
        if let Some(s) = ok(d.t_stream) {
            if s > 0 {
                self.push(STREAM_TPS, tokens as f64 / duration_secs(s));
            }
            if tokens >= 2 {
                self.push(
                    TIME_PER_OUTPUT_TOKEN,
                    duration_secs(s) / (tokens - 1) as f64,
                );
            }
        }
        if let Some(f) = ok(d.t_in_flight).filter(|&f| f > 0) {
            self.push(END_TO_END_TPS, tokens as f64 / duration_secs(f));
        }
    }

    pub fn summarize(mut self) -> Latency {
        let (n, len) = (self.n, self.len);
        let mut lists = self.buf.chunks_mut(n.max(1));
        let mut next = |list: usize| {
            lists
                .next()
                .map_or_else(Summary::default, |c| Summary::of(&mut c[..len[list]]))
        };
        Latency {
            t_queue: next(T_QUEUE),
            t_first_token: next(T_FIRST_TOKEN),
            t_stream: next(T_STREAM),
            t_in_flight: next(T_IN_FLIGHT),
            stream_tps: next(STREAM_TPS),
            end_to_end_tps: next(END_TO_END_TPS),
            time_per_output_token: next(TIME_PER_OUTPUT_TOKEN),
        }
    }
}

/// The report of one run, computed from all its requests at once (the
/// offline path, and the live path when windows become final).
pub fn run_report(
    run_id: &str,
    requests: &[&Request],
    caps: &[CapPoint],
    cfg: &WindowConfig,
) -> RunReport {
    compute_run(run_id, requests, caps, cfg).0
}

/// [`run_report`] plus the [`Profile`] it was computed from (`None` when no
/// request has a timestamp), for step slices and gap details.
pub fn compute_run(
    run_id: &str,
    requests: &[&Request],
    caps: &[CapPoint],
    cfg: &WindowConfig,
) -> (RunReport, Option<Profile>) {
    let (mut rep, totals) = request_totals(run_id, requests, caps, cfg);
    let Some((start, end)) = active_range(requests.iter().copied()) else {
        return (rep, None);
    };
    let profile = Profile::build(requests, caps, start, end, cfg);
    profile_totals(&mut rep, &profile, &totals);
    let (first, last) = windows_overlapping(start, end, cfg);
    let first = first.max(last.saturating_sub(cfg.max_windows as i64 - 1));
    if first <= last {
        rep.windows = window_reports(|a, b, c| profile.stats(a, b, c), requests, first, last, cfg);
    }
    (rep, Some(profile))
}

/// A run's report without its windows (the live path exports those as they
/// become final), and its timeline for drawing. `swept` is the pieces of a
/// sweep of the whole active range, with whether a cap applied, if the run
/// was swept once, at its end; else the run is swept afresh. Either way the
/// report equals [`run_report`]'s.
pub fn report_at_end(
    run_id: &str,
    requests: &[&Request],
    caps: &[CapPoint],
    cfg: &WindowConfig,
    swept: Option<(&[Segment], bool)>,
    columns: usize,
) -> (RunReport, Drawing) {
    let (mut rep, totals) = request_totals(run_id, requests, caps, cfg);
    let Some((start, end)) = active_range(requests.iter().copied()) else {
        return (rep, Drawing::default());
    };
    let whole = |segments: &[Segment]| {
        segments.first().is_some_and(|s| s.start == start)
            && segments.last().is_some_and(|s| s.end == end)
    };
    let fresh;
    let (segments, has_cap) = match swept.filter(|(s, _)| whole(s)) {
        Some(s) => s,
        None => {
            let (segments, state) = sweep_all(requests, caps, start, end, cfg);
            fresh = segments;
            (&fresh[..], state.has_cap)
        }
    };
    // The totals are the last running integral (as a profile's last prefix
    // integral), so a long run's end does not hold prefix integrals for
    // every piece.
    let integral = running_integrals(segments).last().unwrap_or_default();
    time_totals(&mut rep, start, end, segments, &integral, has_cap, &totals);
    (rep, Drawing::of(start, end, segments, columns))
}

/// A run's totals alone, as its report has them ([`run_report`]'s
/// `totals`, bit for bit): its released requests counted and its timeline
/// swept without keeping the pieces; no percentiles, gaps or windows. What
/// `GET /api/v1/runs` lists for a live run.
pub fn run_totals(requests: &[&Request], caps: &[CapPoint], cfg: &WindowConfig) -> Stats {
    let Some((start, end)) = active_range(requests.iter().copied()) else {
        return Stats::default();
    };
    let mut counts = Counts::default();
    for r in requests.iter().filter(|r| r.get(Stamp::Released).is_some()) {
        counts.add(r);
    }
    // The same sum as `running_integrals`, piece by piece.
    let (init, events) = whole_sweep(requests, caps, start, end, cfg);
    let mut whole = Acc::default();
    let state = sweep(init, events, end, cfg, |s| whole = whole.through(&s));
    stats_of(&whole, end - start, state.has_cap, &counts)
}

/// The parts of a run's report that come from its requests one by one: the
/// counts, token sums and latency percentiles; with the counts of released
/// requests for [`time_totals`].
fn request_totals(
    run_id: &str,
    requests: &[&Request],
    caps: &[CapPoint],
    cfg: &WindowConfig,
) -> (RunReport, Counts) {
    let mut rep = RunReport {
        run_id: run_id.to_string(),
        cap: caps
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (c.t, *i))
            .map(|(_, c)| c.value)
            .or(cfg.default_cap),
        ..RunReport::default()
    };
    let mut samples = Samples::with_capacity(requests.len());
    let mut totals = Counts::default();
    for r in requests {
        rep.requests.total += 1;
        if r.failed() {
            rep.requests.failed += 1;
        } else {
            rep.requests.succeeded += 1;
        }
        if r.get(Stamp::Admitted).is_none() {
            rep.requests.incomplete += 1;
        }
        rep.output_tokens = rep
            .output_tokens
            .saturating_add(r.output_tokens().unwrap_or(0));
        rep.input_tokens = rep
            .input_tokens
            .saturating_add(r.input_tokens().unwrap_or(0));
        rep.retries = rep.retries.saturating_add(r.retry_count().unwrap_or(0));
        let d = Derived::of(r);
        rep.invalid.negative_interval += d.negative_count();
        if !r.failed() {
            samples.add(r, &d);
        }
        if r.get(Stamp::Released).is_some() {
            totals.add(r);
        }
    }
    rep.latency = samples.summarize();
    (rep, totals)
}

fn profile_totals(rep: &mut RunReport, p: &Profile, totals: &Counts) {
    let whole = p.integral(p.end).minus(&p.integral(p.start));
    time_totals(rep, p.start, p.end, p.segments(), &whole, p.has_cap, totals);
}

/// The parts of a run's report that come from its swept timeline (its
/// pieces over `[start, end)` and their integrals `whole`): the active
/// range, the time-based totals and the gaps.
fn time_totals(
    rep: &mut RunReport,
    start: Nanos,
    end: Nanos,
    segments: &[Segment],
    whole: &Acc,
    has_cap: bool,
    totals: &Counts,
) {
    rep.start_unix_s = Some(nanos_to_secs(start));
    rep.end_unix_s = Some(nanos_to_secs(end));
    rep.totals = stats_of(whole, end - start, has_cap, totals);
    rep.gaps = gaps_of(segments)
        .iter()
        .map(GapInterval::to_report)
        .collect();
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
