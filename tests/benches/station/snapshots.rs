//! Figures 3 and 6: durable snapshot writes from 64 concurrent writers, on the station's
//! embedded SQLite store (3) and on its PostgreSQL store (6).
//!
//! On the station a write counts only once it is observable as durable: each writer, a
//! verified peer alone on its own resource, sends `submit-snapshot` and then `submit-request`,
//! and its write is complete when that exact snapshot comes back as `forward-response`, which
//! the station sends only after the store reports the commit fsynced (WIRE.md section 6). So
//! the figure is end to end: socket, relay, group commit, fsync, and back. The store's own
//! write-latency histogram is read as well, to split the time between disk and relay.
//!
//! The baseline is raw SQLite doing the same upserts into the same table (schema and pragmas as
//! the station's migration: STRICT, unique seq index, WAL, synchronous=FULL) in the same kind
//! of temporary directory: 64 tasks each with one write in flight, one writer connection that
//! commits every queued upsert in one transaction. Same concurrency, same row, same disk;
//! everything else the station does is what the ratio measures.
//!
//! For PostgreSQL the baseline is the same loop against a fresh database of the same server
//! the station writes to, with the station's schema (its migration, run verbatim) and the
//! station's statements: each batch updates the snapshots, then takes its sequence numbers
//! from the counter row in one statement, then commits. Only the store differs between the
//! two figures: writers, window and counting are one implementation.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use zbase_proto::wire::Code;

use crate::client::{self, Ws};
use crate::load::Target;

/// Concurrent writers, as the issue asks.
pub const WRITERS: usize = 64;
/// Bytes per snapshot: a small encrypted document.
pub const SNAPSHOT_LEN: usize = 1024;
const WARMUP: Duration = Duration::from_millis(500);
/// Per round; rounds alternate between the station and the baseline.
const MEASURE: Duration = Duration::from_secs(2);

/// Durable writes per second, and where the time went.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    /// Writes per second completed (acknowledged durable) over the window.
    pub per_s: f64,
    /// Mean end-to-end time of one write as a writer saw it, milliseconds.
    pub mean_ms: f64,
    /// Mean time from submission to commit inside the station's store (its histogram),
    /// milliseconds; `None` for the baseline.
    pub store_mean_ms: Option<f64>,
}

/// A snapshot for writer `writer`'s `round`-th write: distinct bytes each time, so the one
/// coming back is unmistakably this write's.
fn snapshot(writer: usize, round: u64) -> Vec<u8> {
    let mut bytes = vec![0xa5; SNAPSHOT_LEN];
    bytes[..8].copy_from_slice(&(writer as u64).to_le_bytes());
    bytes[8..16].copy_from_slice(&round.to_le_bytes());
    bytes
}

/// Counts writes in a fixed window after a warm-up, with a stop signal for the writers.
struct Window {
    done: AtomicU64,
    busy_ns: AtomicU64,
    stop: CancellationToken,
}

impl Window {
    fn new() -> Arc<Window> {
        Arc::new(Window {
            done: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            stop: CancellationToken::new(),
        })
    }

    fn record(&self, took: Duration) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.busy_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The counters now, to measure from.
    fn mark(&self) -> (Instant, u64, u64) {
        (
            Instant::now(),
            self.done.load(Ordering::Relaxed),
            self.busy_ns.load(Ordering::Relaxed),
        )
    }

    /// (writes/s, mean ms per write) since `mark`.
    fn since(&self, (t0, n0, b0): (Instant, u64, u64)) -> (f64, f64) {
        let seconds = t0.elapsed().as_secs_f64();
        let writes = self.done.load(Ordering::Relaxed) - n0;
        let busy = self.busy_ns.load(Ordering::Relaxed) - b0;
        let mean_ms = busy as f64 / 1e6 / writes.max(1) as f64;
        (writes as f64 / seconds, mean_ms)
    }
}

async fn station_writer(mut ws: Ws, writer: usize, window: Arc<Window>) -> anyhow::Result<()> {
    let mut round = 0u64;
    while !window.stop.is_cancelled() {
        round += 1;
        let payload = snapshot(writer, round);
        let started = Instant::now();
        client::send(&mut ws, Code::SubmitSnapshot, payload.clone()).await?;
        client::send(&mut ws, Code::SubmitRequest, vec![1u8]).await?;
        // The request is answered at once with the previous snapshot (offer-snapshot); this
        // one arrives as forward-response once durable (or as offer-snapshot, should the
        // write have completed before the request was handled).
        loop {
            let bytes = tokio::time::timeout(Duration::from_secs(30), client::next_binary(&mut ws))
                .await
                .context("no durable snapshot within 30 s")??;
            let code = bytes[1];
            if (code == Code::ForwardResponse.byte() || code == Code::OfferSnapshot.byte())
                && bytes[2..] == payload[..]
            {
                break;
            }
        }
        window.record(started.elapsed());
    }
    Ok(())
}

