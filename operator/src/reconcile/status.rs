//! What the station's status says, computed from the outcome of a reconcile and what the API
//! server reported back. Pure: the caller reads the objects and the clock.

use super::build::public_port;
use super::site::SiteObserved;
use super::validate::{Station, Tls};
use crate::crd::{BaseStation, BaseStationStatus, ConditionType, PromotionStatus, SiteStatus};
use crate::pki;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt as _;

/// A certificate expiring within this long makes the TLS condition False.
pub const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(7 * 24);

/// How the reconcile went.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    /// Every object applied.
    Applied(&'a Station),
    /// The spec was refused before anything was applied.
    Invalid(String),
    /// The API server refused an object.
    ApplyFailed(&'a Station, String),
    /// `spec.paused`: nothing applied.
    Paused,
    /// The site CA Secret cannot be used, so nothing was applied.
    SiteCa(String),
}

/// What the API server shows of the station's objects.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The StatefulSet as it is now.
    pub stateful_set: Option<StatefulSet>,
    /// The public Service as it is now.
    pub service: Option<Service>,
    /// The served certificate's expiry, read from its Secret.
    pub certificate_expiry: Option<Timestamp>,
    /// The configuration hash applied, if any was.
    pub config_hash: Option<String>,
    /// How close to its expiry the certificate may come before the TLS condition turns
    /// False; [`EXPIRY_WARNING`] when `None`.
    pub expiry_warning: Option<SignedDuration>,
    /// The backup CronJob as it is now, with spec.backup.
    pub backup_cron_job: Option<CronJob>,
    /// With spec.site, once applied: what the station said and what was done with it.
    pub site: Option<SiteObserved>,
}

