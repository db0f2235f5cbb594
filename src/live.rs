//! The live service's engine (SPEC §1 "When a window is final"): per-run
//! watermarks, final windows and step slices, idle timeouts, late spans and
//! the bounded set of finished runs.
//!
//! Pure like the core: no tokio, no clock. Callers pass [`Now`], so paused-time
//! tests drive it exactly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::export::web::TIMELINE_COLUMNS;
use crate::extract::{Extracted, Rejection};
use crate::join::{FastHash, RunState};
use crate::model::{duration_secs, Cause, Nanos, Observation, Request, SpanRef, Stamp};
use crate::report::{RunReport, Stats, WindowReport};
use crate::window::{
    in_flight_interval, queued_interval, reports_of, window_reports, windows_among, windows_cover,
    windows_overlapping, Counts, Derived, Drawing, Ev, GapInterval, Ledger, Segment, SweepState,
    TimelinePoint, WindowConfig,
};

/// The moment of a call: a monotonic instant for timeouts and the Unix time
/// for OTLP start timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    pub unix_ns: Nanos,
}

impl Now {
    /// The current time (for callers outside the pure core).
    pub fn system(mono: Instant) -> Now {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Now { mono, unix_ns }
    }
}

/// Settings of the live engine.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub window: WindowConfig,
    /// Allowed lateness `L`: the watermark is the largest timestamp seen
    /// minus this.
    pub lateness: Nanos,
    /// A run that receives no span for this long (wall clock) is finalized.
    pub idle_timeout: Duration,
    /// At most this many live runs; spans of further runs are refused with a
    /// retryable status.
    pub max_runs: usize,
    /// At most this many requests per run; spans of further requests are
    /// rejected through partial success (retrying would not help).
    pub max_requests_per_run: usize,
    /// Finished runs kept for the API: at most this many …
    pub keep_final_runs: usize,
    /// … for at most this long.
    pub keep_final_for: Duration,
    /// A finished run of at most this many requests keeps its request
    /// records and makes its report and timeline when first asked for (the
    /// API's page, view or list, or a checkpoint); a larger one makes them
    /// as it ends.
    pub report_when_asked_up_to: usize,
}

/// [`LiveConfig::report_when_asked_up_to`]'s default: up to 128 requests,
/// a run's records (112 bytes each, 14 KiB) take no more room than its
/// report and its timeline (about four pieces a request, 40 bytes each, up
/// to 480 pieces or columns: 19 KiB).
pub const REPORT_WHEN_ASKED_UP_TO: usize = 128;

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            window: WindowConfig::default(),
            lateness: 60 * crate::model::NANOS_PER_SEC,
            idle_timeout: Duration::from_secs(60),
            max_runs: 10_000,
            max_requests_per_run: 1_000_000,
            keep_final_runs: 1_000,
            keep_final_for: Duration::from_secs(3_600),
            report_when_asked_up_to: REPORT_WHEN_ASKED_UP_TO,
        }
    }
}

/// Whether a run still receives spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPhase {
    Live,
    Final,
}

/// Why a batch was refused as a whole (retryable: nothing of it was applied).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Retryable: the batch would start more runs than `--max-runs`.
    #[error("too many live runs: {live} live, at most {max} (--max-runs); retry later")]
    TooManyRuns { live: usize, max: usize },
    /// Retryable: over `--max-spans-per-second`; retry after the delay.
    #[error(
        "over the ingest rate of {rate} spans/s (--max-spans-per-second); retry in {retry_after:?}"
    )]
    RateLimited { rate: u64, retry_after: Duration },
    /// Retryable: the request was applied but could not be made durable in
    /// the write-ahead log; it is not acknowledged.
    #[error("write-ahead log: {0}; retry")]
    NotDurable(String),
    /// Not retryable: a span of the request is malformed protobuf.
    #[error("not an OTLP trace export: {0}")]
    Malformed(String),
    /// Not retryable: more spans in one request than `--max-spans-per-batch`.
    #[error(
        "{spans} spans in one request, at most {max} (--max-spans-per-batch); send smaller batches"
    )]
    TooManySpans { spans: usize, max: usize },
}

impl Refusal {
    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        !matches!(self, Refusal::TooManySpans { .. } | Refusal::Malformed(_))
    }

    /// How long a client should wait before retrying.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::RateLimited { retry_after, .. } => *retry_after,
            _ => Duration::from_secs(1),
        }
    }
}

/// What happened to the spans of one accepted batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub ignored: u64,
    pub rejected: Vec<Rejection>,
    /// Spans over a per-run limit, with the reason (partial success).
    pub limited: Vec<String>,
    pub late: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct LiveRun {
    join: RunState,
    first_seen_unix_ns: Nanos,
    /// What a tick checks of every live run (restored runs count as just
    /// seen, and are checked in full until refreshed).
    #[serde(skip, default = "Due::restored")]
    due: Due,
    /// The first window / step slice not yet final (`None` before the first
    /// computation).
    next_window: Option<i64>,
    next_slice: Option<i64>,
    /// Gaps ending at or before this were exported.
    gaps_done_until: Nanos,
    /// End of the last final window: a span with an earlier timestamp is late.
    final_until: Nanos,
    windows: Vec<WindowReport>,
    late_spans: u64,
    /// The sweep line's state where it stopped (the last watermark); `None`
    /// before the first finalization.
    sweep: Option<SweepState>,
    /// The swept timeline from the frontier (the start of the first window
    /// or step slice not final) to where the sweep stopped.
    ledger: Option<Ledger>,
    /// The first this many requests of the run's open list are settled
    /// (swept and counted: see [`settled`]) unless merged into since (the
    /// run's touched list): the sweep and the count pass over them. Not
    /// kept in a checkpoint: a restored run looks at every open request.
    #[serde(skip)]
    settled: usize,
    /// The latest timestamp of each request of the settled prefix, in its
    /// order (as it was when settled or last merged into): retiring reads
    /// these, not the records.
    #[serde(skip)]
    settled_hi: Vec<Nanos>,
    /// The counted requests' counts and longest in flight by step slice
    /// (see [`SliceSums`]); `None` until built, and after a checkpoint.
    #[serde(skip)]
    sums: Option<SliceSums>,
}

/// A request's in-flight time and span, as the longest in flight is chosen
/// (the longest time wins, then the smallest span).
type Longest = (Nanos, std::cmp::Reverse<SpanRef>);

/// What `r` is chosen by as the longest in flight, if it was in flight.
fn longest_key(r: &Request, run_end: Nanos) -> Option<Longest> {
    in_flight_interval(r, run_end).map(|(lo, hi)| (hi - lo, std::cmp::Reverse(r.span)))
}

/// The most step slices [`SliceSums`] holds: beyond (a run's counted
/// requests that far apart) windows are counted from the requests.
const MAX_SUM_SLICES: usize = 1 << 16;

/// What the windows not final yet take of a run's counted requests, by the
/// step slice of their release from slice `from` on: their counts and the
/// longest in flight. A request is added once, as it is counted, so a
/// finalization sums a window's slices instead of walking every request it
/// holds. Kept while no counted request is merged into (the run's touched
/// list stays empty): otherwise rebuilt from the open requests.
#[derive(Clone, Debug, Default)]
struct SliceSums {
    from: i64,
    slices: VecDeque<(Counts, Option<Longest>)>,
}

impl SliceSums {
    /// Adds counted request `r`, released at `t`; `false` when its slice
    /// lies too far from the first.
    fn add(&mut self, r: &Request, t: Nanos, run_end: Nanos, step: Nanos) -> bool {
        let Ok(at) = usize::try_from(t.div_euclid(step).saturating_sub(self.from)) else {
            // Before the windows not final: counted in none of them.
            return true;
        };
        if at >= MAX_SUM_SLICES {
            return false;
        }
        if at >= self.slices.len() {
            self.slices.resize(at + 1, (Counts::default(), None));
        }
        let (counts, longest) = &mut self.slices[at];
        counts.add(r);
        *longest = (*longest).max(longest_key(r, run_end));
        true
    }

