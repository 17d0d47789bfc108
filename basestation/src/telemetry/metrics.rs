//! Prometheus metrics, served as text on `/metrics`. Label values are fixed sets (frame code
//! names, close reasons, transports): never identifiers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Instant;

/// A frame code label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The contract's name of the code.
    pub code: &'static str,
}

/// A close reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `CloseReason::label`.
    pub reason: &'static str,
}

/// A transport label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `websocket` or `grpc`.
    pub transport: &'static str,
}

/// Which way a frame crossed the internal port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `out`: sent by this pod to a resource's home; `in`: received from another pod.
    pub direction: &'static str,
}

/// A TLS port label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    /// `public` or `internal`.
    pub port: &'static str,
}

/// The outcome of noticing changed TLS files.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    /// `public` or `internal`.
    pub port: &'static str,
    /// `loaded` or `refused`.
    pub result: &'static str,
}

/// Every metric the station exports.
pub struct Metrics {
    registry: Registry,
    /// Open client connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Verified peers across all resources.
    pub verified_peers: Gauge,
    /// Resources with a task in memory.
    pub resources_active: Gauge,
    /// Frames received, by code.
    pub frames_in: Family<CodeLabel, Counter>,
    /// Frames sent, by code.
    pub frames_out: Family<CodeLabel, Counter>,
    /// Bytes received in frames, by code.
    pub bytes_in: Family<CodeLabel, Counter>,
    /// Bytes sent in frames, by code.
    pub bytes_out: Family<CodeLabel, Counter>,
    /// Connections ended, by reason.
    pub terminations: Family<ReasonLabel, Counter>,
    /// Seconds from a snapshot write's submission to its durable commit.
    pub store_write_seconds: Histogram,
    /// Connections refused because their IP failed too many handshakes.
    pub throttled_handshakes: Counter,
    /// Live members of the cluster, as this pod last saw them (0 without PostgreSQL).
    pub cluster_members: Gauge,
    /// Resources homed on this pod (held in memory here because this pod is their home).
    pub homed_resources: Gauge,
    /// Resources this pod let go of because their home moved.
    pub rehomes: Counter,
    /// Frames crossing the internal port, by direction.
    pub relayed_frames: Family<DirectionLabel, Counter>,
    /// When each TLS port's certificate expires, unix seconds.
    pub tls_expiry: Family<PortLabel, Gauge>,
    /// Changed TLS files noticed, by port and outcome.
    pub tls_reloads: Family<ReloadLabel, Counter>,
    /// ACME certificate orders, by outcome (`issued` or `failed`).
    pub acme_orders: Family<ResultLabel, Counter>,
    /// Replica sites following this station's change feed now.
    pub replication_followers: Gauge,
    /// On a replica: 1 while its feed from the primary is live, else 0.
    pub replication_connected: Gauge,
    /// On a replica: changes committed on the primary and not yet applied here.
    pub replication_lag_changes: Gauge,
    /// On a replica: seconds since this cache last held everything the primary had committed.
    pub replication_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// On a replica: the primary's changes applied to this cache.
    pub replication_applied: Counter,
    /// On a replica: writes sent to the primary, by outcome (`committed` or `refused`).
    pub replication_writes: Family<ResultLabel, Counter>,
}

