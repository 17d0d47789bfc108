//! A connection to a base station, on WebSocket or gRPC, in plain text or TLS: the frames of
//! the wire contract (WIRE.md) and the two handshakes, and nothing about what the payloads
//! mean. [`crate::sync`] builds on it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::frame::coding::CloseCode};
use tonic::transport::Endpoint;
use zbase_proto::pb::{self, RESOURCE_ID_METADATA, station_client::StationClient};
use zbase_proto::wire::{CHALLENGE_LEN, Challenge, Code, ResourceId};

use crate::access::AccessKey;

/// The contract's frame version.
const VERSION: u8 = 1;
/// The largest frame this client takes from a station (the station's default limit is 8 MiB).
const MAX_MESSAGE: usize = 16 << 20;
/// How long the station has to answer a step of the handshake.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait, after a send failed, for the close that says why.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long to wait for `offer-snapshot` after verifying. A station sends it at once when it
/// has one, and sends nothing when it has none, so silence this long means "none".
const OFFER_WAIT: Duration = Duration::from_secs(2);

/// How a station ended a connection (WIRE.md section 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// 1000 / OK, or the stream simply ended.
    Normal,
    /// 1001: the station is shutting down.
    GoingAway,
    /// 1002 / INVALID_ARGUMENT: the station found a protocol violation.
    Violation,
    /// 1008 / UNAUTHENTICATED: the key was refused (or replaced by a rotation).
    Refused,
    /// 1009 / OUT_OF_RANGE: a frame was too large.
    TooLarge,
    /// 1013 / UNAVAILABLE / RESOURCE_EXHAUSTED: try again later.
    Busy,
    /// Anything else, as the transport said it.
    Other(String),
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Normal => write!(f, "closed normally"),
            Close::GoingAway => write!(f, "station shutting down"),
            Close::Violation => write!(f, "protocol violation"),
            Close::Refused => write!(f, "key refused"),
            Close::TooLarge => write!(f, "frame too large"),
            Close::Busy => write!(f, "station busy or unavailable, try again later"),
            Close::Other(what) => write!(f, "{what}"),
        }
    }
}

/// Why talking to a station failed.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    /// The station URL is not one this client speaks.
    #[error(
        "station {0:?} is not a station URL: use ws://, wss://, grpc:// or grpcs:// with host:port"
    )]
    BadUrl(String),
    /// TLS could not be set up (a bad CA file, no trusted roots).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No connection could be made.
    #[error("station {url} unreachable: {detail}")]
    Unreachable {
        /// The station.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The station ended the connection.
    #[error("the station closed the connection: {0}")]
    Closed(Close),
    /// The station sent something the contract does not allow at this point.
    #[error("unexpected answer from the station: {0}")]
    Unexpected(String),
    /// The station did not answer in time.
    #[error("the station did not answer within {0:?}")]
    Timeout(Duration),
}

