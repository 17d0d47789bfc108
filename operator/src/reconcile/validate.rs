//! From what the user wrote to what the builders need: every default resolved, every
//! cross-field rule checked, every reference looked up. Pure: the references are read by the
//! caller and handed in as [`References`], so each rule is a plain unit test.
//!
//! The CRD's schema refuses most of these mistakes before they are stored; they are checked
//! again here because older API servers skip CEL rules and references cannot be checked there.

use crate::crd::{
    AcmeTls, BaseStation, BaseStationSpec, CertManagerTls, SchedulingSpec, ServiceSpec,
    StationSettings,
};
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What the operator itself brings to every station.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The station image when the spec names none.
    pub station_image: String,
}

/// What the spec refers to, as read from the API just before validation.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// Secrets of the station's namespace that the spec names, with the keys each holds;
    /// a name absent here does not exist.
    pub secrets: BTreeMap<String, Vec<String>>,
    /// Whether the CloudNativePG Cluster the spec names exists: `None` when CloudNativePG is
    /// not installed at all.
    pub cnpg_cluster: Option<bool>,
    /// The public Service's load-balancer addresses (IPs or host names) as assigned so far,
    /// which the site certificate carries so clients may connect by them.
    pub service_addresses: Vec<String>,
    /// The replication Service's load-balancer addresses, for the site certificate too.
    pub replication_addresses: Vec<String>,
    /// The value of the key spec.site.trust names, when that Secret and key exist.
    pub site_trust: Option<Vec<u8>>,
}

/// A station ready to be built: validated, defaulted, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Station {
    /// The BaseStation's name, also the prefix of every object built for it.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid, for owner references.
    pub uid: String,
    /// Pods to run (0 when stopped).
    pub replicas: i32,
    /// The container image.
    pub image: String,
    /// The image pull policy.
    pub image_pull_policy: String,
    /// Secrets to pull the image with.
    pub image_pull_secrets: Vec<String>,
    /// Where resources are stored.
    pub store: Store,
    /// The data volume: a claim per pod, or scratch space.
    pub volume: DataVolume,
    /// The public port's certificate.
    pub tls: Tls,
    /// The names on the site certificate (the leaf the operator issues from the site CA),
    /// which the pods present on the internal port and, by default, serve publicly.
    pub site_names: Vec<String>,
    /// Whether the site CA's Secret outlives the BaseStation (with `storage.whenDeleted:
    /// Retain`), so a station recreated over kept data keeps the CA its clients trust.
    pub keep_site_ca: bool,
    /// The public Service.
    pub service: ServiceSpec,
    /// Settings passed to the station, with durations checked.
    pub settings: StationSettings,
    /// The station's shutdown grace, which sets the pods' termination grace period.
    pub shutdown_grace: Duration,
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
    /// Scheduling knobs.
    pub scheduling: SchedulingSpec,
    /// Extra pod labels.
    pub pod_labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    pub pod_annotations: BTreeMap<String, String>,
    /// A partial pod template merged over the built one.
    pub pod_overrides: Option<serde_json::Value>,
    /// Whether to create the NetworkPolicy.
    pub network_policy: bool,
    /// Scheduled backups, when the spec asks for them.
    pub backup: Option<Backup>,
    /// The backup to start from, when the spec names one.
    pub restore: Option<Restore>,
    /// This station as a site of a deployment, with spec.site.
    pub site: Option<Site>,
}

/// spec.site, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The primary's replication URL, on a replica site.
    pub replica_of: Option<String>,
    /// The other sites' replication URLs.
    pub sites: Vec<String>,
    /// The PEM certificates of the other sites' CAs, from spec.site.trust; `None` while that
    /// Secret or key is missing (the merged bundle then holds this site's CA only).
    pub trust: Option<String>,
    /// Why `trust` is `None` when spec.site.trust is set, naming what to create.
    pub trust_missing: Option<String>,
    /// The replication Service and policy.
    pub replication: crate::crd::ReplicationSpec,
    /// The promotion the spec asks for.
    pub promote: Option<Promote>,
    /// Whether the spec asks for a demotion.
    pub demote: bool,
    /// Lag beyond which a replica is reported Lagging.
    pub max_lag: Duration,
}

/// A promotion asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// A switchover, once this site holds the demoted primary's last change.
    Token {
        /// The demoted primary's epoch.
        epoch: u64,
        /// Its last sequence.
        seq: u64,
    },
    /// A failover: promote now.
    Failover,
}

