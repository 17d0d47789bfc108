//! A transport-neutral test client, written from WIRE.md alone, as an independent client would.
//!
//! [`Conn`] speaks WebSocket (tokio-tungstenite) or gRPC (tonic) and turns whatever the station
//! does into an [`Event`]: a frame, or a termination normalised to a [`CloseKind`], so one test
//! body runs unchanged on both transports. [`Identity`] holds a signing key of either accepted
//! type; [`create_resource`], [`configure`], [`verify`] and [`join`] run the handshakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use rand::RngCore as _;
use rand::rngs::OsRng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::frame::coding::CloseCode};
use tonic::transport::Endpoint;
use zbase_proto::pb::{self, RESOURCE_ID_METADATA, station_client::StationClient};
use zbase_proto::wire::{
    CHALLENGE_LEN, Challenge, Code, Frame, ID_LEN, ResourceId, VerificationKey, config_message,
    encode_b64url, rotate_message, rotate_proof_message, verify_message,
};

/// How long [`Conn::recv`] and the `expect_*` helpers wait before failing the test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);
/// The quiet period that stands for "nothing arrives" where the contract has no event.
pub const SILENCE: Duration = Duration::from_millis(300);
/// Largest message this client accepts from a station (frames are at most 8 MiB by default).
pub const CLIENT_MAX_MESSAGE: usize = 16 << 20;

/// Which of the station's transports a [`Conn`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ws://HOST/v1/resources/{id}` (or `wss://`), one binary message per frame.
    Ws,
    /// `zbase.v1.Station/Connect` over HTTP/2 (plain text, or TLS with ALPN `h2`), id in
    /// `zbase-resource-id`.
    Grpc,
}

impl Transport {
    /// Both transports, for tests that mix them.
    pub const ALL: [Transport; 2] = [Transport::Ws, Transport::Grpc];

    /// The other transport.
    pub fn other(self) -> Transport {
        match self {
            Transport::Ws => Transport::Grpc,
            Transport::Grpc => Transport::Ws,
        }
    }
}

/// How a connection ended, normalised across transports (WIRE.md section 8).
///
/// | variant | WebSocket | gRPC |
/// | --- | --- | --- |
/// | `Normal` | 1000 | `OK` (stream ends) |
/// | `GoingAway` | 1001 | `UNAVAILABLE` |
/// | `Protocol` | 1002 | `INVALID_ARGUMENT` |
/// | `Auth` | 1008 | `UNAUTHENTICATED` |
/// | `TooLarge` | 1009 | `OUT_OF_RANGE` |
/// | `Overloaded` | 1013 | `RESOURCE_EXHAUSTED` |
///
/// WIRE.md lets a station answer 1013 on gRPC with either `UNAVAILABLE` or
/// `RESOURCE_EXHAUSTED`, and uses `UNAVAILABLE` for shutdown as well. This station's fixed
/// decisions are `RESOURCE_EXHAUSTED` for every overload and `UNAVAILABLE` only for shutdown,
/// so gRPC `UNAVAILABLE` maps to `GoingAway`: a test that expects `Overloaded` and sees
/// `GoingAway` on gRPC shows the station used the other (contract-allowed) status, and fails
/// on this station's stricter decision rather than passing by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseKind {
    /// WebSocket 1000, gRPC `OK`.
    Normal,
    /// WebSocket 1001, gRPC `UNAVAILABLE`.
    GoingAway,
    /// WebSocket 1002, gRPC `INVALID_ARGUMENT`.
    Protocol,
    /// WebSocket 1008, gRPC `UNAUTHENTICATED`.
    Auth,
    /// WebSocket 1009, gRPC `OUT_OF_RANGE`.
    TooLarge,
    /// WebSocket 1013, gRPC `RESOURCE_EXHAUSTED`.
    Overloaded,
    /// The transport broke without a close code or status (reset, EOF, h2 error).
    Reset(String),
    /// Any other close code or status.
    Other(String),
}

impl CloseKind {
    /// True when the station ended the connection in some way that is not a normal close:
    /// what "was disconnected" means for a peer that could not read its close frame.
    pub fn is_disconnect(&self) -> bool {
        !matches!(self, CloseKind::Normal)
    }

    fn from_ws(code: CloseCode) -> CloseKind {
        match u16::from(code) {
            1000 => CloseKind::Normal,
            1001 => CloseKind::GoingAway,
            1002 => CloseKind::Protocol,
            1008 => CloseKind::Auth,
            1009 => CloseKind::TooLarge,
            1013 => CloseKind::Overloaded,
            other => CloseKind::Other(format!("WebSocket close code {other}")),
        }
    }

    fn from_status(status: &tonic::Status) -> CloseKind {
        // A status the station sent has no source; one tonic made from a broken transport has.
        if std::error::Error::source(status).is_some() {
            return CloseKind::Reset(format!("gRPC transport error: {status}"));
        }
        match status.code() {
            tonic::Code::Ok => CloseKind::Normal,
            tonic::Code::Unavailable => CloseKind::GoingAway,
            tonic::Code::InvalidArgument => CloseKind::Protocol,
            tonic::Code::Unauthenticated => CloseKind::Auth,
            tonic::Code::OutOfRange => CloseKind::TooLarge,
            tonic::Code::ResourceExhausted => CloseKind::Overloaded,
            other => CloseKind::Other(format!("gRPC status {other:?}: {}", status.message())),
        }
    }
}

