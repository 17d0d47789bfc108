//! Figure 2: many rooms of two peers each, every pair ping-ponging one delta at a time.
//!
//! Each pair is one task owning both sockets: A sends, B receives and answers, A receives, and
//! so on; so every pair has exactly one delta in flight and the server sees as many concurrent
//! exchanges as there are pairs. Frames delivered are counted over a fixed window after a
//! warm-up, then every pair stops after its current exchange.
//!
//! The pairs' sockets are spread over several client processes (this bench binary,
//! re-executed with [`ROLE_ENV`] set, as the bare server is), because one process may not hold
//! them all: the hard open-file limit here is 20,000 per process. The parent coordinates them
//! over their stdin and stdout, one line per step:
//!
//! ```text
//! client -> parent   ready SETUP_SECONDS         rooms created, every connection open
//! parent -> client   go                          start the pairs (warm-up begins)
//! parent -> client   mark                        the window opens: note the time and count
//! parent -> client   stop                        the window closes; stop after this exchange
//! client -> parent   done FRAMES SECONDS STALLED delivered in the window, its length
//! client -> parent   error MESSAGE               instead of either, then it exits
//! ```
//!
//! The server is the other bound, and the one that decides the count: it holds one descriptor
//! per client connection in a single process under the same limit (see [`pairs_for`]).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::SinkExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, MEASURED, WARM, Ws};
use crate::load::{self, SETUP_CONCURRENCY, Target};

/// Rooms the issue asks for; fewer when a server cannot hold two sockets each (see
/// [`pairs_for`]).
pub const WANTED_PAIRS: usize = 10_000;
/// Descriptors a server needs besides its peer sockets. The station holds 16 with no peer
/// (stdio, listener, epoll and its waker, the SQLite database, WAL and shared-memory files,
/// the writer connection) and up to 3 more for each of its 4 SQLite reader connections; the
/// bare server fewer. The rest is room for sockets being accepted or closed.
pub const SERVER_FD_RESERVE: u64 = 100;
/// Descriptors a client process keeps free for everything that is not a peer socket.
const CLIENT_FD_RESERVE: u64 = 300;
/// The count is rounded down to a multiple of this, so it reads as a choice, not an accident.
const STEP: usize = 50;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(4);
/// A delta that has not arrived after this long is lost; the pair gives up.
const STALL: Duration = Duration::from_secs(10);
/// Bound on one client's setup (creating its rooms and opening every connection).
const SETUP_LIMIT: Duration = Duration::from_secs(300);

/// Set in the environment of the re-executed bench binary to make it a pairs client; the
/// value is the server's address.
pub const ROLE_ENV: &str = "ZBASE_BENCH_ROLE_PAIRS";
/// The client's number of pairs.
const COUNT_ENV: &str = "ZBASE_BENCH_PAIRS_COUNT";
/// `1` when the server is the station (create resources, answer verification).
const STATION_ENV: &str = "ZBASE_BENCH_PAIRS_STATION";
/// The first source address the parent reserved for the client (`client::use_sources_from`).
const SOURCE_ENV: &str = "ZBASE_BENCH_PAIRS_SOURCE";
/// Setup handshakes in flight, the client's share of [`SETUP_CONCURRENCY`].
const CONCURRENCY_ENV: &str = "ZBASE_BENCH_PAIRS_CONCURRENCY";

/// Pairs this machine can run. Each pair is two connections, and the server (station or bare,
/// one process each) holds one descriptor per connection under the hard open-file limit
/// `nofile`, which cannot be raised here, plus [`SERVER_FD_RESERVE`] of its own. So 10,000
/// pairs (20,000 connections) need more than a 20,000 limit; this is the largest multiple of
/// [`STEP`] that fits. The client side is no bound: it is spread over [`clients_for`]
/// processes.
pub fn pairs_for(nofile: u64) -> usize {
    let fit = usize::try_from(nofile.saturating_sub(SERVER_FD_RESERVE) / 2).unwrap_or(usize::MAX);
    WANTED_PAIRS.min(fit / STEP * STEP)
}