/// The outcome of one attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What came of it.
    pub result: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `zbase_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("zbase");
        let metrics = Metrics {
            connections: Family::default(),
            verified_peers: Gauge::default(),
            resources_active: Gauge::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            terminations: Family::default(),
            store_write_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
            throttled_handshakes: Counter::default(),
            cluster_members: Gauge::default(),
            homed_resources: Gauge::default(),
            rehomes: Counter::default(),
            relayed_frames: Family::default(),
            tls_expiry: Family::default(),
            tls_reloads: Family::default(),
            acme_orders: Family::default(),
            replication_followers: Gauge::default(),
            replication_connected: Gauge::default(),
            replication_lag_changes: Gauge::default(),
            replication_lag_seconds: Gauge::default(),
            replication_applied: Counter::default(),
            replication_writes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            metrics.connections.clone(),
        );
        registry.register(
            "verified_peers",
            "Verified peers across all resources",
            metrics.verified_peers.clone(),
        );
        registry.register(
            "resources_active",
            "Resources held in memory",
            metrics.resources_active.clone(),
        );
        registry.register(
            "frames_in",
            "Frames received from clients",
            metrics.frames_in.clone(),
        );
        registry.register(
            "frames_out",
            "Frames sent to clients",
            metrics.frames_out.clone(),
        );
        registry.register(
            "frame_bytes_in",
            "Frame bytes received from clients",
            metrics.bytes_in.clone(),
        );
        registry.register(
            "frame_bytes_out",
            "Frame bytes sent to clients",
            metrics.bytes_out.clone(),
        );
        registry.register(
            "terminations",
            "Connections ended, by reason",
            metrics.terminations.clone(),
        );
        registry.register(
            "store_write_seconds",
            "Time from snapshot submission to durable commit",
            metrics.store_write_seconds.clone(),
        );
        registry.register(
            "throttled_handshakes",
            "Connections refused after too many failed handshakes from their IP",
            metrics.throttled_handshakes.clone(),
        );
        registry.register(
            "cluster_members",
            "Live station pods sharing this pod's database",
            metrics.cluster_members.clone(),
        );
        registry.register(
            "cluster_homed_resources",
            "Resources homed on this pod",
            metrics.homed_resources.clone(),
        );
        registry.register(
            "cluster_rehomes",
            "Resources this pod let go of because their home moved",
            metrics.rehomes.clone(),
        );
        registry.register(
            "relayed_frames",
            "Frames relayed over the internal port, by direction",
            metrics.relayed_frames.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate each TLS port serves expires (unix seconds)",
            metrics.tls_expiry.clone(),
        );
        registry.register(
            "tls_reloads",
            "Changed TLS files noticed, by port and outcome (loaded or refused)",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "acme_orders",
            "ACME certificate orders, by outcome (issued or failed)",
            metrics.acme_orders.clone(),
        );
        registry.register(
            "replication_followers",
            "Replica sites following this station's change feed",
            metrics.replication_followers.clone(),
        );
        registry.register(
            "replication_connected",
            "1 while this replica's feed from the primary is live",
            metrics.replication_connected.clone(),
        );
        registry.register(
            "replication_lag_changes",
            "Changes committed on the primary and not yet applied on this replica",
            metrics.replication_lag_changes.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Seconds since this replica last held everything the primary had committed",
            metrics.replication_lag_seconds.clone(),
        );
        registry.register(
            "replication_applied_changes",
            "Changes from the primary applied to this replica's cache",
            metrics.replication_applied.clone(),
        );
        registry.register(
            "replication_writes",
            "Configurations and snapshots this replica sent to the primary, by outcome",
            metrics.replication_writes.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Creates every labelled series at zero, so each family is on `/metrics` from the start
    /// (rates and alerts need the zero, and every pod shows the same families).
    pub fn prime(&self, codes: &[&'static str], reasons: &[&'static str]) {
        for transport in ["websocket", "grpc", "internal"] {
            let _ = self
                .connections
                .get_or_create(&TransportLabel { transport });
        }
        for &code in codes {
            let label = CodeLabel { code };
            let _ = self.frames_in.get_or_create(&label);
            let _ = self.frames_out.get_or_create(&label);
            let _ = self.bytes_in.get_or_create(&label);
            let _ = self.bytes_out.get_or_create(&label);
        }
        for &reason in reasons {
            let _ = self.terminations.get_or_create(&ReasonLabel { reason });
        }
        for direction in ["in", "out"] {
            let _ = self
                .relayed_frames
                .get_or_create(&DirectionLabel { direction });
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one frame received.
    pub fn frame_in(&self, code: &'static str, bytes: usize) {
        self.frames_in.get_or_create(&CodeLabel { code }).inc();
        self.bytes_in
            .get_or_create(&CodeLabel { code })
            .inc_by(bytes as u64);
    }

    /// Counts one frame sent.
    pub fn frame_out(&self, code: &'static str, bytes: usize) {
        self.frames_out.get_or_create(&CodeLabel { code }).inc();
        self.bytes_out
            .get_or_create(&CodeLabel { code })
            .inc_by(bytes as u64);
    }
}

/// Measures one store write; records into the histogram when dropped.
pub struct StoreTimer {
    histogram: Histogram,
    started: Instant,
}

impl StoreTimer {
    /// Starts timing (the histogram is a shared handle, so the timer can move into a task).
    pub fn start(histogram: &Histogram) -> StoreTimer {
        StoreTimer {
            histogram: histogram.clone(),
            started: Instant::now(),
        }
    }
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