/// A station's address and how to reach it.
#[derive(Clone)]
pub struct Station {
    url: String,
    grpc: bool,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Station {
    /// The station at `url` (`ws://`, `wss://`, `grpc://` or `grpcs://` then `host:port`);
    /// for TLS, `ca_pem` is the only CA trusted, else the system's roots.
    pub fn parse(url: &str, ca_pem: Option<&str>) -> Result<Station, StationError> {
        let bad = || StationError::BadUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let (grpc, tls) = match scheme {
            "ws" => (false, false),
            "wss" => (false, true),
            "grpc" => (true, false),
            "grpcs" => (true, true),
            _ => return Err(bad()),
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() || authority.contains('/') {
            return Err(bad());
        }
        let tls = tls
            .then(|| client_config(ca_pem, if grpc { b"h2" } else { b"http/1.1" }))
            .transpose()?;
        Ok(Station {
            url: url.trim_end_matches('/').to_owned(),
            grpc,
            host,
            port,
            tls,
        })
    }

    /// The URL it was parsed from.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> StationError {
        StationError::Unreachable {
            url: self.url.clone(),
            detail: detail.to_string(),
        }
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    async fn dial(&self) -> Result<Box<dyn Io>, StationError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        let Some(config) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| StationError::Tls(format!("{}: {e}", self.host)))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| self.unreachable(format!("TLS handshake: {e}")))?;
        Ok(Box::new(stream))
    }

    /// Opens a connection for `id`: the station's first frame is not read yet.
    pub async fn connect(&self, id: &ResourceId) -> Result<Connection, StationError> {
        if self.grpc {
            self.connect_grpc(id).await
        } else {
            self.connect_ws(id).await
        }
    }

    async fn connect_ws(&self, id: &ResourceId) -> Result<Connection, StationError> {
        let io = self.dial().await?;
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let url = format!(
            "{scheme}://{}/v1/resources/{}",
            self.authority(),
            id.as_str()
        );
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, io, Some(config))
            .await
            .map_err(|e| self.unreachable(format!("WebSocket upgrade: {e}")))?;
        Ok(Connection(Inner::Ws(Box::new(ws))))
    }

    async fn connect_grpc(&self, id: &ResourceId) -> Result<Connection, StationError> {
        // Scheme `http` on purpose: the connector does TLS itself.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.authority()))
            .map_err(|e| self.unreachable(e))?
            .connect_timeout(ANSWER_TIMEOUT);
        let station = self.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let station = station.clone();
            async move { station.dial().await.map(hyper_util::rt::TokioIo::new) }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| self.unreachable(chain(&e)))?;
        let mut client = StationClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let value = id
            .as_str()
            .parse()
            .map_err(|_| StationError::Unexpected("identifier is not ASCII".into()))?;
        request.metadata_mut().insert(RESOURCE_ID_METADATA, value);
        match client.connect(request).await {
            Ok(response) => Ok(Connection(Inner::Grpc {
                tx: Some(tx),
                rx: Box::new(response.into_inner()),
            })),
            Err(status) => Err(StationError::Closed(close_of_status(&status))),
        }
    }

    /// Connects and answers `require-verification` with `access`; on success, returns the
    /// verified session and the snapshot the station offered, if it has one.
    pub async fn open(
        &self,
        id: &ResourceId,
        access: &AccessKey,
    ) -> Result<(Session, Option<Bytes>), StationError> {
        let mut conn = self.connect(id).await?;
        let (code, payload) = conn.recv_within(ANSWER_TIMEOUT).await?;
        if code == Code::RequireConfig {
            conn.close().await;
            return Err(StationError::Unexpected(
                "the station does not know this resource".into(),
            ));
        }
        let challenge = challenge(code, Code::RequireVerification, &payload)?;
        conn.send(
            Code::SubmitVerification,
            &access.verification(&challenge, id),
        )
        .await?;
        let mut session = Session {
            conn,
            id: *id,
            challenge,
            early: Vec::new(),
        };
        match session.conn.recv_within(OFFER_WAIT).await {
            Ok((Code::OfferSnapshot, snapshot)) => Ok((session, Some(snapshot))),
            Ok(other) => {
                session.early.push(other);
                Ok((session, None))
            }
            Err(StationError::Timeout(_)) => Ok((session, None)),
            Err(e) => Err(e),
        }
    }

    /// Whether the station knows `id` (connects, reads the first frame, hangs up).
    pub async fn exists(&self, id: &ResourceId) -> Result<bool, StationError> {
        let mut conn = self.connect(id).await?;
        let (code, _) = conn.recv_within(ANSWER_TIMEOUT).await?;
        conn.close().await;
        Ok(code == Code::RequireVerification)
    }

    /// Configures a new resource under `proposed` with `access`; returns the identifier the
    /// station assigned (another one when `proposed` was taken).
    pub async fn create(
        &self,
        proposed: &ResourceId,
        access: &AccessKey,
    ) -> Result<ResourceId, StationError> {
        let mut conn = self.connect(proposed).await?;
        let (code, payload) = conn.recv_within(ANSWER_TIMEOUT).await?;
        let challenge = challenge(code, Code::RequireConfig, &payload)?;
        conn.send(
            Code::SubmitConfig,
            &access.config_payload(&challenge, proposed),
        )
        .await?;
        let (code, payload) = conn.recv_within(ANSWER_TIMEOUT).await?;
        if code != Code::OfferConfig {
            return Err(StationError::Unexpected(format!(
                "{} instead of offer-config",
                code.name()
            )));
        }
        let assigned = std::str::from_utf8(&payload)
            .ok()
            .and_then(|text| ResourceId::parse(text).ok())
            .ok_or_else(|| StationError::Unexpected("offer-config without an identifier".into()))?;
        conn.close().await;
        Ok(assigned)
    }
}

fn challenge(code: Code, expected: Code, payload: &[u8]) -> Result<Challenge, StationError> {
    if code != expected {
        return Err(StationError::Unexpected(format!(
            "{} instead of {}",
            code.name(),
            expected.name()
        )));
    }
    <Challenge>::try_from(payload).map_err(|_| {
        StationError::Unexpected(format!(
            "a challenge of {} bytes, not {CHALLENGE_LEN}",
            payload.len()
        ))
    })
}

