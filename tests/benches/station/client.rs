//! The load generator's WebSocket client, one code path for both servers.
//!
//! A [`Room`] is a station resource (with its signing key) or a bare-server room (no key): the
//! only difference between the two is the verification answer after the upgrade. Messages are
//! the same bytes either way (`[0x01][submit-delta][payload]`; the station answers with
//! `forward-delta`, the bare server relays them verbatim) so both see the same sizes.
//!
//! A connection is plain TCP or TLS over TCP ([`Stream`]): the TLS handshake is this module's
//! own (tokio-rustls, ALPN `http/1.1`), and the WebSocket runs over whichever stream results,
//! so every figure measures TLS with the same code that measures plaintext.
//!
//! Every connection binds its own source address in 127.0.0.0/8: the station's per-IP limits
//! stay at their defaults, and tens of thousands of connections (and the TIME_WAIT sockets of
//! earlier figures) never exhaust one address's ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use futures::{SinkExt as _, StreamExt as _};
use rand::RngCore as _;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;
use zbase_proto::wire::{
    Challenge, Code, Frame, ResourceId, config_message, encode_b64url, verify_message,
};

/// A client's byte stream: plain TCP, or TLS over TCP. One type for both, so the plaintext
/// figures pay the same (one branch per read or write) as the TLS ones.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// A client WebSocket.
pub type Ws = WebSocketStream<Stream>;

/// Bytes of every delta's payload, as the issue asks.
pub const DELTA_LEN: usize = 256;
/// Payload byte 8: a delta that only proves the path is open, not counted.
pub const WARM: u8 = 0;
/// Payload byte 8: a measured delta.
pub const MEASURED: u8 = 1;

/// A place peers meet: a verified resource on the station, or a room on the bare server.
#[derive(Clone)]
pub struct Room {
    /// The resource identifier (also the bare server's room path).
    pub id: ResourceId,
    /// The resource's signing key; `None` on the bare server, which verifies nothing.
    pub key: Option<Arc<SigningKey>>,
}

impl Room {
    /// A room of the bare server.
    pub fn bare() -> Room {
        Room {
            id: random_id(),
            key: None,
        }
    }
}

/// A fresh random identifier.
pub fn random_id() -> ResourceId {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    ResourceId::from_bytes(raw)
}

/// A fresh Ed25519 key.
pub fn new_key() -> Arc<SigningKey> {
    Arc::new(SigningKey::generate(&mut rand::rngs::OsRng))
}

static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Reserves `count` source addresses for another process (a pairs client, `pairs.rs`) and
/// returns the first: this process will not use them, so no two processes share addresses.
pub fn reserve_sources(count: u32) -> u32 {
    NEXT_SOURCE.fetch_add(count, Ordering::Relaxed)
}

/// Makes this process's source addresses start at `first` (one its parent reserved).
pub fn use_sources_from(first: u32) {
    NEXT_SOURCE.store(first, Ordering::Relaxed);
}

/// The next client source address: 127.A.B.C, a different one for each of millions of calls.
pub fn next_source() -> IpAddr {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % (200 * 250 * 250);
    Ipv4Addr::new(
        127,
        (1 + n / 62_500) as u8,
        ((n / 250) % 250) as u8,
        (1 + n % 250) as u8,
    )
    .into()
}

/// TCP to `addr` from the next source address, Nagle off (as both servers do).
pub async fn tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(next_source(), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP to `addr` and, given a TLS configuration, a full TLS handshake over it. The server name
/// is the address's IP: the bench's certificates name 127.0.0.1 (`tls.rs`).
pub async fn connect(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> anyhow::Result<Stream> {
    let stream = tcp(addr).await?;
    let Some(config) = tls else {
        return Ok(Either::Left(stream));
    };
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .context("TLS handshake")?;
    Ok(Either::Right(stream))
}

/// Client buffers sized for small frames: the bench holds up to ~20,000 of these, and the
/// library default (128 KiB read buffer each) would only cost the load generator memory.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// TCP (+ TLS when `tls` is given) + WebSocket upgrade to `/v1/resources/{id}`.
pub async fn open(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    id: &ResourceId,
) -> anyhow::Result<Ws> {
    let stream = connect(addr, tls).await?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{addr}/v1/resources/{id}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config())).await?;
    Ok(ws)
}

