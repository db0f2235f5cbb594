//! The web page: a list of runs and, per run, a server-rendered SVG timeline
//! (in flight against cap, queue depth, gaps shaded by cause), per-window
//! system TPS and gap_fraction, the cause breakdown, latency percentiles and
//! the gap list. No script and no external resource: it works offline, and
//! the same page is `analyze --format html`. Every piece of user data is
//! escaped (run ids come from spans).

use std::fmt::Write;

use crate::cli::table::{num, pct, utc};
use crate::live::{RunPhase, RunSummary};
use crate::report::RunReport;
use crate::window::TimelinePoint;

/// Columns of the timeline.
pub const TIMELINE_COLUMNS: usize = 480;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
.figures span{display:inline-block;margin:0 1.2em .4em 0}.figures b{font-size:1.2em}
.legend span{margin-right:1em}.sw{display:inline-block;width:.9em;height:.9em;vertical-align:middle;margin-right:.3em}
svg text{font-size:11px;fill:#444}.state-live{color:#0a7d2c}.state-final{color:#555}";

/// Colours of the causes, by `Cause::as_str`.
fn cause_color(cause: &str) -> &'static str {
    match cause {
        "stall" => "#d62728",
        "refill" => "#ff9f1c",
        _ => "#e6c229",
    }
}

fn page(title: &str, refresh: bool, body: &str) -> String {
    let meta = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{meta}<title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        esc(title)
    )
}

/// `/`: every run with its state and totals.
pub fn index(runs: &[RunSummary]) -> String {
    let mut b = String::from("<h1>tpsgap runs</h1>\n");
    if runs.is_empty() {
        b.push_str("<p>No runs yet. Send OTLP spans with a <code>run_id</code> attribute to the gRPC or HTTP receiver.</p>\n");
    } else {
        b.push_str("<table id=\"runs\"><tr><th>run</th><th>state</th><th>seconds</th><th>system TPS</th><th>gap_fraction</th><th>backlog</th><th>utilization</th><th>success</th><th>requests</th></tr>\n");
        for r in runs {
            let t = &r.totals;
            let state = match r.state {
                RunPhase::Live => "live",
                RunPhase::Final => "final",
            };
            let _ = writeln!(
                b,
                "<tr><td><a href=\"/runs/{}\">{}</a></td><td class=\"state-{state}\">{state}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                path_segment(&r.run_id),
                esc(&r.run_id),
                t.effective_seconds,
                num(t.system_tps, 1),
                pct(t.gap_fraction),
                pct(t.backlog_fraction),
                pct(t.utilization),
                pct(t.success_rate),
                t.requests
            );
        }
        b.push_str("</table>\n");
    }
    let live = runs.iter().any(|r| r.state == RunPhase::Live);
    page("tpsgap runs", live, &b)
}

/// A run's page (the web page's `/runs/{id}`); `state` is `None` offline.
pub fn run_page(rep: &RunReport, state: Option<RunPhase>, timeline: &[TimelinePoint]) -> String {
    let mut b = String::new();
    if state.is_some() {
        b.push_str("<p><a href=\"/\">← all runs</a></p>\n");
    }
    b.push_str(&run_section(rep, state, timeline));
    page(
        &format!("tpsgap run {}", rep.run_id),
        state == Some(RunPhase::Live),
        &b,
    )
}

/// Several runs on one self-contained page (`analyze --format html`).
pub fn report_page(runs: &[(RunReport, Vec<TimelinePoint>)]) -> String {
    let mut b = String::new();
    if runs.len() > 1 {
        b.push_str("<h1>tpsgap report</h1>\n<ul>\n");
        for (r, _) in runs {
            let _ = writeln!(
                b,
                "<li><a href=\"#run-{}\">{}</a></li>",
                path_segment(&r.run_id),
                esc(&r.run_id)
            );
        }
        b.push_str("</ul>\n");
    }
    for (r, tl) in runs {
        b.push_str(&run_section(r, None, tl));
    }
    if runs.is_empty() {
        b.push_str("<p>No runs in the input.</p>\n");
    }
    page("tpsgap report", false, &b)
}

