//! The real `zbase-operator` binary reconciling against the stand-in API server
//! (`zbase_tests::apiserver`): create, update, scale, an invalid spec, pause, an owned object
//! deleted by hand, a configuration change, scheduled backups and their status, status and
//! Events, leader election, and the chart's own Deployment command.
//!
//! Mostly nothing runs pods here, so the tests play the kubelet and StatefulSet controller:
//! they write the StatefulSet's status to say how many pods are ready, and the CronJob's
//! status to say when a backup ran. The two-site test runs each site's pod for real (the
//! stand-in kubelet, `zbase_tests::kubelet`), since the operator asks the stations
//! themselves for their role and lag.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zbase_operator::crd::{BackupPhase, BaseStation, BaseStationBackup};
use zbase_operator::reconcile::build::CONFIG_HASH_ANNOTATION;
use zbase_tests::apiserver::ApiServer;
use zbase_tests::client::{Conn, Identity, Tls, Transport, configure, random_id};
use zbase_tests::kubelet::{LocalPod, LocalVolume, VolumeFiles};

const NS: &str = "zbase";

fn operator_bin() -> PathBuf {
    zbase_tests::station::workspace_bin("zbase-operator", "ZBASE_OPERATOR_BIN", "zbase-operator")
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `path` opened for appending, for a child's output.
fn append(path: &Path) -> std::fs::File {
    std::fs::File::options().append(true).open(path).unwrap()
}

/// An operator process; killed on drop, its log kept for failure messages.
struct Operator {
    child: Child,
    listen: std::net::SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Operator {
    fn start(api: &ApiServer, identity: &str) -> Operator {
        Operator::start_with(api, identity, &[])
    }

    /// An operator with `extra` flags after `run`.
    fn start_with(api: &ApiServer, identity: &str, extra: &[&str]) -> Operator {
        let listen = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(operator_bin())
            .args([
                "run",
                "--listen",
                &listen.to_string(),
                "--log",
                "info,zbase_operator=debug",
            ])
            .args(extra)
            .env("KUBECONFIG", api.kubeconfig())
            .env("POD_NAMESPACE", "zbase-system")
            .env("POD_NAME", identity)
            .env("ZBASE_OPERATOR_STATION_IMAGE", "zbase-station:test")
            // The operator logs to stdout (tracing's default): both streams go to the log
            // file, appended, so a failure shows what the operator did.
            .stdout(append(log.path()))
            .stderr(append(log.path()))
            .spawn()
            .unwrap();
        Operator { child, listen, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("http://{}/metrics", self.listen))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines()
            .find(|l| l.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API server with the chart's CRDs installed, as `helm install` leaves a cluster.
async fn cluster() -> (ApiServer, Client) {
    let api = ApiServer::start().await;
    let client = api.client();
    for ns in [NS, "zbase-system"] {
        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    for plural in zbase_operator::crd::CRDS {
        let crd: CustomResourceDefinition = serde_yaml::from_str(
            &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "../charts/zbase-operator/files/crds/{plural}.zbase.dev.yaml"
            )))
            .unwrap(),
        )
        .unwrap();
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .unwrap();
    }
    (api, client)
}

async fn create(client: &Client, yaml: &str) -> BaseStation {
    let bs: BaseStation = serde_yaml::from_str(yaml).unwrap();
    Api::<BaseStation>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &bs)
        .await
        .unwrap()
}

async fn patch_spec(client: &Client, name: &str, spec: serde_json::Value) {
    Api::<BaseStation>::namespaced(client.clone(), NS)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

/// Polls `check` until it gives a value, failing with the operator's log after 20 s.
async fn eventually<T, F, Fut>(op: &Operator, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}\noperator log:\n{}", op.log());
}

async fn station(client: &Client, name: &str) -> BaseStation {
    Api::<BaseStation>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

fn condition(bs: &BaseStation, kind: &str) -> Option<(String, String, String)> {
    let c = bs
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Whether the namespaced object `name` of kind `K` exists.
async fn exists<K>(client: &Client, name: &str) -> bool
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

async fn sts(client: &Client, name: &str) -> Option<StatefulSet> {
    Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .unwrap()
}

/// The station container of a StatefulSet's pod template.
fn station_container(sts: &StatefulSet) -> &k8s_openapi::api::core::v1::Container {
    &sts.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn config_hash(sts: &StatefulSet) -> String {
    sts.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

/// Plays the StatefulSet controller and kubelets: `ready` pods of the current template.
async fn pods_ready(client: &Client, name: &str, ready: i32) {
    let current = sts(client, name).await.unwrap();
    Api::<StatefulSet>::namespaced(client.clone(), NS)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": current.metadata.generation,
                "replicas": ready, "readyReplicas": ready, "updatedReplicas": ready, "availableReplicas": ready
            }})),
        )
        .await
        .unwrap();
}

async fn events(client: &Client) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

const MINIMAL: &str = "apiVersion: zbase.dev/v1alpha1\nkind: BaseStation\nmetadata: {name: home, namespace: zbase}\nspec: {}\n";

#[tokio::test]
async fn a_new_station_gets_every_object_then_ready_status_and_events() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    let bs = create(&client, MINIMAL).await;

    let set = eventually(&op, "the StatefulSet exists", || async {
        sts(&client, "home").await
    })
    .await;
    assert_eq!(set.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(set.owner_references()[0].uid, bs.uid().unwrap());
    let image = station_container(&set).image.clone();
    assert_eq!(
        image.as_deref(),
        Some("zbase-station:test"),
        "the operator's --station-image"
    );
    let status = eventually(&op, "status reports pods not ready", || async {
        let bs = station(&client, "home").await;
        (condition(&bs, "Ready")?.1 == "PodsNotReady").then_some(bs)
    })
    .await;
    // Status is written after every object is applied.
    for name in ["home", "home-pods", "home-internal"] {
        assert!(exists::<Service>(&client, name).await, "Service {name}");
    }
    assert!(exists::<ConfigMap>(&client, "home-config").await);
    assert!(exists::<ServiceAccount>(&client, "home").await);
    assert!(exists::<PodDisruptionBudget>(&client, "home").await);
    assert!(exists::<NetworkPolicy>(&client, "home").await);
    assert!(exists::<Secret>(&client, "home-ca").await);
    assert!(exists::<Secret>(&client, "home-tls").await);
    let st = status.status.as_ref().unwrap();
    assert_eq!(st.observed_generation, status.metadata.generation);
    assert_eq!(st.endpoint.as_deref(), Some("wss://home.zbase.svc"));
    assert_eq!(condition(&status, "TLS").unwrap().1, "CertificateValid");
    assert!(
        st.certificate_expiry.is_some(),
        "the site certificate's expiry"
    );
    assert_eq!(condition(&status, "Progressing").unwrap().0, "True");
    assert_eq!(condition(&status, "Degraded").unwrap().0, "False");
    assert_eq!(condition(&status, "Store").unwrap().1, "SQLite");

    pods_ready(&client, "home", 1).await;
    eventually(&op, "Ready turns True once the pod is ready", || async {
        let bs = station(&client, "home").await;
        (condition(&bs, "Ready")?.0 == "True" && bs.status?.ready_replicas == 1).then_some(())
    })
    .await;
    eventually(&op, "a Normal event says the station is ready", || async {
        events(&client)
            .await
            .contains(&("Normal".into(), "AllPodsReady".into()))
            .then_some(())
    })
    .await;
    assert_eq!(op.metric("zbase_operator_leader").await, Some(1.0));
    let ok = op
        .metric("zbase_operator_reconciliations_total{result=\"ok\"}")
        .await
        .unwrap();
    let failed = op
        .metric("zbase_operator_reconciliations_total{result=\"apply\"}")
        .await;
    assert!(ok >= 2.0, "reconciles counted: {ok}");
    let timed = op
        .metric("zbase_operator_reconcile_duration_seconds_count")
        .await
        .unwrap();
    assert!(
        ok <= timed,
        "each reconcile is counted once under its result: {ok} ok of {timed}"
    );
    assert_eq!(
        failed,
        Some(0.0),
        "a successful reconcile is not counted as failed"
    );
}

/// Plays the CronJob controller: when the last run was scheduled, and when one last succeeded.
async fn backup_ran(client: &Client, scheduled: &str, succeeded: Option<&str>) {
    Api::<CronJob>::namespaced(client.clone(), NS)
        .patch_status(
            "home-backup",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "lastScheduleTime": scheduled, "lastSuccessfulTime": succeeded, "active": null
            }})),
        )
        .await
        .unwrap();
}