impl Promote {
    /// How status.site.promotion.request records this request.
    pub fn request(&self) -> String {
        match self {
            Promote::Token { epoch, seq } => format!("token:{epoch}:{seq}"),
            Promote::Failover => "failover".into(),
        }
    }
}

/// The backup a new station starts from, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    /// Its name in spec.backup's destination.
    pub backup: String,
    /// The Secret holding the age identity.
    pub identity_secret: String,
    /// Its key.
    pub identity_key: String,
}

/// Scheduled backups, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    /// Cron schedule.
    pub schedule: String,
    /// IANA time zone of the schedule.
    pub time_zone: Option<String>,
    /// Whether scheduling is suspended.
    pub suspend: bool,
    /// age recipients, each parsed.
    pub recipients: Vec<String>,
    /// Where backups go.
    pub destination: BackupDestination,
    /// Keep the newest this many.
    pub keep_last: Option<u32>,
    /// Keep those younger than this (a humantime duration, checked).
    pub keep_within: Option<String>,
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq)]
pub enum BackupDestination {
    /// A PersistentVolumeClaim, and a folder in it.
    Volume {
        /// The claim.
        claim: String,
        /// The folder, relative.
        sub_path: Option<String>,
    },
    /// S3-compatible storage.
    S3(crate::crd::S3Destination),
}

/// Where resources are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// SQLite on each pod's volume (one pod).
    Sqlite,
    /// PostgreSQL; the connection URL is this Secret key, handed to the station as
    /// `ZBASE_STORE` so it never appears in a ConfigMap.
    Postgres {
        /// The Secret.
        secret: String,
        /// Its key holding the URL.
        key: String,
    },
}

/// The pods' data directory.
#[derive(Debug, Clone, PartialEq)]
pub enum DataVolume {
    /// A PersistentVolumeClaim per pod, from the StatefulSet's claim template.
    Claim {
        /// Requested size.
        size: String,
        /// StorageClass, or the cluster default.
        storage_class_name: Option<String>,
        /// `Retain` or `Delete` when the BaseStation is deleted.
        when_deleted: String,
    },
    /// An emptyDir: PostgreSQL holds the data, nothing on the pod outlives it.
    Scratch,
}

/// The public port's certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    /// Plain HTTP (behind a terminating proxy, or for trying it out).
    Plain,
    /// The site certificate, issued and renewed by the operator from the site CA.
    Site,
    /// A `kubernetes.io/tls` Secret mounted into the pods.
    Secret(String),
    /// A cert-manager Certificate writing the named Secret.
    CertManager {
        /// The Secret cert-manager writes and the pods mount.
        secret: String,
        /// The Certificate's parameters.
        spec: CertManagerTls,
    },
    /// The station's own ACME client.
    Acme(AcmeTls),
}

impl Tls {
    /// The Secret holding the served certificate, if the operator can read it.
    pub fn secret_name(&self) -> Option<&str> {
        match self {
            Tls::Secret(name) | Tls::CertManager { secret: name, .. } => Some(name),
            Tls::Plain | Tls::Site | Tls::Acme(_) => None,
        }
    }

    /// Whether the public port speaks TLS.
    pub fn is_on(&self) -> bool {
        !matches!(self, Tls::Plain)
    }
}

/// A spec the operator refuses: every problem found, each naming the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// One sentence per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

impl std::error::Error for Invalid {}

/// The Secret cert-manager writes for a station (`<station>-tls` is the site certificate).
pub fn cert_manager_secret(station: &str) -> String {
    format!("{station}-certmanager-tls")
}

/// The Secret CloudNativePG creates for a Cluster's application user.
pub fn cnpg_app_secret(cluster: &str) -> String {
    format!("{cluster}-app")
}

