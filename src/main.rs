//! The `tpsgap` binary: parses the command line and calls the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tpsgap::cli::analyze::{self, AnalyzeArgs};
use tpsgap::cli::bench::{self, BenchArgs};
use tpsgap::cli::compare::{self, CompareArgs};
use tpsgap::cli::demo::{self, DemoArgs};
use tpsgap::cli::simulate::{self, SimulateArgs};
use tpsgap::config::{config_path, read_config_file, ServeArgs};
use tpsgap::serve::{self, Listeners, ServeConfig};

/// jemalloc, as in other long-running telemetry services. The receivers
/// allocate request records and the engine's tick frees them: glibc's
/// allocator takes the arena's lock for each such free from another thread,
/// and jemalloc does not (see BENCHMARKS.md, Scaling). It also keeps freed
/// memory for reuse a while (ten seconds) before returning it to the kernel.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Receive spans over OTLP and export live metrics.
    Serve(ServeArgs),
    /// Simulate an LLM serving run with injected idle gaps and send its spans.
    Simulate(SimulateArgs),
    /// See it work: the service, a simulated run with a stall, live windows.
    Demo(DemoArgs),
    /// Gate a rollout: did BEFORE → AFTER raise TPS without idling, failing or retrying more?
    Compare(CompareArgs),
    /// Measure the service: send pre-serialized OTLP load and report server CPU per million spans, spans/s and peak RSS.
    Bench(BenchArgs),
}

/// Applies the `--config` TOML file as environment defaults: command-line
/// flags beat environment variables, which beat the file.
fn apply_config_file() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(());
    }
    let Some(path) = config_path(&args) else {
        return Ok(());
    };
    let cmd = Cli::command();
    let known: Vec<String> = cmd
        .find_subcommand("serve")
        .map(|s| {
            s.get_arguments()
                .filter_map(|a| a.get_long().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in read_config_file(&path, &known)? {
        if std::env::var_os(&k).is_none() {
            // Single-threaded here: no other thread reads the environment yet.
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("signal received");
}

async fn serve_main(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServeConfig::from(&args);
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let listeners = Listeners {
        grpc: bind(args.grpc_listen).await?,
        http: bind(args.http_listen).await?,
        api: bind(args.api_listen).await?,
    };
    // The bound addresses, so that port 0 tells which port was chosen.
    let local = |l: &tokio::net::TcpListener| {
        l.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    };
    tracing::info!(
        grpc = %local(&listeners.grpc),
        http = %local(&listeners.http),
        api = %local(&listeners.api),
        otlp_endpoint = ?args.otlp_endpoint,
        "tpsgap serving: OTLP/gRPC, OTLP/HTTP, API (/metrics, /api/v1/runs)"
    );
    serve::run(cfg, listeners, shutdown_signal()).await?;
    Ok(())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    apply_config_file()?;
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => {
            // Buffered: a report has many lines, and stdout flushes each one.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let code = analyze::run(&args, &mut out, &mut std::io::stderr().lock())?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::from(code))
        }
        Command::Serve(args) => {
            runtime()?.block_on(serve_main(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare(args) => {
            let code = compare::run(&args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::from(code))
        }
        Command::Demo(args) => {
            runtime()?.block_on(demo::run(&args, &mut std::io::stdout()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            runtime()?.block_on(bench::run(&args, &mut std::io::stdout().lock()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            runtime()?.block_on(simulate::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
