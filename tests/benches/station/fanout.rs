//! Figure 1: one sender, 100 receivers in one room, 256-byte deltas.
//!
//! Throughput is measured closed-loop: the sender keeps at most [`WINDOW`] deltas ahead of the
//! slowest receiver, so the server is always busy but no queue ever overflows (the station's
//! per-peer queue is 1024 frames, and an overflow would disconnect the peer, not measure it).
//! Latency is measured open-loop at a fixed offered rate, each delta carrying its send time;
//! sender and receivers share one clock because they share this process.
//!
//! The same code measures a room whose peers are spread over several pods ([`Peers`] says
//! where each one connects, and every pod's CPU is counted): figure 7 (one sender, one
//! receiver, relayed or not) and figure 8 (figure 1's room across three pods). With a TLS
//! client configuration in [`Peers`], every peer connects over TLS: figure 9.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use rustls::ClientConfig;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, MEASURED, Room, WARM, Ws};
use crate::load::{SETUP_CONCURRENCY, Target};
use crate::procs::Server;

/// Receivers of the one sender.
pub const RECEIVERS: usize = 100;
/// Deltas the sender may be ahead of its slowest receiver.
const WINDOW: u64 = 256;
/// Throughput is counted after this much running...
const WARMUP: Duration = Duration::from_millis(500);
/// ...for this long (per round; rounds alternate between the servers).
const MEASURE: Duration = Duration::from_secs(2);

/// One fan-out's room and where each of its peers connects.
pub struct Peers {
    /// The room every peer joins.
    pub room: Room,
    /// Where the sender connects.
    pub sender: SocketAddr,
    /// Where each receiver connects, one entry per receiver.
    pub receivers: Vec<SocketAddr>,
    /// The TLS client configuration every peer connects with; `None` for plaintext.
    pub tls: Option<Arc<ClientConfig>>,
}

impl Peers {
    /// A fresh room on `target` with the sender and `receivers` receivers all connected to it.
    pub async fn on(target: &Target, receivers: usize) -> anyhow::Result<Peers> {
        Ok(Peers {
            room: target.rooms(1).await?.remove(0),
            sender: target.addr(),
            receivers: vec![target.addr(); receivers],
            tls: target.tls().cloned(),
        })
    }
}

/// CPU seconds used so far by every server process a fan-out runs through.
fn cpu_seconds(servers: &[&Server]) -> anyhow::Result<f64> {
    servers.iter().map(|server| server.cpu_seconds()).sum()
}

/// What the receivers share with the sender.
struct Fan {
    epoch: Instant,
    counts: Vec<AtomicU64>,
    gone: Vec<AtomicBool>,
    warmed: AtomicUsize,
    lost: AtomicUsize,
    progress: Notify,
    stop: CancellationToken,
    record: bool,
}

impl Fan {
    fn new(record: bool, receivers: usize) -> Arc<Fan> {
        Arc::new(Fan {
            epoch: Instant::now(),
            counts: (0..receivers).map(|_| AtomicU64::new(0)).collect(),
            gone: (0..receivers).map(|_| AtomicBool::new(false)).collect(),
            warmed: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            progress: Notify::new(),
            stop: CancellationToken::new(),
            record,
        })
    }

    /// Measured deltas delivered so far, over all receivers.
    fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The slowest live receiver's count; `None` when every receiver is gone.
    fn slowest(&self) -> Option<u64> {
        self.counts
            .iter()
            .zip(&self.gone)
            .filter(|(_, gone)| !gone.load(Ordering::Relaxed))
            .map(|(count, _)| count.load(Ordering::Relaxed))
            .min()
    }
}

