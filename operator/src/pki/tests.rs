//! Each rule of the plan with `now` moved by hand. Chains are checked the way pods and clients
//! will check them: webpki (through rustls, ring) as a server certificate for each name and as
//! a client certificate, at a given time, against the bundle as the only roots.

use super::*;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

const STATION: &str = "site";

/// 2025-06-15, a fixed start for every test.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn names() -> Vec<String> {
    vec!["zb.example.org".into(), "10.0.0.7".into()]
}

fn run(ca: Option<&SecretData>, leaf: Option<&SecretData>, now: SystemTime) -> Plan {
    plan(STATION, &names(), ca, leaf, &Policy::default(), now).unwrap()
}

/// A plan from nothing at `now`.
fn fresh(now: SystemTime) -> Plan {
    run(None, None, now)
}

/// Every certificate in a PEM text, as DER.
fn ders(pem: &[u8]) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem)
        .map(|block| block.unwrap().contents)
        .collect()
}

fn leaf_der(plan: &Plan) -> Vec<u8> {
    ders(&plan.leaf[TLS_CERT])[0].clone()
}

fn ca_der(plan: &Plan) -> Vec<u8> {
    ders(&plan.ca[CA_CERT])[0].clone()
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap())
}

fn roots(bundle: &[u8]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in ders(bundle) {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    Arc::new(roots)
}

/// Whether `leaf` (DER) is a server certificate for `name` under the CAs of `bundle` at `at`.
fn verify_server(
    leaf: &[u8],
    bundle: &[u8],
    name: &str,
    at: SystemTime,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(bundle), provider)
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            unix(at),
        )
        .map(|_| ())
}

/// Whether `leaf` (DER) is a client certificate under the CAs of `bundle` at `at`, as a pod
/// checks a peer on the internal port.
fn verify_client(leaf: &[u8], bundle: &[u8], at: SystemTime) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(bundle), provider)
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&CertificateDer::from(leaf.to_vec()), &[], unix(at))
        .map(|_| ())
}

/// Both ways, for every name.
fn chains(leaf: &[u8], bundle: &[u8], at: SystemTime) -> bool {
    names()
        .iter()
        .all(|name| verify_server(leaf, bundle, name, at).is_ok())
        && verify_client(leaf, bundle, at).is_ok()
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 60 * 60)
}

fn serial(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

#[test]
fn creates_a_ca_and_a_leaf_from_nothing() {
    let now = t0();
    let plan = fresh(now);
    assert!(plan.ca_changed && plan.leaf_changed);
    assert_eq!(
        plan.ca.keys().collect::<Vec<_>>(),
        [CA_BUNDLE, CA_CERT, CA_KEY]
    );
    assert_eq!(
        plan.leaf.keys().collect::<Vec<_>>(),
        [TLS_TRUST, TLS_CERT, TLS_KEY]
    );
    assert!(
        plan.reasons[0].note.starts_with("created the site CA"),
        "{plan:?}"
    );
    assert!(
        plan.reasons[1]
            .note
            .starts_with("issued the certificate for zb.example.org, 10.0.0.7"),
        "{plan:?}"
    );

    // The CA: self-signed, CA with path length 0, may sign certificates and CRLs only.
    let ca_der = ca_der(&plan);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    ca.verify_signature(None).unwrap();
    let cn = ca.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "zbase site CA site");
    assert_eq!(
        ca.subject().to_string(),
        "CN=zbase site CA site, OU=created 2025-06-15T15:06:40Z"
    );
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert_eq!(
        ca.validity().not_before.timestamp(),
        1_750_000_000 - 3600,
        "backdated an hour"
    );
    assert_eq!(
        plan.ca_not_after,
        now + Policy::default().ca_lifetime,
        "ten years"
    );
    assert_eq!(ca.raw_serial().len(), 16);
    // The bundle is the CA alone, and the leaf Secret carries it.
    assert_eq!(ders(&plan.ca[CA_BUNDLE]), std::slice::from_ref(&ca_der));
    assert_eq!(plan.leaf[TLS_TRUST], plan.ca[CA_BUNDLE]);
    // The key is the CA's, PEM PKCS#8.
    let ca_key = std::str::from_utf8(&plan.ca[CA_KEY]).unwrap();
    assert!(ca_key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let ca_key = rcgen::KeyPair::from_pem(ca_key).unwrap();
    assert_eq!(
        ca_key.public_key_raw(),
        ca.public_key().subject_public_key.data.as_ref()
    );

    // The leaf: signed by the CA, the leaf then the CA in tls.crt.
    let chain = ders(&plan.leaf[TLS_CERT]);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], ca_der);
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
    assert_eq!(leaf.subject().to_string(), "CN=zb.example.org");
    assert!(!leaf.is_ca());
    let sans = &leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        sans.general_names,
        [
            GeneralName::DNSName("zb.example.org"),
            GeneralName::IPAddress(&[10u8, 0, 0, 7][..])
        ]
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert_eq!(plan.leaf_not_after, now + days(90));
    assert_ne!(leaf.raw_serial(), ca.raw_serial());
    let leaf_key =
        rcgen::KeyPair::from_pem(std::str::from_utf8(&plan.leaf[TLS_KEY]).unwrap()).unwrap();
    assert_eq!(
        leaf_key.public_key_raw(),
        leaf.public_key().subject_public_key.data.as_ref()
    );
    assert_eq!(leaf_key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);

    // As pods and clients check it: server for every name, client for mutual TLS.
    assert!(chains(&chain[0], &plan.ca[CA_BUNDLE], now));
    assert!(verify_server(&chain[0], &plan.ca[CA_BUNDLE], "other.example.org", now).is_err());
}