    /// Window `k` of `n` slices: the counts of the requests released in it
    /// and the one with the longest in-flight time.
    fn window(&self, k: i64, n: i64) -> (Counts, Option<SpanRef>) {
        let mut counts = Counts::default();
        let mut best: Option<Longest> = None;
        for j in k.max(self.from)..k + n {
            let Some((c, l)) = usize::try_from(j - self.from)
                .ok()
                .and_then(|at| self.slices.get(at))
            else {
                break;
            };
            counts.merge(c);
            best = best.max(*l);
        }
        (counts, best.map(|(_, std::cmp::Reverse(s))| s))
    }

    /// Forgets the slices before `k`.
    fn drop_before(&mut self, k: i64) {
        let n = usize::try_from(k.saturating_sub(self.from)).unwrap_or(0);
        self.slices.drain(..n.min(self.slices.len()));
        self.from = self.from.max(k);
    }
}

/// Bits of [`Request::swept`]: the sweep events already swept past.
const SWEPT_QUEUE_IN: u8 = 1;
const SWEPT_QUEUE_OUT: u8 = 2;
const SWEPT_ADMIT: u8 = 4;
const SWEPT_RELEASE: u8 = 8;
const SWEPT_CAP: u8 = 16;

/// The events of one interval of a request (`swept`: its bits) not taken
/// yet: its start and end, by their bits; one that started and no longer
/// exists ends at `from`.
#[inline(always)]
fn interval_events(
    swept: u8,
    from: Nanos,
    iv: Option<(Nanos, Nanos)>,
    bits: (u8, u8),
    evs: (Ev, Ev),
    stale_end: Ev,
    each: &mut impl FnMut(u8, Nanos, Ev),
) {
    match iv {
        // An end swept past means the start was too.
        Some(_) if swept & bits.1 != 0 => {}
        Some((a, b)) => {
            if swept & bits.0 == 0 {
                each(bits.0, a, evs.0);
            }
            each(bits.1, b, evs.1);
        }
        // An interval that started and no longer exists ends now.
        None if swept & bits.0 != 0 => each(bits.1, from, stale_end),
        None => {}
    }
}

/// Each sweep event of `r` the sweep has not taken yet, as its
/// [`Request::swept`] bit, its time and the event; an interval that started
/// and no longer exists ends at `from`.
fn unswept(r: &Request, run_end: Nanos, from: Nanos, mut each: impl FnMut(u8, Nanos, Ev)) {
    let swept = r.swept;
    interval_events(
        swept,
        from,
        queued_interval(r, run_end),
        (SWEPT_QUEUE_IN, SWEPT_QUEUE_OUT),
        (Ev::QueueIn, Ev::QueueOut),
        Ev::QueueOut,
        &mut each,
    );
    let flight = in_flight_interval(r, run_end);
    let slot = flight.is_some_and(|(_, b)| b < run_end);
    interval_events(
        swept,
        from,
        flight,
        (SWEPT_ADMIT, SWEPT_RELEASE),
        (Ev::Admit, Ev::Release { slot }),
        Ev::Release { slot: false },
        &mut each,
    );
    if r.cap != crate::model::NONE && swept & SWEPT_CAP == 0 {
        if let Some(t) = crate::join::cap_time(r) {
            let cap = Ev::Cap {
                order: r.cap_seq,
                value: r.cap,
            };
            each(SWEPT_CAP, t, cap);
        }
    }
}

/// Whether the sweep has taken everything of `r` and `r` is counted: until
/// it is merged into, [`open_events`] has nothing of it at any watermark
/// and the count has nothing either.
fn settled(r: &Request) -> bool {
    // A counted request has its release: its intervals are closed and do
    // not move with the run's end.
    let mut owed = false;
    r.counted() && {
        unswept(r, Nanos::MAX, Nanos::MIN, |_, _, _| owed = true);
        !owed
    }
}

/// The released requests a finalization counts: release time, span and
/// index.
type Counted = Vec<(Nanos, SpanRef, u32)>;

/// What [`open_events`] counts beside the events: the requests released
/// before `count_until` (every released one when `None`: the run ends) not
/// counted yet, marked counted and added to `counted`; and whether any
/// request it visits can be retired at `frontier` (see [`retirable`]).
struct Tally<'c> {
    count_until: Option<Nanos>,
    counted: &'c mut Counted,
    frontier: Nanos,
    retirable: bool,
}

/// The latest known timestamp of `r` (the greatest time without one: never
/// before a frontier).
#[inline(always)]
fn latest(r: &Request) -> Nanos {
    r.stamps.bounds().map_or(Nanos::MAX, |(_, hi)| hi)
}

/// Whether a live run is done with `r` once its frontier (the start of its
/// first window or slice not final) is `frontier`: counted, and wholly
/// before it, nothing of `r` is left to sweep, count or show.
#[inline(always)]
fn retirable(r: &Request, frontier: Nanos) -> bool {
    r.counted() && latest(r) < frontier
}

/// One pass over the requests a finalization may take something of: the
/// sweep events in `[from, until)` of the open requests `open` of a run,
/// each marked swept on its request (the sweep of the events follows at
/// once), and what `tally` counts. An event not swept yet but dated before
/// `from` (a late span) takes effect at `from`.
///
/// `steady`: the cap the sweep holds at `from` when no other value can
/// come from elsewhere (the run's loose caps). When every cap of these
/// requests has that value too, their cap events would change nothing:
/// they are marked swept without being swept (most runs have one cap).
fn open_events(
    open: &[u32],
    reqs: &mut crate::join::Requests,
    run_end: Nanos,
    from: Nanos,
    until: Nanos,
    steady: Option<u32>,
    tally: &mut Tally<'_>,
) -> Vec<(Nanos, Ev)> {
    // Up to five events a request: both ends of its two intervals and its cap.
    let mut events = Vec::with_capacity(open.len() * 5);
    let mut caps: Vec<(u32, Nanos, u32)> = Vec::with_capacity(open.len());
    for &i in open {
        let r = &mut reqs[i as usize];
        if let Some(t) = r.get(Stamp::Released) {
            if !r.counted() && tally.count_until.is_none_or(|c| t < c) {
                r.set_counted();
                tally.counted.push((t, r.span, i));
            }
        }
        tally.retirable |= retirable(r, tally.frontier);
        // Every event of a request is at one of its timestamps or at the
        // run's end (no earlier): one the sweep took nothing of that starts
        // at `until` or later has nothing before it.
        if r.swept == 0 && r.stamps.all_from(until) {
            continue;
        }
        let mut swept = 0;
        unswept(r, run_end, from, |bit, t, e| {
            let t = t.max(from);
            if t >= until {
                return;
            }
            swept |= bit;
            match e {
                Ev::Cap { order, value } => caps.push((order, t, value)),
                // A queue-out and an admission at one instant (a request's
                // own, the usual case, come one after the other) are one
                // hand-off event instead of two, as offline: at one instant
                // the counts commute.
                Ev::Admit if events.last() == Some(&(t, Ev::QueueOut)) => {
                    if let Some(last) = events.last_mut() {
                        last.1 = Ev::Handoff;
                    }
                }
                e => events.push((t, e)),
            }
        });
        r.swept |= swept;
    }
    // Their caps are marked swept though not swept when they change nothing.
    if !steady.is_some_and(|v| caps.iter().all(|c| c.2 == v)) {
        // At one instant the cap received last wins, whether a request or a
        // loose cap carried it: `order` is the receive order.
        events.extend(
            caps.into_iter()
                .map(|(order, t, value)| (t, Ev::Cap { order, value })),
        );
    }
    events
}

/// A finished run kept for the API: its report (with the windows it
/// exported) and its timeline.
///
/// A small run keeps its request records instead and makes the two when
/// first asked for: thousands of short runs can end in a second, and most
/// of their reports are never read (the API keeps the last
/// `keep_final_runs`), while a report read is made once and kept.
#[derive(Clone)]
struct FinalRun {
    made: std::sync::Arc<FinalReport>,
    at: Instant,
}

/// A finished run's report and timeline, made at most once.
struct FinalReport {
    made: std::sync::OnceLock<(RunReport, Drawing)>,
    /// What they are made from, until they are.
    pending: Mutex<Option<Pending>>,
}

/// A finished run's records, for its report.
struct Pending {
    id: String,
    join: RunState,
    windows: Vec<WindowReport>,
    late_spans: u64,
    window: WindowConfig,
}

impl FinalRun {
    fn made(report: RunReport, timeline: Drawing, at: Instant) -> FinalRun {
        FinalRun {
            made: std::sync::Arc::new(FinalReport {
                made: std::sync::OnceLock::from((report, timeline)),
                pending: Mutex::new(None),
            }),
            at,
        }
    }

