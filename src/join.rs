//! Joins observations per `(run_id, request_id)`: a concurrent store of runs,
//! each a map of requests merged field by field.
//!
//! Merging is idempotent and order-independent (see [`Request::merge`]), so
//! the same span delivered twice changes nothing and spans of one request may
//! arrive in any order.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::extract::Extracted;
use crate::key_index::KeyIndex;
use crate::model::{CapObservation, Nanos, Observation, Request, RequestKey, Stamp, NONE};
use crate::report::{Report, RunReport, Stats};
use crate::window::{
    compute_run, report_at_end, run_totals, CapPoint, Drawing, Profile, Segment, TimelinePoint,
    WindowConfig,
};

/// A fast hasher for maps whose keys are already hashes or short ids.
pub type FastHash = foldhash::fast::FixedState;

/// The joined state of one run: compact request records in a vector, found
/// through their 64-bit keys, and the run's model names interned.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    requests: Requests,
    #[serde(skip)]
    index: KeyIndex,
    /// Model names; requests hold an index. Shared with the requests'
    /// output ([`crate::live::DoneRequest`]), which takes no copy.
    models: Vec<std::sync::Arc<str>>,
    /// Cap observations of spans that were not request observations, in
    /// receive order, without duplicates.
    loose_caps: Vec<CapObservation>,
    /// The loose caps' `(value, request, span_start)`, to drop duplicates.
    #[serde(skip)]
    loose_seen: HashSet<(u32, Option<RequestKey>, Nanos), FastHash>,
    /// Receive order of cap observations.
    cap_seq: u32,
    /// Requests a live run has not retired yet (indices, see `live`), in
    /// join order (so in order of index).
    open: Vec<u32>,
    /// Requests merged into after the live sweep took something of them or
    /// counted them (indices, in merge order, repeats possible): the live
    /// engine looks at them again though they lie in its settled prefix of
    /// `open` (see `live`). Never set offline.
    #[serde(skip)]
    touched: Vec<u32>,
    /// The smallest and largest request timestamps seen (the live
    /// watermark follows the largest).
    pub min_stamp: Option<Nanos>,
    pub max_stamp: Option<Nanos>,
}

impl RunState {
    /// Asks for the cache line where `o`'s request is looked up, ahead of
    /// [`RunState::apply`] (see [`KeyIndex::prefetch`]).
    #[inline(always)]
    pub fn prefetch(&self, o: &Observation<'_>) {
        self.index.prefetch(o.request);
    }

    /// Merges one observation of this run.
    pub fn apply(&mut self, o: &Observation<'_>) {
        if o.is_request() {
            let next = self.requests.len() as u32;
            let (i, new) = self.index.get_or_insert(o.request, next);
            if new {
                self.open.push(i);
                self.requests.push(Request::from_observation(o));
            }
            let model = o.model.map(|m| self.model_id(m));
            let models = &self.models;
            let held = self.requests.len();
            let r = &mut self.requests[i as usize];
            if !new && (r.swept != 0 || r.counted()) {
                self.touched.push(i);
                // Repeats (a span sent again and again while the run's
                // watermark stands still) are dropped as they pile up: the
                // list stays within twice the run's requests.
                if self.touched.len() > 64 && self.touched.len() > 2 * held {
                    self.touched.sort_unstable();
                    self.touched.dedup();
                }
            }
            if !new {
                r.merge(o);
            }
            // The smallest model name wins (order-independent).
            if let Some(m) = model {
                if r.model == NONE
                    || (m != r.model && models[m as usize] < models[r.model as usize])
                {
                    r.model = m;
                }
            }
            let timed = |x: &crate::model::Stamps| {
                [Stamp::Admitted, Stamp::Queued, Stamp::Released]
                    .iter()
                    .any(|s| x.get(*s).is_some())
            };
            let cap_on_request = o.cap.filter(|_| timed(&r.stamps));
            let loose = o.cap.filter(|_| !timed(&r.stamps));
            if let Some(c) = cap_on_request {
                if r.cap != c {
                    r.cap = c;
                    r.cap_seq = self.cap_seq;
                    self.cap_seq = self.cap_seq.wrapping_add(1);
                }
            }
            if let Some((lo, hi)) = o.stamps.bounds() {
                self.min_stamp = Some(self.min_stamp.map_or(lo, |m| m.min(lo)));
                self.max_stamp = Some(self.max_stamp.map_or(hi, |m| m.max(hi)));
            }
            if let Some(value) = loose {
                // No time on the request yet: resolved when the run is computed.
                self.loose_cap(value, Some(o.request), o.span_start);
            }
        } else if let Some(value) = o.cap {
            let request = o.explicit_request_id.then_some(o.request);
            self.loose_cap(value, request, o.span_start);
        }
    }

    fn loose_cap(&mut self, value: u32, request: Option<RequestKey>, span_start: Nanos) {
        if self.loose_seen.insert((value, request, span_start)) {
            self.loose_caps.push(CapObservation {
                value,
                request,
                span_start,
                seq: self.cap_seq,
            });
            self.cap_seq = self.cap_seq.wrapping_add(1);
        }
    }