/// The new status of `bs`.
pub fn status(
    bs: &BaseStation,
    outcome: &Outcome<'_>,
    observed: &Observed,
    now: Timestamp,
) -> BaseStationStatus {
    let old = bs.status.clone().unwrap_or_default();
    let generation = bs.metadata.generation;
    let sts_status = observed
        .stateful_set
        .as_ref()
        .and_then(|s| s.status.clone());
    let replicas = sts_status.as_ref().map_or(0, |s| s.replicas);
    let ready = sts_status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let updated = sts_status
        .as_ref()
        .and_then(|s| s.updated_replicas)
        .unwrap_or(0);
    let sts_current = observed.stateful_set.as_ref().is_some_and(|s| {
        s.status.as_ref().and_then(|st| st.observed_generation) >= s.metadata.generation
    });
    let wanted = if bs.spec.stopped { 0 } else { bs.spec.replicas };
    let rolled_out = sts_current && ready >= wanted && updated >= wanted && replicas == wanted;

    let mut conditions = Vec::new();
    let mut set = |kind: ConditionType, ok: bool, reason: &str, message: String| {
        conditions.push(condition(
            &old.conditions,
            kind,
            ok,
            reason,
            message,
            generation,
            now,
        ));
    };

    set(
        ConditionType::Paused,
        matches!(outcome, Outcome::Paused),
        if matches!(outcome, Outcome::Paused) {
            "Paused"
        } else {
            "Reconciling"
        },
        if matches!(outcome, Outcome::Paused) {
            "spec.paused is true: nothing is created, changed or deleted; set it to false to resume"
                .into()
        } else {
            "the operator keeps the station's objects as the spec describes".into()
        },
    );
    let (degraded, degraded_reason, degraded_message) = match outcome {
        Outcome::Invalid(message) => (true, "InvalidSpec", message.clone()),
        Outcome::ApplyFailed(_, message) => (true, "ApplyFailed", message.clone()),
        Outcome::SiteCa(message) => (true, "SiteCAUnusable", message.clone()),
        Outcome::Applied(_) | Outcome::Paused => (false, "AsExpected", "no problem found".into()),
    };
    set(
        ConditionType::Degraded,
        degraded,
        degraded_reason,
        degraded_message.clone(),
    );

    let (progressing_reason, progressing_message) = if rolled_out {
        (
            "Stable",
            format!("{ready} of {wanted} pods ready and up to date"),
        )
    } else if bs.spec.stopped && replicas > 0 {
        ("Stopping", format!("stopping: {replicas} pods left"))
    } else if updated < wanted && replicas >= wanted {
        (
            "RollingOut",
            format!("{updated} of {wanted} pods up to date, {ready} ready"),
        )
    } else {
        ("Scaling", format!("{ready} of {wanted} pods ready"))
    };
    set(
        ConditionType::Progressing,
        !rolled_out,
        progressing_reason,
        progressing_message,
    );

    let store_problem = match outcome {
        Outcome::Invalid(m) if m.contains("store.") => Some(m.clone()),
        _ => None,
    };
    let station = match outcome {
        Outcome::Applied(s) | Outcome::ApplyFailed(s, _) => Some(*s),
        _ => None,
    };
    set(
        ConditionType::Store,
        store_problem.is_none(),
        if store_problem.is_some() {
            "ReferenceMissing"
        } else if bs.spec.store.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        store_problem.unwrap_or_else(|| match &bs.spec.store.postgres {
            None => "SQLite on each pod's volume".into(),
            Some(pg) => match (&pg.secret, &pg.cloud_native_pg) {
                (_, Some(c)) => format!("PostgreSQL of CloudNativePG Cluster '{}'", c.cluster),
                (Some(s), _) => format!("PostgreSQL from Secret '{}' key '{}'", s.name, s.key),
                _ => "PostgreSQL".into(),
            },
        }),
    );

    let (tls_ok, tls_reason, tls_message) = match outcome {
        Outcome::SiteCa(message) => (false, "SiteCAUnusable", message.clone()),
        _ => tls_condition(station, observed, now),
    };
    set(ConditionType::Tls, tls_ok, tls_reason, tls_message);

    let (ready_ok, ready_reason, ready_message) = if degraded {
        (false, degraded_reason, degraded_message)
    } else if matches!(outcome, Outcome::Paused) {
        (
            rolled_out && wanted > 0,
            "Paused",
            format!("paused; {ready} of {wanted} pods ready"),
        )
    } else if bs.spec.stopped {
        (
            false,
            "Stopped",
            "spec.stopped is true: no pods run; data and Services are kept".into(),
        )
    } else if rolled_out {
        (
            true,
            "AllPodsReady",
            format!("{ready} of {wanted} pods ready"),
        )
    } else {
        (
            false,
            "PodsNotReady",
            format!("{ready} of {wanted} pods ready"),
        )
    };
    set(ConditionType::Ready, ready_ok, ready_reason, ready_message);

    let last_backup = observed
        .backup_cron_job
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.last_successful_time.as_ref())
        .map(|t| rfc3339(t.0));
    if let Some(spec) = &bs.spec.backup {
        let (ok, reason, message) =
            backup_condition(&bs.name_any(), spec, observed.backup_cron_job.as_ref());
        set(ConditionType::Backup, ok, reason, message);
    }

    let site = bs
        .spec
        .site
        .as_ref()
        .map(|_| site_status(bs, old.site.as_ref(), observed.site.as_ref(), now));
    if bs.spec.site.is_some() {
        let (ok, reason, message) =
            replication_condition(bs, outcome, station, observed.site.as_ref(), site.as_ref());
        set(ConditionType::Replication, ok, reason, message);
    }

    BaseStationStatus {
        observed_generation: generation,
        conditions,
        replicas,
        ready_replicas: ready,
        endpoint: station
            .map(|s| endpoint(s, observed.service.as_ref()))
            .or(old.endpoint),
        certificate_expiry: observed.certificate_expiry.map(rfc3339),
        last_backup: last_backup.or(old.last_backup),
        config_hash: observed.config_hash.clone().or(old.config_hash),
        site,
    }
}

