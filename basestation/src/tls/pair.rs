//! A certificate chain and its private key, read from PEM files and checked before use: the
//! chain parses, the key parses and matches the leaf, and the leaf is valid now. Pure apart
//! from reading the two files, so every refusal is unit-tested.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a certificate chain (PEM, leaf first) and its key (PEM) are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairFiles {
    /// The chain: the leaf, then any intermediates.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate pair was refused. Each message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or one that does not parse.
    #[error(
        "{path} holds no usable PEM certificate ({reason}); it must start with the leaf certificate"
    )]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error(
        "{path} holds no usable PEM private key ({reason}); PKCS#8, PKCS#1 and SEC1 are accepted"
    )]
    Key {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// The key is not the leaf certificate's.
    #[error(
        "the key in {key} does not belong to the certificate in {cert}; replace both files together"
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf's validity period does not include now.
    #[error(
        "the certificate in {path} is not valid now (valid from {not_before} to {not_after}, unix seconds); renew it"
    )]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
    },
}

/// A checked pair, ready to serve.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The chain and signing key rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's chain as DER, for building configurations that take it whole.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key as DER.
    pub private: Arc<PrivateKeyDer<'static>>,
    /// End of the leaf's validity, unix seconds.
    pub not_after: i64,
    /// The leaf's serial number, hex, for logs.
    pub serial: String,
}

/// The raw bytes of both files, compared between polls to notice a change.
pub fn read_files(files: &PairFiles) -> Result<(Vec<u8>, Vec<u8>), PairError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| PairError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(&files.cert)?, read(&files.key)?))
}

/// Checks a pair read from `files` (`cert` and `key` are their contents) against `now`.
pub fn check(
    files: &PairFiles,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Pair, PairError> {
    let bad_cert = |reason: String| PairError::Certificate {
        path: files.cert.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|error| bad_cert(error.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad_cert("no CERTIFICATE block".into()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|error| bad_cert(error.to_string()))?;
    let validity = parsed.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let serial = parsed.tbs_certificate.raw_serial_as_string();
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|error| PairError::Key {
        path: files.key.clone(),
        reason: error.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|error| PairError::Key {
            path: files.key.clone(),
            reason: error.to_string(),
        })?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    if certified.keys_match().is_err() {
        return Err(PairError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    });
    if now < not_before || now > not_after {
        return Err(PairError::Validity {
            path: files.cert.clone(),
            not_before,
            not_after,
        });
    }
    Ok(Pair {
        key: Arc::new(certified),
        chain,
        private: Arc::new(private),
        not_after,
        serial,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::time::Duration;

    /// A self-signed leaf for `localhost` valid from `from` to `to` (offsets from now, in
    /// days), with `serial`: (certificate PEM, key PEM).
    pub(crate) fn leaf(serial: u64, from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.serial_number = Some(serial.into());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files() -> PairFiles {
        PairFiles {
            cert: "tls.crt".into(),
            key: "tls.key".into(),
        }
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn a_good_pair_is_accepted_with_its_serial_and_expiry() {
        let (cert, key) = leaf(0x1234, -1, 30);
        let pair = check(
            &files(),
            cert.as_bytes(),
            key.as_bytes(),
            &provider(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(pair.serial, "12:34");
        let in_30_days = SystemTime::now() + Duration::from_secs(30 * 86_400);
        let expected = in_30_days.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((pair.not_after - expected).abs() < 120);
    }

    fn refused(cert: &str, key: &str) -> PairError {
        check(
            &files(),
            cert.as_bytes(),
            key.as_bytes(),
            &provider(),
            SystemTime::now(),
        )
        .expect_err("the pair must be refused")
    }

    #[test]
    fn garbage_missing_and_truncated_certificates_are_refused() {
        let (cert, key) = leaf(1, -1, 30);
        for bad in [
            "",
            "not a pem file",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &cert[..cert.len() / 2],
        ] {
            let error = refused(bad, &key);
            assert!(matches!(error, PairError::Certificate { .. }), "{error}");
            assert!(error.to_string().contains("tls.crt"), "{error}");
        }
    }

    #[test]
    fn garbage_keys_and_keys_of_another_certificate_are_refused() {
        let (cert, _) = leaf(1, -1, 30);
        let (_, other_key) = leaf(2, -1, 30);
        for bad in [
            "",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let error = refused(&cert, bad);
            assert!(matches!(error, PairError::Key { .. }), "{error}");
        }
        let error = refused(&cert, &other_key);
        assert!(matches!(error, PairError::Mismatch { .. }), "{error}");
        assert!(error.to_string().contains("replace both files"), "{error}");
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused() {
        for (from, to) in [(-30, -1), (1, 30)] {
            let (cert, key) = leaf(3, from, to);
            let error = refused(&cert, &key);
            assert!(matches!(error, PairError::Validity { .. }), "{error}");
        }
    }
}
