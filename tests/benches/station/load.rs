//! What every figure starts from: a server (station or bare) and rooms on it, and a bounded
//! way to open many connections at once.

use std::net::SocketAddr;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use futures::{StreamExt as _, TryStreamExt as _};
use rustls::ClientConfig;

use crate::client::{self, Room, Ws};
use crate::procs::Server;

/// Handshakes in flight while setting up: enough to keep both cores busy, few enough that no
/// handshake waits near the station's 10 s timeout.
pub const SETUP_CONCURRENCY: usize = 128;

/// The server a figure runs against.
pub struct Target {
    /// The child process.
    pub server: Server,
    /// Whether it is the station (resources must be created and peers verified).
    pub station: bool,
    key: Arc<SigningKey>,
    /// How clients reach it over TLS; `None` for plaintext.
    tls: Option<Arc<ClientConfig>>,
}

impl Target {
    /// The real station.
    pub fn station(server: Server) -> Target {
        Target {
            server,
            station: true,
            key: client::new_key(),
            tls: None,
        }
    }

    /// The bare broadcast server.
    pub fn bare(server: Server) -> Target {
        Target {
            server,
            station: false,
            key: client::new_key(),
            tls: None,
        }
    }

    /// The same server, reached over TLS with `config` (it must serve TLS: `tls.rs`).
    pub fn with_tls(mut self, config: Arc<ClientConfig>) -> Target {
        self.tls = Some(config);
        self
    }

    /// The TLS client configuration every connection to it uses; `None` for plaintext.
    pub fn tls(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `count` rooms: resources created on the station (one key for all, which the station
    /// neither knows nor cares about), or fresh room names on the bare server.
    pub async fn rooms(&self, count: usize) -> anyhow::Result<Vec<Room>> {
        let key = self.station.then(|| self.key.clone());
        rooms(self.addr(), self.tls(), key, count, SETUP_CONCURRENCY).await
    }

    /// Opens `per_room` verified connections to each room, `SETUP_CONCURRENCY` at a time;
    /// returned grouped by room, in the rooms' order.
    pub async fn join_all(&self, rooms: &[Room], per_room: usize) -> anyhow::Result<Vec<Vec<Ws>>> {
        join_all(self.addr(), self.tls(), rooms, per_room, SETUP_CONCURRENCY).await
    }
}

/// `count` rooms on the server at `addr` (over TLS when `tls` is given): station resources created with `key`, `concurrency`
/// handshakes at a time, or (without a key) fresh bare-server room names. [`Target::rooms`]
/// for a process that has no [`Target`] (a pairs client, `pairs.rs`).
pub async fn rooms(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    key: Option<Arc<SigningKey>>,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Room>> {
    let Some(key) = key else {
        return Ok((0..count).map(|_| Room::bare()).collect());
    };
    futures::stream::iter(0..count)
        .map(|_| client::create(addr, tls, &key))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// Opens `per_room` connections to each room, `concurrency` at a time; returned grouped by
/// room, in the rooms' order. [`Target::join_all`] for a process that has no [`Target`].
pub async fn join_all(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    rooms: &[Room],
    per_room: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Vec<Ws>>> {
    let mut joined: Vec<(usize, Ws)> = futures::stream::iter(
        rooms
            .iter()
            .enumerate()
            .flat_map(|(index, room)| std::iter::repeat_n((index, room), per_room)),
    )
    .map(|(index, room)| async move {
        Ok::<_, anyhow::Error>((index, client::join(addr, tls, room).await?))
    })
    .buffer_unordered(concurrency.max(1))
    .try_collect()
    .await?;
    let mut grouped: Vec<Vec<Ws>> = (0..rooms.len())
        .map(|_| Vec::with_capacity(per_room))
        .collect();
    joined.sort_by_key(|(index, _)| *index);
    for (index, ws) in joined {
        grouped[index].push(ws);
    }
    Ok(grouped)
}