/// status.site: the station's latest report (the previous one while it cannot be asked),
/// and the role changes made, kept while the spec still asks for them.
fn site_status(
    bs: &BaseStation,
    old: Option<&SiteStatus>,
    observed: Option<&SiteObserved>,
    now: Timestamp,
) -> SiteStatus {
    let spec = bs.spec.site.as_ref();
    let mut site = old.cloned().unwrap_or_default();
    if let Some(Ok(reported)) = observed.and_then(|o| o.reported.as_ref()) {
        let replica = reported.role == "replica";
        site.role = Some(reported.role.clone());
        site.epoch = Some(reported.epoch);
        site.last_sequence = Some(reported.last_seq);
        site.following = reported.following.clone().filter(|_| replica);
        site.lag_changes = replica.then_some(reported.lag_changes);
        // A tenth of a second is enough to read, and keeps a steady replica's status still.
        site.lag_seconds = replica.then(|| (reported.lag_seconds * 10.0).round() / 10.0);
    }
    if let Some(token) = observed.and_then(|o| o.demoted.clone()) {
        site.handover_token = Some(token);
    }
    // The token is for one handover: gone with the request, so an old one is never reused.
    if !spec.is_some_and(|s| s.demote) {
        site.handover_token = None;
    }
    if let Some((request, promoted)) = observed.and_then(|o| o.promoted.clone()) {
        site.promotion = Some(PromotionStatus {
            request: Some(request),
            epoch: promoted.epoch,
            failover: promoted.failover,
            at: rfc3339(now),
        });
    }
    // Once the spec no longer asks, the same request later is a new one.
    if spec.and_then(|s| s.promote.as_ref()).is_none()
        && let Some(promotion) = site.promotion.as_mut()
    {
        promotion.request = None;
    }
    site
}

/// The Replication condition: True while the site serves as primary or follows its primary
/// within the lag allowed; otherwise False with what to do.
fn replication_condition(
    bs: &BaseStation,
    outcome: &Outcome<'_>,
    station: Option<&Station>,
    observed: Option<&SiteObserved>,
    site: Option<&SiteStatus>,
) -> (bool, &'static str, String) {
    let Some(spec) = station.and_then(|s| s.site.as_ref()) else {
        return match outcome {
            Outcome::Invalid(m) if m.contains("site.") => (false, "InvalidSpec", m.clone()),
            _ => (
                false,
                "NotChecked",
                "the spec is not applied, so the station was not asked".into(),
            ),
        };
    };
    if let Some(missing) = &spec.trust_missing {
        return (false, "TrustMissing", missing.clone());
    }
    let Some(observed) = observed else {
        return (false, "NotChecked", "the station was not asked yet".into());
    };
    let reported = match &observed.reported {
        Some(Ok(reported)) => reported,
        Some(Err(why)) => {
            return (
                false,
                "StationUnreachable",
                format!(
                    "the station's replication port did not answer ({why}); it may still be \
                     starting: see `kubectl logs {}-0`",
                    bs.metadata.name.as_deref().unwrap_or_default()
                ),
            );
        }
        None => return (false, "NotChecked", "the station was not asked yet".into()),
    };
    if let Some(refused) = &observed.refused {
        return (
            false,
            "RoleChangeRefused",
            format!(
                "the station refused {refused}; fix spec.site.promote or spec.site.demote, or \
                 remove it"
            ),
        );
    }
    let token = site.and_then(|s| s.handover_token.as_deref());
    match (reported.role.as_str(), token) {
        ("primary", _) => (
            true,
            "Primary",
            format!(
                "the primary at epoch {}, last sequence {}",
                reported.epoch, reported.last_seq
            ),
        ),
        ("replica", _) => {
            let lag = format!(
                "{} changes and {:.1} s behind",
                reported.lag_changes, reported.lag_seconds
            );
            match &reported.following {
                Some(primary) if reported.lag_seconds <= spec.max_lag.as_secs_f64() => {
                    (true, "Following", format!("following {primary}, {lag}"))
                }
                Some(primary) => (
                    false,
                    "Lagging",
                    format!(
                        "following {primary} but {lag}, beyond {} s: check the link between \
                         the sites and the primary's load",
                        spec.max_lag.as_secs()
                    ),
                ),
                None => (
                    false,
                    "NoPrimary",
                    format!(
                        "no live change feed from a primary ({lag}): check that the primary \
                         runs, that its replication Service is reachable from this cluster at \
                         spec.site.replicaOf or spec.site.sites, and that each site's \
                         spec.site.trust holds the other's CA"
                    ),
                ),
            }
        }
        (_, Some(token)) => (
            false,
            "HandedOver",
            format!(
                "demoted: this site accepts no write. Promote the next primary with \
                 spec.site.promote.token: \"{token}\", then make this site a replica of it \
                 (spec.site.replicaOf, without spec.site.demote)"
            ),
        ),
        (role, None) => (
            false,
            "Fenced",
            format!(
                "the station is {role}: another site is primary in a later epoch, so this \
                 one accepts no write. Take a backup if writes made here since matter, then \
                 rebuild it as a replica of the new primary (docs/REPLICATION.md, Failover)"
            ),
        ),
    }
}

