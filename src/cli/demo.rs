//! `tpsgap demo`: the service in-process, a simulated run with one injected
//! stall sent to it in real time, final windows printed live, and a summary
//! of detected against injected gaps. No setup, well under a minute.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use super::simulate::{send_spans, unix_now, Protocol, Sender};
use super::table::{num, pct};
use crate::config::{nanos, parse_duration};
use crate::live::LiveConfig;
use crate::model::NANOS_PER_SEC;
use crate::report::RunReport;
use crate::serve::{self, Listeners, ServeConfig};
use crate::sim::{simulate, spans, Dist, GroundTruth, SimConfig, SpanMode};
use crate::window::WindowConfig;

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// How long requests arrive.
    #[arg(long, default_value = "24s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The injected stall: an admission pause OFFSET:LENGTH after the start.
    #[arg(long, default_value = "10s:3s")]
    pub stall: String,
    /// Play faster than real time by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Keep serving the web page after the summary (default: when stdout is
    /// a terminal).
    #[arg(long)]
    pub keep_serving: Option<bool>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Binds `preferred`, or any free port on loopback if it is taken.
async fn bind(preferred: &str) -> std::io::Result<TcpListener> {
    match TcpListener::bind(preferred).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind("127.0.0.1:0").await,
    }
}

async fn get_run(api: SocketAddr, run: &str) -> Option<(RunReport, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{api}/api/v1/runs/{run}").parse().ok()?;
    let resp = client.get(uri).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let state = v.get("state")?.as_str()?.to_string();
    Some((serde_json::from_value(v).ok()?, state))
}

fn clock(unix_s: f64) -> String {
    super::table::utc(unix_s)
        .get(11..23)
        .unwrap_or_default()
        .to_string()
}

/// The simulated run of the demo.
pub fn demo_sim(args: &DemoArgs, start: i64) -> Result<SimConfig, DemoError> {
    let (off, len) = args
        .stall
        .split_once(':')
        .and_then(|(a, b)| Some((humantime::parse_duration(a).ok()?, parse_duration(b).ok()?)))
        .ok_or_else(|| {
            DemoError::Other(format!("--stall {:?}: expected OFFSET:LENGTH", args.stall))
        })?;
    Ok(SimConfig {
        run_id: "demo".to_string(),
        start,
        duration: nanos(args.duration),
        cap: 8,
        arrival_rate: 9.0,
        output_tokens: Dist::Uniform(80.0, 300.0),
        per_token: Dist::Uniform(0.002, 0.004),
        ttft: Dist::Uniform(0.05, 0.15),
        stalls: vec![(nanos(off), nanos(len))],
        seed: args.seed,
        ..SimConfig::default()
    })
}

