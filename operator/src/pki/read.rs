//! Reading what the Secrets hold: the stored CA (refused when unusable) and the leaf (judged
//! fit to keep, or not and why). Input here is whatever the API returned, so nothing is
//! assumed about it.

use super::issue::Signer;
use super::{
    CA_CERT, CA_KEY, CA_NEXT, CA_NEXT_KEY, CA_PREVIOUS, CA_PUBLISHED_AT, CA_ROTATED_AT,
    CERT_ISSUED, CERT_RENEWED, Change, PkiError, Policy, SecretData, TLS_CERT, TLS_KEY, stamp,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::KeyPair;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// A certificate as stored, with the facts the plan compares.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Cert {
    /// Its DER.
    pub der: Vec<u8>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Cert {
    /// Reads a DER certificate; the error says what is wrong with it.
    pub(super) fn from_der(der: Vec<u8>) -> Result<Cert, String> {
        let (not_before, not_after) = {
            let parsed = parse(&der)?;
            let validity = parsed.validity();
            (
                to_system_time(validity.not_before.timestamp()),
                to_system_time(validity.not_after.timestamp()),
            )
        };
        Ok(Cert {
            der,
            not_before,
            not_after,
        })
    }

    /// The certificate parsed; it parsed when it was read, so this does not fail in practice.
    fn parsed(&self) -> Result<X509Certificate<'_>, String> {
        parse(&self.der)
    }
}

/// Parses DER, with the error as text.
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("is not a valid X.509 certificate ({e})"))
}

/// Every certificate in a PEM text; an error if it holds none, anything else, or bad PEM.
fn read_certs(text: &[u8]) -> Result<Vec<Cert>, String> {
    let mut certs = Vec::new();
    for block in Pem::iter_from_buffer(text) {
        let block = block.map_err(|e| format!("is not valid PEM ({e})"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "holds a {} block where a certificate was expected",
                block.label
            ));
        }
        certs.push(Cert::from_der(block.contents)?);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_string());
    }
    Ok(certs)
}

/// Reads a key, PEM PKCS#8; the error says what is wrong with it.
fn read_key(text: &[u8]) -> Result<KeyPair, String> {
    let text = std::str::from_utf8(text).map_err(|_| "is not PEM text".to_string())?;
    KeyPair::from_pem(text).map_err(|e| format!("is not a PEM PKCS#8 private key ({e})"))
}

/// Whether `key` is the private half of `cert`'s public key.
fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref()
}

/// The canonical PEM of a DER certificate: 64 columns, LF, as every certificate the plan
/// writes is encoded, so replanning yields the same bytes.
pub(super) fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so each chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A time from seconds since the epoch, either side of it.
pub(super) fn to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// `t` without its fraction of a second, as certificates carry time.
pub(super) fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after.as_secs()),
        Err(_) => t,
    }
}

/// One of the leaf's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Name {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Dns(name) => f.write_str(name),
            Name::Ip(ip) => ip.fmt(f),
        }
    }
}

/// The leaf's names: at least one, no repeats, in the order given (the first is the CN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Names(Vec<Name>);

impl Names {
    /// Checks and sorts out the names given: IP addresses where they parse as such, DNS names
    /// (letters, digits, hyphens, dots, a leading `*.`) otherwise.
    pub(super) fn parse(names: &[String]) -> Result<Names, PkiError> {
        let mut out: Vec<Name> = Vec::new();
        for raw in names {
            let name = match raw.parse::<IpAddr>() {
                Ok(ip) => Name::Ip(ip),
                Err(_) => Name::Dns(check_dns(raw)?),
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
        if out.is_empty() {
            return Err(PkiError::NoNames);
        }
        Ok(Names(out))
    }

    /// The first name, the leaf's CN.
    pub(super) fn first(&self) -> String {
        self.0.first().map(Name::to_string).unwrap_or_default()
    }

    /// The names in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Name> {
        self.0.iter()
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            name.fmt(f)?;
        }
        Ok(())
    }
}

/// `name` if it can be a DNS name in a certificate.
fn check_dns(name: &str) -> Result<String, PkiError> {
    let bad = |reason: &str| PkiError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() || name.len() > 253 {
        return Err(bad("a DNS name has 1 to 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label of a DNS name has 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "a DNS name holds letters, digits, hyphens and dots only (IDNs in their \
                 xn-- form)",
            ));
        }
    }
    Ok(name.to_string())
}

/// A CA that can sign: its certificate and key as stored, and the signer made of them.
pub(super) struct Authority {
    /// The certificate as stored.
    pub cert_pem: Vec<u8>,
    /// The key as stored.
    pub key_pem: Vec<u8>,
    /// The certificate.
    pub cert: Cert,
    /// What signs with it.
    pub signer: Signer,
}

/// The CA Secret as read: the current CA, which signs; the previous one during an overlap;
/// the next one while it is published ahead of signing.
pub(super) struct StoredCa {
    /// The current CA.
    pub current: Authority,
    /// The previous CA, if an overlap is on.
    pub previous: Option<Previous>,
    /// The next CA, if one is published.
    pub next: Option<Next>,
}