/// The Backup condition from the CronJob's status: True once a run succeeded and none has
/// failed since; False when the latest run did not succeed (or none has yet).
fn backup_condition(
    station: &str,
    spec: &crate::crd::BackupSpec,
    cron_job: Option<&CronJob>,
) -> (bool, &'static str, String) {
    let status = cron_job.and_then(|c| c.status.as_ref());
    let scheduled = status
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    let succeeded = status
        .and_then(|s| s.last_successful_time.as_ref())
        .map(|t| t.0);
    let running = status
        .and_then(|s| s.active.as_ref())
        .is_some_and(|a| !a.is_empty());
    let logs = format!(
        "see `kubectl logs -l app.kubernetes.io/name=zbase-backup,app.kubernetes.io/instance={station}`"
    );
    match (scheduled, succeeded) {
        (Some(s), Some(ok)) if s > ok && !running => (
            false,
            "BackupFailed",
            format!(
                "the backup started at {} did not succeed (the last success was at {}): {logs}",
                rfc3339(s),
                rfc3339(ok)
            ),
        ),
        (_, Some(ok)) => (
            true,
            "BackupSucceeded",
            format!("the last backup succeeded at {}", rfc3339(ok)),
        ),
        (Some(s), None) if running => (
            false,
            "FirstBackupRunning",
            format!("the first backup started at {} and is running", rfc3339(s)),
        ),
        (Some(s), None) => (
            false,
            "BackupFailed",
            format!(
                "the backup started at {} did not succeed, and none has yet: {logs}",
                rfc3339(s)
            ),
        ),
        (None, None) if spec.suspend => (
            false,
            "Suspended",
            "backup.suspend is true and no backup has been taken".into(),
        ),
        (None, None) => (
            false,
            "NoBackupYet",
            format!("no backup has run yet; the schedule is '{}'", spec.schedule),
        ),
    }
}

/// A time as status shows it: RFC 3339 to the second, in UTC.
fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn tls_condition(
    station: Option<&Station>,
    observed: &Observed,
    now: Timestamp,
) -> (bool, &'static str, String) {
    let expiry = observed.certificate_expiry;
    let warning = observed.expiry_warning.unwrap_or(EXPIRY_WARNING);
    let (tls, secret) = match station {
        Some(s) => (
            &s.tls,
            s.tls
                .secret_name()
                .map_or_else(|| pki::leaf_secret_name(&s.name), str::to_owned),
        ),
        None => {
            return (
                true,
                "NotChecked",
                "the spec is not applied; nothing to check".into(),
            );
        }
    };
    match (tls, expiry) {
        (Tls::Plain, _) => (
            true,
            "PlainHTTP",
            "the public port serves plain HTTP (spec.tls.plainHTTP); the internal port uses \
             mutual TLS with the site CA"
                .into(),
        ),
        (Tls::Acme(a), _) => (
            true,
            "StationACME",
            format!(
                "the station obtains and renews the certificate for {} itself; its expiry is the metric zbase_tls_certificate_expiry_timestamp_seconds",
                a.domain
            ),
        ),
        (_, None) => (
            false,
            "CertificatePending",
            format!("waiting for Secret '{secret}' to hold a certificate (tls.crt)"),
        ),
        (_, Some(at)) if at <= now => (
            false,
            "CertificateExpired",
            format!(
                "the certificate expired at {at}: renew Secret '{secret}'{}",
                who_renews(tls)
            ),
        ),
        (_, Some(at)) if at.duration_since(now) < warning => (
            false,
            "CertificateExpiringSoon",
            format!(
                "the certificate expires at {at}, within {}: renew Secret '{secret}'{}",
                humantime::format_duration(warning.unsigned_abs()),
                who_renews(tls)
            ),
        ),
        (Tls::Site, Some(at)) => (
            true,
            "CertificateValid",
            format!(
                "the site certificate in Secret '{secret}' is valid until {at}; the operator \
                 renews it before then"
            ),
        ),
        (_, Some(at)) => (
            true,
            "CertificateValid",
            format!("the certificate is valid until {at}"),
        ),
    }
}

