//! The `--format table` rendering of a report: a readable terminal summary.

use std::io::{self, Write};

use crate::report::{Report, RunReport, Stats};

/// Formats Unix seconds as an RFC 3339 UTC time with milliseconds.
pub fn utc(secs: f64) -> String {
    let ns = (secs * 1e9).round() as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| format!("{secs}"))
}

/// A fraction as a percentage, or `-` when undefined.
pub fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

/// A number with `digits` decimals, or `-` when undefined.
pub fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// Writes every run of the report.
///
/// # Errors
/// When writing fails.
pub fn write(out: &mut impl Write, r: &Report) -> io::Result<()> {
    for run in &r.runs {
        write_run(out, run)?;
        writeln!(out)?;
    }
    writeln!(
        out,
        "{} run(s); spans ignored (no run_id): {}; spans rejected: {}",
        r.runs.len(),
        r.ignored_spans,
        r.rejected_spans
    )
}

fn totals_line(s: &Stats) -> String {
    let causes = s.gap_seconds_by_cause.map_or_else(String::new, |c| {
        format!(
            " (stall {:.3}s, refill {:.3}s, under_cap {:.3}s)",
            c.stall, c.refill, c.under_cap
        )
    });
    format!(
        "gap {}s = {}{causes}; backlog {:.3}s = {}; in flight {}; queue {}; utilization {}; system TPS {}; success {}; retry rate {}",
        num(s.gap_seconds, 3),
        pct(s.gap_fraction),
        s.backlog_seconds,
        pct(s.backlog_fraction),
        num(s.mean_in_flight, 2),
        num(s.mean_queue_depth, 2),
        pct(s.utilization),
        num(s.system_tps, 2),
        pct(s.success_rate),
        num(s.retry_rate, 2),
    )
}

fn write_run(out: &mut impl Write, run: &RunReport) -> io::Result<()> {
    let range = match (run.start_unix_s, run.end_unix_s) {
        (Some(a), Some(b)) => format!("{} .. {} ({:.3}s)", utc(a), utc(b), b - a),
        _ => "no request timestamps".to_string(),
    };
    let cap = run
        .cap
        .map_or_else(|| "none".to_string(), |c| c.to_string());
    writeln!(out, "run {}  {range}  cap {cap}", run.run_id)?;
    let q = &run.requests;
    writeln!(
        out,
        "  requests {} ({} succeeded, {} failed, {} incomplete); output tokens {}; input tokens {}; retries {}; negative intervals {}; late spans {}",
        q.total, q.succeeded, q.failed, q.incomplete, run.output_tokens, run.input_tokens,
        run.retries, run.invalid.negative_interval, run.late_spans
    )?;
    writeln!(out, "  totals: {}", totals_line(&run.totals))?;
    let l = &run.latency;
    writeln!(
        out,
        "  {:<26} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency (succeeded)", "count", "mean", "p50", "p90", "p99", "max"
    )?;
    for (name, s) in l.rows() {
        writeln!(
            out,
            "  {:<26} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            s.count,
            num(s.mean, 4),
            num(s.p50, 4),
            num(s.p90, 4),
            num(s.p99, 4),
            num(s.max, 4)
        )?;
    }
    writeln!(
        out,
        "  {:<24} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}",
        "window start (UTC)",
        "eff s",
        "sys TPS",
        "backlog",
        "gap",
        "util",
        "in flight",
        "reqs",
        "success"
    )?;
    for w in &run.windows {
        let s = &w.stats;
        writeln!(
            out,
            "  {:<24} {:>8.3} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}",
            utc(w.start_unix_s),
            s.effective_seconds,
            num(s.system_tps, 2),
            pct(s.backlog_fraction),
            pct(s.gap_fraction),
            pct(s.utilization),
            num(s.mean_in_flight, 2),
            s.requests,
            pct(s.success_rate)
        )?;
    }
    if run.gaps.is_empty() {
        writeln!(out, "  no idle gaps")?;
        return Ok(());
    }
    writeln!(
        out,
        "  {:<24} {:<24} {:>9} {:>9} {:<9}",
        "gap start (UTC)", "gap end (UTC)", "seconds", "max queue", "cause"
    )?;
    for g in &run.gaps {
        writeln!(
            out,
            "  {:<24} {:<24} {:>9.3} {:>9} {:<9}",
            utc(g.start_unix_s),
            utc(g.end_unix_s),
            g.seconds,
            g.max_queue_depth,
            g.cause
        )?;
    }
    Ok(())
}
