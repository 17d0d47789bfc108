//! One reconcile of one `BaseStation`, as a pipeline: read what the spec refers to,
//! **validate** into a [`Station`], **build** every object (pure), **apply** them with
//! server-side apply and prune the rest, then **report** status and Events from what the API
//! server returned. A spec that fails validation or building applies nothing.

pub mod apply;
pub mod build;
pub mod on_demand;
pub mod site;
pub mod status;
pub mod validate;

use crate::crd::BaseStation;
use crate::pki;
use crate::telemetry::{Metrics, StationLabel};
use build::{Desired, MANAGER, SiteCredentials};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use status::{Observed, Outcome};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use validate::{Defaults, References, Station, Tls};

/// How often a steady station is looked at again, to refresh certificate expiry and to notice
/// Secrets the spec names (they are not watched).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a refused spec is looked at again: a missing Secret may have been created.
pub const RETRY_INVALID: Duration = Duration::from_secs(30);

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's defaults for stations.
    pub defaults: Defaults,
    /// Publishes Events on BaseStations.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Lifetimes and renewal windows of the site CAs and certificates.
    pub pki: pki::Policy,
    /// How often a site's station is asked for its role and lag.
    pub site_refresh: Duration,
}

/// Why a reconcile failed; the variant name is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the spec's references failed.
    #[error("reading references: {0}")]
    References(#[source] kube::Error),
    /// The API server refused an object.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// Writing status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// The site CA or certificate could not be planned.
    #[error("site certificate: {0}")]
    Pki(#[source] pki::PkiError),
    /// Reading or creating an on-demand backup's BaseStation, Job or pods failed.
    #[error("on-demand backup: {0}")]
    Backup(#[source] kube::Error),
}

impl Error {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::References(_) => "references",
            Error::Apply(_) => "apply",
            Error::Status(_) => "status",
            Error::Pki(_) => "pki",
            Error::Backup(_) => "backup",
        }
    }
}

/// Reconciles one BaseStation, timed and counted (failures are counted by [`error_policy`]).
pub async fn reconcile(bs: Arc<BaseStation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_timer();
    let result = reconcile_once(&bs, &ctx).await;
    // Timed before counted, so a scrape never sees more results than durations.
    drop(timer);
    if result.is_ok() {
        ctx.metrics.reconcile_ok();
    }
    result
}

async fn reconcile_once(bs: &BaseStation, ctx: &Context) -> Result<Action, Error> {
    // Deletion is Kubernetes' job: owner references remove the objects, the StatefulSet's
    // retention policy keeps or removes the volumes.
    if bs.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = bs.namespace().unwrap_or_default();
    let client = &ctx.client;

    if bs.spec.paused {
        let observed = observe(client, &ns, &bs.name_any(), None).await;
        report(ctx, bs, &Outcome::Paused, &observed).await?;
        return Ok(Action::requeue(RESYNC));
    }

    let refs = read_references(client, bs)
        .await
        .map_err(Error::References)?;
    let station = match validate::validate(bs, &ctx.defaults, &refs) {
        Ok(station) => station,
        Err(invalid) => {
            let observed = observe(client, &ns, &bs.name_any(), None).await;
            report(ctx, bs, &Outcome::Invalid(invalid.to_string()), &observed).await?;
            return Ok(Action::requeue(RETRY_INVALID));
        }
    };
    let now = SystemTime::now();
    let plan = match plan_site_credentials(client, &station, &ctx.pki, now).await? {
        Ok(plan) => plan,
        Err(refused) => {
            let observed = observe(client, &ns, &bs.name_any(), None).await;
            report(ctx, bs, &Outcome::SiteCa(refused.to_string()), &observed).await?;
            return Err(Error::Pki(refused));
        }
    };
    let site = SiteCredentials {
        ca: plan.ca.clone(),
        leaf: plan.leaf.clone(),
    };
    let desired: Desired = match build::build(&station, &site) {
        Ok(desired) => desired,
        Err(e) => {
            let observed = observe(client, &ns, &bs.name_any(), None).await;
            report(ctx, bs, &Outcome::Invalid(e.to_string()), &observed).await?;
            return Ok(Action::requeue(RETRY_INVALID));
        }
    };

    match apply::apply(client, &station, &desired).await {
        Ok(applied) => {
            for gone in &applied.pruned {
                tracing::info!(station = %bs.name_any(), namespace = %ns, object = %gone, "pruned an object no longer in the spec");
            }
            let mut observed =
                observe(client, &ns, &bs.name_any(), station.tls.secret_name()).await;
            observed.stateful_set = Some(applied.stateful_set);
            observed.service = Some(applied.service);
            observed.backup_cron_job = applied.backup_cron_job;
            observed.config_hash = Some(desired.config_hash.clone());
            if station.tls == Tls::Site {
                observed.certificate_expiry = timestamp(plan.leaf_not_after);
                // Half the renewal window: past that, renewing has been failing for a while.
                observed.expiry_warning = SignedDuration::try_from(ctx.pki.leaf_renew_before / 2)
                    .ok()
                    .map(|half| half.min(status::EXPIRY_WARNING));
            }
            if let Some(site) = &station.site {
                let round = site::round(client, bs, &station, site, &plan).await;
                publish_site_changes(ctx, bs, &round).await;
                observed.site = Some(round);
            }
            report(ctx, bs, &Outcome::Applied(&station), &observed).await?;
            for change in &plan.reasons {
                tracing::info!(station = %bs.name_any(), namespace = %ns, reason = change.reason, "{}", change.note);
                publish(
                    ctx,
                    &bs.object_ref(&()),
                    false,
                    change.reason,
                    change.note.clone(),
                )
                .await;
            }
            // Wake up for the next renewal or rotation, if it comes before the resync.
            let until_review = plan
                .review_at
                .duration_since(now)
                .unwrap_or(Duration::from_secs(1));
            // A site's role and lag are the station's to tell: ask again soon.
            let resync = if station.site.is_some() {
                ctx.site_refresh.min(RESYNC)
            } else {
                RESYNC
            };
            Ok(Action::requeue(until_review.min(resync)))
        }
        Err(e) => {
            let observed = observe(client, &ns, &bs.name_any(), station.tls.secret_name()).await;
            report(
                ctx,
                bs,
                &Outcome::ApplyFailed(&station, e.to_string()),
                &observed,
            )
            .await?;
            Err(e.into())
        }
    }
}