/// Who should have renewed a certificate, for the condition's message.
fn who_renews(tls: &Tls) -> &'static str {
    match tls {
        Tls::CertManager { .. } => {
            " (cert-manager should have renewed it; check the Certificate's events)"
        }
        Tls::Site => {
            " (the operator should have renewed it; check the BaseStation's events and the \
             operator's log)"
        }
        _ => "",
    }
}

/// Where clients connect.
fn endpoint(station: &Station, service: Option<&Service>) -> String {
    let scheme = if station.tls.is_on() { "wss" } else { "ws" };
    let port = public_port(station);
    let host = match &station.tls {
        Tls::CertManager { spec, .. } if !spec.dns_names.is_empty() => {
            Some(spec.dns_names[0].clone())
        }
        Tls::Acme(acme) => Some(acme.domain.clone()),
        _ => None,
    }
    .or_else(|| {
        let ingress = service?
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?
            .first()?
            .clone();
        ingress.hostname.or(ingress.ip)
    })
    .unwrap_or_else(|| format!("{}.{}.svc", station.name, station.namespace));
    let default_port = if station.tls.is_on() { 443 } else { 80 };
    if port == default_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// A condition that keeps its transition time while its status stays the same.
fn condition(
    old: &[Condition],
    kind: ConditionType,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == kind.as_str() && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: kind.as_str().into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// A condition of `status` by type.
pub fn find(status: &BaseStationStatus, kind: ConditionType) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == kind.as_str())
}

