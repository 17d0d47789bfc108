//! Figure 4: resident memory per idle verified connection.
//!
//! RSS of the server process (VmRSS) is read after its rooms exist and again once every
//! connection is open, verified (the station's `zbase_verified_peers` gauge says so) and idle
//! for a moment; the growth divided by the count is the figure. Rooms are created first so
//! that their cost is not charged to connections: 100 rooms × 100 peers, the shape of a busy
//! document, not 10,000 one-peer resources.

use std::time::Duration;

use anyhow::{Context as _, bail};
use ed25519_dalek::Signer as _;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use zbase_proto::pb::{self, RESOURCE_ID_METADATA, station_client::StationClient};
use zbase_proto::wire::{Challenge, Code, VERSION, verify_message};

use crate::client::{self, Room};
use crate::load::{SETUP_CONCURRENCY, Target};

/// Rooms, and connections in each.
pub const ROOMS: usize = 100;
/// Peers per room; `ROOMS * PER_ROOM` connections in all.
pub const PER_ROOM: usize = 100;
/// gRPC streams share HTTP/2 connections, as a native client multiplexes them.
pub const STREAMS_PER_H2: usize = 100;
/// Time for the servers' allocators and queues to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

/// RSS growth over the connections.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Connections (or streams) opened.
    pub connections: usize,
    /// RSS before, KiB.
    pub before_kib: u64,
    /// RSS after, KiB.
    pub after_kib: u64,
}

impl Memory {
    /// KiB of RSS per connection.
    pub fn per_connection_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.connections as f64
    }
}

/// Idle WebSocket connections, verified on the station.
pub async fn websocket(target: &Target) -> anyhow::Result<Memory> {
    let rooms = target.rooms(ROOMS).await?;
    tokio::time::sleep(SETTLE).await;
    let before_kib = target.server.rss_kib()?;
    let connections = target.join_all(&rooms, PER_ROOM).await?;
    if target.station {
        target
            .server
            .await_verified(ROOMS * PER_ROOM, Duration::from_secs(60))
            .await?;
    }
    tokio::time::sleep(SETTLE).await;
    let after_kib = target.server.rss_kib()?;
    drop(connections);
    Ok(Memory {
        connections: ROOMS * PER_ROOM,
        before_kib,
        after_kib,
    })
}

/// One verified gRPC stream, kept open by holding both of its halves.
type Stream = (mpsc::Sender<pb::Frame>, tonic::Streaming<pb::Frame>);

async fn grpc_stream(channel: Channel, room: &Room) -> anyhow::Result<Stream> {
    let key = room
        .key
        .as_ref()
        .context("gRPC streams need a station resource")?;
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(RESOURCE_ID_METADATA, room.id.as_str().parse()?);
    let mut inbound = StationClient::new(channel)
        .connect(request)
        .await?
        .into_inner();
    let first = inbound
        .message()
        .await?
        .context("stream ended before a challenge")?;
    if first.code != u32::from(Code::RequireVerification.byte()) {
        bail!("expected require-verification, got code {}", first.code);
    }
    let challenge = Challenge::try_from(&first.payload[..])?;
    let signature = key.sign(&verify_message(&challenge, &room.id));
    tx.send(pb::Frame {
        version: VERSION.into(),
        code: Code::SubmitVerification.byte().into(),
        payload: signature.to_bytes().to_vec().into(),
    })
    .await?;
    Ok((tx, inbound))
}

/// Idle verified gRPC streams on the station, [`STREAMS_PER_H2`] per HTTP/2 connection.
pub async fn grpc(target: &Target) -> anyhow::Result<Memory> {
    let rooms = target.rooms(ROOMS).await?;
    tokio::time::sleep(SETTLE).await;
    let before_kib = target.server.rss_kib()?;
    let total = ROOMS * PER_ROOM;
    let mut channels = Vec::new();
    for _ in 0..total.div_ceil(STREAMS_PER_H2) {
        let channel = Endpoint::from_shared(format!("http://{}", target.addr()))?
            .tcp_nodelay(true)
            .local_address(Some(client::next_source()))
            .connect()
            .await?;
        channels.push(channel);
    }
    let streams: Vec<Stream> = futures::stream::iter(0..total)
        .map(|n| grpc_stream(channels[n / STREAMS_PER_H2].clone(), &rooms[n % ROOMS]))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    target
        .server
        .await_verified(total, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let after_kib = target.server.rss_kib()?;
    drop(streams);
    Ok(Memory {
        connections: total,
        before_kib,
        after_kib,
    })
}
