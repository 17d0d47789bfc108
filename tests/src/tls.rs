//! A throwaway PKI for TLS tests, and the rustls configurations that use it.
//!
//! [`TestCa`] issues leaves with chosen names, serials and validity, so a test can tell which
//! certificate a station served ([`serial_of`]) and make it serve a wrong one on purpose.
//! [`write_pair`] lays the files out the way Kubernetes updates a mounted Secret (a `..data`
//! symlink swapped by rename), because that is how a deployed station sees a rotation; a
//! reloader that watches the wrong inode or reads half-written files fails against it.
//! Every configuration names the ring provider explicitly: the workspace builds rustls without
//! aws-lc, and a process-wide default provider would make tests depend on which ran first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name a visible file is reached through; Kubernetes swaps this symlink on every update.
const DATA_LINK: &str = "..data";
/// The certificate file name in a `kubernetes.io/tls` Secret.
pub const CERT_FILE: &str = "tls.crt";
/// The private key file name in a `kubernetes.io/tls` Secret.
pub const KEY_FILE: &str = "tls.key";

/// A self-signed certificate authority that signs test leaves.
pub struct TestCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate issued by a [`TestCa`], with its private key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The leaf certificate alone, PEM.
    pub cert_pem: String,
    /// The leaf certificate alone, DER (what [`serial_of`] and peer-certificate checks take).
    pub cert_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The serial number the leaf was issued with.
    pub serial: u64,
    /// The issuing CA's certificate, PEM, for [`Leaf::chain_pem`].
    pub ca_pem: String,
}

impl Leaf {
    /// The leaf then its CA, as a station's `--tls-cert` file holds a chain (leaf first).
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }
}

/// Names a leaf is valid for when none are given: what tests dial (`localhost`, 127.0.0.1).
pub const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Validity that starts an hour back, so a station or client clock slightly behind still
/// accepts the leaf, and lasts a day, longer than any test run.
fn valid_now() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (
        now - Duration::from_secs(3600),
        now + Duration::from_secs(86_400),
    )
}