/// Counts (and, when recording, times) every measured delta until stopped or disconnected.
async fn receive(mut ws: Ws, fan: Arc<Fan>, index: usize) -> Vec<u32> {
    let mut latencies_us = Vec::new();
    let mut warmed = false;
    loop {
        let message = tokio::select! {
            biased;
            _ = fan.stop.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Binary(bytes))) => match client::parse_delta(&bytes) {
                Some((WARM, _)) if !warmed => {
                    warmed = true;
                    fan.warmed.fetch_add(1, Ordering::Relaxed);
                }
                Some((MEASURED, sent)) => {
                    if fan.record {
                        let now = fan.epoch.elapsed().as_nanos() as u64;
                        let micros = now.saturating_sub(sent) / 1000;
                        latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                    let count = fan.counts[index].fetch_add(1, Ordering::Relaxed) + 1;
                    // Waking the sender on every delivery would cost more than the delivery.
                    if count.is_multiple_of(16) {
                        fan.progress.notify_one();
                    }
                }
                _ => {}
            },
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                // Disconnected (on the station: its queue overflowed).
                fan.gone[index].store(true, Ordering::Relaxed);
                fan.lost.fetch_add(1, Ordering::Relaxed);
                fan.progress.notify_one();
                break;
            }
        }
    }
    latencies_us
}

/// Joins the sender and receivers of `peers`, starts the receivers, and sends warm-up deltas
/// until every receiver has one: only then is every path open (on the station, verification
/// has no success frame of its own; through another pod, the relay to the home is open too).
async fn setup(
    peers: &Peers,
    fan: &Arc<Fan>,
) -> anyhow::Result<(Ws, Vec<tokio::task::JoinHandle<Vec<u32>>>)> {
    let room = &peers.room;
    let joined: Vec<Ws> = futures::stream::iter(&peers.receivers)
        .map(|addr| client::join(*addr, peers.tls.as_ref(), room))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let mut sender = client::join(peers.sender, peers.tls.as_ref(), room).await?;
    let tasks = joined
        .into_iter()
        .enumerate()
        .map(|(index, ws)| tokio::spawn(receive(ws, fan.clone(), index)))
        .collect();
    let receivers = peers.receivers.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fan.warmed.load(Ordering::Relaxed) + fan.lost.load(Ordering::Relaxed) < receivers {
        if Instant::now() > deadline {
            bail!("receivers did not all join within 30 s");
        }
        sender
            .send(Message::Binary(client::delta(
                fan.epoch,
                Instant::now(),
                WARM,
            )))
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((sender, tasks))
}

/// Delivered frames per second, closed-loop.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Deltas delivered to receivers per second.
    pub frames_per_s: f64,
    /// Receivers disconnected during the run.
    pub lost: usize,
    /// Server CPU seconds per second of wall time over the window (2.0 = both cores).
    pub server_cpu: f64,
}

/// Runs the closed-loop fan-out of one sender to [`RECEIVERS`] receivers, all on `target`, for
/// [`WARMUP`] + [`MEASURE`].
pub async fn throughput(target: &Target) -> anyhow::Result<Throughput> {
    throughput_among(&Peers::on(target, RECEIVERS).await?, &[&target.server]).await
}

/// Runs the closed-loop fan-out of `peers` for [`WARMUP`] + [`MEASURE`]; `servers` are the
/// processes whose CPU the frames cost (every pod, for a deployment).
pub async fn throughput_among(peers: &Peers, servers: &[&Server]) -> anyhow::Result<Throughput> {
    let fan = Fan::new(false, peers.receivers.len());
    let (mut sender, tasks) = setup(peers, &fan).await?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut window_start: Option<(Instant, u64, f64)> = None;
    let result = loop {
        let now = Instant::now();
        if window_start.is_none() && now - start >= WARMUP {
            window_start = Some((now, fan.total(), cpu_seconds(servers)?));
        }
        if now - start >= WARMUP + MEASURE
            && let Some((t0, delivered0, cpu0)) = window_start
        {
            let seconds = (now - t0).as_secs_f64();
            break Throughput {
                frames_per_s: (fan.total() - delivered0) as f64 / seconds,
                lost: fan.lost.load(Ordering::Relaxed),
                server_cpu: (cpu_seconds(servers)? - cpu0) / seconds,
            };
        }
        let Some(slowest) = fan.slowest() else {
            bail!("every receiver was disconnected");
        };
        if sent >= slowest + WINDOW {
            tokio::select! {
                _ = fan.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            continue;
        }
        sender
            .send(Message::Binary(client::delta(fan.epoch, now, MEASURED)))
            .await?;
        sent += 1;
    };
    fan.stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(result)
}

/// Delivery latency at a fixed offered rate.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median delivery latency, microseconds.
    pub p50_us: u32,
    /// 99th percentile delivery latency, microseconds.
    pub p99_us: u32,
    /// Fraction of the deltas × receivers that arrived.
    pub delivered: f64,
    /// Rate the sender actually achieved (below `rate` when the server pushed back).
    pub achieved_rate: f64,
    /// Receivers disconnected during the run.
    pub lost: usize,
}