/// Checks `bs` against every rule, using `refs` for what it names.
pub fn validate(
    bs: &BaseStation,
    defaults: &Defaults,
    refs: &References,
) -> Result<Station, Invalid> {
    let spec = &bs.spec;
    let mut problems = Vec::new();
    let name = bs.name_any();
    // Objects are named `<name>-pods` and pods `<name>-N`, and Service names are DNS labels.
    if name.len() > 52 {
        problems.push(format!(
            "metadata.name '{name}' is {} characters: a BaseStation name is at most 52, so the \
             names of its Services and pods fit; recreate it under a shorter name",
            name.len()
        ));
    }

    let store = match &spec.store.postgres {
        None => Store::Sqlite,
        Some(pg) => match (&pg.secret, &pg.cloud_native_pg) {
            (Some(secret), None) => {
                check_secret_key(
                    refs,
                    &secret.name,
                    &secret.key,
                    "store.postgres.secret",
                    &mut problems,
                );
                Store::Postgres {
                    secret: secret.name.clone(),
                    key: secret.key.clone(),
                }
            }
            (None, Some(cnpg)) => {
                let secret = cnpg_app_secret(&cnpg.cluster);
                match refs.cnpg_cluster {
                    None => problems.push(format!(
                        "store.postgres.cloudNativePG names Cluster '{}', but CloudNativePG is \
                         not installed in this cluster: install it, or use store.postgres.secret",
                        cnpg.cluster
                    )),
                    Some(false) => problems.push(format!(
                        "store.postgres.cloudNativePG names Cluster '{}', which does not exist in \
                         namespace '{}': create it, or fix the name",
                        cnpg.cluster,
                        bs.namespace().unwrap_or_default()
                    )),
                    // CloudNativePG writes the app Secret once the cluster has bootstrapped;
                    // until then the pods wait for it rather than the spec being refused.
                    Some(true) => {}
                }
                Store::Postgres {
                    secret,
                    key: "uri".into(),
                }
            }
            _ => {
                problems.push(
                    "store.postgres needs exactly one of 'secret' and 'cloudNativePG'".into(),
                );
                Store::Sqlite
            }
        },
    };

    if spec.replicas < 0 {
        problems.push(format!(
            "spec.replicas is {}: it must be 0 or more (or set spec.stopped)",
            spec.replicas
        ));
    }
    if spec.replicas > 1 && store == Store::Sqlite {
        problems.push(format!(
            "spec.replicas is {} but the store is SQLite, which serves one pod only: set \
             spec.store.postgres (a Secret or a CloudNativePG Cluster), or spec.replicas: 1",
            spec.replicas
        ));
    }

    let tls_sources = [
        spec.tls.secret_name.is_some(),
        spec.tls.cert_manager.is_some(),
        spec.tls.acme.is_some(),
    ];
    let tls = if tls_sources.iter().filter(|on| **on).count() > 1 {
        problems.push(
            "spec.tls names more than one certificate source: keep one of secretName, \
             certManager and acme"
                .into(),
        );
        Tls::Plain
    } else if let Some(secret) = &spec.tls.secret_name {
        check_secret_key(refs, secret, "tls.crt", "tls.secretName", &mut problems);
        check_secret_key(refs, secret, "tls.key", "tls.secretName", &mut problems);
        Tls::Secret(secret.clone())
    } else if let Some(cm) = &spec.tls.cert_manager {
        if cm.dns_names.is_empty() {
            problems.push("tls.certManager.dnsNames is empty: name at least one host".into());
        }
        if !["Issuer", "ClusterIssuer"].contains(&cm.issuer_ref.kind.as_str()) {
            problems.push(format!(
                "tls.certManager.issuerRef.kind is '{}': use Issuer or ClusterIssuer",
                cm.issuer_ref.kind
            ));
        }
        Tls::CertManager {
            secret: cert_manager_secret(&name),
            spec: cm.clone(),
        }
    } else if let Some(acme) = &spec.tls.acme {
        if spec.replicas > 1 {
            problems.push(format!(
                "spec.tls.acme with spec.replicas {}: the station's ACME client answers \
                 challenges on its own pod only, so it serves one pod; use tls.certManager for \
                 several pods",
                spec.replicas
            ));
        }
        if !acme.directory.starts_with("https://") {
            problems.push(format!(
                "tls.acme.directory '{}' is not an https:// URL",
                acme.directory
            ));
        }
        Tls::Acme(acme.clone())
    } else if spec.tls.plain_http {
        Tls::Plain
    } else {
        Tls::Site
    };
    if !spec.tls.names.is_empty() && tls != Tls::Site {
        problems.push(
            "tls.names are for the certificate the operator issues, which this spec does not \
             use: give the names to the certificate's source, or remove tls.names"
                .into(),
        );
    }
    for (i, extra) in spec.tls.names.iter().enumerate() {
        if let Err(e) = crate::pki::check_name(extra) {
            problems.push(format!("tls.names[{i}]: {e}"));
        }
    }
    let site_names = site_names(&name, &bs.namespace().unwrap_or_default(), spec, refs);

    let volume = if store == Store::Sqlite || matches!(tls, Tls::Acme(_)) {
        if !is_quantity(&spec.storage.size) {
            problems.push(format!(
                "storage.size '{}' is not a quantity: write e.g. 1Gi or 500Mi",
                spec.storage.size
            ));
        }
        if !["Retain", "Delete"].contains(&spec.storage.when_deleted.as_str()) {
            problems.push(format!(
                "storage.whenDeleted is '{}': use Retain or Delete",
                spec.storage.when_deleted
            ));
        }
        DataVolume::Claim {
            size: spec.storage.size.clone(),
            storage_class_name: spec.storage.storage_class_name.clone(),
            when_deleted: spec.storage.when_deleted.clone(),
        }
    } else {
        DataVolume::Scratch
    };

    let service = &spec.service;
    if !["LoadBalancer", "NodePort", "ClusterIP"].contains(&service.type_.as_str()) {
        problems.push(format!(
            "service.type is '{}': use LoadBalancer, NodePort or ClusterIP",
            service.type_
        ));
    }
    if service.node_port.is_some() && service.type_ == "ClusterIP" {
        problems.push("service.nodePort needs service.type NodePort or LoadBalancer".into());
    }
    if let Some(policy) = &service.external_traffic_policy
        && !["Cluster", "Local"].contains(&policy.as_str())
    {
        problems.push(format!(
            "service.externalTrafficPolicy is '{policy}': use Cluster or Local"
        ));
    }

    let settings = &spec.station;
    let mut duration = |field: &str, value: &Option<String>| -> Option<Duration> {
        let text = value.as_ref()?;
        match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!(
                    "station.{field} '{text}' is not a duration ({e}): write e.g. 10s or 1m30s"
                ));
                None
            }
        }
    };
    duration("handshakeTimeout", &settings.handshake_timeout);
    duration("resourceIdle", &settings.resource_idle);
    duration("lease", &settings.lease);
    let shutdown_grace =
        duration("shutdownGrace", &settings.shutdown_grace).unwrap_or(Duration::from_secs(10));

    let pull_policy = spec
        .image_pull_policy
        .clone()
        .unwrap_or_else(|| "IfNotPresent".into());
    if !["Always", "IfNotPresent", "Never"].contains(&pull_policy.as_str()) {
        problems.push(format!(
            "imagePullPolicy is '{pull_policy}': use Always, IfNotPresent or Never"
        ));
    }
    if let Some(overrides) = &spec.pod_overrides
        && !overrides.is_object()
    {
        problems.push("podOverrides must be an object (a partial pod template)".into());
    }

    let backup = spec
        .backup
        .as_ref()
        .map(|backup| validate_backup(backup, refs, &mut problems));

    let restore = spec.restore.as_ref().map(|restore| {
        if spec.backup.is_none() {
            problems.push(
                "restore reads the backup from spec.backup's destination: set spec.backup".into(),
            );
        }
        if !restore
            .backup
            .starts_with(zbase_basestation::backup::folder::PREFIX)
            || restore.backup.contains('/')
        {
            problems.push(format!(
                "restore.backup '{}' is not a backup's name: give the zbase-<time>-... name that \
                 `zbase-station backup list` shows, without a folder",
                restore.backup
            ));
        }
        let identity = &restore.identity_secret;
        check_secret_key(
            refs,
            &identity.name,
            &identity.key,
            "restore.identitySecret",
            &mut problems,
        );
        Restore {
            backup: restore.backup.clone(),
            identity_secret: identity.name.clone(),
            identity_key: identity.key.clone(),
        }
    });

    let site = spec.site.as_ref().map(|site| {
        validate_site(
            site,
            &store,
            &bs.namespace().unwrap_or_default(),
            refs,
            &mut problems,
        )
    });

    if !problems.is_empty() {
        return Err(Invalid { problems });
    }
    Ok(Station {
        name,
        namespace: bs.namespace().unwrap_or_default(),
        uid: bs.uid().unwrap_or_default(),
        replicas: if spec.stopped { 0 } else { spec.replicas },
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| defaults.station_image.clone()),
        image_pull_policy: pull_policy,
        image_pull_secrets: spec.image_pull_secrets.clone(),
        store,
        volume,
        tls,
        site_names,
        keep_site_ca: spec.storage.when_deleted != "Delete",
        service: spec.service.clone(),
        settings: spec.station.clone(),
        shutdown_grace,
        resources: spec.resources.clone(),
        scheduling: spec.scheduling.clone(),
        pod_labels: spec.pod_labels.clone(),
        pod_annotations: spec.pod_annotations.clone(),
        pod_overrides: spec.pod_overrides.clone(),
        network_policy: spec.network_policy,
        backup,
        restore,
        site,
    })
}