/// What a connection delivers next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A valid frame from the station.
    Frame(Frame),
    /// The connection ended; every later receive returns the same kind.
    Closed(CloseKind),
}

/// A connection attempt that never became a frame stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The WebSocket upgrade was answered with this HTTP status instead of 101.
    Http(u16),
    /// TCP, HTTP or HTTP/2 failed.
    Failed(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Http(status) => write!(f, "upgrade refused with HTTP {status}"),
            ConnectError::Failed(why) => write!(f, "connection failed: {why}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// How to reach a station whose public port serves TLS.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The only CA trusted for the station's certificate, PEM.
    pub ca_pem: String,
    /// The name the certificate must be valid for, sent as SNI and as the HTTP authority:
    /// a DNS name such as `localhost` or an IP address such as `127.0.0.1`.
    pub server_name: String,
}

impl Tls {
    /// Trust `ca_pem` and expect a certificate for `server_name`.
    pub fn new(ca_pem: impl Into<String>, server_name: impl Into<String>) -> Tls {
        Tls {
            ca_pem: ca_pem.into(),
            server_name: server_name.into(),
        }
    }

    /// `server_name:port`, with brackets around an IPv6 address, for URLs.
    fn authority(&self, port: u16) -> String {
        match self.server_name.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{}:{port}", self.server_name),
        }
    }

    /// TCP then the TLS handshake offering `alpn`; returns the stream and the DER leaf the
    /// station presented.
    async fn dial(
        &self,
        addr: SocketAddr,
        local: Option<IpAddr>,
        alpn: &[u8],
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), ConnectError> {
        let failed = |e: &dyn fmt::Display| ConnectError::Failed(e.to_string());
        let config = crate::tls::tls_client_config(&self.ca_pem, &[alpn], None)
            .map_err(|e| failed(&format!("{e:#}")))?;
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| failed(&e))?;
        let tcp = tcp_from(addr, local).await?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| failed(&format!("TLS handshake: {e}")))?;
        let (_, session) = stream.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .ok_or_else(|| ConnectError::Failed("the station presented no certificate".into()))?;
        Ok((stream, leaf))
    }
}

/// A byte stream a WebSocket runs over: plain TCP or TLS, chosen at connect time.
trait WsIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> WsIo for T {}

/// The leaf certificate a TLS connection saw, shared with a gRPC connector that may redial.
type PeerCert = Arc<Mutex<Option<Vec<u8>>>>;

enum Inner {
    Ws(Box<WebSocketStream<Box<dyn WsIo>>>),
    Grpc {
        tx: Option<mpsc::Sender<pb::Frame>>,
        rx: Option<Box<tonic::Streaming<pb::Frame>>>,
    },
}

/// One connection to a station, for one identifier, on one transport.
pub struct Conn {
    transport: Transport,
    inner: Inner,
    closed: Option<CloseKind>,
    close_detail: String,
    queued: VecDeque<Event>,
    peer_cert: PeerCert,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("transport", &self.transport)
            .field("closed", &self.closed)
            .finish()
    }
}

async fn tcp_from(addr: SocketAddr, local: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
    let failed = |e: std::io::Error| ConnectError::Failed(e.to_string());
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0)).map_err(failed)?;
    }
    let stream = socket.connect(addr).await.map_err(failed)?;
    stream.set_nodelay(true).map_err(failed)?;
    Ok(stream)
}

impl Conn {
    /// Connects on `transport` for `id` (any string: invalid ones are how refusals are tested).
    pub async fn open(
        transport: Transport,
        addr: SocketAddr,
        id: &str,
    ) -> Result<Conn, ConnectError> {
        Conn::open_from(transport, addr, id, None).await
    }

    /// Like [`Conn::open`], from a chosen local address such as 127.0.0.2.
    pub async fn open_from(
        transport: Transport,
        addr: SocketAddr,
        id: &str,
        local: Option<IpAddr>,
    ) -> Result<Conn, ConnectError> {
        match transport {
            Transport::Ws => Conn::ws_from(addr, id, local).await,
            Transport::Grpc => Conn::grpc_from(addr, Some(id), local).await,
        }
    }

    /// Like [`Conn::open`], over TLS to a station trusted through `tls`.
    pub async fn open_tls(
        transport: Transport,
        addr: SocketAddr,
        id: &str,
        tls: &Tls,
    ) -> Result<Conn, ConnectError> {
        Conn::open_tls_from(transport, addr, id, None, tls).await
    }