fn client_config(
    ca_pem: Option<&str>,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, StationError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| StationError::Tls(format!("CA file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| StationError::Tls(format!("CA file: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(StationError::Tls(
            "no trusted CA: give the station's CA with --ca FILE".into(),
        ));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StationError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn close_of_status(status: &tonic::Status) -> Close {
    match status.code() {
        tonic::Code::Ok => Close::Normal,
        tonic::Code::InvalidArgument => Close::Violation,
        tonic::Code::Unauthenticated => Close::Refused,
        tonic::Code::OutOfRange => Close::TooLarge,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => Close::Busy,
        _ => Close::Other(status.to_string()),
    }
}

fn close_of_ws(code: CloseCode) -> Close {
    match u16::from(code) {
        1000 => Close::Normal,
        1001 => Close::GoingAway,
        1002 => Close::Violation,
        1008 => Close::Refused,
        1009 => Close::TooLarge,
        1013 => Close::Busy,
        other => Close::Other(format!("close code {other}")),
    }
}

/// A byte stream a connection runs over: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection to a station for one identifier.
pub struct Connection(Inner);

enum Inner {
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
    Grpc {
        /// Frames to the station (`None` once half-closed).
        tx: Option<mpsc::Sender<pb::Frame>>,
        rx: Box<tonic::Streaming<pb::Frame>>,
    },
}

impl Connection {
    /// Sends one frame. If the station has closed the connection, the error says how (a key
    /// replaced by a rotation is a refusal, not a lost connection).
    pub async fn send(&mut self, code: Code, payload: &[u8]) -> Result<(), StationError> {
        let Err(lost) = self.send_frame(code, payload).await else {
            return Ok(());
        };
        // Frames the station sent before closing come first; read past them to the close.
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(StationError::Closed(close))) if close != Close::Normal => {
                    return Err(StationError::Closed(close));
                }
                _ => return Err(lost),
            }
        }
    }

    async fn send_frame(&mut self, code: Code, payload: &[u8]) -> Result<(), StationError> {
        let gone = || StationError::Closed(Close::Other("connection lost while sending".into()));
        match &mut self.0 {
            Inner::Ws(ws) => {
                let mut bytes = Vec::with_capacity(2 + payload.len());
                bytes.extend_from_slice(&[VERSION, code.byte()]);
                bytes.extend_from_slice(payload);
                ws.send(Message::Binary(bytes.into()))
                    .await
                    .map_err(|_| gone())
            }
            Inner::Grpc { tx, .. } => {
                let tx = tx.as_ref().ok_or_else(gone)?;
                tx.send(pb::Frame {
                    version: VERSION.into(),
                    code: code.byte().into(),
                    payload: Bytes::copy_from_slice(payload),
                })
                .await
                .map_err(|_| gone())
            }
        }
    }

    /// The next frame, as code and payload; the end of the connection is an error.
    pub async fn recv(&mut self) -> Result<(Code, Bytes), StationError> {
        match &mut self.0 {
            Inner::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => return split(bytes),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(StationError::Closed(
                            frame.map_or(Close::Normal, |f| close_of_ws(f.code)),
                        ));
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(StationError::Unexpected("a text message".into()));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        return Err(StationError::Closed(Close::Other(e.to_string())));
                    }
                    None => return Err(StationError::Closed(Close::Normal)),
                }
            },
            Inner::Grpc { rx, .. } => match rx.message().await {
                Ok(Some(frame)) => {
                    let code = u8::try_from(frame.code)
                        .map_err(|_| StationError::Unexpected(format!("frame code {}", frame.code)))
                        .and_then(station_code)?;
                    if frame.version != u32::from(VERSION) {
                        return Err(StationError::Unexpected(format!(
                            "version {}",
                            frame.version
                        )));
                    }
                    Ok((code, frame.payload))
                }
                Ok(None) => Err(StationError::Closed(Close::Normal)),
                Err(status) => Err(StationError::Closed(close_of_status(&status))),
            },
        }
    }

    /// [`Connection::recv`] within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<(Code, Bytes), StationError> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| StationError::Timeout(wait))?
    }

    /// Ends the connection from this side.
    pub async fn close(&mut self) {
        match &mut self.0 {
            Inner::Ws(ws) => {
                let _ = (**ws).close(None).await;
            }
            Inner::Grpc { tx, .. } => *tx = None,
        }
    }
}

fn split(bytes: Bytes) -> Result<(Code, Bytes), StationError> {
    if bytes.len() < 3 || bytes[0] != VERSION {
        return Err(StationError::Unexpected("a malformed frame".into()));
    }
    Ok((station_code(bytes[1])?, bytes.slice(2..)))
}

/// A code only a station sends, or the station broke the contract.
fn station_code(byte: u8) -> Result<Code, StationError> {
    Code::from_byte(byte)
        .filter(|code| !code.is_client())
        .ok_or_else(|| StationError::Unexpected(format!("frame code 0x{byte:02x}")))
}

