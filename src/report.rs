//! The SPEC §4 report: exactly its JSON keys, in its order. Undefined values
//! are `None` (JSON `null`), never NaN.

use serde::{Deserialize, Serialize};

/// The whole report of `tpsgap analyze`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub runs: Vec<RunReport>,
    pub ignored_spans: u64,
    pub rejected_spans: u64,
}

/// One run's report (also the body of `GET /api/v1/runs/{run_id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub start_unix_s: Option<f64>,
    pub end_unix_s: Option<f64>,
    pub cap: Option<u32>,
    pub requests: RequestCounts,
    pub output_tokens: u64,
    pub input_tokens: u64,
    pub retries: u64,
    pub totals: Stats,
    pub latency: Latency,
    pub windows: Vec<WindowReport>,
    pub gaps: Vec<Gap>,
    pub invalid: Invalid,
    pub late_spans: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub incomplete: u64,
}

/// The metrics of one window, or of the whole active range (the totals).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub effective_seconds: f64,
    pub gap_seconds: Option<f64>,
    pub gap_fraction: Option<f64>,
    pub backlog_seconds: f64,
    pub backlog_fraction: Option<f64>,
    pub mean_in_flight: Option<f64>,
    pub mean_queue_depth: Option<f64>,
    pub utilization: Option<f64>,
    pub system_tps: Option<f64>,
    pub output_tokens: u64,
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub success_rate: Option<f64>,
    pub retry_rate: Option<f64>,
    pub gap_seconds_by_cause: Option<ByCause>,
}

/// Gap seconds split by cause; sums to `gap_seconds`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ByCause {
    pub stall: f64,
    pub refill: f64,
    pub under_cap: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    pub start_unix_s: f64,
    pub end_unix_s: f64,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub start_unix_s: f64,
    pub end_unix_s: f64,
    pub seconds: f64,
    pub max_queue_depth: u64,
    /// `stall`, `refill` or `under_cap` (a name, not a copy, when made here).
    pub cause: std::borrow::Cow<'static, str>,
}

/// Latency summaries of successful requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub t_queue: Summary,
    pub t_first_token: Summary,
    pub t_stream: Summary,
    pub t_in_flight: Summary,
    pub stream_tps: Summary,
    pub end_to_end_tps: Summary,
    pub time_per_output_token: Summary,
}

impl Latency {
    /// Each summary with its display name (and unit), in report order.
    pub fn rows(&self) -> [(&'static str, &Summary); 7] {
        [
            ("t_queue (s)", &self.t_queue),
            ("t_first_token (s)", &self.t_first_token),
            ("t_stream (s)", &self.t_stream),
            ("t_in_flight (s)", &self.t_in_flight),
            ("stream_tps", &self.stream_tps),
            ("end_to_end_tps", &self.end_to_end_tps),
            ("time_per_output_token (s)", &self.time_per_output_token),
        ]
    }
}

/// Up to this many samples are sorted for their percentiles, more are
/// selected.
const SORT_UP_TO: usize = 64;

/// Count, mean and nearest-rank percentiles; `null`s when there is no sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    /// Summarizes samples (reordered in place). Percentiles are
    /// nearest-rank: the value at rank ⌈p·n/100⌉ of the sorted samples.
    ///
    /// Beyond 64 samples (`SORT_UP_TO`) each is found by selection, not a
    /// sort: p99 among all, then p90 among the values selection left below
    /// p99, then p50 below p90.
    /// Unstable selection is exact here: values equal under `total_cmp`
    /// are the same bits. The mean does not depend on the order.
    pub fn of(samples: &mut [f64]) -> Summary {
        let n = samples.len();
        if n == 0 {
            return Summary::default();
        }
        let index = |p: usize| (p * n).div_ceil(100).clamp(1, n) - 1;
        let (i50, i90, i99) = (index(50), index(90), index(99));
        if n <= SORT_UP_TO {
            // A few samples: a sort is cheaper than three selections.
            samples.sort_unstable_by(f64::total_cmp);
        } else {
            // Beyond 64 samples the three ranks differ: each selection
            // leaves the smaller values before its rank for the next one.
            samples.select_nth_unstable_by(i99, f64::total_cmp);
            samples[..i99].select_nth_unstable_by(i90, f64::total_cmp);
            samples[..i90].select_nth_unstable_by(i50, f64::total_cmp);
        }
        let (p50, p90, p99) = (samples[i50], samples[i90], samples[i99]);
        let max = samples[i99..]
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(p99);
        Summary {
            count: n as u64,
            mean: Some(accurate_mean(samples)),
            p50: Some(p50),
            p90: Some(p90),
            p99: Some(p99),
            max: Some(max),
        }
    }
}

/// The mean of the samples, as close to correctly rounded as double-double
/// arithmetic gets: a compensated (Neumaier) sum, divided with the
/// remainder folded back, so the result does not depend on sample order.
pub fn accurate_mean(xs: &[f64]) -> f64 {
    let (mut sum, mut c) = (0.0f64, 0.0f64);
    for &x in xs {
        let t = sum + x;
        c += if sum.abs() >= x.abs() {
            (sum - t) + x
        } else {
            (x - t) + sum
        };
        sum = t;
    }
    let n = xs.len() as f64;
    let q = sum / n;
    let r = (-q).mul_add(n, sum) + c;
    q + r / n
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid {
    pub negative_interval: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!(s.count, 10);
        assert_eq!(s.mean, Some(5.5));
        assert_eq!(s.p50, Some(5.0));
        assert_eq!(s.p90, Some(9.0));
        assert_eq!(s.p99, Some(10.0));
        assert_eq!(s.max, Some(10.0));
        assert_eq!(
            accurate_mean(&[5.2, 7.0, 7.0, 8.2, 8.2, 8.5, 13.5]),
            8.228571428571428
        );
        assert_eq!(
            accurate_mean(&[0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
            0.09285714285714286
        );
        assert_eq!(accurate_mean(&[1e16, 1.0, -1e16]), 1.0 / 3.0);
        let mut one = [4.0];
        assert_eq!(Summary::of(&mut one).p50, Some(4.0));
        let empty = serde_json::to_value(Summary::of(&mut [])).unwrap();
        assert_eq!(
            empty,
            serde_json::json!({"count": 0, "mean": null, "p50": null, "p90": null, "p99": null, "max": null})
        );
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Selection gives the sorted samples' nearest-rank values, and the
        /// mean of any order is the mean of the sorted samples.
        #[test]
        fn summary_by_selection_equals_summary_of_the_sorted_samples(
            xs in prop::collection::vec(
                prop_oneof![
                    0.0f64..1e3,
                    (0u32..20).prop_map(f64::from),
                    1e-9f64..1e-3,
                    1e6f64..1e12,
                ],
                1..300,
            ),
            seed in any::<u64>(),
        ) {
            let mut sorted = xs.clone();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len();
            let at = |p: usize| sorted[(p * n).div_ceil(100).max(1) - 1];
            // Another order of the same samples (a seeded shuffle).
            let mut shuffled = xs.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            for mut v in [xs.clone(), shuffled] {
                let s = Summary::of(&mut v);
                prop_assert_eq!(s.count, n as u64);
                prop_assert_eq!(s.p50, Some(at(50)));
                prop_assert_eq!(s.p90, Some(at(90)));
                prop_assert_eq!(s.p99, Some(at(99)));
                prop_assert_eq!(s.max, Some(sorted[n - 1]));
                prop_assert_eq!(s.mean, Some(accurate_mean(&sorted)));
            }
        }
    }
}
