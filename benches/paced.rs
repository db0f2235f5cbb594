//! The live engine's cost per span as its tick runs at different paces.
//!
//! `serve` ticks every 200 ms. Fed in real time, each tick finds a few new
//! requests per run, and each run has a window and a step slice become
//! final every step (10 s); fed by `tpsgap bench` as fast as it goes (1.5M
//! spans/s), a tick finds 75 s of every run's requests at once. What a
//! finalization costs beyond its new requests (the requests a run still
//! holds for its open windows and the lateness: two minutes of them by
//! default) is paid once per step at real time, once per tick in the
//! fast load: the fast load hides it.
//!
//! The load is `testutil::synthetic_exports` (100 runs, two spans per
//! request, a request per run every 50 ms, cap 64: the queue empties
//! between most requests, so gaps are short and many), encoded, then read
//! in place, extracted and joined batch by batch (512 spans) as the
//! receivers do, with the engine's tick after every N batches at a clock
//! that does not move (no run goes idle). It prints the median over the
//! rounds of the join and of the ticks, in nanoseconds per span; the runs'
//! ends (a last tick ending every run) are not counted.
//!
//! `cargo bench --bench paced` (1M spans, 5 rounds); under `cargo test`
//! (no `--bench`) 20,000 spans once, only to prove it still works.
//! `PACED_EVERY=N` (1, 16 or 570, a pace of `PACES`) runs that pace
//! only, for a profiler.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tpsgap::extract::Extractor;
use tpsgap::lean::view::RequestView;
use tpsgap::live::{Engine, LiveConfig, Now};

/// The binary's allocator (`src/main.rs`), so these are the product's figures.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Ticks after every this many batches: as at real time (a batch per tick:
/// 2.6 requests per run, 130 ms of each run's time), faster, as fast as
/// `tpsgap bench` feeds `serve` (570 batches a tick), and only at the end.
const PACES: [(usize, &str); 4] = [
    (1, "every batch (real time)"),
    (16, "every 16 batches"),
    (570, "every 570 batches (as `tpsgap bench`)"),
    (usize::MAX, "none until the runs end"),
];

/// One pass over the load: nanoseconds per span joining and ticking.
fn pass(batches: &[Bytes], spans: usize, every: usize) -> (f64, f64) {
    let engine = Engine::new(LiveConfig::default());
    let x = Extractor::default();
    let now = Now::system(Instant::now());
    let (mut join, mut tick) = (Duration::ZERO, Duration::ZERO);
    for (n, b) in batches.iter().enumerate() {
        let t = Instant::now();
        let mut items = Vec::with_capacity(512);
        RequestView::parse_framing(b)
            .and_then(|v| x.request_view(v, &mut items))
            .expect("reads");
        engine.ingest(items, now).expect("accepted");
        join += t.elapsed();
        if (n + 1) % every == 0 {
            let t = Instant::now();
            engine.tick_each(now, false, drop);
            tick += t.elapsed();
        }
    }
    let per_span = |d: Duration| d.as_nanos() as f64 / spans as f64;
    (per_span(join), per_span(tick))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (spans, rounds) = if quick { (20_000, 1) } else { (1_000_000, 5) };
    let batches: Vec<Bytes> = tpsgap::testutil::synthetic_exports(spans, 100)
        .iter()
        .map(|r| Bytes::from(r.encode_to_vec()))
        .collect();
    println!("{spans} spans, 100 runs, median of {rounds} rounds (ns per span)");
    println!("| tick | join | ticks | both |");
    println!("|---|---|---|---|");
    let only: Option<usize> = std::env::var("PACED_EVERY").ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("PACED_EVERY={v}: not a number of batches"))
    });
    let finite: Vec<usize> = PACES
        .iter()
        .map(|p| p.0)
        .filter(|&n| n != usize::MAX)
        .collect();
    assert!(
        only.is_none_or(|n| finite.contains(&n)),
        "PACED_EVERY: one of {finite:?}"
    );
    let mut results = vec![(Vec::new(), Vec::new()); PACES.len()];
    // The paces alternate within each round, so that a busy moment of the
    // machine does not land on one pace only.
    for _ in 0..rounds {
        for (k, &(every, _)) in PACES.iter().enumerate() {
            if only.is_some_and(|n| n != every) {
                continue;
            }
            let (j, t) = pass(&batches, spans, every);
            results[k].0.push(j);
            results[k].1.push(t);
        }
    }
    for ((_, label), (j, t)) in PACES.iter().zip(results) {
        if j.is_empty() {
            continue;
        }
        let (j, t) = (median(j), median(t));
        println!("| {label} | {j:.0} | {t:.0} | {:.0} |", j + t);
        assert!(j > 0.0, "nothing was joined");
    }
}
