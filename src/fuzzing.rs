//! Fuzz harnesses: hostile bytes → decode → extract → join → sweep line →
//! report, for every way untrusted data enters tpsgap.
//!
//! Each function takes arbitrary bytes and must return, whatever they are:
//! a panic (an overflow, an out-of-bounds index, a failed invariant check)
//! is a bug. They are shared by the cargo-fuzz targets in `fuzz/` (run them
//! with `scripts/fuzz.sh`) and by `tests/fuzz_corpus.rs`, which replays the
//! seed corpus and every regression input in `tests/fuzz/` in `cargo test`.
//!
//! - [`protobuf`]: a binary `ExportTraceServiceRequest`, and the same bytes
//!   as a protobuf file.
//! - [`json`]: one OTLP JSON export, and the same bytes as a JSON-lines (or
//!   protobuf, or gzip) file with `--input-format auto`.
//! - [`timestamp`]: a timestamp attribute as a string, an integer and a
//!   double; each one accepted is also run through a whole export.
//! - [`gzip`]: a gzip request body, inflated as the receivers inflate it
//!   and as flate2's streaming reader does: they must agree.
//! - [`deflate`]: a deflate (zlib) request body, likewise.
//!
//! Every decoded export is extracted with the default attribute names and
//! with each preset, joined, and reported with small windows (1 s windows,
//! 1 s step, default cap 2, so that the gap classification runs) and with the
//! default ones (both at most 200 windows per run, to keep executions
//! fast); the reports are serialized and rendered as `tpsgap analyze
//! --format json|html` does. Besides "no panic" the harnesses check a few
//! documented invariants: every span is counted exactly once (accepted,
//! ignored or rejected), joining the same spans again changes no report
//! (`join`), and a report holds no NaN or infinity (`report`: undefined
//! values are `null`, never NaN).

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::common::v1::{
    any_value::Value as FullValue, AnyValue as FullAnyValue, KeyValue,
};
use prost::Message;

use crate::lean::{self, AnyValue, ResourceSpans};

use crate::export::web::{report_page, TIMELINE_COLUMNS};
use crate::extract::{parse_timestamp, Extracted, Extractor, Preset};
use crate::input::{read_traces, FileSpans, InputFormat};
use crate::join::Store;
use crate::lean::view::{RequestView, ResourceSpansView};
use crate::model::{Nanos, Stamp, NANOS_PER_SEC};
use crate::report::{Report, Stats};
use crate::testutil::{export, kv_int, request_span};
use crate::window::WindowConfig;

/// The default windows (60 s every 10 s, no default cap), at most 200 per
/// run instead of 100,000: the same code, but hostile timestamps centuries
/// apart no longer make each execution compute and serialize 100,000
/// windows.
pub fn default_windows() -> WindowConfig {
    WindowConfig {
        max_windows: 200,
        ..WindowConfig::default()
    }
}

/// The second configuration: 1 s windows every 1 s and a default cap of 2,
/// so small inputs have many windows and every run has gaps to classify.
pub fn small_windows() -> WindowConfig {
    WindowConfig {
        window: NANOS_PER_SEC,
        step: NANOS_PER_SEC,
        default_cap: Some(2),
        ..default_windows()
    }
}

/// Extracts every span of `resource_spans` with `x` into a new store, checks
/// that each span was counted once, and that joining them all a second time
/// changes no report (with `cfg`). Returns the store and that report.
fn join(x: &Extractor, resource_spans: &[FileSpans<'_>], cfg: &WindowConfig) -> (Store, Report) {
    let store = Store::new();
    let mut spans = 0u64;
    each(x, resource_spans, &mut |e: Extracted<'_>| {
        spans += 1;
        store.apply(&e);
    });
    let c = &store.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        load(&c.accepted) + load(&c.ignored) + load(&c.rejected),
        spans,
        "every span is accepted, ignored or rejected exactly once"
    );
    let before = store.report(cfg);
    let counts = [&c.accepted, &c.ignored, &c.rejected].map(load);
    each(x, resource_spans, &mut |e: Extracted<'_>| store.apply(&e));
    // The counters count deliveries: set them back to one delivery each.
    for (counter, n) in [&c.accepted, &c.ignored, &c.rejected]
        .into_iter()
        .zip(counts)
    {
        counter.store(n, Ordering::Relaxed);
    }
    let again = store.report(cfg);
    // Compared as JSON, so that a NaN equals itself (`check` finds those).
    assert!(
        serde_json::to_string(&before).ok() == serde_json::to_string(&again).ok(),
        "joining the same spans twice changed the report"
    );
    (store, before)
}

