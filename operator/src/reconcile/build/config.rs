//! The station's configuration file, written through the station's own settings type so a
//! renamed or retyped key fails this crate's build rather than a pod at start.

use super::{BuildError, config_name, metadata};
use crate::pki;
use crate::reconcile::validate::{Station, Store, Tls};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use zbase_basestation::config::RawSettings;
use zbase_basestation::telemetry::LogFormat;

/// The public port inside the pod.
pub const PUBLIC_PORT: i32 = 8080;
/// The internal port inside the pod (pod to pod, replication, backups).
pub const INTERNAL_PORT: i32 = 7201;
/// The replication port inside the pod (other sites, and the operator's role calls).
pub const REPLICATION_PORT: i32 = 7443;
/// Where the merged replication trust bundle (this site's CA and the others') is mounted.
pub const REPLICATION_TRUST_DIR: &str = "/etc/zbase/replication-trust";
/// The key of the merged bundle in its Secret, and its file name in the mount.
pub const REPLICATION_TRUST_KEY: &str = "ca.crt";
/// The ConfigMap key holding the file.
pub const CONFIG_KEY: &str = "station.yaml";
/// Where the file is mounted in the pod.
pub const CONFIG_FILE: &str = "/etc/zbase/config/station.yaml";
/// The pod's data directory (the volume).
pub const DATA_DIR: &str = "/var/lib/zbase";
/// Where the public certificate's Secret is mounted, when it comes from elsewhere than the
/// site CA.
pub const TLS_DIR: &str = "/etc/zbase/tls";
/// Where the site certificate's Secret (from the operator's site CA) is mounted.
pub const SITE_TLS_DIR: &str = "/etc/zbase/site-tls";

/// The station settings for `station`: everything but the pod's identity and the database
/// URL, which come from the environment.
pub fn station_config(station: &Station) -> Result<RawSettings, BuildError> {
    let s = &station.settings;
    let duration = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
    };
    let file = |dir: &str, key: &str| Some(PathBuf::from(format!("{dir}/{key}")));
    let (tls_cert, tls_key) = match &station.tls {
        Tls::Site => (
            file(SITE_TLS_DIR, pki::TLS_CERT),
            file(SITE_TLS_DIR, pki::TLS_KEY),
        ),
        Tls::Secret(_) | Tls::CertManager { .. } => {
            (file(TLS_DIR, pki::TLS_CERT), file(TLS_DIR, pki::TLS_KEY))
        }
        Tls::Plain | Tls::Acme(_) => (None, None),
    };
    let acme = match &station.tls {
        Tls::Acme(acme) => Some(acme),
        _ => None,
    };
    let site = station.site.as_ref();
    let to_usize = |n: Option<u64>| -> Result<Option<usize>, BuildError> {
        n.map(|n| usize::try_from(n).map_err(|e| BuildError::Config(e.to_string())))
            .transpose()
    };
    Ok(RawSettings {
        listen: Some(([0, 0, 0, 0], PUBLIC_PORT as u16).into()),
        internal_listen: Some(([0, 0, 0, 0], INTERNAL_PORT as u16).into()),
        data_dir: Some(PathBuf::from(DATA_DIR)),
        store: match station.store {
            Store::Sqlite => Some("sqlite".into()),
            // The URL carries a password: the pod reads it from its Secret as ZBASE_STORE.
            Store::Postgres { .. } => None,
        },
        log_format: Some(LogFormat::Json),
        log: s.log.clone(),
        frame_max_bytes: to_usize(s.frame_max_bytes)?,
        handshake_timeout: duration(&s.handshake_timeout),
        peers_per_resource: to_usize(s.peers_per_resource)?,
        connections_per_ip: to_usize(s.connections_per_ip)?,
        failed_handshakes_per_minute: s.failed_handshakes_per_minute,
        peer_queue_frames: to_usize(s.peer_queue_frames)?,
        resource_idle: duration(&s.resource_idle),
        shutdown_grace: Some(station.shutdown_grace),
        lease: duration(&s.lease),
        tls_cert,
        tls_key,
        // Pods, replica sites and backups prove membership of the site by its CA.
        internal_tls_cert: file(SITE_TLS_DIR, pki::TLS_CERT),
        internal_tls_key: file(SITE_TLS_DIR, pki::TLS_KEY),
        internal_ca: file(SITE_TLS_DIR, pki::TLS_TRUST),
        // Sites present the site certificate both as server and as client (it carries both
        // usages) and trust the merged bundle of every site's CA.
        replica_of: site.and_then(|s| s.replica_of.clone()),
        sites: site
            .filter(|s| !s.sites.is_empty())
            .map(|s| s.sites.join(",")),
        replication_listen: site.map(|_| ([0, 0, 0, 0], REPLICATION_PORT as u16).into()),
        replication_tls_cert: site.and_then(|_| file(SITE_TLS_DIR, pki::TLS_CERT)),
        replication_tls_key: site.and_then(|_| file(SITE_TLS_DIR, pki::TLS_KEY)),
        replication_ca: site.and_then(|_| file(REPLICATION_TRUST_DIR, REPLICATION_TRUST_KEY)),
        acme_directory: acme.map(|a| a.directory.clone()),
        acme_domain: acme.map(|a| a.domain.clone()),
        acme_email: acme.and_then(|a| a.email.clone()),
        ..Default::default()
    })
}

/// The ConfigMap and the hash of its content.
pub(super) fn config_map(station: &Station) -> Result<(ConfigMap, String), BuildError> {
    let settings = station_config(station)?;
    let text = format!(
        "# Written by zbase-operator for BaseStation {}; edit the BaseStation, not this file.\n{}",
        station.name,
        serde_yaml::to_string(&settings).map_err(|e| BuildError::Config(e.to_string()))?
    );
    let digest = Sha256::digest(text.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let config_map = ConfigMap {
        metadata: metadata(station, &config_name(&station.name)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
        ..Default::default()
    };
    Ok((config_map, hash))
}