/// Opens a connection to `room` and, on the station, answers `require-verification`.
pub async fn join(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    room: &Room,
) -> anyhow::Result<Ws> {
    let mut ws = open(addr, tls, &room.id).await?;
    if let Some(key) = &room.key {
        let payload = expect(&mut ws, Code::RequireVerification).await?;
        let challenge = Challenge::try_from(&payload[..])?;
        let signature = key.sign(&verify_message(&challenge, &room.id));
        send(
            &mut ws,
            Code::SubmitVerification,
            signature.to_bytes().to_vec(),
        )
        .await?;
    }
    Ok(ws)
}

/// Creates a station resource for `key` (configuration handshake) and returns it as a room.
pub async fn create(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    key: &Arc<SigningKey>,
) -> anyhow::Result<Room> {
    let proposed = random_id();
    let mut ws = open(addr, tls, &proposed).await?;
    let payload = expect(&mut ws, Code::RequireConfig).await?;
    let challenge = Challenge::try_from(&payload[..])?;
    let proof = key.sign(&config_message(&challenge, &proposed));
    let config = serde_json::json!({
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(key.verifying_key().as_bytes())},
        "proof": encode_b64url(&proof.to_bytes()),
    });
    send(&mut ws, Code::SubmitConfig, config.to_string().into_bytes()).await?;
    let offered = expect(&mut ws, Code::OfferConfig).await?;
    let id = ResourceId::parse(std::str::from_utf8(&offered)?)?;
    // The station closes after offer-config; read to the end so it is not a reset.
    while let Some(Ok(_)) = ws.next().await {}
    Ok(Room {
        id,
        key: Some(key.clone()),
    })
}

/// Sends one frame.
pub async fn send(ws: &mut Ws, code: Code, payload: impl Into<Bytes>) -> anyhow::Result<()> {
    ws.send(Message::Binary(Frame::new(code, payload)?.encode()))
        .await?;
    Ok(())
}

/// The next binary message, whole (`[version][code][payload]`).
pub async fn next_binary(ws: &mut Ws) -> anyhow::Result<Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) if bytes.len() >= 3 => return Ok(bytes),
            Some(Ok(Message::Close(close))) => bail!("closed by the server: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the connection ended"),
        }
    }
}

/// The next message must be a frame with `code`; returns its payload.
pub async fn expect(ws: &mut Ws, code: Code) -> anyhow::Result<Bytes> {
    let bytes = tokio::time::timeout(Duration::from_secs(30), next_binary(ws))
        .await
        .with_context(|| format!("no {code} within 30 s"))??;
    if bytes[1] != code.byte() {
        bail!("expected {code}, got code 0x{:02x}", bytes[1]);
    }
    Ok(bytes.slice(2..))
}

/// A delta payload: send time (ns since `epoch`), kind, filler to [`DELTA_LEN`].
pub fn delta(epoch: Instant, sent: Instant, kind: u8) -> Bytes {
    let mut payload = vec![0x5a; DELTA_LEN];
    let nanos = sent.saturating_duration_since(epoch).as_nanos() as u64;
    payload[..8].copy_from_slice(&nanos.to_le_bytes());
    payload[8] = kind;
    Frame::new(Code::SubmitDelta, payload)
        .map(|frame| frame.encode())
        .unwrap_or_default()
}

/// Kind and send time (ns since the epoch) of a received delta message, if it is one.
pub fn parse_delta(message: &[u8]) -> Option<(u8, u64)> {
    let payload = message.get(2..)?;
    let nanos = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some((*payload.get(8)?, nanos))
}

/// Closes politely: sends a close frame and reads until the server ends the connection.
pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
