//! The `tpsgap` binary: parses the command line and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tpsgap::cli::analyze::{self, AnalyzeArgs};

#[derive(Parser)]
#[command(
    name = "tpsgap",
    version,
    about = "Tokens-per-second and idle-gap metrics from OpenTelemetry traces of LLM inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the report of OTLP trace export files.
    Analyze(AnalyzeArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => {
            let code = analyze::run(
                &args,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(ExitCode::from(code))
        }
    }
}