#[test]
fn a_second_plan_changes_nothing() {
    let now = t0();
    let first = fresh(now);
    let second = run(Some(&first.ca), Some(&first.leaf), now);
    assert!(!second.ca_changed && !second.leaf_changed, "{second:?}");
    assert!(second.reasons.is_empty(), "{second:?}");
    assert_eq!(second.ca, first.ca);
    assert_eq!(second.leaf, first.leaf);
    assert_eq!(second.leaf_not_after, first.leaf_not_after);
    assert_eq!(second.ca_not_after, first.ca_not_after);
    // A fraction of a second later is the same second as far as certificates go.
    let third = run(
        Some(&first.ca),
        Some(&first.leaf),
        now + Duration::from_millis(999),
    );
    assert!(!third.ca_changed && !third.leaf_changed, "{third:?}");
}

#[test]
fn a_leaf_far_from_expiry_is_kept() {
    let first = fresh(t0());
    // 59 days on, 31 left: outside the 30-day renewal window.
    let later = run(Some(&first.ca), Some(&first.leaf), t0() + days(59));
    assert!(!later.ca_changed && !later.leaf_changed, "{later:?}");
    assert_eq!(later.leaf, first.leaf);
}

#[test]
fn a_leaf_close_to_expiry_is_renewed_with_a_new_key_and_the_same_ca() {
    let first = fresh(t0());
    let now = t0() + days(78);
    let renewed = run(Some(&first.ca), Some(&first.leaf), now);
    assert!(!renewed.ca_changed && renewed.leaf_changed, "{renewed:?}");
    assert_eq!(renewed.ca, first.ca);
    assert_eq!(renewed.reasons.len(), 1, "{:?}", renewed.reasons);
    assert!(
        renewed.reasons[0]
            .note
            .starts_with("renewed the certificate (expires in 12 days)"),
        "{:?}",
        renewed.reasons
    );
    assert_ne!(renewed.leaf[TLS_KEY], first.leaf[TLS_KEY], "a new key");
    assert_ne!(serial(&leaf_der(&renewed)), serial(&leaf_der(&first)));
    assert_eq!(renewed.leaf_not_after, now + days(90));
    assert!(chains(&leaf_der(&renewed), &first.ca[CA_BUNDLE], now));
    // And it sticks.
    let again = run(Some(&renewed.ca), Some(&renewed.leaf), now);
    assert!(!again.leaf_changed && !again.ca_changed);
}

#[test]
fn an_expired_leaf_is_renewed() {
    let first = fresh(t0());
    let renewed = run(Some(&first.ca), Some(&first.leaf), t0() + days(100));
    assert!(renewed.leaf_changed && !renewed.ca_changed);
    assert!(
        renewed.reasons[0]
            .note
            .starts_with("renewed the expired certificate (expired 10 days ago)"),
        "{:?}",
        renewed.reasons
    );
}

