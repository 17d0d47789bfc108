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

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics for scrapers that ask for it (Prometheus does); the classic Prometheus text
/// type otherwise, whose parser reads this body too (`# EOF` is a comment to it).
async fn metrics(State(relay): State<Relay>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        PROMETHEUS_TEXT
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        relay.metrics().render(),
    )
}