    fn pending(p: Pending, at: Instant) -> FinalRun {
        FinalRun {
            made: std::sync::Arc::new(FinalReport {
                made: std::sync::OnceLock::new(),
                pending: Mutex::new(Some(p)),
            }),
            at,
        }
    }
}

impl FinalReport {
    /// The report and timeline, made now if they were not yet (the
    /// records are then released).
    fn get(&self) -> &(RunReport, Drawing) {
        self.made.get_or_init(|| {
            let pending = match self.pending.lock() {
                Ok(mut p) => p.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            pending.map(|p| p.make(None)).unwrap_or_default()
        })
    }
}

impl Pending {
    /// The report (with the exported windows) and timeline; `swept` as for
    /// [`crate::window::report_at_end`].
    fn make(self, swept: Option<(&[Segment], bool)>) -> (RunReport, Drawing) {
        let (mut report, timeline) =
            self.join
                .report_at_end(&self.id, &self.window, swept, TIMELINE_COLUMNS);
        report.windows = self.windows;
        report.late_spans = self.late_spans;
        (report, timeline)
    }
}

/// A finished run as a checkpoint holds it: its report and timeline.
#[derive(Serialize)]
struct StoredFinalRef<'a> {
    report: &'a RunReport,
    timeline: &'a Drawing,
}

#[derive(Deserialize)]
struct StoredFinal {
    report: RunReport,
    timeline: Drawing,
}

impl Serialize for FinalRun {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (report, timeline) = self.made.get();
        StoredFinalRef { report, timeline }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FinalRun {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = StoredFinal::deserialize(d)?;
        Ok(FinalRun::made(f.report, f.timeline, Instant::now()))
    }
}

/// Finished runs, oldest first, with their ids in a set (a run id can
/// finish again, and then replaces its earlier entry).
#[derive(Default)]
struct Finals {
    runs: VecDeque<(String, FinalRun)>,
    ids: std::collections::HashSet<String, FastHash>,
}

impl Finals {
    fn push(&mut self, id: String, run: FinalRun) {
        if !self.ids.insert(id.clone()) {
            self.runs.retain(|(i, _)| *i != id);
        }
        self.runs.push_back((id, run));
    }

    fn pop_front(&mut self) -> Option<(String, FinalRun)> {
        let (id, run) = self.runs.pop_front()?;
        self.ids.remove(&id);
        Some((id, run))
    }
}

impl std::ops::Deref for Finals {
    type Target = VecDeque<(String, FinalRun)>;
    fn deref(&self) -> &Self::Target {
        &self.runs
    }
}

/// The engine's state as a value: what a checkpoint writes and a restart
/// restores (live runs with their export progress, and the finished runs).
#[derive(Serialize, Deserialize)]
pub struct EngineSnapshot {
    runs: Vec<(String, LiveRun)>,
    finals: Vec<(String, FinalRun)>,
}

impl EngineSnapshot {
    /// A snapshot of an engine with no runs.
    pub fn empty() -> EngineSnapshot {
        EngineSnapshot {
            runs: Vec::new(),
            finals: Vec::new(),
        }
    }
}

/// The measures of one final step slice `[k·S, (k+1)·S)` ∩ active range.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub start: Nanos,
    pub end: Nanos,
    /// Gap seconds by cause (`None` without a cap).
    pub gap_by_cause: Option<[f64; 3]>,
    pub backlog_seconds: f64,
    pub active_seconds: f64,
}

/// A final window with the trace context of requests worth looking at.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalWindow {
    pub start: Nanos,
    pub end: Nanos,
    pub report: WindowReport,
    /// Requests waiting in the window's longest gap, else its slowest request.
    pub exemplars: Exemplars,
}

/// A final gap interval with the requests that waited in it.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalGap {
    pub start: Nanos,
    pub end: Nanos,
    pub max_queue_depth: u32,
    pub cause: Cause,
    pub waiting: Exemplars,
}

/// A released request, counted once when its step slice is final.
#[derive(Clone, Debug, PartialEq)]
pub struct DoneRequest {
    pub model: Option<std::sync::Arc<str>>,
    pub failed: bool,
    pub released: Nanos,
    pub output_tokens: u64,
    pub input_tokens: u64,
    pub retries: u64,
    pub span: SpanRef,
    /// Per-request metrics in seconds (or tokens/s), successful requests only.
    pub t_queue: Option<f64>,
    pub t_first_token: Option<f64>,
    pub t_stream: Option<f64>,
    pub t_in_flight: Option<f64>,
    pub stream_tps: Option<f64>,
    pub end_to_end_tps: Option<f64>,
    pub time_per_output_token: Option<f64>,
}

/// Everything that became final for one run in one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutput {
    pub run_id: String,
    /// Unix time the run was first seen: the start of its cumulative series.
    pub start_unix_ns: Nanos,
    pub windows: Vec<FinalWindow>,
    pub slices: Vec<Slice>,
    pub requests: Vec<DoneRequest>,
    pub gaps: Vec<FinalGap>,
    /// The run ended (idle timeout or shutdown) and its state was released.
    pub finalized: bool,
}

impl RunOutput {
    /// Nothing became final.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
            && self.slices.is_empty()
            && self.requests.is_empty()
            && self.gaps.is_empty()
            && !self.finalized
    }
}

/// Totals of one run for `GET /api/v1/runs`.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub state: RunPhase,
    pub totals: Stats,
}

/// What a tick reads of each live run to find the runs with work, kept
/// together (one cache line rather than fields spread over the run's
/// state) and ready to compare: when the run last had a span, its largest
/// timestamp, and the largest timestamp from which a window or step slice
/// of it is final ([`Engine::final_from`]).
#[derive(Clone, Copy)]
struct Due {
    last_span: Instant,
    max_stamp: Nanos,
    final_from: Nanos,
    /// In [`Engine::due`]: named to the next tick.
    queued: bool,
}

impl Due {
    /// Whether a window or step slice of the run is final.
    fn has_final(&self) -> bool {
        self.max_stamp >= self.final_from
    }

    /// Unknown yet: checked in full by every tick.
    fn restored() -> Due {
        Due {
            last_span: Instant::now(),
            max_stamp: Nanos::MAX,
            final_from: Nanos::MIN,
            queued: false,
        }
    }
}

impl LiveRun {
    fn new(first_seen_unix_ns: Nanos, last_span: Instant) -> LiveRun {
        LiveRun {
            join: RunState::default(),
            first_seen_unix_ns,
            due: Due {
                last_span,
                max_stamp: Nanos::MIN,
                final_from: Nanos::MAX,
                queued: false,
            },
            next_window: None,
            next_slice: None,
            gaps_done_until: i64::MIN,
            final_until: i64::MIN,
            windows: Vec::new(),
            late_spans: 0,
            sweep: None,
            ledger: None,
            settled: 0,
            settled_hi: Vec::new(),
            sums: None,
        }
    }
}

/// A live run, locked for writing.
type RunRef<'m> = dashmap::mapref::one::RefMut<'m, String, LiveRun>;

/// How many spans ahead a run's index lines are fetched while joining.
const PREFETCH_AHEAD: usize = 6;

/// Fetches the index lines of a run's first spans of a batch, before it is
/// joined, and returns the spans after them, which [`Engine::apply_group`]
/// fetches as it goes (a run has a few spans in most batches: they are not
/// walked again to find where fetching goes on).
fn warm_up<'s, 'a: 's, I: Iterator<Item = &'s Observation<'a>>>(run: &LiveRun, mut spans: I) -> I {
    for o in spans.by_ref().take(PREFETCH_AHEAD) {
        run.join.prefetch(o);
    }
    spans
}

/// A batch's observations grouped by run, runs in the order of their first
/// span and each run's spans in their order: a chain of item indices per run.
struct RunGroups<'b> {
    names: Vec<&'b str>,
    /// The first and last item of each run's chain.
    ends: Vec<(u32, u32)>,
    /// The next item of the same run; [`RunGroups::END`] after the last.
    next: Vec<u32>,
}

impl<'b> RunGroups<'b> {
    const END: u32 = u32::MAX;