#[test]
fn a_change_of_names_reissues() {
    let now = t0() + days(1);
    let first = fresh(t0());
    let policy = Policy::default();
    for names in [
        vec!["zb.example.org".to_string()],
        vec![
            "zb.example.org".into(),
            "10.0.0.7".into(),
            "zb2.example.org".into(),
        ],
        vec!["10.0.0.7".into(), "zb.example.org".into()],
    ] {
        let plan = plan(
            STATION,
            &names,
            Some(&first.ca),
            Some(&first.leaf),
            &policy,
            now,
        )
        .unwrap();
        assert!(plan.leaf_changed && !plan.ca_changed, "{names:?}");
        assert!(
            plan.reasons[0]
                .note
                .starts_with("re-issued the certificate for new names"),
            "{:?}",
            plan.reasons
        );
        let leaf = leaf_der(&plan);
        for name in &names {
            assert!(
                verify_server(&leaf, &plan.ca[CA_BUNDLE], name, now).is_ok(),
                "{name}"
            );
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(
            parsed.subject().to_string(),
            format!("CN={}", names[0]),
            "the first name is the CN"
        );
    }
    // Repeating a name is not a change.
    let repeated = vec![
        "zb.example.org".to_string(),
        "10.0.0.7".into(),
        "zb.example.org".into(),
    ];
    let same = plan(
        STATION,
        &repeated,
        Some(&first.ca),
        Some(&first.leaf),
        &policy,
        now,
    )
    .unwrap();
    assert!(!same.leaf_changed, "{same:?}");
}

#[test]
fn ipv6_names_are_ip_sans() {
    let names = vec!["zb.example.org".to_string(), "fd00::7".into()];
    let plan = plan(STATION, &names, None, None, &Policy::default(), t0()).unwrap();
    let leaf = leaf_der(&plan);
    assert!(verify_server(&leaf, &plan.ca[CA_BUNDLE], "fd00::7", t0()).is_ok());
    let again = super::plan(
        STATION,
        &names,
        Some(&plan.ca),
        Some(&plan.leaf),
        &Policy::default(),
        t0(),
    )
    .unwrap();
    assert!(!again.leaf_changed);
}

/// Publishes the next CA of `ca` at `switch - ca_publish_ahead`, then switches at `switch`.
fn rotate(ca: &SecretData, leaf: Option<&SecretData>, switch: SystemTime) -> Plan {
    let published = run(Some(ca), leaf, switch - Policy::default().ca_publish_ahead);
    assert!(published.ca.contains_key(CA_NEXT), "{published:?}");
    let rotated = run(Some(&published.ca), Some(&published.leaf), switch);
    assert!(rotated.ca.contains_key(CA_PREVIOUS), "{rotated:?}");
    rotated
}

#[test]
fn the_ca_rotates_in_two_steps_with_an_overlap() {
    let policy = Policy::default();
    let created = fresh(t0());
    let ca_end = created.ca_not_after;

    // A year and 30 days before the CA expires: not yet. The first leaf has long expired,
    // so this one is issued by the first CA; it is the "old leaf" pods still hold later.
    let before = ca_end - days(365 + 30);
    let old = run(Some(&created.ca), Some(&created.leaf), before);
    assert!(!old.ca_changed && old.leaf_changed, "{old:?}");
    assert_eq!(old.ca, created.ca);
    let old_leaf = leaf_der(&old);
    let old_ca = ca_der(&old);

    // Step one, 31 days later (the CA expires within a year): the next CA joins the bundle,
    // and nothing it signed exists yet. The leaf stays; only the bundle beside it grows.
    let publish = before + days(31);
    let published = run(Some(&old.ca), Some(&old.leaf), publish);
    assert!(
        published.ca_changed && published.leaf_changed,
        "{published:?}"
    );
    let switch = publish + policy.ca_publish_ahead;
    assert!(
        published.reasons[0]
            .note
            .starts_with("published the next site CA in the trusted bundle")
            && published.reasons[0]
                .note
                .ends_with(&format!("it signs from {}", stamp(switch))),
        "{:?}",
        published.reasons
    );
    assert_eq!(
        published.reasons[1..],
        [Change::new(
            TRUST_UPDATED,
            "updated the trusted CAs next to the certificate"
        )]
    );
    assert_eq!(published.reasons[0].reason, CA_PUBLISHED);
    assert_eq!(
        published.ca[CA_CERT], old.ca[CA_CERT],
        "the current CA still signs"
    );
    assert_eq!(published.ca[CA_KEY], old.ca[CA_KEY]);
    assert_eq!(published.leaf[TLS_CERT], old.leaf[TLS_CERT]);
    assert_eq!(published.leaf[TLS_KEY], old.leaf[TLS_KEY]);
    let next_ca = ders(&published.ca[CA_NEXT]).remove(0);
    assert_ne!(next_ca, old_ca);
    assert_ne!(published.ca[CA_NEXT_KEY], old.ca[CA_KEY]);
    assert_eq!(published.ca[CA_PUBLISHED_AT], stamp(publish).into_bytes());
    assert_eq!(
        ders(&published.ca[CA_BUNDLE]),
        [old_ca.clone(), next_ca.clone()]
    );
    assert_eq!(published.leaf[TLS_TRUST], published.ca[CA_BUNDLE]);
    assert!(published.review_at <= switch);
    let again = run(Some(&published.ca), Some(&published.leaf), publish);
    assert!(!again.ca_changed && !again.leaf_changed, "{again:?}");

    // A second before the switch the current CA still signs (the leaf, due for renewal by
    // now, is renewed by it).
    let late = run(
        Some(&published.ca),
        Some(&published.leaf),
        switch - Duration::from_secs(1),
    );
    assert!(!late.ca_changed, "{late:?}");
    assert_eq!(ders(&late.leaf[TLS_CERT])[1], old_ca);
    let late_leaf = leaf_der(&late);

    // Step two: the next CA signs, the leaf is re-issued by it, the previous CA stays trusted.
    let rotated = run(Some(&late.ca), Some(&late.leaf), switch);
    assert!(rotated.ca_changed && rotated.leaf_changed, "{rotated:?}");
    assert!(
        rotated.reasons[0]
            .note
            .starts_with("rotated the site CA: the next one signs from now")
            && rotated.reasons[0].note.ends_with(&format!(
                "stays trusted until {}",
                stamp(switch + policy.overlap)
            )),
        "{:?}",
        rotated.reasons
    );
    assert!(
        rotated.reasons[1]
            .note
            .starts_with("re-issued the certificate: it was not signed by the current site CA"),
        "{:?}",
        rotated.reasons
    );
    assert_eq!(
        ca_der(&rotated),
        next_ca,
        "the published CA is the one that signs"
    );
    assert_eq!(rotated.ca[CA_KEY], published.ca[CA_NEXT_KEY]);
    let subject = |der: &[u8]| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.subject().as_raw().to_vec()
    };
    assert_ne!(
        subject(&next_ca),
        subject(&old_ca),
        "each generation has its own name"
    );
    assert_eq!(rotated.ca_not_after, publish + policy.ca_lifetime);
    assert_eq!(
        rotated.ca.keys().collect::<Vec<_>>(),
        [CA_BUNDLE, CA_CERT, CA_KEY, CA_PREVIOUS, CA_ROTATED_AT]
    );
    assert_eq!(
        ders(&rotated.ca[CA_PREVIOUS]),
        std::slice::from_ref(&old_ca)
    );
    assert_eq!(rotated.ca[CA_ROTATED_AT], stamp(switch).into_bytes());
    assert_eq!(
        ders(&rotated.ca[CA_BUNDLE]),
        [next_ca.clone(), old_ca.clone()]
    );
    assert_eq!(rotated.leaf[TLS_TRUST], rotated.ca[CA_BUNDLE]);
    let new_leaf = leaf_der(&rotated);
    assert_eq!(ders(&rotated.leaf[TLS_CERT])[1], next_ca);
    let new_only = read::pem(&next_ca).into_bytes();
    assert!(chains(&new_leaf, &new_only, switch));
    assert!(!chains(&old_leaf, &new_only, switch));
    // Why two steps: a pod that has not yet seen the switch (it holds the bundle of step
    // one) already trusts the new leaf, and pods that have trust the leaf it still presents.
    assert!(chains(&new_leaf, &late.leaf[TLS_TRUST], switch));
    assert!(chains(&late_leaf, &rotated.leaf[TLS_TRUST], switch));
    assert!(chains(&old_leaf, &rotated.leaf[TLS_TRUST], switch));

    // Replanning at the switch changes nothing, nor does it during the overlap.
    let again = run(Some(&rotated.ca), Some(&rotated.leaf), switch);
    assert!(!again.ca_changed && !again.leaf_changed, "{again:?}");
    let during = switch + policy.overlap - Duration::from_secs(1);
    let during = run(Some(&rotated.ca), Some(&rotated.leaf), during);
    assert!(!during.ca_changed, "{during:?}");
    assert_eq!(ders(&during.ca[CA_BUNDLE]).len(), 2);

    // Once the overlap is over the previous CA leaves the bundle, and its leaves fail.
    let after = switch + policy.overlap;
    let dropped = run(Some(&during.ca), Some(&during.leaf), after);
    assert!(dropped.ca_changed, "{dropped:?}");
    assert!(
        dropped.reasons[0].note.starts_with(
            "dropped the previous site CA from the trusted bundle: the overlap after the \
             rotation ended"
        ),
        "{:?}",
        dropped.reasons
    );
    assert_eq!(
        dropped.ca.keys().collect::<Vec<_>>(),
        [CA_BUNDLE, CA_CERT, CA_KEY]
    );
    assert_eq!(dropped.ca[CA_CERT], rotated.ca[CA_CERT], "the CA stays");
    assert_eq!(dropped.ca[CA_KEY], rotated.ca[CA_KEY]);
    assert_eq!(ders(&dropped.ca[CA_BUNDLE]), std::slice::from_ref(&next_ca));
    assert_eq!(dropped.leaf[TLS_TRUST], dropped.ca[CA_BUNDLE]);
    // The leaf renewed during the overlap is kept; only the bundle beside it changed.
    assert_eq!(dropped.leaf[TLS_CERT], during.leaf[TLS_CERT]);
    assert_eq!(dropped.leaf[TLS_KEY], during.leaf[TLS_KEY]);
    let old_leaf_err =
        verify_server(&old_leaf, &dropped.ca[CA_BUNDLE], "zb.example.org", switch).unwrap_err();
    assert!(
        matches!(
            old_leaf_err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{old_leaf_err:?}"
    );
    assert!(verify_client(&old_leaf, &dropped.ca[CA_BUNDLE], switch).is_err());
    let stable = run(Some(&dropped.ca), Some(&dropped.leaf), after);
    assert!(!stable.ca_changed && !stable.leaf_changed, "{stable:?}");
}

#[test]
fn an_unreadable_next_ca_is_refused_by_name() {
    let created = fresh(t0());
    let published = run(
        Some(&created.ca),
        Some(&created.leaf),
        created.ca_not_after - days(300),
    );
    let mut broken = published.ca.clone();
    broken.insert(CA_NEXT_KEY.into(), created.ca[CA_KEY].clone());
    let err = plan(
        STATION,
        &names(),
        Some(&broken),
        None,
        &Policy::default(),
        t0(),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "Secret {STATION}-ca: key {CA_NEXT_KEY} does not match the certificate in {CA_NEXT}; \
             the operator will not replace a CA"
        )),
        "{err}"
    );
    let mut broken = published.ca.clone();
    broken.remove(CA_PUBLISHED_AT);
    let err = plan(
        STATION,
        &names(),
        Some(&broken),
        None,
        &Policy::default(),
        t0(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "key {CA_PUBLISHED_AT} is missing while {CA_NEXT} is set"
        )),
        "{err}"
    );
}

