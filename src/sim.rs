//! A small discrete-event simulation of an LLM serving pipeline, for
//! `tpsgap simulate` and `tpsgap demo`.
//!
//! Requests arrive (Poisson), wait in a FIFO queue, and are admitted while a
//! slot is free; they stream tokens and are released. Three kinds of idle
//! time can be injected, each on its own:
//! - admission pauses (`stall`): nothing is admitted while slots are free;
//! - a handoff delay after every release (`refill`): a freed slot can take
//!   the next request only after the delay, as connection churn causes;
//! - a client-side concurrency limit below the cap (`under_cap`).
//!
//! The simulation records its own ground truth: every interval in which
//! requests waited while fewer than `cap` were in flight, labelled with the
//! injection that caused it. Pure: no I/O, no clock; seeded randomness.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::{nanos_to_secs, Cause, Nanos, Stamp, NANOS_PER_SEC};
use crate::testutil::{export, kv_int, kv_str, request_span};

/// A distribution of non-negative values.
#[derive(Clone, Debug, PartialEq)]
pub enum Dist {
    Const(f64),
    Uniform(f64, f64),
    Exp(f64),
    Normal(f64, f64),
}

impl std::str::FromStr for Dist {
    type Err = String;

    /// `5`, `const:5`, `uniform:1:9`, `exp:2.5` (mean) or `normal:10:2`.
    fn from_str(s: &str) -> Result<Dist, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<f64, String> {
            parts
                .get(i)
                .and_then(|p| p.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{s:?}: expected a non-negative number at part {}", i + 1))
        };
        let d = match (parts[0], parts.len()) {
            (_, 1) => Dist::Const(num(0)?),
            ("const", 2) => Dist::Const(num(1)?),
            ("uniform", 3) if num(1)? <= num(2)? => Dist::Uniform(num(1)?, num(2)?),
            ("exp", 2) => Dist::Exp(num(1)?),
            ("normal", 3) => Dist::Normal(num(1)?, num(2)?),
            _ => {
                return Err(format!(
                    "{s:?}: expected N, const:N, uniform:MIN:MAX, exp:MEAN or normal:MEAN:SD"
                ))
            }
        };
        Ok(d)
    }
}

impl Dist {
    /// A sample, never negative.
    pub fn sample(&self, rng: &mut StdRng) -> f64 {
        let v = match *self {
            Dist::Const(c) => c,
            Dist::Uniform(a, b) => a + (b - a) * rng.random::<f64>(),
            Dist::Exp(mean) => -mean * (1.0 - rng.random::<f64>()).ln(),
            Dist::Normal(mean, sd) => {
                // Box–Muller.
                let (u1, u2) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
        };
        v.max(0.0)
    }
}

/// How a request is reported as spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanMode {
    /// One span per request, sent at its release.
    #[default]
    One,
    /// A queue span (queued, admitted) sent at admission and a generate span
    /// (tokens, release) sent at release, joined by `request_id`.
    Two,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub run_id: String,
    /// Unix time of the first instant.
    pub start: Nanos,
    /// Requests arrive during `[start, start + duration)`.
    pub duration: Nanos,
    /// The server's concurrency cap (reported in the spans' `cap`).
    pub cap: u32,
    /// Injects `under_cap`: the client admits at most this many at once.
    pub client_limit: Option<u32>,
    /// Requests per second.
    pub arrival_rate: f64,
    /// Requests already waiting at the start (a backlog from the outset).
    pub initial_queue: u32,
    pub output_tokens: Dist,
    pub input_tokens: Dist,
    /// Seconds per output token after the first.
    pub per_token: Dist,
    /// Seconds from admission to the first token.
    pub ttft: Dist,
    /// Probability that a request fails (released with status ERROR at its
    /// first token, with no tokens delivered).
    pub failure_rate: f64,
    /// Probability that a request needed retries before it was queued.
    pub retry_rate: f64,
    pub retry_causes: Vec<String>,
    /// Injects `stall`: admission pauses `(offset from start, length)`.
    pub stalls: Vec<(Nanos, Nanos)>,
    /// Injects `refill`: a freed slot takes the next request after this delay.
    pub handoff: Nanos,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            run_id: "sim".to_string(),
            start: 1_800_000_000 * NANOS_PER_SEC,
            duration: 60 * NANOS_PER_SEC,
            cap: 8,
            client_limit: None,
            arrival_rate: 8.0,
            initial_queue: 0,
            output_tokens: Dist::Uniform(50.0, 400.0),
            input_tokens: Dist::Uniform(200.0, 800.0),
            per_token: Dist::Uniform(0.002, 0.004),
            ttft: Dist::Uniform(0.05, 0.2),
            failure_rate: 0.0,
            retry_rate: 0.0,
            retry_causes: vec![
                "timeout".into(),
                "rate_limited".into(),
                "connection_reset".into(),
            ],
            stalls: Vec::new(),
            handoff: 0,
            seed: 1,
        }
    }
}

