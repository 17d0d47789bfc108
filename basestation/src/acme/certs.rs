//! Certificates the ACME flow makes or inspects: the placeholder served before the first
//! issuance, the TLS-ALPN-01 challenge certificate, the CSR, and the renewal decision. Pure:
//! no I/O, so each is unit-tested.

use super::AcmeError;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A self-signed certificate for `domain`: (chain PEM, key PEM). Served until the first real
/// certificate arrives, so the public port can come up (and answer the challenge) at all.
pub fn placeholder(domain: &str) -> Result<(String, String), AcmeError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "zbase ACME placeholder");
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The TLS-ALPN-01 certificate for `domain`: self-signed, carrying the SHA-256 digest of the
/// key authorization in the acmeIdentifier extension (RFC 8737).
pub fn challenge(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(private)
        .map_err(|error| AcmeError::Order(format!("challenge key refused: {error}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// A certificate signing request for `domain` with a fresh key: (CSR DER, key PEM).
pub fn request(domain: &str) -> Result<(Vec<u8>, String), AcmeError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec![domain.to_owned()])?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// What the served certificate is, for the renewal decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The leaf's serial, hex.
    pub serial: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Self-signed: the placeholder, never an ACME certificate.
    pub placeholder: bool,
}

/// Reads the leaf of a PEM chain; `None` if there is none that parses.
pub fn inspect(chain_pem: &[u8]) -> Option<Current> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem).ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    Some(Current {
        serial: leaf.tbs_certificate.raw_serial_as_string(),
        not_after: leaf.validity().not_after.timestamp(),
        placeholder: leaf.issuer() == leaf.subject(),
    })
}

/// Whether a new certificate is needed now: none, the placeholder, or one expiring within
/// `renew_before`.
pub fn due(current: Option<&Current>, now: SystemTime, renew_before: Duration) -> bool {
    let Some(current) = current else {
        return true;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    });
    let margin = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    current.placeholder || current.not_after.saturating_sub(margin) <= now
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_is_due_and_a_fresh_certificate_is_not() {
        let (chain, _) = placeholder("relay.example.org").unwrap();
        let current = inspect(chain.as_bytes()).unwrap();
        assert!(current.placeholder);
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        assert!(due(Some(&current), now, day));
        assert!(due(None, now, day));
        let now_secs = i64::try_from(now.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
        let issued = Current {
            serial: "01".into(),
            not_after: now_secs + 90 * 86_400,
            placeholder: false,
        };
        assert!(!due(Some(&issued), now, 30 * day));
        assert!(due(Some(&issued), now, 91 * day));
        assert!(inspect(b"garbage").is_none());
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest() {
        let digest = [7u8; 32];
        let key = challenge("relay.example.org", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let acme_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let extension = cert
            .extensions()
            .iter()
            .find(|extension| extension.oid == acme_oid)
            .unwrap();
        assert!(extension.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&extension.value[2..], &digest);
    }
}
