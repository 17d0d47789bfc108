//! Figure 5: complete handshakes per second, each on a fresh TCP connection.
//!
//! Station: connect, upgrade, answer `require-verification`, and wait for `offer-snapshot`,
//! which a resource with a stored snapshot sends exactly when verification succeeded (the
//! contract has no other success frame), then close and wait for the server's end. Bare:
//! connect, upgrade, close. [`WORKERS`] clients loop concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use zbase_proto::wire::Code;

use crate::client::{self, Room};
use crate::load::Target;

/// Clients handshaking at once.
pub const WORKERS: usize = 16;
const WARMUP: Duration = Duration::from_millis(500);
/// Per round; rounds alternate between the station and the baseline.
const MEASURE: Duration = Duration::from_secs(2);

/// Handshakes per second and their mean duration.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    /// Completed per second.
    pub per_s: f64,
    /// Mean time of one, milliseconds.
    pub mean_ms: f64,
}

/// Makes `payload` the stored snapshot of `room` and waits until the station offers it back.
async fn seed(target: &Target, room: &Room) -> anyhow::Result<()> {
    let mut ws = client::join(target.addr(), target.tls(), room).await?;
    let payload = b"seed snapshot".to_vec();
    client::send(&mut ws, Code::SubmitSnapshot, payload.clone()).await?;
    client::send(&mut ws, Code::SubmitRequest, vec![1u8]).await?;
    loop {
        let bytes = tokio::time::timeout(Duration::from_secs(30), client::next_binary(&mut ws))
            .await
            .context("seed snapshot not offered within 30 s")??;
        if bytes[2..] == payload[..] {
            break;
        }
    }
    client::close(ws).await;
    Ok(())
}

async fn one(target: &Target, room: &Room) -> anyhow::Result<()> {
    let mut ws = client::join(target.addr(), target.tls(), room).await?;
    if target.station {
        client::expect(&mut ws, Code::OfferSnapshot).await?;
    }
    client::close(ws).await;
    Ok(())
}

/// Runs [`WORKERS`] handshake loops for a warm-up and a measured window.
pub async fn run(target: &Arc<Target>) -> anyhow::Result<Handshakes> {
    let rooms = target.rooms(WORKERS).await?;
    if target.station {
        for room in &rooms {
            seed(target, room).await?;
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let busy_ns = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = rooms
        .into_iter()
        .map(|room| {
            let (target, done, busy_ns, stop) =
                (target.clone(), done.clone(), busy_ns.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    one(&target, &room).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let (t0, n0, b0) = (
        Instant::now(),
        done.load(Ordering::Relaxed),
        busy_ns.load(Ordering::Relaxed),
    );
    tokio::time::sleep(MEASURE).await;
    let seconds = t0.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed) - n0;
    let busy = busy_ns.load(Ordering::Relaxed) - b0;
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    Ok(Handshakes {
        per_s: count as f64 / seconds,
        mean_ms: busy as f64 / 1e6 / count.max(1) as f64,
    })
}
