//! Runs the reconcile for every BaseStation of the watched namespaces, woken by changes to
//! the BaseStation and to every object it owns (so an object deleted or edited by hand is put
//! back at once), and by a periodic resync.

use crate::crd::BaseStation;
use crate::reconcile::{self, Context};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::watcher;
use std::future::Future;
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
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };
    match scope {
        Scope::Cluster => run_one(ctx, None, stopped()).await,
        Scope::Namespaces(namespaces) => {
            let runs = namespaces
                .into_iter()
                .map(|ns| run_one(ctx.clone(), Some(ns), stopped()));
            futures::future::join_all(runs).await;
        }
    }
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

async fn run_one(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    // Children are only those the operator labelled, so the watches stay small in busy namespaces.
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        reconcile::build::MANAGED_BY_LABEL,
        reconcile::build::MANAGER
    ));
    Controller::new(api::<BaseStation>(&ctx, ns), watcher::Config::default())
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
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(station = %object.name, namespace = ?object.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not run"),
            }
        })
        .await;
}