/// Client processes needed for `pairs` pairs when each may hold `nofile` descriptors: at
/// least two, so the load generator is never one process's descriptor table.
pub fn clients_for(pairs: usize, nofile: u64) -> usize {
    let per_client =
        usize::try_from(nofile.saturating_sub(CLIENT_FD_RESERVE) / 2).unwrap_or(usize::MAX);
    pairs.div_ceil(per_client.max(1)).max(2)
}

/// `pairs` split as evenly as possible over `clients`.
fn shares(pairs: usize, clients: usize) -> Vec<usize> {
    (0..clients)
        .map(|i| pairs / clients + usize::from(i < pairs % clients))
        .collect()
}

/// Aggregate throughput of the pairs.
#[derive(Debug, Clone)]
pub struct Pairs {
    /// Deltas delivered per second, all pairs of all clients together.
    pub frames_per_s: f64,
    /// Pairs that lost a delta or their connection.
    pub stalled: u64,
    /// Seconds spent creating rooms and opening every connection (clients in parallel).
    pub setup_s: f64,
    /// Server CPU seconds per second of wall time over the window.
    pub server_cpu: f64,
    /// Pairs of each client process.
    pub shares: Vec<usize>,
    /// Descriptors the server held before any client, and in the middle of the window.
    pub server_fds: (usize, usize),
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

/// Runs `pairs` rooms of two against `target`, spread over client processes that may each
/// hold `nofile` descriptors.
pub async fn run(target: &Target, pairs: usize, nofile: u64) -> anyhow::Result<Pairs> {
    let idle_fds = target.server.open_fds()?;
    let shares = shares(pairs, clients_for(pairs, nofile));
    let concurrency = (SETUP_CONCURRENCY / shares.len()).max(1);
    let setup = Instant::now();
    let mut clients = Vec::with_capacity(shares.len());
    for &share in &shares {
        clients.push(PairsClient::spawn(target, share, concurrency)?);
    }
    futures::future::try_join_all(
        clients
            .iter_mut()
            .map(|c| c.expect("ready", 1, SETUP_LIMIT)),
    )
    .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    for client in &mut clients {
        client.send("go").await?;
    }
    tokio::time::sleep(WARMUP).await;
    let (t0, cpu0) = (Instant::now(), target.server.cpu_seconds()?);
    for client in &mut clients {
        client.send("mark").await?;
    }
    tokio::time::sleep(MEASURE / 2).await;
    let busy_fds = target.server.open_fds()?;
    tokio::time::sleep(MEASURE / 2).await;
    for client in &mut clients {
        client.send("stop").await?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let server_cpu = (target.server.cpu_seconds()? - cpu0) / seconds;
    let done = futures::future::try_join_all(
        clients
            .iter_mut()
            .map(|c| c.expect("done", 3, STALL + Duration::from_secs(30))),
    )
    .await?;
    for client in clients {
        client.finish().await;
    }
    // Each client's rate over its own window (they open and close within a millisecond of
    // each other), summed.
    let frames_per_s = done
        .iter()
        .map(|d| if d[1] > 0.0 { d[0] / d[1] } else { 0.0 })
        .sum();
    Ok(Pairs {
        frames_per_s,
        stalled: done.iter().map(|d| d[2] as u64).sum(),
        setup_s,
        server_cpu,
        shares,
        server_fds: (idle_fds, busy_fds),
    })
}

/// A pairs client process, as the parent sees it.
struct PairsClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PairsClient {
    fn spawn(target: &Target, pairs: usize, concurrency: usize) -> anyhow::Result<PairsClient> {
        // One address per room creation and per connection, with room to spare.
        let sources = u32::try_from(pairs * 4)?;
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, target.addr().to_string())
            .env(COUNT_ENV, pairs.to_string())
            .env(STATION_ENV, if target.station { "1" } else { "0" })
            .env(SOURCE_ENV, client::reserve_sources(sources).to_string())
            .env(CONCURRENCY_ENV, concurrency.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn a pairs client process")?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        Ok(PairsClient {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The client's next line, which must be `word` and `fields` numbers.
    async fn expect(
        &mut self,
        word: &str,
        fields: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<f64>> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .with_context(|| format!("a pairs client sent no {word:?} within {within:?}"))??
            .with_context(|| format!("a pairs client exited before {word:?}"))?;
        if let Some(error) = line.strip_prefix("error ") {
            bail!("a pairs client failed: {error}");
        }
        let values = line
            .strip_prefix(word)
            .and_then(|rest| {
                rest.split_whitespace()
                    .map(|v| v.parse().ok())
                    .collect::<Option<Vec<f64>>>()
            })
            .filter(|values| values.len() == fields)
            .with_context(|| format!("a pairs client sent {line:?}, expected {word:?}"))?;
        Ok(values)
    }

    /// Waits for the client to exit (it does after `done`), so its sockets are closed before
    /// the server is stopped; kills it if it lingers.
    async fn finish(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The pairs client role: runs its share of the pairs against the server named by
/// [`ROLE_ENV`] as the parent's commands say, and reports on stdout.
pub fn client_main() -> anyhow::Result<()> {
    fn env<T: std::str::FromStr>(name: &str) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let value = std::env::var(name).with_context(|| format!("{name} is not set"))?;
        value.parse().with_context(|| format!("{name}={value}"))
    }
    let addr: SocketAddr = env(ROLE_ENV)?;
    let pairs: usize = env(COUNT_ENV)?;
    let station = env::<u8>(STATION_ENV)? == 1;
    client::use_sources_from(env(SOURCE_ENV)?);
    let concurrency: usize = env(CONCURRENCY_ENV)?;
    // A worker per core, as the single load-generating process had: one per client (its share
    // of the cores) halved the delivered rate of both servers here, so the clients, not the
    // server, would have set the figure.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(client_run(addr, station, pairs, concurrency));
    if let Err(error) = &result {
        println!("error {}", format!("{error:#}").replace('\n', " "));
    }
    // Exit without waiting for the pair tasks' sockets to be dropped one by one.
    runtime.shutdown_background();
    result
}

/// Reads the next command from the parent, which must be `word`.
async fn command(
    commands: &mut Lines<BufReader<tokio::io::Stdin>>,
    word: &str,
) -> anyhow::Result<()> {
    match commands.next_line().await? {
        Some(line) if line.trim() == word => Ok(()),
        Some(line) => bail!("expected {word:?} from the parent, got {line:?}"),
        None => bail!("the parent closed stdin before {word:?}"),
    }
}

async fn client_run(
    addr: SocketAddr,
    station: bool,
    pairs: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let setup = Instant::now();
    let key = station.then(client::new_key);
    // Plaintext only: figure 2 measures the relay, and its clients are separate processes.
    let rooms = load::rooms(addr, None, key, pairs, concurrency).await?;
    let joined = load::join_all(addr, None, &rooms, 2, concurrency).await?;
    println!("ready {}", setup.elapsed().as_secs_f64());
    command(&mut commands, "go").await?;
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
    let started = command(&mut commands, "mark").await;
    let (t0, d0) = (Instant::now(), delivered.load(Ordering::Relaxed));
    let ended = match started {
        Ok(()) => command(&mut commands, "stop").await,
        Err(error) => Err(error),
    };
    let seconds = t0.elapsed().as_secs_f64();
    let frames = delivered.load(Ordering::Relaxed) - d0;
    stop.cancel();
    ended?;
    let mut stalled = 0;
    for task in tasks {
        if !matches!(task.await, Ok(Ok(()))) {
            stalled += 1;
        }
    }
    println!("done {frames} {seconds} {stalled}");
    Ok(())
}