    fn of(items: &'b [Extracted<'_>]) -> RunGroups<'b> {
        let mut groups = RunGroups {
            names: Vec::new(),
            ends: Vec::new(),
            next: vec![Self::END; items.len()],
        };
        // The runs found so far by their words (see `key_words`), in an
        // open-addressing table of group numbers at least twice the items.
        let bits = (2 * items.len())
            .max(16)
            .next_power_of_two()
            .trailing_zeros();
        let mut table = vec![Self::END; 1 << bits];
        let mut words: Vec<(u64, u64)> = Vec::new();
        let mut last: Option<((u64, u64), &str, u32)> = None;
        for (i, e) in items.iter().enumerate() {
            let Extracted::Observation(o) = e else {
                continue;
            };
            // A batch never holds u32::MAX items: a request is far smaller.
            let i = i as u32;
            let id: &'b str = &o.run_id;
            let w = crate::extract::key_words(id.as_bytes());
            // Words and length are the id up to 16 bytes; a longer one is
            // compared whole.
            let same = |(v, name): ((u64, u64), &str)| {
                v == w && name.len() == id.len() && (id.len() <= 16 || name == id)
            };
            let g = match last {
                // Spans of one run tend to come together.
                Some((v, name, g)) if same((v, name)) => g,
                _ => {
                    // The product's top bits, which every bit of the words
                    // reaches. Not its low bits, as the request index takes
                    // them from keys that are hashes already: ids such as
                    // `run-017` differ only in their high bytes, and a
                    // product's low bits depend only on the factors' low
                    // bits (every run would probe from one slot).
                    let h =
                        (w.0 ^ w.1.rotate_left(29) ^ id.len() as u64 ^ crate::key_index::seed())
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mask = table.len() - 1;
                    let mut at = (h >> (64 - bits)) as usize;
                    loop {
                        let g = table[at];
                        if g == Self::END {
                            let g = groups.names.len() as u32;
                            table[at] = g;
                            groups.names.push(id);
                            groups.ends.push((i, i));
                            words.push(w);
                            break g;
                        }
                        if same((words[g as usize], groups.names[g as usize])) {
                            break g;
                        }
                        at = (at + 1) & mask;
                    }
                }
            };
            last = Some((w, id, g));
            let end = &mut groups.ends[g as usize];
            if end.1 != i {
                groups.next[end.1 as usize] = i;
                end.1 = i;
            }
        }
        groups
    }

    /// Run `g`'s observations, in their order in `items`.
    fn spans<'s, 'a>(
        &'s self,
        g: usize,
        items: &'s [Extracted<'a>],
    ) -> impl Iterator<Item = &'s Observation<'a>> + Clone + 's {
        let mut i = self.ends[g].0;
        std::iter::from_fn(move || {
            while i != Self::END {
                let at = i as usize;
                i = self.next[at];
                if let Extracted::Observation(o) = &items[at] {
                    return Some(o);
                }
            }
            None
        })
    }
}

/// Engine counters, read by the self-telemetry.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub spans_accepted: AtomicU64,
    pub spans_ignored: AtomicU64,
    pub spans_rejected: AtomicU64,
    pub spans_refused: AtomicU64,
    pub spans_limited: AtomicU64,
    pub late_spans: AtomicU64,
    pub windows_final: AtomicU64,
    pub runs_finalized: AtomicU64,
}

/// The live engine: joined runs, their export progress and finished runs.
pub struct Engine {
    cfg: LiveConfig,
    runs: DashMap<String, LiveRun, FastHash>,
    /// The number of live runs, kept beside the map so that a batch reads
    /// it without locking every shard.
    live: AtomicUsize,
    finals: Mutex<Finals>,
    forgotten: Mutex<Vec<String>>,
    /// Runs that got a final window or slice from a batch, for the next
    /// tick (which otherwise looks at every live run only when one may
    /// have become idle: see [`Engine::tick_each`]).
    due: Mutex<Vec<String>>,
    /// When the next tick must look at every live run: the earliest a run
    /// can become idle, and at most [`FULL_CHECK_EVERY`] after the last
    /// look (`None`: at the next tick).
    next_full_check: Mutex<Option<Instant>>,
    pub counters: EngineCounters,
}

/// The longest a tick goes without looking at every live run.
const FULL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// At most this many trace references per exemplar list or gap span.
pub const MAX_EXEMPLARS: usize = 5;

/// Up to [`MAX_EXEMPLARS`] trace references, held inline: a run's end
/// makes a list for every window and gap, and none allocates. Reads as a
/// slice.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Exemplars {
    len: u8,
    spans: [SpanRef; MAX_EXEMPLARS],
}

impl Exemplars {
    /// The first [`MAX_EXEMPLARS`] of `spans`.
    pub fn first_of(spans: impl IntoIterator<Item = SpanRef>) -> Exemplars {
        let mut e = Exemplars::default();
        for (slot, s) in e.spans.iter_mut().zip(spans) {
            *slot = s;
            e.len += 1;
        }
        e
    }
}