/// Checks `spec.site`, adding what is wrong to `problems`.
fn validate_site(
    site: &crate::crd::SiteSpec,
    store: &Store,
    namespace: &str,
    refs: &References,
    problems: &mut Vec<String>,
) -> Site {
    use zbase_basestation::config::SiteAddress;
    // A primary may run several pods on PostgreSQL (any pod serves the feed and passes a
    // replica's writes on to the resource's home); a replica caches in one SQLite file, so it
    // is one pod, which the SQLite rule already says.
    if site.replica_of.is_some() && *store != Store::Sqlite {
        problems.push(
            "spec.site.replicaOf with spec.store.postgres: a replica site caches in its own \
             SQLite file; remove spec.store.postgres (the primary keeps the data)"
                .into(),
        );
    }
    let mut url = |field: String, value: &str| {
        if let Err(expected) = SiteAddress::parse(value) {
            problems.push(format!("{field} '{value}' is not {expected}"));
        }
    };
    if let Some(primary) = &site.replica_of {
        url("site.replicaOf".into(), primary);
    }
    for (i, other) in site.sites.iter().enumerate() {
        url(format!("site.sites[{i}]"), other);
    }
    let replication = &site.replication;
    if !(1..=65535).contains(&replication.port) {
        problems.push(format!(
            "site.replication.port is {}: use a port from 1 to 65535",
            replication.port
        ));
    }
    if !["LoadBalancer", "NodePort", "ClusterIP"].contains(&replication.service.type_.as_str()) {
        problems.push(format!(
            "site.replication.service.type is '{}': use LoadBalancer, NodePort or ClusterIP",
            replication.service.type_
        ));
    }
    for (i, cidr) in replication.allow_from.iter().enumerate() {
        if !is_cidr(cidr) {
            problems.push(format!(
                "site.replication.allowFrom[{i}] '{cidr}' is not a CIDR: write e.g. 203.0.113.0/24"
            ));
        }
    }
    let promote = site.promote.as_ref().and_then(|p| {
        if site.replica_of.is_none() {
            problems.push(
                "site.promote is for a replica site (one with site.replicaOf); this one is the \
                 primary already: remove site.promote"
                    .into(),
            );
        }
        match (&p.token, p.failover) {
            (Some(token), false) => match token.parse::<zbase_basestation::replication::Token>() {
                Ok(t) => Some(Promote::Token {
                    epoch: t.epoch,
                    seq: t.seq,
                }),
                Err(e) => {
                    problems.push(format!("site.promote.token: {e}"));
                    None
                }
            },
            (None, true) => Some(Promote::Failover),
            _ => {
                problems.push(
                    "site.promote needs exactly one of token (a planned switchover: the demoted \
                     primary's status.site.handoverToken) and failover: true"
                        .into(),
                );
                None
            }
        }
    });
    if site.promote.is_some() && site.demote {
        problems.push(
            "site.promote and site.demote exclude each other: remove the one you did not mean"
                .into(),
        );
    }
    let (trust, trust_missing) = match &site.trust {
        None => (
            None,
            Some(
                "spec.site.trust is not set, so no other site is trusted: create a Secret \
                 holding the other sites' CA certificates (their <name>-ca key bundle.crt) and \
                 name it in spec.site.trust"
                    .to_owned(),
            ),
        ),
        Some(key) => match (&refs.site_trust, refs.secrets.get(&key.name)) {
            (Some(pem), _) => match std::str::from_utf8(pem) {
                Ok(text) if crate::pki::count_certificates(text) > 0 => {
                    (Some(text.to_owned()), None)
                }
                _ => {
                    problems.push(format!(
                        "site.trust: Secret '{}' key '{}' holds no PEM certificate: put the \
                         other sites' CA certificates there (each site's <name>-ca key \
                         bundle.crt)",
                        key.name, key.key
                    ));
                    (None, None)
                }
            },
            (None, None) => (
                None,
                Some(format!(
                    "site.trust names Secret '{}', which does not exist in namespace \
                     '{namespace}': create it with key '{}' holding the other sites' CA \
                     certificates (each site's <name>-ca key bundle.crt)",
                    key.name, key.key
                )),
            ),
            (None, Some(_)) => (
                None,
                Some(format!(
                    "site.trust names Secret '{}', which has no key '{}': add the other sites' \
                     CA certificates under that key",
                    key.name, key.key
                )),
            ),
        },
    };
    Site {
        replica_of: site.replica_of.clone(),
        sites: site.sites.clone(),
        trust,
        trust_missing,
        replication: replication.clone(),
        promote,
        demote: site.demote,
        max_lag: Duration::from_secs(u64::from(site.max_lag_seconds.unwrap_or(30))),
    }
}

