//! What the operator reports on a `BaseStation`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The observed state of a base station.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BaseStationStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, and one per concern (Store, TLS, Paused, Backup).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pods the StatefulSet has.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Where clients connect: `wss://` or `ws://` with the Service's address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When the public certificate expires (RFC 3339), read from its Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<String>,
    /// When the last scheduled backup succeeded (RFC 3339), from the backup CronJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// Hash of the rendered station configuration the pods run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// The condition types a `BaseStation` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionType {
    /// Every desired pod is ready and the spec is applied.
    Ready,
    /// Pods are being created, rolled or scaled.
    Progressing,
    /// Something needs the user: an invalid spec, a missing reference, an apply refused.
    Degraded,
    /// The store the spec names is there.
    Store,
    /// The public certificate is present and not near expiry.
    Tls,
    /// Reconciliation is paused by `spec.paused`.
    Paused,
    /// Scheduled backups succeed (only with `spec.backup`).
    Backup,
}

impl ConditionType {
    /// The name in `status.conditions[].type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Progressing => "Progressing",
            ConditionType::Degraded => "Degraded",
            ConditionType::Store => "Store",
            ConditionType::Tls => "TLS",
            ConditionType::Paused => "Paused",
            ConditionType::Backup => "Backup",
        }
    }
}
