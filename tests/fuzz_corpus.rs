//! Replays the fuzz corpus in `cargo test`: every seed in
//! `fuzz/corpus/<target>/seed-*` and every regression input in
//! `tests/fuzz/<target>-<description>` goes through the harness of its
//! target (`tpsgap::fuzzing`), which must return: a panic is a bug. Known
//! inputs must also give the results noted for them below.
//!
//! A crash the fuzzer finds (`scripts/fuzz.sh`) is minimized with `cargo fuzz
//! tmin` and saved in `tests/fuzz/` with a line in `REGRESSIONS`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tpsgap::fuzzing::{Analysis, Outcome, Parsed};
use tpsgap::ingest::decompress::DecompressError;
use tpsgap::model::NANOS_PER_SEC;
use tpsgap::report::Report;

/// What a harness returned.
#[derive(Debug)]
enum Ran {
    Protobuf(Outcome),
    Json(Outcome),
    Timestamp(Parsed),
    /// gzip or deflate.
    Inflated(Result<Vec<u8>, DecompressError>),
}

impl Ran {
    fn outcome(&self) -> &Outcome {
        match self {
            Ran::Protobuf(o) | Ran::Json(o) => o,
            _ => panic!("not a protobuf or json outcome"),
        }
    }
    fn analysis(&self) -> &Analysis {
        self.outcome()
            .decoded
            .as_ref()
            .expect("the input decodes as an export request")
    }
    /// The report of the decoded request (default names and windows).
    fn decoded(&self) -> &Report {
        &self.analysis().report
    }
    fn parsed(&self) -> &Parsed {
        match self {
            Ran::Timestamp(p) => p,
            _ => panic!("not a timestamp outcome"),
        }
    }
    fn inflated(&self) -> &Result<Vec<u8>, DecompressError> {
        match self {
            Ran::Inflated(g) => g,
            _ => panic!("not a gzip or deflate outcome"),
        }
    }
}

/// A check of what a harness returned for one input.
type Check = fn(&Ran);

const TARGETS: [&str; 5] = ["protobuf", "json", "timestamp", "gzip", "deflate"];

