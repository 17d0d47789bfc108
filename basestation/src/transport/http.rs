//! Health, readiness and metrics on the public port.

use crate::relay::Relay;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// `/healthz`, `/readyz`, `/metrics`.
pub fn router(relay: Relay) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(relay)
}

/// Ready while serving; not ready once shutdown began, so a load balancer stops sending.
async fn readyz(State(relay): State<Relay>) -> impl IntoResponse {
    if relay.shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(relay): State<Relay>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        relay.metrics().render(),
    )
}