/// One simulated request.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRequest {
    pub id: String,
    pub queued: Nanos,
    pub admitted: Nanos,
    /// First and last token (`None` for a failed request).
    pub tokens_at: Option<(Nanos, Nanos)>,
    pub released: Nanos,
    pub output_tokens: u64,
    pub input_tokens: u64,
    pub failed: bool,
    pub retries: u64,
    pub retry_cause: Option<String>,
}

/// An interval of the simulation's own gap set, labelled by the injection
/// that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TruthGap {
    pub start_unix_s: f64,
    pub end_unix_s: f64,
    pub seconds: f64,
    pub cause: String,
}

/// The ground truth of a simulated run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub run_id: String,
    pub start_unix_s: f64,
    pub end_unix_s: f64,
    pub cap: u32,
    pub requests: u64,
    pub gaps: Vec<TruthGap>,
    pub gap_seconds: f64,
    pub gap_seconds_by_cause: crate::report::ByCause,
}

/// A simulated run: its requests (in admission order) and its ground truth.
#[derive(Clone, Debug)]
pub struct SimRun {
    pub requests: Vec<SimRequest>,
    pub truth: GroundTruth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A request is released from slot `usize`.
    Release(usize),
    /// A slot finished its handoff, or a pause ended: try to admit.
    Wake,
    /// Request `usize` arrives.
    Arrival(usize),
}

struct Slot {
    busy: bool,
    ready_at: Nanos,
}

