//! The `BaseStationBackup` custom resource: one backup taken now, on demand, with the
//! destination, recipients and retention of its BaseStation's `spec.backup`. The operator
//! runs it as a Job once and reports how it went; it is never run again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One backup of a BaseStation, taken now, as its `spec.backup` describes.
// Each printer column repeats `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "zbase.dev",
    version = "v1alpha1",
    kind = "BaseStationBackup",
    namespaced,
    status = "BaseStationBackupStatus",
    shortname = "zbsb",
    category = "zbase",
    doc = "One backup of a BaseStation, taken now with the destination, recipients and retention of its spec.backup.",
    annotation("helm.sh/resource-policy", "keep"),
    printcolumn(name = "Station", type_ = "string", json_path = ".spec.baseStation"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.backup"),
    printcolumn(
        name = "Completed",
        type_ = "date",
        json_path = ".status.completionTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a BaseStationBackup is not changed once made: create another"))]
#[serde(rename_all = "camelCase")]
pub struct BaseStationBackupSpec {
    /// The BaseStation in this namespace to back up; its `spec.backup` says where to and for
    /// whom.
    #[schemars(length(min = 1, max = 253))]
    pub base_station: String,
}

/// How the backup went.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BaseStationBackupStatus {
    /// Pending (waiting for its BaseStation or Job), Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The Job taking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where the backup was written: its folder in the volume or its `s3://` prefix, as
    /// `zbase-station restore --from` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The store's change sequence the backup is consistent at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Resources in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<u64>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the backup was complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What happened, or what is wrong and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where an on-demand backup is.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupPhase {
    /// Waiting: for its BaseStation to exist and have `spec.backup`, or for its Job to start.
    Pending,
    /// The Job runs.
    Running,
    /// The backup is written and retention applied.
    Succeeded,
    /// The Job gave up; `message` says why.
    Failed,
}
