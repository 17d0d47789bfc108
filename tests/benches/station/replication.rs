//! Figure 12: a replica site 20 ms (each way) from its primary, through the test harness's
//! delay proxy (the kernel here has no netem). Replication lag at a steady write rate beside
//! the round trip over the same proxy, and the initial sync of 100,000 snapshots beside
//! copying the same bytes over the same proxy.

use anyhow::bail;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zbase_basestation::store::{Change, SqliteStore, Store};
use zbase_proto::wire::{Code, ResourceId};
use zbase_tests::netns::DelayProxy;

use crate::client;
use crate::procs::{self, Server};

/// One way, between the sites.
pub const LATENCY: Duration = Duration::from_millis(20);
/// Snapshots written on the primary each second for the lag figure.
pub const WRITE_RATE: u64 = 50;
/// Snapshots written for the lag figure.
const WRITES: u64 = 300;
/// Resources of the initial-sync figure, and the bytes of each snapshot.
pub const SYNC_RESOURCES: usize = 100_000;
/// Bytes of each snapshot of the initial-sync figure.
pub const SYNC_SNAPSHOT: usize = 1024;

/// What figure 12 measured.
pub struct Figures {
    /// Replication lag, p50 and p99, ms.
    pub lag: (f64, f64),
    /// Round trip through the proxy, p50 and p99, ms.
    pub rtt: (f64, f64),
    /// The initial sync.
    pub sync: Sync,
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or(f64::NAN)
}

/// A free port on 127.0.0.1 (for a replication port that must be known before the start).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn primary(dir: &Path) -> anyhow::Result<(Server, SocketAddr)> {
    let replication = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let server = procs::station(dir, &[("replication-listen", replication.to_string())]).await?;
    Ok((server, replication))
}

async fn replica(dir: &Path, proxy: &DelayProxy) -> anyhow::Result<Server> {
    procs::station(dir, &[("replica-of", format!("http://{}", proxy.addr))]).await
}

/// Runs figure 12 in `dir`.
pub async fn run(dir: &Path) -> anyhow::Result<Figures> {
    let (lag, rtt) = lag(&dir.join("lag")).await?;
    let sync = initial_sync(&dir.join("sync")).await?;
    Ok(Figures { lag, rtt, sync })
}