    fn model_id(&mut self, m: &str) -> u32 {
        match self.models.iter().position(|x| &**x == m) {
            Some(i) => i as u32,
            None => {
                self.models.push(m.into());
                (self.models.len() - 1) as u32
            }
        }
    }

    /// The model name of a request.
    pub fn model(&self, r: &Request) -> Option<&std::sync::Arc<str>> {
        self.models.get(r.model as usize)
    }

    /// The number of requests joined.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Whether a request with this key was joined.
    pub fn contains(&self, key: RequestKey) -> bool {
        self.index.get(key).is_some()
    }

    /// The requests, in join order.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// The requests a live run has not retired, the requests, and those
    /// merged into after the live engine swept or counted them.
    pub fn open_mut(&mut self) -> (&mut Vec<u32>, &mut Requests, &mut Vec<u32>) {
        (&mut self.open, &mut self.requests, &mut self.touched)
    }

    /// The loose caps (cap observations not carried on a request) with
    /// their receive order, each at the time of the request it names if
    /// that has one, else at its span's start.
    pub fn loose_points(&self) -> impl Iterator<Item = (u32, CapPoint)> + '_ {
        self.loose_caps.iter().map(|c| {
            let r = c
                .request
                .and_then(|k| self.index.get(k))
                .map(|i| &self.requests[i as usize]);
            let t = r.and_then(cap_time).unwrap_or(c.span_start);
            (c.seq, CapPoint { t, value: c.value })
        })
    }

    /// Drops what only joining and the live sweep need (the loose caps'
    /// set, the open requests, and the key index unless a loose cap names a
    /// request), keeping what a report is made from.
    pub fn settle(&mut self) {
        self.loose_seen = HashSet::default();
        self.open = Vec::new();
        self.touched = Vec::new();
        if self.loose_caps.iter().all(|c| c.request.is_none()) {
            self.index = KeyIndex::default();
        }
    }

    /// Rebuilds the key index and the loose caps' set (after deserializing).
    pub fn reindex(&mut self) {
        self.index = self
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key, i as u32))
            .collect();
        self.loose_seen = self
            .loose_caps
            .iter()
            .map(|c| (c.value, c.request, c.span_start))
            .collect();
    }

    /// Cap observations with their times resolved against the merged
    /// requests (SPEC §1: admitted_at, else queued_at, else released_at,
    /// else the span's start), in receive order.
    pub fn cap_points(&self) -> Vec<CapPoint> {
        let mut points: Vec<(u32, CapPoint)> =
            Vec::with_capacity(self.requests.len() + self.loose_caps.len());
        points.extend(
            self.requests
                .iter()
                .filter(|r| r.cap != NONE)
                .filter_map(|r| {
                    let t = cap_time(r)?;
                    Some((r.cap_seq, CapPoint { t, value: r.cap }))
                }),
        );
        points.extend(self.loose_points());
        // Receive order: each cap has its own number.
        points.sort_unstable_by_key(|(seq, _)| *seq);
        points.into_iter().map(|(_, p)| p).collect()
    }

    /// The requests in a stable order (so float sums are reproducible):
    /// [`stable_order`].
    pub fn sorted_requests(&self) -> Vec<&Request> {
        stable_order(self.requests.iter().collect())
    }

    /// The run's report over everything joined so far.
    pub fn report(&self, run_id: &str, cfg: &WindowConfig) -> RunReport {
        self.compute(run_id, cfg).0
    }

    /// The report's totals alone ([`crate::window::run_totals`]). The
    /// requests need no sorting: the sweep takes their events in time order
    /// and the counts are integers.
    pub fn totals(&self, cfg: &WindowConfig) -> Stats {
        let reqs: Vec<&Request> = self.requests.iter().collect();
        run_totals(&reqs, &self.cap_points(), cfg)
    }

    /// The report without windows, and the timeline, of a run that ends
    /// ([`crate::window::report_at_end`]).
    pub fn report_at_end(
        &self,
        run_id: &str,
        cfg: &WindowConfig,
        swept: Option<(&[Segment], bool)>,
        columns: usize,
    ) -> (RunReport, Drawing) {
        report_at_end(
            run_id,
            &self.sorted_requests(),
            &self.cap_points(),
            cfg,
            swept,
            columns,
        )
    }

    /// The report and the profile it was computed from.
    pub fn compute(&self, run_id: &str, cfg: &WindowConfig) -> (RunReport, Option<Profile>) {
        compute_run(run_id, &self.sorted_requests(), &self.cap_points(), cfg)
    }
}

/// Requests per chunk of [`Requests`].
const CHUNK: usize = 1024;

/// Room a run's first chunk starts with: a run's memory follows its size
/// (a new run with more room cost 14 % more in `stages/engine`, where every
/// batch starts a hundred runs).
const FIRST_CHUNK: usize = 4;

