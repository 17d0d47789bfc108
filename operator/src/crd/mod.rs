//! The `BaseStation` custom resource: what a user writes (spec) and what the operator reports
//! (status). The CRD is generated from these types (`zbase-operator crd`), so a field's doc
//! comment is its `kubectl explain` text and its schema attributes are what the API server
//! validates before the operator ever sees an object.

mod backup;
mod status;

pub use backup::{BackupPhase, BaseStationBackup, BaseStationBackupSpec, BaseStationBackupStatus};
pub use status::{BaseStationStatus, ConditionType, PromotionStatus, SiteStatus};

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of every zbase resource.
pub const GROUP: &str = "zbase.dev";

/// The desired state of one zbase base station: a StatefulSet of station pods behind one
/// Service, with its configuration, store, TLS and policies.
// Each printer column repeats `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "zbase.dev",
    version = "v1alpha1",
    kind = "BaseStation",
    namespaced,
    status = "BaseStationStatus",
    shortname = "zbs",
    category = "zbase",
    doc = "A zbase base station: a zero-knowledge relay and store for encrypted resources, run as a StatefulSet behind one Service.",
    annotation("helm.sh/resource-policy", "keep"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods ready to serve"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Role",
        type_ = "string",
        json_path = ".status.site.role",
        description = "primary, replica or fenced, as the station reports it (with spec.site)"
    ),
    printcolumn(
        name = "Lag",
        type_ = "number",
        json_path = ".status.site.lagSeconds",
        description = "Seconds a replica site is behind its primary"
    ),
    printcolumn(
        name = "Cert-Expiry",
        type_ = "date",
        json_path = ".status.certificateExpiry",
        priority = 1
    ),
    printcolumn(
        name = "Last-Backup",
        type_ = "date",
        json_path = ".status.lastBackup",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.replicas <= 1 || has(self.store.postgres)").message("more than one replica needs a PostgreSQL store: set spec.store.postgres, or spec.replicas: 1"))]
#[x_kube(validation = Rule::new("!has(self.restore) || has(self.backup)").message("spec.restore reads the backup from spec.backup's destination: set spec.backup"))]
#[x_kube(validation = Rule::new("!has(self.tls.acme) || self.replicas <= 1").message("ACME issuance runs in the station and serves one pod only: set spec.replicas: 1, or use spec.tls.certManager"))]
#[x_kube(validation = Rule::new("!has(self.site) || !has(self.site.replicaOf) || !has(self.store.postgres)").message("a replica site caches in SQLite: remove spec.store.postgres, or spec.site.replicaOf"))]
#[serde(rename_all = "camelCase")]
pub struct BaseStationSpec {
    /// Number of station pods. More than one needs `store.postgres`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,

    /// Stop reconciling: nothing is created, changed or deleted; status is still reported.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// Scale the station to zero pods, keeping its volumes, Services and configuration.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stopped: bool,

    /// The station image. [default: the image the operator was installed with]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// When the kubelet pulls the image: Always, IfNotPresent or Never. [default: IfNotPresent]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy is one of Always, IfNotPresent, Never"))]
    pub image_pull_policy: Option<String>,

    /// Names of Secrets in this namespace used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,

    /// Where resources are stored. [default: SQLite on a PersistentVolumeClaim]
    #[serde(default)]
    pub store: StoreSpec,

    /// The data volume of each pod (the SQLite file, ACME account and certificate).
    #[serde(default)]
    pub storage: StorageSpec,

    /// TLS on the public port. [default: plain HTTP, e.g. behind a TLS-terminating proxy]
    #[serde(default)]
    pub tls: TlsSpec,

    /// The public Service: the station's virtual IP.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Station settings: limits and logging.
    #[serde(default)]
    pub station: StationSettings,

    /// CPU and memory of each station container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where the pods may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,

    /// Labels added to each pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Annotations added to each pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// A partial pod template merged over the one the operator builds, for fields this
    /// resource does not expose. Objects merge key by key, containers merge by name, other
    /// lists replace. Example: `{spec: {containers: [{name: station, securityContext: {...}}]}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub pod_overrides: Option<serde_json::Value>,

    /// Create a NetworkPolicy that admits the public port from anywhere and the internal port
    /// only from this station's pods. [default: true]
    #[serde(default = "default_true")]
    pub network_policy: bool,

    /// Scheduled encrypted backups (a CronJob running `zbase-station backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// This station as one site of a deployment of several: the primary (writable), or a
    /// replica of it in another cluster (docs/REPLICATION.md). Absent: a station on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteSpec>,

    /// Start from a backup: before the station first serves, the backup named here is
    /// restored from spec.backup's destination into the empty store. Later starts find the
    /// store holding data and leave it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// One site of a deployment: its place (primary, or replica of another site), the other
/// sites it knows, whom it trusts, its replication port, and one-shot role changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.promote) && has(self.demote) && self.demote)").message("site.promote and site.demote exclude each other: keep one"))]
#[x_kube(validation = Rule::new("!has(self.promote) || has(self.replicaOf)").message("site.promote is for a replica site (one with site.replicaOf); a primary is already writable"))]
pub struct SiteSpec {
    /// The primary's replication URL (`https://host:7443`): this site is a replica of it.
    /// Read when the store is new only; once promoted, the role kept with the data wins.
    /// Absent: this site is the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("site.replicaOf is a URL: https://host:port"))]
    pub replica_of: Option<String>,

    /// The replication URLs of the deployment's other sites. A replica follows whichever is
    /// primary in the latest epoch (so it moves by itself after a promotion); a primary
    /// fences itself when one of them is primary in a later epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(u, u.startsWith('https://') || u.startsWith('http://'))").message("site.sites are URLs: https://host:port"))]
    pub sites: Vec<String>,

    /// A Secret key holding the PEM CA certificates of the OTHER sites (each site's
    /// `<name>-ca` key `bundle.crt`). The operator adds this site's own CA and mounts the
    /// result; a change is picked up without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<CaKeyRef>,

    /// The replication port and how other sites reach it.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// A replica becomes the primary (once; recorded in status.site.promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<PromoteSpec>,

    /// The primary stops taking writes for good and hands over: its token appears in
    /// status.site.handoverToken, for the next primary's site.promote.token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub demote: bool,

    /// A replica lagging longer than this many seconds makes the Replication condition
    /// False. [default: 30]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_lag_seconds: Option<u32>,
}

/// A one-shot promotion: a planned switchover (token) or a failover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.token) != (has(self.failover) && self.failover)").message("site.promote needs exactly one of token (a switchover) and failover: true"))]
pub struct PromoteSpec {
    /// The handover token `EPOCH:SEQUENCE` of the demoted primary (its
    /// status.site.handoverToken): promote once this site holds every change it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+:[0-9]+$')").message("site.promote.token is EPOCH:SEQUENCE, as the demoted primary's status.site.handoverToken shows it"))]
    pub token: Option<String>,
    /// Promote now, without a token: writes the lost primary took after this site's last
    /// change are not here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failover: bool,
}

/// The replication port: a Service of its own, so it can be exposed to the other sites
/// (and firewalled to them) apart from the public port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// The Service port. [default: 7443]
    #[serde(default = "default_replication_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The Service `<name>-replication`.
    #[serde(default)]
    pub service: ReplicationServiceSpec,
    /// CIDRs allowed to reach the port (the other sites' egress addresses), for the
    /// NetworkPolicy. [default: anywhere; mutual TLS still admits sites only]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow_from: Vec<String>,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        ReplicationSpec {
            port: default_replication_port(),
            service: ReplicationServiceSpec::default(),
            allow_from: Vec::new(),
        }
    }
}

