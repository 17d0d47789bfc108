//! The baseline: a bare tokio-tungstenite broadcast server, what one writes in an afternoon.
//!
//! The request path names a room; every binary message a client sends is queued, verbatim and
//! without a copy (`Bytes` is shared), to every other client of its room. Each connection is
//! one task that selects between its socket and its bounded outgoing queue, the same shape as
//! the station's connection driver, with the same queue depth (1024). It has no handshake, no
//! verification, no store, no limits and no metrics: everything the station adds is what the
//! ratio measures. Its WebSocket buffers are the station's (16 KiB read, 16 KiB write) rather
//! than the library's 128 KiB default read buffer: tungstenite zero-fills its whole read
//! buffer before every read, so the default makes each idle connection hold 128 KiB resident,
//! and every relayed payload (a `Bytes` sharing that buffer) forces a fresh 128 KiB allocation
//! for the next read, which visibly slowed the fan-out here. A baseline should be the
//! strongest simple server, not a strawman.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Set in the environment of the re-executed bench binary to make it this server.
pub const ROLE_ENV: &str = "ZBASE_BENCH_ROLE_BARE";
/// The one stdout line, followed by the address.
pub const LISTENING_PREFIX: &str = "bare listening on ";
/// Outgoing queue per client, as the station's default `--peer-queue-frames`.
const QUEUE: usize = 1024;
/// WebSocket read and write buffer sizes, as the station sets them.
const BUFFER: usize = 16 * 1024;

type Rooms = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::Sender<Bytes>>>>>;

/// Runs the server until killed, on a multi-thread runtime like the station's.
pub fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{LISTENING_PREFIX}{}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    let next = AtomicU64::new(0);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors: back off as the station does, rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(stream, rooms.clone(), id));
    }
}

async fn connection(stream: TcpStream, rooms: Rooms, me: u64) {
    let mut path = String::new();
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER);
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    lock(&rooms).entry(path.clone()).or_default().insert(me, tx);
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => broadcast(&rooms, &path, me, bytes),
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            Some(bytes) = rx.recv() => {
                if ws.send(Message::Binary(bytes)).await.is_err() {
                    break;
                }
            }
        }
    }
    {
        let mut rooms = lock(&rooms);
        if let Some(room) = rooms.get_mut(&path) {
            room.remove(&me);
            if room.is_empty() {
                rooms.remove(&path);
            }
        }
    }
    // Completes the closing handshake if the client started it.
    let _ = ws.close(None).await;
}

fn broadcast(rooms: &Rooms, path: &str, from: u64, bytes: Bytes) {
    if let Some(room) = lock(rooms).get(path) {
        for (peer, tx) in room {
            if *peer != from {
                // A full queue drops the message: the bare server has no resync story.
                let _ = tx.try_send(bytes.clone());
            }
        }
    }
}

fn lock(
    rooms: &Rooms,
) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, mpsc::Sender<Bytes>>>> {
    rooms.lock().unwrap_or_else(PoisonError::into_inner)
}