const BACKED_UP: &str = r#"apiVersion: zbase.dev/v1alpha1
kind: BaseStation
metadata: {name: home, namespace: zbase}
spec:
  backup:
    schedule: "0 3 * * *"
    recipients: [age1ettwec0qlwg8jtczntrxd0zxvfhgat2k8wyrs8arz7m6qd5xtueqt5z2rq]
    volume: {claimName: backups}
    keepLast: 7
"#;

#[tokio::test]
async fn a_backup_schedule_gets_a_cron_job_whose_runs_the_status_reports() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    let bs = create(&client, BACKED_UP).await;
    let cron = eventually(&op, "the backup CronJob exists", || async {
        Api::<CronJob>::namespaced(client.clone(), NS)
            .get_opt("home-backup")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(cron.owner_references()[0].uid, bs.uid().unwrap());
    assert_eq!(cron.spec.as_ref().unwrap().schedule, "0 3 * * *");
    let (ok, reason, _) = eventually(&op, "no backup yet", || async {
        condition(&station(&client, "home").await, "Backup")
    })
    .await;
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "NoBackupYet"));

    backup_ran(
        &client,
        "2026-12-01T03:00:00Z",
        Some("2026-12-01T03:02:30Z"),
    )
    .await;
    let bs = eventually(&op, "the run is reported", || async {
        let bs = station(&client, "home").await;
        (condition(&bs, "Backup")?.1 == "BackupSucceeded").then_some(bs)
    })
    .await;
    assert_eq!(
        bs.status.unwrap().last_backup.as_deref(),
        Some("2026-12-01T03:02:30Z")
    );
    assert_eq!(
        op.metric(
            "zbase_operator_last_backup_timestamp_seconds{namespace=\"zbase\",name=\"home\"}"
        )
        .await,
        Some(1_796_094_150.0),
        "the metric to alert on a backup's age"
    );

    backup_ran(
        &client,
        "2026-12-02T03:00:00Z",
        Some("2026-12-01T03:02:30Z"),
    )
    .await;
    let (ok, _, message) = eventually(&op, "a failed run turns Backup False", || async {
        let c = condition(&station(&client, "home").await, "Backup")?;
        (c.1 == "BackupFailed").then_some(c)
    })
    .await;
    assert_eq!(ok, "False");
    assert!(message.contains("2026-12-02T03:00:00Z"), "{message}");
    eventually(&op, "a Warning event says so", || async {
        events(&client)
            .await
            .contains(&("Warning".into(), "BackupFailed".into()))
            .then_some(())
    })
    .await;

    // Without spec.backup the CronJob goes (the backups stay where they are).
    patch_spec(&client, "home", json!({"backup": null})).await;
    eventually(&op, "the CronJob is pruned", || async {
        (!exists::<CronJob>(&client, "home-backup").await).then_some(())
    })
    .await;
    eventually(&op, "the Backup condition goes with it", || async {
        condition(&station(&client, "home").await, "Backup")
            .is_none()
            .then_some(())
    })
    .await;
}