/// After a failed reconcile: try again soon, and count it.
pub fn error_policy<K: ResourceExt>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.label());
    tracing::warn!(object = %object.name_any(), namespace = %object.namespace().unwrap_or_default(), error = %error, "reconcile failed; retrying in 10s");
    Action::requeue(Duration::from_secs(10))
}

/// Reads the Secrets and CloudNativePG Cluster the spec names.
async fn read_references(client: &Client, bs: &BaseStation) -> Result<References, kube::Error> {
    let ns = bs.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut refs = References::default();
    for name in validate::referenced_secrets(bs) {
        if let Some(secret) = secrets.get_opt(&name).await? {
            let mut keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
            keys.extend(secret.string_data.unwrap_or_default().into_keys());
            refs.secrets.insert(name, keys);
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let addresses = |service: Service| -> Vec<String> {
        service
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.ip.into_iter().chain(i.hostname))
            .collect()
    };
    if let Some(service) = services.get_opt(&bs.name_any()).await? {
        refs.service_addresses = addresses(service);
    }
    if let Some(site) = &bs.spec.site {
        if let Some(service) = services
            .get_opt(&build::replication_name(&bs.name_any()))
            .await?
        {
            refs.replication_addresses = addresses(service);
        }
        // Read at every reconcile, and a site is reconciled every --site-refresh: a changed
        // trust Secret reaches the pods without a watch on every Secret of the namespace.
        if let Some(trust) = &site.trust
            && let Some(secret) = secrets.get_opt(&trust.name).await?
        {
            refs.site_trust = secret
                .data
                .and_then(|d| d.get(&trust.key).map(|v| v.0.clone()))
                .or_else(|| {
                    secret
                        .string_data
                        .and_then(|d| d.get(&trust.key).map(|v| v.clone().into_bytes()))
                });
        }
    }
    if let Some(cnpg) = bs
        .spec
        .store
        .postgres
        .as_ref()
        .and_then(|p| p.cloud_native_pg.as_ref())
    {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster"),
            "clusters",
        );
        let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        // A list rather than a get tells "CloudNativePG is not installed" (404 on the kind)
        // from "no such Cluster" (an empty list).
        refs.cnpg_cluster = match clusters
            .list(&ListParams::default().fields(&format!("metadata.name={}", cnpg.cluster)))
            .await
        {
            Ok(list) => Some(list.items.iter().any(|c| c.name_any() == cnpg.cluster)),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => return Err(e),
        };
    }
    Ok(refs)
}