/// An IPv4 or IPv6 CIDR such as `203.0.113.0/24`.
fn is_cidr(text: &str) -> bool {
    let Some((ip, bits)) = text.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(bits)) => bits <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(bits)) => bits <= 128,
        _ => false,
    }
}

/// Checks `spec.backup`, adding what is wrong to `problems`.
fn validate_backup(
    spec: &crate::crd::BackupSpec,
    refs: &References,
    problems: &mut Vec<String>,
) -> Backup {
    let schedule = spec.schedule.trim();
    let macros = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if !(macros.contains(&schedule) || schedule.split_whitespace().count() == 5) {
        problems.push(format!(
            "backup.schedule '{schedule}' is not a cron schedule: write five fields (minute hour \
             day-of-month month day-of-week, e.g. '0 3 * * *') or @daily"
        ));
    }
    if spec.recipients.is_empty() {
        problems.push(
            "backup.recipients is empty: give at least one age recipient (age-keygen -y key.txt)"
                .into(),
        );
    }
    for (i, recipient) in spec.recipients.iter().enumerate() {
        if let Err(e) = zbase_basestation::backup::recipients(std::slice::from_ref(recipient)) {
            problems.push(format!("backup.recipients[{i}]: {e}"));
        }
    }
    if let Some(within) = &spec.keep_within
        && let Err(e) = humantime::parse_duration(within)
    {
        problems.push(format!(
            "backup.keepWithin '{within}' is not a duration ({e}): write e.g. 30d or 12h"
        ));
    }
    if spec.keep_last == Some(0) {
        problems.push("backup.keepLast is 0: keep at least 1, or leave it out".into());
    }
    let destination = match (&spec.volume, &spec.s3) {
        (Some(volume), None) => {
            if let Some(sub) = &volume.sub_path
                && (sub.starts_with('/') || sub.split('/').any(|part| part == ".."))
            {
                problems.push(format!(
                    "backup.volume.subPath '{sub}' must be a relative path inside the volume"
                ));
            }
            BackupDestination::Volume {
                claim: volume.claim_name.clone(),
                sub_path: volume.sub_path.clone(),
            }
        }
        (None, Some(s3)) => {
            if let Err(e) = zbase_basestation::backup::bucket::Bucket::open(
                &s3.url,
                &zbase_basestation::backup::S3Settings {
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    ..Default::default()
                },
            ) {
                problems.push(format!("backup.s3.url: {e}"));
            }
            if let Some(endpoint) = &s3.endpoint
                && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
            {
                problems.push(format!(
                    "backup.s3.endpoint '{endpoint}' is not an http(s):// URL"
                ));
            }
            for key in ["access-key-id", "secret-access-key"] {
                check_secret_key(
                    refs,
                    &s3.credentials_secret,
                    key,
                    "backup.s3.credentialsSecret",
                    problems,
                );
            }
            if let Some(ca) = &s3.ca {
                check_secret_key(refs, &ca.name, &ca.key, "backup.s3.ca", problems);
            }
            BackupDestination::S3(s3.clone())
        }
        _ => {
            problems.push("backup needs exactly one destination: volume or s3".into());
            BackupDestination::Volume {
                claim: String::new(),
                sub_path: None,
            }
        }
    };
    Backup {
        schedule: schedule.to_owned(),
        time_zone: spec.time_zone.clone(),
        suspend: spec.suspend,
        recipients: spec
            .recipients
            .iter()
            .map(|r| r.trim().to_owned())
            .collect(),
        destination,
        keep_last: spec.keep_last,
        keep_within: spec.keep_within.clone(),
    }
}