/// The station's figure.
pub async fn station(target: &Target) -> anyhow::Result<Writes> {
    let rooms = target.rooms(WRITERS).await?;
    let joined = target.join_all(&rooms, 1).await?;
    target
        .server
        .await_verified(WRITERS, Duration::from_secs(30))
        .await?;
    let window = Window::new();
    let tasks: Vec<_> = joined
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(writer, ws)| tokio::spawn(station_writer(ws, writer, window.clone())))
        .collect();
    // The store histogram over the same window: its sum and count before and after.
    tokio::time::sleep(WARMUP).await;
    let (sum0, count0) = store_histogram(&target.server.metrics().await?);
    let mark = window.mark();
    tokio::time::sleep(MEASURE).await;
    let (per_s, mean_ms) = window.since(mark);
    let (sum1, count1) = store_histogram(&target.server.metrics().await?);
    window.stop.cancel();
    for task in tasks {
        task.await??;
    }
    let store_mean_ms = (count1 > count0).then(|| (sum1 - sum0) * 1e3 / (count1 - count0));
    Ok(Writes {
        per_s,
        mean_ms,
        store_mean_ms,
    })
}

fn store_histogram(text: &str) -> (f64, f64) {
    (
        crate::procs::metric_sum(text, "zbase_store_write_seconds_sum"),
        crate::procs::metric_sum(text, "zbase_store_write_seconds_count"),
    )
}

/// One upsert asked of the baseline's writer.
struct Upsert {
    id: String,
    snapshot: Vec<u8>,
    done: oneshot::Sender<()>,
}

/// The verification key every baseline row carries: a real one's size, never checked.
const JWK: &str =
    r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

/// The same table as the station's SQLite migration.
const SQLITE_SCHEMA: [&str; 2] = [
    "CREATE TABLE resources (id TEXT NOT NULL PRIMARY KEY, jwk TEXT NOT NULL, snapshot BLOB, seq INTEGER NOT NULL) STRICT",
    "CREATE UNIQUE INDEX resources_by_seq ON resources (seq)",
];
const SQLITE_UPSERT: &str = "INSERT INTO resources (id, jwk, snapshot, seq) VALUES (?1, ?2, ?3, ?4) \
                             ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, seq = excluded.seq";

/// The station's PostgreSQL migration itself, so the baseline's table (out-of-line storage,
/// unique seq index, counter row) cannot drift from the station's.
const PG_SCHEMA: &str = include_str!("../../../basestation/migrations/postgres/0001_resources.sql");
/// The station's `PUT` (store/postgres.rs): the row exists, only its snapshot changes here.
const PG_PUT: &str = "UPDATE resources SET snapshot = $1 WHERE id = $2";
/// The station's `NUMBER` (store/postgres.rs), verbatim: the batch's last statement takes its
/// numbers from the counter row, whose lock then orders commits.
const PG_NUMBER: &str = "WITH taken AS (\
                             UPDATE zbase_sequence SET last = last + $1 RETURNING last\
                         ) \
                         UPDATE resources AS r SET seq = taken.last - $1 + v.rank \
                         FROM taken, unnest($2::text[], $3::bigint[]) AS v (id, rank) \
                         WHERE r.id = v.id \
                         RETURNING taken.last";

/// The database a baseline writes into: one connection, one transaction per batch.
enum Raw {
    Sqlite { conn: SqliteConnection, seq: i64 },
    Postgres(PgConnection),
}

