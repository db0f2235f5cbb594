//! `tpsgap compare BEFORE AFTER`: the acceptance criteria of the TPS
//! methodology as a CI gate. A change passes when
//! 1. system TPS improved,
//! 2. without reducing the success rate,
//! 3. the idle share of the backlog (gap seconds / backlog seconds) went
//!    down where a backlog existed, so idle time was removed, not shifted,
//! 4. and the retry rate did not increase.

use std::io::{self, Write};

use clap::Args;

use super::analyze::load;
use super::table::pct;
use crate::config::WindowArgs;
use crate::input::InputFormat;
use crate::report::{Report, RunReport};
use crate::window::WindowConfig;

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The baseline: a tpsgap JSON report or an OTLP trace export.
    pub before: String,
    /// The candidate: a tpsgap JSON report or an OTLP trace export.
    pub after: String,
    /// Compare only this run (default: all runs of each input, pooled).
    #[arg(long)]
    pub run: Option<String>,
    /// How much worse the success rate may get (absolute, e.g. 0.001).
    #[arg(long, default_value_t = 0.0)]
    pub tolerance: f64,
    #[command(flatten)]
    pub window: WindowArgs,
}

/// Pooled figures of one side.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub seconds: f64,
    pub output_tokens: f64,
    pub gap_seconds: f64,
    pub backlog_seconds: f64,
    pub succeeded: f64,
    pub failed: f64,
    pub requests: f64,
    pub retries: f64,
}

impl Figures {
    pub fn of(runs: &[&RunReport]) -> Figures {
        let mut f = Figures::default();
        for r in runs {
            let t = &r.totals;
            f.seconds += t.effective_seconds;
            f.output_tokens += t.output_tokens as f64;
            f.gap_seconds += t.gap_seconds.unwrap_or(0.0);
            f.backlog_seconds += t.backlog_seconds;
            f.succeeded += t.succeeded as f64;
            f.failed += t.failed as f64;
            f.requests += t.requests as f64;
            f.retries += t.retry_rate.unwrap_or(0.0) * t.requests as f64;
        }
        f
    }
    pub fn system_tps(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.output_tokens / self.seconds)
    }
    pub fn success_rate(&self) -> Option<f64> {
        (self.succeeded + self.failed > 0.0)
            .then(|| self.succeeded / (self.succeeded + self.failed))
    }
    pub fn gap_fraction(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.gap_seconds / self.seconds)
    }
    /// Idle share of the backlog: gap seconds / backlog seconds.
    pub fn idle_backlog(&self) -> Option<f64> {
        (self.backlog_seconds > 0.0).then(|| self.gap_seconds / self.backlog_seconds)
    }
    pub fn retry_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.retries / self.requests)
    }
}

/// One criterion's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub before: String,
    pub after: String,
    pub pass: bool,
    pub reason: String,
}

/// Applies the criteria.
pub fn judge(b: &Figures, a: &Figures, tolerance: f64) -> Vec<Check> {
    let f2 = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let mut out = Vec::new();
    let (tb, ta) = (b.system_tps(), a.system_tps());
    let pass = matches!((tb, ta), (Some(x), Some(y)) if y > x);
    out.push(Check {
        name: "system TPS improved",
        before: f2(tb),
        after: f2(ta),
        pass,
        reason: match (tb, ta) {
            (Some(x), Some(y)) if x > 0.0 => format!("{:+.1}%", (y / x - 1.0) * 100.0),
            _ => "no active time to compare".to_string(),
        },
    });
    let (sb, sa) = (b.success_rate(), a.success_rate());
    let pass = match (sb, sa) {
        (Some(x), Some(y)) => y >= x - tolerance,
        (None, _) => true,
        (Some(_), None) => false,
    };
    out.push(Check {
        name: "success rate not reduced",
        before: pct(sb),
        after: pct(sa),
        pass,
        reason: if pass {
            "ok".into()
        } else {
            "more requests failed".into()
        },
    });
    let (ib, ia) = (b.idle_backlog(), a.idle_backlog());
    let (pass, reason) = match (ib, ia) {
        (None, None) => (true, "no backlog on either side".to_string()),
        (None, Some(y)) => (y == 0.0, "a backlog appeared".to_string()),
        (Some(x), None) => (
            true,
            format!("backlog removed (was {:.1}% idle)", x * 100.0),
        ),
        (Some(0.0), Some(y)) => (y == 0.0, "no idle time before".to_string()),
        (Some(x), Some(y)) => (
            y < x,
            format!(
                "gap_fraction {} → {}",
                pct(b.gap_fraction()),
                pct(a.gap_fraction())
            ),
        ),
    };
    out.push(Check {
        name: "idle time under backlog decreased",
        before: pct(ib),
        after: pct(ia),
        pass,
        reason,
    });
    let (rb, ra) = (b.retry_rate(), a.retry_rate());
    let pass = match (rb, ra) {
        (Some(x), Some(y)) => y <= x + 1e-12,
        (_, None) => true,
        (None, Some(y)) => y == 0.0,
    };
    out.push(Check {
        name: "retry rate not increased",
        before: f2(rb),
        after: f2(ra),
        pass,
        reason: if pass {
            "ok".into()
        } else {
            "more retries per request".into()
        },
    });
    out
}

