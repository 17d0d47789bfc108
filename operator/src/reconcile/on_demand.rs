//! Reconciles a `BaseStationBackup`: once its BaseStation exists with a valid `spec.backup`,
//! create the one Job that takes the backup, then report the Job's progress and, from its
//! pod's termination message, where the backup was written. A finished request is left as it
//! is: a backup is taken once, and another is another BaseStationBackup.

use super::build::{self, ON_DEMAND_LABEL};
use super::validate::{self, Station};
use super::{Context, Error, RETRY_INVALID, publish, read_references};
use crate::crd::{BackupPhase, BaseStation, BaseStationBackup, BaseStationBackupStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use std::sync::Arc;

/// The longest failure message kept in status (the end of the pod's log).
const MESSAGE_MAX: usize = 1024;

/// Reconciles one BaseStationBackup.
pub async fn reconcile(
    request: Arc<BaseStationBackup>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let done = request
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| matches!(p, BackupPhase::Succeeded | BackupPhase::Failed));
    if done || request.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = build::on_demand_job_name(&name);

    let job = match jobs.get_opt(&job_name).await.map_err(Error::Backup)? {
        Some(job) => job,
        None => match station(&ctx, &request).await? {
            Err(waiting) => {
                let status = BaseStationBackupStatus {
                    phase: Some(BackupPhase::Pending),
                    message: Some(waiting),
                    ..Default::default()
                };
                write_status(&ctx, &request, status).await?;
                return Ok(Action::requeue(RETRY_INVALID));
            }
            Ok(station) => {
                let Some(backup) = &station.backup else {
                    // `station` only answers Ok with spec.backup.
                    return Ok(Action::requeue(RETRY_INVALID));
                };
                let job = build::on_demand_job(&request, &station, backup);
                match jobs.create(&PostParams::default(), &job).await {
                    Ok(job) => job,
                    // Created by a reconcile whose status write did not land.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        jobs.get(&job_name).await.map_err(Error::Backup)?
                    }
                    Err(e) => return Err(Error::Backup(e)),
                }
            }
        },
    };

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{ON_DEMAND_LABEL}={name}")))
        .await
        .map_err(Error::Backup)?
        .items;
    let status = status(&job, &pods);
    let before = request.status.as_ref().and_then(|s| s.phase);
    if status.phase != before {
        let reference = request.object_ref(&());
        match status.phase {
            Some(BackupPhase::Succeeded) => {
                let note = format!(
                    "backup {} written",
                    status.backup.as_deref().unwrap_or("(no report)")
                );
                publish(&ctx, &reference, false, "BackupSucceeded", note).await;
            }
            Some(BackupPhase::Failed) => {
                let note = status.message.clone().unwrap_or_default();
                publish(&ctx, &reference, true, "BackupFailed", note).await;
            }
            _ => {}
        }
    }
    write_status(&ctx, &request, status).await?;
    // The Job is watched: its changes bring the next reconcile.
    Ok(Action::await_change())
}

/// The request's BaseStation, checked, with `spec.backup`; or why the backup must wait.
async fn station(
    ctx: &Context,
    request: &BaseStationBackup,
) -> Result<Result<Station, String>, Error> {
    let ns = request.namespace().unwrap_or_default();
    let wanted = &request.spec.base_station;
    let stations: Api<BaseStation> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(bs) = stations.get_opt(wanted).await.map_err(Error::Backup)? else {
        return Ok(Err(format!(
            "BaseStation '{wanted}' does not exist in namespace {ns}: create it, or fix \
             spec.baseStation"
        )));
    };
    if bs.spec.backup.is_none() {
        return Ok(Err(format!(
            "BaseStation '{wanted}' has no spec.backup: give it one (schedule, recipients and a \
             destination); an on-demand backup goes where its scheduled ones go"
        )));
    }
    let refs = read_references(&ctx.client, &bs)
        .await
        .map_err(Error::References)?;
    Ok(validate::validate(&bs, &ctx.defaults, &refs)
        .map_err(|invalid| format!("BaseStation '{wanted}' is invalid: {invalid}")))
}

async fn write_status(
    ctx: &Context,
    request: &BaseStationBackup,
    status: BaseStationBackupStatus,
) -> Result<(), Error> {
    if request.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<BaseStationBackup> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    api.patch_status(
        &request.name_any(),
        &PatchParams::apply(build::MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": BaseStationBackup::api_version(&()),
            "kind": BaseStationBackup::kind(&()),
            "status": status,
        })),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// What the station's `--report` wrote.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    backup: String,
    sequence: u64,
    resources: u64,
}

