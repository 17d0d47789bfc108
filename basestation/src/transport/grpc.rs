//! gRPC: `zbase.v1.Station/Connect`, frames as messages, the identifier in metadata.

use super::close::{grpc_code, public_text};
use crate::relay::{
    CLIENT_IP_METADATA, CLOSE_REASON_METADATA, Incoming, Origin, Outgoing, Relay, run_connection,
};
use crate::session::CloseReason;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt, future};
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};
use zbase_proto::pb;
use zbase_proto::pb::station_server::{Station, StationServer};
use zbase_proto::wire::{Frame, FrameError};

/// Protobuf framing around a `Frame`'s fields: three tags, two small varints and a length.
const MESSAGE_OVERHEAD: usize = 16;
/// Frames buffered between the driver and tonic; the driver's own queue is the real buffer.
///
/// The channel is `futures`' rather than tokio's: tokio's allocates its slots in blocks of 32
/// (about 1.3 KiB of `pb::Frame` per stream, whatever the bound), while `futures`' allocates a
/// node per queued message, so an idle stream holds only the channel's header.
const STREAM_BUFFER: usize = 4;

/// The Station service, ready to be routed: clients on the public port, other pods on the
/// internal one.
pub fn service(relay: Relay, origin: Origin) -> StationServer<StationService> {
    let limit = relay.limits().frame_max_bytes;
    StationServer::new(StationService { relay, origin })
        // One message over the limit still decodes, so our own check answers it; anything
        // larger is refused by tonic with OUT_OF_RANGE, the same code.
        .max_decoding_message_size(limit + MESSAGE_OVERHEAD)
        .max_encoding_message_size(limit + MESSAGE_OVERHEAD)
}

/// The gRPC face of the relay.
#[derive(Debug)]
pub struct StationService {
    relay: Relay,
    origin: Origin,
}

type FrameStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Frame, Status>> + Send>>;

#[tonic::async_trait]
impl Station for StationService {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::Frame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let id = pb::resource_id(request.metadata())?;
        let ip = match self.origin {
            Origin::Client => super::client_addr(request.extensions()).ip(),
            // The pod the client reached says who it is; the internal port trusts its pods.
            Origin::Pod => request
                .metadata()
                .get(CLIENT_IP_METADATA)
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.parse().ok())
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
        };
        let transport = match self.origin {
            Origin::Client => "grpc",
            Origin::Pod => "internal",
        };
        let limit = self.relay.limits().frame_max_bytes;
        let inbound = request
            .into_inner()
            .map(move |message| incoming(message, limit));
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let outbound = tx
            .with(|outgoing: Outgoing| future::ready(Ok::<_, mpsc::SendError>(message(outgoing))));
        let relay = self.relay.clone();
        let tracker = relay.connections().clone();
        tracker.spawn(run_connection(
            relay,
            id,
            ip,
            transport,
            self.origin,
            inbound,
            Box::pin(outbound),
        ));
        Ok(Response::new(Box::pin(rx)))
    }
}

fn incoming(message: Result<pb::Frame, Status>, limit: usize) -> Incoming {
    match message {
        Ok(frame) => Incoming::Frame(Frame::from_parts(
            frame.version,
            frame.code,
            frame.payload,
            limit,
        )),
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            Incoming::Frame(Err(FrameError::Oversize {
                len: limit + 1,
                max: limit,
            }))
        }
        Err(_) => Incoming::Closed,
    }
}

fn message(outgoing: Outgoing) -> Result<pb::Frame, Status> {
    match outgoing {
        Outgoing::Frame(bytes) => Ok(pb::Frame::from_encoded(bytes)),
        Outgoing::Close(reason) => Err(termination(reason)),
    }
}

/// The status that ends a stream for `reason`: the contract's code and text, and the exact
/// reason in a trailer for a pod relaying the stream (WebSocket clients need it to tell 1001
/// from 1013, which share UNAVAILABLE).
fn termination(reason: CloseReason) -> Status {
    // Ending with an OK status closes the stream normally.
    let text = match reason {
        CloseReason::Normal | CloseReason::ClientClosed => "",
        reason => public_text(reason),
    };
    let mut status = Status::new(grpc_code(reason), text);
    status.metadata_mut().insert(
        CLOSE_REASON_METADATA,
        tonic::metadata::MetadataValue::from_static(reason.label()),
    );
    status
}
