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

/// The longest window, step or lateness accepted (30 days): far from the
/// overflow of nanosecond arithmetic, far beyond any useful window.
pub const MAX_SPAN: Duration = Duration::from_secs(30 * 86_400);

/// A duration from 0 to [`MAX_SPAN`].
///
/// # Errors
/// When the text is not a duration or is longer than 30 days.
pub fn parse_bounded(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_SPAN {
        return Err(format!("{s:?}: at most 30 days"));
    }
    Ok(d)
}

/// A duration above 0 and at most [`MAX_SPAN`].
///
/// # Errors
/// When the text is not a duration, is zero, or is longer than 30 days.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    parse_bounded(s)?;
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
    #[arg(long, env = "TPSGAP_WINDOW", default_value = "60s", value_parser = parse_window)]
    pub window: Duration,
    /// Window step S.
    #[arg(long, env = "TPSGAP_STEP", default_value = "10s", value_parser = parse_window)]
    pub step: Duration,
    /// Concurrency cap used when no span carries a `cap` attribute; without
    /// either, gap metrics and utilization are null.
    #[arg(long, env = "TPSGAP_DEFAULT_CAP", value_parser = clap::value_parser!(u32).range(1..))]
    pub default_cap: Option<u32>,
    /// Refill threshold T: a slot left free longer than this while requests
    /// wait is a `stall`, a shorter handoff a `refill`.
    #[arg(long, env = "TPSGAP_REFILL_THRESHOLD", default_value = "100ms", value_parser = parse_bounded)]
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

/// `tpsgap serve` flags. Every flag also reads `TPSGAP_<FLAG>` from the
/// environment, and `--config FILE` (TOML, keys named like the flags)
/// supplies values that neither the command line nor the environment set.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// TOML file with defaults for these flags, e.g. `window = "30s"`.
    #[arg(long, env = "TPSGAP_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "TPSGAP_GRPC_LISTEN", default_value = "127.0.0.1:4317")]
    pub grpc_listen: std::net::SocketAddr,
    /// OTLP/HTTP listen address (`POST /v1/traces`).
    #[arg(long, env = "TPSGAP_HTTP_LISTEN", default_value = "127.0.0.1:4318")]
    pub http_listen: std::net::SocketAddr,
    /// API listen address: web page, JSON API, `/metrics`, `/healthz`.
    #[arg(long, env = "TPSGAP_API_LISTEN", default_value = "127.0.0.1:9464")]
    pub api_listen: std::net::SocketAddr,
    /// OTLP/gRPC endpoint that receives derived metrics and gap spans, e.g.
    /// `http://127.0.0.1:4317` of a Collector (none by default).
    #[arg(long, env = "TPSGAP_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Read spans of existing instrumentation (vLLM, GenAI conventions).
    #[arg(long, value_enum, env = "TPSGAP_PRESET")]
    pub preset: Option<crate::extract::Preset>,
    /// Allowed lateness L: a window is final once the largest timestamp seen
    /// in its run is L past its end.
    #[arg(long, env = "TPSGAP_LATENESS", default_value = "60s", value_parser = parse_bounded)]
    pub lateness: Duration,
    /// A run without a span for this long (wall clock) is finalized.
    #[arg(long, env = "TPSGAP_RUN_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub run_idle_timeout: Duration,
    /// At most this many live runs; spans of further runs are refused with a
    /// retryable status (gRPC UNAVAILABLE, HTTP 503) and counted.
    #[arg(long, env = "TPSGAP_MAX_RUNS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_runs: u64,
    /// At most this many requests per run; spans of further requests are
    /// rejected through partial success and counted.
    #[arg(long, env = "TPSGAP_MAX_REQUESTS_PER_RUN", default_value_t = 1_000_000)]
    pub max_requests_per_run: usize,
    /// Ingest capacity in spans per second (0: unlimited). Over it, gRPC
    /// answers UNAVAILABLE with a RetryInfo delay and HTTP 429 with
    /// Retry-After; OTLP clients retry.
    #[arg(long, env = "TPSGAP_MAX_SPANS_PER_SECOND", default_value_t = 0)]
    pub max_spans_per_second: u64,
    /// At most this many spans in one request (not retryable: INVALID_ARGUMENT / HTTP 400).
    #[arg(long, env = "TPSGAP_MAX_SPANS_PER_BATCH", default_value_t = 100_000)]
    pub max_spans_per_batch: usize,
    /// Longest string attribute value in bytes; a span with a longer one is
    /// rejected through partial success.
    #[arg(long, env = "TPSGAP_MAX_ATTRIBUTE_LENGTH", default_value_t = 65_536)]
    pub max_attribute_length: usize,
    /// Largest accepted OTLP message in bytes (after decompression).
    #[arg(long, env = "TPSGAP_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Finished runs kept queryable in the API: at most this many …
    #[arg(long, env = "TPSGAP_KEEP_FINAL_RUNS", default_value_t = 1_000)]
    pub keep_final_runs: usize,
    /// … for at most this long.
    #[arg(long, env = "TPSGAP_KEEP_FINAL_FOR", default_value = "1h", value_parser = parse_duration)]
    pub keep_final_for: Duration,
    /// File holding a bearer token: every OTLP and API request must send
    /// `authorization: Bearer <token>` (none by default).
    #[arg(long, env = "TPSGAP_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// TLS certificate chain (PEM) for the receivers and the API; with
    /// --tls-key, they speak TLS only.
    #[arg(
        long,
        env = "TPSGAP_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        env = "TPSGAP_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// Origins whose browser pages may send to the OTLP/HTTP receiver
    /// (CORS), comma-separated; `*` in one stands for any characters
    /// (`https://*.example.com`), and `*` alone for every origin. None by
    /// default: browsers may not send.
    #[arg(
        long,
        env = "TPSGAP_HTTP_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub http_cors_allowed_origins: Vec<String>,
    /// CA (PEM) that client certificates must chain to (mTLS); needs --tls-cert.
    #[arg(
        long,
        env = "TPSGAP_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Directory of the write-ahead log: accepted requests are durable
    /// before they are acknowledged, and a restart resumes every live run.
    #[arg(long, env = "TPSGAP_WAL_DIR", value_name = "DIR")]
    pub wal_dir: Option<std::path::PathBuf>,
    /// How often the state is checkpointed and the log truncated (with --wal-dir).
    #[arg(long, env = "TPSGAP_CHECKPOINT_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// OTLP export requests that may wait while the endpoint is down; past
    /// this the oldest are dropped and counted.
    #[arg(long, env = "TPSGAP_EXPORT_BUFFER", default_value_t = 1024)]
    pub export_buffer: usize,
    /// Benchmarks only: answer each export request after this stage
    /// (receive, decode, extract) and keep nothing, to measure what the
    /// stages before it cost.
    #[arg(long, value_enum, hide = true)]
    pub bench_stop_after: Option<crate::ingest::StopAfter>,
}