/// Serializes a report as `tpsgap analyze --format json` does, and checks
/// that it holds no NaN or infinity (JSON has none: they would be written
/// as `null`, which the report reserves for undefined values).
fn check(r: &Report) {
    if let Err(e) = serde_json::to_writer(std::io::sink(), r) {
        panic!("the report does not serialize: {e}");
    }
    for run in &r.runs {
        let id = &run.run_id;
        let finite = |what: &str, x: Option<f64>| {
            if let Some(x) = x.filter(|x| !x.is_finite()) {
                panic!("run {id:?}: {what} is {x}");
            }
        };
        finite("start_unix_s", run.start_unix_s);
        finite("end_unix_s", run.end_unix_s);
        stats(&finite, "totals", &run.totals);
        for (i, w) in run.windows.iter().enumerate() {
            let what = format!("windows[{i}]");
            finite(&what, Some(w.start_unix_s));
            finite(&what, Some(w.end_unix_s));
            stats(&finite, &what, &w.stats);
        }
        for g in &run.gaps {
            for x in [g.start_unix_s, g.end_unix_s, g.seconds] {
                finite("gaps", Some(x));
            }
        }
        let l = &run.latency;
        for (what, s) in [
            ("t_queue", &l.t_queue),
            ("t_first_token", &l.t_first_token),
            ("t_stream", &l.t_stream),
            ("t_in_flight", &l.t_in_flight),
            ("stream_tps", &l.stream_tps),
            ("end_to_end_tps", &l.end_to_end_tps),
            ("time_per_output_token", &l.time_per_output_token),
        ] {
            for x in [s.mean, s.p50, s.p90, s.p99, s.max] {
                finite(what, x);
            }
        }
    }
}

fn stats(finite: &impl Fn(&str, Option<f64>), what: &str, s: &Stats) {
    for x in [
        Some(s.effective_seconds),
        s.gap_seconds,
        s.gap_fraction,
        Some(s.backlog_seconds),
        s.backlog_fraction,
        s.mean_in_flight,
        s.mean_queue_depth,
        s.utilization,
        s.system_tps,
        s.success_rate,
        s.retry_rate,
    ] {
        finite(what, x);
    }
    if let Some(c) = &s.gap_seconds_by_cause {
        for x in [c.stall, c.refill, c.under_cap] {
            finite(what, Some(x));
        }
    }
}

/// Extracts every span of `spans` with `x`.
fn each(x: &Extractor, spans: &[FileSpans<'_>], mut sink: &mut dyn FnMut(Extracted<'_>)) {
    for s in spans {
        s.extract(x, &mut sink)
            .expect("a view read_traces handed out reads");
    }
}

/// The reports of one input (each checked).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysis {
    /// Default attribute names, [`default_windows`].
    pub report: Report,
    /// `--preset vllm`, [`small_windows`].
    pub vllm: Report,
    /// `--preset genai`, [`small_windows`].
    pub genai: Report,
}

