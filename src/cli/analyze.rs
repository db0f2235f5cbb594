//! `tpsgap analyze FILE...`: the offline report of OTLP trace exports.

use std::fs::File;
use std::io::{self, Write};

use clap::{Args, ValueEnum};

use crate::config::WindowArgs;
use crate::extract::{AttributeNames, Extracted, Extractor, Preset};
use crate::input::FileSpans;
use crate::input::{read_traces, InputFormat};
use crate::join::Store;
use crate::report::Report;
use crate::window::WindowConfig;

/// How the report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The SPEC §4 JSON report.
    Json,
    /// A readable terminal table of runs, windows and gaps.
    Table,
    /// One self-contained HTML page with each run's timeline.
    Html,
}

#[derive(Args, Clone, Debug)]
pub struct AnalyzeArgs {
    /// OTLP trace exports: Collector file-exporter JSON lines or binary
    /// protobuf (optionally gzip-compressed); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
    /// Input encoding; `auto` decides from the first bytes of each file.
    #[arg(long, value_enum, default_value = "auto")]
    pub input_format: InputFormat,
    /// Read spans of existing instrumentation (vLLM, GenAI conventions).
    #[arg(long, value_enum, env = "TPSGAP_PRESET")]
    pub preset: Option<Preset>,
    #[command(flatten)]
    pub window: WindowArgs,
}

/// What an analysis found besides the report.
#[derive(Debug, Default)]
pub struct Analysis {
    pub report: Report,
    /// Malformed lines/messages and rejected spans, as `location: reason`.
    pub problems: Vec<String>,
}

/// Reads every input into one store and computes the report. Problems are
/// collected, never fatal.
pub fn analyze(files: &[String], format: InputFormat, cfg: &WindowConfig) -> Analysis {
    let (store, problems) = load(files, format, None);
    Analysis {
        report: store.report(cfg),
        problems,
    }
}

/// Reads every input into one join store; returns it with the problems met.
pub fn load(files: &[String], format: InputFormat, preset: Option<Preset>) -> (Store, Vec<String>) {
    let extractor = Extractor::with_preset(preset, &AttributeNames::default());
    let store = Store::new();
    let mut problems = Vec::new();
    for name in files {
        let mut sink = |loc: &str, spans: FileSpans<'_>| {
            let mut apply = |e: Extracted<'_>| {
                if let Extracted::Rejected(r) = &e {
                    problems.push(format!("{loc}: {r}"));
                }
                store.apply(&e);
            };
            if let Err(e) = spans.extract(&extractor, &mut apply) {
                problems.push(format!("{loc}: not a protobuf trace export: {e}"));
            }
        };
        let mut errors = Vec::new();
        let mut on_error = |e: crate::input::InputError| errors.push(e.to_string());
        if name == "-" {
            read_traces(io::stdin().lock(), "-", format, &mut sink, &mut on_error);
        } else {
            match File::open(name) {
                Ok(f) => read_traces(f, name, format, &mut sink, &mut on_error),
                Err(e) => on_error(crate::input::InputError {
                    location: name.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        problems.append(&mut errors);
    }
    (store, problems)
}

/// Runs `analyze`: prints the report to `out`, problems to `err`.
/// Returns the exit code: 0, or 1 when any input was malformed or rejected.
///
/// # Errors
/// When writing the output fails.
pub fn run(args: &AnalyzeArgs, out: &mut impl Write, err: &mut impl Write) -> io::Result<u8> {
    let cfg = WindowConfig::from(&args.window);
    let (store, problems) = load(&args.files, args.input_format, args.preset);
    for p in &problems {
        writeln!(err, "{p}")?;
    }
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &store.report(&cfg))
                .map_err(io::Error::other)?;
            writeln!(out)?;
        }
        OutputFormat::Table => crate::cli::table::write(out, &store.report(&cfg))?,
        OutputFormat::Html => {
            let pages = store.pages(&cfg, crate::export::web::TIMELINE_COLUMNS);
            out.write_all(crate::export::web::report_page(&pages).as_bytes())?;
        }
    }
    Ok(u8::from(!problems.is_empty()))
}