/// The site certificate's names: those the spec gives first (the first is the common name),
/// then the Service's load-balancer addresses, then every in-cluster name of the Services.
/// Pods reach each other as `<pod>.<station>-pods.<namespace>.svc`, hence the wildcards.
pub fn site_names(
    station: &str,
    ns: &str,
    spec: &BaseStationSpec,
    refs: &References,
) -> Vec<String> {
    let mut names: Vec<String> = spec.tls.names.clone();
    names.extend(refs.service_addresses.iter().cloned());
    names.extend(spec.service.load_balancer_ip.iter().cloned());
    // Other sites check the chain, not the name, but a client that does check may dial the
    // replication Service's address.
    if let Some(site) = &spec.site {
        names.extend(refs.replication_addresses.iter().cloned());
        names.extend(site.replication.service.load_balancer_ip.iter().cloned());
    }
    let internal = super::build::internal_name(station);
    let pods = super::build::headless_name(station);
    names.extend([
        format!("{station}.{ns}.svc"),
        format!("{station}.{ns}.svc.cluster.local"),
        format!("{station}.{ns}"),
        station.to_owned(),
        format!("{internal}.{ns}.svc"),
        format!("{internal}.{ns}.svc.cluster.local"),
        format!("*.{pods}.{ns}.svc"),
        format!("*.{pods}.{ns}.svc.cluster.local"),
    ]);
    if spec.site.is_some() {
        let replication = super::build::replication_name(station);
        names.extend([
            format!("{replication}.{ns}.svc"),
            format!("{replication}.{ns}.svc.cluster.local"),
        ]);
    }
    let mut seen = std::collections::BTreeSet::new();
    // A name the certificate cannot carry is reported by `validate` (from the spec) or
    // dropped (an address a load balancer reported).
    names.retain(|n| crate::pki::check_name(n).is_ok() && seen.insert(n.to_ascii_lowercase()));
    names
}

