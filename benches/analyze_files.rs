//! How long `tpsgap analyze` takes on a 1M-span protobuf file and a 1M-span
//! OTLP JSON-lines file (the Collector file exporter's format).
//!
//! `cargo bench --bench analyze_files`. Under `cargo test` (no `--bench`
//! argument) or with `TPSGAP_BENCH_QUICK=1` it runs a small file once, only
//! to prove the benchmark still works.

use std::io::Write;
use std::time::Instant;

use prost::Message;
use tpsgap::cli::analyze::analyze;
use tpsgap::input::InputFormat;
use tpsgap::window::WindowConfig;

/// The binary's allocator (`src/main.rs`), so these are the product's figures.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux), in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::var_os("TPSGAP_BENCH_QUICK").is_some()
        || !std::env::args().any(|a| a == "--bench");
    let (spans, iters) = if quick { (10_000, 1) } else { (1_000_000, 5) };
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exports = tpsgap::testutil::synthetic_exports(spans, 100);
    let pb = dir.join(format!("bench-{spans}.pb"));
    let json = dir.join(format!("bench-{spans}.jsonl"));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&pb).expect("create pb"));
        for e in &exports {
            f.write_all(&e.encode_to_vec()).expect("write pb");
        }
        let mut j = std::io::BufWriter::new(std::fs::File::create(&json).expect("create json"));
        for e in &exports {
            serde_json::to_writer(&mut j, e).expect("write json");
            j.write_all(b"\n").expect("newline");
        }
    }
    drop(exports);
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "{spans} spans, 100 runs, 2 spans per request; protobuf {} bytes, JSON lines {} bytes",
        size(&pb),
        size(&json)
    );
    let cfg = WindowConfig::default();
    for (name, path) in [("protobuf", &pb), ("json-lines", &json)] {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let (w0, c0) = (Instant::now(), cpu_seconds());
            let a = analyze(
                &[path.to_string_lossy().to_string()],
                InputFormat::Auto,
                &cfg,
            );
            cpu.push(cpu_seconds() - c0);
            wall.push(w0.elapsed().as_secs_f64());
            assert!(a.problems.is_empty(), "{:?}", &a.problems[..1]);
            assert_eq!(a.report.runs.len(), 100);
            let reqs: u64 = a.report.runs.iter().map(|r| r.requests.total).sum();
            assert_eq!(reqs as usize, spans / 2);
        }
        println!(
            "analyze {name:<10} median of {iters}: wall {:.3} s, CPU {:.3} s",
            median(wall),
            median(cpu)
        );
    }
}