#[test]
fn only_the_bundle_changing_keeps_the_leaf() {
    let policy = Policy::default();
    let created = fresh(t0());
    let rotation = created.ca_not_after - days(300);
    let rotated = rotate(&created.ca, None, rotation);
    // A fresh leaf renewed just before the overlap ends, so it is kept when the bundle shrinks.
    let late = rotation + policy.overlap - days(1);
    let renewed = run(Some(&rotated.ca), Some(&rotated.leaf), late);
    assert!(renewed.leaf_changed && !renewed.ca_changed);
    let dropped = run(Some(&renewed.ca), Some(&renewed.leaf), late + days(1));
    assert!(dropped.ca_changed && dropped.leaf_changed, "{dropped:?}");
    assert_eq!(dropped.leaf[TLS_CERT], renewed.leaf[TLS_CERT]);
    assert_eq!(dropped.leaf[TLS_KEY], renewed.leaf[TLS_KEY]);
    assert_ne!(dropped.leaf[TLS_TRUST], renewed.leaf[TLS_TRUST]);
    assert_eq!(
        dropped.reasons.last().map(|c| c.note.as_str()),
        Some("updated the trusted CAs next to the certificate")
    );
}

#[test]
fn an_expired_ca_is_rotated_and_not_kept_in_the_bundle() {
    let created = fresh(t0());
    let now = created.ca_not_after + days(1);
    let rotated = run(Some(&created.ca), Some(&created.leaf), now);
    assert!(rotated.ca_changed && rotated.leaf_changed);
    assert_ne!(rotated.ca[CA_CERT], created.ca[CA_CERT]);
    assert_eq!(ders(&rotated.ca[CA_BUNDLE]), [ca_der(&rotated)]);
    assert!(!rotated.ca.contains_key(CA_PREVIOUS));
    assert!(!rotated.ca.contains_key(CA_ROTATED_AT));
    // Published, switched and dropped in one plan: waiting helps nobody once it expired.
    assert!(
        rotated.reasons[0]
            .note
            .starts_with("published the next site CA")
            && rotated.reasons[1].note.starts_with("rotated the site CA")
            && rotated.reasons[2].note.ends_with("it expired"),
        "{:?}",
        rotated.reasons
    );
    assert!(!rotated.ca.contains_key(CA_NEXT));
    assert!(chains(&leaf_der(&rotated), &rotated.ca[CA_BUNDLE], now));
}

