//! The site CA's Secret and the site certificate's Secret, holding what [`crate::pki::plan`]
//! decided. The plan draws keys, so it runs before building; building only wraps its data.

use super::{labels, metadata};
use crate::pki::{self, SecretData};
use crate::reconcile::validate::Station;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// The data of the two Secrets, as planned.
#[derive(Clone, PartialEq)]
pub struct SiteCredentials {
    /// The site CA's Secret (`<station>-ca`).
    pub ca: SecretData,
    /// The site certificate's Secret (`<station>-tls`).
    pub leaf: SecretData,
}

impl std::fmt::Debug for SiteCredentials {
    // Private keys: show which keys there are, never the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCredentials")
            .field("ca", &self.ca.keys().collect::<Vec<_>>())
            .field("leaf", &self.leaf.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The site CA's Secret. Owned by the BaseStation only when its volumes go with it: a CA
/// that clients trust should not vanish while the data it protected is kept.
pub(super) fn ca_secret(station: &Station, data: &SecretData) -> Secret {
    let mut meta = metadata(station, &pki::ca_secret_name(&station.name));
    if station.keep_site_ca {
        meta.owner_references = None;
        meta.labels = Some(labels(station));
    }
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        data: Some(bytes(data)),
        ..Default::default()
    }
}

/// The site certificate's Secret, in the `kubernetes.io/tls` shape (with `ca.crt`).
pub(super) fn leaf_secret(station: &Station, data: &SecretData) -> Secret {
    Secret {
        metadata: metadata(station, &pki::leaf_secret_name(&station.name)),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(bytes(data)),
        ..Default::default()
    }
}

/// The replication trust bundle: every CA of this site (the bundle its pods already trust,
/// rotation included), then the other sites' CAs from spec.site.trust. Rebuilt at every
/// reconcile, so a rotated site CA or a changed trust Secret reaches the pods' mount, which
/// the station reloads without a restart.
pub(super) fn replication_trust(station: &Station, ca: &SecretData) -> Option<Secret> {
    let site = station.site.as_ref()?;
    let mut bundle = ca.get(pki::CA_BUNDLE).cloned().unwrap_or_default();
    if let Some(others) = &site.trust {
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(others.as_bytes());
    }
    Some(Secret {
        metadata: metadata(station, &super::replication_trust_name(&station.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            super::REPLICATION_TRUST_KEY.to_owned(),
            ByteString(bundle),
        )])),
        ..Default::default()
    })
}

fn bytes(data: &SecretData) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect()
}
