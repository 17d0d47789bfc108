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

/// Ready while serving and the store answers; not ready once shutdown began, so a load
/// balancer stops sending, nor while the store is unreachable, since every handshake and
/// snapshot would then be refused (1013). The station itself keeps running and turns ready
/// again when the store answers: restarting it would not bring the database back.
async fn readyz(State(relay): State<Relay>) -> impl IntoResponse {
    if relay.shutdown().is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    match relay.store_ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unreachable: {error}; check the database and the network to it\n"),
        ),
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