/// The CA rotated out, kept in the bundle for a while.
pub(super) struct Previous {
    /// Its certificate as stored (`previous.crt`).
    pub pem: Vec<u8>,
    /// Its certificate.
    pub cert: Cert,
    /// When it was rotated out.
    pub rotated_at: SystemTime,
    /// That time as stored (`rotated-at`).
    pub rotated_at_text: Vec<u8>,
}

impl Previous {
    /// The end of its overlap, or its expiry if sooner.
    pub(super) fn trusted_until(&self, policy: &Policy) -> SystemTime {
        self.rotated_at
            .checked_add(policy.overlap)
            .map_or(self.cert.not_after, |end| end.min(self.cert.not_after))
    }
}

/// The CA that will sign next, already in the bundle so every pod and client trusts it
/// before the first certificate it signs appears.
pub(super) struct Next {
    /// The CA.
    pub authority: Authority,
    /// When it joined the bundle.
    pub published_at: SystemTime,
    /// That time as stored (`next-published-at`).
    pub published_at_text: Vec<u8>,
}

impl Next {
    /// When it takes over from `current`: once it has been published for
    /// [`Policy::ca_publish_ahead`], and at the latest halfway from its publication to the
    /// current CA's expiry, so certificates move to it well before the current CA expires.
    pub(super) fn signs_from(&self, current: &Cert, policy: &Policy) -> SystemTime {
        let halfway = current
            .not_after
            .duration_since(self.published_at)
            .map_or(self.published_at, |left| self.published_at + left / 2);
        self.published_at
            .checked_add(policy.ca_publish_ahead)
            .map_or(halfway, |ahead| ahead.min(halfway))
    }
}

impl StoredCa {
    /// Reads the CA Secret `secret`, refusing it if any key a CA needs is missing or
    /// unusable. `bundle.crt` is not read: it is recomputed from the others.
    pub(super) fn read(data: &SecretData, secret: &str) -> Result<StoredCa, PkiError> {
        let refuse = |key: &str, reason: String| PkiError::Unreadable {
            secret: secret.to_string(),
            key: key.to_string(),
            reason,
        };
        let current = Authority::read(data, CA_CERT, CA_KEY, &refuse)?;
        // A time stored next to a CA (`key`), required once `with` is set.
        let time = |key: &str, with: &str| -> Result<(Vec<u8>, SystemTime), PkiError> {
            let text = data
                .get(key)
                .ok_or_else(|| refuse(key, format!("is missing while {with} is set")))?;
            let at = std::str::from_utf8(text)
                .ok()
                .and_then(|t| humantime::parse_rfc3339_weak(t.trim()).ok())
                .ok_or_else(|| refuse(key, "is not an RFC 3339 time".to_string()))?;
            Ok((text.clone(), at))
        };

        let previous = match data.get(CA_PREVIOUS) {
            None => None,
            Some(pem) => {
                let cert = one_cert(pem).map_err(|reason| refuse(CA_PREVIOUS, reason))?;
                let (rotated_at_text, rotated_at) = time(CA_ROTATED_AT, CA_PREVIOUS)?;
                Some(Previous {
                    pem: pem.clone(),
                    cert,
                    rotated_at,
                    rotated_at_text,
                })
            }
        };
        let next = match data.get(CA_NEXT) {
            None => None,
            Some(_) => {
                let authority = Authority::read(data, CA_NEXT, CA_NEXT_KEY, &refuse)?;
                let (published_at_text, published_at) = time(CA_PUBLISHED_AT, CA_NEXT)?;
                Some(Next {
                    authority,
                    published_at,
                    published_at_text,
                })
            }
        };
        Ok(StoredCa {
            current,
            previous,
            next,
        })
    }
}

impl Authority {
    /// Reads the CA certificate under `cert_key` and its key under `key_key`.
    fn read(
        data: &SecretData,
        cert_key: &str,
        key_key: &str,
        refuse: &dyn Fn(&str, String) -> PkiError,
    ) -> Result<Authority, PkiError> {
        let get = |key: &str| {
            data.get(key)
                .ok_or_else(|| refuse(key, "is missing".to_string()))
        };
        let cert_pem = get(cert_key)?;
        let cert = one_cert(cert_pem).map_err(|reason| refuse(cert_key, reason))?;
        let key_pem = get(key_key)?;
        let key = read_key(key_pem).map_err(|reason| refuse(key_key, reason))?;
        let parsed = cert.parsed().map_err(|reason| refuse(cert_key, reason))?;
        check_ca(&parsed).map_err(|reason| refuse(cert_key, reason))?;
        if !key_matches(&key, &parsed) {
            return Err(refuse(
                key_key,
                format!("does not match the certificate in {cert_key}"),
            ));
        }
        let signer = Signer::for_stored(&parsed, key).map_err(|reason| refuse(cert_key, reason))?;
        Ok(Authority {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            cert,
            signer,
        })
    }
}

/// The one certificate a CA Secret key holds.
fn one_cert(pem: &[u8]) -> Result<Cert, String> {
    let mut certs = read_certs(pem)?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        _ => Err(format!(
            "holds {} certificates where one CA certificate was expected",
            certs.len() + 1
        )),
    }
}