impl From<&ServeArgs> for crate::serve::ServeConfig {
    fn from(a: &ServeArgs) -> Self {
        crate::serve::ServeConfig {
            live: crate::live::LiveConfig {
                window: WindowConfig::from(&a.window),
                lateness: nanos(a.lateness),
                idle_timeout: a.run_idle_timeout,
                max_runs: usize::try_from(a.max_runs).unwrap_or(usize::MAX),
                max_requests_per_run: a.max_requests_per_run,
                keep_final_runs: a.keep_final_runs,
                keep_final_for: a.keep_final_for,
                report_when_asked_up_to: crate::live::REPORT_WHEN_ASKED_UP_TO,
            },
            otlp_endpoint: a.otlp_endpoint.clone(),
            preset: a.preset,
            auth_token_file: a.auth_token_file.clone(),
            wal_dir: a.wal_dir.clone(),
            checkpoint_interval: a.checkpoint_interval,
            tls: match (&a.tls_cert, &a.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: a.tls_client_ca.clone(),
                }),
                _ => None,
            },
            max_message: a.max_message_bytes,
            cors_allowed_origins: a
                .http_cors_allowed_origins
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            max_spans_per_second: a.max_spans_per_second,
            max_spans_per_batch: a.max_spans_per_batch,
            max_attribute_length: a.max_attribute_length,
            export_buffer: a.export_buffer,
            bench_stop_after: a.bench_stop_after,
            ..crate::serve::ServeConfig::default()
        }
    }
}

/// Errors of the `--config` file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The `--config` file named by the command line or `TPSGAP_CONFIG`.
pub fn config_path(args: &[std::ffi::OsString]) -> Option<std::path::PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(std::path::PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    std::env::var_os("TPSGAP_CONFIG").map(Into::into)
}

/// Reads a TOML config file into `(TPSGAP_<KEY>, value)` pairs. Keys are the
/// flag names (`grpc-listen` or `grpc_listen`); unknown keys are an error.
///
/// # Errors
/// When the file cannot be read, is not TOML, or has unknown keys or values
/// that are not strings, numbers or booleans.
pub fn read_config_file(
    path: &std::path::Path,
    known: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (k, v) in table {
        let flag = k.replace('_', "-");
        if flag == "config" || !known.contains(&flag) {
            return Err(ConfigError::Invalid {
                path: p,
                message: format!(
                    "unknown key {k:?} (keys are the serve flags: {})",
                    known.join(", ")
                ),
            });
        }
        let value = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError::Invalid {
                    path: p,
                    message: format!(
                        "key {k:?}: expected a string, number or boolean, got {other}"
                    ),
                })
            }
        };
        out.push((
            format!("TPSGAP_{}", flag.replace('-', "_").to_ascii_uppercase()),
            value,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_keys_become_env_pairs() {
        let dir = std::env::temp_dir().join(format!("tpsgap-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "window = \"30s\"\ndefault_cap = 8\nmax-runs = 5\n").unwrap();
        let known: Vec<String> = ["window", "default-cap", "max-runs"]
            .map(String::from)
            .to_vec();
        let mut got = read_config_file(&f, &known).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("TPSGAP_DEFAULT_CAP".to_string(), "8".to_string()),
                ("TPSGAP_MAX_RUNS".to_string(), "5".to_string()),
                ("TPSGAP_WINDOW".to_string(), "30s".to_string()),
            ]
        );
        std::fs::write(&f, "windw = \"30s\"\n").unwrap();
        let e = read_config_file(&f, &known).unwrap_err().to_string();
        assert!(e.contains("unknown key \"windw\""), "{e}");
        std::fs::write(&f, "window = [1]\n").unwrap();
        assert!(read_config_file(&f, &known).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
