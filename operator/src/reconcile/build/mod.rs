//! Every object a station needs, built from a validated [`Station`] with no client and no
//! clock: the same station always gives the same objects, so each builder is a golden test.
//!
//! Every object carries the station's labels (which the prune step selects by) and an owner
//! reference to the BaseStation, so Kubernetes deletes them with it, and volumes are kept or
//! deleted by the StatefulSet's own claim retention policy: no finalizer is needed.

mod backup;
pub use backup::{
    BACKUP_CONTAINER, ON_DEMAND_LABEL, RESTORE_CONTAINER, TERMINATION_LOG, backup_name,
    on_demand_job, on_demand_job_name,
};
mod certificate;
pub use certificate::certificate_resource;
mod config;
mod merge;
mod policy;
mod secrets;
pub use secrets::SiteCredentials;
mod services;
mod statefulset;

pub use config::{
    CONFIG_FILE, CONFIG_KEY, INTERNAL_PORT, PUBLIC_PORT, REPLICATION_PORT, REPLICATION_TRUST_DIR,
    REPLICATION_TRUST_KEY, station_config,
};
pub use merge::merge_pod_template;
pub use services::public_port;

use super::validate::Station;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use std::collections::BTreeMap;

/// The label every object of a station carries with the station's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The label naming who manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// This operator's name, as field manager and in `managed-by`.
pub const MANAGER: &str = "zbase-operator";
/// The pod template annotation holding the configuration's hash: a config change rolls the
/// pods, and nothing else in the ConfigMap's life does.
pub const CONFIG_HASH_ANNOTATION: &str = "zbase.dev/config-hash";

/// Everything one station consists of. Destructured without `..` where applied and pruned,
/// so a new kind of object cannot be forgotten in either place. Not `Debug`: it holds keys.
#[derive(Clone)]
pub struct Desired {
    /// The pods' identity (no API access: its token is not even mounted).
    pub service_account: ServiceAccount,
    /// The station's YAML configuration.
    pub config_map: ConfigMap,
    /// The site CA: its certificate and key, and the bundle of CAs to trust.
    pub ca_secret: Secret,
    /// The site certificate the pods mount: presented on the internal port, and served on the
    /// public one unless another source is chosen.
    pub leaf_secret: Secret,
    /// The public Service: the virtual IP clients connect to.
    pub public_service: Service,
    /// The headless Service that gives each pod a DNS name for the internal port.
    pub headless_service: Service,
    /// The internal (admin) Service: cluster-only, for replication and backups.
    pub internal_service: Service,
    /// With spec.site: the replication Service the other sites dial.
    pub replication_service: Option<Service>,
    /// With spec.site: this site's CA bundle and the other sites' CAs, as the pods trust them
    /// on the replication port.
    pub replication_trust: Option<Secret>,
    /// The pods.
    pub stateful_set: StatefulSet,
    /// At most one pod down at a time through voluntary disruptions.
    pub pod_disruption_budget: PodDisruptionBudget,
    /// Who may reach which port; `None` when the spec turns it off.
    pub network_policy: Option<NetworkPolicy>,
    /// The cert-manager Certificate, in that TLS mode.
    pub certificate: Option<DynamicObject>,
    /// The scheduled backups, when the spec asks for them.
    pub backup_cron_job: Option<CronJob>,
    /// The rendered configuration's hash, also on the pod template.
    pub config_hash: String,
}

/// A failure to build, which only a user's pod overrides can cause.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The merged pod template is not a pod template.
    #[error("spec.podOverrides does not merge into a valid pod template: {0}")]
    PodOverrides(String),
    /// The station configuration cannot be written (an impossible value).
    #[error("the station configuration cannot be written: {0}")]
    Config(String),
}

/// Builds every object of `station`, with the site credentials `site` as planned.
pub fn build(station: &Station, site: &SiteCredentials) -> Result<Desired, BuildError> {
    let (config_map, config_hash) = config::config_map(station)?;
    Ok(Desired {
        ca_secret: secrets::ca_secret(station, &site.ca),
        leaf_secret: secrets::leaf_secret(station, &site.leaf),
        service_account: ServiceAccount {
            metadata: metadata(station, &station.name),
            automount_service_account_token: Some(false),
            ..Default::default()
        },
        config_map,
        public_service: services::public(station),
        headless_service: services::headless(station),
        internal_service: services::internal(station),
        replication_service: services::replication(station),
        replication_trust: secrets::replication_trust(station, &site.ca),
        stateful_set: statefulset::stateful_set(station, &config_hash)?,
        pod_disruption_budget: policy::pod_disruption_budget(station),
        network_policy: station
            .network_policy
            .then(|| policy::network_policy(station)),
        certificate: certificate::certificate(station),
        backup_cron_job: station
            .backup
            .as_ref()
            .map(|b| backup::cron_job(station, b)),
        config_hash,
    })
}

/// Labels that select a station's pods; never changed after creation (a StatefulSet's
/// selector is immutable).
pub fn selector_labels(station: &Station) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "zbase-station".to_owned(),
        ),
        (INSTANCE_LABEL.to_owned(), station.name.clone()),
    ])
}

/// Labels on every object: the selector labels, who manages it, and what it is part of.
pub fn labels(station: &Station) -> BTreeMap<String, String> {
    let mut labels = selector_labels(station);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    labels.insert("app.kubernetes.io/part-of".to_owned(), "zbase".to_owned());
    labels
}

/// The label selector that finds every object of a station, for pruning.
pub fn prune_selector(station_name: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{INSTANCE_LABEL}={station_name}")
}

/// The owner reference to the BaseStation: deleting it deletes its objects.
pub fn owner_reference(station: &Station) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/v1alpha1", crate::crd::GROUP),
        kind: "BaseStation".into(),
        name: station.name.clone(),
        uid: station.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata for an object of `station` called `name`.
fn metadata(station: &Station, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(station.namespace.clone()),
        labels: Some(labels(station)),
        owner_references: Some(vec![owner_reference(station)]),
        ..Default::default()
    }
}

/// The headless Service's name, which is also the StatefulSet's `serviceName`.
pub fn headless_name(station: &str) -> String {
    format!("{station}-pods")
}

/// The internal Service's name.
pub fn internal_name(station: &str) -> String {
    format!("{station}-internal")
}

/// The replication Service's name.
pub fn replication_name(station: &str) -> String {
    format!("{station}-replication")
}

/// The merged replication trust Secret's name.
pub fn replication_trust_name(station: &str) -> String {
    format!("{station}-replication-trust")
}

/// The ConfigMap's name.
pub fn config_name(station: &str) -> String {
    format!("{station}-config")
}
