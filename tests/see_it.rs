//! `simulate`, `demo`, the web page (in headless Chromium), the HTML report
//! and `compare`, end to end through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{final_run, http_post, root, TestServer};
use serde_json::Value;
use tpsgap::live::LiveConfig;
use tpsgap::serve::ServeConfig;

fn tpsgap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run tpsgap")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpsgap-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn s(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

/// The three single-cause scenarios: (cause, simulate flags).
fn scenarios() -> Vec<(&'static str, Vec<&'static str>)> {
    let common = [
        "--duration",
        "30s",
        "--cap",
        "8",
        "--output-tokens",
        "uniform:100:200",
        "--per-token",
        "0.003",
        "--ttft",
        "0.1",
        "--start",
        "1800000000",
        "--seed",
        "3",
    ];
    let mut out = Vec::new();
    for (cause, extra) in [
        // A backlog from the start and arrivals above capacity keep the
        // queue from emptying, which would drop freed slots (SPEC §1).
        (
            "stall",
            vec![
                "--rate",
                "16",
                "--initial-queue",
                "20",
                "--stall",
                "10s:4s",
                "--stall",
                "20s:3s",
            ],
        ),
        (
            "refill",
            vec!["--rate", "16", "--initial-queue", "20", "--handoff", "40ms"],
        ),
        ("under_cap", vec!["--rate", "9", "--client-limit", "5"]),
    ] {
        let mut v: Vec<&str> = common.to_vec();
        v.extend(extra);
        out.push((cause, v));
    }
    out
}

/// Checks a report's run against the simulator's ground truth: the same gap
/// intervals (to the nanosecond the simulator wrote), at least 90 % of the
/// gap time with the injected cause, every gap labelled with it.
fn check_against_truth(run: &Value, truth: &Value, cause: &str) {
    let gaps = run["gaps"].as_array().expect("gaps");
    let tg = truth["gaps"].as_array().expect("truth gaps");
    assert!(!tg.is_empty(), "the simulation injected gaps");
    let interval = |g: &Value| {
        (
            g["start_unix_s"].as_f64().unwrap_or(0.0),
            g["end_unix_s"].as_f64().unwrap_or(0.0),
        )
    };
    let got: Vec<(f64, f64)> = gaps.iter().map(interval).collect();
    let want: Vec<(f64, f64)> = tg.iter().map(interval).collect();
    assert_eq!(got.len(), want.len(), "{cause}: gap count");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g.0 - w.0).abs() < 1e-6 && (g.1 - w.1).abs() < 1e-6,
            "{cause}: {g:?} vs {w:?}"
        );
    }
    for g in gaps {
        assert_eq!(g["cause"], cause, "{cause}: {g}");
    }
    let by = &run["totals"]["gap_seconds_by_cause"];
    let total = run["totals"]["gap_seconds"].as_f64().expect("gap seconds");
    let share = by[cause].as_f64().expect("cause seconds") / total;
    assert!(share >= 0.9, "{cause}: only {share:.3} of the gap time");
    assert!((total - truth["gap_seconds"].as_f64().unwrap_or(-1.0)).abs() < 1e-6);
}