impl Raw {
    /// Commits every upsert of `batch` in one transaction.
    async fn commit(&mut self, batch: &mut [Upsert]) -> anyhow::Result<()> {
        match self {
            Raw::Sqlite { conn, seq } => {
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                for upsert in batch.iter() {
                    *seq += 1;
                    sqlx::query(SQLITE_UPSERT)
                        .bind(&upsert.id)
                        .bind(JWK)
                        .bind(&upsert.snapshot[..])
                        .bind(*seq)
                        .execute(&mut *conn)
                        .await?;
                }
                sqlx::query("COMMIT").execute(&mut *conn).await?;
            }
            Raw::Postgres(conn) => {
                // In identifier order, as the station locks rows; each writer has one write
                // in flight, so a batch names each resource once and its rank is its place.
                batch.sort_by(|a, b| a.id.cmp(&b.id));
                let mut tx = conn.begin().await?;
                for upsert in batch.iter() {
                    sqlx::query(PG_PUT)
                        .bind(&upsert.snapshot[..])
                        .bind(&upsert.id)
                        .execute(&mut *tx)
                        .await?;
                }
                let ids: Vec<&str> = batch.iter().map(|u| u.id.as_str()).collect();
                let ranks: Vec<i64> = (1..=batch.len() as i64).collect();
                let numbered: Vec<i64> = sqlx::query_scalar(PG_NUMBER)
                    .bind(batch.len() as i64)
                    .bind(&ids)
                    .bind(&ranks)
                    .fetch_all(&mut *tx)
                    .await?;
                if numbered.len() != batch.len() {
                    bail!("numbered {} of {} rows", numbered.len(), batch.len());
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn close(self) -> anyhow::Result<()> {
        match self {
            Raw::Sqlite { conn, .. } => conn.close().await?,
            Raw::Postgres(conn) => conn.close().await?,
        }
        Ok(())
    }
}

/// The baseline writer: everything queued when it wakes goes into one transaction.
async fn raw_writer(mut raw: Raw, mut queue: mpsc::Receiver<Upsert>) -> anyhow::Result<()> {
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while let Ok(next) = queue.try_recv() {
            batch.push(next);
        }
        raw.commit(&mut batch).await?;
        for upsert in batch.drain(..) {
            let _ = upsert.done.send(());
        }
    }
    raw.close().await
}

/// [`WRITERS`] tasks, each with one write in flight to its own row `ids[writer]`, against
/// `raw`'s one writer, for [`WARMUP`] + [`MEASURE`].
async fn baseline(raw: Raw, ids: Vec<String>) -> anyhow::Result<Writes> {
    let (tx, rx) = mpsc::channel(1024);
    let writer = tokio::spawn(raw_writer(raw, rx));
    let window = Window::new();
    let tasks: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(writer, id)| {
            let (tx, window) = (tx.clone(), window.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !window.stop.is_cancelled() {
                    round += 1;
                    let started = Instant::now();
                    let (done, acked) = oneshot::channel();
                    let upsert = Upsert {
                        id: id.clone(),
                        snapshot: snapshot(writer, round),
                        done,
                    };
                    if tx.send(upsert).await.is_err() || acked.await.is_err() {
                        bail!("the baseline writer stopped");
                    }
                    window.record(started.elapsed());
                }
                Ok(())
            })
        })
        .collect();
    drop(tx);
    tokio::time::sleep(WARMUP).await;
    let mark = window.mark();
    tokio::time::sleep(MEASURE).await;
    let (per_s, mean_ms) = window.since(mark);
    window.stop.cancel();
    for task in tasks {
        task.await??;
    }
    writer.await??;
    Ok(Writes {
        per_s,
        mean_ms,
        store_mean_ms: None,
    })
}

/// One fresh identifier per writer, as the station's writers each have their own resource.
fn writer_ids() -> Vec<String> {
    (0..WRITERS)
        .map(|_| client::random_id().as_str().to_owned())
        .collect()
}

/// The SQLite baseline's figure, in a fresh database under `dir`.
pub async fn sqlite(dir: &Path) -> anyhow::Result<Writes> {
    std::fs::create_dir_all(dir)?;
    let mut conn = SqliteConnectOptions::new()
        .filename(dir.join("baseline.sqlite3"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .pragma("journal_size_limit", "67108864")
        .connect()
        .await?;
    for statement in SQLITE_SCHEMA {
        sqlx::query(statement).execute(&mut conn).await?;
    }
    baseline(Raw::Sqlite { conn, seq: 0 }, writer_ids()).await
}

/// The PostgreSQL baseline's figure, in the empty database at `url`: the station's schema, one
/// claimed row per writer (as the station's resources are created before they are written).
pub async fn postgres(url: &str) -> anyhow::Result<Writes> {
    // Durable commits whatever the server's default, as the station forces per connection.
    let mut conn = url
        .parse::<PgConnectOptions>()?
        .options([("synchronous_commit", "on")])
        .connect()
        .await?;
    sqlx::raw_sql(PG_SCHEMA).execute(&mut conn).await?;
    let ids = writer_ids();
    for (seq, id) in (1i64..).zip(&ids) {
        sqlx::query("INSERT INTO resources (id, jwk, snapshot, seq) VALUES ($1, $2, NULL, $3)")
            .bind(id)
            .bind(JWK)
            .bind(seq)
            .execute(&mut conn)
            .await?;
    }
    sqlx::query("UPDATE zbase_sequence SET last = $1")
        .bind(ids.len() as i64)
        .execute(&mut conn)
        .await?;
    baseline(Raw::Postgres(conn), ids).await
}
