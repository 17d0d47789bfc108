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
    /// Ready, Progressing, Degraded, and one per concern (Store, TLS, Paused, Backup,
    /// Replication).
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
    /// With spec.site: the site's role and position, as its station reports them, and the
    /// role changes the operator made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteStatus>,
}

/// A site as its station reports it (the replication Status call), refreshed periodically.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// primary, replica or fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The epoch of the site's latest history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The highest change sequence its store holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// On a replica: the primary whose change feed is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<String>,
    /// On a replica: the primary's changes not yet in its cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_changes: Option<u64>,
    /// On a replica: how long its cache has lacked something, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// After spec.site.demote: the token `EPOCH:SEQUENCE` to give the next primary's
    /// spec.site.promote.token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_token: Option<String>,
    /// The last promotion the operator made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionStatus>,
}

/// A promotion done by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PromotionStatus {
    /// The spec.site.promote it answered (`token:EPOCH:SEQUENCE` or `failover`), while that
    /// is still in the spec: the same request is never made twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The epoch the site is primary in.
    pub epoch: u64,
    /// Whether it was a failover (no token).
    pub failover: bool,
    /// When (RFC 3339).
    pub at: String,
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
    /// The site serves as primary, or follows its primary closely (only with `spec.site`).
    Replication,
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
            ConditionType::Replication => "Replication",
        }
    }
}
