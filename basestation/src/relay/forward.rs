//! Relaying a connection that reached a pod other than its resource's home: the frames go, as
//! they are, to the home pod's internal port (`zbase.v1.Station/Connect` over HTTP/2), and the
//! home's frames and termination come back. The home runs the session; this pod only carries
//! bytes, counts them, and turns a frame that cannot even be parsed into the termination the
//! home would have sent, since such bytes cannot travel as a frame.
//!
//! gRPC rather than a plain stream: HTTP/2 multiplexes every relayed session between two pods
//! over one connection with per-stream flow control, the message framing is the one the public
//! gRPC transport already uses, and the same service serves both ports.

use super::connection::{Incoming, Outgoing};
use super::registry::Relay;
use crate::cluster::Route;
use crate::session::{CloseReason, NOT_A_FRAME, rejection};
use crate::telemetry::DirectionLabel;
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::net::IpAddr;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use zbase_proto::pb::station_client::StationClient;
use zbase_proto::pb::{self, RESOURCE_ID_METADATA};
use zbase_proto::wire::{Frame, ResourceId, VERSION};

/// Metadata carrying the client's IP from the pod it reached to the home pod, for logs.
pub const CLIENT_IP_METADATA: &str = "zbase-client-ip";
/// Metadata (a trailer) carrying a termination's exact reason between pods: a gRPC status
/// alone cannot tell 1001 from 1013, which a relayed WebSocket client must still see.
pub const CLOSE_REASON_METADATA: &str = "zbase-close-reason";

/// How long opening a relayed session may take before the client is told to retry.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames buffered towards the home pod; HTTP/2 flow control is the real buffer.
const UPSTREAM_BUFFER: usize = 4;
/// Protobuf framing around a frame's fields (as on the public gRPC port).
const MESSAGE_OVERHEAD: usize = 16;

/// How a relayed session ended.
enum Ended {
    /// The client left; nothing more to send it.
    ClientGone,
    /// Send the client this termination.
    Close(CloseReason),
}

impl Relay {
    /// The channel to `id`'s home pod when it is another pod (`None`: this one), for calls
    /// that must run in the home's resource task; `Moved` while no pod can be home.
    pub(crate) async fn home_elsewhere(
        &self,
        id: &ResourceId,
    ) -> Result<Option<Channel>, CloseReason> {
        match self.route(id).await {
            Route::Local => Ok(None),
            Route::Remote { address, .. } => self.pod_channel(&address).map(Some),
            Route::Settling | Route::Unavailable => Err(CloseReason::Moved),
        }
    }

    /// The shared channel to the pod at `address`, created on first use.
    fn pod_channel(&self, address: &str) -> Result<Channel, CloseReason> {
        if let Some(channel) = self.inner.pods.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|_| CloseReason::Internal("bad pod address"))?
            .connect_timeout(OPEN_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = match &self.inner.internal_tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(crate::tls::dial(tls.clone())),
        };
        self.inner.pods.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Carries one client connection for `id` to the home pod at `address` until either side
/// ends it; returns the reason, already sent to the client.
pub(super) async fn forward<I, O>(
    relay: &Relay,
    id: ResourceId,
    ip: IpAddr,
    address: &str,
    inbound: &mut I,
    outbound: &mut O,
) -> CloseReason
where
    I: Stream<Item = Incoming> + Unpin + Send,
    O: Sink<Outgoing> + Unpin + Send,
{
    let ended = match open(relay, id, ip, address).await {
        Ok((upstream, downstream)) => {
            let shutdown = relay.shutdown().clone();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => Ended::Close(CloseReason::ShuttingDown),
                ended = pump_up(relay, inbound, upstream) => ended,
                ended = pump_down(relay, downstream, outbound) => ended,
            }
        }
        Err(reason) => Ended::Close(reason),
    };
    match ended {
        Ended::ClientGone => CloseReason::ClientClosed,
        Ended::Close(reason) => {
            let _ = outbound.send(Outgoing::Close(reason)).await;
            reason
        }
    }
}

type Upstream = futures::channel::mpsc::Sender<pb::Frame>;

