//! tpsgap: an OpenTelemetry trace processor for LLM inference pipelines.
//!
//! It joins the spans of each request per `run_id`, computes queue time, time
//! to first token, stream time, tokens per second and system TPS, and the
//! idle-gap metric `gap_fraction`: the share of time when requests waited
//! while the system ran below its concurrency cap.
//!
//! # Layout
//! - [`model`]: plain data (timestamps in ns, requests, observations).
//! - [`extract`]: OTLP span → observation (attribute aliases, time units).
//! - [`join`]: merges observations per `(run_id, request_id)`.
//! - [`window`]: the sweep line: queue/in-flight/cap → gaps, windows, totals.
//! - [`report`]: the SPEC §4 report (serde).
//! - [`live`]: the live engine: watermarks, final windows, idle runs.
//! - [`ingest`]: OTLP/gRPC and OTLP/HTTP receivers around one `handle()`.
//! - [`export`]: OTLP metrics and gap spans, Prometheus, the JSON API.
//! - [`auth`], [`tls`]: optional bearer-token authentication and TLS/mTLS.
//! - [`wal`]: the write-ahead log and checkpoints of `--wal-dir`.
//! - [`serve`]: wires them into `tpsgap serve` with staged shutdown.
//! - [`sim`]: the discrete-event pipeline simulator behind `simulate` and `demo`.
//! - [`input`]: reads OTLP exports from files (JSON lines, protobuf).
//! - [`testutil`]: builders shared by tests, benchmarks and the simulator.
//! - [`fuzzing`]: fuzz harnesses (hostile bytes → report), shared by `fuzz/`
//!   and `tests/fuzz_corpus.rs`.
//! - [`config`]: command-line arguments → validated configuration.
//! - [`cli`]: the subcommands.
//!
//! `extract`, `join` and `window` do no I/O and never read the clock, so the
//! offline analyzer and the live service run the very same code.

pub mod auth;
pub mod cli;
pub mod config;
pub mod export;
pub mod extract;
pub mod fuzzing;
pub mod ingest;
pub mod input;
pub mod join;
pub mod key_index;
pub mod lean;
pub mod live;
pub mod model;
pub mod report;
pub mod serve;
pub mod sim;
pub mod testutil;
pub mod tls;
pub mod wal;
pub mod window;