#[test]
fn a_ca_close_to_expiry_switches_halfway_and_leaves_the_bundle_when_it_expires() {
    let policy = Policy::default();
    let created = fresh(t0());
    let ca_end = created.ca_not_after;
    // Published 10 days before it expires: the next CA signs 5 days later, not 30.
    let publish = ca_end - days(10);
    let published = run(Some(&created.ca), Some(&created.leaf), publish);
    let halfway = publish + days(5);
    assert!(
        published.reasons[0]
            .note
            .ends_with(&format!("it signs from {}", stamp(halfway))),
        "{:?}",
        published.reasons
    );
    let waiting = run(
        Some(&published.ca),
        Some(&published.leaf),
        halfway - Duration::from_secs(1),
    );
    assert!(!waiting.ca_changed, "{waiting:?}");
    let rotated = run(Some(&waiting.ca), Some(&waiting.leaf), halfway);
    assert_eq!(ders(&rotated.ca[CA_BUNDLE]).len(), 2);
    // The previous CA leaves the bundle when it expires, not 90 days after the switch.
    assert!(
        rotated.reasons[0]
            .note
            .ends_with(&format!("stays trusted until {}", stamp(ca_end))),
        "{:?}",
        rotated.reasons
    );
    let kept = run(
        Some(&rotated.ca),
        Some(&rotated.leaf),
        ca_end - Duration::from_secs(1),
    );
    assert!(!kept.ca_changed);
    let expired = run(Some(&rotated.ca), Some(&rotated.leaf), ca_end);
    assert!(expired.ca_changed);
    assert_eq!(ders(&expired.ca[CA_BUNDLE]), [ca_der(&rotated)]);
    assert!(
        expired.reasons[0].note.ends_with("it expired"),
        "{:?}",
        expired.reasons
    );
    assert!(halfway + policy.overlap > ca_end);
}