/// Plays the Job controller and kubelet for an on-demand backup's Job: `patch` as its status.
async fn job_status(client: &Client, name: &str, status: serde_json::Value) {
    Api::<Job>::namespaced(client.clone(), NS)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_on_demand_backup_runs_one_job_and_reports_where_it_wrote() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    let requests: Api<BaseStationBackup> = Api::namespaced(client.clone(), NS);
    let phase = |want: BackupPhase| {
        let requests = requests.clone();
        move || {
            let requests = requests.clone();
            async move {
                let status = requests.get("before-upgrade").await.unwrap().status?;
                (status.phase == Some(want)).then_some(status)
            }
        }
    };
    // Asked for before its station exists: it waits, saying for what.
    let request: BaseStationBackup = serde_yaml::from_str(
        "apiVersion: zbase.dev/v1alpha1\nkind: BaseStationBackup\n\
         metadata: {name: before-upgrade, namespace: zbase}\nspec: {baseStation: home}\n",
    )
    .unwrap();
    let request = requests
        .create(&PostParams::default(), &request)
        .await
        .unwrap();
    let waiting = eventually(
        &op,
        "Pending without its station",
        phase(BackupPhase::Pending),
    )
    .await;
    assert!(
        waiting
            .message
            .unwrap()
            .contains("BaseStation 'home' does not exist"),
        "says what is missing"
    );

    // The station appears: the request goes on at once, as one Job it owns.
    create(&client, BACKED_UP).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let job = eventually(&op, "the Job is created", || async {
        jobs.get_opt("before-upgrade-backup").await.unwrap()
    })
    .await;
    assert_eq!(job.owner_references()[0].uid, request.uid().unwrap());
    assert_eq!(job.labels()["zbase.dev/backup"], "before-upgrade");
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let env = pod.containers[0].env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "ZBASE_BACKUP_TO"
                && e.value.as_deref() == Some("/var/lib/zbase-backups")),
        "the station's spec.backup destination: {env:?}"
    );

    job_status(
        &client,
        "before-upgrade-backup",
        json!({"active": 1, "startTime": "2026-12-03T07:00:00Z"}),
    )
    .await;
    eventually(&op, "Running", phase(BackupPhase::Running)).await;

    // Its pod ends with the report in its termination message, and the Job completes.
    let report = r#"{"backup":"/var/lib/zbase-backups/zbase-20261203T070001Z-42","sequence":42,"resources":7,"snapshots":7,"snapshotBytes":900,"parts":1}"#;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "before-upgrade-backup-x7k2p", "labels": {"zbase.dev/backup": "before-upgrade"}},
        "spec": {"containers": [{"name": "backup"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        "before-upgrade-backup-x7k2p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"containerStatuses": [{
            "name": "backup", "ready": false, "restartCount": 0, "image": "zbase-station", "imageID": "",
            "state": {"terminated": {"exitCode": 0, "message": report}}
        }]}})),
    )
    .await
    .unwrap();
    job_status(
        &client,
        "before-upgrade-backup",
        json!({"active": null, "succeeded": 1, "completionTime": "2026-12-03T07:00:04Z",
               "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
    let done = eventually(&op, "Succeeded", phase(BackupPhase::Succeeded)).await;
    assert_eq!(
        done.backup.as_deref(),
        Some("/var/lib/zbase-backups/zbase-20261203T070001Z-42")
    );
    assert_eq!((done.sequence, done.resources), (Some(42), Some(7)));
    assert!(done.completion_time.is_some());
    eventually(&op, "a Normal event says where", || async {
        events(&client)
            .await
            .contains(&("Normal".into(), "BackupSucceeded".into()))
            .then_some(())
    })
    .await;

    // A finished request is never run again, whatever happens to its Job.
    jobs.delete("before-upgrade-backup", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!exists::<Job>(&client, "before-upgrade-backup").await);
    let after = requests
        .get("before-upgrade")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(after.phase, Some(BackupPhase::Succeeded));
}

#[tokio::test]
async fn scaling_does_not_roll_the_pods_and_a_config_change_does() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": NS}, "stringData": {"uri": "postgres://zbase:pw@db:5432/zbase"}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    create(&client, "apiVersion: zbase.dev/v1alpha1\nkind: BaseStation\nmetadata: {name: relay, namespace: zbase}\nspec:\n  replicas: 2\n  store: {postgres: {secret: {name: db}}}\n").await;
    let first = eventually(&op, "the StatefulSet exists", || async {
        sts(&client, "relay").await
    })
    .await;
    assert_eq!(first.spec.as_ref().unwrap().replicas, Some(2));
    let env = station_container(&first).env.clone().unwrap();
    assert!(
        env.iter().any(|e| e.name == "ZBASE_STORE"),
        "the URL comes from the Secret"
    );
    let hash = config_hash(&first);

    patch_spec(
        &client,
        "relay",
        json!({"replicas": 3, "service": {"annotations": {"a": "b"}}}),
    )
    .await;
    let scaled = eventually(&op, "scaled to 3", || async {
        sts(&client, "relay")
            .await
            .filter(|s| s.spec.as_ref().unwrap().replicas == Some(3))
    })
    .await;
    assert_eq!(
        config_hash(&scaled),
        hash,
        "scaling does not change the pod template"
    );
    assert_eq!(
        scaled.spec.as_ref().unwrap().template,
        first.spec.as_ref().unwrap().template,
        "nothing rolls"
    );

    patch_spec(
        &client,
        "relay",
        json!({"station": {"peersPerResource": 64}}),
    )
    .await;
    let changed = eventually(&op, "the config hash changes", || async {
        sts(&client, "relay")
            .await
            .filter(|s| config_hash(s) != hash)
    })
    .await;
    let config = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("relay-config")
        .await
        .unwrap();
    assert!(config.data.unwrap()["station.yaml"].contains("peers-per-resource: 64"));
    assert_ne!(
        changed.spec.as_ref().unwrap().template,
        first.spec.as_ref().unwrap().template,
        "the pods roll"
    );
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_says_what_to_change() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    // The CRD's CEL rule refuses this on a real API server; the operator refuses it too.
    create(&client, "apiVersion: zbase.dev/v1alpha1\nkind: BaseStation\nmetadata: {name: home, namespace: zbase}\nspec: {replicas: 3}\n").await;
    let bs = eventually(&op, "Degraded InvalidSpec", || async {
        let bs = station(&client, "home").await;
        (condition(&bs, "Degraded")?.1 == "InvalidSpec").then_some(bs)
    })
    .await;
    let (ready, reason, message) = condition(&bs, "Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        message.contains("spec.replicas is 3 but the store is SQLite"),
        "{message}"
    );
    assert!(sts(&client, "home").await.is_none(), "nothing half-applied");
    assert!(!exists::<ConfigMap>(&client, "home-config").await);
    eventually(&op, "a Warning event", || async {
        events(&client)
            .await
            .contains(&("Warning".into(), "InvalidSpec".into()))
            .then_some(())
    })
    .await;

    patch_spec(&client, "home", json!({"replicas": 1})).await;
    eventually(&op, "fixed, it is applied", || async {
        sts(&client, "home").await
    })
    .await;
    eventually(&op, "Degraded clears", || async {
        (condition(&station(&client, "home").await, "Degraded")?.0 == "False").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paused_station_is_reported_but_not_touched() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    create(&client, MINIMAL).await;
    let before = eventually(&op, "the StatefulSet exists", || async {
        sts(&client, "home").await
    })
    .await;

    patch_spec(&client, "home", json!({"paused": true})).await;
    eventually(&op, "Paused is reported", || async {
        (condition(&station(&client, "home").await, "Paused")?.0 == "True").then_some(())
    })
    .await;
    api.clear_requests();
    patch_spec(
        &client,
        "home",
        json!({"station": {"peersPerResource": 5}, "networkPolicy": false}),
    )
    .await;
    Api::<Service>::namespaced(client.clone(), NS)
        .delete("home-internal", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        // Status, Events and the leader Lease's renewals are expected.
        .filter(|w| {
            !w.contains("/basestations") && !w.contains("/events") && !w.contains("/leases/")
        })
        .filter(|w| !w.ends_with("/services/home-internal") || !w.starts_with("DELETE"))
        .collect();
    assert!(
        writes.is_empty(),
        "a paused station's objects were written: {writes:?}"
    );
    assert_eq!(sts(&client, "home").await.unwrap().spec, before.spec);
    assert!(exists::<NetworkPolicy>(&client, "home").await);

    patch_spec(&client, "home", json!({"paused": false})).await;
    eventually(
        &op,
        "resumed: the change is applied and the Service restored",
        || async {
            let gone = !exists::<NetworkPolicy>(&client, "home").await;
            let back = exists::<Service>(&client, "home-internal").await;
            (gone && back).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_owned_object_deleted_or_edited_by_hand_is_put_back() {
    let (api, client) = cluster().await;
    let op = Operator::start(&api, "op-a");
    create(&client, MINIMAL).await;
    eventually(&op, "the StatefulSet exists", || async {
        sts(&client, "home").await
    })
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let old = services.get("home-internal").await.unwrap().uid();
    services
        .delete("home-internal", &DeleteParams::default())
        .await
        .unwrap();
    eventually(&op, "the Service is recreated", || async {
        services
            .get_opt("home-internal")
            .await
            .unwrap()
            .filter(|s| s.uid() != old)
    })
    .await;

    Api::<StatefulSet>::namespaced(client.clone(), NS)
        .patch("home", &PatchParams::apply("someone").force(), &Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "home"}, "spec": {"replicas": 5}
        })))
        .await
        .unwrap();
    eventually(&op, "the replica count is put back", || async {
        sts(&client, "home")
            .await
            .filter(|s| s.spec.as_ref().unwrap().replicas == Some(1))
    })
    .await;

    // Deleting the BaseStation deletes its objects (owner references); the claims' fate is
    // the StatefulSet's retention policy.
    Api::<BaseStation>::namespaced(client.clone(), NS)
        .delete("home", &DeleteParams::default())
        .await
        .unwrap();
    eventually(&op, "children are garbage-collected", || async {
        sts(&client, "home").await.is_none().then_some(())
    })
    .await;
    eventually(
        &op,
        "the site certificate goes with the station",
        || async { (!exists::<Secret>(&client, "home-tls").await).then_some(()) },
    )
    .await;
    // The claims are kept (whenDeleted: Retain), and so is the CA their clients trust.
    assert!(exists::<Secret>(&client, "home-ca").await);
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_a_stopping_leader_hands_over() {
    let (api, client) = cluster().await;
    let a = Operator::start(&api, "op-a");
    eventually(&a, "a leads", || async {
        (a.metric("zbase_operator_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let b = Operator::start(&api, "op-b");
    eventually(&b, "b is up", || async {
        b.metric("zbase_operator_leader").await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        b.metric("zbase_operator_leader").await,
        Some(0.0),
        "only one leads"
    );
    let ready = reqwest::get(format!("http://{}/readyz", b.listen))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200, "a standby is ready to take over");

    a.sigterm();
    eventually(&b, "b leads after a stops", || async {
        (b.metric("zbase_operator_leader").await == Some(1.0)).then_some(())
    })
    .await;
    create(&client, MINIMAL).await;
    eventually(&b, "the new leader reconciles", || async {
        sts(&client, "home").await
    })
    .await;
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        "zbase-system",
    )
    .get("zbase-operator")
    .await
    .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("op-b"));
}

#[tokio::test]
async fn the_charts_deployment_command_starts_the_real_operator() {
    let rendered = zbase_tests::helm::Chart::operator()
        .release("zbase", "zbase-system")
        .render()
        .unwrap();
    let deployment = rendered.get("Deployment", "zbase-operator").unwrap();
    let template: k8s_openapi::api::core::v1::PodTemplateSpec =
        serde_json::from_value(deployment["spec"]["template"].clone()).unwrap();
    let (api, client) = cluster().await;
    let container = template.spec.as_ref().unwrap().containers[0].name.clone();
    let mut pod = zbase_tests::kubelet::LocalPod::start(
        &template,
        &container,
        &operator_bin(),
        &BTreeMap::new(),
        "zbase-operator-6d4f-x",
        "zbase-system",
        &[("KUBECONFIG", api.kubeconfig().display().to_string())],
    );
    let port = template.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0]
        .name
        .clone()
        .unwrap();
    let addr = pod.port(&port);
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status() == 200
        {
            break;
        }
        assert!(!pod.exited(), "the operator exited:\n{}", pod.stderr_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    create(&client, MINIMAL).await;
    for _ in 0..200 {
        if sts(&client, "home").await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the chart's operator never reconciled:\n{}",
        pod.stderr_log()
    );
}

/// The site certificate Secret as pods mount it: the leaf (DER), its chain's CA, and the
/// bundle (PEM) the pod trusts.
#[derive(Clone, PartialEq)]
struct Mounted {
    leaf: Vec<u8>,
    issuer: Vec<u8>,
    bundle: String,
}

impl Mounted {
    fn read(secret: &Secret) -> Option<Mounted> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
        let chain = zbase_tests::tls::certs_from_pem(&text("tls.crt")?).ok()?;
        Some(Mounted {
            leaf: chain.first()?.to_vec(),
            issuer: chain.get(1)?.to_vec(),
            bundle: text("ca.crt")?,
        })
    }

    /// Whether a pod trusting this bundle admits `leaf` at `at` as a peer (client) and as a
    /// server for the station's in-cluster name.
    fn trusts(&self, leaf: &[u8], at: SystemTime) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let provider = zbase_tests::tls::provider();
        let roots = Arc::new(zbase_tests::tls::roots_from_pem(&self.bundle).unwrap());
        let leaf = rustls::pki_types::CertificateDer::from(leaf.to_vec());
        let now = rustls::pki_types::UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
        );
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap()
        .verify_client_cert(&leaf, &[], now)
        .is_ok();
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap()
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from("home.zbase.svc").unwrap(),
                &[],
                now,
            )
            .is_ok();
        client && server
    }
}

#[tokio::test]
async fn the_site_certificate_is_renewed_and_the_ca_rotated_without_a_pod_distrusting_another() {
    let (api, client) = cluster().await;
    // Seconds instead of days: leaves live 6 s and renew 3 s before expiry; the CA lives
    // 24 s, its successor is published 12 s before it expires and signs 4 s later, and the
    // previous one stays trusted 6 s after that.
    let op = Operator::start_with(
        &api,
        "op-a",
        &[
            "--site-cert-lifetime=6s",
            "--site-cert-renew-before=3s",
            "--site-ca-lifetime=24s",
            "--site-ca-rotate-before=12s",
            "--site-ca-publish-ahead=4s",
            "--site-ca-overlap=6s",
        ],
    );
    create(&client, MINIMAL).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let first = eventually(&op, "the site certificate is issued", || async {
        Mounted::read(&secrets.get_opt("home-tls").await.unwrap()?)
    })
    .await;

    // Deleted by hand, the certificate comes back at once (the operator watches it), from
    // the same CA.
    secrets
        .delete("home-tls", &DeleteParams::default())
        .await
        .unwrap();
    eventually(&op, "the deleted certificate is reissued", || async {
        Mounted::read(&secrets.get_opt("home-tls").await.unwrap()?)
            .filter(|m| m.leaf != first.leaf && m.issuer == first.issuer)
    })
    .await;

    // Watch every version the pods would mount, until the first CA has been published,
    // switched out and dropped from the bundle.
    // Each version with when it was first seen (leaves live seconds, so trust is judged then).
    let mut seen: Vec<(SystemTime, Mounted)> = vec![(SystemTime::now(), first.clone())];
    let mut ca_keys: Vec<Vec<String>> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation did not complete: CA Secret states {ca_keys:?}\noperator log:\n{}",
            op.log()
        );
        if let Some(m) = Mounted::read(&secrets.get("home-tls").await.unwrap())
            && seen.last().map(|(_, last)| last) != Some(&m)
        {
            seen.push((SystemTime::now(), m));
        }
        let ca = secrets.get("home-ca").await.unwrap();
        let keys: Vec<String> = ca.data.unwrap_or_default().into_keys().collect();
        if ca_keys.last() != Some(&keys) {
            ca_keys.push(keys);
        }
        let first_issuer_gone = seen.last().is_some_and(|(_, m)| {
            m.issuer != first.issuer
                && !zbase_tests::tls::certs_from_pem(&m.bundle)
                    .unwrap()
                    .iter()
                    .any(|c| c.as_ref() == first.issuer.as_slice())
        });
        if first_issuer_gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_with = |key: &str| {
        ca_keys
            .iter()
            .position(|keys| keys.iter().any(|k| k == key))
    };
    let published = first_with("next.crt");
    let switched = first_with("previous.crt");
    assert!(
        matches!((published, switched), (Some(p), Some(s)) if p < s),
        "the next CA is published before it signs: {ca_keys:?}"
    );
    let renewals = seen
        .windows(2)
        .filter(|w| w[0].1.issuer == w[1].1.issuer && w[0].1.leaf != w[1].1.leaf)
        .count();
    assert!(renewals >= 2, "leaves renewed {renewals} times");

    // The point: whichever of two consecutive versions a pod has mounted, it trusts the other
    // version's leaf, both ways. A rotation in one step would fail this at the switch.
    for (i, pair) in seen.windows(2).enumerate() {
        let ((_, old), (at, new)) = (&pair[0], &pair[1]);
        assert!(
            new.trusts(&new.leaf, *at),
            "version {} does not trust itself",
            i + 1
        );
        assert!(
            old.trusts(&new.leaf, *at),
            "a pod on version {i} refuses version {}",
            i + 1
        );
        assert!(
            new.trusts(&old.leaf, *at),
            "a pod on version {} refuses version {i}",
            i + 1
        );
    }

    // Each kind of change has its own reason: Events of one reason fold into a series.
    eventually(&op, "an Event for each step", || async {
        let reasons: Vec<String> = Api::<Event>::namespaced(client.clone(), NS)
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        [
            "SiteCACreated",
            "SiteCertificateIssued",
            "SiteCertificateRenewed",
            "SiteCAPublished",
            "SiteCARotated",
            "SiteCADropped",
        ]
        .iter()
        .all(|step| reasons.iter().any(|r| r == step))
        .then_some(())
    })
    .await;
    let bs = station(&client, "home").await;
    assert_eq!(
        condition(&bs, "TLS").unwrap().1,
        "CertificateValid",
        "{bs:?}"
    );

    // A CA Secret that cannot be used is not replaced: nothing is applied, and the status
    // says which key to restore.
    let mut broken = secrets.get("home-ca").await.unwrap();
    broken.data.as_mut().unwrap().remove("ca.key");
    broken.metadata.managed_fields = None;
    secrets
        .replace("home-ca", &PostParams::default(), &broken)
        .await
        .unwrap();
    let bs = eventually(&op, "the unusable CA is reported", || async {
        let bs = station(&client, "home").await;
        (condition(&bs, "Degraded")?.1 == "SiteCAUnusable").then_some(bs)
    })
    .await;
    let (status, _, message) = condition(&bs, "TLS").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("home-ca") && message.contains("ca.key"),
        "{message}"
    );
    assert!(
        !secrets
            .get("home-ca")
            .await
            .unwrap()
            .data
            .unwrap()
            .contains_key("ca.key"),
        "the operator does not replace a CA it cannot read"
    );
}

