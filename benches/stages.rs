//! Criterion benchmarks of the pipeline's stages on one 512-span export
//! request of the synthetic load (`testutil::synthetic_exports`: 100 runs,
//! two spans per request, a dozen attributes per span):
//!
//! - `decode/view` (the limit: the fastest decoder, the message checked and
//!   every span, attribute and event walked in place), `decode/lean` (prost,
//!   strings sliced from the buffer) and `decode/full` (the
//!   `opentelemetry-proto` types);
//! - `extract/view` and `extract/lean`: spans → observations;
//! - `join`: observations → the join store (read in place);
//! - `window`: a 5,000-request run's report (sweep line, windows, totals);
//! - `engine`: read in place, extract and ingest into the live engine;
//! - `runs_end/1000_runs_of_10`: the live engine ends 1,000 runs of ten
//!   requests each, never finalized before (their sweep, windows and
//!   output; their report and timeline are made when first asked for, and
//!   this does not ask): the fixed cost of a run;
//! - `floor/read_find_upsert`: the least any design must do per span (read
//!   in place, find the run, request id and timestamps, hash, merge into a
//!   table): a yardstick for the limit ratio.
//!
//! `cargo bench --bench stages`; under `cargo test` each runs once.

use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tpsgap::extract::{Extracted, Extractor};
use tpsgap::join::Store;
use tpsgap::live::{Engine, LiveConfig, Now};
use tpsgap::window::WindowConfig;

/// The binary's allocator (`src/main.rs`), so these are the product's figures.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn batch() -> (Bytes, usize) {
    let exports = tpsgap::testutil::synthetic_exports(4096, 100);
    let req = &exports[3];
    let spans = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    (Bytes::from(req.encode_to_vec()), spans)
}

