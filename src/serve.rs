//! `tpsgap serve`: wires receivers, the live engine and the exporters.
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests
//! start it on port 0. Shutdown is staged, each stage with a deadline: stop
//! the receivers → finalize every run → flush the exporters → stop the API.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::export::api::{self, ApiState};
use crate::export::otlp::{self, PushConfig, Pusher};
use crate::export::prom::{ExportCounters, PromMetrics};
use crate::extract::{AttributeNames, Extractor};
use crate::ingest::{grpc, http, Pipeline};
use crate::live::{Engine, LiveConfig, Now};
use crate::wal::Wal;

/// Validated settings of the service.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub live: LiveConfig,
    pub attributes: AttributeNames,
    /// Read spans of existing instrumentation instead of tpsgap's attributes.
    pub preset: Option<crate::extract::Preset>,
    /// A file with the bearer token every receiver and API request must carry.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// TLS for the receivers and the API (none: plain TCP).
    pub tls: Option<crate::tls::TlsFiles>,
    /// The write-ahead log's directory (none: no log).
    pub wal_dir: Option<std::path::PathBuf>,
    /// How often the engine's state is checkpointed and the log truncated.
    pub checkpoint_interval: Duration,
    /// Where derived metrics and gap spans are pushed (OTLP/gRPC), if anywhere.
    pub otlp_endpoint: Option<String>,
    /// Largest accepted OTLP message, bytes (default 64 MiB).
    pub max_message: usize,
    /// Origins whose browser pages may send to the OTLP/HTTP receiver
    /// (CORS; `*` stands for any characters); none by default.
    pub cors_allowed_origins: Vec<String>,
    /// Ingest capacity, spans per second (0: unlimited).
    pub max_spans_per_second: u64,
    /// Most spans in one request (default 100,000).
    pub max_spans_per_batch: usize,
    /// Longest string attribute value, bytes (default 64 KiB).
    pub max_attribute_length: usize,
    /// Export requests that may wait for a down endpoint (default 1024).
    pub export_buffer: usize,
    /// Benchmarks only: where the receivers stop (none: nowhere).
    pub bench_stop_after: Option<crate::ingest::StopAfter>,
    /// How often final windows are looked for (default 200 ms).
    pub tick: Duration,
    /// Deadline of each shutdown stage (default 10 s).
    pub stage_deadline: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            live: LiveConfig::default(),
            attributes: AttributeNames::default(),
            preset: None,
            auth_token_file: None,
            tls: None,
            wal_dir: None,
            checkpoint_interval: Duration::from_secs(60),
            otlp_endpoint: None,
            max_message: 64 << 20,
            cors_allowed_origins: Vec::new(),
            max_spans_per_second: 0,
            max_spans_per_batch: 100_000,
            max_attribute_length: 65_536,
            export_buffer: 1024,
            bench_stop_after: None,
            tick: Duration::from_millis(200),
            stage_deadline: Duration::from_secs(10),
        }
    }
}

/// The three listening sockets.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub api: TcpListener,
}

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--wal-dir {0}")]
    Wal(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("--auth-token-file {0}")]
    Auth(String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("{0} server: {1}")]
    Server(&'static str, String),
}

/// Where final output goes.
struct Sinks {
    prom: Arc<PromMetrics>,
    pusher: Option<Pusher>,
}

impl Sinks {
    /// Takes what became final (see [`Engine::tick`]) to `/metrics` and the
    /// OTLP pusher, one run at a time, then drops the series of the runs
    /// that left the API.
    fn tick(&self, engine: &Engine, finalize_all: bool) {
        let forget = || {
            for id in engine.take_forgotten() {
                self.prom.forget(&id);
            }
        };
        engine.tick_each(now(), finalize_all, |out| {
            self.prom.update(&out);
            if let Some(p) = &self.pusher {
                if p.tx.try_send(out).is_err() {
                    tracing::warn!("OTLP export queue full; output dropped");
                }
            }
            // As runs end, those leaving the API leave `/metrics` too (when
            // thousands end at once, their series are never all held).
            forget();
        });
        forget();
    }
}

fn now() -> Now {
    Now::system(tokio::time::Instant::now().into_std())
}

/// Serves an axum router on a listener, over TLS when configured.
fn spawn_http(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, ServeError> {
    Ok(match tls {
        Some(cfg) => {
            let l = crate::tls::TlsListener::new(listener, cfg)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
            tokio::spawn(
                axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .into_future(),
            )
        }
        None => tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .into_future(),
        ),
    })
}

/// Runs the service until `shutdown` completes, then shuts down in stages.
///
/// # Errors
/// When the exporter cannot be set up or a server fails.
/// HTTP/2 receive windows and frame size of the gRPC receiver.
const GRPC_STREAM_WINDOW: u32 = 4 << 20;
const GRPC_CONNECTION_WINDOW: u32 = 16 << 20;
const GRPC_MAX_FRAME: u32 = 1 << 20;