/// The replication Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationServiceSpec {
    /// LoadBalancer, NodePort or ClusterIP. [default: LoadBalancer: other sites are in other
    /// clusters]
    #[serde(default = "default_service_type", rename = "type")]
    #[x_kube(validation = Rule::new("self in ['LoadBalancer', 'NodePort', 'ClusterIP']").message("site.replication.service.type is LoadBalancer, NodePort or ClusterIP"))]
    pub type_: String,
    /// Annotations of the Service, e.g. for MetalLB address pools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// A fixed address, for load balancers that honour `spec.loadBalancerIP`; it is added to
    /// the site certificate's names. Spelled `loadBalancerIP`, as in a Service.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<String>,
}

impl Default for ReplicationServiceSpec {
    fn default() -> Self {
        ReplicationServiceSpec {
            type_: default_service_type(),
            annotations: BTreeMap::new(),
            load_balancer_ip: None,
        }
    }
}

fn default_replication_port() -> i32 {
    7443
}

/// A backup to start a new station from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The backup's name in spec.backup's destination (`zbase-20261203T070001123Z-1f2e`), as
    /// `zbase-station backup list` or a BaseStationBackup's status shows it.
    #[x_kube(validation = Rule::new("self.startsWith('zbase-') && !self.contains('/')").message("restore.backup is a backup's name, zbase-<time>-..., without a folder"))]
    pub backup: String,
    /// A Secret key holding an age identity (`AGE-SECRET-KEY-1...`) the backup was encrypted
    /// to. It is only needed at the first start: once the station runs, remove spec.restore
    /// (the pods roll once), then delete the Secret.
    pub identity_secret: IdentityKeyRef,
}

