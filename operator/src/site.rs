//! The operator's client of a site's replication port (`zbase.v1.Replication`): the site's
//! status, and the one-shot role changes (promote, demote) the spec asks for.
//!
//! The operator dials the station pod itself, not the replication Service: the Service may
//! be a load balancer the operator's network cannot reach, and a role change must reach the
//! one pod that holds the role. It presents the site certificate it issued (it holds the key,
//! having written it) and checks the station's against the site CA, under the pod's name on
//! that certificate, so nothing here relaxes TLS. Every call carries epoch 0: the operator is
//! not a site, and epoch 0 never fences anyone.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use zbase_basestation::replication::with_epoch;
use zbase_proto::pb;
use zbase_proto::pb::replication_client::ReplicationClient;

/// The metadata key carrying the caller's epoch, as the station reads it.
/// How long a call may take: a promotion with a token waits up to 30 s for the cache to catch
/// up, so a little more than that.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// Why a call to a site failed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The site certificate or CA bundle could not be used as a TLS client identity.
    #[error("the site certificate cannot be used to dial the station: {0}")]
    Credentials(String),
    /// The station could not be reached.
    #[error("cannot reach the station's replication port at {address}: {reason}")]
    Unreachable {
        /// Where it was dialled.
        address: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The station refused the call as impossible in its role ("already the primary").
    #[error("{0}")]
    Refused(String),
    /// Any other answer of the station.
    #[error("the station answered {code:?}: {message}")]
    Failed {
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
}

impl From<tonic::Status> for SiteError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition => SiteError::Refused(status.message().to_owned()),
            code => SiteError::Failed {
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

/// What a site says of itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reported {
    /// primary, replica or fenced.
    pub role: String,
    /// The epoch of its latest history (0 before any).
    pub epoch: u64,
    /// Its highest sequence.
    pub last_seq: u64,
    /// On a replica: the primary whose feed is live, if any.
    pub following: Option<String>,
    /// On a replica: changes behind.
    pub lag_changes: u64,
    /// On a replica: seconds behind.
    pub lag_seconds: f64,
}

/// A promotion the station made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The new epoch.
    pub epoch: u64,
    /// Whether without a token.
    pub failover: bool,
}

/// The TLS identity the operator dials a site's pod with.
pub struct Credentials {
    /// The site certificate chain, PEM.
    pub cert: Vec<u8>,
    /// Its key, PEM.
    pub key: Vec<u8>,
    /// The site CA bundle, PEM, which the pod's certificate chains to.
    pub ca: Vec<u8>,
}

/// A connection to one station pod's replication port.
pub struct Site {
    client: ReplicationClient<Channel>,
}

impl Site {
    /// Dials `address` (the pod's IP and replication port), checking its certificate for
    /// `name` (a name the site certificate carries) against the site CA.
    pub async fn connect(
        address: SocketAddr,
        name: &str,
        credentials: &Credentials,
    ) -> Result<Site, SiteError> {
        let config = client_config(credentials)?;
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| SiteError::Credentials(format!("'{name}': {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let dial = tower::service_fn(move |_: http::Uri| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let unreachable = |reason: String| SiteError::Unreachable { address, reason };
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(dial)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok(Site {
            client: ReplicationClient::new(channel),
        })
    }

    /// The site's role and position.
    pub async fn status(&mut self) -> Result<Reported, SiteError> {
        let status = self
            .client
            .status(with_epoch(pb::StatusRequest {}, 0))
            .await
            .map_err(SiteError::from)?
            .into_inner();
        Ok(Reported {
            role: status.role,
            epoch: status.epochs.last().map_or(0, |e| e.epoch),
            last_seq: status.last_seq,
            following: (!status.following.is_empty()).then_some(status.following),
            lag_changes: status.lag_changes,
            lag_seconds: status.lag_seconds,
        })
    }

    /// Promotes the replica: with `token` once it holds the demoted primary's last change,
    /// without one at once (a failover).
    pub async fn promote(&mut self, token: Option<(u64, u64)>) -> Result<Promoted, SiteError> {
        let token = token.map(|(epoch, seq)| pb::HandoverToken { epoch, seq });
        let reply = self
            .client
            .promote(with_epoch(pb::PromoteRequest { token }, 0))
            .await
            .map_err(SiteError::from)?
            .into_inner();
        Ok(Promoted {
            epoch: reply.epoch,
            failover: reply.failover,
        })
    }

    /// Demotes the primary; its handover token `(epoch, seq)`.
    pub async fn demote(&mut self) -> Result<(u64, u64), SiteError> {
        let token = self
            .client
            .demote(with_epoch(pb::DemoteRequest {}, 0))
            .await
            .map_err(SiteError::from)?
            .into_inner();
        Ok((token.epoch, token.seq))
    }
}

/// `message` as the operator's request: epoch 0, which never fences anyone.
fn client_config(credentials: &Credentials) -> Result<rustls::ClientConfig, SiteError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| SiteError::Credentials(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&credentials.ca) {
        let cert = cert.map_err(|e| bad("the site CA bundle", &e))?;
        roots
            .add(cert)
            .map_err(|e| bad("a certificate of the site CA bundle", &e))?;
    }
    let chain = CertificateDer::pem_slice_iter(&credentials.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the site certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&credentials.key)
        .map_err(|e| bad("the site certificate's key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("the site certificate", &e))?;
    // The replication port speaks gRPC only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// An error with its causes, for a message that says why a dial failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