/// Opens the session on the home pod.
async fn open(
    relay: &Relay,
    id: ResourceId,
    ip: IpAddr,
    address: &str,
) -> Result<(Upstream, tonic::Streaming<pb::Frame>), CloseReason> {
    let channel = relay.pod_channel(address)?;
    let limit = relay.limits().frame_max_bytes + MESSAGE_OVERHEAD;
    let mut client = StationClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let (upstream, frames) = futures::channel::mpsc::channel(UPSTREAM_BUFFER);
    let mut request = tonic::Request::new(frames);
    let metadata = request.metadata_mut();
    if let Ok(value) = MetadataValue::try_from(id.as_str()) {
        metadata.insert(RESOURCE_ID_METADATA, value);
    }
    if let Ok(value) = MetadataValue::try_from(ip.to_string()) {
        metadata.insert(CLIENT_IP_METADATA, value);
    }
    match tokio::time::timeout(OPEN_TIMEOUT, client.connect(request)).await {
        Ok(Ok(response)) => Ok((upstream, response.into_inner())),
        Ok(Err(status)) => Err(reason_of(&status)),
        Err(_) => {
            tracing::warn!(%address, "the home pod did not answer in time; the client is told to retry");
            Err(CloseReason::Moved)
        }
    }
}

/// Client to home, until the client leaves or sends something that is not a frame.
async fn pump_up<I>(relay: &Relay, inbound: &mut I, mut upstream: Upstream) -> Ended
where
    I: Stream<Item = Incoming> + Unpin + Send,
{
    let relayed = relay
        .metrics()
        .relayed_frames
        .get_or_create(&DirectionLabel { direction: "out" })
        .clone();
    loop {
        match inbound.next().await.unwrap_or(Incoming::Closed) {
            Incoming::Frame(Ok(frame)) => {
                let message = pb::Frame {
                    version: VERSION.into(),
                    code: frame.code().byte().into(),
                    payload: frame.into_payload(),
                };
                if upstream.send(message).await.is_err() {
                    // The home ended the stream; its termination arrives downstream.
                    return std::future::pending().await;
                }
                relayed.inc();
            }
            Incoming::Frame(Err(error)) => return Ended::Close(rejection(&error)),
            Incoming::NotAFrame => return Ended::Close(NOT_A_FRAME),
            Incoming::Closed => return Ended::ClientGone,
        }
    }
}

/// Home to client, until the home ends the session (its reason goes to the client).
async fn pump_down<O>(
    relay: &Relay,
    mut downstream: tonic::Streaming<pb::Frame>,
    outbound: &mut O,
) -> Ended
where
    O: Sink<Outgoing> + Unpin + Send,
{
    let relayed = relay
        .metrics()
        .relayed_frames
        .get_or_create(&DirectionLabel { direction: "in" })
        .clone();
    let limit = relay.limits().frame_max_bytes;
    loop {
        match downstream.message().await {
            Ok(Some(message)) => {
                relayed.inc();
                let Ok(frame) =
                    Frame::from_parts(message.version, message.code, message.payload, limit)
                else {
                    return Ended::Close(CloseReason::Internal("home pod sent a bad frame"));
                };
                if outbound
                    .send(Outgoing::Frame(frame.encode()))
                    .await
                    .is_err()
                {
                    return Ended::ClientGone;
                }
            }
            Ok(None) => {
                let reason = downstream
                    .trailers()
                    .await
                    .ok()
                    .flatten()
                    .and_then(|trailers| reason_in(&trailers))
                    .unwrap_or(CloseReason::Normal);
                return Ended::Close(reason);
            }
            Err(status) => return Ended::Close(reason_of(&status)),
        }
    }
}

/// The termination a home pod's status stands for.
fn reason_of(status: &tonic::Status) -> CloseReason {
    if let Some(reason) = reason_in(status.metadata()) {
        return reason;
    }
    match status.code() {
        tonic::Code::Ok => CloseReason::Normal,
        // The home pod went away mid-session (killed, restarting): the client retries and
        // reaches the new home.
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            CloseReason::Moved
        }
        _ => CloseReason::Internal("unexpected status from the home pod"),
    }
}

fn reason_in(metadata: &tonic::metadata::MetadataMap) -> Option<CloseReason> {
    metadata
        .get(CLOSE_REASON_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(CloseReason::from_label)
}