/// Matches detected gaps to injected ones (by overlap) and writes the summary.
pub fn summary(
    out: &mut impl Write,
    truth: &GroundTruth,
    rep: &RunReport,
) -> std::io::Result<bool> {
    writeln!(
        out,
        "\nInjected gaps (simulator ground truth) against detected gaps (tpsgap):"
    )?;
    let mut matched = 0;
    for t in &truth.gaps {
        let hits: Vec<_> = rep
            .gaps
            .iter()
            .filter(|g| g.start_unix_s < t.end_unix_s && g.end_unix_s > t.start_unix_s)
            .collect();
        let found = hits
            .iter()
            .map(|g| {
                format!(
                    "detected {}–{} ({:.3} s, {})",
                    clock(g.start_unix_s),
                    clock(g.end_unix_s),
                    g.seconds,
                    g.cause
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        matched += usize::from(!hits.is_empty());
        writeln!(
            out,
            "  injected {}–{} ({:.3} s, {}): {}",
            clock(t.start_unix_s),
            clock(t.end_unix_s),
            t.seconds,
            t.cause,
            if found.is_empty() {
                "NOT DETECTED".to_string()
            } else {
                found
            }
        )?;
    }
    let c = rep.totals.gap_seconds_by_cause.unwrap_or_default();
    let i = truth.gap_seconds_by_cause;
    writeln!(
        out,
        "  {:<10} {:>10} {:>10}",
        "cause", "injected", "detected"
    )?;
    for (name, a, b) in [
        ("stall", i.stall, c.stall),
        ("refill", i.refill, c.refill),
        ("under_cap", i.under_cap, c.under_cap),
    ] {
        writeln!(out, "  {name:<10} {a:>9.3}s {b:>9.3}s")?;
    }
    let detected: f64 = rep.gaps.iter().map(|g| g.seconds).sum();
    let dominant = rep
        .gaps
        .iter()
        .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .map_or("none", |g| &*g.cause);
    writeln!(
        out,
        "summary: injected_gaps={} detected_gaps={} matched={matched} injected_seconds={:.3} detected_seconds={detected:.3} dominant_cause={dominant}",
        truth.gaps.len(),
        rep.gaps.len(),
        truth.gap_seconds,
    )?;
    Ok(matched == truth.gaps.len())
}

/// Runs the demo, printing to `out`.
///
/// # Errors
/// When a port cannot be bound or the service fails.
pub async fn run(args: &DemoArgs, out: &mut (impl Write + Send)) -> Result<(), DemoError> {
    let listeners = Listeners {
        grpc: bind("127.0.0.1:4317").await?,
        http: bind("127.0.0.1:4318").await?,
        api: bind("127.0.0.1:9464").await?,
    };
    let grpc = listeners.grpc.local_addr()?;
    let api = listeners.api.local_addr()?;
    let sim_cfg = demo_sim(args, unix_now())?;
    let sim = simulate(&sim_cfg);
    let speed = args.speed.max(0.01);
    // Each request is one span sent at its release, so the lateness must
    // cover the longest request (queue time included), and the idle timeout
    // (wall clock) the injected pause, when no span is sent.
    let longest = sim
        .requests
        .iter()
        .map(|r| r.released - r.queued)
        .max()
        .unwrap_or(0);
    let lateness = (longest / NANOS_PER_SEC + 1) * NANOS_PER_SEC;
    let pause: i64 = sim_cfg.stalls.iter().map(|s| s.1).sum();
    let idle = Duration::from_secs_f64(pause as f64 / 1e9 / speed + 3.0);
    let step = 2 * NANOS_PER_SEC;
    let cfg = ServeConfig {
        live: LiveConfig {
            window: WindowConfig {
                window: step,
                step,
                ..WindowConfig::default()
            },
            lateness,
            idle_timeout: idle,
            ..LiveConfig::default()
        },
        tick: Duration::from_millis(100),
        ..ServeConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(cfg, listeners, async {
        let _ = stop_rx.await;
    }));
    let to_send = spans(&sim, &sim_cfg, SpanMode::One);
    writeln!(
        out,
        "tpsgap demo: receiving OTLP on {grpc} (gRPC); web page http://{api}/runs/demo\nSimulating run \"demo\": cap 8, 9 requests/s for {:.0} s, admission paused {} (injected stall); 2 s windows, final {} s after their end:\n",
        args.duration.as_secs_f64(),
        args.stall,
        lateness / NANOS_PER_SEC
    )?;
    writeln!(
        out,
        "  {:<12} {:>9} {:>8} {:>13} {:>11}",
        "window", "sys TPS", "backlog", "gap_fraction", "utilization"
    )?;
    let mut sender =
        Sender::new(Protocol::Grpc, Some(&format!("http://{grpc}"))).map_err(DemoError::Other)?;
    let send = tokio::spawn(async move {
        send_spans(
            &mut sender,
            &to_send,
            Some((sim_cfg.start, speed)),
            512,
            &indicatif::ProgressBar::hidden(),
        )
        .await
    });
    let mut printed = 0;
    let report = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some((rep, state)) = get_run(api, "demo").await else {
            continue;
        };
        for w in rep.windows.iter().skip(printed) {
            let s = &w.stats;
            let bar = "#".repeat((s.gap_fraction.unwrap_or(0.0) * 20.0).round() as usize);
            writeln!(
                out,
                "  {:<12} {:>9} {:>8} {:>13} {:>11} {bar}",
                clock(w.start_unix_s),
                num(s.system_tps, 1),
                pct(s.backlog_fraction),
                pct(s.gap_fraction),
                pct(s.utilization)
            )?;
            out.flush()?;
        }
        printed = printed.max(rep.windows.len());
        if state == "final" {
            break rep;
        }
    };
    match send.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(DemoError::Other(e)),
        Err(e) => return Err(DemoError::Other(e.to_string())),
    }
    summary(out, &sim.truth, &report)?;
    writeln!(out, "\nRun page: http://{api}/runs/demo")?;
    let keep = args
        .keep_serving
        .unwrap_or_else(|| std::io::stdout().is_terminal());
    if keep {
        writeln!(out, "Serving the page until Ctrl-C.")?;
        out.flush()?;
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DemoError::Other(e.to_string())),
        Err(e) => Err(DemoError::Other(e.to_string())),
    }
}
