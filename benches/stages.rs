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
//!   this does not ask): the fixed cost of a run.
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
            let mut n = 0usize;
            tpsgap::lean::view::RequestView::parse_framing(&bytes)
                .and_then(|v| {
                    x.request_view(v, |e| {
                        n += usize::from(matches!(e, Extracted::Observation(_)))
                    })
                })
                .expect("reads");
            n
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
                x.request_view(view, |e| store.apply(&e)).expect("reads");
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
                x.request_view(view, |e| items.push(e)).expect("reads");
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

criterion_group!(benches, stages, runs_end);
criterion_main!(benches);