    /// Like [`Conn::open_from`], over TLS.
    pub async fn open_tls_from(
        transport: Transport,
        addr: SocketAddr,
        id: &str,
        local: Option<IpAddr>,
        tls: &Tls,
    ) -> Result<Conn, ConnectError> {
        let path = format!("/v1/resources/{id}");
        match transport {
            Transport::Ws => Conn::ws_with(addr, &path, local, Some(tls)).await,
            Transport::Grpc => Conn::grpc_with(addr, Some(id), local, Some(tls)).await,
        }
    }

    /// Like [`Conn::connect`], over TLS.
    pub async fn connect_tls(
        transport: Transport,
        addr: SocketAddr,
        id: &ResourceId,
        tls: &Tls,
    ) -> Conn {
        Conn::open_tls(transport, addr, id.as_str(), tls)
            .await
            .unwrap_or_else(|e| panic!("{transport:?} TLS connection for a valid id: {e}"))
    }

    /// Connects for a valid identifier, failing the test if the connection is not set up.
    pub async fn connect(transport: Transport, addr: SocketAddr, id: &ResourceId) -> Conn {
        Conn::open(transport, addr, id.as_str())
            .await
            .unwrap_or_else(|e| panic!("{transport:?} connection for a valid id: {e}"))
    }

    /// A WebSocket connection to `ws://ADDR/v1/resources/{id}`.
    pub async fn ws(addr: SocketAddr, id: &str) -> Result<Conn, ConnectError> {
        Conn::ws_from(addr, id, None).await
    }

    /// A WebSocket connection from a chosen local address.
    pub async fn ws_from(
        addr: SocketAddr,
        id: &str,
        local: Option<IpAddr>,
    ) -> Result<Conn, ConnectError> {
        Conn::ws_path_from(addr, &format!("/v1/resources/{id}"), local).await
    }

    /// A WebSocket connection to an arbitrary path (for refusal tests).
    pub async fn ws_path_from(
        addr: SocketAddr,
        path: &str,
        local: Option<IpAddr>,
    ) -> Result<Conn, ConnectError> {
        Conn::ws_with(addr, path, local, None).await
    }

    /// A WebSocket connection to `wss://SERVER_NAME:PORT/v1/resources/{id}`.
    pub async fn ws_tls(addr: SocketAddr, id: &str, tls: &Tls) -> Result<Conn, ConnectError> {
        Conn::ws_with(addr, &format!("/v1/resources/{id}"), None, Some(tls)).await
    }

    /// A WebSocket connection over TLS to an arbitrary path, from a chosen local address.
    pub async fn ws_path_tls_from(
        addr: SocketAddr,
        path: &str,
        local: Option<IpAddr>,
        tls: &Tls,
    ) -> Result<Conn, ConnectError> {
        Conn::ws_with(addr, path, local, Some(tls)).await
    }