/// The Secrets a spec names, so the caller knows what to read.
pub fn referenced_secrets(bs: &BaseStation) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(pg) = &bs.spec.store.postgres
        && let Some(secret) = &pg.secret
    {
        names.push(secret.name.clone());
    }
    if let Some(secret) = &bs.spec.tls.secret_name {
        names.push(secret.clone());
    }
    names.extend(
        bs.spec
            .restore
            .as_ref()
            .map(|r| r.identity_secret.name.clone()),
    );
    if let Some(trust) = bs.spec.site.as_ref().and_then(|s| s.trust.as_ref()) {
        names.push(trust.name.clone());
    }
    if let Some(s3) = bs.spec.backup.as_ref().and_then(|b| b.s3.as_ref()) {
        names.push(s3.credentials_secret.clone());
        names.extend(s3.ca.as_ref().map(|ca| ca.name.clone()));
    }
    names
}

fn check_secret_key(
    refs: &References,
    secret: &str,
    key: &str,
    field: &str,
    problems: &mut Vec<String>,
) {
    match refs.secrets.get(secret) {
        None => problems.push(format!(
            "{field} names Secret '{secret}', which does not exist in this namespace: create it \
             (key '{key}'), or fix the name"
        )),
        Some(keys) if !keys.iter().any(|k| k == key) => problems.push(format!(
            "{field} names Secret '{secret}', which has no key '{key}' (it has: {}): add the key",
            if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            }
        )),
        Some(_) => {}
    }
}

/// A Kubernetes quantity such as `1Gi`, `500M` or `1e3`: digits, an optional fraction and
/// one known suffix.
fn is_quantity(text: &str) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return false;
    }
    const SUFFIXES: [&str; 14] = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m",
    ];
    SUFFIXES.contains(&suffix)
        || (suffix.starts_with(['e', 'E']) && suffix[1..].parse::<i32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        for good in [
            "0.0.0.0/0",
            "203.0.113.0/24",
            "2001:db8::/32",
            "10.1.2.3/32",
        ] {
            assert!(is_cidr(good), "{good}");
        }
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "2001:db8::/129",
            "10.0.0.0/-1",
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        for good in ["1Gi", "500Mi", "1", "1.5Gi", "10G", "1e3"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "Gi", "1GB", "1..2Gi", ".5Gi", "ten", "1 Gi", "-1Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
