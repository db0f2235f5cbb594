//! Joins observations per `(run_id, request_id)`: a concurrent store of runs,
//! each a map of requests merged field by field.
//!
//! Merging is idempotent and order-independent (see [`Request::merge`]), so
//! the same span delivered twice changes nothing and spans of one request may
//! arrive in any order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::extract::Extracted;
use crate::model::{CapObservation, Nanos, Observation, Request, Stamp};
use crate::report::{Report, RunReport};
use crate::window::{compute_run, CapPoint, Profile, TimelinePoint, WindowConfig};

/// The joined state of one run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    pub requests: HashMap<String, Request>,
    /// Cap observations in receive order, without duplicates.
    caps: Vec<CapObservation>,
    cap_seen: HashSet<CapObservation>,
    /// The smallest and largest request timestamps seen (the live
    /// watermark follows the largest).
    pub min_stamp: Option<Nanos>,
    pub max_stamp: Option<Nanos>,
}

impl RunState {
    /// Merges one observation of this run.
    pub fn apply(&mut self, o: &Observation) {
        if o.is_request() {
            match self.requests.get_mut(&o.request_id) {
                Some(r) => r.merge(o),
                None => {
                    self.requests
                        .insert(o.request_id.clone(), Request::from_observation(o));
                }
            }
            if let Some((lo, hi)) = o.stamps.bounds() {
                self.min_stamp = Some(self.min_stamp.map_or(lo, |m| m.min(lo)));
                self.max_stamp = Some(self.max_stamp.map_or(hi, |m| m.max(hi)));
            }
        }
        if let Some(c) = o.cap_observation() {
            if self.cap_seen.insert(c.clone()) {
                self.caps.push(c);
            }
        }
    }

    /// Cap observations with their times resolved against the merged
    /// requests (SPEC §1: admitted_at, else queued_at, else released_at,
    /// else the span's start), in receive order.
    pub fn cap_points(&self) -> Vec<CapPoint> {
        self.caps
            .iter()
            .map(|c| {
                let r = c.request_id.as_ref().and_then(|id| self.requests.get(id));
                let t = r
                    .and_then(|r| {
                        r.get(Stamp::Admitted)
                            .or(r.get(Stamp::Queued))
                            .or(r.get(Stamp::Released))
                    })
                    .unwrap_or(c.span_start);
                CapPoint { t, value: c.value }
            })
            .collect()
    }

    /// The requests in a stable order (so float sums are reproducible).
    pub fn sorted_requests(&self) -> Vec<&Request> {
        let mut reqs: Vec<&Request> = self.requests.values().collect();
        reqs.sort_by_key(|r| (r.stamps.0, r.span));
        reqs
    }

    /// The run's report over everything joined so far.
    pub fn report(&self, run_id: &str, cfg: &WindowConfig) -> RunReport {
        self.compute(run_id, cfg).0
    }

    /// The report and the profile it was computed from.
    pub fn compute(&self, run_id: &str, cfg: &WindowConfig) -> (RunReport, Option<Profile>) {
        compute_run(run_id, &self.sorted_requests(), &self.cap_points(), cfg)
    }
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
    pub runs: DashMap<String, RunState>,
    pub counters: SpanCounters,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Applies one extraction result, counting what is not an observation.
    pub fn apply(&self, e: &Extracted) {
        match e {
            Extracted::Observation(o) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                self.runs.entry(o.run_id.clone()).or_default().apply(o);
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