/// How a snapshot write ended ([`Session::write_confirmed`]).
#[derive(Debug)]
pub struct Write {
    /// The station made this snapshot durable. If not, another landed first: it is the last
    /// of `seen`, and this one may or may not follow it.
    pub confirmed: bool,
    /// The snapshots and deltas of others that arrived meanwhile, in order.
    pub seen: Vec<Bytes>,
}

/// A verified session: frames of one resource, both ways.
pub struct Session {
    conn: Connection,
    id: ResourceId,
    challenge: Challenge,
    /// A frame read while waiting for `offer-snapshot`, handed out first.
    early: Vec<(Code, Bytes)>,
}

impl Session {
    /// The resource.
    pub fn id(&self) -> &ResourceId {
        &self.id
    }

    /// Sends one frame.
    pub async fn send(&mut self, code: Code, payload: &[u8]) -> Result<(), StationError> {
        self.conn.send(code, payload).await
    }

    /// The next frame.
    pub async fn recv(&mut self) -> Result<(Code, Bytes), StationError> {
        if let Some(frame) = self.early.pop() {
            return Ok(frame);
        }
        self.conn.recv().await
    }

    /// [`Session::recv`] within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<(Code, Bytes), StationError> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| StationError::Timeout(wait))?
    }

    /// Replaces the resource's access key `current` (the one this session proved) by `next`
    /// (docs/KEY-ROTATION.md); returns once the station says the new key is durable. Frames
    /// that arrive meanwhile are dropped: the caller resynchronises after a rotation.
    pub async fn rotate(
        &mut self,
        current: &AccessKey,
        next: &AccessKey,
    ) -> Result<(), StationError> {
        // A station without extension R1 treats rotate-key as an unassigned code.
        let no_r1 = |e: StationError| {
            match e {
            StationError::Closed(Close::Violation) => StationError::Unexpected(
                "the station cannot rotate keys (no extension R1, docs/KEY-ROTATION.md): upgrade it"
                    .into(),
            ),
            other => other,
        }
        };
        let payload = current.rotation_payload(next, &self.challenge, &self.id);
        self.conn
            .send(Code::RotateKey, &payload)
            .await
            .map_err(no_r1)?;
        loop {
            let (code, payload) = self.conn.recv_within(ANSWER_TIMEOUT).await.map_err(no_r1)?;
            if code == Code::KeyRotated {
                self.challenge = challenge(code, Code::KeyRotated, &payload)?;
                return Ok(());
            }
        }
    }

    /// Writes `snapshot` and waits, at most `timeout` in all, for the station to say which
    /// snapshot it made durable first.
    ///
    /// A `submit-request` first makes this session pending: the first snapshot made durable
    /// after it comes back as `forward-response` (WIRE.md), which is how a client learns its
    /// write is durable. One deadline covers the whole wait: other devices' frames must not
    /// stretch it past the station's pending window, after which no answer would come.
    pub async fn write_confirmed(
        &mut self,
        snapshot: &[u8],
        timeout: Duration,
    ) -> Result<Write, StationError> {
        self.send(Code::SubmitRequest, &[0]).await?;
        self.send(Code::SubmitSnapshot, snapshot).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let (code, payload) = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| StationError::Timeout(timeout))??;
            match code {
                Code::ForwardResponse if payload.as_ref() == snapshot => {
                    return Ok(Write {
                        confirmed: true,
                        seen,
                    });
                }
                Code::ForwardResponse => {
                    seen.push(payload);
                    return Ok(Write {
                        confirmed: false,
                        seen,
                    });
                }
                Code::OfferSnapshot | Code::ForwardDelta => seen.push(payload),
                _ => {}
            }
        }
    }

    /// Ends the session.
    pub async fn close(mut self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_urls_name_a_transport_and_a_port() {
        for (url, grpc, host, port) in [
            ("ws://127.0.0.1:8080", false, "127.0.0.1", 8080),
            ("grpc://station.example:443/", true, "station.example", 443),
            ("ws://[::1]:9", false, "::1", 9),
        ] {
            let station = Station::parse(url, None).expect(url);
            assert_eq!(
                (station.grpc, station.host.as_str(), station.port),
                (grpc, host, port)
            );
        }
        for bad in [
            "127.0.0.1:8080",
            "http://h:1",
            "ws://h",
            "ws://h:x",
            "ws://:1",
            "ws://h:1/v1/resources",
            "",
        ] {
            assert!(
                matches!(Station::parse(bad, None), Err(StationError::BadUrl(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Station::parse("wss://h:1", Some("not a certificate")),
            Err(StationError::Tls(_))
        ));
    }
}