fn run(target: &str, data: &[u8]) -> Ran {
    match target {
        "protobuf" => Ran::Protobuf(tpsgap::fuzzing::protobuf(data)),
        "json" => Ran::Json(tpsgap::fuzzing::json(data)),
        "timestamp" => Ran::Timestamp(tpsgap::fuzzing::timestamp(data)),
        "gzip" => Ran::Inflated(tpsgap::fuzzing::gzip(data)),
        "deflate" => Ran::Inflated(tpsgap::fuzzing::deflate(data)),
        other => panic!("no fuzz target {other:?}"),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir` whose names start with `prefix`, sorted.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && name(p).starts_with(prefix))
        .collect();
    out.sort();
    out
}

fn name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// Replays `path` through `target`'s harness and checks `expect`; returns a
/// failure message instead of panicking, so that one run lists them all.
fn replay(target: &str, path: &Path, expect: Option<Check>) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    catch_unwind(AssertUnwindSafe(|| {
        let ran = run(target, &data);
        if let Some(check) = expect {
            check(&ran);
        }
    }))
    .map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        format!("{target} {}: panicked: {msg}", name(path))
    })
}

fn report_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} input(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const S: i64 = NANOS_PER_SEC;
const T0: i64 = 1_800_000_000 * S;

/// Expected results of some seeds (the rest must only not panic).
const SEEDS: &[(&str, &str, Check)] = &[
    ("protobuf", "seed-bad.pb", |r| {
        // tests/fixtures/bad.md: one run, x rejected, 4 requests, 74 tokens.
        let rep = r.decoded();
        assert_eq!((rep.runs.len(), rep.rejected_spans), (1, 1));
        let run = &rep.runs[0];
        assert_eq!(run.run_id, "bad");
        assert_eq!(run.requests.total, 4);
        assert_eq!(run.output_tokens, 74);
        assert_eq!(run.invalid.negative_interval, 2);
        assert_eq!(
            &r.outcome().file.report,
            rep,
            "the file reads as the message"
        );
        assert!(r.outcome().file_errors.is_empty());
    }),
    ("protobuf", "seed-two_runs.pb", |r| {
        let ids: Vec<&str> = r.decoded().runs.iter().map(|x| x.run_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
    }),
    ("protobuf", "seed-vllm.pb", |r| {
        // tests/fixtures/vllm.expected.json (--preset vllm).
        let rep = &r.analysis().vllm;
        assert_eq!((rep.runs.len(), rep.rejected_spans), (1, 0));
        assert_eq!(rep.runs[0].run_id, "vllm-0");
        assert_eq!(
            (rep.runs[0].requests.total, rep.runs[0].output_tokens),
            (4, 114)
        );
    }),
    ("protobuf", "seed-genai.pb", |r| {
        // tests/fixtures/genai.expected.json (--preset genai).
        let rep = &r.analysis().genai;
        assert_eq!((rep.runs.len(), rep.rejected_spans), (1, 0));
        assert_eq!(rep.runs[0].run_id, "chatbot");
        assert_eq!(
            (rep.runs[0].requests.total, rep.runs[0].output_tokens),
            (3, 57)
        );
    }),
    ("json", "seed-bad-1.json", |r| {
        // Batch 1 of bad.jsonl: g1, x (rejected), n.
        let rep = r.decoded();
        assert_eq!((rep.runs.len(), rep.rejected_spans), (1, 1));
        assert_eq!(rep.runs[0].requests.total, 2);
        assert_eq!(&r.outcome().file.report, rep);
    }),
    ("json", "seed-small-1.json", |r| {
        assert_eq!(r.decoded().runs[0].run_id, "example");
    }),
    ("timestamp", "seed-rfc3339-z", |r| {
        assert_eq!(r.parsed().string, Ok(T0));
    }),
    ("timestamp", "seed-rfc3339-offset-frac", |r| {
        assert_eq!(r.parsed().string, Ok(T0 + S / 4));
    }),
    ("timestamp", "seed-secs", |r| {
        assert_eq!(r.parsed().string, Ok(T0));
    }),
    ("timestamp", "seed-millis", |r| {
        assert_eq!(r.parsed().string, Ok(T0 + S / 4));
    }),
    ("timestamp", "seed-decimal-long", |r| {
        assert_eq!(r.parsed().string, Ok(T0 + 2), "rounds at the tenth decimal");
    }),
    ("timestamp", "seed-le-i64-nanos", |r| {
        assert_eq!(r.parsed().int, Ok(T0 + S / 4));
    }),
    ("timestamp", "seed-garbage", |r| {
        assert!(r.parsed().string.is_err());
    }),
    ("timestamp", "seed-nan", |r| {
        assert!(r.parsed().string.is_err());
    }),
    ("gzip", "seed-export", inflates_to_the_bad_export),
    ("gzip", "seed-two-members", inflates_to_abcdefg),
    ("gzip", "seed-all-header-fields", |r| {
        // Extra field, name, comment and the header's own CRC.
        assert_eq!(r.inflated(), &Ok(b"hello".to_vec()));
    }),
    ("gzip", "seed-bomb", is_a_bomb),
    ("gzip", "seed-truncated", is_cut_short),
    ("deflate", "seed-export", inflates_to_the_bad_export),
    ("deflate", "seed-two-streams", inflates_to_abcdefg),
    ("deflate", "seed-bomb", is_a_bomb),
    ("deflate", "seed-truncated", is_cut_short),
    ("deflate", "seed-bad-checksum", |r| {
        assert!(matches!(r.inflated(), Err(DecompressError::Corrupt(_))));
    }),
];

/// Checks that the gzip and deflate seeds share. `seed-export`: the
/// protobuf seed `seed-bad.pb`, compressed.
fn inflates_to_the_bad_export(r: &Ran) {
    let pb = std::fs::read(root().join("fuzz/corpus/protobuf/seed-bad.pb")).expect("seed");
    assert_eq!(r.inflated(), &Ok(pb));
}

/// "abc" and "defg", two members or streams: one body.
fn inflates_to_abcdefg(r: &Ran) {
    assert_eq!(r.inflated(), &Ok(b"abcdefg".to_vec()));
}

/// 2 MiB of zeros in 2 KB: over the limit.
fn is_a_bomb(r: &Ran) {
    let max = tpsgap::fuzzing::GZIP_MAX;
    assert_eq!(r.inflated(), &Err(DecompressError::TooLarge(max)));
}

/// Half a body: cut short.
fn is_cut_short(r: &Ran) {
    assert_eq!(r.inflated(), &Err(DecompressError::Truncated));
}

/// Every regression input in tests/fuzz/ with what it must give. Inputs
/// marked CRASH panicked when they were found (at the file:line noted, as
/// the code was then); the note says how it was fixed.
const REGRESSIONS: &[(&str, Check)] = &[
    // CRASH (found at once by every timestamp seed; tmin: "0"): src/window.rs
    // Profile::timeline, `span * i` overflowed i64 for a run longer than
    // ~222 days (i64::MAX / 480 columns ns): the HTML report of a run with
    // one request at 1970-01-01 ("0") and one in 2027. Fixed: i128 there.
    ("timestamp-html-timeline-overflow", |r| {
        let p = r.parsed();
        // "0" is 0 s; its first bytes as an i64 are 48 (s); as a double a
        // subnormal, 0 ns.
        assert_eq!(
            (&p.string, &p.int, &p.double),
            (&Ok(0), &Ok(48 * S), &Ok(0))
        );
    }),
    // CRASH (a seed): i64::MAX ns (2262-04-11T23:47:16.854775807Z) was
    // accepted and its window's end `ws + window` overflowed (src/window.rs
    // window_reports). Fixed: timestamps only from 1970 to 2200 (extract).
    ("timestamp-i64-max-window-end-overflow", |r| {
        assert!(r.parsed().string.is_err(), "{:?}", r.parsed());
    }),
    // CRASH (a seed): i64::MIN ns (1677-09-21T00:12:43.145224192Z) was
    // accepted and a run from it to 2027 is longer than i64::MAX ns:
    // `s.end - s.start` overflowed (src/window.rs Profile::build). Same fix.
    ("timestamp-i64-min-segment-overflow", |r| {
        assert!(r.parsed().string.is_err(), "{:?}", r.parsed());
    }),
    // CRASH, found by the fuzzer (protobuf, 64,338 executions):
    // a genai span whose start_time_unix_nano is past i64::MAX (clamped to
    // i64::MAX) with gen_ai.response.time_to_first_chunk = 1.0: `start + t`
    // overflows in src/extract.rs derive_stamps (Preset::Genai) before the
    // range check of derived stamps runs. cargo fuzz tmin could not shrink
    // the fuzzer's 1,367-byte input; this is the same span alone (102
    // bytes). Fixed: saturating_add in derive_stamps; the out-of-range stamp
    // is then rejected like any other.
    ("protobuf-genai-start-plus-first-chunk-overflow", |r| {
        let a = r.analysis();
        // The derived stamps are out of range: the span is rejected.
        assert_eq!((a.genai.rejected_spans, a.genai.runs.len()), (1, 0));
        // Without a preset the span has a run but no timestamp.
        assert_eq!(
            (a.report.runs.len(), a.report.runs[0].requests.total),
            (1, 0)
        );
    }),
    // CRASH: the same overflow with --preset vllm (`start + q`, found by
    // reading derive_stamps after the crash above; same fix).
    ("protobuf-vllm-start-plus-queue-overflow", |r| {
        let a = r.analysis();
        assert_eq!((a.vllm.rejected_spans, a.vllm.runs.len()), (1, 0));
    }),
    // CRASH, found by review (the fuzzer did not reach it in 3 minutes): two
    // requests with output_tokens "18446744073709551615"
    // (u64::MAX, a valid count): `rep.output_tokens +=` in src/window.rs
    // compute_run (and Counts::add) overflows u64. Fixed: saturating_add for
    // token and retry sums.
    ("json-output-tokens-sum-overflow", |r| {
        let rep = r.decoded();
        assert_eq!((rep.runs.len(), rep.rejected_spans), (1, 0));
        let run = &rep.runs[0];
        assert_eq!(run.requests.total, 2);
        assert_eq!(run.output_tokens, u64::MAX, "saturates");
        assert_eq!(run.totals.output_tokens, u64::MAX, "saturates");
    }),
    // CRASH, found by review: "170141183460469231731687303715.9"
    // seconds: `secs * 1e9` fits in i128 but `+ frac` overflows it in
    // src/extract.rs decimal_seconds. Fixed: checked_add (then "out of
    // range").
    ("timestamp-decimal-i128-overflow", |r| {
        assert!(r.parsed().string.is_err(), "{:?}", r.parsed());
    }),
];

#[test]
fn seed_corpus_replays_without_panic() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let seeds = files(&root().join("fuzz/corpus").join(target), "seed-");
        assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
        for path in &seeds {
            let expect = SEEDS
                .iter()
                .find(|(t, n, _)| *t == target && *n == name(path))
                .map(|x| x.2);
            if let Err(e) = replay(target, path, expect) {
                failures.push(e);
            }
        }
    }
    for (target, seed, _) in SEEDS {
        let path = root().join("fuzz/corpus").join(target).join(seed);
        assert!(path.is_file(), "{} is missing", path.display());
    }
    report_failures(failures);
}

#[test]
fn regression_inputs_replay_with_expected_results() {
    let mut failures = Vec::new();
    let inputs = files(&root().join("tests/fuzz"), "");
    for path in &inputs {
        let n = name(path);
        let Some(target) = TARGETS
            .into_iter()
            .find(|t| n.starts_with(&format!("{t}-")))
        else {
            failures.push(format!("{n}: not named <target>-<description>"));
            continue;
        };
        let Some(&(_, expect)) = REGRESSIONS.iter().find(|(r, _)| *r == n) else {
            failures.push(format!("{n}: no entry in REGRESSIONS"));
            continue;
        };
        if let Err(e) = replay(target, path, Some(expect)) {
            failures.push(e);
        }
    }
    for (n, _) in REGRESSIONS {
        if !inputs.iter().any(|p| name(p) == *n) {
            failures.push(format!("tests/fuzz/{n} is missing"));
        }
    }
    report_failures(failures);
}
