//! `GET /health` (liveness), `GET /ready` (readiness), `GET /metrics`.

use crate::state::{AppState, ReadyStatus};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let checks = state.ready_checks().await;
    let unready = checks
        .iter()
        .any(|c| c.critical && c.status == ReadyStatus::Down);
    let degraded = checks.iter().any(|c| c.status != ReadyStatus::Ok);
    let status = if unready {
        "unready"
    } else if degraded {
        "degraded"
    } else {
        "ready"
    };
    let code = if unready {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        axum::Json(serde_json::json!({
            "status": status,
            "uptime_seconds": state.started.elapsed().as_secs(),
            "checks": checks.as_slice(),
        })),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        uat_telemetry::render(),
    )
}