/// Runs the simulation.
pub fn simulate(cfg: &SimConfig) -> SimRun {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let secs = |s: f64| (s * 1e9).round() as Nanos;
    // Arrivals.
    let mut arrivals: Vec<Nanos> = (0..cfg.initial_queue).map(|_| cfg.start).collect();
    let mut t = cfg.start;
    if cfg.arrival_rate > 0.0 {
        loop {
            t += secs(-(1.0 - rng.random::<f64>()).ln() / cfg.arrival_rate).max(1);
            if t >= cfg.start + cfg.duration {
                break;
            }
            arrivals.push(t);
        }
    }
    let slots_n = cfg.client_limit.unwrap_or(cfg.cap).min(cfg.cap).max(1) as usize;
    let mut slots: Vec<Slot> = (0..slots_n)
        .map(|_| Slot {
            busy: false,
            ready_at: cfg.start,
        })
        .collect();
    let mut heap: BinaryHeap<Reverse<(Nanos, Event)>> = BinaryHeap::new();
    for (i, &a) in arrivals.iter().enumerate() {
        heap.push(Reverse((a, Event::Arrival(i))));
    }
    let pauses: Vec<(Nanos, Nanos)> = cfg
        .stalls
        .iter()
        .map(|&(off, len)| (cfg.start + off, cfg.start + off + len))
        .collect();
    for &(_, end) in &pauses {
        heap.push(Reverse((end, Event::Wake)));
    }
    let paused = |t: Nanos| pauses.iter().any(|&(a, b)| a <= t && t < b);

    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut requests: Vec<SimRequest> = Vec::with_capacity(arrivals.len());
    let mut in_flight = 0u32;
    // Ground truth as (time, state) changes.
    let mut truth: Vec<(Nanos, Option<Cause>)> = Vec::new();

    while let Some(Reverse((now, _))) = heap.peek().copied() {
        // Everything at this instant first, then admissions, then the state.
        while let Some(Reverse((t, ev))) = heap.peek().copied() {
            if t != now {
                break;
            }
            heap.pop();
            match ev {
                Event::Arrival(i) => {
                    queue.push_back(i);
                }
                Event::Release(s) => {
                    slots[s].busy = false;
                    slots[s].ready_at = now + cfg.handoff;
                    in_flight -= 1;
                    if cfg.handoff > 0 {
                        heap.push(Reverse((now + cfg.handoff, Event::Wake)));
                    }
                }
                Event::Wake => {}
            }
        }
        if !paused(now) {
            while !queue.is_empty() {
                let Some(s) = (0..slots_n).find(|&s| !slots[s].busy && slots[s].ready_at <= now)
                else {
                    break;
                };
                let Some(i) = queue.pop_front() else { break };
                let failed = rng.random::<f64>() < cfg.failure_rate;
                let tokens = cfg.output_tokens.sample(&mut rng).round().max(1.0) as u64;
                let first = now + secs(cfg.ttft.sample(&mut rng));
                let last = first + secs(cfg.per_token.sample(&mut rng) * (tokens - 1) as f64);
                let released = if failed { first } else { last };
                let retries = if rng.random::<f64>() < cfg.retry_rate {
                    1 + u64::from(rng.random::<f64>() < 0.25)
                } else {
                    0
                };
                let retry_cause = (retries > 0 && !cfg.retry_causes.is_empty())
                    .then(|| cfg.retry_causes[rng.random_range(0..cfg.retry_causes.len())].clone());
                requests.push(SimRequest {
                    id: format!("{}-{i:06}", cfg.run_id),
                    queued: arrivals[i],
                    admitted: now,
                    tokens_at: (!failed).then_some((first, last)),
                    released,
                    output_tokens: if failed { 0 } else { tokens },
                    input_tokens: cfg.input_tokens.sample(&mut rng).round() as u64,
                    failed,
                    retries,
                    retry_cause,
                });
                slots[s].busy = true;
                in_flight += 1;
                heap.push(Reverse((released, Event::Release(s))));
            }
        }
        let handoff_pending = slots.iter().any(|s| !s.busy && s.ready_at > now);
        let state = (!queue.is_empty() && in_flight < cfg.cap).then(|| {
            if paused(now) {
                Cause::Stall
            } else if handoff_pending {
                Cause::Refill
            } else {
                Cause::UnderCap
            }
        });
        if truth.last().map(|x| x.1) != Some(state) {
            truth.push((now, state));
        }
    }
    let first = requests.iter().map(|r| r.queued).min().unwrap_or(cfg.start);
    let last = requests
        .iter()
        .map(|r| r.released)
        .max()
        .unwrap_or(cfg.start);
    let mut gaps: Vec<TruthGap> = Vec::new();
    let mut by = [0i64; 3];
    for (k, &(t, state)) in truth.iter().enumerate() {
        let Some(c) = state else { continue };
        let end = truth.get(k + 1).map_or(last, |x| x.0);
        if end <= t {
            continue;
        }
        by[c as usize] += end - t;
        gaps.push(TruthGap {
            start_unix_s: nanos_to_secs(t),
            end_unix_s: nanos_to_secs(end),
            seconds: crate::model::duration_secs(end - t),
            cause: c.as_str().to_string(),
        });
    }
    let truth = GroundTruth {
        run_id: cfg.run_id.clone(),
        start_unix_s: nanos_to_secs(first),
        end_unix_s: nanos_to_secs(last),
        cap: cfg.cap,
        requests: requests.len() as u64,
        gap_seconds: crate::model::duration_secs(by.iter().sum()),
        gap_seconds_by_cause: crate::report::ByCause {
            stall: crate::model::duration_secs(by[0]),
            refill: crate::model::duration_secs(by[1]),
            under_cap: crate::model::duration_secs(by[2]),
        },
        gaps,
    };
    SimRun { requests, truth }
}

/// A span to send at `send_at`.
#[derive(Clone, Debug)]
pub struct TimedSpan {
    pub send_at: Nanos,
    pub span: Span,
}

/// The OTLP spans of a simulated run, in send order.
pub fn spans(run: &SimRun, cfg: &SimConfig, mode: SpanMode) -> Vec<TimedSpan> {
    let mut out = Vec::new();
    for (n, r) in run.requests.iter().enumerate() {
        let seq = (n as u64) * 2;
        let mut common = vec![
            kv_int("cap", i64::from(cfg.cap)),
            kv_str("gen_ai.request.model", "sim-model"),
        ];
        if r.retries > 0 {
            common.push(kv_int("retry_count", r.retries as i64));
            if let Some(c) = &r.retry_cause {
                common.push(kv_str("retry_cause", c));
            }
        }
        let mut done = vec![(Stamp::Released, r.released)];
        if let Some((f, l)) = r.tokens_at {
            done.push((Stamp::FirstToken, f));
            done.push((Stamp::LastToken, l));
        }
        let mut tokens = vec![kv_int("gen_ai.usage.input_tokens", r.input_tokens as i64)];
        if !r.failed {
            tokens.push(kv_int("gen_ai.usage.output_tokens", r.output_tokens as i64));
        }
        let fail = |s: &mut Span| {
            if r.failed {
                s.status = Some(Status {
                    code: StatusCode::Error as i32,
                    message: "simulated failure".to_string(),
                });
            }
        };
        match mode {
            SpanMode::One => {
                let mut stamps = vec![(Stamp::Queued, r.queued), (Stamp::Admitted, r.admitted)];
                stamps.extend(done);
                let mut attrs = common;
                attrs.extend(tokens);
                let mut s = request_span(&cfg.run_id, &r.id, &stamps, attrs, seq);
                fail(&mut s);
                out.push(TimedSpan {
                    send_at: r.released,
                    span: s,
                });
            }
            SpanMode::Two => {
                let mut q = request_span(
                    &cfg.run_id,
                    &r.id,
                    &[(Stamp::Queued, r.queued), (Stamp::Admitted, r.admitted)],
                    common,
                    seq,
                );
                q.name = "llm.queue".to_string();
                let mut g = request_span(&cfg.run_id, &r.id, &done, tokens, seq + 1);
                g.name = "llm.generate".to_string();
                g.trace_id = q.trace_id.clone();
                g.parent_span_id = q.span_id.clone();
                fail(&mut g);
                out.push(TimedSpan {
                    send_at: r.admitted,
                    span: q,
                });
                out.push(TimedSpan {
                    send_at: r.released,
                    span: g,
                });
            }
        }
    }
    out.sort_by_key(|s| s.send_at);
    out
}

