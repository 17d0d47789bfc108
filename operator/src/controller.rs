//! Runs the reconcile for every BaseStation of the watched namespaces, woken by changes to
//! the BaseStation and to every object it owns (so an object deleted or edited by hand is put
//! back at once), and by a periodic resync.

use crate::crd::{BaseStation, BaseStationBackup};
use crate::reconcile::{self, Context};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use std::sync::Arc;
use tokio::sync::watch;

/// Which namespaces the operator acts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// Only these (a Role in each).
    Namespaces(Vec<String>),
}

/// Reconciles until `stop` turns true.
pub async fn run(ctx: Arc<Context>, scope: Scope, stop: watch::Receiver<bool>) {
    match scope {
        Scope::Cluster => run_one(ctx, None, stop).await,
        Scope::Namespaces(namespaces) => {
            let runs = namespaces
                .into_iter()
                .map(|ns| run_one(ctx.clone(), Some(ns), stop.clone()));
            futures::future::join_all(runs).await;
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn api<K>(ctx: &Context, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

async fn run_one(ctx: Arc<Context>, namespace: Option<String>, stop: watch::Receiver<bool>) {
    let ns = namespace.as_deref();
    let owned_jobs = watcher::Config::default().labels(reconcile::build::ON_DEMAND_LABEL);
    // Children are only those the operator labelled, so the watches stay small in busy namespaces.
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        reconcile::build::MANAGED_BY_LABEL,
        reconcile::build::MANAGER
    ));
    let stations = Controller::new(api::<BaseStation>(&ctx, ns), watcher::Config::default())
        .owns(api::<StatefulSet>(&ctx, ns), owned.clone())
        .owns(api::<Service>(&ctx, ns), owned.clone())
        .owns(api::<ConfigMap>(&ctx, ns), owned.clone())
        // The site certificate: deleted or edited by hand, it is reissued at once.
        .owns(api::<Secret>(&ctx, ns), owned.clone())
        .owns(api::<ServiceAccount>(&ctx, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&ctx, ns), owned.clone())
        .owns(api::<NetworkPolicy>(&ctx, ns), owned.clone())
        // A backup run that ends changes the CronJob's status, which the Backup condition tells.
        .owns(api::<CronJob>(&ctx, ns), owned)
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(station = %object.name, namespace = ?object.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not run"),
            }
        });
    // On-demand backups: woken by the request, by its Job, and by its BaseStation (a request
    // made before its station, or before the station's spec.backup, goes on at once).
    let backups = Controller::new(
        api::<BaseStationBackup>(&ctx, ns),
        watcher::Config::default(),
    );
    let requests = requests_of(backups.store());
    let backups = backups
        .owns(api::<Job>(&ctx, ns), owned_jobs)
        .watches(api::<BaseStation>(&ctx, ns), watcher::Config::default(), requests)
        .graceful_shutdown_on(stopped(stop))
        .run(reconcile::on_demand::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(backup = %object.name, namespace = ?object.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not run"),
            }
        });
    tokio::join!(stations, backups);
}

/// The BaseStationBackups in `store` that name a BaseStation, to wake when it changes.
fn requests_of(
    store: Store<BaseStationBackup>,
) -> impl Fn(BaseStation) -> Vec<ObjectRef<BaseStationBackup>> {
    move |station| {
        let (name, namespace) = (station.name_any(), station.namespace());
        store
            .state()
            .into_iter()
            .filter(|r| r.spec.base_station == name && r.namespace() == namespace)
            .map(|r| ObjectRef::from_obj(&*r))
            .collect()
    }
}
