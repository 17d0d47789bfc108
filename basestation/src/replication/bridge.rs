//! Deltas and requests between the peers of one resource on different sites.
//!
//! A replica's resource opens a bridge (one `Bridge` stream, identifier in the metadata) while
//! it has verified peers of its own. On the primary the bridge joins the resource's peers as a
//! peer that is never offered a snapshot, so the primary fans a replica's delta out to its own
//! clients and to every other replica's bridge, and sends the replica everything else. Only
//! deltas and requests cross: snapshots travel by the change feed, which is what makes them
//! durable first. Like the contract's deltas, bridged frames may be lost (a bridge that is
//! behind drops, and one being re-opened after a broken link misses what passed meanwhile).

use super::site::{Upstream, with_epoch};
use crate::relay::{Relay, SiteLink, Uplink};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use zbase_proto::pb::{self, RESOURCE_ID_METADATA};
use zbase_proto::wire::{Code, Frame, ResourceId};

/// This site's frames buffered towards the primary for one resource before they are dropped.
const UP_QUEUE: usize = 256;
/// How long opening a bridge may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between attempts to re-open a broken bridge: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Frames in the stream towards the other site; HTTP/2 flow control is the real buffer.
const STREAM_BUFFER: usize = 4;

impl Uplink for Upstream {
    fn open(&self, id: ResourceId, to_peers: mpsc::Sender<Bytes>) -> Option<mpsc::Sender<Bytes>> {
        // A primary's peers are the ones every bridge joins; it has nothing upstream.
        if !self.replica() {
            return None;
        }
        let (tx, from_peers) = mpsc::channel(UP_QUEUE);
        tokio::spawn(carry(self.clone(), id, from_peers, to_peers));
        Some(tx)
    }
}

/// The replica's end of one resource's bridge: open, carry both ways, re-open after a break,
/// until the resource drops its sender.
async fn carry(
    upstream: Upstream,
    id: ResourceId,
    mut from_peers: mpsc::Receiver<Bytes>,
    to_peers: mpsc::Sender<Bytes>,
) {
    let mut backoff = BACKOFF.0;
    loop {
        if !upstream.replica() {
            // Promoted: this site's peers are the primary's now, joined by the others' bridges.
            return;
        }
        match session(&upstream, &id, &mut from_peers, &to_peers).await {
            Break::Closed => return,
            Break::Moved => {
                backoff = BACKOFF.0;
                continue;
            }
            Break::Lost { carried } => {
                if carried {
                    backoff = BACKOFF.0;
                }
            }
        }
        // Frames that wait out a broken link would arrive stale; deltas may be lost.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                frame = from_peers.recv() => if frame.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// How one bridge stream ended.
enum Break {
    /// The resource closed the bridge (no peer of this site is left).
    Closed,
    /// This site follows another primary now (a switchover or failover): bridge to it.
    Moved,
    /// The stream failed or never opened; `carried` if it worked for a while.
    Lost { carried: bool },
}

async fn session(
    upstream: &Upstream,
    id: &ResourceId,
    from_peers: &mut mpsc::Receiver<Bytes>,
    to_peers: &mpsc::Sender<Bytes>,
) -> Break {
    let mut following = upstream.watch_following();
    let Some(primary) = following.borrow_and_update().clone() else {
        return Break::Lost { carried: false };
    };
    let (mut up, frames) = futures::channel::mpsc::channel(STREAM_BUFFER);
    let mut request = with_epoch(frames.map(pb::Frame::from_encoded), upstream.epoch());
    match MetadataValue::try_from(id.as_str()) {
        Ok(value) => {
            request.metadata_mut().insert(RESOURCE_ID_METADATA, value);
        }
        // An identifier is 43 base64url characters, always a valid header value.
        Err(_) => return Break::Closed,
    }
    let mut client = primary.client.clone();
    let mut down = match tokio::time::timeout(OPEN_TIMEOUT, client.bridge(request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(_)) | Err(_) => return Break::Lost { carried: false },
    };
    let mut carried = false;
    loop {
        tokio::select! {
            // A lost feed alone keeps the bridge: deltas may still pass while the feed
            // reconnects. Another primary followed is a new home for it.
            Ok(()) = following.changed() => {
                if !upstream.replica() {
                    // Promoted: the other sites' bridges come to this one now.
                    return Break::Closed;
                }
                if following
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|now| now.url != primary.url)
                {
                    return Break::Moved;
                }
            }
            frame = from_peers.recv() => match frame {
                Some(frame) => {
                    if up.send(frame).await.is_err() {
                        return Break::Lost { carried };
                    }
                    carried = true;
                }
                None => return Break::Closed,
            },
            incoming = down.message() => match incoming {
                Ok(Some(frame)) => {
                    // The primary relays only these two; anything else is not for clients.
                    let code = u8::try_from(frame.code).ok().and_then(Code::from_byte);
                    if let Some(code @ (Code::ForwardDelta | Code::ForwardRequest)) = code
                        && let Ok(frame) = Frame::new(code, frame.payload)
                    {
                        let _ = to_peers.try_send(frame.encode());
                        carried = true;
                    }
                }
                Ok(None) | Err(_) => return Break::Lost { carried },
            },
        }
    }
}

/// The stream a bridge sends the other site.
pub(super) type FrameStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::Frame, Status>> + Send>>;

/// The primary's end of a bridge: the replica's deltas and requests in, this site's out.
pub(super) async fn serve(
    relay: &Relay,
    request: Request<Streaming<pb::Frame>>,
) -> Result<Response<FrameStream>, Status> {
    let id = pb::resource_id(request.metadata())?;
    let link = relay
        .join_site(id)
        .await
        .map_err(|reason| Status::unavailable(format!("cannot bridge: {}", reason.label())))?;
    let inbound = request.into_inner();
    let (tx, rx) = futures::channel::mpsc::channel(STREAM_BUFFER);
    tokio::spawn(pump(link, inbound, tx));
    Ok(Response::new(Box::pin(rx)))
}

async fn pump(
    mut link: SiteLink,
    mut inbound: Streaming<pb::Frame>,
    mut outbound: futures::channel::mpsc::Sender<Result<pb::Frame, Status>>,
) {
    loop {
        tokio::select! {
            frame = link.next() => match frame {
                Some(frame) => {
                    if outbound.send(Ok(pb::Frame::from_encoded(frame))).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            incoming = inbound.next() => {
                let Some(Ok(frame)) = incoming else { return };
                let delivered = match u8::try_from(frame.code).ok().and_then(Code::from_byte) {
                    Some(Code::SubmitDelta) if !frame.payload.is_empty() => link.delta(frame.payload).await,
                    Some(Code::SubmitRequest) if !frame.payload.is_empty() => link.request(frame.payload).await,
                    _ => {
                        let status = Status::invalid_argument("a bridge carries submit-delta and submit-request frames only");
                        let _ = outbound.send(Err(status)).await;
                        return;
                    }
                };
                if !delivered {
                    return;
                }
            }
        }
    }
}
