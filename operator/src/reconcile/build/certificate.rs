//! The cert-manager `Certificate` of the public port, as a dynamic object: cert-manager's
//! types are not compiled in, and the operator runs where cert-manager is not installed.

use super::metadata;
use crate::reconcile::validate::{Station, Tls};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

/// cert-manager's Certificate kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

pub(super) fn certificate(station: &Station) -> Option<DynamicObject> {
    let Tls::CertManager { secret, spec } = &station.tls else {
        return None;
    };
    let mut cert_spec = json!({
        "secretName": secret,
        "dnsNames": spec.dns_names,
        "commonName": spec.dns_names.first(),
        "issuerRef": {
            "name": spec.issuer_ref.name,
            "kind": spec.issuer_ref.kind,
            "group": spec.issuer_ref.group,
        },
        // A new key at each renewal, so a leaked key stops being useful.
        "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
        "usages": ["server auth", "digital signature", "key encipherment"],
        // The Secret outlives nothing: it is the station's, deleted with it.
        "secretTemplate": { "labels": super::labels(station) },
    });
    if let Some(d) = &spec.duration {
        cert_spec["duration"] = json!(d);
    }
    if let Some(r) = &spec.renew_before {
        cert_spec["renewBefore"] = json!(r);
    }
    let mut object = DynamicObject::new(&station.name, &certificate_resource())
        .within(&station.namespace)
        .data(json!({ "spec": cert_spec }));
    object.metadata = metadata(station, &station.name);
    Some(object)
}
