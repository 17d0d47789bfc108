//! Making keys and certificates with rcgen: the site CA, and leaves it signs.

use super::PkiError;
use super::read::{Authority, Cert, Name, Names, pem};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

/// Certificates start an hour early, so a peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A key and a certificate just made.
pub(super) struct Issued {
    /// The certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// The key, PEM PKCS#8.
    pub key_pem: Vec<u8>,
    /// The certificate as read back.
    pub cert: Cert,
}

/// What signs leaves: the CA's key, and rcgen's view of the CA certificate (whose subject and
/// key identifier are all that signing takes from it).
pub(super) struct Signer {
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// Whether the CA has a subject key identifier for leaves to point at.
    has_key_id: bool,
}

impl Signer {
    /// The signer for a stored CA. rcgen 0.13 signs only under a certificate it made, so the
    /// CA's subject and key identifier are carried over into a stand-in it makes, and the
    /// stand-in's subject is checked to encode to the very same bytes: clients match a leaf's
    /// issuer to its CA byte for byte. The error says why the CA cannot be signed under.
    pub(super) fn for_stored(ca: &X509Certificate<'_>, key: KeyPair) -> Result<Signer, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(ca.subject())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key_id = ca
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let has_key_id = key_id.is_some();
        if let Some(id) = key_id {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id);
        }
        let issuer = params
            .self_signed(&key)
            .map_err(|e| format!("cannot be signed under ({e})"))?;
        let (_, stand_in) = x509_parser::parse_x509_certificate(issuer.der())
            .map_err(|e| format!("cannot be signed under ({e})"))?;
        if stand_in.subject().as_raw() != ca.subject().as_raw() {
            return Err(format!(
                "has a subject ({}) this operator cannot reproduce to sign under",
                ca.subject()
            ));
        }
        Ok(Signer {
            issuer,
            key,
            has_key_id,
        })
    }
}

/// A new site CA for `station`, valid from an hour before `now` for `lifetime`.
pub(super) fn new_ca(
    station: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Authority, PkiError> {
    let what = "site CA";
    let key = new_key(what)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("zbase site CA {station}"));
    // Each generation of the CA gets its own subject, so during an overlap a client finding a
    // leaf's issuer by name alone (not by key identifier) cannot pick the wrong one.
    params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("created {}", super::stamp(now)),
    );
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now, lifetime)?;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(|e| PkiError::Issue {
        what,
        reason: e.to_string(),
    })?;
    let issued = finish(what, cert.der(), &key)?;
    Ok(Authority {
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        cert: issued.cert,
        signer: Signer {
            issuer: cert,
            key,
            has_key_id: true,
        },
    })
}

/// A new leaf for `names`, signed by `signer`, valid from an hour before `now` for
/// `lifetime`: for the public port (server auth) and mutual TLS between pods (client auth).
pub(super) fn new_leaf(
    names: &Names,
    signer: &Signer,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Issued, PkiError> {
    let what = "certificate";
    let key = new_key(what)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first());
    params.subject_alt_names = names
        .iter()
        .map(|name| match name {
            Name::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            Name::Dns(dns) => {
                dns.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| PkiError::BadName {
                        name: dns.clone(),
                        reason: e.to_string(),
                    })
            }
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = signer.has_key_id;
    set_validity(&mut params, now, lifetime)?;
    params.serial_number = Some(random_serial());
    let cert = params
        .signed_by(&key, &signer.issuer, &signer.key)
        .map_err(|e| PkiError::Issue {
            what,
            reason: e.to_string(),
        })?;
    finish(what, cert.der(), &key)
}

/// A fresh ECDSA P-256 key.
fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::Issue {
        what,
        reason: format!("key: {e}"),
    })
}

/// From an hour before `now` for `lifetime`.
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(), PkiError> {
    let start = now
        .checked_sub(BACKDATE)
        .ok_or(PkiError::Time("the start of validity"))?;
    let end = now
        .checked_add(lifetime)
        .ok_or(PkiError::Time("the end of validity"))?;
    params.not_before = date(start).ok_or(PkiError::Time("the start of validity"))?;
    params.not_after = date(end).ok_or(PkiError::Time("the end of validity"))?;
    Ok(())
}

/// `t` as rcgen takes it, if a certificate can carry it.
fn date(t: SystemTime) -> Option<OffsetDateTime> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_secs()).ok()?,
    };
    let date = OffsetDateTime::from_unix_timestamp(secs).ok()?;
    // GeneralizedTime has four digits of year.
    (0..=9999).contains(&date.year()).then_some(date)
}

/// 126 random bits, positive and always 16 bytes long: unique, and unguessable before issue
/// (RFC 5280 allows up to 20 bytes).
fn random_serial() -> SerialNumber {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&serial)
}

/// The PEMs of what was made, and the certificate read back as any other would be.
fn finish(what: &'static str, der: &[u8], key: &KeyPair) -> Result<Issued, PkiError> {
    let cert = Cert::from_der(der.to_vec()).map_err(|reason| PkiError::Issue {
        what,
        reason: format!("reading it back: {reason}"),
    })?;
    Ok(Issued {
        cert_pem: pem(der).into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        cert,
    })
}

/// `name` as rcgen builds names, one attribute per RDN with its string type kept.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(
                "has a subject with multi-valued names, which cannot be signed under".into(),
            );
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("has a subject attribute with an unreadable type")?
            .collect();
        let data = attr.attr_value().data;
        let text = || {
            std::str::from_utf8(data)
                .map(str::to_owned)
                .map_err(|_| "has a subject attribute that is not text".to_string())
        };
        let bad = |e: rcgen::Error| format!("has a subject attribute rcgen cannot encode ({e})");
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => {
                DnValue::BmpString(rcgen::BmpString::from_utf16be(data.to_vec()).map_err(bad)?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::UniversalString::from_utf32be(data.to_vec()).map_err(bad)?,
            ),
            other => return Err(format!("has a subject attribute of type {other:?}")),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

#[cfg(test)]
impl Signer {
    /// Signs `params` for `key` under this CA: tests make leaves the plan never would.
    pub(super) fn sign_for_test(&self, params: CertificateParams, key: &KeyPair) -> Vec<u8> {
        params
            .signed_by(key, &self.issuer, &self.key)
            .unwrap()
            .der()
            .to_vec()
    }
}
