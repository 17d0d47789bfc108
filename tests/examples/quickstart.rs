//! A first look at a running station: create a resource, verify two peers, relay a delta, store
//! and fetch a snapshot. Run `make run` in one terminal and `make demo` in another.
//!
//! It speaks WIRE.md directly over WebSocket, so it is also the shortest complete client to
//! read: every frame is `[0x01][code][payload]`, every proof an Ed25519 signature.
//!
//! `quickstart [HOST:PORT | ws://HOST:PORT | wss://HOST:PORT] [--ca FILE] [--server-name NAME]`:
//! over TLS it trusts only the CAs in `--ca` (a station on Kubernetes: its site CA bundle), and
//! checks the certificate for `--server-name` (default: the host).

use anyhow::{Context, bail};
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use rand::RngCore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;
use zbase_proto::wire::{Code, Frame, ResourceId, config_message, encode_b64url, verify_message};

/// A byte stream the WebSocket runs over: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Where the station is and how to reach it.
struct Station {
    /// `host:port`.
    addr: String,
    /// Over TLS: the trusted CAs and the name the certificate must carry.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Station {
    fn from_args() -> anyhow::Result<Station> {
        let mut args = std::env::args().skip(1);
        let (mut target, mut ca, mut server_name) = (None, None, None);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--ca" => ca = Some(args.next().context("--ca needs a file")?),
                "--server-name" => {
                    server_name = Some(args.next().context("--server-name needs a name")?)
                }
                _ if target.is_none() && !arg.starts_with("--") => target = Some(arg),
                _ => bail!(
                    "unexpected argument {arg:?}: usage: quickstart [HOST:PORT | wss://HOST:PORT] \
                     [--ca FILE] [--server-name NAME]"
                ),
            }
        }
        let target = target.unwrap_or_else(|| "127.0.0.1:8080".into());
        let (secure, addr) = match target.split_once("://") {
            Some(("wss", rest)) => (true, rest),
            Some(("ws", rest)) => (false, rest),
            Some((scheme, _)) => bail!("{scheme}:// is not a station address: use ws:// or wss://"),
            None => (false, target.as_str()),
        };
        let addr = addr.trim_end_matches('/').to_owned();
        if !secure {
            if ca.is_some() || server_name.is_some() {
                bail!("--ca and --server-name are for wss:// addresses");
            }
            return Ok(Station { addr, tls: None });
        }
        let ca = ca.context(
            "wss:// needs --ca FILE: the CA bundle that signed the station's certificate",
        )?;
        let pem = std::fs::read(&ca).with_context(|| format!("cannot read --ca {ca}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.with_context(|| format!("{ca} is not a PEM certificate bundle"))?)
                .with_context(|| format!("{ca} holds a certificate that cannot be a root"))?;
        }
        if roots.is_empty() {
            bail!("{ca} holds no certificate");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = server_name.unwrap_or_else(|| host.to_owned());
        let name = ServerName::try_from(name.clone())
            .with_context(|| format!("{name:?} is not a server name"))?;
        Ok(Station {
            addr,
            tls: Some((Arc::new(config), name)),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let station = Station::from_args()?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);

    // 1. Configure: propose a random identifier and prove the key over the challenge.
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let proposed = ResourceId::from_bytes(raw);
    let mut socket = open(&station, &proposed).await?;
    let challenge = expect(&mut socket, Code::RequireConfig).await?;
    let proof = key.sign(&config_message(
        &challenge.as_slice().try_into()?,
        &proposed,
    ));
    let config = serde_json::json!({
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(key.verifying_key().as_bytes())},
        "proof": encode_b64url(&proof.to_bytes()),
    });
    send(
        &mut socket,
        Code::SubmitConfig,
        config.to_string().into_bytes(),
    )
    .await?;
    let offered = expect(&mut socket, Code::OfferConfig).await?;
    let id = ResourceId::parse(std::str::from_utf8(&offered)?)?;
    println!("created resource {id}");

    // 2. Two devices holding the key verify on the authoritative identifier.
    let mut alice = verified(&station, &id, &key).await?;
    let mut bob = verified(&station, &id, &key).await?;
    println!("two peers verified");

    // 3. A delta from one reaches the other, never the sender.
    send(
        &mut alice,
        Code::SubmitDelta,
        b"encrypted delta from alice".to_vec(),
    )
    .await?;
    let delta = expect(&mut bob, Code::ForwardDelta).await?;
    println!("bob received a delta: {}", String::from_utf8_lossy(&delta));

    // 4. A snapshot is stored; asking for state returns it.
    send(
        &mut alice,
        Code::SubmitSnapshot,
        b"encrypted snapshot v1".to_vec(),
    )
    .await?;
    send(&mut bob, Code::SubmitRequest, b"sync please".to_vec()).await?;
    let forwarded = expect(&mut alice, Code::ForwardRequest).await?;
    println!(
        "alice saw bob's request: {}",
        String::from_utf8_lossy(&forwarded)
    );
    loop {
        let frame = next(&mut bob).await?;
        if matches!(frame.code(), Code::OfferSnapshot | Code::ForwardResponse) {
            println!(
                "bob got the snapshot: {}",
                String::from_utf8_lossy(frame.payload())
            );
            break;
        }
    }
    println!("done: the station relayed and stored only opaque bytes");
    Ok(())
}

async fn open(station: &Station, id: &ResourceId) -> anyhow::Result<Socket> {
    let scheme = if station.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{}/v1/resources/{id}", station.addr);
    let tcp = tokio::net::TcpStream::connect(&station.addr)
        .await
        .with_context(|| format!("cannot reach {url}: is `make run` running?"))?;
    let stream: Box<dyn Io> = match &station.tls {
        None => Box::new(tcp),
        Some((config, name)) => Box::new(
            tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .with_context(|| format!("TLS with {url} failed: check --ca and --server-name"))?,
        ),
    };
    let (socket, _) = tokio_tungstenite::client_async(&url, stream)
        .await
        .with_context(|| format!("WebSocket handshake with {url} failed"))?;
    Ok(socket)
}

async fn verified(station: &Station, id: &ResourceId, key: &SigningKey) -> anyhow::Result<Socket> {
    let mut socket = open(station, id).await?;
    let challenge = expect(&mut socket, Code::RequireVerification).await?;
    let signature = key.sign(&verify_message(&challenge.as_slice().try_into()?, id));
    send(
        &mut socket,
        Code::SubmitVerification,
        signature.to_bytes().to_vec(),
    )
    .await?;
    Ok(socket)
}

async fn send(socket: &mut Socket, code: Code, payload: Vec<u8>) -> anyhow::Result<()> {
    let frame = Frame::new(code, payload)?;
    socket.send(Message::Binary(frame.encode())).await?;
    Ok(())
}

async fn next(socket: &mut Socket) -> anyhow::Result<Frame> {
    loop {
        match socket
            .next()
            .await
            .context("the station closed the connection")??
        {
            Message::Binary(bytes) => return Ok(Frame::decode(bytes, usize::MAX)?),
            Message::Close(close) => bail!("the station closed the connection: {close:?}"),
            _ => continue,
        }
    }
}

async fn expect(socket: &mut Socket, code: Code) -> anyhow::Result<Vec<u8>> {
    let frame = next(socket).await?;
    if frame.code() != code {
        bail!("expected {code}, got {}", frame.code());
    }
    Ok(frame.payload().to_vec())
}