/// The Kubernetes Events worth emitting for the change from `old` to `new`: one per condition
/// that changed status, so a steady station emits nothing.
pub fn events(
    old: Option<&BaseStationStatus>,
    new: &BaseStationStatus,
) -> Vec<(bool, String, String)> {
    let mut out = Vec::new();
    for kind in [
        ConditionType::Degraded,
        ConditionType::Ready,
        ConditionType::Paused,
        ConditionType::Tls,
        ConditionType::Backup,
        ConditionType::Replication,
    ] {
        let Some(now) = find(new, kind) else { continue };
        let before = old.and_then(|o| find(o, kind));
        let changed = before.is_none_or(|b| b.status != now.status || b.reason != now.reason);
        // A first status that is already fine is no news.
        let news = match kind {
            ConditionType::Degraded | ConditionType::Paused => now.status == "True",
            ConditionType::Ready => before.is_some() || now.status == "True",
            // No backup yet is how every station starts, not news; a failed one is.
            ConditionType::Backup => now.reason == "BackupFailed",
            // A site starting up is not news; once it has served or followed, a change is.
            ConditionType::Replication => before.is_some_and(|b| b.reason != "NotChecked"),
            _ => now.status == "False",
        };
        if changed && (news || before.is_some()) {
            let warning = match kind {
                ConditionType::Degraded => now.status == "True",
                ConditionType::Tls => now.status == "False",
                ConditionType::Backup => now.reason == "BackupFailed",
                ConditionType::Replication => {
                    now.status == "False"
                        && !["HandedOver", "NotChecked"].contains(&now.reason.as_str())
                }
                _ => false,
            };
            out.push((warning, now.reason.clone(), now.message.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crd::BackupSpec;
    use k8s_openapi::api::batch::v1::{CronJobSpec, CronJobStatus};
    use k8s_openapi::api::core::v1::ObjectReference;

    fn at(text: &str) -> Option<Time> {
        Some(Time(text.parse().unwrap()))
    }

    fn cron(scheduled: Option<&str>, succeeded: Option<&str>, running: bool) -> CronJob {
        CronJob {
            spec: Some(CronJobSpec::default()),
            status: Some(CronJobStatus {
                last_schedule_time: scheduled.and_then(at),
                last_successful_time: succeeded.and_then(at),
                active: running.then(|| vec![ObjectReference::default()]),
            }),
            ..Default::default()
        }
    }

    fn spec() -> BackupSpec {
        BackupSpec {
            schedule: "0 3 * * *".into(),
            ..Default::default()
        }
    }

    fn reason(cron_job: Option<&CronJob>, spec: &BackupSpec) -> (bool, &'static str) {
        let (ok, reason, _) = backup_condition("home", spec, cron_job);
        (ok, reason)
    }

    use crate::reconcile::site::SiteObserved;
    use crate::reconcile::validate::{self, Defaults, References};
    use crate::site::{Promoted, Reported};

    /// A site BaseStation with `site` (YAML of spec.site), validated with its trust present
    /// unless `trust` is false.
    fn site_station(site: &str, trust: bool) -> (BaseStation, Station) {
        let bs: BaseStation = serde_yaml::from_str(&format!(
            "apiVersion: zbase.dev/v1alpha1\nkind: BaseStation\nmetadata: {{name: west, namespace: zbase, generation: 3}}\nspec: {{site: {site}}}\n"
        ))
        .unwrap();
        let pem = include_str!("../../tests/other-sites-ca.pem");
        let refs = References {
            secrets: [("others".to_owned(), vec!["ca.crt".to_owned()])].into(),
            site_trust: trust.then(|| pem.as_bytes().to_vec()),
            ..Default::default()
        };
        let refs = if trust { refs } else { References::default() };
        let defaults = Defaults {
            station_image: "zbase-station".into(),
        };
        let station = validate::validate(&bs, &defaults, &refs).unwrap();
        (bs, station)
    }

    fn replica(following: Option<&str>, lag_seconds: f64) -> SiteObserved {
        SiteObserved {
            reported: Some(Ok(Reported {
                role: "replica".into(),
                epoch: 1,
                last_seq: 40,
                following: following.map(str::to_owned),
                lag_changes: 2,
                lag_seconds,
            })),
            ..Default::default()
        }
    }

    fn replication(
        bs: &BaseStation,
        station: &Station,
        site: SiteObserved,
    ) -> (BaseStationStatus, (String, String, String)) {
        let observed = Observed {
            site: Some(site),
            ..Default::default()
        };
        let now: Timestamp = "2026-12-03T14:00:00Z".parse().unwrap();
        let status = status(bs, &Outcome::Applied(station), &observed, now);
        let c = find(&status, ConditionType::Replication).unwrap().clone();
        (status, (c.status, c.reason, c.message))
    }

    const REPLICA: &str =
        "{replicaOf: 'https://east:7443', trust: {name: others}, maxLagSeconds: 10}";

    #[test]
    fn a_replica_is_following_lagging_or_without_a_primary() {
        let (bs, station) = site_station(REPLICA, true);
        let (status, (ok, reason, message)) =
            replication(&bs, &station, replica(Some("https://east:7443"), 1.04));
        assert_eq!(
            (ok.as_str(), reason.as_str()),
            ("True", "Following"),
            "{message}"
        );
        let site = status.site.unwrap();
        assert_eq!(site.following.as_deref(), Some("https://east:7443"));
        assert_eq!((site.lag_changes, site.lag_seconds), (Some(2), Some(1.0)));

        let (_, (ok, reason, message)) =
            replication(&bs, &station, replica(Some("https://east:7443"), 12.0));
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "Lagging"));
        assert!(message.contains("beyond 10 s"), "{message}");

        let (_, (ok, reason, message)) = replication(&bs, &station, replica(None, 4.0));
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "NoPrimary"));
        assert!(message.contains("spec.site.trust"), "{message}");
    }

    #[test]
    fn missing_trust_or_an_unreachable_station_say_what_to_do() {
        let (bs, station) = site_station(REPLICA, false);
        let (_, (ok, reason, message)) =
            replication(&bs, &station, replica(Some("https://east:7443"), 0.0));
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "TrustMissing"));
        assert!(
            message.contains("Secret 'others', which does not exist"),
            "{message}"
        );

        // The last report stays while the station cannot be asked.
        let (mut bs, station) = site_station(REPLICA, true);
        let (before, _) = replication(&bs, &station, replica(Some("https://east:7443"), 0.0));
        bs.status = Some(before);
        let down = SiteObserved {
            reported: Some(Err("pod 'west-0' has no IP yet".into())),
            ..Default::default()
        };
        let (status, (ok, reason, message)) = replication(&bs, &station, down);
        assert_eq!(
            (ok.as_str(), reason.as_str()),
            ("False", "StationUnreachable")
        );
        assert!(message.contains("no IP yet"), "{message}");
        assert_eq!(status.site.unwrap().role.as_deref(), Some("replica"));
    }

    #[test]
    fn role_changes_are_recorded_while_asked_for_and_fencing_is_told_apart() {
        let primary = "{trust: {name: others}, demote: true}";
        let (mut bs, station) = site_station(primary, true);
        let demoted = SiteObserved {
            reported: Some(Ok(Reported {
                role: "fenced".into(),
                epoch: 1,
                last_seq: 40,
                ..Default::default()
            })),
            demoted: Some("1:40".into()),
            ..Default::default()
        };
        let (status, (ok, reason, message)) = replication(&bs, &station, demoted);
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "HandedOver"));
        assert!(message.contains("promote.token: \"1:40\""), "{message}");
        assert_eq!(
            status.site.as_ref().unwrap().handover_token.as_deref(),
            Some("1:40")
        );
        bs.status = Some(status);

        // Without the request, the token goes, and a fenced site is Fenced, not HandedOver.
        let (_, station) = site_station("{trust: {name: others}}", true);
        bs.spec.site.as_mut().unwrap().demote = false;
        let fenced = SiteObserved {
            reported: Some(Ok(Reported {
                role: "fenced".into(),
                epoch: 1,
                last_seq: 40,
                ..Default::default()
            })),
            ..Default::default()
        };
        let (status, (_, reason, _)) = replication(&bs, &station, fenced);
        assert_eq!(reason, "Fenced");
        assert_eq!(status.site.unwrap().handover_token, None);

        let (mut bs, station) = site_station(
            "{replicaOf: 'https://east:7443', trust: {name: others}, promote: {token: '1:40'}}",
            true,
        );
        let promoted = SiteObserved {
            reported: Some(Ok(Reported {
                role: "primary".into(),
                epoch: 2,
                last_seq: 40,
                ..Default::default()
            })),
            promoted: Some((
                "token:1:40".into(),
                Promoted {
                    epoch: 2,
                    failover: false,
                },
            )),
            ..Default::default()
        };
        let (status, (ok, reason, _)) = replication(&bs, &station, promoted);
        assert_eq!((ok.as_str(), reason.as_str()), ("True", "Primary"));
        let promotion = status.site.as_ref().unwrap().promotion.clone().unwrap();
        assert_eq!(promotion.request.as_deref(), Some("token:1:40"));
        assert_eq!((promotion.epoch, promotion.failover), (2, false));
        bs.status = Some(status);
        // Kept as history once the spec no longer asks, but no longer a request.
        bs.spec.site.as_mut().unwrap().promote = None;
        let (_, station) = site_station(
            "{replicaOf: 'https://east:7443', trust: {name: others}}",
            true,
        );
        let (status, _) = replication(&bs, &station, SiteObserved::default());
        let kept = status.site.unwrap().promotion.unwrap();
        assert_eq!((kept.request, kept.epoch), (None, 2));
    }

    #[test]
    fn the_backup_condition_follows_the_cron_jobs_runs() {
        let day1 = "2026-12-01T03:00:00Z";
        let done1 = "2026-12-01T03:04:10Z";
        let day2 = "2026-12-02T03:00:00Z";
        assert_eq!(reason(None, &spec()), (false, "NoBackupYet"));
        let suspended = BackupSpec {
            suspend: true,
            ..spec()
        };
        assert_eq!(reason(None, &suspended), (false, "Suspended"));
        let first = cron(Some(day1), None, true);
        assert_eq!(reason(Some(&first), &spec()), (false, "FirstBackupRunning"));
        let failed_first = cron(Some(day1), None, false);
        assert_eq!(
            reason(Some(&failed_first), &spec()),
            (false, "BackupFailed")
        );
        let good = cron(Some(day1), Some(done1), false);
        assert_eq!(reason(Some(&good), &spec()), (true, "BackupSucceeded"));
        // The next run is still going: the last one stands.
        let running = cron(Some(day2), Some(done1), true);
        assert_eq!(reason(Some(&running), &spec()), (true, "BackupSucceeded"));
        let failed = cron(Some(day2), Some(done1), false);
        let (ok, why, message) = backup_condition("home", &spec(), Some(&failed));
        assert_eq!((ok, why), (false, "BackupFailed"));
        assert!(
            message.contains(day2) && message.contains(done1),
            "{message}"
        );
        assert!(
            message.contains("app.kubernetes.io/instance=home"),
            "{message}"
        );
    }
}
