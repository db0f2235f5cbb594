//! End to end: the real `tpsgap` binary on OTLP exports, against expected
//! reports worked out by hand (see each fixture's `.md`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_same, expected, root};
use serde_json::Value;

fn tpsgap(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tpsgap");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("tpsgap runs")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn worked_example_matches_exactly() {
    let out = tpsgap(
        &[
            "analyze",
            "examples/small.jsonl",
            "--window",
            "5s",
            "--step",
            "5s",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&json(&out), &expected("examples/small.expected.json"));
}

#[test]
fn stdin_and_table_format() {
    let input = std::fs::read(root().join("examples/small.jsonl")).expect("example");
    let out = tpsgap(
        &["analyze", "-", "--window", "5s", "--step", "5s"],
        Some(&input),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_same(&json(&out), &expected("examples/small.expected.json"));

    let out = tpsgap(
        &[
            "analyze",
            "examples/small.jsonl",
            "--window",
            "5s",
            "--step",
            "5s",
            "--format",
            "table",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run example"), "{text}");
    assert!(
        text.contains("gap 2.000s = 20.0% (stall 1.900s, refill 0.100s, under_cap 0.000s)"),
        "{text}"
    );
    assert!(
        text.contains(
            "2026-11-01T00:00:06.000Z 2026-11-01T00:00:08.000Z     2.000         1 stall"
        ),
        "{text}"
    );
}

#[test]
fn malformed_lines_are_reported_and_the_rest_is_processed() {
    let dir = std::env::temp_dir().join(format!("tpsgap-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let good = std::fs::read_to_string(root().join("examples/small.jsonl")).expect("example");
    let path = dir.join("mixed.jsonl");
    std::fs::write(
        &path,
        format!(
            "{{\"resourceSpans\": 3}}\n{}\nnot json at all\n",
            good.trim()
        ),
    )
    .expect("write");
    let p = path.to_string_lossy().to_string();
    let out = tpsgap(&["analyze", &p, "--window", "5s", "--step", "5s"], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad input gives a non-zero exit"
    );
    assert_same(&json(&out), &expected("examples/small.expected.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{p}:1: not an OTLP JSON trace export")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:3: not an OTLP JSON trace export")),
        "{err}"
    );

    // Random bytes as protobuf: an error with a byte offset, no panic.
    let junk = dir.join("junk.pb");
    std::fs::write(&junk, [0x0a, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff, 0x12]).expect("write");
    let j = junk.to_string_lossy().to_string();
    let out = tpsgap(&["analyze", &j], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{j}:byte 0: not a protobuf trace export")),
        "{err}"
    );
    assert_eq!(json(&out)["runs"], Value::Array(vec![]));

    let missing = tpsgap(&["analyze", "no/such/file.jsonl"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.jsonl: "));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        vec!["analyze", "examples/small.jsonl", "--window", "0s"],
        vec!["analyze", "examples/small.jsonl", "--step", "soon"],
        vec!["analyze", "examples/small.jsonl", "--default-cap", "0"],
        vec!["analyze"],
    ] {
        let out = tpsgap(&args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

/// Every SDK fixture: the JSON-lines and the protobuf form give the same,
/// hand-computed report.
#[test]
fn python_sdk_fixtures_match_hand_computed_reports() {
    let dir = root().join("tests/fixtures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(stem) = name.strip_suffix(".expected.json") else {
            continue;
        };
        let want = expected(&format!("tests/fixtures/{name}"));
        let args_file = dir.join(format!("{stem}.args"));
        let extra = std::fs::read_to_string(&args_file).unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        let bad = stem == "bad";
        for form in ["jsonl", "pb"] {
            let file = format!("tests/fixtures/{stem}.{form}");
            assert!(Path::new(&root().join(&file)).exists(), "{file}");
            let mut args = vec!["analyze", file.as_str()];
            args.extend(&extra);
            let out = tpsgap(&args, None);
            assert_eq!(
                out.status.code(),
                Some(i32::from(bad)),
                "{file}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_same(&json(&out), &want);
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "expected at least 4 fixtures in both forms, checked {checked}"
    );
}

#[test]
fn refill_threshold_flag_and_env_reclassify_the_gap() {
    let causes = |out: &Output| {
        let v = json(out);
        let c = &v["runs"][0]["totals"]["gap_seconds_by_cause"];
        (
            c["stall"].as_f64(),
            c["refill"].as_f64(),
            v["runs"][0]["gaps"][0]["cause"].clone(),
        )
    };
    // The example's slot is free [6, 8): under a 5 s threshold all of it is refill.
    let out = tpsgap(
        &[
            "analyze",
            "examples/small.jsonl",
            "--window",
            "5s",
            "--step",
            "5s",
            "--refill-threshold",
            "5s",
        ],
        None,
    );
    assert_eq!(causes(&out), (Some(0.0), Some(2.0), Value::from("refill")));
    let out = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(["analyze", "examples/small.jsonl"])
        .env("TPSGAP_REFILL_THRESHOLD", "1500ms")
        .current_dir(root())
        .output()
        .expect("run");
    assert_eq!(causes(&out), (Some(0.5), Some(1.5), Value::from("refill")));
}
