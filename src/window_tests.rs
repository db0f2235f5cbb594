//! Hand-computed sweep-line cases and a brute-force property test.

use proptest::prelude::*;

use super::*;
use crate::model::{Observation, NANOS_PER_SEC};
use crate::report::RunReport;

/// 2027-01-15T08:00:00Z, a multiple of every window step used here.
const T0: i64 = 1_800_000_000 * NANOS_PER_SEC;

fn at(s: f64) -> Nanos {
    T0 + (s * 1e9).round() as Nanos
}

/// A request with queued/admitted/released seconds after T0.
fn r(q: Option<f64>, a: Option<f64>, rel: Option<f64>) -> Request {
    crate::testutil::request([q.map(at), a.map(at), None, None, rel.map(at)])
}

fn caps(points: &[(f64, u32)]) -> Vec<CapPoint> {
    points
        .iter()
        .map(|&(t, value)| CapPoint { t: at(t), value })
        .collect()
}

fn cfg(window: f64, step: f64) -> WindowConfig {
    WindowConfig {
        window: (window * 1e9) as Nanos,
        step: (step * 1e9) as Nanos,
        ..WindowConfig::default()
    }
}

fn report(reqs: &[Request], cap_points: &[(f64, u32)], c: &WindowConfig) -> RunReport {
    let refs: Vec<&Request> = reqs.iter().collect();
    run_report("r", &refs, &caps(cap_points), c)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

fn by_cause(rep: &Stats) -> [f64; 3] {
    let c = rep.gap_seconds_by_cause.unwrap_or_default();
    [c.stall, c.refill, c.under_cap]
}

fn assert_causes(s: &Stats, want: [f64; 3]) {
    let got = by_cause(s);
    for i in 0..3 {
        assert!(
            (got[i] - want[i]).abs() < 1e-9,
            "by cause {got:?} != {want:?}"
        );
    }
}

#[test]
fn touching_intervals_release_and_admission_at_one_instant() {
    // Cap 1. A in flight [0,2); B queued [1,2), in flight [2,4). At 2 the
    // release comes before the admission, so no slot is ever pending and
    // no gap exists (the cap is always full while B waits).
    let reqs = [
        r(Some(0.0), Some(0.0), Some(2.0)),
        r(Some(1.0), Some(2.0), Some(4.0)),
    ];
    let rep = report(&reqs, &[(0.0, 1)], &cfg(10.0, 10.0));
    let t = &rep.totals;
    assert_eq!(t.effective_seconds, 4.0);
    assert_eq!(t.gap_seconds, Some(0.0));
    assert_eq!(t.backlog_seconds, 1.0);
    assert_eq!(t.mean_in_flight, Some(1.0));
    assert_eq!(t.mean_queue_depth, Some(0.25));
    assert_eq!(t.utilization, Some(1.0));
    assert!(rep.gaps.is_empty());
    assert_causes(t, [0.0, 0.0, 0.0]);
}

#[test]
fn zero_length_intervals_contribute_nothing_but_extend_the_range() {
    // A: queued, admitted, released all at 0 (zero-length), B in flight [0,4),
    // C queued and admitted at 4 (zero-length, the run's end).
    let reqs = [
        r(Some(0.0), Some(0.0), Some(0.0)),
        r(None, Some(0.0), Some(4.0)),
        r(Some(4.0), Some(4.0), None),
    ];
    let rep = report(
        &reqs,
        &[],
        &WindowConfig {
            default_cap: Some(2),
            ..cfg(10.0, 10.0)
        },
    );
    assert_eq!(rep.start_unix_s, Some(1_800_000_000.0));
    assert_eq!(rep.end_unix_s, Some(1_800_000_004.0));
    assert_eq!(rep.cap, Some(2));
    let t = &rep.totals;
    assert_eq!(t.mean_in_flight, Some(1.0));
    assert_eq!(t.mean_queue_depth, Some(0.0));
    assert_eq!(t.utilization, Some(0.5));
    assert_eq!(t.backlog_seconds, 0.0);
    assert_eq!(t.gap_seconds, Some(0.0));
    // Released requests: A (at 0) and B (at 4, the run's end).
    assert_eq!(t.requests, 2);
    assert_eq!(rep.requests.total, 3);
    assert_eq!(rep.latency.t_queue.count, 2);
    assert_eq!(rep.latency.t_queue.max, Some(0.0));
    assert_eq!(rep.latency.t_in_flight.count, 2);
}

#[test]
fn cap_change_inside_a_gap() {
    // A in flight [0,6); B queued [1,5). Cap 2 until 3, then 1: the gap is
    // [1,3) only, with no pending slot (nothing was released): under_cap.
    let reqs = [
        r(None, Some(0.0), Some(6.0)),
        r(Some(1.0), Some(5.0), Some(6.0)),
    ];
    let rep = report(&reqs, &[(0.0, 2), (3.0, 1)], &cfg(10.0, 10.0));
    let t = &rep.totals;
    assert_eq!(t.gap_seconds, Some(2.0));
    assert!(close(t.gap_fraction, 2.0 / 6.0));
    assert_eq!(rep.cap, Some(1), "the observation latest in time");
    // utilization: [0,1) 1/2, [1,3) 1/2, [3,5) 1/1, [5,6) 2/1 → (0.5+1+2+2)/6
    assert!(close(t.utilization, 5.5 / 6.0));
    assert_causes(t, [0.0, 0.0, 2.0]);
    assert_eq!(rep.gaps.len(), 1);
    assert_eq!(rep.gaps[0].start_unix_s, 1_800_000_001.0);
    assert_eq!(rep.gaps[0].end_unix_s, 1_800_000_003.0);
    assert_eq!(rep.gaps[0].cause, "under_cap");
}

#[test]
fn cap_before_first_observation_is_the_first_value() {
    // The only observation is at 5, but cap(t) before it is that value too.
    let reqs = [r(Some(0.0), Some(2.0), Some(8.0))];
    let rep = report(&reqs, &[(5.0, 1)], &cfg(10.0, 10.0));
    assert_eq!(rep.totals.gap_seconds, Some(2.0));
    assert_eq!(rep.totals.utilization, Some(0.75));
}

#[test]
fn never_admitted_and_never_released() {
    // A admitted at 0, never released, no last token: in flight to the end.
    // C queued at 2, never admitted nor released: queued to the end (6),
    // when D (released at 6) ends the run.
    let reqs = [
        r(None, Some(0.0), None),
        r(Some(2.0), None, None),
        r(Some(1.0), Some(1.0), Some(6.0)),
    ];
    let rep = report(
        &reqs,
        &[],
        &WindowConfig {
            default_cap: Some(3),
            ..cfg(10.0, 10.0)
        },
    );
    let t = &rep.totals;
    // in flight: A [0,6) + the third [1,6) = 11 → 11/6
    assert!(close(t.mean_in_flight, 11.0 / 6.0));
    assert!(close(t.mean_queue_depth, 4.0 / 6.0));
    // queue > 0 on [2,6) while in flight is 2 < 3: all gap, under_cap.
    assert_eq!(t.gap_seconds, Some(4.0));
    assert_causes(t, [0.0, 0.0, 4.0]);
    assert_eq!(rep.requests.incomplete, 1);
    assert_eq!(t.requests, 1);
}

#[test]
fn last_token_ends_flight_when_release_is_missing() {
    let mut a = r(None, Some(0.0), None);
    a.stamps.set(Stamp::LastToken, at(3.0));
    let b = r(Some(0.0), Some(5.0), Some(6.0));
    let rep = report(&[a, b], &[(0.0, 1)], &cfg(10.0, 10.0));
    // A's in-flight interval is [0,3) and frees a slot at 3; B waits until 5.
    assert_eq!(rep.totals.gap_seconds, Some(2.0));
    assert_causes(&rep.totals, [1.9, 0.1, 0.0]);
}

#[test]
fn an_interval_ending_before_it_starts_contributes_nothing() {
    // Admitted at 5 but released at 3: no in-flight contribution, no
    // fallback to the last token; t_in_flight is a negative interval.
    let mut a = r(Some(0.0), Some(5.0), Some(3.0));
    a.stamps.set(Stamp::LastToken, at(6.0));
    let rep = report(&[a], &[(0.0, 1)], &cfg(10.0, 10.0));
    assert_eq!(rep.totals.mean_in_flight, Some(0.0));
    assert_eq!(rep.invalid.negative_interval, 1);
    assert_eq!(rep.latency.t_in_flight.count, 0);
    assert_eq!(rep.latency.t_queue.count, 1);
}

#[test]
fn windows_partly_inside_the_run_and_sliding() {
    // The run covers [5, 25); one request in flight the whole time.
    let reqs = [r(None, Some(5.0), Some(25.0))];
    let c = WindowConfig {
        default_cap: Some(1),
        ..cfg(10.0, 10.0)
    };
    let rep = report(&reqs, &[], &c);
    let eff: Vec<f64> = rep
        .windows
        .iter()
        .map(|w| w.stats.effective_seconds)
        .collect();
    assert_eq!(eff, vec![5.0, 10.0, 5.0]);
    assert_eq!(rep.windows[0].start_unix_s, 1_800_000_000.0);
    assert_eq!(rep.windows[2].end_unix_s, 1_800_000_030.0);
    // Released at 25, in window [20,30) only.
    assert_eq!(rep.windows[2].stats.requests, 1);
    assert_eq!(rep.windows[1].stats.requests, 0);
    assert_eq!(rep.windows[1].stats.success_rate, None);
    assert_eq!(rep.windows[1].stats.retry_rate, None);
    assert_eq!(rep.windows[1].stats.system_tps, Some(0.0));

    // W = 60 s, S = 10 s: windows k = -5..=2 overlap [5, 25).
    let rep = report(
        &reqs,
        &[],
        &WindowConfig {
            default_cap: Some(1),
            ..cfg(60.0, 10.0)
        },
    );
    assert_eq!(rep.windows.len(), 8);
    assert_eq!(rep.windows[0].start_unix_s, 1_799_999_950.0);
    let eff: Vec<f64> = rep
        .windows
        .iter()
        .map(|w| w.stats.effective_seconds)
        .collect();
    assert_eq!(eff, vec![5.0, 15.0, 20.0, 20.0, 20.0, 20.0, 15.0, 5.0]);
    // The release at 25 falls in the six windows starting at -30 … 20.
    let reqs_per_window: Vec<u64> = rep.windows.iter().map(|w| w.stats.requests).collect();
    assert_eq!(reqs_per_window, vec![0, 0, 1, 1, 1, 1, 1, 1]);

    // W not a multiple of S: W = 15 s, S = 10 s → [0,15), [10,25), [20,35).
    let rep = report(
        &reqs,
        &[],
        &WindowConfig {
            default_cap: Some(1),
            ..cfg(15.0, 10.0)
        },
    );
    let eff: Vec<f64> = rep
        .windows
        .iter()
        .map(|w| w.stats.effective_seconds)
        .collect();
    assert_eq!(eff, vec![10.0, 15.0, 5.0]);
}

#[test]
fn no_cap_means_null_gap_metrics() {
    let reqs = [r(Some(0.0), Some(1.0), Some(2.0))];
    let rep = report(&reqs, &[], &cfg(10.0, 10.0));
    assert_eq!(rep.cap, None);
    assert_eq!(rep.totals.gap_seconds, None);
    assert_eq!(rep.totals.gap_fraction, None);
    assert_eq!(rep.totals.utilization, None);
    assert_eq!(rep.totals.gap_seconds_by_cause, None);
    assert_eq!(rep.totals.backlog_seconds, 1.0);
    assert!(rep.gaps.is_empty());
}

#[test]
fn derived_metrics_and_failures() {
    let mut a = r(Some(0.0), Some(1.0), Some(5.0));
    a.stamps.set(Stamp::FirstToken, at(1.5));
    a.stamps.set(Stamp::LastToken, at(4.5));
    a.merge(&Observation {
        output_tokens: Some(31),
        input_tokens: Some(100),
        ..Observation::default()
    });
    let mut f = r(Some(0.0), Some(2.0), Some(3.0));
    f.merge(&Observation {
        failed: true,
        output_tokens: Some(7),
        retry_count: Some(3),
        ..Observation::default()
    });
    let rep = report(&[a, f], &[], &cfg(10.0, 10.0));
    let l = &rep.latency;
    assert_eq!(l.t_first_token.mean, Some(0.5));
    assert_eq!(l.t_stream.mean, Some(3.0));
    assert!(close(l.stream_tps.mean, 31.0 / 3.0));
    assert_eq!(l.end_to_end_tps.mean, Some(31.0 / 4.0));
    assert_eq!(l.time_per_output_token.mean, Some(0.1));
    assert_eq!(l.t_queue.count, 1, "failed requests are not summarized");
    assert_eq!(rep.output_tokens, 38, "tokens spent include failures");
    assert_eq!(rep.totals.output_tokens, 31, "tokens delivered do not");
    assert_eq!(rep.input_tokens, 100);
    assert_eq!(rep.retries, 3);
    assert_eq!(rep.totals.success_rate, Some(0.5));
    assert_eq!(rep.totals.retry_rate, Some(1.5));
    assert_eq!(rep.totals.system_tps, Some(31.0 / 5.0));
    assert_eq!(rep.requests.failed, 1);
}

#[test]
fn single_token_and_zero_stream_time() {
    let mut a = r(None, Some(0.0), Some(2.0));
    a.stamps.set(Stamp::FirstToken, at(1.0));
    a.stamps.set(Stamp::LastToken, at(1.0));
    a.merge(&Observation {
        output_tokens: Some(1),
        ..Observation::default()
    });
    let rep = report(&[a], &[], &cfg(10.0, 10.0));
    let l = &rep.latency;
    assert_eq!(l.t_stream.count, 1, "a zero interval is valid");
    assert_eq!(l.stream_tps.count, 0, "no rate over zero seconds");
    assert_eq!(l.time_per_output_token.count, 0, "TPOT needs two tokens");
    assert_eq!(l.end_to_end_tps.mean, Some(0.5));
}

// ---- gap causes (SPEC §1 "Gap causes"), refill threshold T = 100 ms ----

#[test]
fn slot_pending_exactly_the_threshold_is_refill() {
    // Cap 1. A releases at 1; B, waiting since 0.5, is admitted at 1.1.
    let reqs = [
        r(None, Some(0.0), Some(1.0)),
        r(Some(0.5), Some(1.1), Some(2.0)),
    ];
    let rep = report(&reqs, &[(0.0, 1)], &cfg(10.0, 10.0));
    assert_causes(&rep.totals, [0.0, 0.1, 0.0]);
    assert_eq!(rep.gaps.len(), 1);
    assert_eq!(rep.gaps[0].cause, "refill");
    assert!((rep.gaps[0].seconds - 0.1).abs() < 1e-12);
}

#[test]
fn queue_emptying_drops_pending_slots() {
    // Cap 1. A in flight [0,1). B waits [0,2) and gives up unadmitted. The
    // slot A freed at 1 is dropped when the queue empties at 2, so D's wait
    // [3,4) is under_cap, not a stall.
    let reqs = [
        r(None, Some(0.0), Some(1.0)),
        r(Some(0.0), None, Some(2.0)),
        r(Some(3.0), Some(4.0), Some(5.0)),
    ];
    let rep = report(&reqs, &[(0.0, 1)], &cfg(10.0, 10.0));
    assert_causes(&rep.totals, [0.9, 0.1, 1.0]);
    let causes: Vec<&str> = rep.gaps.iter().map(|g| &*g.cause).collect();
    assert_eq!(causes, vec!["stall", "under_cap"]);
}

#[test]
fn cap_falling_trims_newest_slots_first() {
    // Cap 3, then 2 from t=3. A and B free slots at 1 and 2.95 while D waits
    // [0.5,5). At 3 only one slot fits: the newest (2.95) goes, the oldest
    // (1) stays, so [3,5) is a stall. Trimming the oldest instead would give
    // 0.05 s more refill.
    let reqs = [
        r(None, Some(0.0), Some(1.0)),
        r(None, Some(0.0), Some(2.95)),
        r(None, Some(0.0), Some(10.0)),
        r(Some(0.5), Some(5.0), Some(10.0)),
    ];
    let rep = report(&reqs, &[(0.0, 3), (3.0, 2)], &cfg(10.0, 10.0));
    assert_eq!(rep.totals.gap_seconds, Some(4.0));
    assert_causes(&rep.totals, [3.9, 0.1, 0.0]);
    assert_eq!(rep.gaps.len(), 1);
    assert_eq!(rep.gaps[0].cause, "stall");
}

#[test]
fn cap_rising_gives_under_cap() {
    let reqs = [
        r(None, Some(0.0), Some(10.0)),
        r(Some(1.0), Some(5.0), Some(10.0)),
    ];
    let rep = report(&reqs, &[(0.0, 1), (2.0, 2)], &cfg(10.0, 10.0));
    assert_eq!(rep.totals.gap_seconds, Some(3.0));
    assert_causes(&rep.totals, [0.0, 0.0, 3.0]);
}

#[test]
fn one_gap_with_several_causes_takes_the_dominant_one() {
    // Cap 3. A [0,1), B [0,10); C waits [0,1.05); D waits [0,3).
    // [0,1) under_cap, [1,1.05) refill (A's slot), [1.05,3) under_cap
    // (C took the slot): one gap [0,3), mostly under_cap.
    let reqs = [
        r(None, Some(0.0), Some(1.0)),
        r(None, Some(0.0), Some(10.0)),
        r(Some(0.0), Some(1.05), Some(10.0)),
        r(Some(0.0), Some(3.0), Some(10.0)),
    ];
    let rep = report(&reqs, &[(0.0, 3)], &cfg(10.0, 10.0));
    assert_eq!(rep.gaps.len(), 1);
    let g = &rep.gaps[0];
    assert_eq!(
        (g.start_unix_s, g.end_unix_s),
        (1_800_000_000.0, 1_800_000_003.0)
    );
    assert_eq!(g.max_queue_depth, 2);
    assert_eq!(g.cause, "under_cap");
    assert_causes(&rep.totals, [0.0, 0.05, 2.95]);
}

#[test]
fn causes_tie_goes_to_stall() {
    let g = GapInterval {
        start: 0,
        end: 4,
        max_queue_depth: 1,
        by_cause: [2, 2, 0],
    };
    assert_eq!(g.cause(), Cause::Stall);
    let g = GapInterval {
        by_cause: [0, 2, 2],
        ..g
    };
    assert_eq!(g.cause(), Cause::Refill);
}

#[test]
fn max_windows_keeps_the_latest() {
    let reqs = [r(None, Some(0.0), Some(100.0))];
    let c = WindowConfig {
        max_windows: 3,
        default_cap: Some(1),
        ..cfg(10.0, 10.0)
    };
    let rep = report(&reqs, &[], &c);
    assert_eq!(rep.windows.len(), 3);
    assert_eq!(rep.windows[0].start_unix_s, 1_800_000_070.0);
}

// ---- property test: the sweep line against a dense brute-force sampler ----

/// One random request on an integer grid (1 unit = 1 ns, times 0..60).
#[derive(Clone, Debug)]
struct Raw {
    t: [Option<i64>; 5],
}

fn raw_request() -> impl Strategy<Value = Raw> {
    prop::array::uniform5(prop::option::weighted(0.75, 0i64..60)).prop_map(|mut t| {
        // Mostly ordered lifecycles, sometimes not (negative intervals).
        if t[0].is_some_and(|x| x % 7 != 0) {
            let mut v: Vec<i64> = t.iter().flatten().copied().collect();
            v.sort();
            let mut it = v.into_iter();
            for x in t.iter_mut().flatten() {
                *x = it.next().unwrap_or(*x);
            }
        }
        Raw { t }
    })
}

/// Brute force: evaluate every unit interval [u, u+1) independently, with
/// the pending-slot queue replayed instant by instant.
struct Reference {
    gap: Vec<Option<Cause>>,
    queue: Vec<u32>,
    flight: Vec<u32>,
    cap: Vec<u32>,
    start: i64,
}

fn reference(reqs: &[Request], caps: &[(i64, u32)], threshold: i64) -> Option<Reference> {
    let (start, end) = active_range(reqs.iter())?;
    let qs: Vec<(i64, i64)> = reqs
        .iter()
        .filter_map(|r| queued_interval(r, end))
        .collect();
    let fs: Vec<(i64, i64)> = reqs
        .iter()
        .filter_map(|r| in_flight_interval(r, end))
        .collect();
    let first_t = caps.iter().map(|c| c.0).min().unwrap_or(0);
    let cap_at = |t: i64| -> u32 {
        let t = t.max(first_t);
        let mut v = 0;
        let mut best: Option<i64> = None;
        for &(ct, cv) in caps {
            if ct <= t && best.is_none_or(|b| ct >= b) {
                best = Some(ct);
                v = cv;
            }
        }
        v
    };
    let mut out = Reference {
        gap: vec![],
        queue: vec![],
        flight: vec![],
        cap: vec![],
        start,
    };
    let mut pending: Vec<i64> = Vec::new();
    for u in start..end {
        let releases = fs.iter().filter(|f| f.1 == u && f.1 < end).count();
        let admits = fs.iter().filter(|f| f.0 == u).count();
        pending.extend(std::iter::repeat_n(u, releases));
        let take = admits.min(pending.len());
        pending.drain(..take);
        let q = qs.iter().filter(|x| x.0 <= u && u < x.1).count() as u32;
        let f = fs.iter().filter(|x| x.0 <= u && u < x.1).count() as u32;
        let c = cap_at(u);
        if q == 0 {
            pending.clear();
        }
        pending.truncate(c.saturating_sub(f) as usize);
        let gap = (q > 0 && f < c).then(|| match pending.first() {
            None => Cause::UnderCap,
            Some(&s) if u - s >= threshold => Cause::Stall,
            Some(_) => Cause::Refill,
        });
        out.gap.push(gap);
        out.queue.push(q);
        out.flight.push(f);
        out.cap.push(c);
    }
    Some(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn sweep_matches_brute_force(
        raws in prop::collection::vec(raw_request(), 1..12),
        cap_pts in prop::collection::vec((0i64..60, 1u32..4), 1..4),
        threshold in 1i64..6,
        step in 1i64..15,
        extra in 0i64..20,
    ) {
        let reqs: Vec<Request> = raws.iter().map(|x| crate::testutil::request(x.t)).collect();
        let refs: Vec<&Request> = reqs.iter().collect();
        let cp: Vec<CapPoint> = cap_pts.iter().map(|&(t, value)| CapPoint { t, value }).collect();
        let c = WindowConfig { window: step + extra, step, refill_threshold: threshold, ..WindowConfig::default() };
        let rep = run_report("p", &refs, &cp, &c);
        let Some(b) = reference(&reqs, &cap_pts, threshold) else {
            prop_assert!(rep.windows.is_empty());
            return Ok(());
        };
        let n = b.gap.len() as i64;
        // Every window, and the totals, against sums over unit intervals.
        let mut ranges: Vec<(i64, i64, &Stats)> = rep.windows.iter().map(|w| {
            let lo = (w.start_unix_s * 1e9).round() as i64;
            (lo, lo + c.window, &w.stats)
        }).collect();
        ranges.push((b.start, b.start + n, &rep.totals));
        let (first, last) = windows_overlapping(b.start, b.start + n, &c);
        prop_assert_eq!(rep.windows.len() as i64, (last - first + 1).max(0));
        for (lo, hi, s) in ranges {
            let units: Vec<usize> = (lo.max(b.start)..hi.min(b.start + n)).map(|u| (u - b.start) as usize).collect();
            let eff = units.len() as f64;
            prop_assert!((s.effective_seconds - eff / 1e9).abs() < 1e-15);
            let count = |f: &dyn Fn(usize) -> bool| units.iter().filter(|&&u| f(u)).count() as f64 / 1e9;
            let gap = count(&|u| b.gap[u].is_some());
            prop_assert!((s.gap_seconds.unwrap_or(-1.0) - gap).abs() < 1e-15);
            prop_assert!((s.backlog_seconds - count(&|u| b.queue[u] > 0)).abs() < 1e-15);
            let bc = by_cause(s);
            for cause in Cause::ALL {
                let want = count(&|u| b.gap[u] == Some(cause));
                prop_assert!((bc[cause as usize] - want).abs() < 1e-15, "cause {:?}: {} != {}", cause, bc[cause as usize], want);
            }
            prop_assert!((bc.iter().sum::<f64>() - gap).abs() < 1e-15);
            if !units.is_empty() {
                let mean = |v: &Vec<u32>| units.iter().map(|&u| f64::from(v[u])).sum::<f64>() / eff;
                prop_assert!(close(s.mean_in_flight, mean(&b.flight)));
                prop_assert!(close(s.mean_queue_depth, mean(&b.queue)));
                let util = units.iter().map(|&u| f64::from(b.flight[u]) / f64::from(b.cap[u])).sum::<f64>() / eff;
                prop_assert!(close(s.utilization, util));
            }
        }
        // Gap intervals: maximal runs of gap units, with max queue depth.
        let mut want = Vec::new();
        let mut u = 0;
        while u < b.gap.len() {
            if b.gap[u].is_none() { u += 1; continue; }
            let s = u;
            while u < b.gap.len() && b.gap[u].is_some() { u += 1; }
            let mq = b.queue[s..u].iter().max().copied().unwrap_or(0);
            want.push((b.start + s as i64, b.start + u as i64, u64::from(mq)));
        }
        let got: Vec<(i64, i64, u64)> = rep.gaps.iter().map(|g| ((g.start_unix_s * 1e9).round() as i64, (g.end_unix_s * 1e9).round() as i64, g.max_queue_depth)).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn timeline_columns_average_the_profile() {
    // Queue depth 1 over [0, 3), in flight 1 over [1, 4), cap 1 then 2 at 2.
    let reqs = [
        r(Some(0.0), Some(3.0), Some(4.0)),
        r(None, Some(1.0), Some(2.0)),
    ];
    let refs: Vec<&Request> = reqs.iter().collect();
    let c = cfg(10.0, 10.0);
    let p = Profile::build(&refs, &caps(&[(0.0, 1), (2.0, 2)]), at(0.0), at(4.0), &c);
    let tl = p.timeline(8);
    assert_eq!(tl.len(), 8);
    for col in &tl {
        let s = p.stats(col.start, col.end, &Counts::default());
        assert_eq!(Some(col.in_flight), s.mean_in_flight);
        assert_eq!(Some(col.queue_depth), s.mean_queue_depth);
    }
    let means: Vec<(f64, f64)> = tl.iter().map(|p| (p.in_flight, p.queue_depth)).collect();
    assert_eq!(
        means,
        [
            (0.0, 1.0),
            (0.0, 1.0),
            (1.0, 1.0),
            (1.0, 1.0),
            (0.0, 1.0),
            (0.0, 1.0),
            (1.0, 0.0),
            (1.0, 0.0)
        ]
    );
    let caps_at_mid: Vec<Option<u32>> = tl.iter().map(|p| p.cap).collect();
    assert_eq!(
        caps_at_mid,
        [
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(2),
            Some(2),
            Some(2),
            Some(2)
        ]
    );
}

/// `base` plus the top `bits` bits of `x`: times `bits` bits apart at most.
fn spread(base: Nanos, bits: u32, x: u64) -> Nanos {
    let off = if bits == 0 { 0 } else { x >> (64 - bits) };
    base.wrapping_add(off as i64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The radix sort of long event lists orders them as a stable sort by
    /// time does, over narrow and extreme time spreads alike.
    #[test]
    fn long_event_lists_sort_as_a_stable_sort_by_time(
        base in any::<i64>(),
        spread_bits in 0u32..64,
        picks in prop::collection::vec((any::<u64>(), 0u8..6), RADIX_FROM..RADIX_FROM + 3000),
    ) {
        let events: Vec<(Nanos, Ev)> = picks
            .iter()
            .map(|&(x, k)| {
                let t = spread(base, spread_bits, x);
                let e = match k {
                    0 => Ev::QueueIn,
                    1 => Ev::QueueOut,
                    2 => Ev::Admit,
                    3 => Ev::Release { slot: x & 1 == 0 },
                    4 => Ev::Handoff,
                    _ => Ev::Cap { order: (x >> 3) as u32, value: 1 },
                };
                (t, e)
            })
            .collect();
        let mut want = events.clone();
        want.sort_by_key(|e| e.0);
        let mut got = events;
        sort_by_time(&mut got);
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Short lists sort as a stable sort by time does: packed into words
    /// when their times span less than 2^52 ns, by comparison beyond.
    #[test]
    fn short_lists_sort_as_a_stable_sort_by_time(
        base in any::<i64>(),
        spread_bits in 0u32..64,
        picks in prop::collection::vec(any::<u64>(), 0..600),
    ) {
        let items: Vec<(Nanos, usize)> = picks
            .iter()
            .enumerate()
            .map(|(i, &x)| (spread(base, spread_bits, x), i))
            .collect();
        let mut want = items.clone();
        want.sort_by_key(|e| e.0);
        let mut got = items;
        sort_packed(&mut got, |e| e.0);
        prop_assert_eq!(got, want);
    }

    /// A sort by time, then each tie by the rest, orders as a sort by both.
    #[test]
    fn ties_are_ordered_by_the_rest(
        picks in prop::collection::vec((0i64..4, any::<u8>()), 0..200),
    ) {
        let mut want = picks.clone();
        want.sort();
        let mut got = picks;
        sort_by_time_then(&mut got, |e| e.0, |a, b| a.1.cmp(&b.1));
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// The requests' stable order, sorted first by their two leading
    /// timestamps, is the order by the whole key: requests that tie on those
    /// two (often, with times drawn from three values, some absent) are
    /// ordered by their later timestamps, span and key.
    #[test]
    fn stable_order_is_the_order_by_the_whole_key(
        picks in prop::collection::vec(
            (prop::array::uniform5(prop::option::of(0i64..3)), 0u8..3, 0u64..3),
            0..200,
        ),
    ) {
        let reqs: Vec<Request> = picks
            .iter()
            .map(|&(t, span, key)| {
                let mut r = crate::testutil::request(t);
                r.span.span_id[0] = span;
                r.key = key;
                r
            })
            .collect();
        let whole = |r: &Request| (r.stamps, r.span, r.key);
        let mut want: Vec<_> = reqs.iter().map(whole).collect();
        want.sort();
        let got: Vec<_> = crate::join::stable_order(reqs.iter().collect())
            .into_iter()
            .map(whole)
            .collect();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    /// Among a few windows or many, the windows holding an instant are
    /// those of the division formula, clipped to the windows asked about.
    #[test]
    fn windows_among_are_the_containing_ones_clipped(
        step in 1i64..50,
        steps_per_window in 1i64..8,
        extra in 0i64..50,
        first in -40i64..40,
        count in 0i64..20,
        at in -60i64..60,
        near_end in any::<bool>(),
        nudge in -1i64..=1,
    ) {
        let c = WindowConfig {
            window: step * steps_per_window + extra % step,
            step,
            ..WindowConfig::default()
        };
        // At, or one off, a window's start or end: where a bound is wrong.
        let t = at * step + if near_end { c.window } else { 0 } + nudge;
        let last = first + count - 1;
        let (a, b) = windows_containing(t, &c);
        let want: Vec<i64> = (a.max(first)..=b.min(last)).collect();
        // Checked against the definition too: k·step <= t < k·step + window.
        let by_definition: Vec<i64> = (first..=last)
            .filter(|&k| k * c.step <= t && t < k * c.step + c.window)
            .collect();
        prop_assert_eq!(&want, &by_definition);
        let (a, b) = windows_among(t, first, last, &c);
        prop_assert_eq!((a..=b).collect::<Vec<_>>(), want);
    }
}