#[test]
fn an_unreadable_ca_secret_is_refused_by_name() {
    let good = fresh(t0()).ca;
    let other = plan("other", &names(), None, None, &Policy::default(), t0())
        .unwrap()
        .ca;
    let with = |key: &str, value: &[u8]| {
        let mut data = good.clone();
        data.insert(key.to_string(), value.to_vec());
        data
    };
    let without = |key: &str| {
        let mut data = good.clone();
        data.remove(key);
        data
    };
    let leaf_pem = fresh(t0()).leaf[TLS_CERT].clone();
    let cases: Vec<(SecretData, &str, &str)> = vec![
        (
            with(CA_CERT, b"garbage"),
            CA_CERT,
            "holds no PEM certificate",
        ),
        (
            with(
                CA_CERT,
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            ),
            CA_CERT,
            "is not valid PEM",
        ),
        (
            with(
                CA_CERT,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            CA_CERT,
            "is not a valid X.509 certificate",
        ),
        (
            with(CA_CERT, &[0xff, 0xfe, 0x00]),
            CA_CERT,
            "is not valid PEM",
        ),
        (without(CA_CERT), CA_CERT, "is missing"),
        (with(CA_CERT, &leaf_pem), CA_CERT, "holds 2 certificates"),
        (
            with(CA_KEY, b"garbage"),
            CA_KEY,
            "is not a PEM PKCS#8 private key",
        ),
        (with(CA_KEY, &[0xff, 0xfe]), CA_KEY, "is not PEM text"),
        (without(CA_KEY), CA_KEY, "is missing"),
        (
            with(CA_KEY, &other[CA_KEY]),
            CA_KEY,
            "does not match the certificate",
        ),
        (
            with(CA_PREVIOUS, b"garbage"),
            CA_PREVIOUS,
            "holds no PEM certificate",
        ),
        (
            with(CA_PREVIOUS, &other[CA_CERT]),
            CA_ROTATED_AT,
            "is missing while previous.crt is set",
        ),
    ];
    for (data, key, why) in cases {
        let err = plan(
            STATION,
            &names(),
            Some(&data),
            None,
            &Policy::default(),
            t0(),
        )
        .unwrap_err();
        match &err {
            PkiError::Unreadable {
                secret,
                key: k,
                reason,
            } => {
                assert_eq!(secret, "site-ca");
                assert_eq!(k, key, "{err}");
                assert!(reason.contains(why), "{err}");
            }
            other => panic!("{key}: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("site-ca") && text.contains(key), "{text}");
    }
    // A bad rotation time, next to a previous CA.
    let mut data = with(CA_PREVIOUS, &other[CA_CERT]);
    data.insert(CA_ROTATED_AT.into(), b"yesterday".to_vec());
    let err = plan(
        STATION,
        &names(),
        Some(&data),
        None,
        &Policy::default(),
        t0(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PkiError::Unreadable { key, .. } if key == CA_ROTATED_AT),
        "{err}"
    );
}

#[test]
fn a_ca_made_elsewhere_signs_under_its_exact_subject() {
    // A CA put in the Secret by hand: PrintableString attributes, no path length, its own
    // serial; leaves must name it byte for byte as their issuer.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        rcgen::DnValue::PrintableString("Example Org".try_into().unwrap()),
    );
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::PrintableString("Example Root".try_into().unwrap()),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::from(t0() - days(1));
    params.not_after = time::OffsetDateTime::from(t0() + days(3000));
    let cert = params.self_signed(&key).unwrap();
    let mut ca = SecretData::new();
    ca.insert(CA_CERT.into(), cert.pem().into_bytes());
    ca.insert(CA_KEY.into(), key.serialize_pem().into_bytes());

    let plan = run(Some(&ca), None, t0());
    assert_eq!(plan.ca[CA_CERT], ca[CA_CERT], "kept byte for byte");
    assert_eq!(plan.ca[CA_KEY], ca[CA_KEY]);
    assert!(plan.ca_changed, "the bundle is added");
    assert!(chains(&leaf_der(&plan), &plan.ca[CA_BUNDLE], t0()));
    let leaf_der = leaf_der(&plan);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
    let again = run(Some(&plan.ca), Some(&plan.leaf), t0());
    assert!(!again.ca_changed && !again.leaf_changed, "{again:?}");
}

#[test]
fn a_leaf_certificate_is_not_a_ca() {
    let plan = fresh(t0());
    let mut data = plan.ca.clone();
    // tls.crt holds two certificates; the leaf alone, with its key, poses as a CA.
    let leaf_only = read::pem(&leaf_der(&plan)).into_bytes();
    data.insert(CA_CERT.into(), leaf_only);
    data.insert(CA_KEY.into(), plan.leaf[TLS_KEY].clone());
    let err = super::plan(
        STATION,
        &names(),
        Some(&data),
        None,
        &Policy::default(),
        t0(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PkiError::Unreadable { key, reason, .. }
            if key == CA_CERT && reason == "is not a CA certificate"),
        "{err}"
    );
}

#[test]
fn an_empty_ca_secret_gets_a_new_ca() {
    let empty = SecretData::new();
    let plan = run(Some(&empty), Some(&empty), t0());
    assert!(plan.ca_changed && plan.leaf_changed);
    assert!(plan.reasons[0].note.starts_with("created the site CA"));
    assert!(
        plan.reasons[1]
            .note
            .starts_with("issued the certificate for"),
        "{:?}",
        plan.reasons
    );
    assert!(chains(&leaf_der(&plan), &plan.ca[CA_BUNDLE], t0()));
}

#[test]
fn a_hostile_leaf_secret_is_replaced() {
    let first = fresh(t0());
    let now = t0() + days(1);
    let with = |key: &str, value: &[u8]| {
        let mut data = first.leaf.clone();
        data.insert(key.to_string(), value.to_vec());
        data
    };
    let without = |key: &str| {
        let mut data = first.leaf.clone();
        data.remove(key);
        data
    };
    let ca_only = read::pem(&ca_der(&first)).into_bytes();
    let leaf_only = read::pem(&leaf_der(&first)).into_bytes();
    let other = plan("other", &names(), None, None, &Policy::default(), t0()).unwrap();
    let cases: Vec<(SecretData, &str)> = vec![
        (with(TLS_CERT, b"garbage"), "replaced an unreadable tls.crt"),
        (
            with(TLS_CERT, &[0xc3, 0x28, 0x0a, 0xff]),
            "replaced an unreadable tls.crt",
        ),
        (
            with(
                TLS_CERT,
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            "replaced an unreadable tls.crt",
        ),
        (with(TLS_KEY, b"garbage"), "replaced an unreadable tls.key"),
        (
            with(TLS_KEY, &other.leaf[TLS_KEY]),
            "re-issued the certificate: tls.key does not match",
        ),
        (
            without(TLS_KEY),
            "replaced an incomplete certificate Secret",
        ),
        (
            without(TLS_CERT),
            "replaced an incomplete certificate Secret",
        ),
        (SecretData::new(), "issued the certificate for"),
        (
            with(TLS_CERT, &ca_only),
            "re-issued the certificate: its chain",
        ),
        (
            with(TLS_CERT, &leaf_only),
            "re-issued the certificate: its chain",
        ),
        // A leaf from a foreign CA, chained to that CA, with its own key: not ours to serve.
        (
            other.leaf.clone(),
            "re-issued the certificate: it was not signed",
        ),
    ];
    for (data, why) in cases {
        let plan = run(Some(&first.ca), Some(&data), now);
        assert!(plan.leaf_changed && !plan.ca_changed, "{why}");
        assert!(
            plan.reasons[0].note.starts_with(why),
            "{why}: {:?}",
            plan.reasons
        );
        assert!(chains(&leaf_der(&plan), &first.ca[CA_BUNDLE], now), "{why}");
        assert_ne!(plan.leaf[TLS_KEY], first.leaf[TLS_KEY], "{why}: a new key");
    }
}

#[test]
fn a_foreign_leaf_under_the_same_name_is_reissued() {
    // Another CA with this station's very subject: the name matches, the signature does not.
    let first = fresh(t0());
    let impostor = fresh(t0());
    let plan = run(Some(&first.ca), Some(&impostor.leaf), t0());
    assert!(plan.leaf_changed);
    assert!(
        plan.reasons[0]
            .note
            .starts_with("re-issued the certificate: it was not signed"),
        "{:?}",
        plan.reasons
    );
    assert!(chains(&leaf_der(&plan), &first.ca[CA_BUNDLE], t0()));
    assert!(!chains(&leaf_der(&impostor), &first.ca[CA_BUNDLE], t0()));
}

#[test]
fn a_leaf_without_client_auth_is_reissued() {
    let first = fresh(t0());
    // Sign a server-only leaf under the stored CA, as older tooling might have.
    let stored = StoredCa::read(&first.ca, "site-ca").unwrap();
    let mut params = rcgen::CertificateParams::new(names()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "zb.example.org");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = time::OffsetDateTime::from(t0());
    params.not_after = time::OffsetDateTime::from(t0() + days(90));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = stored.current.signer.sign_for_test(params, &key);
    let mut leaf = SecretData::new();
    let mut chain = read::pem(&cert).into_bytes();
    chain.extend_from_slice(read::pem(&ca_der(&first)).as_bytes());
    leaf.insert(TLS_CERT.into(), chain);
    leaf.insert(TLS_KEY.into(), key.serialize_pem().into_bytes());
    leaf.insert(TLS_TRUST.into(), first.ca[CA_BUNDLE].clone());
    let plan = run(Some(&first.ca), Some(&leaf), t0());
    assert!(plan.leaf_changed);
    assert!(
        plan.reasons[0]
            .note
            .starts_with("re-issued the certificate: it lacked"),
        "{:?}",
        plan.reasons
    );
}

#[test]
fn every_certificate_gets_its_own_serial_and_key() {
    let a = fresh(t0());
    let b = fresh(t0());
    assert_ne!(serial(&ca_der(&a)), serial(&ca_der(&b)));
    assert_ne!(serial(&leaf_der(&a)), serial(&leaf_der(&b)));
    assert_ne!(a.ca[CA_KEY], b.ca[CA_KEY]);
    assert_ne!(a.leaf[TLS_KEY], b.leaf[TLS_KEY]);
}

#[test]
fn bad_names_are_refused() {
    let policy = Policy::default();
    assert!(matches!(
        plan(STATION, &[], None, None, &policy, t0()),
        Err(PkiError::NoNames)
    ));
    for bad in [
        "",
        "bad name",
        "zb..example.org",
        "zé.example.org",
        "a_b.example.org",
    ] {
        let err = plan(STATION, &[bad.to_string()], None, None, &policy, t0()).unwrap_err();
        assert!(
            matches!(&err, PkiError::BadName { name, .. } if name == bad),
            "{bad}: {err}"
        );
    }
    let ok = plan(
        STATION,
        &[
            "*.zb.example.org".to_string(),
            "xn--zb-cja.example.org".into(),
        ],
        None,
        None,
        &policy,
        t0(),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn a_policy_that_does_not_fit_together_is_refused() {
    let base = Policy::default();
    for policy in [
        Policy {
            overlap: days(30),
            ..base
        },
        Policy {
            leaf_renew_before: days(90),
            ..base
        },
        Policy {
            ca_rotate_before: days(3650),
            ..base
        },
        Policy {
            ca_publish_ahead: days(300),
            ..base
        },
        Policy {
            leaf_lifetime: days(400),
            overlap: days(400),
            ..base
        },
    ] {
        assert!(
            matches!(
                plan(STATION, &names(), None, None, &policy, t0()),
                Err(PkiError::Policy(_))
            ),
            "{policy:?}"
        );
    }
    assert!(base.check().is_ok());
}

#[test]
fn a_plan_never_prints_keys() {
    let plan = fresh(t0());
    let shown = format!("{plan:?}");
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("CERTIFICATE"),
        "{shown}"
    );
    assert!(shown.contains("tls.key") && shown.contains("ca.key"));
}

#[test]
fn secret_names() {
    assert_eq!(ca_secret_name("north"), "north-ca");
    assert_eq!(leaf_secret_name("north"), "north-tls");
}