/// What the API server shows now; a failed read leaves that part unknown.
async fn observe(client: &Client, ns: &str, name: &str, tls_secret: Option<&str>) -> Observed {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let svc: Api<Service> = Api::namespaced(client.clone(), ns);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let mut observed = Observed {
        stateful_set: sts.get_opt(name).await.ok().flatten(),
        service: svc.get_opt(name).await.ok().flatten(),
        // Read even when nothing is applied, so an invalid spec does not hide the last backup.
        backup_cron_job: cron_jobs
            .get_opt(&build::backup_name(name))
            .await
            .ok()
            .flatten(),
        ..Default::default()
    };
    if let Some(secret) = tls_secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        if let Ok(Some(secret)) = secrets.get_opt(secret).await {
            observed.certificate_expiry = secret
                .data
                .and_then(|d| d.get("tls.crt").cloned())
                .and_then(|pem| certificate_expiry(&pem.0));
        }
    }
    observed
}

/// The leaf's `notAfter` of a PEM chain.
pub fn certificate_expiry(pem: &[u8]) -> Option<Timestamp> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}

/// Writes status and emits Events for what changed.
async fn report(
    ctx: &Context,
    bs: &BaseStation,
    outcome: &Outcome<'_>,
    observed: &Observed,
) -> Result<(), Error> {
    let new = status::status(bs, outcome, observed, Timestamp::now());
    if bs.status.as_ref() != Some(&new) {
        let api: Api<BaseStation> =
            Api::namespaced(ctx.client.clone(), &bs.namespace().unwrap_or_default());
        api.patch_status(
            &bs.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": BaseStation::api_version(&()),
                "kind": BaseStation::kind(&()),
                "status": new,
            })),
        )
        .await
        .map_err(Error::Status)?;
    }
    if let Some(at) = new
        .last_backup
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    {
        ctx.metrics.set_last_backup(
            StationLabel {
                namespace: bs.namespace().unwrap_or_default(),
                name: bs.name_any(),
            },
            at.as_second(),
        );
    }
    for (warning, reason, note) in status::events(bs.status.as_ref(), &new) {
        publish(ctx, &bs.object_ref(&()), warning, &reason, note).await;
    }
    Ok(())
}

/// Publishes an Event on `bs`. An Event is a courtesy: failing to publish one must not fail
/// the reconcile.
async fn publish(
    ctx: &Context,
    object: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

/// Events for the role changes a site round made: each is done once, so each is news. Their
/// reasons are not the Replication condition's (whose changes are Events of their own):
/// Events of one reason fold into one series. A refusal is told by the condition's change.
async fn publish_site_changes(ctx: &Context, bs: &BaseStation, round: &site::SiteObserved) {
    let object = bs.object_ref(&());
    if round.found_done {
        tracing::info!(station = %bs.name_any(), "the role change asked for was already made; recorded as done");
    }
    if let Some(token) = round.demoted.as_ref().filter(|_| !round.found_done) {
        publish(
            ctx,
            &object,
            false,
            "Demoted",
            format!(
                "the station accepts no write from now on; promote the next primary with spec.site.promote.token: \"{token}\""
            ),
        )
        .await;
    }
    if let Some((_, promoted)) = round.promoted.as_ref().filter(|_| !round.found_done) {
        let (warning, reason, note) = if promoted.failover {
            (
                true,
                "FailedOver",
                format!(
                    "the primary at epoch {} by failover: writes the old primary took after this site's last change are not here; rebuild the old primary as a replica",
                    promoted.epoch
                ),
            )
        } else {
            (
                false,
                "Promoted",
                format!(
                    "the primary at epoch {}, with every change the old primary had",
                    promoted.epoch
                ),
            )
        };
        tracing::info!(station = %bs.name_any(), epoch = promoted.epoch, failover = promoted.failover, "promoted");
        publish(ctx, &object, warning, reason, note).await;
    }
}

/// Reads the site CA and certificate Secrets and plans what they must hold at `now`. The
/// outer error is the API's; the inner one a refusal to plan (an unreadable CA).
async fn plan_site_credentials(
    client: &Client,
    station: &Station,
    policy: &pki::Policy,
    now: SystemTime,
) -> Result<Result<pki::Plan, pki::PkiError>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &station.namespace);
    let read = |secret: Option<Secret>| -> Option<pki::SecretData> {
        secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    };
    let ca = secrets
        .get_opt(&pki::ca_secret_name(&station.name))
        .await
        .map_err(Error::References)?;
    let leaf = secrets
        .get_opt(&pki::leaf_secret_name(&station.name))
        .await
        .map_err(Error::References)?;
    Ok(pki::plan(
        &station.name,
        &station.site_names,
        read(ca).as_ref(),
        read(leaf).as_ref(),
        policy,
        now,
    ))
}

fn timestamp(t: SystemTime) -> Option<Timestamp> {
    Timestamp::try_from(t).ok()
}