/// The status a Job and its pods tell.
pub fn status(job: &Job, pods: &[Pod]) -> BaseStationBackupStatus {
    let job_status = job.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        job_status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    // Each pod's backup container, as it ended: (exit code, message), newest pod last.
    let mut ended: Vec<(&Pod, i32, String)> = pods
        .iter()
        .filter_map(|pod| {
            let container = pod
                .status
                .as_ref()?
                .container_statuses
                .iter()
                .flatten()
                .find(|c| c.name == build::BACKUP_CONTAINER)?;
            let terminated = container.state.as_ref()?.terminated.as_ref()?;
            Some((
                pod,
                terminated.exit_code,
                terminated.message.clone().unwrap_or_default(),
            ))
        })
        .collect();
    ended.sort_by_key(|(pod, _, _)| pod.metadata.creation_timestamp.clone().map(|t| t.0));

    let mut status = BaseStationBackupStatus {
        job: job.metadata.name.clone(),
        start_time: job_status.start_time.clone(),
        ..Default::default()
    };
    if condition("Complete").is_some() || job_status.succeeded.unwrap_or(0) > 0 {
        status.phase = Some(BackupPhase::Succeeded);
        status.completion_time = job_status.completion_time.clone();
        let report = ended
            .iter()
            .rev()
            .find(|(_, code, _)| *code == 0)
            .and_then(|(_, _, message)| serde_json::from_str::<Report>(message.trim()).ok());
        match report {
            Some(report) => {
                status.message = Some(format!(
                    "backup written: {} resources at sequence {}",
                    report.resources, report.sequence
                ));
                status.backup = Some(report.backup);
                status.sequence = Some(report.sequence);
                status.resources = Some(report.resources);
            }
            None => {
                status.message = Some(
                    "the Job succeeded, but its pod's report is gone (the pod was deleted): \
                     `zbase-station backup list` shows the backup"
                        .into(),
                )
            }
        }
    } else if let Some(failed) = condition("Failed") {
        status.phase = Some(BackupPhase::Failed);
        let why = ended
            .iter()
            .rev()
            .find(|(_, code, _)| *code != 0)
            .map(|(_, _, message)| tail(message.trim(), MESSAGE_MAX))
            .filter(|m| !m.is_empty());
        status.message = Some(match why {
            Some(why) => format!("the backup failed: {why}"),
            None => format!(
                "the backup failed: {}",
                failed
                    .message
                    .clone()
                    .unwrap_or_else(|| failed.reason.clone().unwrap_or_default())
            ),
        });
    } else if job_status.active.unwrap_or(0) > 0 {
        status.phase = Some(BackupPhase::Running);
        status.message = Some(
            match ended.iter().filter(|(_, code, _)| *code != 0).count() {
                0 => "the backup runs".into(),
                n => format!("the backup runs again after {n} failed tries"),
            },
        );
    } else {
        status.phase = Some(BackupPhase::Pending);
        status.message = Some(format!(
            "the Job {} waits for its pod",
            job.metadata.name.clone().unwrap_or_default()
        ));
    }
    status
}

/// The last `max` bytes of `text`, on a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn job(status: JobStatus) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("before-upgrade-backup".into()),
                ..Default::default()
            },
            status: Some(status),
            ..Default::default()
        }
    }

    fn condition(kind: &str, message: &str) -> Option<Vec<JobCondition>> {
        Some(vec![JobCondition {
            type_: kind.into(),
            status: "True".into(),
            message: Some(message.into()),
            ..Default::default()
        }])
    }

    fn ended(second: i64, exit_code: i32, message: &str) -> Pod {
        let at = Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap());
        Pod {
            metadata: ObjectMeta {
                creation_timestamp: Some(at),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: build::BACKUP_CONTAINER.into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code,
                            message: Some(message.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const REPORT: &str = r#"{"backup":"s3://b/home/zbase-20261203T070000123Z-1f2e","sequence":88,"resources":12,"snapshots":10,"snapshotBytes":4096,"parts":1}"#;

    #[test]
    fn a_succeeded_job_gives_where_the_backup_is_from_its_pods_report() {
        let done = job(JobStatus {
            succeeded: Some(1),
            conditions: condition("Complete", ""),
            ..Default::default()
        });
        // A failed try first, then the one that wrote the report.
        let pods = [ended(2, 0, REPORT), ended(1, 1, "zbase-station: refused")];
        let got = status(&done, &pods);
        assert_eq!(got.phase, Some(BackupPhase::Succeeded));
        assert_eq!(
            got.backup.as_deref(),
            Some("s3://b/home/zbase-20261203T070000123Z-1f2e")
        );
        assert_eq!((got.sequence, got.resources), (Some(88), Some(12)));
        assert_eq!(got.job.as_deref(), Some("before-upgrade-backup"));

        let gone = status(&done, &[]);
        assert_eq!(gone.phase, Some(BackupPhase::Succeeded));
        assert!(gone.backup.is_none());
        assert!(gone.message.unwrap().contains("backup list"));
    }

    #[test]
    fn a_failed_job_says_why_from_the_end_of_its_last_pods_log() {
        let failed = job(JobStatus {
            failed: Some(3),
            conditions: condition("Failed", "Job has reached the specified backoff limit"),
            ..Default::default()
        });
        let long = format!("{}the S3 server refused the credentials", "x".repeat(3000));
        let pods = [
            ended(1, 1, "first"),
            ended(3, 1, &long),
            ended(2, 1, "second"),
        ];
        let got = status(&failed, &pods);
        assert_eq!(got.phase, Some(BackupPhase::Failed));
        let message = got.message.unwrap();
        assert!(message.ends_with("refused the credentials"), "{message}");
        assert!(message.len() < MESSAGE_MAX + 100, "{}", message.len());

        let no_pods = status(&failed, &[]);
        assert!(
            no_pods.message.unwrap().contains("backoff limit"),
            "the Job's own reason when no pod is left"
        );
    }

    #[test]
    fn an_active_job_runs_and_a_new_one_waits() {
        let running = job(JobStatus {
            active: Some(1),
            ..Default::default()
        });
        assert_eq!(status(&running, &[]).phase, Some(BackupPhase::Running));
        let retried = status(&running, &[ended(1, 1, "no")]);
        assert!(retried.message.unwrap().contains("after 1 failed tries"));
        let new = job(JobStatus::default());
        assert_eq!(status(&new, &[]).phase, Some(BackupPhase::Pending));
    }

    #[test]
    fn the_tail_of_a_message_cuts_on_a_character() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