    // The TLS handshake is done here rather than by tokio-tungstenite so the client needs no
    // TLS feature of it, uses the ring provider explicitly, and can keep the peer certificate.
    async fn ws_with(
        addr: SocketAddr,
        path: &str,
        local: Option<IpAddr>,
        tls: Option<&Tls>,
    ) -> Result<Conn, ConnectError> {
        let (stream, url, peer): (Box<dyn WsIo>, _, _) = match tls {
            None => (
                Box::new(tcp_from(addr, local).await?),
                format!("ws://{addr}{path}"),
                None,
            ),
            Some(tls) => {
                let (stream, leaf) = tls.dial(addr, local, b"http/1.1").await?;
                (
                    Box::new(stream),
                    format!("wss://{}{path}", tls.authority(addr.port())),
                    Some(leaf),
                )
            }
        };
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(CLIENT_MAX_MESSAGE))
            .max_frame_size(Some(CLIENT_MAX_MESSAGE));
        match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
            Ok((ws, _response)) => {
                let conn = Conn::new(Transport::Ws, Inner::Ws(Box::new(ws)));
                *conn.peer_cert.lock().expect("peer certificate lock") = peer;
                Ok(conn)
            }
            Err(tungstenite::Error::Http(response)) => {
                Err(ConnectError::Http(response.status().as_u16()))
            }
            Err(e) => Err(ConnectError::Failed(e.to_string())),
        }
    }

    /// A gRPC `Connect` stream with `zbase-resource-id: {id}`.
    pub async fn grpc(addr: SocketAddr, id: &str) -> Result<Conn, ConnectError> {
        Conn::grpc_from(addr, Some(id), None).await
    }

    /// A gRPC `Connect` stream with the metadata given as is (`None`: no metadata at all), from
    /// a chosen local address. A status the station answers before any frame is delivered as
    /// the connection's first [`Event::Closed`], not as an error.
    pub async fn grpc_from(
        addr: SocketAddr,
        id: Option<&str>,
        local: Option<IpAddr>,
    ) -> Result<Conn, ConnectError> {
        Conn::grpc_with(addr, id, local, None).await
    }

    /// A gRPC `Connect` stream over TLS (h2 by ALPN) with `zbase-resource-id: {id}`.
    pub async fn grpc_tls(addr: SocketAddr, id: &str, tls: &Tls) -> Result<Conn, ConnectError> {
        Conn::grpc_with(addr, Some(id), None, Some(tls)).await
    }

    /// Like [`Conn::grpc_from`], over TLS.
    pub async fn grpc_tls_from(
        addr: SocketAddr,
        id: Option<&str>,
        local: Option<IpAddr>,
        tls: &Tls,
    ) -> Result<Conn, ConnectError> {
        Conn::grpc_with(addr, id, local, Some(tls)).await
    }

    async fn grpc_with(
        addr: SocketAddr,
        id: Option<&str>,
        local: Option<IpAddr>,
        tls: Option<&Tls>,
    ) -> Result<Conn, ConnectError> {
        let failed = |e: &dyn fmt::Display| ConnectError::Failed(format!("{e}"));
        let peer_cert = PeerCert::default();
        let channel = match tls {
            None => {
                Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| failed(&e))?
                    .tcp_nodelay(true)
                    .local_address(local)
                    .connect()
                    .await
            }
            Some(tls) => {
                // Scheme `http` on purpose: the connector below does TLS itself, and with
                // `https` tonic would insist on its own TLS whenever another crate in the
                // build enables a tonic TLS feature.
                let endpoint =
                    Endpoint::from_shared(format!("http://{}", tls.authority(addr.port())))
                        .map_err(|e| failed(&e))?;
                let tls = tls.clone();
                let seen = peer_cert.clone();
                let connector = tower::service_fn(move |_uri: http::Uri| {
                    let (tls, seen) = (tls.clone(), seen.clone());
                    async move {
                        let (stream, leaf) = tls.dial(addr, local, b"h2").await?;
                        // tonic speaks HTTP/2 with prior knowledge; over TLS the station must
                        // have agreed to it by ALPN, and a silent fallback would hide that.
                        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        if alpn.as_deref() != Some(b"h2") {
                            return Err(ConnectError::Failed(format!(
                                "the station negotiated ALPN {:?}, not h2",
                                alpn.map(|p| String::from_utf8_lossy(&p).into_owned())
                            )));
                        }
                        *seen.lock().expect("peer certificate lock") = Some(leaf);
                        Ok(hyper_util::rt::TokioIo::new(stream))
                    }
                });
                endpoint.connect_with_connector(connector).await
            }
        }
        .map_err(|e| failed(&DisplayChain(&e)))?;
        let mut client = StationClient::new(channel)
            .max_decoding_message_size(CLIENT_MAX_MESSAGE)
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(id) = id {
            let value = id
                .parse()
                .map_err(|_| ConnectError::Failed(format!("{id:?} is not ASCII metadata")))?;
            request.metadata_mut().insert(RESOURCE_ID_METADATA, value);
        }
        let mut conn = Conn::new(
            Transport::Grpc,
            Inner::Grpc {
                tx: Some(tx),
                rx: None,
            },
        );
        conn.peer_cert = peer_cert;
        match client.connect(request).await {
            Ok(response) => {
                if let Inner::Grpc { rx, .. } = &mut conn.inner {
                    *rx = Some(Box::new(response.into_inner()));
                }
            }
            Err(status) => conn.set_closed(CloseKind::from_status(&status), status.to_string()),
        }
        Ok(conn)
    }

    fn new(transport: Transport, inner: Inner) -> Conn {
        Conn {
            transport,
            inner,
            closed: None,
            close_detail: String::new(),
            queued: VecDeque::new(),
            peer_cert: PeerCert::default(),
        }
    }

    /// The leaf certificate (DER) the station presented, for a TLS connection; `None` in
    /// plain text. For gRPC it is the one of the latest (re)connection of the channel.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.peer_cert
            .lock()
            .expect("peer certificate lock")
            .clone()
    }

    fn set_closed(&mut self, kind: CloseKind, detail: String) {
        self.closed = Some(kind);
        self.close_detail = detail;
        if let Inner::Grpc { tx, .. } = &mut self.inner {
            *tx = None;
        }
    }

    /// The transport this connection uses.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// How the connection ended, once it has (as seen by a receive).
    pub fn closed(&self) -> Option<&CloseKind> {
        self.closed.as_ref()
    }

    /// The WebSocket close reason or gRPC status message the station gave, if any.
    pub fn close_detail(&self) -> &str {
        &self.close_detail
    }

    /// Sends a well-formed frame.
    pub async fn send_frame(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.send_parts(1, u32::from(frame.code().byte()), frame.payload().clone())
            .await
    }

    /// Sends a frame with `code` and a non-empty `payload`.
    pub async fn send(&mut self, code: Code, payload: impl Into<Bytes>) -> anyhow::Result<()> {
        let frame = Frame::new(code, payload).expect("send() takes a non-empty payload");
        self.send_frame(&frame).await
    }

    /// Sends version, code and payload as given, valid or not: the WebSocket message is
    /// `[version as u8][code as u8][payload]`, the gRPC message carries the fields unchanged.
    pub async fn send_parts(
        &mut self,
        version: u32,
        code: u32,
        payload: impl Into<Bytes>,
    ) -> anyhow::Result<()> {
        let payload = payload.into();
        match &mut self.inner {
            Inner::Ws(_) => {
                let mut bytes = Vec::with_capacity(2 + payload.len());
                bytes.push(u8::try_from(version)?);
                bytes.push(u8::try_from(code)?);
                bytes.extend_from_slice(&payload);
                self.send_ws(Message::Binary(bytes.into())).await
            }
            Inner::Grpc { tx, .. } => {
                let tx = tx
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("gRPC request stream already closed"))?;
                tx.send(pb::Frame {
                    version,
                    code,
                    payload,
                })
                .await
                .map_err(|_| anyhow::anyhow!("gRPC request stream closed by the station"))
            }
        }
    }

    /// WebSocket only: sends one binary message of exactly these bytes.
    pub async fn send_ws_bytes(&mut self, bytes: impl Into<Bytes>) -> anyhow::Result<()> {
        self.send_ws(Message::Binary(bytes.into())).await
    }

    /// WebSocket only: sends one text message.
    pub async fn send_ws_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_ws(Message::Text(text.into())).await
    }

    async fn send_ws(&mut self, message: Message) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Ws(ws) => Ok(ws.send(message).await?),
            Inner::Grpc { .. } => panic!("a WebSocket-only send on a gRPC connection"),
        }
    }

    /// Ends the connection from the client side: a 1000 close, or the end of the gRPC request
    /// stream. Does not wait for the station's answer.
    pub async fn close(&mut self) {
        match &mut self.inner {
            Inner::Ws(ws) => {
                let _ = (**ws).close(None).await;
            }
            Inner::Grpc { tx, .. } => *tx = None,
        }
    }

    /// The next event, or `None` if nothing arrives within `wait`. A zero `wait` still
    /// returns an event that is already available.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Option<Event> {
        if let Some(event) = self.queued.pop_front() {
            return Some(event);
        }
        if let Some(kind) = &self.closed {
            return Some(Event::Closed(kind.clone()));
        }
        tokio::time::timeout(wait, self.next_event()).await.ok()
    }

    /// The next event, failing the test after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Event {
        match self.recv_timeout(RECV_TIMEOUT).await {
            Some(event) => event,
            None => panic!(
                "{:?}: nothing arrived within {RECV_TIMEOUT:?}",
                self.transport
            ),
        }
    }

    /// Puts an event back so the next receive returns it first.
    pub fn unread(&mut self, event: Event) {
        self.queued.push_front(event);
    }

    // Cancel-safe: both underlying streams keep their state across dropped polls.
    async fn next_event(&mut self) -> Event {
        let (kind, detail) = match &mut self.inner {
            Inner::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        return Event::Frame(decode_station_frame(bytes));
                    }
                    Some(Ok(Message::Text(_))) => {
                        panic!("the station sent a WebSocket text message; frames are binary")
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(Some(frame)))) => {
                        break (CloseKind::from_ws(frame.code), frame.reason.to_string());
                    }
                    Some(Ok(Message::Close(None))) => {
                        break (
                            CloseKind::Other("WebSocket close without a code".into()),
                            String::new(),
                        );
                    }
                    Some(Err(e)) => break (CloseKind::Reset(e.to_string()), String::new()),
                    None => {
                        break (
                            CloseKind::Reset("WebSocket ended without a close frame".into()),
                            String::new(),
                        );
                    }
                }
            },
            Inner::Grpc { rx, .. } => {
                let rx = rx.as_mut().expect("an open gRPC stream");
                match rx.message().await {
                    Ok(Some(frame)) => {
                        let parsed =
                            Frame::from_parts(frame.version, frame.code, frame.payload, usize::MAX)
                                .unwrap_or_else(|e| {
                                    panic!("the station sent an invalid frame: {e}")
                                });
                        return Event::Frame(parsed);
                    }
                    Ok(None) => (CloseKind::Normal, String::new()),
                    Err(status) => (
                        CloseKind::from_status(&status),
                        status.message().to_string(),
                    ),
                }
            }
        };
        self.set_closed(kind.clone(), detail);
        Event::Closed(kind)
    }

    /// The next event must be a frame with `code`; returns its payload.
    pub async fn expect_frame(&mut self, code: Code) -> Bytes {
        match self.recv().await {
            Event::Frame(frame) if frame.code() == code => frame.into_payload(),
            other => panic!("{:?}: expected {code}, got {other:?}", self.transport),
        }
    }

    /// The next event must be a frame with `code` and exactly `payload`.
    pub async fn expect_payload(&mut self, code: Code, payload: &[u8]) {
        let got = self.expect_frame(code).await;
        assert!(
            got[..] == payload[..],
            "{:?}: {code} carried {} bytes that differ from the {} bytes expected",
            self.transport,
            got.len(),
            payload.len()
        );
    }

    /// The next frame that is not `offer-snapshot` must be `code` with `payload`; offers met on
    /// the way stay queued, in order, for the next receive.
    pub async fn expect_keeping_offers(&mut self, code: Code, payload: &[u8]) {
        let mut offers = Vec::new();
        loop {
            match self.recv().await {
                Event::Frame(frame) if frame.code() == Code::OfferSnapshot => offers.push(frame),
                Event::Frame(frame)
                    if frame.code() == code && frame.payload()[..] == payload[..] =>
                {
                    break;
                }
                other => panic!(
                    "{:?}: expected {code} with the sent payload, got {other:?}",
                    self.transport
                ),
            }
        }
        for offer in offers.into_iter().rev() {
            self.unread(Event::Frame(offer));
        }
    }

    /// The next event must be the end of the connection; returns how it ended.
    pub async fn expect_closed(&mut self) -> CloseKind {
        match self.recv().await {
            Event::Closed(kind) => kind,
            Event::Frame(frame) => panic!(
                "{:?}: expected the connection to end, got {frame:?}",
                self.transport
            ),
        }
    }

    /// The next event must be the end of the connection, of exactly `kind`.
    pub async fn expect_close(&mut self, kind: CloseKind) {
        let got = self.expect_closed().await;
        assert_eq!(
            got, kind,
            "{:?}: connection ended the wrong way (detail: {:?})",
            self.transport, self.close_detail
        );
    }

    /// Nothing at all arrives (no frame, no close) within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(event) = self.recv_timeout(wait).await {
            panic!(
                "{:?}: expected nothing within {wait:?}, got {event:?}",
                self.transport
            );
        }
    }

    /// The next event must be `require-config` or `require-verification` (as `code`) with a
    /// 32-byte challenge; returns the challenge.
    pub async fn expect_challenge(&mut self, code: Code) -> Challenge {
        let payload = self.expect_frame(code).await;
        <Challenge>::try_from(&payload[..]).unwrap_or_else(|_| {
            panic!(
                "{code} carried {} bytes, not a {CHALLENGE_LEN}-byte challenge",
                payload.len()
            )
        })
    }
}

