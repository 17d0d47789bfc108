//! The HTTPS client the ACME account talks through: the system's roots by default, or only
//! the roots of `--acme-ca` for a private ACME server (pebble, a site CA). Built here rather
//! than with instant-acme's own root option, which takes only the first certificate of a file
//! and uses the process-wide crypto provider; this one takes a bundle and uses ring.

use super::AcmeError;
use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, HttpClient};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;

/// An HTTPS client trusting only the PEM certificates in `ca`.
pub fn with_roots(ca: &Path) -> Result<Box<dyn HttpClient>, AcmeError> {
    let bad = |reason: String| AcmeError::Ca {
        path: ca.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(ca).map_err(|error| bad(error.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|error| bad(error.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("no certificate in it parses".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| bad(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}
