//! The API port: `/metrics`, the JSON API, health checks. Read-only.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::prom::PromMetrics;
use super::web;
use crate::live::{Engine, RunPhase, RunSummary};
use crate::report::RunReport;

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub prom: Arc<PromMetrics>,
}

#[derive(Serialize)]
struct RunList {
    runs: Vec<RunSummary>,
}

/// `GET /api/v1/runs/{run_id}`: the SPEC §4 run object plus its state.
#[derive(Serialize)]
struct RunView {
    #[serde(flatten)]
    report: RunReport,
    state: RunPhase,
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

/// The API router (read-only; behind the bearer-token check when a token
/// is set).
pub fn router(state: ApiState, token: Option<crate::auth::Token>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/runs/{run_id}", get(run_page))
        .route("/metrics", get(metrics))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{run_id}", get(run))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .layer(axum::middleware::from_fn_with_state(
            token,
            crate::auth::require,
        ))
        .with_state(state)
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.prom.encode(),
    )
        .into_response()
}

/// Runs `f` on the blocking pool: a live run's report sweeps all its
/// requests, which must not hold up the receivers sharing the runtime's
/// worker threads.
async fn off_runtime<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&Engine) -> T + Send + 'static,
) -> Result<T, Response> {
    let engine = Arc::clone(&s.engine);
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(ApiError {
                    error: format!("computing the answer failed: {e}"),
                }),
            )
                .into_response()
        })
}

async fn runs(State(s): State<ApiState>) -> Response {
    match off_runtime(&s, Engine::list).await {
        Ok(runs) => Json(RunList { runs }).into_response(),
        Err(e) => e,
    }
}

async fn run(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    let view = match off_runtime(&s, move |e| e.run_view(&id2)).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    match view {
        Some((report, state)) => Json(RunView { report, state }).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ApiError {
                error: format!("no run {id:?}"),
            }),
        )
            .into_response(),
    }
}

async fn index(State(s): State<ApiState>) -> Response {
    match off_runtime(&s, Engine::list).await {
        Ok(runs) => Html(web::index(&runs)).into_response(),
        Err(e) => e,
    }
}

async fn run_page(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    let page = match off_runtime(&s, move |e| e.run_page(&id2)).await {
        Ok(p) => p,
        Err(e) => return e,
    };
    match page {
        Some((report, state, timeline)) => Html(web::run_page(&report, Some(state), &timeline)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Html(format!("<!DOCTYPE html><title>not found</title><p>No run {}. <a href=\"/\">All runs</a></p>", web::esc(&id))),
        )
            .into_response(),
    }
}