/// Errors of `compare`.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{path}: {message}")]
    Input { path: String, message: String },
}

/// A report from a tpsgap JSON report file, else by analyzing the file as an
/// OTLP export.
fn side(path: &str, cfg: &WindowConfig) -> Result<Report, CompareError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(r) = serde_json::from_str::<Report>(&text) {
            return Ok(r);
        }
    }
    let (store, problems) = load(&[path.to_string()], InputFormat::Auto, None);
    if let Some(p) = problems.first() {
        if store.runs.is_empty() {
            return Err(CompareError::Input {
                path: path.to_string(),
                message: format!("neither a tpsgap report nor an OTLP export ({p})"),
            });
        }
    }
    Ok(store.report(cfg))
}

/// Runs `compare`: prints the verdict; returns the exit code (0 pass, 1 fail).
///
/// # Errors
/// When an input cannot be read or has no such run.
pub fn run(args: &CompareArgs, out: &mut impl Write) -> Result<u8, CompareError> {
    let cfg = WindowConfig::from(&args.window);
    let mut figs = Vec::new();
    for path in [&args.before, &args.after] {
        let rep = side(path, &cfg)?;
        let runs: Vec<&RunReport> = rep
            .runs
            .iter()
            .filter(|r| args.run.as_ref().is_none_or(|id| *id == r.run_id))
            .collect();
        if runs.is_empty() {
            return Err(CompareError::Input {
                path: path.clone(),
                message: match &args.run {
                    Some(id) => format!("no run {id:?}"),
                    None => "no runs".to_string(),
                },
            });
        }
        figs.push(Figures::of(&runs));
    }
    let checks = judge(&figs[0], &figs[1], args.tolerance);
    writeln!(out, "{:<36} {:>10} {:>10}", "criterion", "before", "after")?;
    for c in &checks {
        writeln!(
            out,
            "{:<36} {:>10} {:>10}  {} {}",
            c.name,
            c.before,
            c.after,
            if c.pass { "PASS" } else { "FAIL" },
            c.reason
        )?;
    }
    let pass = checks.iter().all(|c| c.pass);
    writeln!(out, "verdict: {}", if pass { "PASS" } else { "FAIL" })?;
    Ok(u8::from(!pass))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figs(
        seconds: f64,
        tokens: f64,
        gap: f64,
        backlog: f64,
        ok: f64,
        failed: f64,
        retries: f64,
    ) -> Figures {
        Figures {
            seconds,
            output_tokens: tokens,
            gap_seconds: gap,
            backlog_seconds: backlog,
            succeeded: ok,
            failed,
            requests: ok + failed,
            retries,
        }
    }

    #[test]
    fn criteria_by_hand() {
        let before = figs(100.0, 10_000.0, 10.0, 40.0, 99.0, 1.0, 5.0);
        // TPS 100 → 120, idle share 25% → 10%, success 99% → 99%, retries 0.05 → 0.04.
        let good = figs(100.0, 12_000.0, 4.0, 40.0, 99.0, 1.0, 4.0);
        assert!(judge(&before, &good, 0.0).iter().all(|c| c.pass));
        assert_eq!(judge(&before, &good, 0.0)[0].reason, "+20.0%");
        // Gap shifted, not removed: idle share of the backlog unchanged.
        let shifted = figs(100.0, 12_000.0, 10.0, 40.0, 99.0, 1.0, 5.0);
        let c = judge(&before, &shifted, 0.0);
        assert!(!c[2].pass && c[0].pass && c[1].pass && c[3].pass);
        // More failures or retries fail.
        assert!(
            !judge(
                &before,
                &figs(100.0, 12_000.0, 4.0, 40.0, 97.0, 3.0, 5.0),
                0.0
            )[1]
            .pass
        );
        assert!(
            judge(
                &before,
                &figs(100.0, 12_000.0, 4.0, 40.0, 97.0, 3.0, 5.0),
                0.05
            )[1]
            .pass
        );
        assert!(
            !judge(
                &before,
                &figs(100.0, 12_000.0, 4.0, 40.0, 99.0, 1.0, 9.0),
                0.0
            )[3]
            .pass
        );
        // TPS down fails.
        assert!(
            !judge(
                &before,
                &figs(100.0, 9_000.0, 4.0, 40.0, 99.0, 1.0, 4.0),
                0.0
            )[0]
            .pass
        );
    }
}
