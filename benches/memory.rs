//! Memory held per joined request: one million open requests (two spans
//! each, 100 runs) ingested into the live engine. The heap bytes the engine
//! holds are counted exactly by a counting global allocator. (Resident
//! memory is not: the engine reuses the pages that encoding the load freed.
//! `scripts/bench_scaling.sh` gives the whole server's peak RSS.)
//!
//! `cargo bench --bench memory`. Under `cargo test` (no `--bench`) it joins
//! 20,000 requests, only to prove the benchmark still works.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tpsgap::extract::Extractor;
use tpsgap::live::{Engine, LiveConfig, Now};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let requests: usize = if quick { 20_000 } else { 1_000_000 };
    // Encoded up front, so that only the engine's state is measured.
    let batches: Vec<Bytes> = tpsgap::testutil::synthetic_exports(requests * 2, 100)
        .iter()
        .map(|r| Bytes::from(r.encode_to_vec()))
        .collect();
    let engine = Engine::new(LiveConfig::default());
    let x = Extractor::default();
    let heap_before = LIVE.load(Ordering::Relaxed);
    for b in &batches {
        let req = tpsgap::lean::decode(b.clone()).expect("decodes");
        let mut items = Vec::new();
        x.request(&req, |e| items.push(e));
        engine
            .ingest(items, Now::system(Instant::now()))
            .expect("accepted");
    }
    let heap_after = LIVE.load(Ordering::Relaxed);
    let heap = heap_after.saturating_sub(heap_before) as f64;
    let per = heap / requests as f64;
    println!(
        "{requests} open requests in {} runs: engine heap +{:.1} MiB ({per:.0} bytes per joined request)",
        engine.live_runs(),
        heap / 1048576.0,
    );
    // The target: at most 200 bytes held per joined request.
    assert!(
        per > 0.0 && per <= 200.0,
        "{per:.0} bytes per joined request, the target is at most 200"
    );
}
