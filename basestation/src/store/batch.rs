//! The write queue both database backends share: one writer task per store, group commit.
//!
//! Promise: a write request is answered only after the transaction carrying it has committed
//! (or with the error that kept it from committing; never with a sequence for a transaction
//! that did not happen). The writer takes every request already queued (up to a bounded batch)
//! and hands them to its [`Backend`] to apply in one transaction with one commit, so concurrent
//! writers share one commit instead of paying one each. When a request's own statement fails,
//! the batch is retried one request per transaction, so one bad request fails alone; when
//! beginning or committing fails, nothing of the batch committed and every request in it fails.
//! How changes are numbered, and what a backend does to recover after a failure, is the
//! backend's business.

use super::{Change, Claim, KeyReplacement, Seq, Site, StoreError};
use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use zbase_proto::wire::ResourceId;

/// Requests committed together at most, so one batch cannot hold its first caller for long.
pub(super) const MAX_BATCH_WRITES: usize = 512;

/// Snapshot bytes taken into one batch at most (exceeded by at most the last snapshot taken),
/// bounding the memory and write-ahead log a single commit needs.
const MAX_BATCH_BYTES: usize = 32 << 20;

/// Requests waiting for the writer before callers wait to enqueue: backpressure, not growth.
const QUEUE_CAPACITY: usize = 2 * MAX_BATCH_WRITES;

/// A change asked of the writer.
pub(super) enum Op {
    /// Create the resource if the identifier is free.
    Claim { id: ResourceId, jwk: String },
    /// Replace an existing resource's snapshot.
    Put { id: ResourceId, snapshot: Bytes },
    /// Replace a resource's key if it is `expected` now (a key rotation).
    Rotate {
        id: ResourceId,
        expected: String,
        jwk: String,
    },
    /// Take these changes as they are, sequence numbers included (a replica's cache following
    /// its primary; SQLite only). Each resource is written unless it already holds a later
    /// change, so applying a page twice changes nothing.
    Mirror { changes: Vec<Change> },
    /// Replace the station's role and epochs.
    Site { site: Site },
    /// Delete every resource and epoch (a replica's cache that diverged from its new primary,
    /// before it syncs again from the start; SQLite only).
    Wipe,
}

impl Op {
    /// The one resource this request writes; `None` for a page of mirrored changes.
    pub(super) fn id(&self) -> Option<&ResourceId> {
        match self {
            Op::Claim { id, .. } | Op::Put { id, .. } | Op::Rotate { id, .. } => Some(id),
            Op::Mirror { .. } | Op::Site { .. } | Op::Wipe => None,
        }
    }
}

/// A request in the writer's queue, answered with the change's sequence or `None` if nothing
/// changed (identifier taken, resource unknown); each caller reads `None` for its operation.
pub(super) struct Write {
    pub(super) op: Op,
    reply: oneshot::Sender<Result<Option<Seq>, StoreError>>,
}

impl Write {
    /// Bytes this request adds to a batch (its snapshot, or its key).
    fn weight(&self) -> usize {
        match &self.op {
            Op::Claim { jwk, .. } => jwk.len(),
            Op::Put { snapshot, .. } => snapshot.len(),
            Op::Rotate { expected, jwk, .. } => expected.len() + jwk.len(),
            Op::Mirror { changes } => changes.iter().map(Change::weight).sum(),
            Op::Site { .. } | Op::Wipe => 0,
        }
    }

    fn answer(self, result: Result<Option<Seq>, StoreError>) {
        // A caller that stopped waiting (its connection dropped) needs no answer; its write stands.
        let _ = self.reply.send(result);
    }
}

/// Why a batch's transaction did not commit.
pub(super) enum Failure {
    /// One request's statement failed: possibly that request's fault (or, with several
    /// processes, a deadlock with another one over two rows), so the others are retried
    /// without it.
    Request(sqlx::Error),
    /// Beginning, numbering or committing failed: the batch as a whole, no request's fault.
    Batch(sqlx::Error),
}