/// The whole offline pipeline over some `ResourceSpans`: extract (default
/// names and each preset), join, report with the small windows and (for the
/// default names) the default windows, check each report, and render the
/// HTML report page.
fn analyze(resource_spans: &[FileSpans<'_>]) -> Analysis {
    let small = small_windows();
    let [vllm, genai] = [Preset::Vllm, Preset::Genai].map(|preset| {
        let x = Extractor::with_preset(Some(preset), &Default::default());
        let report = join(&x, resource_spans, &small).1;
        check(&report);
        report
    });
    let (store, small_report) = join(&Extractor::default(), resource_spans, &small);
    check(&small_report);
    let _ = report_page(&store.pages(&small, TIMELINE_COLUMNS));
    let report = store.report(&default_windows());
    check(&report);
    Analysis {
        report,
        vllm,
        genai,
    }
}

/// What [`protobuf`] and [`json`] saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The reports of the input decoded as one export request, `None` when
    /// it does not decode.
    pub decoded: Option<Analysis>,
    /// The reports of the input read as a file.
    pub file: Analysis,
    /// The malformed parts of the file, as `tpsgap analyze` prints them.
    pub file_errors: Vec<String>,
}

/// Analyzes the decoded request (if any), then reads `data` as `tpsgap
/// analyze` reads a file (from memory) and analyzes what it read, unless
/// that is exactly what was decoded.
fn outcome(
    decoded: Option<lean::ExportTraceServiceRequest>,
    data: &[u8],
    name: &str,
    format: InputFormat,
) -> Outcome {
    // Every malformed or duplicate-free way `read_traces` can hand spans over
    // is kept as it came (protobuf read in place, JSON decoded lean).
    let mut owned: Vec<(Vec<u8>, Option<ResourceSpans>)> = Vec::new();
    let mut file_errors = Vec::new();
    read_traces(
        data,
        name,
        format,
        &mut |_, rs| {
            owned.push(match rs {
                FileSpans::Lean(rs) => (Vec::new(), Some(rs)),
                FileSpans::Wire(v) => (v.raw().to_vec(), None),
            })
        },
        &mut |e| file_errors.push(e.to_string()),
    );
    let spans: Vec<FileSpans<'_>> = owned
        .iter()
        .map(|(raw, lean)| match lean {
            Some(rs) => FileSpans::Lean(rs.clone()),
            None => FileSpans::Wire(
                ResourceSpansView::parse(raw).expect("a view read_traces handed out parses again"),
            ),
        })
        .collect();
    let decoded = decoded.map(|req| {
        let spans: Vec<FileSpans<'_>> = req
            .resource_spans
            .iter()
            .cloned()
            .map(FileSpans::Lean)
            .collect();
        (analyze(&spans), req.resource_spans)
    });
    // The same spans as decoded: the file gives the same reports.
    let same = |want: &[ResourceSpans]| {
        want.len() == owned.len()
            && owned.iter().zip(want).all(|((raw, lean), w)| match lean {
                Some(rs) => rs == w,
                None => prost::Message::decode(&raw[..]).ok().as_ref() == Some(w),
            })
    };
    let file = match &decoded {
        Some((analysis, want)) if same(want) => analysis.clone(),
        _ => analyze(&spans),
    };
    Outcome {
        decoded: decoded.map(|d| d.0),
        file,
        file_errors,
    }
}

/// Fuzz target `protobuf`: `data` as a binary protobuf
/// `ExportTraceServiceRequest`, and as a protobuf file (`--input-format
/// proto`: raw or length-prefixed messages).
pub fn protobuf(data: &[u8]) -> Outcome {
    let decoded = lean::decode(bytes::Bytes::copy_from_slice(data)).ok();
    // The receivers read each span once, checking it as they go; they must
    // refuse exactly what the whole check (`analyze`'s) refuses.
    let whole = RequestView::parse(data).is_ok();
    let one_pass = RequestView::parse_framing(data)
        .and_then(|v| Extractor::default().request_view(v, &mut Vec::new()))
        .is_ok();
    assert_eq!(
        one_pass, whole,
        "reading span by span and the whole check disagree"
    );
    outcome(decoded, data, "fuzz.pb", InputFormat::Proto)
}

