//! Figure 2: many rooms of two peers each, every pair ping-ponging one delta at a time.
//!
//! Each pair is one task owning both sockets: A sends, B receives and answers, A receives, and
//! so on; so every pair has exactly one delta in flight and the server sees as many concurrent
//! exchanges as there are pairs. Frames delivered are counted over a fixed window after a
//! warm-up, then every pair stops after its current exchange.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, MEASURED, WARM, Ws};
use crate::load::Target;

/// Rooms the issue asks for; fewer when the open-file limit cannot hold two sockets each.
pub const WANTED_PAIRS: usize = 10_000;
/// Descriptors kept free for everything that is not a peer socket (store, listener, pipes).
const FD_RESERVE: u64 = 300;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(4);
/// A delta that has not arrived after this long is lost; the pair gives up.
const STALL: Duration = Duration::from_secs(10);

/// Pairs this machine can run: each pair is two sockets in the station *and* two in this
/// process, and neither may exceed the hard open-file limit, which an unprivileged container
/// cannot raise.
pub fn pairs_for(nofile: u64) -> usize {
    let fit = usize::try_from(nofile.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    // Round down to hundreds so the printed count reads as a choice, not an accident.
    WANTED_PAIRS.min(fit / 100 * 100)
}

/// Aggregate throughput of the pairs.
#[derive(Debug, Clone, Copy)]
pub struct Pairs {
    /// Deltas delivered per second, all pairs together.
    pub frames_per_s: f64,
    /// Pairs that lost a delta or their connection.
    pub stalled: u64,
    /// Seconds spent creating rooms and opening every connection.
    pub setup_s: f64,
    /// Server CPU seconds per second of wall time over the window.
    pub server_cpu: f64,
}

/// The next measured delta (warm-up duplicates are skipped), or an error after [`STALL`].
async fn next_measured(ws: &mut Ws) -> anyhow::Result<()> {
    tokio::time::timeout(STALL, async {
        loop {
            let bytes = client::next_binary(ws).await?;
            if let Some((MEASURED, _)) = client::parse_delta(&bytes) {
                return Ok(());
            }
        }
    })
    .await?
}

async fn pair(
    mut a: Ws,
    mut b: Ws,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // A's delta reaching B proves both joined (a delta is only relayed between verified peers).
    let mut open = false;
    for _ in 0..100 {
        a.send(Message::Binary(client::delta(epoch, Instant::now(), WARM)))
            .await?;
        if let Ok(bytes) =
            tokio::time::timeout(Duration::from_millis(100), client::next_binary(&mut b)).await
        {
            bytes?;
            open = true;
            break;
        }
    }
    if !open {
        bail!("the pair never connected");
    }
    let delta = || Message::Binary(client::delta(epoch, Instant::now(), MEASURED));
    while !stop.is_cancelled() {
        a.send(delta()).await?;
        next_measured(&mut b).await?;
        delivered.fetch_add(1, Ordering::Relaxed);
        b.send(delta()).await?;
        next_measured(&mut a).await?;
        delivered.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Runs `pairs` rooms of two.
pub async fn run(target: &Target, pairs: usize) -> anyhow::Result<Pairs> {
    let setup = Instant::now();
    let rooms = target.rooms(pairs).await?;
    let joined = target.join_all(&rooms, 2).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let epoch = Instant::now();
    let tasks: Vec<_> = joined
        .into_iter()
        .filter_map(|mut two| {
            let b = two.pop()?;
            let a = two.pop()?;
            Some(tokio::spawn(pair(
                a,
                b,
                epoch,
                delivered.clone(),
                stop.clone(),
            )))
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let (t0, d0, cpu0) = (
        Instant::now(),
        delivered.load(Ordering::Relaxed),
        target.server.cpu_seconds()?,
    );
    tokio::time::sleep(MEASURE).await;
    let seconds = t0.elapsed().as_secs_f64();
    let frames = delivered.load(Ordering::Relaxed) - d0;
    let server_cpu = (target.server.cpu_seconds()? - cpu0) / seconds;
    stop.cancel();
    let mut stalled = 0;
    for task in tasks {
        if !matches!(task.await, Ok(Ok(()))) {
            stalled += 1;
        }
    }
    Ok(Pairs {
        frames_per_s: frames as f64 / seconds,
        stalled,
        setup_s,
        server_cpu,
    })
}