/// What a database does for the writer: apply a batch in one transaction, and come back to a
/// known state after a failed one.
pub(super) trait Backend: Send + 'static {
    /// Applies `batch` in one transaction and commits it: each request's sequence, in the
    /// order of `batch`, or `None` where it changed nothing.
    fn transact(
        &mut self,
        batch: &[Write],
    ) -> impl Future<Output = Result<Vec<Option<Seq>>, Failure>> + Send;

    /// After a failed transaction, before the next one. An error means the writer cannot go
    /// on: it stops, and every write from then on is refused with `Closed`.
    fn recover(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Told when a whole batch failed (`writes` requests), before they are answered.
    fn batch_failed(&self, error: &sqlx::Error, writes: usize) {
        let _ = (error, writes);
    }

    /// After the last batch, once every sender is gone.
    fn finish(self) -> impl Future<Output = ()> + Send;
}

/// What a store's writer has committed since it was opened; shows group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Write requests answered from those transactions, including ones that changed nothing.
    pub writes: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    writes: AtomicU64,
    /// The highest sequence committed, for readers that wait for new changes (the change feed).
    commits: watch::Sender<Seq>,
}

impl Counters {
    /// Counts one committed transaction of `writes` requests and announces its sequences.
    fn committed(&self, writes: usize, outcomes: &[Option<Seq>]) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        if let Some(highest) = outcomes.iter().flatten().max().copied() {
            self.commits.send_if_modified(|last| {
                let newer = highest > *last;
                if newer {
                    *last = highest;
                }
                newer
            });
        }
    }
}

/// The queue to one writer task, and that task, for a store to hand its writes to.
pub(super) struct WriteQueue {
    /// What the writer committed, shared so it can be read while it runs.
    stats: Arc<Counters>,
    /// The writer's queue; `None` once closed, which is how later writes learn of it.
    writes: std::sync::Mutex<Option<mpsc::Sender<Write>>>,
    /// The writer task; `close` awaits it so queued writes finish before the store closes.
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl WriteQueue {
    /// Starts the writer task that commits through `backend`.
    pub(super) fn start(backend: impl Backend) -> WriteQueue {
        let (sender, requests) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(Counters::default());
        let writer = tokio::spawn(run(backend, requests, Arc::clone(&stats)));
        WriteQueue {
            stats,
            writes: std::sync::Mutex::new(Some(sender)),
            writer: tokio::sync::Mutex::new(Some(writer)),
        }
    }

    /// Transactions committed and writes answered so far.
    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// Creates the resource if `id` is free, once committed.
    pub(super) async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        let op = Op::Claim {
            id: *id,
            jwk: jwk.to_owned(),
        };
        Ok(match self.write(op).await? {
            Some(seq) => Claim::Claimed { seq },
            None => Claim::Taken,
        })
    }

    /// Replaces an existing resource's snapshot, once committed.
    pub(super) async fn put_snapshot(
        &self,
        id: &ResourceId,
        snapshot: Bytes,
    ) -> Result<Seq, StoreError> {
        let op = Op::Put { id: *id, snapshot };
        self.write(op).await?.ok_or(StoreError::NotFound)
    }

    /// Replaces `id`'s key with `jwk` if it is `expected`, once committed.
    pub(super) async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError> {
        let op = Op::Rotate {
            id: *id,
            expected: expected.to_owned(),
            jwk: jwk.to_owned(),
        };
        Ok(match self.write(op).await? {
            Some(seq) => KeyReplacement::Replaced { seq },
            None => KeyReplacement::Stale,
        })
    }

    /// Writes `changes` with their own sequence numbers in one transaction, once committed;
    /// returns the highest sequence the store then holds.
    pub(super) async fn mirror(&self, changes: Vec<Change>) -> Result<Seq, StoreError> {
        // The writer answers a mirror with its highest sequence, never with "nothing changed".
        self.write(Op::Mirror { changes })
            .await
            .map(Option::unwrap_or_default)
    }