fn stages(c: &mut Criterion) {
    let (bytes, spans) = batch();
    let x = Extractor::default();
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("decode/view", |b| {
        b.iter(|| {
            tpsgap::lean::view::RequestView::parse_framing(&bytes)
                .and_then(|v| v.visit_all())
                .expect("parses")
        })
    });
    g.bench_function("decode/lean", |b| {
        b.iter(|| tpsgap::lean::decode(bytes.clone()).expect("decodes"))
    });
    g.bench_function("decode/full", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(&bytes[..]).expect("decodes"))
    });
    let lean = tpsgap::lean::decode(bytes.clone()).expect("decodes");
    let view = tpsgap::lean::view::RequestView::parse_framing(&bytes).expect("parses");
    // In place, extraction also checks each span as it reads it.
    g.bench_function("extract/view", |b| {
        b.iter(|| {
            let mut items = Vec::with_capacity(spans);
            tpsgap::lean::view::RequestView::parse_framing(&bytes)
                .and_then(|v| x.request_view(v, &mut items))
                .expect("reads");
            items
                .iter()
                .filter(|e| matches!(e, Extracted::Observation(_)))
                .count()
        })
    });
    g.bench_function("extract/lean", |b| {
        b.iter(|| {
            let mut n = 0usize;
            x.request(&lean, |e| {
                n += usize::from(matches!(e, Extracted::Observation(_)))
            });
            n
        })
    });
    g.bench_function("join", |b| {
        b.iter_batched(
            Store::new,
            |store| {
                let mut items = Vec::with_capacity(spans);
                x.request_view(view, &mut items).expect("reads");
                for e in &items {
                    store.apply(e);
                }
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("engine", |b| {
        b.iter_batched(
            || Engine::new(LiveConfig::default()),
            |engine| {
                let mut items = Vec::with_capacity(spans);
                x.request_view(view, &mut items).expect("reads");
                let now = Now::system(Instant::now());
                engine.ingest(items, now).expect("accepted");
                engine
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // One run of 5,000 requests (10,000 spans).
    let store = Store::new();
    for req in tpsgap::testutil::synthetic_exports(10_000, 1) {
        let lean = tpsgap::lean::ExportTraceServiceRequest::from(req);
        x.request(&lean, |e| store.apply(&e));
    }
    let cfg = WindowConfig::default();
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(5_000));
    g.bench_function("run_report/5000_requests", |b| {
        b.iter(|| store.report(&cfg))
    });
    g.finish();
}

fn runs_end(c: &mut Criterion) {
    let x = Extractor::default();
    let exports: Vec<tpsgap::lean::ExportTraceServiceRequest> =
        tpsgap::testutil::synthetic_exports(20_000, 1_000)
            .into_iter()
            .map(Into::into)
            .collect();
    let mut g = c.benchmark_group("runs_end");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("1000_runs_of_10", |b| {
        b.iter_batched(
            || {
                let engine = Engine::new(LiveConfig::default());
                let now = Now::system(Instant::now());
                for req in &exports {
                    let mut items = Vec::new();
                    x.request(req, |e| items.push(e));
                    engine.ingest(items, now).expect("accepted");
                }
                engine
            },
            |engine| {
                // Each output is dropped once made, as `serve` does.
                let mut n = 0;
                engine.tick_each(Now::system(Instant::now()), true, |_| n += 1);
                assert_eq!(n, 1_000);
                engine
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The floor: the least any design must do per span of this load, with
/// the fastest reader. Each span is read in place (checked as the limit's
/// reader checks it); its run, request id and five timestamps are found by
/// comparing keys; the request id is hashed; and the request's stamps are
/// merged into an open-addressing table of its run (a fresh table per
/// pass, as every request of the load is new). Nothing else: no other
/// attribute parsed, no UTF-8 check, no span reference, no sweep, windows
/// or export. A yardstick for the limit ratio, not a design.
fn floor(c: &mut Criterion) {
    use tpsgap::lean::view::{RequestView, ValueView};
    const KEYS: [&[u8]; 7] = [
        b"run_id",
        b"request_id",
        b"queued_at",
        b"admitted_at",
        b"first_token_at",
        b"last_token_at",
        b"released_at",
    ];
    /// One run's requests: (key hash, stamps), open addressing.
    struct Table {
        slots: Vec<(u64, [i64; 5])>,
        len: usize,
    }
    impl Table {
        fn upsert(&mut self, h: u64, stamps: [i64; 5]) {
            if (self.len + 1) * 2 > self.slots.len() {
                let grown = vec![(0, [0; 5]); (self.slots.len() * 2).max(64)];
                let old = std::mem::replace(&mut self.slots, grown);
                self.len = 0;
                for (k, st) in old.into_iter().filter(|s| s.0 != 0) {
                    self.upsert(k, st);
                }
            }
            let mask = self.slots.len() - 1;
            let mut i = h as usize & mask;
            loop {
                let slot = &mut self.slots[i];
                if slot.0 == 0 {
                    *slot = (h, stamps);
                    self.len += 1;
                    return;
                }
                if slot.0 == h {
                    for (a, b) in slot.1.iter_mut().zip(stamps) {
                        if b != 0 {
                            *a = if *a == 0 { b } else { (*a).min(b) };
                        }
                    }
                    return;
                }
                i = (i + 1) & mask;
            }
        }
    }
    fn pass(bytes: &[u8]) -> std::collections::HashMap<&[u8], Table> {
        let mut runs: std::collections::HashMap<&[u8], Table> = std::collections::HashMap::new();
        let req = RequestView::parse_framing(bytes).expect("parses");
        for rs in req.resource_spans() {
            for span in rs.spans() {
                let span = span.expect("reads");
                let (mut run, mut id, mut stamps) = (&b""[..], &b""[..], [0i64; 5]);
                for kv in span.attributes() {
                    let kv = kv.expect("reads");
                    let Some(k) = KEYS.iter().position(|k| *k == kv.key) else {
                        continue;
                    };
                    match (k, kv.value) {
                        (0, Some(ValueView::String(s))) => run = s,
                        (1, Some(ValueView::String(s))) => id = s,
                        (k @ 2.., Some(ValueView::Int(t))) => stamps[k - 2] = t,
                        _ => {}
                    }
                }
                let h = xxhash_rust::xxh3::xxh3_64(id) | 1;
                runs.entry(run)
                    .or_insert_with(|| Table {
                        slots: Vec::new(),
                        len: 0,
                    })
                    .upsert(h, stamps);
            }
        }
        runs
    }
    let (bytes, spans) = batch();
    // It finds the runs and requests that extraction finds.
    let mut found = std::collections::HashSet::new();
    let view = RequestView::parse_framing(&bytes).expect("parses");
    let mut items = Vec::new();
    Extractor::default()
        .request_view(view, &mut items)
        .expect("reads");
    for e in items {
        if let Extracted::Observation(o) = e {
            found.insert((o.run_id.to_string(), o.request));
        }
    }
    let runs = pass(&bytes);
    let run_ids: std::collections::HashSet<&String> = found.iter().map(|(r, _)| r).collect();
    assert_eq!(runs.len(), run_ids.len());
    assert_eq!(runs.values().map(|t| t.len).sum::<usize>(), found.len());
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("read_find_upsert", |b| b.iter(|| pass(&bytes).len()));
    g.finish();
}

criterion_group!(benches, stages, runs_end, floor);
criterion_main!(benches);