impl std::ops::Deref for Exemplars {
    type Target = [SpanRef];
    fn deref(&self) -> &[SpanRef] {
        &self.spans[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Exemplars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Shards of the live-run map. A batch locks each of its runs' shards in
/// turn, and a batch of short runs names hundreds of runs: with many shards
/// two receivers seldom want the same one at once.
const RUN_SHARDS: usize = 128;

impl Engine {
    pub fn new(cfg: LiveConfig) -> Engine {
        Engine {
            cfg,
            runs: DashMap::with_hasher_and_shard_amount(FastHash::default(), RUN_SHARDS),
            live: AtomicUsize::new(0),
            finals: Mutex::new(Finals::default()),
            forgotten: Mutex::new(Vec::new()),
            due: Mutex::new(Vec::new()),
            next_full_check: Mutex::new(None),
            counters: EngineCounters::default(),
        }
    }

    /// A copy of the state (each run is locked only while it is copied).
    pub fn snapshot(&self) -> EngineSnapshot {
        let ids: Vec<String> = self.runs.iter().map(|e| e.key().clone()).collect();
        let runs = ids
            .into_iter()
            .filter_map(|id| {
                let r = self.runs.get(&id)?.clone();
                Some((id, r))
            })
            .collect();
        let finals = self
            .finals
            .lock()
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default();
        EngineSnapshot { runs, finals }
    }

    /// Restores a snapshot into an empty engine.
    pub fn restore(&self, snap: EngineSnapshot) {
        for (id, mut run) in snap.runs {
            run.join.reindex();
            run.due.max_stamp = run.join.max_stamp.unwrap_or(Nanos::MIN);
            run.due.final_from = self.final_from(&run);
            self.queue_if_due(&id, &mut run);
            if self.runs.insert(id, run).is_none() {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Restored runs are looked at by the next tick.
        if let Ok(mut n) = self.next_full_check.lock() {
            *n = None;
        }
        if let Ok(mut f) = self.finals.lock() {
            for (id, run) in snap.finals {
                f.push(id, run);
            }
        }
    }

    pub fn config(&self) -> &LiveConfig {
        &self.cfg
    }

    pub fn live_runs(&self) -> usize {
        self.runs.len()
    }

    /// Applies a batch of extracted spans. Refuses the whole batch, applying
    /// nothing, when it would start more runs than `max_runs` allows.
    ///
    /// # Errors
    /// [`Refusal`] when the batch cannot be taken now (retryable).
    pub fn ingest(&self, items: Vec<Extracted<'_>>, now: Now) -> Result<IngestOutcome, Refusal> {
        let batch = RunGroups::of(&items);
        let live = self.live.load(Ordering::Relaxed);
        // Only when the batch could start more runs than allowed are its
        // runs looked up one by one.
        if live + batch.names.len() > self.cfg.max_runs {
            let new_runs = batch
                .names
                .iter()
                .filter(|id| !self.runs.contains_key(**id))
                .count();
            if new_runs > 0 && live + new_runs > self.cfg.max_runs {
                self.counters
                    .spans_refused
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                return Err(Refusal::TooManyRuns {
                    live,
                    max: self.cfg.max_runs,
                });
            }
        }
        let mut out = IngestOutcome::default();
        // Each run is locked once for all its spans in the batch. A run
        // another thread holds (a receiver, or the tick finalizing it) is
        // taken after the others, so the receivers rarely wait on a lock.
        // A run is joined one group late: its lookups' index lines are
        // fetched while the group before it is joined. Only a lock that is
        // free is taken while another is held (`try_get_mut`); a run that
        // must be created, which waits for its shard, is created with none
        // held.
        let mut busy = Vec::new();
        let mut held = None;
        let join_held = |held: Option<(usize, RunRef<'_>, _)>, out: &mut IngestOutcome| {
            if let Some((h, mut run, ahead)) = held {
                let id = batch.names[h];
                self.apply_group(id, &mut run, batch.spans(h, &items), ahead, now, out);
            }
        };
        for (g, id) in batch.names.iter().enumerate() {
            match self.runs.try_get_mut(*id) {
                dashmap::try_result::TryResult::Present(run) => {
                    let ahead = warm_up(&run, batch.spans(g, &items));
                    join_held(held.replace((g, run, ahead)), &mut out);
                }
                dashmap::try_result::TryResult::Absent => {
                    join_held(held.take(), &mut out);
                    let mut run = self.run_entry(id, now);
                    let ahead = warm_up(&run, batch.spans(g, &items));
                    self.apply_group(id, &mut run, batch.spans(g, &items), ahead, now, &mut out)
                }
                dashmap::try_result::TryResult::Locked => busy.push(g),
            }
        }
        join_held(held.take(), &mut out);
        for g in busy {
            let id = batch.names[g];
            let mut run = self.run_entry(id, now);
            let ahead = warm_up(&run, batch.spans(g, &items));
            self.apply_group(id, &mut run, batch.spans(g, &items), ahead, now, &mut out);
        }
        // Read in place: moving each item out would copy it (184 bytes).
        for e in &items {
            match e {
                Extracted::Observation(_) => {}
                Extracted::NoRun => out.ignored += 1,
                Extracted::Rejected(r) => out.rejected.push(r.clone()),
            }
        }
        let c = &self.counters;
        c.spans_accepted.fetch_add(out.accepted, Ordering::Relaxed);
        c.spans_ignored.fetch_add(out.ignored, Ordering::Relaxed);
        c.spans_rejected
            .fetch_add(out.rejected.len() as u64, Ordering::Relaxed);
        c.spans_limited
            .fetch_add(out.limited.len() as u64, Ordering::Relaxed);
        c.late_spans.fetch_add(out.late, Ordering::Relaxed);
        Ok(out)
    }

    /// Run `id`, locked; started (and counted live) if it is new.
    fn run_entry(&self, id: &str, now: Now) -> RunRef<'_> {
        self.runs.entry(id.to_string()).or_insert_with(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            LiveRun::new(now.unix_ns, now.mono)
        })
    }

    /// Joins one run's spans of a batch, in their order; the caller has
    /// fetched the index lines of the first [`PREFETCH_AHEAD`], and `ahead`
    /// is the spans after them ([`warm_up`]).
    fn apply_group<'s, 'a: 's>(
        &self,
        id: &str,
        run: &mut LiveRun,
        spans: impl Iterator<Item = &'s Observation<'a>>,
        mut ahead: impl Iterator<Item = &'s Observation<'a>>,
        now: Now,
        out: &mut IngestOutcome,
    ) {
        run.due.last_span = now.mono;
        let min_before = run.join.min_stamp;
        // The index lines of the spans a few places ahead are fetched while
        // this one is joined: a new request's lookup is a cache miss.
        for o in spans {
            if let Some(a) = ahead.next() {
                run.join.prefetch(a);
            }
            if o.is_request()
                && run.join.len() >= self.cfg.max_requests_per_run
                && !run.join.contains(o.request)
            {
                out.limited.push(format!(
                    "span {}: run {:?} holds the maximum of {} requests (--max-requests-per-run)",
                    crate::model::hex(&o.span.span_id),
                    o.run_id,
                    self.cfg.max_requests_per_run
                ));
                continue;
            }
            out.accepted += 1;
            // Late: a timestamp before what is final already.
            if !o.stamps.all_from(run.final_until) {
                run.late_spans += 1;
                out.late += 1;
            }
            run.join.apply(o);
        }
        run.due.max_stamp = run.join.max_stamp.unwrap_or(Nanos::MIN);
        if run.join.min_stamp != min_before {
            run.due.final_from = self.final_from(run);
        }
        self.queue_if_due(id, run);
    }

    /// Names `run` to the next tick if something of it is final and it is
    /// not named yet.
    fn queue_if_due(&self, id: &str, run: &mut LiveRun) {
        if !run.due.queued && run.due.has_final() {
            if let Ok(mut due) = self.due.lock() {
                run.due.queued = true;
                due.push(id.to_string());
            }
        }
    }

    /// Exports what became final: windows whose end the watermark reached,
    /// and every remaining window of runs idle for `idle_timeout` (or of all
    /// runs when `finalize_all`, at shutdown). Finished runs leave the live set.
    pub fn tick(&self, now: Now, finalize_all: bool) -> Vec<RunOutput> {
        let mut outputs = Vec::new();
        self.tick_each(now, finalize_all, |o| outputs.push(o));
        outputs
    }

    /// [`Engine::tick`], handing each run's output to `each` as soon as it
    /// is made (so many runs ending at once are never all held in memory).
    pub fn tick_each(&self, now: Now, finalize_all: bool, mut each: impl FnMut(RunOutput)) {
        // Idle: the last span at or before `idle_before`.
        let idle_before = now.mono.checked_sub(self.cfg.idle_timeout);
        let idle = |r: &LiveRun| finalize_all || idle_before.is_some_and(|t| r.due.last_span <= t);
        // The runs a batch found due, and every run with something to do
        // when one may have become idle (or a second after the last look):
        // each named from its `due` alone, and checked exactly under its
        // lock below.
        let mut due: Vec<String> = self
            .due
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        let full = finalize_all
            || self
                .next_full_check
                .lock()
                .map_or(true, |t| t.is_none_or(|t| now.mono >= t));
        if full {
            // A run's last span only moves forward, and a new run's is now
            // or later: none becomes idle before the oldest one's plus the
            // idle timeout.
            let mut oldest = now.mono;
            for e in self.runs.iter() {
                let r = e.value();
                let is_idle = idle(r);
                if !is_idle {
                    oldest = oldest.min(r.due.last_span);
                }
                if is_idle || r.due.has_final() {
                    due.push(e.key().clone());
                }
            }
            // (Checked: an idle timeout of centuries must not overflow.)
            let soon = now.mono + FULL_CHECK_EVERY;
            let next = oldest
                .checked_add(self.cfg.idle_timeout)
                .map_or(soon, |t| t.min(soon));
            if let Ok(mut n) = self.next_full_check.lock() {
                *n = Some(next);
            }
        }
        for id in due {
            if let Some((_, run)) = self.runs.remove_if(&id, |_, r| idle(r)) {
                self.live.fetch_sub(1, Ordering::Relaxed);
                let (out, fin) = self.end_run(&id, run, now.mono);
                self.counters.runs_finalized.fetch_add(1, Ordering::Relaxed);
                self.remember(id, fin);
                each(out);
            } else if let Some(mut run) = self.runs.get_mut(&id) {
                run.due.queued = false;
                let Some(max) = run.join.max_stamp else {
                    continue;
                };
                let wm = max.saturating_sub(self.cfg.lateness);
                if self.has_new_final(&run, wm) {
                    let out = self.advance(&id, &mut run, Some(wm), None);
                    run.due.final_from = self.final_from(&run);
                    drop(run);
                    if !out.is_empty() {
                        each(out);
                    }
                }
            }
        }
        self.prune_finals(now.mono);
    }

    /// The watermark from which a window or step slice of `run` not yet
    /// final is: the end of the first of them. `Nanos::MAX` for a run
    /// without timestamps.
    fn final_at(&self, run: &LiveRun) -> Nanos {
        let w = &self.cfg.window;
        let Some(min) = run.join.min_stamp else {
            return Nanos::MAX;
        };
        let window = run
            .next_window
            .unwrap_or_else(|| windows_overlapping(min, min + 1, w).0);
        let slice = run.next_slice.unwrap_or_else(|| min.div_euclid(w.step));
        let window_end = window.saturating_mul(w.step).saturating_add(w.window);
        let slice_end = slice.saturating_add(1).saturating_mul(w.step);
        window_end.min(slice_end)
    }

    /// [`Engine::final_at`] as a largest timestamp (the watermark plus the
    /// lateness), for [`Due::final_from`].
    fn final_from(&self, run: &LiveRun) -> Nanos {
        self.final_at(run).saturating_add(self.cfg.lateness)
    }

    fn has_new_final(&self, run: &LiveRun, wm: Nanos) -> bool {
        self.final_at(run) <= wm
    }

    /// Takes out everything left of a run that ends, and what the API keeps
    /// of it: its whole report (with the windows it exported) and
    /// timeline, or for a small run the records they are made from.
    fn end_run(&self, id: &str, mut run: LiveRun, at: Instant) -> (RunOutput, FinalRun) {
        let when_asked = run.join.len() <= self.cfg.report_when_asked_up_to;
        // A run never finalized before is swept once here, over its whole
        // range, and a report made now is made from the same pieces.
        let fresh = !when_asked && run.sweep.is_none();
        let mut pieces = Vec::new();
        let out = self.advance(id, &mut run, None, fresh.then_some(&mut pieces));
        let has_cap = run.ledger.as_ref().is_some_and(|l| l.has_cap);
        let mut pending = Pending {
            id: id.to_string(),
            join: run.join,
            windows: run.windows,
            late_spans: run.late_spans,
            window: self.cfg.window,
        };
        if when_asked {
            pending.join.settle();
            return (out, FinalRun::pending(pending, at));
        }
        let (report, timeline) = pending.make(fresh.then_some((&pieces[..], has_cap)));
        (out, FinalRun::made(report, timeline, at))
    }

    /// Takes out what is final up to watermark `wm` (everything when `wm`
    /// is `None`, when the run ends).
    ///
    /// Incremental: it sweeps only the open requests, from the frontier
    /// where the last call left the sweep line, and retires the requests
    /// that end before the new frontier; so its cost follows the requests of
    /// the last window and the lateness, not the length of the run.
    fn advance(
        &self,
        id: &str,
        run: &mut LiveRun,
        wm: Option<Nanos>,
        mut pieces: Option<&mut Vec<Segment>>,
    ) -> RunOutput {
        let w = self.cfg.window;
        let mut out = RunOutput {
            run_id: id.to_string(),
            start_unix_ns: run.first_seen_unix_ns,
            windows: Vec::new(),
            slices: Vec::new(),
            requests: Vec::new(),
            gaps: Vec::new(),
            finalized: wm.is_none(),
        };
        let (Some(run_start), Some(run_end)) = (run.join.min_stamp, run.join.max_stamp) else {
            return out;
        };
        let (first, last) = windows_overlapping(run_start, run_end, &w);
        let (wlast, slast, cut) = match wm {
            // Final windows end at or before the watermark.
            Some(wm) => (
                (wm - w.window).div_euclid(w.step),
                wm.div_euclid(w.step) - 1,
                wm,
            ),
            None => (last, (run_end - 1).div_euclid(w.step), i64::MAX),
        };
        // At most `max_windows` windows and as many step slices become
        // final at once, the latest (the offline report keeps the latest
        // windows too): a span dated centuries away from the rest of its
        // run cannot make it sweep and emit every window between.
        let most = i64::try_from(w.max_windows.max(1)).unwrap_or(i64::MAX) - 1;
        let to = wlast.min(last);
        let from = (run.next_window.unwrap_or(first).max(first)).max(to.saturating_sub(most));
        let sfirst = (run.next_slice.unwrap_or(run_start.div_euclid(w.step)))
            .max(slast.saturating_sub(most));
        let next_window = if from <= to { to + 1 } else { from };
        let next_slice = if sfirst <= slast { slast + 1 } else { sfirst };
        // The new frontier: the start of the first window or slice not final.
        let frontier = next_window
            .saturating_mul(w.step)
            .min(next_slice.saturating_mul(w.step));

        // Sweep the new part: from where the sweep stopped to the watermark
        // (to the run's end when it ends).
        let until = wm.map_or(run_end, |wm| wm.min(run_end));
        let loose: Vec<(u32, crate::window::CapPoint)> = run.join.loose_points().collect();
        // The first sweep starts as the offline one does: every request is
        // still open, and the cap before the first observation is the first
        // one's value.
        let (init, first_sweep) = match run.sweep.take() {
            Some(s) => (s, false),
            None => (
                SweepState::initial(&run.join.cap_points(), run_start, &w),
                true,
            ),
        };
        let (open, reqs, touched) = run.join.open_mut();
        // A request counted before may have changed since.
        let merged = !touched.is_empty();
        let mut settled = run.settled.min(open.len());
        let settled_hi = &mut run.settled_hi;
        if settled_hi.len() != settled {
            *settled_hi = open[..settled]
                .iter()
                .map(|&i| latest(&reqs[i as usize]))
                .collect();
        }
        // What the sweep may take something of: the open requests after the
        // settled prefix, and those of the prefix merged into since, in
        // order of index (as `open`), their latest timestamps brought up to
        // date.
        let mut visit: Vec<u32> = Vec::with_capacity(touched.len() + open.len() - settled);
        for &i in touched.iter() {
            if let Ok(at) = open[..settled].binary_search(&i) {
                settled_hi[at] = latest(&reqs[i as usize]);
                visit.push(i);
            }
        }
        visit.sort_unstable();
        visit.dedup();
        visit.extend_from_slice(&open[settled..]);
        let sweep_from = init.at;
        // The end of the slices final after this call (before a run's
        // first final slice, its first slice's start: no release is earlier).
        let counted_until = next_slice.saturating_mul(w.step);
        // Released before the counted slices end, each once, found in the
        // same pass as the events (the settled prefix is counted already).
        let mut counted: Counted = Vec::with_capacity((open.len() - settled).min(4096));
        let steady = init
            .cap
            .filter(|&v| init.has_cap && loose.iter().all(|(_, c)| c.value == v));
        // The pass runs whether the sweep below does or not: when `until`
        // is not after `sweep_from` it takes no event (each is at
        // `sweep_from` or later and must be before `until`), and only counts.
        let mut tally = Tally {
            count_until: wm.map(|_| counted_until),
            counted: &mut counted,
            frontier,
            retirable: false,
        };
        let mut events = open_events(&visit, reqs, run_end, sweep_from, until, steady, &mut tally);
        // None of the requests after the settled prefix can be retired now
        // unless one of those visited can.
        let tail_stays = !tally.retirable;
        // A run of one instant is swept once, over nothing: its ledger
        // holds its windows (empty, but for its counts), as offline.
        if until > sweep_from || (until == sweep_from && run.ledger.is_none()) {
            if first_sweep {
                // Caps at the run's start are in the initial state.
                events.retain(|e| !matches!(e.1, Ev::Cap { .. }) || e.0 > sweep_from);
            }
            events.extend(
                loose
                    .iter()
                    .filter(|(_, c)| c.t > sweep_from || (!first_sweep && c.t == sweep_from))
                    .filter(|(_, c)| c.t < until)
                    .map(|&(order, c)| {
                        (
                            c.t,
                            Ev::Cap {
                                order,
                                value: c.value,
                            },
                        )
                    }),
            );
            if let Some(p) = pieces.as_mut() {
                // A piece per event, and one more: refill then stall.
                p.reserve(events.len() + 2);
            }
            let ledger = run.ledger.get_or_insert_with(Ledger::default);
            // The stats asked of it start at the first window or slice final now.
            let asked_from = from.min(sfirst).saturating_mul(w.step);
            let state = ledger.extend(init, events, until, asked_from, &w, |s| {
                if let Some(p) = pieces.as_mut() {
                    p.push(*s);
                }
            });
            run.sweep = Some(state);
        } else {
            run.sweep = Some(init);
        }
        let Some(p) = run.ledger.as_mut() else {
            return out;
        };
        // The windows' sums: with the requests counted now, or all counted
        // again after a merge into one of them.
        let sums_kept = match run.sums.as_mut() {
            Some(sums) if !merged => counted
                .iter()
                .all(|&(t, _, i)| sums.add(&reqs[i as usize], t, run_end, w.step)),
            _ => {
                let sums = run.sums.insert(SliceSums {
                    from,
                    slices: VecDeque::new(),
                });
                open.iter().all(|&i| {
                    let r = &reqs[i as usize];
                    match r.get(Stamp::Released) {
                        Some(t) if r.counted() => sums.add(r, t, run_end, w.step),
                        _ => true,
                    }
                })
            }
        };
        if !sums_kept {
            run.sums = None;
        }
        // The requests still open, in no particular order.
        let reqs = &*reqs;
        let open_reqs = || open.iter().map(|&i| &reqs[i as usize]);

        let gaps = p.gaps();
        // The gaps that end now (ends only grow: a run of them). A gap
        // reaching the end of the swept timeline may go on.
        let open_end = wm.map(|_| p.end);
        let new_gaps = {
            let first = gaps.partition_point(|g| g.end <= run.gaps_done_until);
            let last = gaps.partition_point(|g| g.end <= cut).max(first);
            let new = &gaps[first..last];
            match new.split_last() {
                Some((g, before)) if Some(g.end) == open_end => before,
                _ => new,
            }
        };
        // Exemplars come from the requests waiting in a gap: the new gaps
        // and the windows final now are all that is asked about.
        let mut asked = match (new_gaps.first(), new_gaps.last()) {
            (Some(f), Some(l)) => (f.start, l.end),
            _ => (Nanos::MAX, Nanos::MIN),
        };
        if from <= to {
            let (lo, hi) = windows_cover(from, to, &w);
            asked = (asked.0.min(lo), asked.1.max(hi));
        }
        let queued = Queued::of(open_reqs(), gaps, run_end, asked);
        if from <= to {
            let stats = |a, b, c: &Counts| p.stats(a, b, c);
            let (reports, longest) = match &run.sums {
                // A window is whole slices: the sum of theirs.
                Some(sums) if w.window % w.step == 0 => {
                    let (counts, longest): (Vec<Counts>, Vec<Option<SpanRef>>) = (from..=to)
                        .map(|k| sums.window(k, w.window / w.step))
                        .unzip();
                    (reports_of(stats, &counts, from, &w), longest)
                }
                _ => {
                    let open_reqs: Vec<&Request> = open_reqs().collect();
                    (
                        window_reports(stats, &open_reqs, from, to, &w),
                        longest_in_flight(&open_reqs, from, to, &w, run_end),
                    )
                }
            };
            out.windows.reserve_exact(reports.len());
            for ((k, rep), longest) in (from..=to).zip(reports).zip(longest) {
                let (ws, we) = (k * w.step, k * w.step + w.window);
                out.windows.push(FinalWindow {
                    start: ws,
                    end: we,
                    exemplars: window_exemplars(&queued, gaps, ws, we, longest),
                    report: rep,
                });
            }
            run.windows
                .extend(out.windows.iter().map(|f| f.report.clone()));
            run.final_until = run.final_until.max(to * w.step + w.window);
            self.counters
                .windows_final
                .fetch_add(out.windows.len() as u64, Ordering::Relaxed);
            run.next_window = Some(to + 1);
        }
        out.slices
            .reserve_exact(usize::try_from(slast - sfirst + 1).unwrap_or(0));
        for k in sfirst..=slast {
            let s = p.stats(k * w.step, (k + 1) * w.step, &Counts::default());
            out.slices.push(Slice {
                start: k * w.step,
                end: (k + 1) * w.step,
                gap_by_cause: s
                    .gap_seconds_by_cause
                    .map(|c| [c.stall, c.refill, c.under_cap]),
                backlog_seconds: s.backlog_seconds,
                active_seconds: s.effective_seconds,
            });
        }
        if sfirst <= slast {
            run.next_slice = Some(slast + 1);
        }
        if let Some(sums) = run.sums.as_mut() {
            sums.drop_before(next_window);
        }
        out.gaps.reserve_exact(new_gaps.len());
        for g in new_gaps {
            out.gaps.push(FinalGap {
                start: g.start,
                end: g.end,
                max_queue_depth: g.max_queue_depth,
                cause: g.cause(),
                waiting: queued.within(g.start, g.end),
            });
        }
        if let Some(g) = out.gaps.last() {
            run.gaps_done_until = g.end;
        }
        drop(queued);
        if wm.is_some() {
            // The timeline before the frontier is no longer needed (but
            // for a gap still going on there).
            p.drop_before(frontier);
        }
        while let Some(r) = open
            .get(settled)
            .map(|&i| &reqs[i as usize])
            .filter(|r| self::settled(r))
        {
            settled_hi.push(latest(r));
            settled += 1;
        }
        if wm.is_some() {
            // The requests done with are retired. Those of the settled prefix
            // (all counted) by their latest timestamps; the rest, only when
            // the pass over them found one done, else it is moved down whole.
            let mut kept = 0;
            for at in 0..settled {
                if settled_hi[at] >= frontier {
                    open[kept] = open[at];
                    settled_hi[kept] = settled_hi[at];
                    kept += 1;
                }
            }
            settled_hi.truncate(kept);
            if tail_stays {
                open.drain(kept..settled);
            } else {
                let mut end = kept;
                for at in settled..open.len() {
                    let i = open[at];
                    if !retirable(&reqs[i as usize], frontier) {
                        open[end] = i;
                        end += 1;
                    }
                }
                open.truncate(end);
            }
            settled = kept;
        }
        // Requests of the prefix still owed something stay touched.
        touched.retain(|&i| {
            !self::settled(&reqs[i as usize]) && open[..settled].binary_search(&i).is_ok()
        });
        run.settled = settled;
        // In release order, then by span, then as joined: small keys are
        // sorted, not the records.
        crate::window::sort_by_time_then(&mut counted, |c| c.0, |x, y| (x.1, x.2).cmp(&(y.1, y.2)));
        let reqs = run.join.requests();
        out.requests.extend(counted.into_iter().map(|(t, _, i)| {
            let r = &reqs[i as usize];
            done(r, run.join.model(r), t)
        }));
        out
    }

    fn remember(&self, id: String, run: FinalRun) {
        let Ok(mut finals) = self.finals.lock() else {
            return;
        };
        finals.push(id, run);
        while finals.len() > self.cfg.keep_final_runs {
            if let Some((gone, _)) = finals.pop_front() {
                self.note_forgotten(gone);
            }
        }
    }

    fn prune_finals(&self, now: Instant) {
        let Ok(mut finals) = self.finals.lock() else {
            return;
        };
        while finals
            .front()
            .is_some_and(|(_, f)| now.saturating_duration_since(f.at) >= self.cfg.keep_final_for)
        {
            if let Some((gone, _)) = finals.pop_front() {
                self.note_forgotten(gone);
            }
        }
    }

    fn note_forgotten(&self, id: String) {
        if !self.runs.contains_key(&id) {
            if let Ok(mut f) = self.forgotten.lock() {
                f.push(id);
            }
        }
    }

    /// Runs that left the API since the last call (and are not live again):
    /// their series can go from `/metrics`.
    pub fn take_forgotten(&self) -> Vec<String> {
        self.forgotten
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// The report of a run with the windows exported so far, and its phase.
    pub fn run_view(&self, id: &str) -> Option<(RunReport, RunPhase)> {
        if let Some(run) = self.runs.get(id) {
            // The windows are the ones exported so far, not computed again.
            let (mut rep, _) = run.join.report_at_end(id, &self.cfg.window, None, 0);
            rep.windows = run.windows.clone();
            rep.late_spans = run.late_spans;
            return Some((rep, RunPhase::Live));
        }
        let f = self.final_run(id)?;
        Some((f.get().0.clone(), RunPhase::Final))
    }

    /// [`Engine::run_view`] plus a timeline of the run, for the web page.
    pub fn run_page(&self, id: &str) -> Option<(RunReport, RunPhase, Vec<TimelinePoint>)> {
        if let Some(run) = self.runs.get(id) {
            let (mut rep, drawing) =
                run.join
                    .report_at_end(id, &self.cfg.window, None, TIMELINE_COLUMNS);
            rep.windows = run.windows.clone();
            rep.late_spans = run.late_spans;
            return Some((rep, RunPhase::Live, drawing.columns(TIMELINE_COLUMNS)));
        }
        let f = self.final_run(id)?;
        let (report, timeline) = f.get();
        Some((
            report.clone(),
            RunPhase::Final,
            timeline.columns(TIMELINE_COLUMNS),
        ))
    }

    /// A kept run's report, to be read outside the lock of the kept runs
    /// (it may be made on the way).
    fn final_run(&self, id: &str) -> Option<std::sync::Arc<FinalReport>> {
        let finals = self.finals.lock().ok()?;
        finals
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.made.clone())
    }

    /// Every live and kept run with its totals, open_reqs by `run_id`.
    pub fn list(&self) -> Vec<RunSummary> {
        let mut out: Vec<RunSummary> = Vec::new();
        let ids: Vec<String> = self.runs.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            // A live run's totals alone: no percentiles, gaps or windows.
            let totals = self.runs.get(&id).map(|r| r.join.totals(&self.cfg.window));
            if let Some(totals) = totals {
                out.push(RunSummary {
                    run_id: id,
                    state: RunPhase::Live,
                    totals,
                });
            } else if let Some(f) = self.final_run(&id) {
                out.push(RunSummary {
                    run_id: id,
                    state: RunPhase::Final,
                    totals: f.get().0.totals.clone(),
                });
            }
        }
        // The kept runs are taken under their lock, their totals read (and
        // reports made) after it.
        let kept: Vec<(String, std::sync::Arc<FinalReport>)> = match self.finals.lock() {
            Ok(finals) => {
                let live: std::collections::HashSet<&str, FastHash> =
                    out.iter().map(|s| s.run_id.as_str()).collect();
                finals
                    .iter()
                    .filter(|(id, _)| !live.contains(id.as_str()))
                    .map(|(id, f)| (id.clone(), f.made.clone()))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        out.extend(kept.into_iter().map(|(run_id, f)| RunSummary {
            run_id,
            state: RunPhase::Final,
            totals: f.get().0.totals.clone(),
        }));
        out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        out
    }
}

/// The metrics of request `r`, released at `released`. Inlined into the
/// one loop that collects them, so that each is written where it stays in
/// the list, not made aside and copied there.
#[inline(always)]
fn done(r: &Request, model: Option<&std::sync::Arc<str>>, released: Nanos) -> DoneRequest {
    let d = Derived::of(r);
    let ok = |x: Option<Result<Nanos, ()>>| {
        x.and_then(Result::ok)
            .filter(|_| !r.failed())
            .map(duration_secs)
    };
    let tokens = r.output_tokens().filter(|_| !r.failed());
    let rate = |t: Option<f64>| match (tokens, t) {
        (Some(n), Some(s)) if s > 0.0 => Some(n as f64 / s),
        _ => None,
    };
    let t_stream = ok(d.t_stream);
    DoneRequest {
        model: model.cloned(),
        failed: r.failed(),
        released,
        output_tokens: r.output_tokens().unwrap_or(0),
        input_tokens: r.input_tokens().unwrap_or(0),
        retries: r.retry_count().unwrap_or(0),
        span: r.span,
        t_queue: ok(d.t_queue),
        t_first_token: ok(d.t_first_token),
        t_stream,
        t_in_flight: ok(d.t_in_flight),
        stream_tps: rate(t_stream),
        end_to_end_tps: rate(ok(d.t_in_flight)),
        time_per_output_token: match (tokens, t_stream) {
            (Some(n), Some(s)) if n >= 2 => Some(s / (n - 1) as f64),
            _ => None,
        },
    }
}

/// The open requests waiting in some of `gaps`, earliest first (by
/// timestamps, then span): the exemplars of gaps are taken from it. Sorted
/// once for all the gaps and windows of one finalization.
struct Queued<'a> {
    /// Each request's queued interval, in order of its start.
    q: Vec<(Nanos, Nanos, &'a Request)>,
    /// `reach[i]`: the latest end among `q[..=i]` (so it never decreases).
    reach: Vec<Nanos>,
}

impl<'a> Queued<'a> {
    /// `gaps` in time order, as [`Profile::gaps`] gives them; only what
    /// overlaps `asked` (every range [`Queued::within`] will be asked
    /// about lies in it) is kept.
    fn of(
        reqs: impl Iterator<Item = &'a Request>,
        gaps: &[GapInterval],
        run_end: Nanos,
        asked: (Nanos, Nanos),
    ) -> Queued<'a> {
        let (lo, hi) = asked;
        // The gaps meeting `asked`: a request waiting in another gap only
        // is never asked about.
        let gaps = gaps_meeting(gaps, lo, hi);
        let mut q: Vec<(Nanos, Nanos, &Request)> = Vec::new();
        if let (Some(first), Some(last)) = (gaps.first(), gaps.last()) {
            // A request that waits outside the stretch from the first gap's
            // start to the last one's end waits in none of them.
            let (lo, hi) = (lo.max(first.start), hi.min(last.end));
            q.extend(reqs.filter_map(|r| {
                queued_interval(r, run_end)
                    .filter(|&(a, b)| a < hi && b > lo)
                    .map(|(a, b)| (a, b, r))
            }));
        }
        // The queued time is the first timestamp: sorting by it settles
        // almost every pair, and the whole key orders those it ties.
        crate::window::sort_by_time_then(
            &mut q,
            |x| x.0,
            |x, y| (x.2.stamps, x.2.span, x.2.key).cmp(&(y.2.stamps, y.2.span, y.2.key)),
        );
        // Only those waiting in a gap: in order of their start, the first
        // gap ending after it only moves forward.
        let mut g = 0;
        q.retain(|&(a, b, _)| {
            while gaps.get(g).is_some_and(|x| x.end <= a) {
                g += 1;
            }
            gaps.get(g).is_some_and(|x| x.start < b)
        });
        let reach = q
            .iter()
            .scan(Nanos::MIN, |m, &(_, b, _)| {
                *m = (*m).max(b);
                Some(*m)
            })
            .collect();
        Queued { q, reach }
    }

    /// The requests whose queued interval overlaps `[start, end)`, at most
    /// [`MAX_EXEMPLARS`], earliest first. The list is in order of the
    /// interval's start (the first timestamp), so the walk stops at `end`;
    /// it starts after the longest prefix whose intervals all end by
    /// `start` (found by bisection), so a finalization's gaps cost their
    /// exemplars, not the whole list each.
    fn within(&self, start: Nanos, end: Nanos) -> Exemplars {
        let from = self.reach.partition_point(|&b| b <= start);
        Exemplars::first_of(
            self.q[from..]
                .iter()
                .take_while(|&&(a, ..)| a < end)
                .filter(|&&(_, b, _)| b > start)
                .map(|&(.., r)| r.span),
        )
    }
}

/// The gaps that overlap `[lo, hi)`. Gaps are in time order and do not
/// overlap, so they are a run of `gaps`, found by bisection.
fn gaps_meeting(gaps: &[GapInterval], lo: Nanos, hi: Nanos) -> &[GapInterval] {
    let gaps = &gaps[gaps.partition_point(|g| g.end <= lo)..];
    &gaps[..gaps.partition_point(|g| g.start < hi)]
}

/// Exemplars of a window: the requests waiting in its longest gap, else
/// `longest`, the request with the longest in-flight time released in it.
fn window_exemplars(
    queued: &Queued,
    gaps: &[GapInterval],
    ws: Nanos,
    we: Nanos,
    longest: Option<SpanRef>,
) -> Exemplars {
    let gap = gaps_meeting(gaps, ws, we)
        .iter()
        .map(|g| (g.end.min(we) - g.start.max(ws), g))
        .filter(|(len, _)| *len > 0)
        .max_by_key(|(len, g)| (*len, std::cmp::Reverse(g.start)));
    if let Some((_, g)) = gap {
        let w = queued.within(g.start.max(ws), g.end.min(we));
        if !w.is_empty() {
            return w;
        }
    }
    Exemplars::first_of(longest)
}

/// For each window `first..=last`, the request released in it with the
/// longest in-flight time (ties: the smallest span): one pass over `reqs`.
fn longest_in_flight(
    reqs: &[&Request],
    first: i64,
    last: i64,
    cfg: &WindowConfig,
    run_end: Nanos,
) -> Vec<Option<SpanRef>> {
    let mut best: Vec<Option<Longest>> = vec![None; usize::try_from(last - first + 1).unwrap_or(0)];
    for r in reqs {
        let Some(t) = r.get(Stamp::Released) else {
            continue;
        };
        let (a, b) = windows_among(t, first, last, cfg);
        if a > b {
            continue;
        }
        let Some(key) = longest_key(r, run_end) else {
            continue;
        };
        for k in a..=b {
            let slot = &mut best[(k - first) as usize];
            *slot = (*slot).max(Some(key));
        }
    }
    best.into_iter()
        .map(|b| b.map(|(_, std::cmp::Reverse(s))| s))
        .collect()
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