/// Plays the kubelet for a site's one pod: starts `<name>-0` from the StatefulSet's template
/// as a real station on the loopback IP `ip` (its container ports kept, as on a pod of its
/// own), mounting the ConfigMap and Secrets as the API server holds them now, then writes the
/// Pod with its IP and the StatefulSet's ready status.
async fn run_site_pod(client: &Client, name: &str, ip: std::net::IpAddr) -> LocalPod {
    let set = sts(client, name).await.unwrap();
    let template = set.spec.unwrap().template;
    let config: VolumeFiles = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get(&format!("{name}-config"))
        .await
        .unwrap()
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let secret = |secret: String| async move {
        let files: VolumeFiles = Api::<Secret>::namespaced(client.clone(), NS)
            .get(&secret)
            .await
            .unwrap()
            .data
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        LocalVolume::from(files)
    };
    let volumes = BTreeMap::from([
        ("config".to_owned(), LocalVolume::from(config)),
        ("site-tls".to_owned(), secret(format!("{name}-tls")).await),
        (
            "replication-trust".to_owned(),
            secret(format!("{name}-replication-trust")).await,
        ),
    ]);
    let pod_name = format!("{name}-0");
    let pod = LocalPod::start_at(
        ip,
        &template,
        "station",
        &zbase_tests::station::station_bin(),
        &volumes,
        &pod_name,
        NS,
        &[],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod_name, "labels": {"app.kubernetes.io/instance": name}},
        "spec": {"containers": [{"name": "station"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &object).await.unwrap();
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip.to_string()}})),
    )
    .await
    .unwrap();
    pods_ready(client, name, 1).await;
    pod
}