/// An error with its sources, since tonic's transport error says only "transport error".
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

fn decode_station_frame(bytes: Bytes) -> Frame {
    Frame::decode(bytes, usize::MAX)
        .unwrap_or_else(|e| panic!("the station sent an invalid frame: {e}"))
}

/// A resource's signing key, of either accepted type (WIRE.md section 4).
#[derive(Clone)]
pub enum Identity {
    /// `{"kty":"OKP","crv":"Ed25519"}`.
    Ed25519(ed25519_dalek::SigningKey),
    /// `{"kty":"EC","crv":"P-256"}`, signing with SHA-256, `r || s`.
    P256(p256::ecdsa::SigningKey),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ed25519(_) => f.write_str("Identity::Ed25519(..)"),
            Identity::P256(_) => f.write_str("Identity::P256(..)"),
        }
    }
}

impl Identity {
    /// A fresh Ed25519 key.
    pub fn ed25519() -> Identity {
        Identity::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    /// A fresh P-256 key.
    pub fn p256() -> Identity {
        Identity::P256(p256::ecdsa::SigningKey::random(&mut OsRng))
    }

    /// The public JWK as a JSON value.
    pub fn jwk(&self) -> serde_json::Value {
        match self {
            Identity::Ed25519(key) => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": encode_b64url(key.verifying_key().as_bytes()),
            }),
            Identity::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": encode_b64url(point.x().expect("uncompressed point has x")),
                    "y": encode_b64url(point.y().expect("uncompressed point has y")),
                })
            }
        }
    }

    /// The public JWK as JSON text.
    pub fn jwk_json(&self) -> String {
        self.jwk().to_string()
    }

    /// The `x` coordinate as it appears in the JWK (to check it never leaks into a close).
    pub fn jwk_x(&self) -> String {
        self.jwk()["x"].as_str().unwrap_or_default().to_owned()
    }

    /// A 64-byte signature of `message`: Ed25519, or P-256 `r || s` with low S.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        match self {
            Identity::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(message).to_bytes()
            }
            Identity::P256(key) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = key.sign(message);
                let low = sig.normalize_s().unwrap_or(sig);
                low.to_bytes().into()
            }
        }
    }

    /// P-256 only: the same signature with S replaced by n - S (high S), as WebCrypto may
    /// produce and WIRE.md section 4 accepts.
    pub fn sign_high_s(&self, message: &[u8]) -> [u8; 64] {
        let Identity::P256(key) = self else {
            panic!("high-S signatures exist for P-256 only");
        };
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = key.sign(message);
        let low = sig.normalize_s().unwrap_or(sig);
        let (r, s) = low.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).expect("n - s is a valid scalar");
        assert!(
            high.normalize_s().is_some(),
            "the constructed signature is high-S"
        );
        high.to_bytes().into()
    }

    /// The `submit-config` payload: this key's JWK and a proof over
    /// `config_message(challenge, proposed)`.
    pub fn config_payload(&self, challenge: &Challenge, proposed: &ResourceId) -> Vec<u8> {
        config_payload_text(
            &self.jwk(),
            &self.sign(&config_message(challenge, proposed)),
        )
        .into_bytes()
    }

    /// The `submit-verification` payload for `challenge` on `id`.
    pub fn verify_payload(&self, challenge: &Challenge, id: &ResourceId) -> [u8; 64] {
        self.sign(&verify_message(challenge, id))
    }
}