#[test]
fn each_injected_cause_is_found_and_classified_by_analyze() {
    let dir = tmpdir("causes");
    for (cause, flags) in scenarios() {
        let file = dir.join(format!("{cause}.jsonl"));
        let truth = dir.join(format!("{cause}.truth.json"));
        let mut args = vec!["simulate", "--run-id", cause];
        args.extend(flags.iter());
        let (f, t) = (s(&file), s(&truth));
        args.extend(["--output", &f, "--ground-truth", &t]);
        let out = tpsgap(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let truth: Value =
            serde_json::from_str(&std::fs::read_to_string(&truth).expect("truth")).expect("json");
        assert!(truth["gap_seconds_by_cause"][cause].as_f64().unwrap_or(0.0) > 0.5);
        let rep = tpsgap(&["analyze", &f]);
        assert_eq!(rep.status.code(), Some(0));
        let v: Value = serde_json::from_slice(&rep.stdout).expect("report");
        check_against_truth(&v["runs"][0], &truth, cause);
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn serve_cfg() -> ServeConfig {
    ServeConfig {
        live: LiveConfig {
            // Accelerated sends arrive in release order; waits can be long.
            lateness: 3_600_000_000_000,
            idle_timeout: Duration::from_secs(1),
            ..LiveConfig::default()
        },
        tick: Duration::from_millis(50),
        ..ServeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_injected_cause_is_found_and_classified_by_serve() {
    let server = TestServer::start(serve_cfg()).await;
    let (grpc, http, api) = (server.grpc, server.http, server.api);
    let dir = tmpdir("causes-serve");
    tokio::task::spawn_blocking(move || {
        for (n, (cause, flags)) in scenarios().into_iter().enumerate() {
            let truth = dir.join(format!("{cause}.truth.json"));
            let t = s(&truth);
            let mut args = vec!["simulate", "--run-id", cause];
            args.extend(flags.iter());
            // gRPC for two scenarios, OTLP/HTTP for one; one and two spans per request.
            let (proto, ep, spans) = if n == 1 {
                ("http", format!("http://{http}/v1/traces"), "two")
            } else {
                (
                    "grpc",
                    format!("http://{grpc}"),
                    if n == 0 { "one" } else { "two" },
                )
            };
            args.extend([
                "--protocol",
                proto,
                "--endpoint",
                &ep,
                "--spans",
                spans,
                "--ground-truth",
                &t,
            ]);
            let out = tpsgap(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let truth: Value =
                serde_json::from_str(&std::fs::read_to_string(&truth).expect("truth"))
                    .expect("json");
            let run = final_run(api, cause);
            check_against_truth(&run, &truth, cause);
        }
        std::fs::remove_dir_all(&dir).ok();
    })
    .await
    .expect("checks");
    server.stop().await;
}

#[test]
fn demo_finds_its_injected_stall() {
    let out = tpsgap(&["demo", "--speed", "4", "--keep-serving", "false"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gap_fraction"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("summary: "))
        .expect("summary line");
    let kv: std::collections::HashMap<&str, &str> = line["summary: ".len()..]
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .collect();
    assert_eq!(kv["injected_gaps"], "1", "{text}");
    assert_eq!(kv["detected_gaps"], "1", "{text}");
    assert_eq!(kv["matched"], "1", "{text}");
    assert_eq!(kv["dominant_cause"], "stall", "{text}");
    assert_eq!(kv["injected_seconds"], kv["detected_seconds"], "{text}");
    // The windows table shows the stall: some window has a gap_fraction above 50 %.
    assert!(
        text.lines().any(|l| l.contains('#')
            && l.split_whitespace()
                .nth(3)
                .and_then(|p| p.trim_end_matches('%').parse::<f64>().ok())
                .is_some_and(|g| g > 50.0)),
        "{text}"
    );
    assert!(text.contains("Run page: http://127.0.0.1:"));
}

fn chromium_dom(url: &str) -> String {
    // A profile of its own: tests running at once each start a browser.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = tmpdir(&format!("chromium-{n}"));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium (Debian package, installed by .ci/run)");
    std::fs::remove_dir_all(&profile).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_in_headless_chromium_shows_gaps_and_escapes_run_ids() {
    let server = TestServer::start(serve_cfg()).await;
    let (http, api) = (server.http, server.api);
    tokio::task::spawn_blocking(move || {
        let example =
            std::fs::read_to_string(root().join("examples/small.jsonl")).expect("example");
        let evil = "<script>alert(1)</script>";
        let hostile = example.replace(
            "{\"key\":\"run_id\",\"value\":{\"stringValue\":\"example\"}}",
            &format!("{{\"key\":\"run_id\",\"value\":{{\"stringValue\":\"{evil}\"}}}}"),
        );
        assert_ne!(hostile, example);
        for body in [&example, &hostile] {
            let (code, _, _) = http_post(
                http,
                "/v1/traces",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
            assert_eq!(code, 200);
        }
        final_run(api, "example");
        let dom = chromium_dom(&format!("http://{api}/runs/example"));
        assert_eq!(
            dom.matches("class=\"gap gap-stall\"").count(),
            1,
            "one stall rectangle"
        );
        assert_eq!(dom.matches("class=\"gap ").count(), 1);
        assert!(
            dom.contains("id=\"gap-fraction\">20.0%"),
            "gap_fraction shown"
        );
        assert!(dom.contains("id=\"system-tps\">3.00"), "system TPS shown");
        assert!(dom.contains("id=\"requests\">4"));
        assert!(dom.contains("<table id=\"causes\">"));
        assert!(dom.contains("stall</td><td>1.900</td>"), "cause breakdown");
        // The hostile run id renders as text on the index and its page.
        let index = chromium_dom(&format!("http://{api}/"));
        assert!(
            index.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{index}"
        );
        assert!(!index.contains(evil));
        let page = chromium_dom(&format!(
            "http://{api}/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        ));
        assert!(
            page.contains("<span class=\"run-id\">&lt;script&gt;alert(1)&lt;/script&gt;</span>"),
            "{page}"
        );
        assert!(!page.contains(evil));
        assert_eq!(page.matches("<script").count(), 0);
    })
    .await
    .expect("checks");
    server.stop().await;
}

#[test]
fn analyze_html_is_one_self_contained_page() {
    let dir = tmpdir("html");
    let out = tpsgap(&[
        "analyze",
        "examples/small.jsonl",
        "--window",
        "5s",
        "--step",
        "5s",
        "--format",
        "html",
    ]);
    assert!(out.status.success());
    let html = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !html.contains("src=") && !html.contains("href=\"http"),
        "no external resources"
    );
    let file = dir.join("report.html");
    std::fs::write(&file, &html).expect("write");
    let dom = chromium_dom(&format!("file://{}", file.display()));
    assert_eq!(dom.matches("class=\"gap gap-stall\"").count(), 1);
    assert!(dom.contains("id=\"gap-fraction\">20.0%"));
    assert_eq!(
        dom.matches("<rect class=\"tps\"").count(),
        2,
        "one bar per window"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn compare_passes_and_fails_in_the_known_direction() {
    let dir = tmpdir("compare");
    let (before, after) = (s(&dir.join("before.jsonl")), s(&dir.join("after.jsonl")));
    let base = [
        "simulate",
        "--duration",
        "30s",
        "--start",
        "1800000000",
        "--run-id",
        "r",
        "--seed",
        "5",
    ];
    let mut a = base.to_vec();
    a.extend(["--rate", "9", "--stall", "10s:4s", "--output", &before]);
    assert!(tpsgap(&a).status.success());
    let mut b = base.to_vec();
    b.extend(["--rate", "10", "--output", &after]);
    assert!(tpsgap(&b).status.success());
    let pass = tpsgap(&["compare", &before, &after]);
    let text = String::from_utf8_lossy(&pass.stdout);
    assert_eq!(pass.status.code(), Some(0), "{text}");
    assert!(text.contains("verdict: PASS"), "{text}");
    let fail = tpsgap(&["compare", &after, &before]);
    let text = String::from_utf8_lossy(&fail.stdout);
    assert_eq!(fail.status.code(), Some(1), "{text}");
    assert!(text.contains("verdict: FAIL"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("system TPS improved") && l.contains("FAIL")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("idle time under backlog decreased") && l.contains("FAIL")),
        "{text}"
    );
    // Reports work as inputs too, with the same verdict.
    let rb = dir.join("before.json");
    std::fs::write(&rb, tpsgap(&["analyze", &before]).stdout).expect("write");
    let ra = dir.join("after.json");
    std::fs::write(&ra, tpsgap(&["analyze", &after]).stdout).expect("write");
    assert_eq!(
        tpsgap(&["compare", &s(&rb), &s(&ra)]).status.code(),
        Some(0)
    );
    assert_eq!(
        tpsgap(&["compare", &s(&ra), &s(&rb), "--run", "r"])
            .status
            .code(),
        Some(1)
    );
    let missing = tpsgap(&["compare", &s(&rb), &s(&ra), "--run", "nope"]);
    assert!(!missing.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

/// A browser page sends the worked example as OTLP/JSON (a `fetch` with
/// `Content-Type: application/json` and the server's bearer token, so the
/// browser asks first with a CORS preflight) to the HTTP receiver of a
/// server that allows `http://localhost:*`: from `http://localhost:PORT` it is taken and the
/// run's report is the hand-computed one; the same page from
/// `http://127.0.0.1:PORT` (another origin) is refused by the browser and
/// sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_of_an_allowed_origin_sends_otlp_json() {
    // With a bearer token, which the page sends: the browser's preflight
    // carries none, and is answered before the token check.
    let dir = tmpdir("cors-page");
    std::fs::write(dir.join("token"), "page-token\n").expect("token");
    let server = TestServer::start(ServeConfig {
        cors_allowed_origins: vec!["http://localhost:*".to_string()],
        auth_token_file: Some(dir.join("token")),
        ..common::example_config()
    })
    .await;
    let (http, api) = (server.http, server.api);
    tokio::task::spawn_blocking(move || {
        let example =
            std::fs::read_to_string(root().join("examples/small.jsonl")).expect("example");
        let page = format!(
            r#"<!doctype html><body>sending<script>
const run = new URLSearchParams(location.search).get("run");
const body = {example}.replaceAll(
  '{{"key":"run_id","value":{{"stringValue":"example"}}}}',
  '{{"key":"run_id","value":{{"stringValue":"' + run + '"}}}}');
fetch("http://{http}/v1/traces", {{
  method: "POST",
  headers: {{"Content-Type": "application/json", "Authorization": "Bearer page-token"}},
  body }})
  .then(r => {{ document.body.textContent = "status " + r.status; }})
  .catch(e => {{ document.body.textContent = "refused " + e.name; }});
</script></body>"#,
            example = serde_json::to_string(example.trim()).expect("json string"),
        );
        std::fs::write(dir.join("send.html"), page).expect("page");
        let port = common::free_port();
        let pages = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let _pages = common::Killed(pages);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "page server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let allowed = chromium_dom(&format!("http://localhost:{port}/send.html?run=browser"));
        let other = chromium_dom(&format!("http://127.0.0.1:{port}/send.html?run=blocked"));
        std::fs::remove_dir_all(&dir).ok();
        assert!(allowed.contains("status 200"), "{allowed}");
        assert!(other.contains("refused TypeError"), "{other}");
        let auth = "Authorization: Bearer page-token\r\n";
        let got = common::final_run_with(api, "browser", auth);
        common::assert_same(&got, &common::example_run("browser"));
        let (code, _) = common::http_get_with(api, "/api/v1/runs/blocked", auth);
        assert_eq!(code, 404, "the refused page sent nothing");
    })
    .await
    .expect("checks");
    server.stop().await;
}