/// status.site of `name`, once it has one.
async fn site_status(client: &Client, name: &str) -> Option<zbase_operator::crd::SiteStatus> {
    station(client, name).await.status?.site
}

/// How many times an Event of `reason` was published on `name`.
async fn events_on(client: &Client, name: &str, reason: &str) -> usize {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
                // A repeated Event is one object with a series count.
                .map(|e| {
                    e.series
                        .map_or(1, |s| usize::try_from(s.count).unwrap_or(1))
                })
                .sum()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn two_sites_follow_then_switch_over_through_their_basestations() {
    let (api, client) = cluster().await;
    let op = Operator::start_with(&api, "op-a", &["--site-refresh=500ms"]);
    // Each site pod has a loopback IP of its own, so the other site and the operator reach
    // its replication port as they would a pod's: podIP:7443.
    let net = zbase_tests::pods::private_net();
    let (east_ip, west_ip) = (
        zbase_tests::pods::ip_in(net, 1),
        zbase_tests::pods::ip_in(net, 2),
    );
    let east_url = format!("https://{east_ip}:7443");
    let west_url = format!("https://{west_ip}:7443");
    create(
        &client,
        &format!(
            "apiVersion: zbase.dev/v1alpha1\nkind: BaseStation\nmetadata: {{name: east, namespace: zbase}}\n\
             spec: {{site: {{sites: ['{west_url}'], trust: {{name: east-trust}}}}}}\n"
        ),
    )
    .await;
    create(
        &client,
        &format!(
            "apiVersion: zbase.dev/v1alpha1\nkind: BaseStation\nmetadata: {{name: west, namespace: zbase}}\n\
             spec: {{site: {{replicaOf: '{east_url}', sites: ['{east_url}'], trust: {{name: west-trust}}}}}}\n"
        ),
    )
    .await;

    // Without the other site's CA, each site is still applied (its CA is what the other
    // site needs) and says what to create.
    for name in ["east", "west"] {
        let message = eventually(&op, "the missing trust is reported", || async {
            let (status, reason, message) =
                condition(&station(&client, name).await, "Replication")?;
            (status == "False" && reason == "TrustMissing").then_some(message)
        })
        .await;
        assert!(
            message.contains(&format!("Secret '{name}-trust', which does not exist")),
            "{message}"
        );
    }
    assert!(exists::<Service>(&client, "east-replication").await);

    // The user copies each site's CA bundle into the other's trust Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let bundle = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get(&format!("{name}-ca"))
                .await
                .unwrap()
                .data
                .unwrap()["bundle.crt"]
                .0
                .clone()
        }
    };
    let (east_ca, west_ca) = (bundle("east").await, bundle("west").await);
    for (name, ca) in [("east-trust", &west_ca), ("west-trust", &east_ca)] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"ca.crt": String::from_utf8(ca.clone()).unwrap()},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    // Picked up without a watch on the user's Secret: the site refresh reads it again.
    for (name, own, other) in [("east", &east_ca, &west_ca), ("west", &west_ca, &east_ca)] {
        eventually(&op, "the merged trust holds both CAs", || async {
            let merged = secrets
                .get(&format!("{name}-replication-trust"))
                .await
                .ok()?
                .data?["ca.crt"]
                .0
                .clone();
            let text = String::from_utf8(merged).ok()?;
            let has = |pem: &Vec<u8>| text.contains(std::str::from_utf8(pem).unwrap());
            (has(own) && has(other)).then_some(())
        })
        .await;
    }

    let east_pod = run_site_pod(&client, "east", east_ip).await;
    let west_pod = run_site_pod(&client, "west", west_ip).await;
    let logs = || {
        format!(
            "east:\n{}\nwest:\n{}",
            east_pod.stderr_log(),
            west_pod.stderr_log()
        )
    };

    let primary = eventually(&op, "east reports itself the primary", || async {
        let bs = station(&client, "east").await;
        let (status, reason, _) = condition(&bs, "Replication")?;
        (status == "True" && reason == "Primary").then_some(bs.status?.site?)
    })
    .await;
    assert_eq!(
        (primary.role.as_deref(), primary.epoch),
        (Some("primary"), Some(1)),
        "{}",
        logs()
    );
    let replica = eventually(&op, "west follows east", || async {
        let bs = station(&client, "west").await;
        let (status, reason, _) = condition(&bs, "Replication")?;
        (status == "True" && reason == "Following").then_some(bs.status?.site?)
    })
    .await;
    assert_eq!(replica.role.as_deref(), Some("replica"));
    assert_eq!(replica.following.as_deref(), Some(east_url.as_str()));
    assert_eq!(replica.lag_changes, Some(0), "lag reported: {replica:?}");
    assert!(replica.lag_seconds.is_some(), "{replica:?}");

    // A resource created on the primary's public port reaches the replica's cache, as both
    // stations report it in status.
    let tls = Tls::new(
        String::from_utf8(east_ca.clone()).unwrap(),
        "east.zbase.svc",
    );
    let proposed = random_id();
    let mut conn = Conn::connect_tls(Transport::Ws, east_pod.port("public"), &proposed, &tls).await;
    configure(&mut conn, &proposed, &Identity::ed25519()).await;
    let written = eventually(&op, "east counts the write", || async {
        site_status(&client, "east")
            .await?
            .last_sequence
            .filter(|seq| *seq > primary.last_sequence.unwrap_or(0))
    })
    .await;
    eventually(&op, "west's cache holds it", || async {
        let site = site_status(&client, "west").await?;
        (site.last_sequence == Some(written) && site.lag_changes == Some(0)).then_some(())
    })
    .await;

    // Switchover: demote the primary, then promote the replica with its token.
    patch_spec(&client, "east", json!({"site": {"demote": true}})).await;
    let token = eventually(&op, "east's handover token", || async {
        site_status(&client, "east").await?.handover_token
    })
    .await;
    assert_eq!(
        token,
        format!("1:{written}"),
        "the primary's epoch and last write"
    );
    eventually(&op, "east says it is demoted and what to do", || async {
        let (status, reason, message) = condition(&station(&client, "east").await, "Replication")?;
        (status == "False" && reason == "HandedOver" && message.contains(&token)).then_some(())
    })
    .await;
    eventually(&op, "a Demoted event", || async {
        (events_on(&client, "east", "Demoted").await == 1).then_some(())
    })
    .await;

    patch_spec(
        &client,
        "west",
        json!({"site": {"promote": {"token": token}}}),
    )
    .await;
    let promoted = eventually(&op, "west is the primary at epoch 2", || async {
        let bs = station(&client, "west").await;
        let (status, reason, _) = condition(&bs, "Replication")?;
        let site = bs.status?.site?;
        (status == "True" && reason == "Primary" && site.role.as_deref() == Some("primary"))
            .then_some(site)
    })
    .await;
    assert_eq!(promoted.epoch, Some(2), "{}", logs());
    assert_eq!(promoted.last_sequence, Some(written), "nothing lost");
    let promotion = promoted.promotion.clone().unwrap();
    assert_eq!(
        (
            promotion.epoch,
            promotion.failover,
            promotion.request.as_deref()
        ),
        (2, false, Some(format!("token:{token}").as_str()))
    );
    assert_eq!(promoted.following, None);
    eventually(&op, "a Promoted event", || async {
        (events_on(&client, "west", "Promoted").await == 1).then_some(())
    })
    .await;

    // Without its demote request, east is a fenced site like any other that learned of a
    // later epoch: its token is gone and a Warning says what to do.
    patch_spec(&client, "east", json!({"site": {"demote": null}})).await;
    eventually(&op, "east reported fenced", || async {
        let bs = station(&client, "east").await;
        let (status, reason, message) = condition(&bs, "Replication")?;
        (status == "False"
            && reason == "Fenced"
            && message.contains("rebuild it as a replica")
            && bs.status?.site?.handover_token.is_none())
        .then_some(())
    })
    .await;
    eventually(&op, "a Fenced warning", || async {
        events(&client)
            .await
            .contains(&("Warning".into(), "Fenced".into()))
            .then_some(())
    })
    .await;

    // Done once: a new operator (the old one's memory gone) finds it recorded and does not
    // ask again, while it goes on reporting.
    let mut op = op;
    op.sigterm();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(op.child.try_wait(), Ok(Some(_))) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first operator did not stop:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let op = Operator::start_with(&api, "op-b", &["--site-refresh=500ms"]);
    eventually(&op, "the new operator reconciles both sites", || async {
        let done = op
            .metric("zbase_operator_reconciliations_total{result=\"ok\"}")
            .await?;
        // Several refreshes of both sites, a second apart or more from the promotion.
        (done >= 8.0).then_some(())
    })
    .await;
    let after = site_status(&client, "west").await.unwrap();
    assert_eq!(after.promotion, Some(promotion), "promoted once");
    assert_eq!(events_on(&client, "west", "Promoted").await, 1);
    assert_eq!(after.epoch, Some(2));

    // A record lost (removed here from status, as a status write that never landed) is not
    // a reason to promote twice: the station answers "already the primary", which counts as
    // done, and no Event claims a new promotion.
    Api::<BaseStation>::namespaced(client.clone(), NS)
        .patch_status(
            "west",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"site": {"promotion": null}}})),
        )
        .await
        .unwrap();
    eventually(&op, "the promotion is found already made", || async {
        op.log()
            .contains("already made; recorded as done")
            .then_some(())
    })
    .await;
    let again = eventually(&op, "recorded again", || async {
        site_status(&client, "west").await?.promotion
    })
    .await;
    assert_eq!(
        (again.epoch, again.request),
        (2, Some(format!("token:{token}")))
    );
    assert_eq!(events_on(&client, "west", "Promoted").await, 1);
}
