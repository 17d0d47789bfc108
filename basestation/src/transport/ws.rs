//! WebSocket: `GET /v1/resources/{identifier}`; one binary message carries one frame.

use super::close::{public_text, websocket_code};
use crate::relay::{Incoming, Origin, Outgoing, Relay, run_connection};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt, future};
use zbase_proto::wire::{Frame, FrameError, ResourceId};

/// Bytes read from the socket at a time, per connection.
const READ_BUFFER: usize = 1024;
/// Bytes gathered before a write reaches the socket; every send flushes anyway.
const WRITE_BUFFER: usize = 4 * 1024;

/// The WebSocket routes. Any path under `/v1/resources/` that is not exactly one valid
/// identifier is refused with 400 before any upgrade (WIRE.md section 7).
pub fn router(relay: Relay) -> axum::Router {
    axum::Router::new()
        .route("/v1/resources/{*rest}", get(upgrade))
        .route("/v1/resources", get(invalid))
        .route("/v1/resources/", get(invalid))
        .with_state(relay)
}

async fn invalid() -> Response {
    bad_identifier()
}

fn bad_identifier() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "the path must be /v1/resources/{identifier}: 43 characters of canonical unpadded base64url\n",
    )
        .into_response()
}

async fn upgrade(
    State(relay): State<Relay>,
    Path(rest): Path<String>,
    extensions: Extensions,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(id) = ResourceId::parse(&rest) else {
        return bad_identifier();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let addr = super::client_addr(&extensions);
    let limit = relay.limits().frame_max_bytes;
    // One byte over the limit is still read, so the common oversize case is answered by the
    // same check as on gRPC; anything larger is cut off by the library and answered the same.
    ws.max_message_size(limit + 1)
        .max_frame_size(limit + 1)
        // The read buffer is allocated (and zeroed) per connection, so it is most of an idle
        // connection's memory; large frames still arrive whole because the library reserves
        // a frame's announced length. Measured in `make bench` (memory per connection).
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| connection(relay, id, addr.ip(), socket))
}

async fn connection(relay: Relay, id: ResourceId, ip: std::net::IpAddr, socket: WebSocket) {
    let limit = relay.limits().frame_max_bytes;
    let (sink, stream) = socket.split();
    let inbound = stream.filter_map(move |message| future::ready(incoming(message, limit)));
    let outbound =
        sink.with(|outgoing: Outgoing| future::ready(Ok::<_, axum::Error>(message(outgoing))));
    let tracker = relay.connections().clone();
    tracker
        .track_future(run_connection(
            relay,
            id,
            ip,
            "websocket",
            Origin::Client,
            Box::pin(inbound),
            Box::pin(outbound),
        ))
        .await;
}

fn incoming(message: Result<Message, axum::Error>, limit: usize) -> Option<Incoming> {
    match message {
        Ok(Message::Binary(bytes)) => Some(Incoming::Frame(Frame::decode(bytes, limit))),
        Ok(Message::Text(_)) => Some(Incoming::NotAFrame),
        Ok(Message::Ping(_) | Message::Pong(_)) => None,
        Ok(Message::Close(_)) => Some(Incoming::Closed),
        Err(error) if is_capacity(&error) => Some(Incoming::Frame(Err(FrameError::Oversize {
            len: limit + 1,
            max: limit,
        }))),
        Err(_) => Some(Incoming::Closed),
    }
}

/// True when the library refused a message for its size.
fn is_capacity(error: &axum::Error) -> bool {
    // axum hides the WebSocket library's error type; its message is the stable part.
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

fn message(outgoing: Outgoing) -> Message {
    match outgoing {
        Outgoing::Frame(bytes) => Message::Binary(bytes),
        Outgoing::Close(reason) => Message::Close(Some(CloseFrame {
            code: websocket_code(reason),
            reason: public_text(reason).into(),
        })),
    }
}