impl Identity {
    /// The RFC 7638 thumbprint of this key's public JWK.
    pub fn thumbprint(&self) -> [u8; 32] {
        VerificationKey::from_jwk_json(&self.jwk_json())
            .expect("a generated key is a valid JWK")
            .thumbprint()
    }

    /// The `rotate-key` payload (extension R1) by which this, the current key, hands over to
    /// `new`: `new`'s proof and this key's authorization, both over `challenge`.
    pub fn rotate_payload(
        &self,
        new: &Identity,
        challenge: &Challenge,
        id: &ResourceId,
    ) -> Vec<u8> {
        rotate_payload_text(
            &new.jwk(),
            &new.sign(&rotate_proof_message(challenge, id)),
            &self.sign(&rotate_message(challenge, id, &new.thumbprint())),
        )
        .into_bytes()
    }
}

/// `{"jwk": jwk, "proof": "...", "authorization": "..."}` as compact JSON text.
pub fn rotate_payload_text(jwk: &serde_json::Value, proof: &[u8], authorization: &[u8]) -> String {
    serde_json::json!({
        "jwk": jwk,
        "proof": encode_b64url(proof),
        "authorization": encode_b64url(authorization),
    })
    .to_string()
}

/// Like [`verify`], returning the challenge answered: the session's first rotation challenge.
pub async fn verify_keeping_challenge(
    conn: &mut Conn,
    id: &ResourceId,
    identity: &Identity,
) -> Challenge {
    let challenge = conn.expect_challenge(Code::RequireVerification).await;
    conn.send(
        Code::SubmitVerification,
        identity.verify_payload(&challenge, id).to_vec(),
    )
    .await
    .expect("send submit-verification");
    challenge
}