/// Fuzz target `json`: `data` as one OTLP JSON `ExportTraceServiceRequest`,
/// and as a file with `--input-format auto` (JSON lines when it starts with
/// `{`, gzip unpacked, else protobuf).
pub fn json(data: &[u8]) -> Outcome {
    let decoded = lean::json::decode(&bytes::Bytes::copy_from_slice(data)).ok();
    outcome(decoded, data, "fuzz.jsonl", InputFormat::Auto)
}

/// The most a [`gzip`] or [`deflate`] input may inflate to (the receivers'
/// limit is `--max-message-bytes`).
pub const GZIP_MAX: usize = 1 << 20;

/// Fuzz target `gzip`: `data` as a gzip body, inflated by the receivers'
/// [`gunzip`](crate::ingest::decompress::gunzip) with a limit of [`GZIP_MAX`]
/// bytes. It must inflate exactly what flate2's streaming reader does (up
/// to one byte past the limit), and refuse what that refuses. Returns the
/// bytes inflated, or the error.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, crate::ingest::decompress::DecompressError> {
    use std::io::Read;
    let got = crate::ingest::decompress::gunzip(data, GZIP_MAX);
    let mut streamed = Vec::new();
    let read = flate2::read::MultiGzDecoder::new(data)
        .take(GZIP_MAX as u64 + 1)
        .read_to_end(&mut streamed)
        .map_err(|e| e.to_string());
    agree(&got, read.map(|_| streamed));
    got
}

/// Fuzz target `deflate`: `data` as a deflate (zlib) body, inflated by the
/// receivers' [`unzlib`](crate::ingest::decompress::unzlib) with a limit of
/// [`GZIP_MAX`] bytes, against flate2's zlib reader, stream after stream
/// while bytes remain, as [`gzip`] is against its reader.
pub fn deflate(data: &[u8]) -> Result<Vec<u8>, crate::ingest::decompress::DecompressError> {
    let got = crate::ingest::decompress::unzlib(data, GZIP_MAX);
    agree(&got, zlib_streamed(data, GZIP_MAX as u64 + 1));
    got
}

/// What flate2's zlib reader makes of `data`, stream after stream while
/// bytes remain (it reads one and leaves the rest), up to `room` bytes.
///
/// # Errors
/// What the reader says is wrong; an empty body is cut short.
pub fn zlib_streamed(data: &[u8], room: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let (mut out, mut rest) = (Vec::new(), data);
    loop {
        let left = room.saturating_sub(out.len() as u64);
        let mut z = flate2::bufread::ZlibDecoder::new(rest);
        (&mut z)
            .take(left)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        if out.len() as u64 >= room {
            return Ok(out);
        }
        if z.total_in() == 0 {
            // flate2 calls an empty input a whole (empty) stream.
            return Err("no stream".to_string());
        }
        rest = z.into_inner();
        if rest.is_empty() {
            return Ok(out);
        }
    }
}

/// The receivers' decompressor (`got`) against a streaming reader's result,
/// read up to one byte past [`GZIP_MAX`]: the same bytes, or both refused.
fn agree(
    got: &Result<Vec<u8>, crate::ingest::decompress::DecompressError>,
    streamed: Result<Vec<u8>, String>,
) {
    match (got, streamed) {
        (Ok(out), Ok(s)) => assert_eq!(out, &s, "the two inflate different bytes"),
        // The streaming reader stopped one byte past the limit, before the
        // body's end: refused, whatever that end holds.
        (Err(_), Ok(s)) if s.len() > GZIP_MAX => {}
        (Ok(_), Err(e)) => panic!("inflated what the streaming reader refuses: {e}"),
        (Err(e), Ok(_)) => panic!("refused ({e}) what the streaming reader inflates"),
        // A body over the limit whose end is also wrong: refused either way.
        (Err(_), Err(_)) => {}
    }
}

