//! The backup CronJob: `zbase-station backup` on the spec's schedule, into a volume or an
//! S3 bucket, encrypted to the spec's age recipients (the cluster holds no private key).
//!
//! The Job reads the store as the station does: PostgreSQL through the same Secret, SQLite
//! from pod 0's volume, opened read-only beside the running station. A ReadWriteOnce volume
//! is attached to one node, so the Job must run on pod 0's node: required pod affinity while
//! the station runs (a stopped station's volume is free, and its topology places the Job).

use super::config::DATA_DIR;
use super::statefulset::{container_security, pod_base, store_env};
use super::{INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, metadata};
use crate::crd::BaseStationBackup;
use crate::reconcile::validate::{Backup, BackupDestination, Station, Store};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvVar, KeyToPath,
    PersistentVolumeClaimVolumeSource, PodAffinity, PodAffinityTerm, PodSpec, PodTemplateSpec,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource as _, ResourceExt as _};
use std::collections::BTreeMap;

/// The backup container's name.
pub const BACKUP_CONTAINER: &str = "backup";
/// Where the backup volume is mounted.
const BACKUPS_DIR: &str = "/var/lib/zbase-backups";
/// Where the S3 credentials Secret is mounted.
const S3_CREDENTIALS_DIR: &str = "/etc/zbase/s3";
/// Where the S3 CA certificates are mounted.
const S3_CA_DIR: &str = "/etc/zbase/s3-ca";

/// Where the backup container writes its report, which Kubernetes copies into the pod's
/// status as the container's termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Label of an on-demand backup's Job and pods: the BaseStationBackup's name.
pub const ON_DEMAND_LABEL: &str = "zbase.dev/backup";

/// The init container that restores a backup into a new station's store.
pub const RESTORE_CONTAINER: &str = "restore";
/// Where the restore's age identity is mounted.
const RESTORE_IDENTITY_DIR: &str = "/etc/zbase/restore";

/// The CronJob's name.
pub fn backup_name(station: &str) -> String {
    format!("{station}-backup")
}

/// Labels of the backup pods: the station's instance, but never its selector labels, so the
/// StatefulSet, the Services and the PodDisruptionBudget do not count them as station pods.
fn pod_labels(station: &Station) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "zbase-backup".to_owned(),
        ),
        (INSTANCE_LABEL.to_owned(), station.name.clone()),
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "zbase".to_owned()),
    ])
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The Job that takes one backup of `station` now, for the BaseStationBackup `on_demand`:
/// owned by it (not by the station), so it goes when the request is deleted.
pub fn on_demand_job(on_demand: &BaseStationBackup, station: &Station, backup: &Backup) -> Job {
    let mut labels = pod_labels(station);
    labels.insert(ON_DEMAND_LABEL.to_owned(), on_demand.name_any());
    Job {
        metadata: ObjectMeta {
            name: Some(on_demand_job_name(&on_demand.name_any())),
            namespace: on_demand.namespace(),
            labels: Some(labels.clone()),
            owner_references: on_demand.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(job_spec(station, backup, labels)),
        ..Default::default()
    }
}

/// The name of the Job of the BaseStationBackup `name`.
pub fn on_demand_job_name(name: &str) -> String {
    format!("{name}-backup")
}

/// The CronJob of `station`'s `backup`.
pub(super) fn cron_job(station: &Station, backup: &Backup) -> CronJob {
    CronJob {
        metadata: metadata(station, &backup_name(&station.name)),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            time_zone: backup.time_zone.clone(),
            suspend: Some(backup.suspend),
            // Two runs into one place would remove each other's unfinished backups.
            concurrency_policy: Some("Forbid".into()),
            // A run missed by more than an hour (the controller was down) is skipped, not
            // started late in a burst.
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(station)),
                    ..Default::default()
                }),
                spec: Some(job_spec(station, backup, pod_labels(station))),
            },
        }),
        ..Default::default()
    }
}

/// One backup run: its pod, tried up to three times.
fn job_spec(station: &Station, backup: &Backup, labels: BTreeMap<String, String>) -> JobSpec {
    let mut env_vars = vec![
        env("ZBASE_BACKUP_RECIPIENTS", backup.recipients.join(",")),
        // Where it was written, for the status of whoever asked (Kubernetes reads the file
        // into the pod's status).
        env("ZBASE_BACKUP_REPORT", TERMINATION_LOG),
    ];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    let mut affinity = None;
    match &station.store {
        Store::Sqlite => {
            // The StatefulSet's claim template names pod 0's claim `data-<name>-0`.
            volumes.push(Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: format!("data-{}-0", station.name),
                    read_only: Some(false),
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..Default::default()
            });
            env_vars.push(env("ZBASE_DATA_DIR", DATA_DIR));
            if station.replicas > 0 {
                affinity = Some(beside_pod_zero(station));
            }
        }
        Store::Postgres { .. } => env_vars.extend(store_env(station)),
    }
    let place = place(backup);
    env_vars.push(env("ZBASE_BACKUP_TO", place.root));
    env_vars.extend(place.env);
    volumes.extend(place.volumes);
    mounts.extend(place.mounts);
    if let Some(last) = backup.keep_last {
        env_vars.push(env("ZBASE_BACKUP_KEEP_LAST", last.to_string()));
    }
    if let Some(within) = &backup.keep_within {
        env_vars.push(env("ZBASE_BACKUP_KEEP_WITHIN", within.clone()));
    }

    let container = Container {
        name: BACKUP_CONTAINER.into(),
        image: Some(station.image.clone()),
        image_pull_policy: Some(station.image_pull_policy.clone()),
        args: Some(vec!["backup".into()]),
        env: Some(env_vars),
        termination_message_path: Some(TERMINATION_LOG.into()),
        // A failed run has no report: the end of its log says why instead.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let pod = PodSpec {
        // Each try is its own pod, so its log stays for `kubectl logs`.
        restart_policy: Some("Never".into()),
        containers: vec![container],
        volumes: Some(volumes),
        affinity,
        ..pod_base(station)
    };
    JobSpec {
        backoff_limit: Some(2),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    }
}