/// Sends `rate` deltas per second for `duration` to [`RECEIVERS`] receivers, all on `target`.
pub async fn latency(target: &Target, rate: u64, duration: Duration) -> anyhow::Result<Latency> {
    latency_among(&Peers::on(target, RECEIVERS).await?, rate, duration).await
}

/// Sends `rate` deltas per second for `duration` among `peers`, open-loop, stamping each with
/// the instant it is handed to the socket, then waits (bounded) for the stragglers.
pub async fn latency_among(
    peers: &Peers,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let receivers = peers.receivers.len();
    let fan = Fan::new(true, receivers);
    let (mut sender, tasks) = setup(peers, &fan).await?;
    let total = rate * duration.as_secs();
    let interval = Duration::from_secs(1) / u32::try_from(rate)?;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = start + interval * u32::try_from(sent)?;
        let now = Instant::now();
        if due > now {
            // tokio's timer has 1 ms resolution: sends come in bursts of rate/1000, each
            // stamped when it is actually sent, not when it was due.
            tokio::time::sleep_until(due.into()).await;
            continue;
        }
        sender
            .send(Message::Binary(client::delta(fan.epoch, now, MEASURED)))
            .await?;
        sent += 1;
    }
    let achieved_rate = total as f64 / start.elapsed().as_secs_f64();
    // Wait for stragglers while deliveries still progress: an overloaded server may have
    // dropped frames (bare) or peers (station) that will never arrive.
    let mut last = (fan.total(), Instant::now());
    while fan.slowest().is_some_and(|slowest| slowest < total)
        && last.1.elapsed() < Duration::from_millis(500)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if fan.total() != last.0 {
            last = (fan.total(), Instant::now());
        }
    }
    fan.stop.cancel();
    let mut samples = Vec::with_capacity((total as usize) * receivers);
    for task in tasks {
        samples.extend(task.await?);
    }
    samples.sort_unstable();
    let percentile = |p: f64| {
        samples
            .get(((samples.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(u32::MAX)
    };
    Ok(Latency {
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        delivered: samples.len() as f64 / (total as f64 * receivers as f64),
        achieved_rate,
        lost: fan.lost.load(Ordering::Relaxed),
    })
}

/// Delivered frames per second of each round.
pub fn rates(rounds: &[Throughput]) -> Vec<f64> {
    rounds.iter().map(|t| t.frames_per_s).collect()
}

/// Median cores the servers kept busy over the rounds.
pub fn cpu(rounds: &[Throughput]) -> f64 {
    crate::median(rounds.iter().map(|t| t.server_cpu).collect())
}

/// Median frames delivered per server CPU-second: the servers' own cost, whatever the load
/// generator could drive.
pub fn efficiency(rounds: &[Throughput]) -> f64 {
    crate::median(
        rounds
            .iter()
            .map(|t| t.frames_per_s / t.server_cpu)
            .collect(),
    )
}

/// Receivers disconnected over all rounds.
pub fn lost(rounds: &[Throughput]) -> usize {
    rounds.iter().map(|t| t.lost).sum()
}