fn run_section(rep: &RunReport, state: Option<RunPhase>, timeline: &[TimelinePoint]) -> String {
    let mut b = String::new();
    let t = &rep.totals;
    let state_html = match state {
        Some(RunPhase::Live) => " <small class=\"state-live\">live</small>",
        Some(RunPhase::Final) => " <small class=\"state-final\">final</small>",
        None => "",
    };
    let _ = writeln!(
        b,
        "<section class=\"run\" id=\"run-{}\"><h1>run <span class=\"run-id\">{}</span>{state_html}</h1>",
        path_segment(&rep.run_id),
        esc(&rep.run_id)
    );
    if let (Some(s), Some(e)) = (rep.start_unix_s, rep.end_unix_s) {
        let _ = writeln!(
            b,
            "<p>{} to {} ({:.3} s), cap {}</p>",
            utc(s),
            utc(e),
            e - s,
            rep.cap.map_or("none".into(), |c| c.to_string())
        );
    }
    let _ = writeln!(
        b,
        "<div class=\"figures\"><span>gap_fraction <b id=\"gap-fraction\">{}</b></span><span>gap <b>{}</b> s</span><span>backlog <b>{}</b></span><span>system TPS <b id=\"system-tps\">{}</b></span><span>utilization <b>{}</b></span><span>mean in flight <b>{}</b></span><span>success <b>{}</b></span><span>retry rate <b>{}</b></span><span>requests <b id=\"requests\">{}</b> ({} failed, {} incomplete)</span></div>",
        pct(t.gap_fraction),
        num(t.gap_seconds, 3),
        pct(t.backlog_fraction),
        num(t.system_tps, 2),
        pct(t.utilization),
        num(t.mean_in_flight, 2),
        pct(t.success_rate),
        num(t.retry_rate, 2),
        rep.requests.total,
        rep.requests.failed,
        rep.requests.incomplete
    );
    b.push_str("<h2>Timeline</h2>\n");
    b.push_str(&legend());
    b.push_str(&timeline_svg(rep, timeline));
    b.push_str(&windows_svg(rep));
    if let Some(c) = t.gap_seconds_by_cause {
        let total = c.stall + c.refill + c.under_cap;
        let share = |x: f64| {
            if total > 0.0 {
                pct(Some(x / total))
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            b,
            "<h2>Why it was idle</h2>\n<table id=\"causes\"><tr><th>cause</th><th>seconds</th><th>share of gap time</th></tr>\n<tr><td><span class=\"sw\" style=\"background:{}\"></span>stall</td><td>{:.3}</td><td>{}</td></tr>\n<tr><td><span class=\"sw\" style=\"background:{}\"></span>refill</td><td>{:.3}</td><td>{}</td></tr>\n<tr><td><span class=\"sw\" style=\"background:{}\"></span>under_cap</td><td>{:.3}</td><td>{}</td></tr></table>",
            cause_color("stall"), c.stall, share(c.stall),
            cause_color("refill"), c.refill, share(c.refill),
            cause_color("under_cap"), c.under_cap, share(c.under_cap)
        );
    }
    b.push_str("<h2>Latency (successful requests)</h2>\n<table id=\"latency\"><tr><th>metric</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>\n");
    let l = &rep.latency;
    for (name, s) in l.rows() {
        let _ = writeln!(
            b,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.count,
            num(s.mean, 4),
            num(s.p50, 4),
            num(s.p90, 4),
            num(s.p99, 4),
            num(s.max, 4)
        );
    }
    b.push_str("</table>\n<h2>Gaps</h2>\n");
    if rep.gaps.is_empty() {
        b.push_str("<p>No idle gaps.</p>\n");
    } else {
        b.push_str("<table id=\"gaps\"><tr><th>start (UTC)</th><th>end (UTC)</th><th>seconds</th><th>max queue</th><th>cause</th></tr>\n");
        for g in &rep.gaps {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td><span class=\"sw\" style=\"background:{}\"></span>{}</td></tr>",
                utc(g.start_unix_s),
                utc(g.end_unix_s),
                g.seconds,
                g.max_queue_depth,
                cause_color(&g.cause),
                esc(&g.cause)
            );
        }
        b.push_str("</table>\n");
    }
    b.push_str("<h2>Windows</h2>\n<table id=\"windows\"><tr><th>start (UTC)</th><th>seconds</th><th>system TPS</th><th>backlog</th><th>gap_fraction</th><th>utilization</th><th>in flight</th><th>requests</th><th>success</th></tr>\n");
    for w in &rep.windows {
        let s = &w.stats;
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(w.start_unix_s),
            s.effective_seconds,
            num(s.system_tps, 2),
            pct(s.backlog_fraction),
            pct(s.gap_fraction),
            pct(s.utilization),
            num(s.mean_in_flight, 2),
            s.requests,
            pct(s.success_rate)
        );
    }
    b.push_str("</table>\n</section>\n");
    b
}