/// Lag: a writer on the primary commits numbered snapshots at [`WRITE_RATE`]; a requester on
/// the replica, pending again after each answer, is shown each snapshot once the replica's
/// cache has it. Lag = from the writer's acknowledgement (commit on the primary) to that.
async fn lag(dir: &Path) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let (primary, replication) = primary(&dir.join("primary")).await?;
    let proxy = DelayProxy::start(None, replication, LATENCY);
    let replica = replica(&dir.join("replica"), &proxy).await?;
    let key = client::new_key();
    let room = client::create(primary.addr, None, &key).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut watcher = loop {
        // The resource reaches the replica through the feed a moment after its creation;
        // until then the replica asks for a configuration and joining fails.
        if let Ok(ws) = client::join(replica.addr, None, &room).await {
            break ws;
        }
        if Instant::now() > deadline {
            bail!("the replica never learned of the resource");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client::send(&mut watcher, Code::SubmitRequest, &b"?"[..]).await?;
    let mut writer = client::join(primary.addr, None, &room).await?;
    let committed: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; WRITES as usize + 1]));
    let write_times = Arc::clone(&committed);
    let writing = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / WRITE_RATE));
        for n in 1..=WRITES {
            every.tick().await;
            client::send(&mut writer, Code::SubmitRequest, &b"?"[..]).await?;
            client::send(
                &mut writer,
                Code::SubmitSnapshot,
                Bytes::from(n.to_be_bytes().to_vec()),
            )
            .await?;
            loop {
                let frame = client::next_binary(&mut writer).await?;
                if frame[1] == Code::ForwardResponse.byte() && frame[2..] == n.to_be_bytes() {
                    write_times
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?[n as usize] =
                        Some(Instant::now());
                    break;
                }
            }
        }
        anyhow::Ok(())
    });
    let mut lags = Vec::new();
    let end = Instant::now() + Duration::from_secs(WRITES / WRITE_RATE + 30);
    while Instant::now() < end {
        let Ok(frame) =
            tokio::time::timeout(Duration::from_secs(5), client::next_binary(&mut watcher)).await
        else {
            break;
        };
        let frame = frame?;
        let seen = Instant::now();
        if frame[1] != Code::ForwardResponse.byte() {
            continue;
        }
        client::send(&mut watcher, Code::SubmitRequest, &b"?"[..]).await?;
        let Ok(bytes) = <[u8; 8]>::try_from(&frame[2..]) else {
            continue;
        };
        let n = u64::from_be_bytes(bytes);
        // The writer records its commit a moment after the station sent both answers.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let at = committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[n as usize];
        if let Some(at) = at {
            lags.push(seen.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
        if n == WRITES {
            break;
        }
    }
    writing.await??;
    let rtt = round_trips(LATENCY).await?;
    replica.stop().await;
    primary.stop().await;
    drop(proxy);
    if lags.len() < (WRITES as usize) / 2 {
        bail!(
            "only {} of {WRITES} writes were seen on the replica",
            lags.len()
        );
    }
    let mut rtt = rtt;
    Ok((
        (percentile(&mut lags, 0.5), percentile(&mut lags, 0.99)),
        (percentile(&mut rtt, 0.5), percentile(&mut rtt, 0.99)),
    ))
}

/// Round trips of one small message through a delay proxy to an echo server, ms.
async fn round_trips(delay: Duration) -> anyhow::Result<Vec<f64>> {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = echo.local_addr()?;
    tokio::spawn(async move {
        if let Ok((mut socket, _)) = echo.accept().await {
            let mut buffer = [0u8; 64];
            while let Ok(n) = socket.read(&mut buffer).await {
                if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    let proxy = DelayProxy::start(None, target, delay);
    let mut socket = tokio::net::TcpStream::connect(proxy.addr).await?;
    socket.set_nodelay(true)?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        socket.write_all(b"ping").await?;
        let mut answer = [0u8; 4];
        socket.read_exact(&mut answer).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(times)
}

/// Initial sync: a primary holding [`SYNC_RESOURCES`] snapshots, a new replica, the time until
/// it holds them all; beside the same bytes through the same kind of proxy.
async fn initial_sync(dir: &Path) -> anyhow::Result<Sync> {
    let primary_dir = dir.join("primary");
    let store = SqliteStore::open(&primary_dir.join("station.sqlite3")).await?;
    let jwk = r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    let mut seq = 0;
    let pages: Vec<Vec<Change>> = (0..SYNC_RESOURCES / 1000)
        .map(|_| {
            (0..1000)
                .map(|_| {
                    seq += 1;
                    let mut snapshot = vec![0u8; SYNC_SNAPSHOT];
                    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut snapshot);
                    Change {
                        seq,
                        id: ResourceId::from_bytes(rand::random()),
                        jwk: jwk.to_owned(),
                        snapshot: Some(Bytes::from(snapshot)),
                    }
                })
                .collect()
        })
        .collect();
    // The baseline: the same rows written into SQLite here the way the replica writes them,
    // in transactions as large as the replica's largest (32 MiB), with no network and no feed.
    let per_transaction = (32 << 20) / (SYNC_SNAPSHOT * 1000);
    let filling = Instant::now();
    for group in pages.chunks(per_transaction.max(1)) {
        store.mirror(group.concat()).await?;
    }
    store.close().await;
    let local = filling.elapsed().as_secs_f64();
    let bytes = SYNC_RESOURCES * SYNC_SNAPSHOT;
    let (primary, replication) = primary(&primary_dir).await?;
    let proxy = DelayProxy::start(None, replication, LATENCY);
    let started = Instant::now();
    let replica = replica(&dir.join("replica"), &proxy).await?;
    loop {
        let applied = replica
            .metric("zbase_replication_applied_changes_total")
            .await?;
        if applied >= SYNC_RESOURCES as f64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the replica applied {applied} of {SYNC_RESOURCES} changes in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync = started.elapsed().as_secs_f64();
    let cpu = (primary.cpu_seconds()?, replica.cpu_seconds()?);
    replica.stop().await;
    primary.stop().await;
    drop(proxy);
    let copy = copy_through_proxy(bytes).await?;
    Ok(Sync {
        seconds: sync,
        local,
        copy,
        bytes,
        cpu,
    })
}

/// The initial sync's figures.
pub struct Sync {
    /// From the replica's start to its cache holding everything, seconds.
    pub seconds: f64,
    /// The same pages written into SQLite locally, seconds.
    pub local: f64,
    /// The same bytes through the proxy, seconds.
    pub copy: f64,
    /// The snapshot bytes.
    pub bytes: usize,
    /// CPU seconds of the primary and the replica during the sync.
    pub cpu: (f64, f64),
}

/// Seconds to send `bytes` through a delay proxy to a server that reads them all.
async fn copy_through_proxy(bytes: usize) -> anyhow::Result<f64> {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = sink.local_addr()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok((mut socket, _)) = sink.accept().await {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut total = 0;
            while total < bytes {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            let _ = done.send(total);
        }
    });
    let proxy = DelayProxy::start(None, target, LATENCY);
    let chunk: Vec<u8> = (0..64 * 1024).map(|_| rand::random()).collect();
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(proxy.addr).await?;
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        socket.write_all(&chunk[..n]).await?;
        sent += n;
    }
    let received = finished.await?;
    if received < bytes {
        bail!("the copy stopped after {received} of {bytes} bytes");
    }
    Ok(started.elapsed().as_secs_f64())
}
