//! Memory held per joined request: one million open requests (two spans
//! each, 100 runs) ingested into the live engine. The heap bytes the engine
//! holds are counted exactly by a counting global allocator; resident
//! memory (`/proc/self/statm`) is shown beside them.
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

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

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
    let (before, heap_before) = (rss_bytes(), LIVE.load(Ordering::Relaxed));
    for b in &batches {
        let req = tpsgap::lean::decode(b.clone()).expect("decodes");
        let mut items = Vec::new();
        x.request(&req, |e| items.push(e));
        engine
            .ingest(items, Now::system(Instant::now()))
            .expect("accepted");
    }
    let (after, heap_after) = (rss_bytes(), LIVE.load(Ordering::Relaxed));
    let heap = heap_after.saturating_sub(heap_before) as f64;
    let per = heap / requests as f64;
    println!(
        "{requests} open requests in {} runs: engine heap +{:.1} MiB ({per:.0} bytes per joined request), RSS +{:.1} MiB",
        engine.live_runs(),
        heap / 1048576.0,
        after.saturating_sub(before) as f64 / 1048576.0
    );
    assert!(per > 0.0, "the joined requests take memory");
}
