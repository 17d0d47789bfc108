//! TLS for figures 9 and 10: a throwaway CA and a leaf for 127.0.0.1 and `localhost`, written
//! where the station reads them; client configurations that trust that CA; figure 10's
//! handshake loop; and figure 10's baseline, a bare tokio-rustls server.
//!
//! The bare server is this bench binary re-executed (as `bare.rs` is) with the station's
//! certificate, the station's rustls settings (ring, default versions, no client auth) and the
//! station's ALPN (`h2`, `http/1.1`). It completes each handshake, reads until the client
//! closes, and closes: nothing else, so the ratio is what the station's accept path costs
//! beyond rustls itself.
//!
//! Figure 10's unit is a full handshake on a fresh TCP connection: connect, TLS handshake
//! (no resumption: every client configuration here disables it, so each handshake pays the
//! key exchange and the certificate signature), `close_notify` and FIN, then wait for the
//! server's end of the connection. The station gets exactly that too and no HTTP request: the
//! handshake is what both servers share, and a WebSocket upgrade on top would measure work the
//! baseline does not do (figure 5 measures that part in plaintext).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::either::Either;

use crate::client;
use crate::procs::Server;

/// Set in the environment of the re-executed bench binary to make it the bare TLS server.
pub const ROLE_ENV: &str = "ZBASE_BENCH_ROLE_BARE_TLS";
/// The bare TLS server's certificate chain (PEM, leaf first).
pub const CERT_ENV: &str = "ZBASE_BENCH_TLS_CERT";
/// The bare TLS server's private key (PEM).
pub const KEY_ENV: &str = "ZBASE_BENCH_TLS_KEY";
/// The bare TLS server's one stdout line, followed by the address.
pub const LISTENING_PREFIX: &str = "bare TLS listening on ";
/// ALPN of the bare server: the station's public port's.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// The station's handshake timeout, so a stuck client costs the bare server no more than it
/// costs the station.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one client handshake, connect to the server's close, so a stuck server ends the
/// figure with an error rather than hanging the bench.
const ONE_LIMIT: Duration = Duration::from_secs(10);

/// Clients handshaking at once in figure 10: as many as figure 5's.
pub const WORKERS: usize = 16;
const WARMUP: Duration = Duration::from_millis(500);
/// Per round; rounds alternate between the station and the baseline.
const MEASURE: Duration = Duration::from_secs(2);

/// The ring provider, built here and never installed as the process default: a default would
/// hide a configuration that forgot to name its provider.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway CA's leaf for 127.0.0.1, as files, and that CA to trust.
pub struct Certs {
    /// The leaf's chain (just the leaf), PEM: what `--tls-cert` reads.
    pub cert: PathBuf,
    /// The leaf's key, PEM: what `--tls-key` reads.
    pub key: PathBuf,
    ca: CertificateDer<'static>,
}

impl Certs {
    /// Makes a CA and a leaf it signs for `127.0.0.1` and `localhost` (rcgen's default key,
    /// ECDSA P-256, the common choice of ACME clients), and writes the leaf's files in `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Certs> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "zbase bench CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, leaf.pem())?;
        std::fs::write(&key, leaf_key.serialize_pem())?;
        Ok(Certs {
            cert,
            key,
            ca: ca.der().clone(),
        })
    }

    /// The station flags that serve this pair on its public port.
    pub fn station_flags(&self) -> Vec<(&'static str, String)> {
        vec![
            ("tls-cert", self.cert.display().to_string()),
            ("tls-key", self.key.display().to_string()),
        ]
    }

    /// A fresh client configuration trusting only the CA, offering ALPN `http/1.1` (what a
    /// WebSocket client offers), with session resumption disabled: every handshake is full.
    pub fn client(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// Runs the bare TLS server until killed, on a multi-thread runtime like the station's.
pub fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let cert = std::env::var_os(CERT_ENV).context("no certificate file in the environment")?;
    let key = std::env::var_os(KEY_ENV).context("no key file in the environment")?;
    let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{LISTENING_PREFIX}{}", listener.local_addr()?);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors: back off as the station does, rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        // The handshake runs in the connection's own task, as on the station.
        tokio::spawn(async move {
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            // Wait for the client's close before closing, as the station (hyper waiting for a
            // request) does: closing with the client's close_notify unread would answer it
            // with a reset instead of a FIN.
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, drain(&mut tls)).await;
            let _ = tls.shutdown().await;
        });
    }
}

/// Reads until the peer's end of the stream (or an error, which ends it as well).
async fn drain(stream: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 1024];
    while let Ok(1..) = stream.read(&mut buf).await {}
}

/// What figure 10 measured in one window against one server.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    /// Completed per second.
    pub per_s: f64,
    /// Mean time of one, connect to the server's close, milliseconds.
    pub mean_ms: f64,
    /// Server CPU seconds per second of wall time over the window (2.0 = both cores).
    pub server_cpu: f64,
}

/// One full handshake on a fresh connection, closed politely, the server's close awaited.
async fn one(addr: SocketAddr, config: &Arc<ClientConfig>) -> anyhow::Result<()> {
    let mut stream = client::connect(addr, Some(config)).await?;
    // close_notify, then FIN.
    stream.shutdown().await?;
    drain(&mut stream).await;
    Ok(())
}

/// What one handshake with `server` negotiates (version, cipher suite, key exchange, ALPN), for
/// the figure's notes: both servers must negotiate the same for the ratio to mean anything.
pub async fn negotiated(server: &Server, config: &Arc<ClientConfig>) -> anyhow::Result<String> {
    let mut stream = client::connect(server.addr, Some(config)).await?;
    let Either::Right(tls) = &stream else {
        anyhow::bail!("connected without TLS");
    };
    let (_, connection) = tls.get_ref();
    let named = |what: Option<String>| what.unwrap_or_else(|| "none".to_owned());
    let described = format!(
        "{} {} {} ALPN {}",
        named(connection.protocol_version().map(|v| format!("{v:?}"))),
        named(
            connection
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
        ),
        named(
            connection
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
        ),
        named(
            connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        ),
    );
    stream.shutdown().await?;
    drain(&mut stream).await;
    Ok(described)
}

/// Runs [`WORKERS`] handshake loops against `server` with one fresh client configuration, for
/// a warm-up and a measured window.
pub async fn run(server: &Server, certs: &Certs) -> anyhow::Result<Handshakes> {
    let config = certs.client()?;
    let addr = server.addr;
    let done = Arc::new(AtomicU64::new(0));
    let busy_ns = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (config, done, busy_ns, stop) =
                (config.clone(), done.clone(), busy_ns.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    tokio::time::timeout(ONE_LIMIT, one(addr, &config))
                        .await
                        .with_context(|| format!("a handshake took over {ONE_LIMIT:?}"))??;
                    done.fetch_add(1, Ordering::Relaxed);
                    busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let (t0, n0, b0, cpu0) = (
        Instant::now(),
        done.load(Ordering::Relaxed),
        busy_ns.load(Ordering::Relaxed),
        server.cpu_seconds()?,
    );
    tokio::time::sleep(MEASURE).await;
    let seconds = t0.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed) - n0;
    let busy = busy_ns.load(Ordering::Relaxed) - b0;
    let cpu = server.cpu_seconds()? - cpu0;
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    Ok(Handshakes {
        per_s: count as f64 / seconds,
        mean_ms: busy as f64 / 1e6 / count.max(1) as f64,
        server_cpu: cpu / seconds,
    })
}