fn legend() -> String {
    format!(
        "<p class=\"legend\"><span><span class=\"sw\" style=\"background:#1f77b4\"></span>in flight</span><span><span class=\"sw\" style=\"background:#222\"></span>cap</span><span><span class=\"sw\" style=\"background:#7b4bb7\"></span>queue depth</span><span><span class=\"sw\" style=\"background:{}\"></span>gap: stall</span><span><span class=\"sw\" style=\"background:{}\"></span>gap: refill</span><span><span class=\"sw\" style=\"background:{}\"></span>gap: under_cap</span></p>\n",
        cause_color("stall"),
        cause_color("refill"),
        cause_color("under_cap")
    )
}

const W: f64 = 960.0;
const L: f64 = 48.0;
const R: f64 = 12.0;

fn timeline_svg(rep: &RunReport, tl: &[TimelinePoint]) -> String {
    let (Some(s0), Some(s1)) = (rep.start_unix_s, rep.end_unix_s) else {
        return "<p>No timeline: no request has a timestamp.</p>\n".to_string();
    };
    let h = 220.0;
    let (top, bottom) = (10.0, 24.0);
    let span = (s1 - s0).max(1e-9);
    let x = |t: f64| L + (t - s0) / span * (W - L - R);
    let ymax = tl
        .iter()
        .map(|p| {
            p.in_flight
                .max(p.queue_depth)
                .max(f64::from(p.cap.unwrap_or(0)))
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let y = |v: f64| top + (1.0 - v / ymax) * (h - top - bottom);
    let mut svg = format!(
        "<svg id=\"timeline\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"in flight, cap and queue depth over time, with idle gaps\">\n"
    );
    for g in &rep.gaps {
        let (a, b) = (x(g.start_unix_s), x(g.end_unix_s));
        let _ = writeln!(
            svg,
            "<rect class=\"gap gap-{}\" x=\"{a:.2}\" y=\"{top}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{}\" fill-opacity=\"0.35\"><title>{} gap, {:.3} s, max queue {}</title></rect>",
            esc(&g.cause),
            (b - a).max(1.0),
            h - top - bottom,
            cause_color(&g.cause),
            esc(&g.cause),
            g.seconds,
            g.max_queue_depth
        );
    }
    let path = |f: &dyn Fn(&TimelinePoint) -> Option<f64>| {
        let mut d = String::new();
        for p in tl {
            let Some(v) = f(p) else { continue };
            let (a, b) = (
                x(crate::model::nanos_to_secs(p.start)),
                x(crate::model::nanos_to_secs(p.end)),
            );
            let _ = write!(
                d,
                "{}{a:.2},{:.2} L{b:.2},{:.2} ",
                if d.is_empty() { "M" } else { "L" },
                y(v),
                y(v)
            );
        }
        d
    };
    let _ = writeln!(
        svg,
        "<path class=\"queue\" d=\"{}\" fill=\"none\" stroke=\"#7b4bb7\" stroke-width=\"1.5\"/>",
        path(&|p| Some(p.queue_depth))
    );
    let _ = writeln!(svg, "<path class=\"in-flight\" d=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>", path(&|p| Some(p.in_flight)));
    let _ = writeln!(
        svg,
        "<path class=\"cap\" d=\"{}\" fill=\"none\" stroke=\"#222\" stroke-dasharray=\"5 3\"/>",
        path(&|p| p.cap.map(f64::from))
    );
    // Axes.
    let _ = writeln!(
        svg,
        "<line x1=\"{L}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>",
        h - bottom,
        W - R,
        h - bottom
    );
    let _ = writeln!(
        svg,
        "<text x=\"{L}\" y=\"{:.1}\">{}</text>",
        h - 8.0,
        esc(&utc(s0))
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">+{:.1} s</text>",
        W - R,
        h - 8.0,
        span
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
        L - 4.0,
        y(ymax / 1.1) + 4.0,
        ymax / 1.1
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>",
        L - 4.0,
        y(0.0)
    );
    svg.push_str("</svg>\n");
    svg
}

fn windows_svg(rep: &RunReport) -> String {
    if rep.windows.is_empty() {
        return "<p>No final windows yet.</p>\n".to_string();
    }
    let (h, top, bottom) = (150.0, 14.0, 20.0);
    let (Some(s0), Some(s1)) = (
        rep.windows.first().map(|w| w.start_unix_s),
        rep.windows.last().map(|w| w.end_unix_s),
    ) else {
        return String::new();
    };
    let span = (s1 - s0).max(1e-9);
    let x = |t: f64| L + (t - s0) / span * (W - L - R);
    let tps_max = rep
        .windows
        .iter()
        .filter_map(|w| w.stats.system_tps)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let ih = h - top - bottom;
    let mut svg = format!(
        "<h2>Per window: system TPS (bars) and gap_fraction (line, 0–100 %)</h2>\n<svg id=\"windows-chart\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\n"
    );
    let mut line = String::new();
    let step = rep
        .windows
        .get(1)
        .map_or(span, |w| w.start_unix_s - s0)
        .max(1e-9);
    for w in &rep.windows {
        let tps = w.stats.system_tps.unwrap_or(0.0);
        let a = x(w.start_unix_s);
        let bw = (x(w.start_unix_s + step) - a).max(1.0) * 0.8;
        let bh = tps / tps_max * ih;
        let _ = writeln!(
            svg,
            "<rect class=\"tps\" x=\"{a:.2}\" y=\"{:.2}\" width=\"{bw:.2}\" height=\"{bh:.2}\" fill=\"#9ecae1\"><title>{}: {:.2} tokens/s</title></rect>",
            top + ih - bh,
            esc(&utc(w.start_unix_s)),
            tps
        );
        if let Some(g) = w.stats.gap_fraction {
            let _ = write!(
                line,
                "{}{:.2},{:.2} ",
                if line.is_empty() { "M" } else { "L" },
                a + bw / 2.0,
                top + (1.0 - g) * ih
            );
        }
    }
    if !line.is_empty() {
        let _ = writeln!(svg, "<path class=\"gap-fraction\" d=\"{line}\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>");
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{tps_max:.0}</text>",
        L - 4.0,
        top + 4.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>",
        L - 4.0,
        top + ih
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(esc("a\"b'c&"), "a&quot;b&#39;c&amp;");
        assert_eq!(path_segment("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn run_page_has_one_rect_per_gap_and_escapes_the_run_id() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/small.expected.json"
        ))
        .unwrap();
        let mut report: crate::report::Report = serde_json::from_str(&text).unwrap();
        let mut rep = report.runs.remove(0);
        rep.run_id = "<script>alert(1)</script>".into();
        let html = run_page(&rep, Some(RunPhase::Final), &[]);
        assert_eq!(html.matches("<rect class=\"gap gap-stall\"").count(), 1);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("id=\"gap-fraction\">20.0%"));
        assert!(
            !html.contains("http-equiv=\"refresh\""),
            "final runs do not refresh"
        );
        let live = run_page(&rep, Some(RunPhase::Live), &[]);
        assert!(live.contains("http-equiv=\"refresh\""));
    }
}
