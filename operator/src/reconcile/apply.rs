//! Server-side apply of the built objects, then pruning of the station's objects that are no
//! longer built (a NetworkPolicy turned off, a Certificate after a TLS mode change).
//!
//! Secrets are applied whole each time, keys included: the plan kept them byte for byte
//! unless they had to change, so an unchanged Secret is a no-op for the API server.
//!
//! Order: identity and configuration first, so the first pods start with them; then the
//! Services; then the StatefulSet; then the policies around it.

use super::build::certificate_resource;
use super::build::{Desired, MANAGER, prune_selector};
use super::validate::Station;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// An API call that failed, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} '{name}': {source}")]
pub struct ApplyError {
    /// apply, list or delete.
    pub verb: &'static str,
    /// The object's kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What the API server said.
    #[source]
    pub source: kube::Error,
}

/// What applying returned: the StatefulSet and Service as the API server now has them.
#[derive(Debug)]
pub struct Applied {
    /// The StatefulSet after apply.
    pub stateful_set: StatefulSet,
    /// The public Service after apply.
    pub service: Service,
    /// The backup CronJob after apply (its status tells the last successful backup).
    pub backup_cron_job: Option<CronJob>,
    /// Objects deleted by pruning, as `Kind/name`.
    pub pruned: Vec<String>,
}

/// Applies every object of `desired`, then prunes what is no longer desired.
pub async fn apply(
    client: &Client,
    station: &Station,
    desired: &Desired,
) -> Result<Applied, ApplyError> {
    let Desired {
        service_account,
        config_map,
        ca_secret,
        leaf_secret,
        public_service,
        headless_service,
        internal_service,
        replication_service,
        replication_trust,
        stateful_set,
        pod_disruption_budget,
        network_policy,
        certificate,
        backup_cron_job,
        config_hash: _,
    } = desired;
    let ns = &station.namespace;
    apply_one(client, ns, service_account).await?;
    apply_one(client, ns, config_map).await?;
    // The site certificate before the pods that mount it.
    apply_one(client, ns, ca_secret).await?;
    apply_one(client, ns, leaf_secret).await?;
    if let Some(trust) = replication_trust {
        apply_one(client, ns, trust).await?;
    }
    if let Some(certificate) = certificate {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &certificate_resource());
        api.patch(
            &certificate.name_any(),
            &params(),
            &Patch::Apply(certificate),
        )
        .await
        .map_err(|source| ApplyError {
            verb: "apply",
            kind: "Certificate (cert-manager.io/v1; is cert-manager installed?)".into(),
            name: certificate.name_any(),
            source,
        })?;
    }
    let service = apply_one(client, ns, public_service).await?;
    apply_one(client, ns, headless_service).await?;
    apply_one(client, ns, internal_service).await?;
    if let Some(service) = replication_service {
        apply_one(client, ns, service).await?;
    }
    let stateful_set = apply_one(client, ns, stateful_set).await?;
    apply_one(client, ns, pod_disruption_budget).await?;
    if let Some(policy) = network_policy {
        apply_one(client, ns, policy).await?;
    }
    let backup_cron_job = match backup_cron_job {
        Some(cron_job) => Some(apply_one(client, ns, cron_job).await?),
        None => None,
    };

    let mut pruned = Vec::new();
    prune::<ServiceAccount>(client, station, &[service_account.name_any()], &mut pruned).await?;
    prune::<ConfigMap>(client, station, &[config_map.name_any()], &mut pruned).await?;
    let mut keep = vec![ca_secret.name_any(), leaf_secret.name_any()];
    keep.extend(replication_trust.iter().map(|s| s.name_any()));
    prune::<Secret>(client, station, &keep, &mut pruned).await?;
    let mut keep = vec![
        public_service.name_any(),
        headless_service.name_any(),
        internal_service.name_any(),
    ];
    keep.extend(replication_service.iter().map(|s| s.name_any()));
    prune::<Service>(client, station, &keep, &mut pruned).await?;
    prune::<StatefulSet>(client, station, &[stateful_set.name_any()], &mut pruned).await?;
    prune::<PodDisruptionBudget>(
        client,
        station,
        &[pod_disruption_budget.name_any()],
        &mut pruned,
    )
    .await?;
    let keep: Vec<String> = network_policy.iter().map(|p| p.name_any()).collect();
    prune::<NetworkPolicy>(client, station, &keep, &mut pruned).await?;
    prune_certificates(client, station, certificate.as_ref(), &mut pruned).await?;
    let keep: Vec<String> = backup_cron_job.iter().map(|c| c.name_any()).collect();
    prune::<CronJob>(client, station, &keep, &mut pruned).await?;
    Ok(Applied {
        stateful_set,
        service,
        backup_cron_job,
        pruned,
    })
}

fn params() -> PatchParams {
    // The operator owns these fields outright: a hand edit is put back on the next reconcile.
    PatchParams::apply(MANAGER).force()
}

async fn apply_one<K>(client: &Client, ns: &str, object: &K) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(&object.name_any(), &params(), &Patch::Apply(object))
        .await
        .map_err(|source| ApplyError {
            verb: "apply",
            kind: K::kind(&()).into_owned(),
            name: object.name_any(),
            source,
        })
}

/// Deletes the station's objects of kind `K` not named in `keep`. Only objects that carry the
/// station's labels and are owned by this very BaseStation (its uid) are touched.
async fn prune<K>(
    client: &Client,
    station: &Station,
    keep: &[String],
    pruned: &mut Vec<String>,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &station.namespace);
    let kind = K::kind(&()).into_owned();
    let list = api
        .list(&ListParams::default().labels(&prune_selector(&station.name)))
        .await
        .map_err(|source| ApplyError {
            verb: "list",
            kind: kind.clone(),
            name: String::new(),
            source,
        })?;
    for object in list.items {
        let name = object.name_any();
        if keep.contains(&name) || !owned_by(object.owner_references(), station) {
            continue;
        }
        api.delete(&name, &DeleteParams::background())
            .await
            .map_err(|source| ApplyError {
                verb: "delete",
                kind: kind.clone(),
                name: name.clone(),
                source,
            })?;
        pruned.push(format!("{kind}/{name}"));
    }
    Ok(())
}

async fn prune_certificates(
    client: &Client,
    station: &Station,
    keep: Option<&DynamicObject>,
    pruned: &mut Vec<String>,
) -> Result<(), ApplyError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &station.namespace, &certificate_resource());
    let list = match api
        .list(&ListParams::default().labels(&prune_selector(&station.name)))
        .await
    {
        Ok(list) => list,
        // cert-manager is not installed, so there is nothing of ours to prune.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(ApplyError {
                verb: "list",
                kind: "Certificate".into(),
                name: String::new(),
                source,
            });
        }
    };
    for object in list.items {
        let name = object.name_any();
        if keep.is_some_and(|k| k.name_any() == name)
            || !owned_by(object.owner_references(), station)
        {
            continue;
        }
        api.delete(&name, &DeleteParams::background())
            .await
            .map_err(|source| ApplyError {
                verb: "delete",
                kind: "Certificate".into(),
                name: name.clone(),
                source,
            })?;
        pruned.push(format!("Certificate/{name}"));
    }
    Ok(())
}

fn owned_by(
    refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    station: &Station,
) -> bool {
    refs.iter().any(|r| r.uid == station.uid)
}
