//! Logs, metrics and the health endpoints: `/healthz` (the process answers), `/readyz` (the
//! API server answered and, with several replicas, this one either leads or stands by ready to
//! take over), `/metrics` (Prometheus text).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The outcome of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, or the failing step (`references`, `apply`, `status`).
    pub result: &'static str,
}

/// A BaseStation, for its own series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StationLabel {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciliations: Family<ResultLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
    last_backup: Family<StationLabel, Gauge>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("zbase_operator");
        let reconciliations = Family::<ResultLabel, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciles of BaseStations, by result",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let last_backup = Family::<StationLabel, Gauge>::default();
        registry.register(
            "last_backup_timestamp_seconds",
            "When the last scheduled backup of a BaseStation succeeded (Unix time); alert on its age",
            last_backup.clone(),
        );
        for result in ["ok", "references", "apply", "status"] {
            let _ = reconciliations.get_or_create(&ResultLabel { result });
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                reconciliations,
                duration,
                leader,
                last_backup,
                ready: AtomicBool::new(false),
            }),
        }
    }
}

/// Records a reconcile's duration when dropped, whatever its outcome (which is counted by
/// [`Metrics::reconcile_ok`] or [`Metrics::reconcile_failed`]).
pub struct ReconcileTimer {
    metrics: Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .inner
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Starts timing a reconcile.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            start: Instant::now(),
        }
    }

    /// Counts a reconcile that succeeded.
    pub fn reconcile_ok(&self) {
        self.inner
            .reconciliations
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
    }

    /// Counts a failed reconcile under its step.
    pub fn reconcile_failed(&self, step: &'static str) {
        self.inner
            .reconciliations
            .get_or_create(&ResultLabel { result: step })
            .inc();
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// When `station`'s last backup succeeded, as Unix seconds.
    pub fn set_last_backup(&self, station: StationLabel, unix_seconds: i64) {
        self.inner
            .last_backup
            .get_or_create(&station)
            .set(unix_seconds);
    }

    /// Marks the operator ready (it reached the API server).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// Serves health and metrics on `listen` until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(metrics): State<Metrics>) -> impl IntoResponse {
    if metrics.inner.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the Kubernetes API server has not answered yet\n",
        )
    }
}

async fn metrics_text(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