/// `{"jwk": jwk, "proof": "<base64url proof>"}` as compact JSON text.
pub fn config_payload_text(jwk: &serde_json::Value, proof: &[u8]) -> String {
    serde_json::json!({"jwk": jwk, "proof": encode_b64url(proof)}).to_string()
}

/// A fresh random identifier.
pub fn random_id() -> ResourceId {
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    ResourceId::from_bytes(raw)
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Parses an `offer-config` payload: exactly 43 ASCII bytes of a canonical identifier.
pub fn parse_offered_id(payload: &[u8]) -> ResourceId {
    assert_eq!(
        payload.len(),
        ID_LEN,
        "offer-config must carry a {ID_LEN}-byte identifier"
    );
    let text = std::str::from_utf8(payload).expect("offer-config carries ASCII");
    ResourceId::parse(text).unwrap_or_else(|e| panic!("offer-config carried {text:?}: {e}"))
}

/// Runs the configuration handshake on a fresh connection for `proposed`: expects
/// `require-config`, sends the proof, expects `offer-config` and then a normal close. Returns
/// the authoritative identifier.
pub async fn configure(conn: &mut Conn, proposed: &ResourceId, identity: &Identity) -> ResourceId {
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    conn.send(
        Code::SubmitConfig,
        identity.config_payload(&challenge, proposed),
    )
    .await
    .expect("send submit-config");
    finish_configure(conn).await
}

/// After `submit-config`: expects `offer-config` then a normal close; returns the identifier.
pub async fn finish_configure(conn: &mut Conn) -> ResourceId {
    let offered = conn.expect_frame(Code::OfferConfig).await;
    let id = parse_offered_id(&offered);
    conn.expect_close(CloseKind::Normal).await;
    id
}

/// Creates a resource with a fresh Ed25519 identity on a random proposed identifier.
pub async fn create_resource(addr: SocketAddr, transport: Transport) -> (ResourceId, Identity) {
    let identity = Identity::ed25519();
    let id = create_resource_with(addr, transport, &identity).await;
    (id, identity)
}

/// Creates a resource with `identity` on a random proposed identifier; returns the
/// authoritative identifier (the proposed one, since a random identifier is free).
pub async fn create_resource_with(
    addr: SocketAddr,
    transport: Transport,
    identity: &Identity,
) -> ResourceId {
    let proposed = random_id();
    let mut conn = Conn::connect(transport, addr, &proposed).await;
    let id = configure(&mut conn, &proposed, identity).await;
    assert_eq!(id, proposed, "a free proposed identifier must be kept");
    id
}

/// Answers `require-verification` on `conn` with a valid signature. There is no success frame
/// in the contract; success shows as `offer-snapshot` or as relayed frames.
pub async fn verify(conn: &mut Conn, id: &ResourceId, identity: &Identity) {
    let challenge = conn.expect_challenge(Code::RequireVerification).await;
    conn.send(
        Code::SubmitVerification,
        identity.verify_payload(&challenge, id).to_vec(),
    )
    .await
    .expect("send submit-verification");
}

/// Connects and verifies: a peer of `id`, ready to relay (an `offer-snapshot` may follow).
pub async fn join(
    addr: SocketAddr,
    transport: Transport,
    id: &ResourceId,
    identity: &Identity,
) -> Conn {
    let mut conn = Conn::connect(transport, addr, id).await;
    verify(&mut conn, id, identity).await;
    conn
}

/// How long [`join_peers`] waits for one token before sending another.
const TOKEN_RETRY: Duration = Duration::from_millis(200);

/// Joins one peer per entry of `transports`, in order, and returns only once every one of
/// them is in the resource's verified peer set.
///
/// The contract has no "verified" frame, and a station may process a peer's
/// `submit-verification` a little after a later peer's frames, so "joined" is observed: a
/// delta a peer sends is relayed after its own join, and a peer that receives a delta was
/// joined when it was relayed. The second peer therefore sends fresh tokens until the first
/// receives one; every later peer's single token must reach all earlier peers. Offers of an
/// existing snapshot are left unread, first in each queue, for the caller.
pub async fn join_peers(
    addr: SocketAddr,
    transports: &[Transport],
    id: &ResourceId,
    identity: &Identity,
) -> Vec<Conn> {
    let mut peers: Vec<Conn> = Vec::new();
    for &transport in transports {
        let mut peer = join(addr, transport, id, identity).await;
        match peers.len() {
            0 => {}
            1 => sync_fresh(&mut peer, &mut peers[0]).await,
            _ => {
                let token = random_bytes(16);
                peer.send(Code::SubmitDelta, token.clone())
                    .await
                    .expect("send join token");
                for earlier in &mut peers {
                    earlier
                        .expect_keeping_offers(Code::ForwardDelta, &token)
                        .await;
                }
            }
        }
        peers.push(peer);
    }
    peers
}

/// Like [`sync`] for a `receiver` that has just verified and may not be joined yet: `sender`
/// repeats fresh tokens until `receiver` gets one; `receiver` then also takes every later
/// token, which it was bound to receive, so nothing stale is left in its queue. Any third
/// peer of the resource receives all the tokens, so use this with two peers only.
pub async fn sync_fresh(sender: &mut Conn, receiver: &mut Conn) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut offers = Vec::new();
    let first = 'tokens: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}: no delta from a later peer arrived within {RECV_TIMEOUT:?}",
            receiver.transport()
        );
        let token = random_bytes(16);
        sender
            .send(Code::SubmitDelta, token.clone())
            .await
            .expect("send join token");
        sent.push(token);
        let retry_at = tokio::time::Instant::now() + TOKEN_RETRY;
        loop {
            let left = retry_at.saturating_duration_since(tokio::time::Instant::now());
            match receiver.recv_timeout(left).await {
                None => break,
                Some(Event::Frame(frame)) if frame.code() == Code::OfferSnapshot => {
                    offers.push(frame);
                }
                Some(Event::Frame(frame)) if frame.code() == Code::ForwardDelta => {
                    match sent.iter().position(|t| t[..] == frame.payload()[..]) {
                        Some(index) => break 'tokens index,
                        None => panic!("joining: a delta that is not a join token arrived"),
                    }
                }
                Some(other) => panic!("joining: unexpected {other:?}"),
            }
        }
    };
    for offer in offers.into_iter().rev() {
        receiver.unread(Event::Frame(offer));
    }
    for token in &sent[first + 1..] {
        receiver
            .expect_keeping_offers(Code::ForwardDelta, token)
            .await;
    }
}