/// Required affinity to pod 0's node, where its ReadWriteOnce volume is attached.
fn beside_pod_zero(station: &Station) -> Affinity {
    Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                topology_key: "kubernetes.io/hostname".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "statefulset.kubernetes.io/pod-name".to_owned(),
                        format!("{}-0", station.name),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How a pod reaches the backups of a destination: its variables, volumes and mounts, and
/// the folder or `s3://` prefix that `--to` and `--from` name.
pub(super) struct Place {
    /// The folder or prefix the backups are in.
    pub root: String,
    /// S3 settings, as files and variables.
    pub env: Vec<EnvVar>,
    /// The backup volume, or the S3 credentials and CA Secrets.
    pub volumes: Vec<Volume>,
    /// Where those are mounted.
    pub mounts: Vec<VolumeMount>,
}

/// Where `backup`'s destination is, for a pod.
pub(super) fn place(backup: &Backup) -> Place {
    let mut env_vars = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let root = match &backup.destination {
        BackupDestination::Volume { claim, sub_path } => {
            volumes.push(Volume {
                name: "backups".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(false),
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "backups".into(),
                mount_path: BACKUPS_DIR.into(),
                ..Default::default()
            });
            match sub_path {
                Some(sub) => format!("{BACKUPS_DIR}/{}", sub.trim_matches('/')),
                None => BACKUPS_DIR.into(),
            }
        }
        BackupDestination::S3(s3) => {
            if let Some(endpoint) = &s3.endpoint {
                env_vars.push(env("AWS_ENDPOINT_URL", endpoint.clone()));
            }
            if let Some(region) = &s3.region {
                env_vars.push(env("AWS_REGION", region.clone()));
            }
            volumes.push(Volume {
                name: "s3-credentials".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(s3.credentials_secret.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "s3-credentials".into(),
                mount_path: S3_CREDENTIALS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
            env_vars.push(env(
                "AWS_ACCESS_KEY_ID_FILE",
                format!("{S3_CREDENTIALS_DIR}/access-key-id"),
            ));
            env_vars.push(env(
                "AWS_SECRET_ACCESS_KEY_FILE",
                format!("{S3_CREDENTIALS_DIR}/secret-access-key"),
            ));
            if let Some(ca) = &s3.ca {
                volumes.push(Volume {
                    name: "s3-ca".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(ca.name.clone()),
                        items: Some(vec![KeyToPath {
                            key: ca.key.clone(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(VolumeMount {
                    name: "s3-ca".into(),
                    mount_path: S3_CA_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
                env_vars.push(env("ZBASE_S3_CA_FILE", format!("{S3_CA_DIR}/ca.crt")));
            }
            s3.url.clone()
        }
    };
    Place {
        root,
        env: env_vars,
        volumes,
        mounts,
    }
}

/// The init container that restores spec.restore's backup into `station`'s store before the
/// station first serves; it adds the volumes it reads to `volumes`. Every start runs it, and
/// a store that holds data already is left alone (`--if-empty`), so only a first start
/// restores; on PostgreSQL the pods' restores take the same table lock, so one restores and
/// the others find it done.
pub(super) fn restore_container(station: &Station, volumes: &mut Vec<Volume>) -> Option<Container> {
    let (restore, backup) = (station.restore.as_ref()?, station.backup.as_ref()?);
    let place = place(backup);
    volumes.extend(place.volumes);
    volumes.push(Volume {
        name: "restore-identity".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(restore.identity_secret.clone()),
            items: Some(vec![KeyToPath {
                key: restore.identity_key.clone(),
                path: "key.txt".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut mounts = place.mounts;
    mounts.push(VolumeMount {
        name: "restore-identity".into(),
        mount_path: RESTORE_IDENTITY_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    let mut env_vars = vec![
        env("ZBASE_RESTORE_IF_EMPTY", "true"),
        env(
            "ZBASE_BACKUP_IDENTITY",
            format!("{RESTORE_IDENTITY_DIR}/key.txt"),
        ),
    ];
    match &station.store {
        Store::Sqlite => {
            mounts.push(VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..Default::default()
            });
            env_vars.push(env("ZBASE_DATA_DIR", DATA_DIR));
        }
        Store::Postgres { .. } => env_vars.extend(store_env(station)),
    }
    env_vars.extend(place.env);
    Some(Container {
        name: RESTORE_CONTAINER.into(),
        image: Some(station.image.clone()),
        image_pull_policy: Some(station.image_pull_policy.clone()),
        args: Some(vec![
            "restore".into(),
            "--from".into(),
            format!("{}/{}", place.root, restore.backup),
        ]),
        env: Some(env_vars),
        resources: station.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    })
}