/// What [`timestamp`] parsed from its input, as each kind of attribute value.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The input as a (lossy UTF-8) string.
    pub string: Result<Nanos, String>,
    /// The first 8 bytes (zero-padded) as a little-endian `i64`.
    pub int: Result<Nanos, String>,
    /// The first 8 bytes (zero-padded) as a little-endian `f64`.
    pub double: Result<Nanos, String>,
}

/// Fuzz target `timestamp`: [`parse_timestamp`] of the input as a string, an
/// integer and a double. Each timestamp accepted must be what extraction
/// stores for that attribute, and an export whose requests carry them (as
/// the attribute values themselves, and as integer nanoseconds next to
/// ordinary times) must go through [`protobuf`] without a panic.
pub fn timestamp(data: &[u8]) -> Parsed {
    let mut word = [0u8; 8];
    let n = data.len().min(8);
    word[..n].copy_from_slice(&data[..n]);
    let any = |v: FullValue| FullAnyValue { value: Some(v) };
    let values = [
        any(FullValue::StringValue(
            String::from_utf8_lossy(data).into_owned(),
        )),
        any(FullValue::IntValue(i64::from_le_bytes(word))),
        any(FullValue::DoubleValue(f64::from_le_bytes(word))),
    ];
    let [string, int, double] = values.clone().map(|v| parse_timestamp(&AnyValue::from(v)));
    let s = NANOS_PER_SEC;
    let t0 = 1_800_000_000 * s;
    // An ordinary request in the same run as the hostile ones.
    let mut spans = vec![request_span(
        "fuzz",
        "ordinary",
        &[
            (Stamp::Queued, t0),
            (Stamp::Admitted, t0 + s),
            (Stamp::Released, t0 + 2 * s),
        ],
        vec![kv_int("output_tokens", 5)],
        0,
    )];
    for (i, (v, r)) in values.iter().zip([&string, &int, &double]).enumerate() {
        let Ok(t) = *r else { continue };
        let attr = |key: &str| KeyValue {
            key: key.to_string(),
            value: Some(v.clone()),
            ..Default::default()
        };
        let raw = lean::Span::from(request_span("fuzz", "raw", &[], vec![attr("queued_at")], 0));
        let Ok(extracted) = Extractor::default().span(None, &raw);
        match extracted {
            Extracted::Observation(o) => assert_eq!(
                o.stamps.get(Stamp::Queued),
                Some(t),
                "extraction disagrees with parse_timestamp"
            ),
            other => panic!("a parsed timestamp was not extracted: {other:?}"),
        }
        let seq = 1 + 3 * i as u64;
        // t as integer nanoseconds (re-read by magnitude), a lifecycle
        // around it.
        spans.push(request_span(
            "fuzz",
            &format!("around-{i}"),
            &[
                (Stamp::Queued, t),
                (Stamp::Admitted, t.saturating_add(s)),
                (Stamp::FirstToken, t.saturating_add(2 * s)),
                (Stamp::LastToken, t.saturating_add(3 * s)),
                (Stamp::Released, t.saturating_add(3 * s)),
            ],
            vec![kv_int("output_tokens", 10), kv_int("cap", 1)],
            seq,
        ));
        // The value itself as every timestamp of one request, and as the
        // release of an ordinary one.
        let all = [
            "queued_at",
            "admitted_at",
            "first_token_at",
            "last_token_at",
            "released_at",
        ];
        spans.push(request_span(
            "fuzz",
            &format!("all-{i}"),
            &[],
            all.iter().map(|k| attr(k)).collect(),
            seq + 1,
        ));
        spans.push(request_span(
            "fuzz",
            &format!("released-{i}"),
            &[(Stamp::Queued, t0), (Stamp::Admitted, t0 + s)],
            vec![attr("released_at")],
            seq + 2,
        ));
    }
    if spans.len() > 1 {
        protobuf(&export(spans).encode_to_vec());
    }
    Parsed {
        string,
        int,
        double,
    }
}