    /// Replaces the station's role and epochs, once committed.
    pub(super) async fn set_site(&self, site: Site) -> Result<(), StoreError> {
        self.write(Op::Site { site }).await.map(drop)
    }

    /// Deletes every resource and epoch, once committed.
    pub(super) async fn wipe(&self) -> Result<(), StoreError> {
        self.write(Op::Wipe).await.map(drop)
    }

    /// A receiver that changes whenever this writer commits a change; its value is the highest
    /// sequence committed through this queue so far (0 before the first).
    pub(super) fn commits(&self) -> watch::Receiver<Seq> {
        self.stats.commits.subscribe()
    }

    /// Hands `op` to the writer and waits for its commit: the change's sequence, or `None` if
    /// it changed nothing.
    async fn write(&self, op: Op) -> Result<Option<Seq>, StoreError> {
        let queue = self
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Write { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before committing this request.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Refuses new writes and returns once every write queued before is answered and the
    /// writer has finished.
    pub(super) async fn close(&self) {
        // Without our sender the queue ends once callers already sending are in; the writer
        // commits everything queued, then finishes.
        drop(
            self.writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // Held across the wait so a second `close` also returns only after the drain.
        let mut writer = self.writer.lock().await;
        if let Some(task) = writer.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the store's writer task failed");
        }
    }
}

/// The writer: commits batches until every sender is gone (close or drop), or until the
/// backend cannot recover, after which writes are refused with `Closed`.
async fn run(mut backend: impl Backend, mut requests: mpsc::Receiver<Write>, stats: Arc<Counters>) {
    let mut batch = Vec::with_capacity(MAX_BATCH_WRITES);
    while let Some(first) = requests.recv().await {
        let mut bytes = first.weight();
        batch.push(first);
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            let Ok(next) = requests.try_recv() else {
                break;
            };
            bytes += next.weight();
            batch.push(next);
        }
        if let Err(error) = process(&mut backend, &mut batch, &stats).await {
            tracing::error!(
                %error,
                "the store's writer stopped after a failed write; restart the station"
            );
            // Dropping the batch and the queue answers every waiting caller `Closed`.
            return;
        }
    }
    backend.finish().await;
}

/// Commits `batch` and answers each request. An error means the writer cannot go on.
async fn process(
    backend: &mut impl Backend,
    batch: &mut Vec<Write>,
    stats: &Counters,
) -> Result<(), StoreError> {
    let failure = match backend.transact(batch).await {
        Ok(outcomes) => {
            stats.committed(batch.len(), &outcomes);
            for (write, outcome) in batch.drain(..).zip(outcomes) {
                write.answer(Ok(outcome));
            }
            return Ok(());
        }
        Err(failure) => failure,
    };
    backend.recover().await?;
    match failure {
        Failure::Request(_) if batch.len() > 1 => {
            // Isolate the request at fault: each alone in its own transaction.
            for write in batch.drain(..) {
                match backend.transact(std::slice::from_ref(&write)).await {
                    Ok(outcomes) => {
                        stats.committed(1, &outcomes);
                        write.answer(Ok(outcomes.into_iter().next().flatten()));
                    }
                    Err(Failure::Request(error) | Failure::Batch(error)) => {
                        backend.recover().await?;
                        write.answer(Err(error.into()));
                    }
                }
            }
        }
        Failure::Request(error) | Failure::Batch(error) => {
            backend.batch_failed(&error, batch.len());
            // Nothing of the batch committed, so every request hears so; none is
            // acknowledged for a transaction that did not happen.
            let error = Arc::new(error);
            for write in batch.drain(..) {
                write.answer(Err(StoreError::Database(sqlx::Error::Io(
                    std::io::Error::other(BatchFailed(Arc::clone(&error))),
                ))));
            }
        }
    }
    Ok(())
}

/// The failure of a whole batch, told to each request in it (a `sqlx::Error` cannot be cloned).
#[derive(Debug)]
struct BatchFailed(Arc<sqlx::Error>);

impl fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the transaction carrying this write failed: {}", self.0)
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