/// Proves `sender` is a joined peer and `receiver` still is: a random delta from `sender` must
/// arrive at `receiver` as `forward-delta`. `receiver` must be known to be joined (it came
/// from [`join_peers`], has received a relayed frame, or a delta it sent was received);
/// `sender` may have just verified, since its delta is relayed after its own join. For a
/// receiver that has just verified, use [`sync_fresh`].
pub async fn sync(sender: &mut Conn, receiver: &mut Conn) {
    let token = random_bytes(16);
    sender
        .send(Code::SubmitDelta, token.clone())
        .await
        .expect("send sync delta");
    receiver.expect_payload(Code::ForwardDelta, &token).await;
}

/// Makes `payload` the persisted snapshot of `id` and waits until the station shows it: a
/// throwaway peer submits it, then requests, and must be answered with that snapshot (as
/// `offer-snapshot`, or as `forward-response` should the request overtake the write).
pub async fn seed_snapshot(
    addr: SocketAddr,
    transport: Transport,
    id: &ResourceId,
    identity: &Identity,
    payload: &[u8],
) {
    let mut conn = join(addr, transport, id, identity).await;
    conn.send(Code::SubmitSnapshot, payload.to_vec())
        .await
        .expect("send submit-snapshot");
    conn.send(Code::SubmitRequest, random_bytes(8))
        .await
        .expect("send submit-request");
    loop {
        match conn.recv().await {
            Event::Frame(frame)
                if matches!(frame.code(), Code::OfferSnapshot | Code::ForwardResponse)
                    && frame.payload()[..] == payload[..] =>
            {
                break;
            }
            Event::Frame(frame) if frame.code() == Code::OfferSnapshot => {}
            other => panic!("seeding a snapshot: unexpected {other:?}"),
        }
    }
    conn.close().await;
}
