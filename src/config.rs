//! Command-line arguments → validated configuration.

use std::time::Duration;

use clap::Args;

use crate::model::Nanos;
use crate::window::WindowConfig;

/// Parses a duration like `60s`, `500ms` or `1m 30s`.
///
/// # Errors
/// When the text is not a duration or the duration is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(d)
}

/// Nanoseconds of a duration, saturating at `i64::MAX`.
pub fn nanos(d: Duration) -> Nanos {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Window and gap settings shared by `analyze` and `serve`.
#[derive(Args, Clone, Debug)]
pub struct WindowArgs {
    /// Window length W (windows are [k·S, k·S + W), aligned to the Unix epoch).
    #[arg(long, env = "TPSGAP_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,
    /// Window step S.
    #[arg(long, env = "TPSGAP_STEP", default_value = "10s", value_parser = parse_duration)]
    pub step: Duration,
    /// Concurrency cap used when no span carries a `cap` attribute; without
    /// either, gap metrics and utilization are null.
    #[arg(long, env = "TPSGAP_DEFAULT_CAP", value_parser = clap::value_parser!(u32).range(1..))]
    pub default_cap: Option<u32>,
    /// Refill threshold T: a slot left free longer than this while requests
    /// wait is a `stall`, a shorter handoff a `refill`.
    #[arg(long, env = "TPSGAP_REFILL_THRESHOLD", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub refill_threshold: Duration,
}

impl From<&WindowArgs> for WindowConfig {
    fn from(a: &WindowArgs) -> WindowConfig {
        WindowConfig {
            window: nanos(a.window),
            step: nanos(a.step),
            default_cap: a.default_cap,
            refill_threshold: nanos(a.refill_threshold),
            ..WindowConfig::default()
        }
    }
}
