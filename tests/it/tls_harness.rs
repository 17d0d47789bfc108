//! The TLS test harness checked against an in-test rustls server, before any station serves
//! TLS: if these pass, a station TLS test that fails points at the station, not the harness.
//! Also the guard that keeps OpenSSL out of the build.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::CertificateError;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use zbase_tests::client::{CloseKind, Conn, ConnectError, Event, Tls, Transport, random_id};
use zbase_tests::tls::{TestCa, serial_of, tls_client_config, tls_server_config, write_pair};

/// What the stand-in station says when it ends a connection, to show the client reached it.
const GOODBYE: &str = "tls harness";
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A stand-in for the station's public port: TLS only, ALPN `h2` and `http/1.1`, reading the
/// pair from the given (symlinked) paths on every handshake, as a reloading station serves
/// the latest files. `h2` answers every request with gRPC `UNAVAILABLE`; `http/1.1` accepts
/// a WebSocket and closes it with 1000. Both carry [`GOODBYE`].
async fn serve(cert: PathBuf, key: PathBuf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = tls_server_config(
                &std::fs::read_to_string(&cert).unwrap(),
                &std::fs::read_to_string(&key).unwrap(),
                &ALPN,
                None,
            )
            .unwrap();
            tokio::spawn(async move {
                // A failed handshake is what some tests are after; the client reports it.
                let Ok(tls) = TlsAcceptor::from(config).accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "14")
                                .header("grpc-message", GOODBYE)
                                .body(String::new())
                                .unwrap(),
                        )
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                } else {
                    // Bare handshakes end without an upgrade; nothing to serve then.
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    let close = CloseFrame {
                        code: CloseCode::Normal,
                        reason: GOODBYE.into(),
                    };
                    ws.send(Message::Close(Some(close))).await.unwrap();
                    while ws.next().await.is_some() {}
                }
            });
        }
    });
    addr
}

/// A bare TLS handshake with `config`; returns the stream (to read ALPN and the peer) or the
/// handshake error.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The rustls error inside a failed handshake.
fn rustls_error(error: &std::io::Error) -> &rustls::Error {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {error:?}"))
}

/// The leaf the server presented on a bare handshake.
fn served_serial(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> u64 {
    let chain = stream.get_ref().1.peer_certificates().expect("peer chain");
    serial_of(&chain[0])
}

#[tokio::test]
async fn handshake_serves_the_leaf_negotiates_alpn_and_follows_a_secret_swap() {
    let ca = TestCa::new("zbase harness CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.server_leaf(1001);
    let (cert, key) = write_pair(dir.path(), &first);
    let addr = serve(cert.clone(), key.clone()).await;

    for alpn in ALPN {
        let config = tls_client_config(&ca.pem(), &[alpn], None).unwrap();
        let stream = handshake(addr, config, "localhost").await.unwrap();
        let (_, session) = stream.get_ref();
        assert_eq!(session.alpn_protocol(), Some(alpn), "ALPN negotiated");
        assert_eq!(served_serial(&stream), first.serial, "serial served");
        assert_eq!(
            session.peer_certificates().unwrap().len(),
            2,
            "write_pair serves the chain, leaf then CA"
        );
    }

    // The test clients over TLS: a DNS name for WebSocket, an IP SAN for gRPC.
    let id = random_id();
    let mut ws = Conn::open_tls(
        Transport::Ws,
        addr,
        id.as_str(),
        &Tls::new(ca.pem(), "localhost"),
    )
    .await
    .unwrap();
    assert_eq!(serial_of(&ws.peer_certificate().unwrap()), first.serial);
    ws.expect_close(CloseKind::Normal).await;
    assert_eq!(ws.close_detail(), GOODBYE);
    let mut grpc = Conn::open_tls(
        Transport::Grpc,
        addr,
        id.as_str(),
        &Tls::new(ca.pem(), "127.0.0.1"),
    )
    .await
    .unwrap();
    assert_eq!(serial_of(&grpc.peer_certificate().unwrap()), first.serial);
    assert_eq!(grpc.recv().await, Event::Closed(CloseKind::GoingAway));
    // A status answered before any frame keeps its code in the detail, hence `contains`.
    assert!(
        grpc.close_detail().contains(GOODBYE),
        "{}",
        grpc.close_detail()
    );

    // A rotation: same visible paths, new target behind `..data`, old data directory gone.
    let old_data = std::fs::read_link(dir.path().join("..data")).unwrap();
    let second = ca.server_leaf(1002);
    assert_eq!(write_pair(dir.path(), &second), (cert.clone(), key.clone()));
    assert!(cert.symlink_metadata().unwrap().is_symlink());
    assert_ne!(
        std::fs::read_link(dir.path().join("..data")).unwrap(),
        old_data
    );
    assert!(
        !dir.path().join(&old_data).exists(),
        "old data directory removed"
    );
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), second.chain_pem());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), second.key_pem);
    let config = tls_client_config(&ca.pem(), &[b"h2"], None).unwrap();
    let stream = handshake(addr, config, "localhost").await.unwrap();
    assert_eq!(
        served_serial(&stream),
        second.serial,
        "serial after the swap"
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_or_given_an_expired_leaf_fails_the_handshake() {
    let ca = TestCa::new("zbase harness CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &ca.server_leaf(1));
    let addr = serve(cert.clone(), key.clone()).await;

    let other = TestCa::new("another CA");
    let config = tls_client_config(&other.pem(), &[b"h2"], None).unwrap();
    let error = handshake(addr, config, "localhost").await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&error),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{error}"
    );
    let tls = Tls::new(other.pem(), "localhost");
    for transport in Transport::ALL {
        match Conn::open_tls(transport, addr, random_id().as_str(), &tls).await {
            Err(ConnectError::Failed(why)) => assert!(
                why.contains("invalid peer certificate: UnknownIssuer"),
                "{transport:?}: {why}"
            ),
            other => panic!("{transport:?}: connected through an untrusted CA: {other:?}"),
        }
    }

    // The server reads the files on every handshake, so the next one serves this leaf.
    let expired = ca.expired_leaf(&["localhost"], 4);
    write_pair(dir.path(), &expired);
    let config = tls_client_config(&ca.pem(), &[b"h2"], None).unwrap();
    let error = handshake(addr, config, "localhost").await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&error),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{error}"
    );
}

