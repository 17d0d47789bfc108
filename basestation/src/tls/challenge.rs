//! The public port's certificate choice per handshake: the current certificate, or, for an
//! ACME server's TLS-ALPN-01 validation (RFC 8737), the challenge certificate of the name it
//! asks for. The validator offers the ALPN protocol `acme-tls/1` and nothing else, so the
//! two kinds of handshake never mix.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending TLS-ALPN-01 challenges by domain, shared between the ACME client (which installs
/// and removes them) and every public configuration built on reload (which serves them).
#[derive(Clone, Default)]
pub struct Challenges {
    pending: Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges(..)")
    }
}

impl Challenges {
    /// Serves `key` to validation handshakes for `domain` until [`Challenges::remove`].
    pub fn insert(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.lock().insert(domain.to_ascii_lowercase(), key);
    }

    /// Stops serving the challenge of `domain`.
    pub fn remove(&self, domain: &str) {
        self.lock().remove(&domain.to_ascii_lowercase());
    }

    /// The challenge certificate pending for `domain`, if any.
    pub fn get(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.lock().get(&domain.to_ascii_lowercase()).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Picks the certificate for one public handshake. Built afresh with each reload, so the
/// current certificate is fixed per configuration; the challenges are shared and live.
#[derive(Debug)]
pub(super) struct PublicResolver {
    pub(super) current: Arc<CertifiedKey>,
    pub(super) challenges: Option<Challenges>,
}

impl ResolvesServerCert for PublicResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|protocol| protocol == ACME_TLS_ALPN));
        if validation
            && let (Some(challenges), Some(name)) = (&self.challenges, hello.server_name())
            && let Some(key) = challenges.get(name)
        {
            return Some(key);
        }
        Some(Arc::clone(&self.current))
    }
}