/// Groups spans into export requests of at most `batch` spans.
pub fn batches(spans: &[TimedSpan], batch: usize) -> Vec<ExportTraceServiceRequest> {
    spans
        .chunks(batch.max(1))
        .map(|c| export(c.iter().map(|s| s.span.clone()).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = NANOS_PER_SEC;

    fn base() -> SimConfig {
        SimConfig {
            duration: 30 * SEC,
            cap: 4,
            arrival_rate: 20.0,
            output_tokens: Dist::Const(100.0),
            per_token: Dist::Const(0.002),
            ttft: Dist::Const(0.1),
            ..SimConfig::default()
        }
    }

    #[test]
    fn dist_parsing() {
        assert_eq!("5".parse::<Dist>(), Ok(Dist::Const(5.0)));
        assert_eq!("uniform:1:9".parse::<Dist>(), Ok(Dist::Uniform(1.0, 9.0)));
        assert_eq!("exp:2.5".parse::<Dist>(), Ok(Dist::Exp(2.5)));
        assert_eq!("normal:10:2".parse::<Dist>(), Ok(Dist::Normal(10.0, 2.0)));
        for bad in ["", "uniform:9:1", "exp", "gauss:1", "-1", "const:x"] {
            assert!(bad.parse::<Dist>().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_injection_there_is_no_gap() {
        let run = simulate(&base());
        assert!(run.requests.len() > 400);
        assert!(run.truth.gaps.is_empty(), "{:?}", &run.truth.gaps[..1]);
        // Saturated (20 req/s × 0.3 s > 4 slots): requests did wait.
        assert!(run.requests.iter().any(|r| r.admitted > r.queued));
        for r in &run.requests {
            assert!(r.queued <= r.admitted && r.admitted <= r.released);
        }
    }

    #[test]
    fn each_injection_produces_its_cause_only() {
        let stall = simulate(&SimConfig {
            stalls: vec![(10 * SEC, 3 * SEC)],
            ..base()
        });
        let t = &stall.truth.gap_seconds_by_cause;
        assert!(
            t.stall > 2.5 && t.refill == 0.0 && t.under_cap == 0.0,
            "{t:?}"
        );
        let refill = simulate(&SimConfig {
            handoff: 50_000_000,
            ..base()
        });
        let t = &refill.truth.gap_seconds_by_cause;
        assert!(
            t.refill > 1.0 && t.stall == 0.0 && t.under_cap == 0.0,
            "{t:?}"
        );
        let under = simulate(&SimConfig {
            client_limit: Some(2),
            ..base()
        });
        let t = &under.truth.gap_seconds_by_cause;
        assert!(
            t.under_cap > 10.0 && t.stall == 0.0 && t.refill == 0.0,
            "{t:?}"
        );
    }

    #[test]
    fn same_seed_same_run_and_spans_in_send_order() {
        let cfg = SimConfig {
            failure_rate: 0.1,
            retry_rate: 0.2,
            ..base()
        };
        let a = simulate(&cfg);
        let b = simulate(&cfg);
        assert_eq!(a.requests, b.requests);
        assert!(a.requests.iter().any(|r| r.failed));
        assert!(a
            .requests
            .iter()
            .any(|r| r.retries > 0 && r.retry_cause.is_some()));
        let two = spans(&a, &cfg, SpanMode::Two);
        assert_eq!(two.len(), a.requests.len() * 2);
        assert!(two.windows(2).all(|w| w[0].send_at <= w[1].send_at));
        assert_eq!(spans(&a, &cfg, SpanMode::One).len(), a.requests.len());
    }
}
