//! TLS on the public port and mutual TLS on the internal port: rustls with the ring provider
//! only (no OpenSSL anywhere in the tree), certificates read from files and swapped in
//! without a restart.
//!
//! Reloading: each port's files are polled; when their bytes change, the new pair is checked
//! (parses, key matches, valid now; for the internal port also the CA bundle) and, if good, a
//! new rustls configuration replaces the old one for every *new* handshake. Connections already
//! established keep their session and never notice. A bad replacement is refused with an error
//! line and a metric, and the last good configuration keeps serving. Polling rather than
//! inotify, because Kubernetes updates a mounted Secret by swapping a symlink two levels up,
//! which a watch on the files themselves does not see.

mod challenge;
mod pair;

pub use challenge::{ACME_TLS_ALPN, Challenges};
pub use pair::{Pair, PairError, PairFiles, check, read_files};

use crate::telemetry::{Metrics, PortLabel, ReloadLabel};
use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The one crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate pair was refused.
    #[error(transparent)]
    Pair(#[from] PairError),
    /// The CA bundle could not be read or holds no usable certificate.
    #[error("CA bundle {path}: {reason}; it must hold the site CA's certificate(s) in PEM")]
    Ca {
        /// The bundle file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (an unsupported key type, for instance).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a port's files are: a server pair, and for the internal port the site CA bundle that
/// every pod's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The pair served (and, internally, presented as a client).
    pub pair: PairFiles,
    /// The site CA bundle; `Some` for mutual TLS.
    pub ca: Option<PathBuf>,
}

/// A port's current server configuration, swapped whole when its files change.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<ArcSwap<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// An acceptor with the configuration current now, for one new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// Dials a mutual-TLS port (another pod's internal port, or the primary site's replication
/// port) with this station's certificate, checking the peer's against the CA bundle and not
/// its name (see [`SiteCa`]). The configuration current at each (re)connect is used, so
/// renewed certificates reach new connections without a restart. For tonic's
/// `Endpoint::connect_with_connector`, with an `http://host:port` URI.
pub fn dial(
    tls: ClientTls,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let connector = tls.connector();
        async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            // Peers are trusted by their CA, not their name; the name only has to be well
            // formed.
            let name = ServerName::try_from(host.to_owned())
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
            let stream = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// The internal port's client side: this pod's certificate, presented to other pods, and the
/// site CA their certificates must chain to.
#[derive(Clone)]
pub struct ClientTls {
    current: Arc<ArcSwap<ClientConfig>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

impl ClientTls {
    /// A connector with the configuration current now, for one new connection.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current.load_full())
    }
}

/// Everything built from one port's files at one moment.
struct Built {
    server: ServerConfig,
    client: Option<ClientConfig>,
    pair: Pair,
}

/// ALPN for the public port: HTTP/2 for gRPC, HTTP/1.1 for WebSocket upgrades and probes.
const PUBLIC_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn build(
    files: &TlsFiles,
    cert: &[u8],
    key: &[u8],
    ca: Option<&[u8]>,
    challenges: Option<&Challenges>,
) -> Result<Built, TlsError> {
    let provider = provider();
    let pair = check(&files.pair, cert, key, &provider, SystemTime::now())?;
    let versions = rustls::DEFAULT_VERSIONS;
    let (Some(ca_path), Some(ca)) = (&files.ca, ca) else {
        // A resolver rather than a single certificate, so that ACME validation handshakes
        // can be answered with a challenge certificate on the same port.
        let resolver = challenge::PublicResolver {
            current: Arc::clone(&pair.key),
            challenges: challenges.cloned(),
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = PUBLIC_ALPN.iter().map(|p| p.to_vec()).collect();
        if challenges.is_some() {
            // Last: rustls picks the first of these the client offers, and validators offer
            // only this one, while browsers never offer it.
            server.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        return Ok(Built {
            server,
            client: None,
            pair,
        });
    };
    let roots = Arc::new(roots(ca_path, ca)?);
    let bad_ca = |reason: String| TlsError::Ca {
        path: ca_path.clone(),
        reason,
    };
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| bad_ca(error.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(clients)
        .with_single_cert(pair.chain.clone(), pair.private.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|error| bad_ca(error.to_string()))?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SiteCa { inner: servers }))
        .with_client_auth_cert(pair.chain.clone(), pair.private.clone_key())?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        server,
        client: Some(client),
        pair,
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|error| bad(error.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("no certificate in it parses".into()));
    }
    Ok(roots)
}

/// Accepts a pod's server certificate when it chains to the site CA, whatever name it is for:
/// pods reach each other by addresses that change with every reschedule, and what the internal
/// port trusts is membership of the site (its CA), not a name.
#[derive(Debug)]
struct SiteCa {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for SiteCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        // webpki checks the chain (CA, validity, usage) before the name, so a name error
        // means everything else passed.
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One port's TLS: its files, the configurations built from them, and what was last read.
pub struct Watched {
    files: TlsFiles,
    port: &'static str,
    server: ServerTls,
    client: Option<ClientTls>,
    metrics: Arc<Metrics>,
    /// TLS-ALPN-01 challenges served on this port (the public port with ACME on).
    challenges: Option<Challenges>,
    /// The bytes the current configuration was built from (or last refused), so an unchanged
    /// file is not checked again every poll.
    seen: Mutex<Vec<Vec<u8>>>,
}

impl Watched {
    /// Loads `files` for `port` (`public` or `internal`, a metric label). Fails if they are not
    /// good now: a station does not start with a certificate it would refuse on reload.
    pub fn load(
        files: TlsFiles,
        port: &'static str,
        metrics: Arc<Metrics>,
    ) -> Result<Watched, TlsError> {
        Self::load_with_challenges(files, port, metrics, None)
    }

    /// [`Watched::load`] for a port that also answers ACME TLS-ALPN-01 validation with the
    /// certificates in `challenges` (public port only; ignored with mutual TLS).
    pub fn load_with_challenges(
        files: TlsFiles,
        port: &'static str,
        metrics: Arc<Metrics>,
        challenges: Option<Challenges>,
    ) -> Result<Watched, TlsError> {
        let contents = read(&files)?;
        let built = build(
            &files,
            &contents[0],
            &contents[1],
            contents.get(2).map(Vec::as_slice),
            challenges.as_ref(),
        )?;
        tracing::info!(port, serial = %built.pair.serial, not_after = built.pair.not_after, "TLS certificate loaded");
        let watched = Watched {
            server: ServerTls {
                current: Arc::new(ArcSwap::from_pointee(built.server)),
            },
            client: built.client.map(|client| ClientTls {
                current: Arc::new(ArcSwap::from_pointee(client)),
            }),
            files,
            port,
            metrics,
            challenges,
            seen: Mutex::new(contents),
        };
        watched.record(&built.pair);
        Ok(watched)
    }

    /// The server side, for the port's accept loop.
    pub fn server(&self) -> ServerTls {
        self.server.clone()
    }

    /// The client side (mutual TLS only), for dialling other pods.
    pub fn client(&self) -> Option<ClientTls> {
        self.client.clone()
    }

    fn record(&self, pair: &Pair) {
        self.metrics
            .tls_expiry
            .get_or_create(&PortLabel { port: self.port })
            .set(pair.not_after);
    }

    fn counted(&self, result: &'static str) {
        self.metrics
            .tls_reloads
            .get_or_create(&ReloadLabel {
                port: self.port,
                result,
            })
            .inc();
    }

    /// Reads the files once and swaps in a changed, good pair. Returns whether it swapped.
    pub fn poll(&self) -> bool {
        let contents = match read(&self.files) {
            Ok(contents) => contents,
            Err(error) => {
                // A Secret update swaps files in two steps; a missing file is usually that.
                tracing::warn!(port = self.port, %error, "TLS files unreadable; keeping the current certificate");
                return false;
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == contents {
            return false;
        }
        let built = build(
            &self.files,
            &contents[0],
            &contents[1],
            contents.get(2).map(Vec::as_slice),
            self.challenges.as_ref(),
        );
        *seen = contents;
        drop(seen);
        match built {
            Ok(built) => {
                self.server.current.store(Arc::new(built.server));
                if let (Some(client), Some(config)) = (&self.client, built.client) {
                    client.current.store(Arc::new(config));
                }
                self.record(&built.pair);
                self.counted("loaded");
                tracing::info!(port = self.port, serial = %built.pair.serial, not_after = built.pair.not_after, "TLS certificate reloaded; new handshakes use it");
                true
            }
            Err(error) => {
                self.counted("refused");
                tracing::error!(port = self.port, %error, "new TLS files refused; still serving the previous certificate");
                false
            }
        }
    }

    /// Polls every `every` until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let watched = Arc::clone(&self);
            // File reads and certificate parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || watched.poll()).await;
        }
    }
}

/// The files' contents: certificate, key, and the CA bundle if any.
fn read(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let (cert, key) = read_files(&files.pair)?;
    let mut contents = vec![cert, key];
    if let Some(ca) = &files.ca {
        contents.push(std::fs::read(ca).map_err(|error| TlsError::Ca {
            path: ca.clone(),
            reason: error.to_string(),
        })?);
    }
    Ok(contents)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Real handshakes over loopback sockets, with certificates made by rcgen.

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A leaf for a pod, valid from `from` to `to` days from now: (cert PEM, key PEM).
    fn leaf(ca: &Ca, serial: u64, from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["pod.zbase.internal".to_owned()]).unwrap();
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn files(&self, mutual: bool) -> TlsFiles {
            TlsFiles {
                pair: PairFiles {
                    cert: self.dir.path().join("tls.crt"),
                    key: self.dir.path().join("tls.key"),
                },
                ca: mutual.then(|| self.dir.path().join("ca.crt")),
            }
        }

        fn write(&self, (cert, key): &(String, String), ca: Option<&Ca>) {
            std::fs::write(self.dir.path().join("tls.crt"), cert).unwrap();
            std::fs::write(self.dir.path().join("tls.key"), key).unwrap();
            if let Some(ca) = ca {
                std::fs::write(self.dir.path().join("ca.crt"), &ca.pem).unwrap();
            }
        }
    }

    fn dir() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Serves one TLS handshake at a time on loopback, echoing a byte after each.
    async fn serve(tls: ServerTls) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(tcp).await {
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).await.is_ok() {
                            let _ = stream.write_all(&byte).await;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Handshakes with `config` and exchanges a byte: the server's leaf serial on success.
    async fn exchange(addr: std::net::SocketAddr, config: ClientConfig) -> Result<String, String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|error| error.to_string())?;
        // TLS 1.3 servers reject a client certificate after the client's handshake is done,
        // so only a read shows whether the server kept the connection.
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|error| error.to_string())?;
        let (_, session) = stream.get_ref();
        let leaf = session.peer_certificates().unwrap()[0].clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        Ok(parsed.tbs_certificate.raw_serial_as_string())
    }

    /// A client that trusts `ca` for any name and presents `pair`, if any.
    fn client(ca: &Ca, pair: Option<&(String, String)>) -> ClientConfig {
        let roots = Arc::new(roots(Path::new("ca.crt"), ca.pem.as_bytes()).unwrap());
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SiteCa { inner: verifier }));
        match pair {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .unwrap(),
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        }
    }

    #[tokio::test]
    async fn a_replaced_pair_serves_new_handshakes_and_a_bad_one_is_refused() {
        let site = ca("site");
        let files = dir();
        files.write(&leaf(&site, 1, -1, 30), None);
        let metrics = Arc::new(Metrics::new());
        let watched =
            Arc::new(Watched::load(files.files(false), "public", metrics.clone()).unwrap());
        let addr = serve(watched.server()).await;
        assert_eq!(exchange(addr, client(&site, None)).await.unwrap(), "01");
        assert!(!watched.poll(), "nothing changed");

        files.write(&leaf(&site, 2, -1, 30), None);
        assert!(watched.poll());
        assert_eq!(exchange(addr, client(&site, None)).await.unwrap(), "02");

        // Expired, mismatched and garbage replacements are refused; 02 keeps serving.
        let (expired_cert, expired_key) = leaf(&site, 3, -30, -1);
        let (other_cert, _) = leaf(&site, 4, -1, 30);
        let (_, current_key) = leaf(&site, 5, -1, 30);
        for bad in [
            (expired_cert, expired_key),
            (other_cert, current_key),
            ("garbage".to_owned(), "garbage".to_owned()),
        ] {
            files.write(&bad, None);
            assert!(!watched.poll());
            assert_eq!(exchange(addr, client(&site, None)).await.unwrap(), "02");
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"zbase_tls_reloads_total{port="public",result="refused"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"zbase_tls_reloads_total{port="public",result="loaded"} 1"#),
            "{text}"
        );
        assert!(text.contains("zbase_tls_certificate_expiry_timestamp_seconds{port=\"public\"}"));
    }

    #[tokio::test]
    async fn the_internal_port_admits_only_pods_of_the_site_ca() {
        let site = ca("site");
        let files = dir();
        files.write(&leaf(&site, 10, -1, 30), Some(&site));
        let metrics = Arc::new(Metrics::new());
        let watched = Watched::load(files.files(true), "internal", metrics).unwrap();
        let addr = serve(watched.server()).await;

        let pod = leaf(&site, 11, -1, 30);
        assert_eq!(
            exchange(addr, client(&site, Some(&pod))).await.unwrap(),
            "0a"
        );
        // The pod's own client side, as the relay dials with it, is admitted too.
        let own = (*watched.client().unwrap().current.load_full()).clone();
        assert_eq!(exchange(addr, own).await.unwrap(), "0a");

        let stranger = ca("another site");
        let refused = [
            ("no certificate", client(&site, None)),
            (
                "a certificate of another CA",
                client(&site, Some(&leaf(&stranger, 12, -1, 30))),
            ),
            (
                "an expired certificate",
                client(&site, Some(&leaf(&site, 13, -30, -1))),
            ),
        ];
        for (what, config) in refused {
            let outcome = exchange(addr, config).await;
            assert!(outcome.is_err(), "a client with {what} was admitted");
        }
        // And a pod does not accept a server of another CA.
        let foreign = dir();
        foreign.write(&leaf(&stranger, 14, -1, 30), Some(&stranger));
        let foreign =
            Watched::load(foreign.files(true), "internal", Arc::new(Metrics::new())).unwrap();
        let foreign_addr = serve(foreign.server()).await;
        let own = (*watched.client().unwrap().current.load_full()).clone();
        assert!(exchange(foreign_addr, own).await.is_err());
    }
}