/// One key of a Secret holding an age identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentityKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the identity. [default: key.txt]
    #[serde(default = "default_identity_key")]
    pub key: String,
}

fn default_identity_key() -> String {
    "key.txt".into()
}

/// Scheduled encrypted backups: what, when, to whom, where, and how many to keep. See
/// `docs/BACKUP.md`; the cluster holds only the age recipients (public keys).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.volume) != has(self.s3)").message("spec.backup needs exactly one destination: volume or s3"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to take a backup, in cron syntax (`0 3 * * *`: daily at 03:00).
    #[schemars(length(min = 1, max = 100))]
    pub schedule: String,
    /// The IANA time zone of the schedule (`Europe/Berlin`). [default: the controller's, UTC
    /// on k3s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Stop taking scheduled backups; the CronJob and every backup are kept.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,
    /// age recipients (`age1...`, from `age-keygen -y`) the backups are encrypted to; any one
    /// of their private keys opens a backup.
    #[schemars(length(min = 1, max = 32))]
    pub recipients: Vec<String>,
    /// A PersistentVolumeClaim in this namespace to write backups into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<BackupVolume>,
    /// S3-compatible object storage to write backups into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// Keep the newest this many backups (and any that keepWithin keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<u32>,
    /// Keep every backup younger than this (`30d`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

/// A PersistentVolumeClaim that holds backups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolume {
    /// The claim's name.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// A folder in the volume. [default: the volume's root]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// S3-compatible object storage (MinIO, Garage, SeaweedFS, Ceph RGW, AWS).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// `s3://bucket/prefix`.
    #[x_kube(validation = Rule::new("self.startsWith('s3://') && size(self) > 5").message("s3.url is s3://bucket/prefix"))]
    pub url: String,
    /// The server's URL (`https://s3.example.org:9000`). [default: AWS]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region requests are signed for. [default: us-east-1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Secret in this namespace with keys `access-key-id` and `secret-access-key`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
    /// A Secret key holding PEM CA certificates to trust for the server (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaKeyRef>,
}

/// One key of a Secret holding PEM certificates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the certificates. [default: ca.crt]
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Where resources are stored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StoreSpec {
    /// PostgreSQL, needed for more than one pod. Absent: SQLite on each pod's volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStore>,
}