/// Request records in chunks of 1,024: growing never copies them, and at
/// most one chunk is partly empty (a vector that doubles wastes up to half).
#[derive(Clone, Debug, Default)]
pub struct Requests {
    chunks: Vec<Vec<Request>>,
    len: usize,
}

impl Requests {
    pub fn push(&mut self, r: Request) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(r),
            _ => {
                // The first chunk grows as needed (small runs stay small).
                let cap = if self.chunks.is_empty() {
                    FIRST_CHUNK
                } else {
                    CHUNK
                };
                let mut c = Vec::with_capacity(cap);
                c.push(r);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Request> {
        self.chunks.iter().flatten()
    }
}

impl std::ops::Index<usize> for Requests {
    type Output = Request;
    fn index(&self, i: usize) -> &Request {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Requests {
    fn index_mut(&mut self, i: usize) -> &mut Request {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl serde::Serialize for Requests {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Requests {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Requests::default();
        for r in Vec::<Request>::deserialize(d)? {
            out.push(r);
        }
        Ok(out)
    }
}

/// When a cap observed on a request applies (SPEC §1): admitted_at, else
/// queued_at, else released_at.
pub fn cap_time(r: &Request) -> Option<Nanos> {
    r.get(Stamp::Admitted)
        .or(r.get(Stamp::Queued))
        .or(r.get(Stamp::Released))
}

/// Counters of spans that did not become observations.
#[derive(Debug, Default)]
pub struct SpanCounters {
    pub accepted: AtomicU64,
    pub ignored: AtomicU64,
    pub rejected: AtomicU64,
}

/// The concurrent join store: runs keyed by `run_id`.
#[derive(Debug, Default)]
pub struct Store {
    pub runs: DashMap<String, RunState, FastHash>,
    pub counters: SpanCounters,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Applies one extraction result, counting what is not an observation.
    pub fn apply(&self, e: &Extracted<'_>) {
        match e {
            Extracted::Observation(o) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                match self.runs.get_mut(&*o.run_id) {
                    Some(mut run) => run.apply(o),
                    None => self.runs.entry(o.run_id.to_string()).or_default().apply(o),
                }
            }
            Extracted::NoRun => {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            }
            Extracted::Rejected(_) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every run's report with a timeline of `columns` points, sorted by
    /// `run_id` (for the HTML report).
    pub fn pages(
        &self,
        cfg: &WindowConfig,
        columns: usize,
    ) -> Vec<(RunReport, Vec<TimelinePoint>)> {
        let mut ids: Vec<String> = self.runs.iter().map(|e| e.key().clone()).collect();
        ids.sort();
        ids.iter()
            .filter_map(|id| {
                let run = self.runs.get(id)?;
                let (rep, profile) = run.compute(id, cfg);
                let tl = profile.map(|p| p.timeline(columns)).unwrap_or_default();
                Some((rep, tl))
            })
            .collect()
    }

    /// The SPEC §4 report of every run, sorted by `run_id`.
    pub fn report(&self, cfg: &WindowConfig) -> Report {
        let mut ids: Vec<String> = self.runs.iter().map(|e| e.key().clone()).collect();
        ids.sort();
        let runs = ids
            .iter()
            .filter_map(|id| self.runs.get(id).map(|r| r.report(id, cfg)))
            .collect();
        Report {
            runs,
            ignored_spans: self.counters.ignored.load(Ordering::Relaxed),
            rejected_spans: self.counters.rejected.load(Ordering::Relaxed),
        }
    }
}

/// `reqs` sorted by `(stamps, span, key)`: first by the two leading
/// timestamps, read once into the list that is sorted, then by the whole key
/// among the requests those tie, found in that list (a long run's records
/// are not read again and again from all over memory).
pub fn stable_order(reqs: Vec<&Request>) -> Vec<&Request> {
    let mut order: Vec<([Nanos; 2], u32)> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.stamps.leading(), i as u32))
        .collect();
    order.sort_unstable();
    let mut sorted: Vec<&Request> = order.iter().map(|&(_, i)| reqs[i as usize]).collect();
    let mut at = 0;
    for tied in order.chunk_by(|a, b| a.0 == b.0) {
        let n = tied.len();
        if n > 1 {
            sorted[at..at + n].sort_unstable_by_key(|r| (r.stamps, r.span, r.key));
        }
        at += n;
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Observation, Stamps};

    /// A span merged again and again into a request the live sweep took
    /// something of is remembered for the next sweep once per twice the
    /// run's requests, not once per span.
    #[test]
    fn repeated_merges_into_a_swept_request_stay_bounded() {
        let mut stamps = Stamps::default();
        stamps.set(Stamp::Queued, 1_000);
        let o = Observation {
            request: 7,
            stamps,
            ..Observation::default()
        };
        let mut run = RunState::default();
        run.apply(&o);
        run.apply(&o);
        assert!(run.touched.is_empty(), "not swept yet: nothing to remember");
        run.open_mut().1[0].swept = 1;
        for _ in 0..10_000 {
            run.apply(&o);
        }
        assert!(run.touched.len() <= 65, "{} entries", run.touched.len());
        assert!(run.touched.contains(&0));
    }
}