pub async fn run(
    cfg: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let token = cfg
        .auth_token_file
        .as_deref()
        .map(crate::auth::Token::from_file)
        .transpose()
        .map_err(ServeError::Auth)?;
    let engine = Arc::new(Engine::new(cfg.live.clone()));
    let export_counters = Arc::new(ExportCounters::default());
    let prom = Arc::new(PromMetrics::new(engine.clone(), export_counters.clone()));
    let pusher = match &cfg.otlp_endpoint {
        Some(ep) => Some(
            otlp::spawn(
                PushConfig {
                    endpoint: ep.clone(),
                    buffer: cfg.export_buffer,
                    timeout: Duration::from_secs(10),
                    flush_deadline: cfg.stage_deadline,
                },
                export_counters.clone(),
            )
            .map_err(ServeError::Exporter)?,
        ),
        None => None,
    };
    let sinks = Sinks {
        prom: prom.clone(),
        pusher,
    };
    let mut pipeline = Pipeline::new(
        Extractor::with_preset(cfg.preset, &cfg.attributes)
            .max_attribute_length(cfg.max_attribute_length),
        engine.clone(),
        cfg.max_spans_per_second,
        cfg.max_spans_per_batch,
    );
    pipeline.stop_after = cfg.bench_stop_after;
    if let Some(dir) = &cfg.wal_dir {
        let (wal, rec) =
            Wal::open(dir).map_err(|e| ServeError::Wal(format!("{}: {e}", dir.display())))?;
        let restored = rec.snapshot.is_some();
        if let Some(snap) = rec.snapshot {
            engine.restore(snap);
        }
        for bytes in &rec.records {
            pipeline.replay(bytes);
        }
        tracing::info!(
            dir = %dir.display(),
            checkpoint = restored,
            replayed = rec.records.len(),
            torn = rec.torn,
            live_runs = engine.live_runs(),
            "write-ahead log recovered"
        );
        pipeline.wal = Some(wal);
    }
    let wal = pipeline.wal.clone();
    let pipeline = Arc::new(pipeline);

    let (stop_rx_tx, stop_rx) = watch::channel(false);
    let (stop_api_tx, stop_api) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    // HTTP/2 flow control must not be what limits a batch exporter: windows
    // that hold several 512-span requests per stream and many per connection.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
        .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
        .max_frame_size(Some(GRPC_MAX_FRAME));
    let mut rustls = None;
    if let Some(t) = &cfg.tls {
        builder = builder
            .tls_config(t.tonic().map_err(ServeError::Tls)?)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
        rustls = Some(t.rustls().map_err(ServeError::Tls)?);
    }
    let grpc_server = builder
        .layer(tower::util::MapResponseLayer::new(
            grpc::too_large_is_not_retryable,
        ))
        .add_service(grpc::service(
            pipeline.clone(),
            cfg.max_message,
            token.clone(),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listeners.grpc),
            wait(stop_rx.clone()),
        );
    let grpc_task = tokio::spawn(grpc_server);
    let http_router = http::router(pipeline.clone(), cfg.max_message, token.clone())
        .layer(http::cors(&cfg.cors_allowed_origins));
    let http_task = spawn_http(
        listeners.http,
        rustls.clone(),
        http_router,
        wait(stop_rx.clone()),
    )?;
    let api_router = api::router(
        ApiState {
            engine: engine.clone(),
            prom,
        },
        token,
    );
    let api_task = spawn_http(listeners.api, rustls, api_router, wait(stop_api))?;

    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoints = tokio::time::interval(cfg.checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checkpoints.reset();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => sinks.tick(&engine, false),
            _ = checkpoints.tick(), if wal.is_some() => {
                if let Some(w) = &wal {
                    if let Err(e) = w.checkpoint(|| engine.snapshot()).await {
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                }
            }
        }
    }

    tracing::info!("shutting down: stopping receivers");
    let _ = stop_rx_tx.send(true);
    let d = cfg.stage_deadline;
    let grpc_res = tokio::time::timeout(d, grpc_task).await;
    let http_res = tokio::time::timeout(d, http_task).await;
    if let Some(w) = &wal {
        // With a write-ahead log, live runs stay live: a restart resumes them.
        tracing::info!("exporting what is final, then checkpointing");
        sinks.tick(&engine, false);
        if let Err(e) = w.checkpoint(|| engine.snapshot()).await {
            tracing::error!(error = %e, "checkpoint failed");
        }
    } else {
        tracing::info!("finalizing every run");
        sinks.tick(&engine, true);
    }
    if let Some(p) = sinks.pusher {
        tracing::info!("flushing the OTLP exporter");
        drop(p.tx);
        if tokio::time::timeout(d + Duration::from_secs(1), p.task)
            .await
            .is_err()
        {
            tracing::warn!("OTLP exporter did not finish flushing in time");
        }
    }
    let _ = stop_api_tx.send(true);
    let _ = tokio::time::timeout(d, api_task).await;
    if let Ok(Ok(Err(e))) = grpc_res {
        return Err(ServeError::Server("gRPC", e.to_string()));
    }
    if let Ok(Ok(Err(e))) = http_res {
        return Err(ServeError::Server("HTTP", e.to_string()));
    }
    tracing::info!("stopped");
    Ok(())
}