/// Whether `cert` may sign certificates: a CA, with keyCertSign if it restricts key usage.
fn check_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("has unreadable basic constraints ({e})"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err("is not a CA certificate".to_string());
    }
    let usage = cert
        .key_usage()
        .map_err(|e| format!("has an unreadable key usage ({e})"))?;
    if usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err("is a CA whose key usage does not allow signing certificates".to_string());
    }
    Ok(())
}

/// A leaf fit to keep, as stored.
pub(super) struct Kept {
    /// `tls.crt` as stored.
    pub cert_pem: Vec<u8>,
    /// `tls.key` as stored.
    pub key_pem: Vec<u8>,
    /// When it expires.
    pub not_after: SystemTime,
}

/// Whether the stored leaf can stay: signed by `ca` and chained to it, its key matching, for
/// exactly `names`, with both usages, valid now and not expiring within the renewal window.
/// The error is the change saying why a new one is issued.
pub(super) fn check_leaf(
    data: &SecretData,
    ca: &Cert,
    names: &Names,
    policy: &Policy,
    now: SystemTime,
) -> Result<Kept, Change> {
    let issue = |note: String| Change::new(CERT_ISSUED, note);
    let (Some(cert_pem), Some(key_pem)) = (data.get(TLS_CERT), data.get(TLS_KEY)) else {
        return Err(issue(
            if data.get(TLS_CERT).is_none() && data.get(TLS_KEY).is_none() {
                format!("issued the certificate for {names}")
            } else {
                format!(
                    "replaced an incomplete certificate Secret (it needs {TLS_CERT} and {TLS_KEY})"
                )
            },
        ));
    };
    let unreadable =
        |key: &str, reason: String| issue(format!("replaced an unreadable {key} ({key} {reason})"));
    let chain = read_certs(cert_pem).map_err(|reason| unreadable(TLS_CERT, reason))?;
    let key = read_key(key_pem).map_err(|reason| unreadable(TLS_KEY, reason))?;
    let Some(leaf) = chain.first() else {
        return Err(unreadable(TLS_CERT, "holds no certificate".to_string()));
    };
    let leaf_parsed = leaf
        .parsed()
        .map_err(|reason| unreadable(TLS_CERT, reason))?;
    let ca_parsed = ca
        .parsed()
        .map_err(|reason| issue(format!("re-issued the certificate: the CA {reason}")))?;

    // Named as issued by the current CA and truly signed by it: a CA of the same name (another
    // operator's, a previous generation, an impostor's) fails on the signature.
    if leaf_parsed.issuer().as_raw() != ca_parsed.subject().as_raw()
        || leaf_parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_err()
    {
        return Err(issue(
            "re-issued the certificate: it was not signed by the current site CA".into(),
        ));
    }
    if chain.len() != 2 || chain.get(1) != Some(ca) {
        return Err(issue(
            "re-issued the certificate: its chain is not the leaf then the current site CA".into(),
        ));
    }
    if !key_matches(&key, &leaf_parsed) {
        return Err(issue(format!(
            "re-issued the certificate: {TLS_KEY} does not match it"
        )));
    }
    let had = leaf_names(&leaf_parsed);
    if had.as_ref() != Some(&names.0) {
        let had = had.map_or_else(|| "others".to_string(), |h| Names(h).to_string());
        return Err(issue(format!(
            "re-issued the certificate for new names ({names}; it had {had})"
        )));
    }
    let both_usages = leaf_parsed
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.server_auth && eku.value.client_auth);
    if leaf_parsed.is_ca() || !both_usages {
        return Err(issue(
            "re-issued the certificate: it lacked the server and client authentication \
             usages pods need"
                .into(),
        ));
    }
    if leaf.not_before > now {
        return Err(issue(format!(
            "re-issued the certificate: it was not valid before {}",
            stamp(leaf.not_before)
        )));
    }
    if super::expires_within(leaf, now, policy.leaf_renew_before) {
        return Err(Change::new(
            CERT_RENEWED,
            match leaf.not_after.duration_since(now) {
                Ok(left) if !left.is_zero() => {
                    format!("renewed the certificate (expires in {})", days(left))
                }
                Ok(_) => "renewed the expired certificate (expired just now)".to_string(),
                Err(past) => format!(
                    "renewed the expired certificate (expired {} ago)",
                    days(past.duration())
                ),
            },
        ));
    }
    Ok(Kept {
        cert_pem: cert_pem.clone(),
        key_pem: key_pem.clone(),
        not_after: leaf.not_after,
    })
}

/// The leaf's SANs in order, or `None` if it has others than DNS names and IP addresses.
fn leaf_names(cert: &X509Certificate<'_>) -> Option<Vec<Name>> {
    let san = cert.subject_alternative_name().ok()??;
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => Some(Name::Dns((*dns).to_string())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| Name::Ip(b.into())),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| Name::Ip(b.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A duration in whole days, for Events.
fn days(d: Duration) -> String {
    match d.as_secs() / (24 * 60 * 60) {
        0 => "less than a day".to_string(),
        1 => "1 day".to_string(),
        n => format!("{n} days"),
    }
}