/// A PostgreSQL database, named by a connection Secret or a CloudNativePG Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secret) != has(self.cloudNativePG)").message("set exactly one of store.postgres.secret and store.postgres.cloudNativePG"))]
pub struct PostgresStore {
    /// A Secret in this namespace holding a connection URL (`postgres://user:password@host:5432/db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretKeyRef>,

    /// A CloudNativePG `Cluster` in this namespace: the station uses its `<cluster>-app` Secret.
    #[serde(
        default,
        rename = "cloudNativePG",
        skip_serializing_if = "Option::is_none"
    )]
    pub cloud_native_pg: Option<CloudNativePgRef>,
}

/// One key of a Secret in the station's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key whose value is the connection URL. [default: uri]
    #[serde(default = "default_uri_key")]
    pub key: String,
}

/// A CloudNativePG `Cluster` (postgresql.cnpg.io/v1) in the station's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CloudNativePgRef {
    /// The Cluster's name.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
}

/// The data volume of each pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each pod's PersistentVolumeClaim. [default: 1Gi]
    #[serde(default = "default_storage_size")]
    pub size: String,

    /// StorageClass of the claims. [default: the cluster's default, local-path on k3s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// What happens to the claims when this BaseStation is deleted: Retain keeps the data
    /// (delete the claims by hand), Delete removes it. [default: Retain]
    #[serde(default = "default_retain")]
    #[x_kube(validation = Rule::new("self in ['Retain', 'Delete']").message("storage.whenDeleted is Retain or Delete"))]
    pub when_deleted: String,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            when_deleted: default_retain(),
        }
    }
}

/// TLS on the public port: a certificate from the site CA the operator keeps (the default),
/// or at most one other source, or plain HTTP. The internal port always uses mutual TLS with
/// the site CA, whatever the public port does.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.secretName) ? 1 : 0) + (has(self.certManager) ? 1 : 0) + (has(self.acme) ? 1 : 0) <= 1").message("set at most one of tls.secretName, tls.certManager and tls.acme"))]
#[x_kube(validation = Rule::new("!has(self.plainHTTP) || !self.plainHTTP || !(has(self.secretName) || has(self.certManager) || has(self.acme))").message("tls.plainHTTP turns TLS off: remove it, or remove tls.secretName, tls.certManager and tls.acme"))]
#[x_kube(validation = Rule::new("!has(self.names) || size(self.names) == 0 || !(has(self.secretName) || has(self.certManager) || has(self.acme) || (has(self.plainHTTP) && self.plainHTTP))").message("tls.names are for the certificate the operator issues: with another source, give the names to that source"))]
pub struct TlsSpec {
    /// Serve plain HTTP on the public port, behind a proxy that terminates TLS (or to try it
    /// out). The station logs a warning when it listens in plain on a non-loopback address.
    #[serde(
        default,
        rename = "plainHTTP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub plain_http: bool,

    /// Names clients use to reach the station (DNS names or IP addresses), added to the
    /// certificate the operator issues from the site CA. The Service's own names and its
    /// load-balancer addresses are always on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub names: Vec<String>,

    /// A `kubernetes.io/tls` Secret you manage (keys `tls.crt`, `tls.key`); a renewed Secret
    /// is picked up without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// A cert-manager `Certificate` created by the operator; cert-manager keeps it renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerTls>,

    /// The station obtains and renews its certificate over ACME (TLS-ALPN-01 on the public
    /// port, which must be reachable on 443 under the domain). One pod only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeTls>,
}

/// A cert-manager certificate for the public port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerTls {
    /// The issuer cert-manager signs with.
    pub issuer_ref: IssuerRef,
    /// Names clients connect to; the first is the common name.
    #[schemars(length(min = 1))]
    pub dns_names: Vec<String>,
    /// Certificate lifetime, e.g. `2160h`. [default: cert-manager's, 90 days]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// How long before expiry cert-manager renews, e.g. `720h`. [default: cert-manager's]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
}