impl TestCa {
    /// A fresh CA (ECDSA P-256) whose subject common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = valid_now();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { key, cert }
    }

    /// The CA certificate, PEM: what a client or an mTLS peer is told to trust.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// A leaf for `sans` (each a DNS name or an IP address), usable for both server and
    /// client authentication, as a pod's certificate on the internal port is.
    pub fn leaf(
        &self,
        sans: &[&str],
        serial: u64,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Leaf {
        self.issue(
            sans,
            serial,
            not_before,
            not_after,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A pod's leaf (server and client authentication) for `sans`, valid now.
    pub fn pod_leaf(&self, sans: &[&str], serial: u64) -> Leaf {
        let (not_before, not_after) = valid_now();
        self.leaf(sans, serial, not_before, not_after)
    }

    /// A pod's leaf for `sans` whose validity ended an hour ago.
    pub fn expired_pod_leaf(&self, sans: &[&str], serial: u64) -> Leaf {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        self.leaf(sans, serial, now - 2 * day, now - Duration::from_secs(3600))
    }

    /// A server leaf valid now for `localhost` and 127.0.0.1.
    pub fn server_leaf(&self, serial: u64) -> Leaf {
        self.server_leaf_for(&LOCAL_NAMES, serial)
    }

    /// A server leaf valid now for `sans` (e.g. 127.0.0.2 for a second pod).
    pub fn server_leaf_for(&self, sans: &[&str], serial: u64) -> Leaf {
        let (not_before, not_after) = valid_now();
        self.issue(
            sans,
            serial,
            not_before,
            not_after,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A server leaf for `sans` whose validity ended an hour ago (it began two days ago).
    pub fn expired_leaf(&self, sans: &[&str], serial: u64) -> Leaf {
        let now = SystemTime::now();
        self.issue(
            sans,
            serial,
            now - Duration::from_secs(2 * 86_400),
            now - Duration::from_secs(3600),
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A client-authentication-only leaf valid now, named `name` (common name and DNS SAN).
    pub fn client_leaf(&self, name: &str, serial: u64) -> Leaf {
        let (not_before, not_after) = valid_now();
        self.issue(
            &[name],
            serial,
            not_before,
            not_after,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    fn issue(
        &self,
        sans: &[&str],
        serial: u64,
        not_before: SystemTime,
        not_after: SystemTime,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf SANs");
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = sans.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.serial_number = Some(serial.into());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let leaf = Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            serial,
            ca_pem: self.pem(),
        };
        // rcgen encodes the serial itself; check it kept the value tests will compare against.
        assert_eq!(serial_of(&leaf.cert_der), serial, "issued serial");
        leaf
    }
}

/// The serial number of a DER certificate, as the `u64` a [`Leaf`] was issued with.
///
/// Panics if `der` is not a certificate or its serial does not fit 64 bits (no leaf of
/// [`TestCa`] has such a serial, so that would be a certificate from elsewhere).
pub fn serial_of(der: &[u8]) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse DER certificate");
    let raw = cert.raw_serial();
    // DER keeps a leading zero byte when the top bit is set, so strip zeros before sizing.
    let significant: Vec<u8> = raw.iter().copied().skip_while(|b| *b == 0).collect();
    assert!(
        significant.len() <= 8,
        "serial {} does not fit 64 bits",
        cert.raw_serial_as_string()
    );
    significant
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Distinguishes the data directories of updates made within one clock tick.
static UPDATE: AtomicU64 = AtomicU64::new(0);

/// Writes `leaf` (its [`Leaf::chain_pem`] and key) into `dir` as Kubernetes updates a mounted
/// Secret; returns the visible `(tls.crt, tls.key)` paths, the same on every call.
pub fn write_pair(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    write_secret(dir, leaf.chain_pem().as_bytes(), leaf.key_pem.as_bytes())
        .expect("write TLS Secret files")
}

/// Like [`write_pair`] with arbitrary contents, for a Secret updated to something invalid
/// (garbage, a key that does not match the certificate) in one atomic step.
///
/// Layout, as the kubelet's atomic writer leaves it: the files live in a fresh
/// `..<timestamp>` directory; `..data` is a symlink to it, replaced by renaming a new
/// symlink over it (so a reader sees the old pair or the new pair, never one of each);
/// `tls.crt` and `tls.key` are symlinks to `..data/tls.crt` and `..data/tls.key`, created once.
/// The previous data directory is then removed, as the kubelet does, so a reader still holding
/// a path into it fails instead of quietly reading stale files.
pub fn write_secret(dir: &Path, cert: &[u8], key: &[u8]) -> io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let update = UPDATE.fetch_add(1, Ordering::Relaxed);
    let data_name = format!("..{nanos}_{update}");
    let data_dir = dir.join(&data_name);
    std::fs::create_dir(&data_dir)?;
    std::fs::write(data_dir.join(CERT_FILE), cert)?;
    std::fs::write(data_dir.join(KEY_FILE), key)?;

    let link = dir.join(DATA_LINK);
    let previous = std::fs::read_link(&link).ok();
    let tmp_link = dir.join(format!("..data_tmp_{update}"));
    // Relative targets, as the kubelet writes them, so the mount can move.
    std::os::unix::fs::symlink(&data_name, &tmp_link)?;
    std::fs::rename(&tmp_link, &link)?;

    for name in [CERT_FILE, KEY_FILE] {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &visible)?;
        }
    }
    if let Some(old) = previous.filter(|old| old.as_os_str() != data_name.as_str()) {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok((dir.join(CERT_FILE), dir.join(KEY_FILE)))
}

/// Replaces the contents of `path` in place, non-atomically (truncate then write, following
/// symlinks): the "someone edited the file by hand" and "half-written file" cases.
pub fn overwrite(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("overwrite {}: {e}", path.display()));
}

/// The ring provider, named explicitly everywhere (see the module documentation).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parse PEM certificates")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM text");
    Ok(certs)
}

/// The first private key in a PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).context("parse PEM private key")
}

/// The certificates of a PEM text as trust anchors.
pub fn roots_from_pem(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert).context("add trust anchor")?;
    }
    Ok(roots)
}

/// A client configuration that trusts only `ca_pem`, offers `alpn` (e.g. `[b"h2"]`), and
/// presents `client_cert` (certificate chain PEM, key PEM) when given, for mTLS.
pub fn tls_client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    client_cert: Option<(&str, &str)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots_from_pem(ca_pem)?);
    let mut config = match client_cert {
        Some((cert_pem, key_pem)) => {
            builder.with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server configuration serving `cert_pem` (chain, leaf first) with `key_pem`, offering
/// `alpn`, and requiring a client certificate from `client_ca_pem` when given: a stand-in
/// station or pod for tests of the client side.
pub fn tls_server_config(
    cert_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
    client_ca_pem: Option<&str>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots_from_pem(ca)?),
                provider(),
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