#[tokio::test]
async fn mtls_accepts_a_client_leaf_of_the_site_ca_only() {
    let ca = TestCa::new("zbase site CA");
    let now = SystemTime::now();
    let server = ca.leaf(
        &["pod-0.internal"],
        10,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let config = tls_server_config(
        &server.chain_pem(),
        &server.key_pem,
        &[b"h2"],
        Some(&ca.pem()),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server side decides an mTLS handshake (under TLS 1.3 the client learns of a
    // refusal only on its next read), so it reports each outcome: the client's serial, or None.
    let (report, mut outcomes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let outcome = TlsAcceptor::from(config.clone())
                .accept(tcp)
                .await
                .ok()
                .map(|tls| serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0]));
            report.send(outcome).unwrap();
        }
    });

    let client = ca.client_leaf("pod-1.internal", 11);
    let with_cert = tls_client_config(
        &ca.pem(),
        &[b"h2"],
        Some((&client.chain_pem(), &client.key_pem)),
    )
    .unwrap();
    // Pods do not check each other's names, only the chain; a client still has to send one.
    let _stream = handshake(addr, with_cert, "pod-0.internal").await.unwrap();
    assert_eq!(outcomes.recv().await.unwrap(), Some(client.serial));

    let without = tls_client_config(&ca.pem(), &[b"h2"], None).unwrap();
    let _ = handshake(addr, without, "pod-0.internal").await;
    assert_eq!(
        outcomes.recv().await.unwrap(),
        None,
        "no client certificate"
    );

    let stranger = TestCa::new("another site").client_leaf("pod-9.internal", 12);
    let foreign = tls_client_config(
        &ca.pem(),
        &[b"h2"],
        Some((&stranger.chain_pem(), &stranger.key_pem)),
    )
    .unwrap();
    let _ = handshake(addr, foreign, "pod-0.internal").await;
    assert_eq!(outcomes.recv().await.unwrap(), None, "another CA's client");
}

/// OpenSSL (and aws-lc, since we chose ring) must never enter the build: it would add a C
/// library to the image and a second TLS stack whose behaviour the tests do not cover.
#[test]
fn no_openssl_or_aws_lc_in_the_lock_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let lock = std::fs::read_to_string(path).unwrap();
    let names: BTreeSet<&str> = lock
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .collect();
    // A parser that found nothing would pass the check below vacuously.
    for expected in ["rustls", "ring", "tokio-rustls"] {
        assert!(
            names.contains(expected),
            "{expected} not found: lock file misread"
        );
    }
    let banned: Vec<&str> = [
        "openssl",
        "openssl-sys",
        "native-tls",
        "aws-lc-sys",
        "aws-lc-rs",
    ]
    .into_iter()
    .filter(|name| names.contains(name))
    .collect();
    assert!(
        banned.is_empty(),
        "banned packages in Cargo.lock: {banned:?}"
    );
}