/// A cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    pub name: String,
    /// Issuer or ClusterIssuer. [default: Issuer]
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// The issuer's API group. [default: cert-manager.io]
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// ACME issuance by the station itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AcmeTls {
    /// The ACME directory URL. [default: Let's Encrypt production]
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// The domain of the certificate, resolving to this station's Service.
    #[schemars(length(min = 1, max = 253))]
    pub domain: String,
    /// Contact address for expiry notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The public Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// LoadBalancer (k3s ServiceLB, MetalLB, kube-vip), NodePort or ClusterIP. [default: LoadBalancer]
    #[serde(default = "default_service_type", rename = "type")]
    #[x_kube(validation = Rule::new("self in ['LoadBalancer', 'NodePort', 'ClusterIP']").message("service.type is LoadBalancer, NodePort or ClusterIP"))]
    pub type_: String,
    /// The Service port. [default: 443 with TLS, 80 without]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// A fixed node port, with type NodePort or LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
    /// A fixed virtual IP, for load balancers that honour `spec.loadBalancerIP` (MetalLB,
    /// kube-vip); others take an annotation instead. Spelled `loadBalancerIP`, as in a
    /// Service.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<String>,
    /// The load balancer implementation to use, where several are installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// Cluster or Local; Local keeps the client's source IP, which per-IP limits use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// Annotations of the Service, e.g. for MetalLB address pools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: default_service_type(),
            port: None,
            node_port: None,
            load_balancer_ip: None,
            load_balancer_class: None,
            external_traffic_policy: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// Station settings passed through to its configuration file; absent ones keep the
/// station's defaults (see `zbase-station serve --help`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StationSettings {
    /// Log filter in RUST_LOG syntax. [default: info]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Largest frame accepted, in bytes. [station default: 8388608]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8194, max = 268435456))]
    pub frame_max_bytes: Option<u64>,
    /// Time a client has to answer the handshake, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
    /// Verified peers per resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub peers_per_resource: Option<u64>,
    /// Open connections per client IP (per pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections_per_ip: Option<u64>,
    /// Failed handshakes per client IP within a minute before it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failed_handshakes_per_minute: Option<u32>,
    /// Frames queued towards one peer before it is disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub peer_queue_frames: Option<u64>,
    /// How long a resource without peers stays in memory, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_idle: Option<String>,
    /// How long a stopping pod waits for connections and writes, e.g. `10s`; the pod's
    /// termination grace period is this plus 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    /// Membership lease between pods on PostgreSQL, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// Where the pods may run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels a pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity. [default: prefer spreading pods over nodes]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub affinity: Option<Affinity>,
    /// How pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

fn default_replicas() -> i32 {
    1
}
fn default_true() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_uri_key() -> String {
    "uri".into()
}
fn default_storage_size() -> String {
    "1Gi".into()
}
fn default_retain() -> String {
    "Retain".into()
}
fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}
fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}
fn default_service_type() -> String {
    "LoadBalancer".into()
}

/// Kubernetes' own schemas for affinity, tolerations and pod templates are large; the CRD
/// keeps them open (the API server still checks them when the operator applies the
/// StatefulSet, and the operator reports that error) so it stays far below the size limit.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn free_form_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// The plural names of the CRDs, as `zbase-operator crd NAME` takes them; the chart ships
/// each as `files/crds/<plural>.zbase.dev.yaml`.
pub const CRDS: [&str; 2] = ["basestations", "basestationbackups"];

/// The CRD of `plural` as YAML, as `zbase-operator crd` prints it and the chart ships it;
/// `None` for a name not in [`CRDS`].
pub fn crd_yaml(plural: &str) -> Option<Result<String, serde_yaml::Error>> {
    let crd = match plural {
        "basestations" => BaseStation::crd(),
        "basestationbackups" => BaseStationBackup::crd(),
        _ => return None,
    };
    let header = "# Generated by `zbase-operator crd` from operator/src/crd; do not edit.\n";
    Some(serde_yaml::to_string(&crd).map(|yaml| format!("{header}{yaml}")))
}
