//! The shared backend: PostgreSQL, for several station processes (pods) on one database.
//!
//! Promise, as for SQLite: `claim` and `put_snapshot` return only once their transaction is
//! committed (with `synchronous_commit=on`, forced per connection). Every write of this process
//! goes through one writer task; when it wakes it takes every request already queued (up to a
//! bounded batch), applies them in one transaction and commits once (group commit). Claims are
//! `INSERT ... ON CONFLICT DO NOTHING`, which PostgreSQL makes atomic across processes: a second
//! inserter of the same key waits for the first to commit and then does nothing.
//!
//! # The change sequence with several writers
//!
//! With one writer (SQLite) numbering in commit order is free. With several pods, two
//! transactions can take numbers 10 and 11 and commit in the order 11, 10; a reader that saw 11
//! and resumes after it would never see 10. Of the two known remedies, this backend
//! **serialises sequence assignment at commit**: each write transaction first does its real
//! work (inserts and snapshot updates, the expensive part, under placeholder numbers), then, as
//! its last statement before `COMMIT`, takes its numbers with
//! `UPDATE zbase_sequence SET last = last + n RETURNING last` on a single row, and in that same
//! statement gives its rows their final numbers. The row lock on the counter is held until the
//! transaction commits, so the next transaction to number its changes waits for this one's
//! commit: commits become visible in sequence order across all pods, and every reader's
//! snapshot holds a prefix of the sequence. `changes_since` stays a plain indexed range scan.
//!
//! The other remedy, letting readers stop below the oldest open writer, needs every reader to
//! know every pod's in-flight transactions (`pg_snapshot_xmin` bookkeeping plus a per-change
//! transaction id) and makes replication lag behind the slowest writer anyway. Serialising only
//! the numbering costs one row lock held for one statement and the commit round trip per
//! *batch*, which group commit already amortises over up to [`MAX_BATCH_WRITES`] requests.
//!
//! Until the final statement, a claimed row carries a negative placeholder derived from the
//! transaction id, unique across concurrent transactions (so the `UNIQUE` index on `seq` never
//! makes two pods wait on each other) and never visible to readers (it is replaced before
//! commit, and readers only ask for positive numbers). A request that changes nothing (taken,
//! not found) takes no number, because numbers are only counted for rows actually written.

use super::batch::{Backend, Failure, MAX_BATCH_WRITES, Op, Write, WriteQueue};
use super::rows::{self, ChangeRow, ResourceRow, read_error, seq_from_sql};
use super::{
    Change, Claim, KeyReplacement, RestoreItem, Role, Seq, Site, Store, StoreError, StoredResource,
};
use bytes::Bytes;
use futures::TryStreamExt as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use zbase_proto::wire::ResourceId;

/// Placeholder numbers reserved per transaction id (the `1024` in [`CLAIM`]); a batch, at most
/// [`MAX_BATCH_WRITES`] requests, must fit.
const PLACEHOLDERS_PER_TRANSACTION: usize = 1024;
const _: () = assert!(MAX_BATCH_WRITES <= PLACEHOLDERS_PER_TRANSACTION);

/// Creates a resource if its identifier is free, under a placeholder number unique to this
/// transaction and request; zero rows affected means taken (possibly by another pod).
const CLAIM: &str = "INSERT INTO resources (id, jwk, snapshot, seq) \
                     VALUES ($1, $2, NULL, -(txid_current() * 1024 + $3)) \
                     ON CONFLICT (id) DO NOTHING";

/// Replaces a resource's snapshot; its number is set by [`NUMBER`]. Zero rows means unknown.
const PUT: &str = "UPDATE resources SET snapshot = $1 WHERE id = $2";

/// Replaces a resource's key if it is still the expected one; its number is set by [`NUMBER`].
/// Zero rows means another key (or no resource). Under READ COMMITTED an UPDATE waiting on a
/// row another pod locked re-checks its condition on the committed row, so two pods rotating
/// one key cannot both succeed.
const ROTATE: &str = "UPDATE resources SET jwk = $1 WHERE id = $2 AND jwk = $3";

/// The last statement of every transaction that changed something: takes `$1` numbers from the
/// counter (locking its row until commit) and gives each written resource its final number,
/// `last - $1 + rank`, where rank is the 1-based position of its latest change in the batch.
const NUMBER: &str = "WITH taken AS (\
                          UPDATE zbase_sequence SET last = last + $1 WHERE writable RETURNING last\
                      ) \
                      UPDATE resources AS r SET seq = taken.last - $1 + v.rank \
                      FROM taken, unnest($2::text[], $3::bigint[]) AS v (id, rank) \
                      WHERE r.id = v.id \
                      RETURNING taken.last";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// How [`PostgresStore::connect`] connects, beyond what the URL says.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Replaces the URL's password, e.g. read from a Kubernetes Secret mounted as a file.
    pub password: Option<String>,
    /// Connections in the pool: the writer uses one at a time, readers the rest.
    pub max_connections: u32,
    /// How long a call waits for a free (or new) connection before it fails, so an unreachable
    /// database turns into an error instead of a hang.
    pub acquire_timeout: Duration,
    /// Longest any statement may run, lock waits included, so a stuck peer cannot stall us.
    pub statement_timeout: Duration,
    /// How long the server keeps a transaction whose client went silent, so a hung pod cannot
    /// hold the sequence lock (and so every other pod's writes) forever.
    pub idle_in_transaction_timeout: Duration,
    /// The membership lease every write transaction must hold, when pods share the database.
    pub fence: Option<Fence>,
}

/// A pod's membership row, which its writes are fenced by: a transaction commits only while
/// the row exists with this incarnation and an unexpired lease, and holds it locked (`FOR KEY
/// SHARE`) until it commits, so a pod removing an expired member waits for its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The pod's name in `zbase_members`.
    pub pod: String,
    /// The process's incarnation in that row.
    pub incarnation: String,
}

/// What [`NUMBER_FENCED`] locks and checks first, for tests that hold a pod's fence by hand.
#[cfg(test)]
pub(crate) const FENCE_FOR_TESTS: &str = "SELECT 1 FROM zbase_members \
                                          WHERE pod = $1 AND incarnation = $2 \
                                          AND expires_at > now() FOR KEY SHARE";

/// [`NUMBER`] for a pod whose writes are fenced by its membership (`$4` pod, `$5`
/// incarnation): numbers nothing, so the batch fails, unless the pod's row exists with an
/// unexpired lease, which it then holds locked until commit. Checked in the last statement,
/// it costs no extra round trip, and is as strong as checking first: a pod removing this one
/// waits on that lock, so either this commit comes first or the removal does and this fails.
const NUMBER_FENCED: &str = "WITH fence AS (\
                                 SELECT 1 FROM zbase_members \
                                 WHERE pod = $4 AND incarnation = $5 AND expires_at > now() \
                                 FOR KEY SHARE\
                             ), taken AS (\
                                 UPDATE zbase_sequence SET last = last + $1 \
                                 WHERE writable AND EXISTS (SELECT 1 FROM fence) RETURNING last\
                             ) \
                             UPDATE resources AS r SET seq = taken.last - $1 + v.rank \
                             FROM taken, unnest($2::text[], $3::bigint[]) AS v (id, rank) \
                             WHERE r.id = v.id \
                             RETURNING taken.last";

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            password: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            fence: None,
        }
    }
}

impl fmt::Debug for PostgresOptions {
    // Written by hand so the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .field("fence", &self.fence)
            .finish()
    }
}

/// A [`Store`] in a PostgreSQL database, shared by any number of station processes.
pub struct PostgresStore {
    /// The writer's queue and task; closed before the pool closes.
    writes: WriteQueue,
    /// Connections for reads and for the writer's transactions; reconnects on its own when the
    /// server comes back, so no failure is permanent.
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db`) and
    /// migrates it. Several processes may do so at once: migrations take an advisory lock.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let connect = connect_options(url, &options)?;
        // Migrating on a connection of our own shows why the server is unreachable
        // ("connection refused", "password authentication failed"); the pool would only say
        // that it timed out.
        let mut first = tokio::time::timeout(options.acquire_timeout, connect.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        MIGRATOR.run(&mut first).await?;
        if let Err(error) = first.close().await {
            tracing::debug!(%error, "closing the migration connection failed");
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        let writer = Writer {
            pool: pool.clone(),
            fence: options.fence,
        };
        Ok(PostgresStore {
            writes: WriteQueue::start(writer),
            pool,
        })
    }
}

/// How every connection to the database is made, for the store and for the membership: the
/// URL, the password override, timeouts, and durable commits.
pub fn connect_options(
    url: &str,
    options: &PostgresOptions,
) -> Result<PgConnectOptions, StoreError> {
    let mut connect = PgConnectOptions::from_str(url)?
        .application_name("zbase-station")
        .options([
            (
                "statement_timeout",
                options.statement_timeout.as_millis().to_string(),
            ),
            (
                "idle_in_transaction_session_timeout",
                options.idle_in_transaction_timeout.as_millis().to_string(),
            ),
            // "Committed" must mean durable whatever the server's default says.
            ("synchronous_commit", "on".to_owned()),
        ]);
    if let Some(password) = &options.password {
        connect = connect.password(password);
    }
    Ok(connect)
}

impl PostgresStore {
    /// Transactions committed and writes answered so far, by this process.
    pub fn stats(&self) -> super::WriteStats {
        self.writes.stats()
    }

    /// Restores into this database: the resources `from` sends are written in one
    /// transaction, committed on [`RestoreItem::Commit`], and later changes are numbered above
    /// the backup's point. A database holding resources is refused unless `wipe`, which
    /// deletes them in the same transaction. Other writers wait for it (a table lock).
    pub async fn restore(
        &self,
        mut from: mpsc::Receiver<RestoreItem>,
        wipe: bool,
    ) -> Result<Seq, StoreError> {
        let mut tx = self.pool.begin().await.map_err(read_error)?;
        // A large backup takes longer than any single statement may, and the transaction waits
        // on the backup's reader between inserts.
        for setting in [
            "SET LOCAL statement_timeout = 0",
            "SET LOCAL idle_in_transaction_session_timeout = 0",
        ] {
            sqlx::query(setting).execute(&mut *tx).await?;
        }
        sqlx::query("LOCK TABLE resources, zbase_sequence IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
            .fetch_one(&mut *tx)
            .await?;
        if held > 0 {
            if !wipe {
                return Err(StoreError::NotEmpty(held.unsigned_abs()));
            }
            sqlx::query("DELETE FROM resources")
                .execute(&mut *tx)
                .await?;
        }
        while let Some(item) = from.recv().await {
            match item {
                RestoreItem::Resource(change) => {
                    let seq = i64::try_from(change.seq).map_err(|_| {
                        StoreError::Corrupt(format!("sequence {} is out of range", change.seq))
                    })?;
                    sqlx::query(
                        "INSERT INTO resources (id, jwk, snapshot, seq) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(change.id.as_str())
                    .bind(&change.jwk)
                    .bind(change.snapshot.as_deref())
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| rows::restore_error(&change, e))?;
                }
                RestoreItem::Commit { sequence } => {
                    let sequence = i64::try_from(sequence).map_err(|_| {
                        StoreError::Corrupt(format!("sequence {sequence} is out of range"))
                    })?;
                    let last: i64 = sqlx::query_scalar(
                        "UPDATE zbase_sequence SET last = GREATEST($1, \
                         (SELECT COALESCE(MAX(seq), 0) FROM resources)) RETURNING last",
                    )
                    .bind(sequence)
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return seq_from_sql(last);
                }
            }
        }
        // Dropping the transaction rolls it back.
        Err(StoreError::RestoreAbandoned)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
        let row: Option<ResourceRow> =
            sqlx::query_as("SELECT jwk, snapshot, seq FROM resources WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(read_error)?;
        row.map(rows::stored).transpose()
    }

    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        self.writes.claim(id, jwk).await
    }

    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError> {
        self.writes.replace_key(id, expected, jwk).await
    }

    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError> {
        self.writes.put_snapshot(id, snapshot).await
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<Vec<Change>, StoreError> {
        let (after, limit) = rows::change_bounds(after, limit);
        let found: Vec<ChangeRow> = sqlx::query_as(
            "SELECT seq, id, jwk, snapshot FROM resources WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        found.into_iter().map(rows::change).collect()
    }

    async fn site(&self) -> Result<Option<Site>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(read_error)?;
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM zbase_site")
            .fetch_optional(&mut *tx)
            .await
            .map_err(read_error)?;
        let epochs: Vec<(i64, i64)> =
            sqlx::query_as("SELECT epoch, first_seq FROM zbase_epochs ORDER BY epoch")
                .fetch_all(&mut *tx)
                .await
                .map_err(read_error)?;
        tx.rollback().await.map_err(read_error)?;
        role.map(|role| rows::site(&role, &epochs)).transpose()
    }

    async fn set_site(&self, site: Site) -> Result<(), StoreError> {
        self.writes.set_site(site).await
    }

    async fn last_seq(&self) -> Result<Seq, StoreError> {
        // The counter moves only in committed transactions, and only by what they wrote.
        let last: i64 = sqlx::query_scalar("SELECT last FROM zbase_sequence")
            .fetch_one(&self.pool)
            .await
            .map_err(read_error)?;
        seq_from_sql(last)
    }

    async fn export(&self, into: mpsc::Sender<Change>) -> Result<Seq, StoreError> {
        let mut tx = self.pool.begin().await.map_err(read_error)?;
        // One snapshot for the counter and every row; no time limit, since the rows stream
        // as fast as the backup writes them.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(read_error)?;
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await
            .map_err(read_error)?;
        let last: i64 = sqlx::query_scalar("SELECT last FROM zbase_sequence")
            .fetch_one(&mut *tx)
            .await
            .map_err(read_error)?;
        {
            let mut rows = sqlx::query_as::<_, ChangeRow>(
                "SELECT seq, id, jwk, snapshot FROM resources ORDER BY seq",
            )
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(read_error)? {
                if into.send(rows::change(row)?).await.is_err() {
                    break;
                }
            }
        }
        tx.rollback().await.map_err(read_error)?;
        seq_from_sql(last)
    }

    fn commits(&self) -> watch::Receiver<Seq> {
        self.writes.commits()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Through the pool, as every read goes: a dead connection is replaced on the way, so
        // this fails only when no connection to the server can be made.
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(())
    }

    async fn close(&self) {
        // The writer commits everything queued, then stops.
        self.writes.close().await;
        self.pool.close().await;
    }
}

/// This process's only writer: batches requests into transactions on the pool.
/// Replaces the site's role and epochs (inside the writer's transaction).
async fn write_site(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    site: &Site,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM zbase_site")
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO zbase_site (role) VALUES ($1)")
        .bind(site.role.name())
        .execute(&mut **tx)
        .await?;
    // Waits for every numbering in flight on any pod; none numbers after this unless writable.
    sqlx::query("UPDATE zbase_sequence SET writable = $1")
        .bind(site.role == Role::Primary)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM zbase_epochs")
        .execute(&mut **tx)
        .await?;
    for epoch in &site.epochs {
        let (number, first) = rows::epoch_to_sql(epoch)?;
        sqlx::query("INSERT INTO zbase_epochs (epoch, first_seq) VALUES ($1, $2)")
            .bind(number)
            .bind(first)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

struct Writer {
    pool: PgPool,
    fence: Option<Fence>,
}

/// A failed batch fails only its own requests: the next one starts on a fresh transaction (and,
/// if the server went away, a fresh connection), so the store recovers by itself when the
/// database returns.
impl Backend for Writer {
    /// Applies `batch` in one transaction, numbers what it wrote as its last statement, and
    /// commits: each request's sequence, or `None` where it changed nothing.
    async fn transact(&mut self, batch: &[Write]) -> Result<Vec<Option<Seq>>, Failure> {
        let mut tx = self.pool.begin().await.map_err(Failure::Batch)?;
        // Rank (1-based, in the order applied) of each request that wrote, and per resource the
        // rank of its latest change, which is the number its row ends with.
        let mut ranks = vec![None; batch.len()];
        let mut latest: HashMap<ResourceId, i64> = HashMap::new();
        let mut written: i64 = 0;
        // Rows are locked in identifier order, the same order on every pod, so two pods'
        // batches touching the same resources queue behind each other instead of deadlocking.
        // The sort is stable: requests for one resource keep their order, and the later one
        // keeps the higher number.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&slot| batch[slot].op.id().map(ResourceId::as_str));
        for slot in order {
            let placeholder = i64::try_from(slot).unwrap_or(i64::MAX);
            let result = match &batch[slot].op {
                Op::Claim { id, jwk } => {
                    let claim = sqlx::query(CLAIM).bind(id.as_str()).bind(jwk.as_str());
                    claim.bind(placeholder).execute(&mut *tx).await
                }
                Op::Put { id, snapshot } => {
                    let put = sqlx::query(PUT).bind(&snapshot[..]).bind(id.as_str());
                    put.execute(&mut *tx).await
                }
                Op::Rotate { id, expected, jwk } => {
                    let rotate = sqlx::query(ROTATE).bind(jwk.as_str()).bind(id.as_str());
                    rotate.bind(expected.as_str()).execute(&mut *tx).await
                }
                // `PostgresStore` has no way to ask for these: a replica's cache is SQLite.
                Op::Mirror { .. } | Op::Wipe => {
                    let message = "a PostgreSQL store does not mirror another store's changes";
                    return Err(Failure::Request(sqlx::Error::Protocol(message.into())));
                }
                Op::Site { site } => {
                    write_site(&mut tx, site).await.map_err(Failure::Request)?;
                    continue;
                }
            };
            // Zero rows is the answer "taken" or "not found", and takes no sequence number.
            if result.map_err(Failure::Request)?.rows_affected() == 1 {
                written += 1;
                ranks[slot] = Some(written);
                if let Some(id) = batch[slot].op.id() {
                    latest.insert(*id, written);
                }
            }
        }
        let mut base = 0;
        if written > 0 {
            let (ids, ranks_of): (Vec<String>, Vec<i64>) = latest
                .iter()
                .map(|(id, rank)| (id.as_str().to_owned(), *rank))
                .unzip();
            let numbering = match &self.fence {
                None => sqlx::query_scalar(NUMBER),
                Some(_) => sqlx::query_scalar(NUMBER_FENCED),
            };
            let mut numbering = numbering.bind(written).bind(&ids).bind(&ranks_of);
            if let Some(fence) = &self.fence {
                numbering = numbering.bind(&fence.pod).bind(&fence.incarnation);
            }
            let numbered: Vec<i64> = numbering
                .fetch_all(&mut *tx)
                .await
                .map_err(Failure::Batch)?;
            if numbered.is_empty() {
                let writable: bool = sqlx::query_scalar("SELECT writable FROM zbase_sequence")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(Failure::Batch)?;
                if !writable {
                    let message = "this site is no longer the primary (it handed over, or another site is primary in a later epoch): no pod of it accepts writes";
                    return Err(Failure::Batch(sqlx::Error::Protocol(message.into())));
                }
            }
            if let (Some(fence), true) = (&self.fence, numbered.is_empty()) {
                let message = format!(
                    "pod {} no longer holds its membership lease; its writes are fenced until it joins again",
                    fence.pod
                );
                return Err(Failure::Batch(sqlx::Error::Protocol(message)));
            }
            let Some(&last) = numbered.first().filter(|_| numbered.len() == ids.len()) else {
                let message = format!(
                    "numbering {} written resources updated {} rows",
                    ids.len(),
                    numbered.len()
                );
                return Err(Failure::Batch(sqlx::Error::Protocol(message)));
            };
            base = last - written;
        }
        tx.commit().await.map_err(Failure::Batch)?;
        ranks
            .into_iter()
            .map(|rank| rank.map(|rank| seq_from_sql(base + rank)).transpose())
            .collect::<Result<_, _>>()
            .map_err(|error| Failure::Batch(sqlx::Error::Protocol(error.to_string())))
    }

    /// Nothing to do: a failed transaction was rolled back when it was dropped, and the pool
    /// replaces a connection that went away.
    async fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn batch_failed(&self, error: &sqlx::Error, writes: usize) {
        tracing::warn!(%error, writes, "a store transaction failed");
    }

    /// Nothing to close: the pool is the store's, closed after the writer stops.
    async fn finish(self) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Runs against a real PostgreSQL server: the throwaway cluster `zbase-tests` starts once
    //! per test process, one fresh database per test.

    use super::*;
    use crate::store::conformance::{self, Fixture, id, jwk};
    use sqlx::PgConnection;
    use std::sync::Arc;
    use zbase_tests::postgres::fresh_database;

    async fn open(url: &str) -> PostgresStore {
        PostgresStore::connect(url, PostgresOptions::default())
            .await
            .unwrap()
    }

    async fn fresh() -> Fixture {
        Fixture::new(open(&fresh_database().await).await, ())
    }

    conformance::conformance_tests!(fresh);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_reproduces_an_export() {
        let source = fresh().await;
        let target = fresh_database().await;
        conformance::restore_reproduces_an_export(
            Arc::clone(&source.store),
            |items, wipe| {
                let target = target.clone();
                async move {
                    let store = open(&target).await;
                    let restored = store.restore(items, wipe).await;
                    store.close().await;
                    restored
                }
            },
            || async { Arc::new(open(&target).await) as Arc<dyn Store> },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_transactions() {
        let store = Arc::new(open(&fresh_database().await).await);
        conformance::sixty_four_writers_write_704_times(store.clone()).await;
        let stats = store.stats();
        assert_eq!(stats.writes, 64 * 11);
        assert!(
            stats.transactions < stats.writes,
            "every write paid its own commit: {stats:?}"
        );
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_pods_claiming_the_same_ids_have_exactly_one_winner_each() {
        let url = fresh_database().await;
        let pods = [Arc::new(open(&url).await), Arc::new(open(&url).await)];
        let tasks: Vec<_> = (0..64u32)
            .map(|n| {
                let pod = Arc::clone(&pods[n as usize % 2]);
                // Eight identifiers, each claimed four times from each pod at once.
                tokio::spawn(async move { (n % 8, pod.claim(&id(n % 8), &jwk(n)).await.unwrap()) })
            })
            .collect();
        let mut winners: HashMap<u32, Vec<Seq>> = HashMap::new();
        for task in tasks {
            if let (n, Claim::Claimed { seq }) = task.await.unwrap() {
                winners.entry(n).or_default().push(seq);
            }
        }
        for n in 0..8 {
            let won = winners.get(&n).map_or(0, Vec::len);
            assert_eq!(won, 1, "identifier {n} had {won} winners");
        }
        assert_eq!(
            pods[0].last_seq().await.unwrap(),
            8,
            "refused claims took numbers"
        );
        for pod in pods {
            pod.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_pods_rotating_one_key_have_exactly_one_winner() {
        let url = fresh_database().await;
        let pods = [Arc::new(open(&url).await), Arc::new(open(&url).await)];
        pods[0].claim(&id(1), &jwk(1)).await.unwrap();
        // Each pod's writer batches its own racers; the row lock decides between the pods.
        let tasks: Vec<_> = (0..16u32)
            .map(|n| {
                let pod = Arc::clone(&pods[n as usize % 2]);
                tokio::spawn(async move {
                    let outcome = pod.replace_key(&id(1), &jwk(1), &jwk(100 + n)).await;
                    (n, outcome.unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            if let (n, KeyReplacement::Replaced { .. }) = task.await.unwrap() {
                winners.push(n);
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        for pod in &pods {
            let stored = pod.load(&id(1)).await.unwrap().unwrap();
            assert_eq!(stored.jwk, jwk(100 + winners[0]));
        }
        assert_eq!(
            pods[1].last_seq().await.unwrap(),
            2,
            "stale rotations took numbers"
        );
        for pod in pods {
            pod.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resuming_reader_never_misses_a_change_with_two_pods_writing() {
        let url = fresh_database().await;
        let writers: Vec<Arc<dyn Store>> =
            vec![Arc::new(open(&url).await), Arc::new(open(&url).await)];
        let reader: Arc<dyn Store> = Arc::new(open(&url).await);
        conformance::a_resuming_reader_never_misses_a_change_from_several_writers(
            &writers,
            Arc::clone(&reader),
        )
        .await;
        // Both pods wrote, and every number was used exactly once.
        let last = reader.last_seq().await.unwrap();
        let listed = reader.changes_since(0, usize::MAX).await.unwrap();
        assert_eq!(listed.last().map(|change| change.seq), Some(last));
        for store in writers.iter().chain([&reader]) {
            store.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_and_sequence_survive_reconnect() {
        let url = fresh_database().await;
        let store = open(&url).await;
        store.claim(&id(1), &jwk(1)).await.unwrap();
        store.claim(&id(2), &jwk(2)).await.unwrap();
        let last = store
            .put_snapshot(&id(1), Bytes::from_static(b"\0kept\xff"))
            .await
            .unwrap();
        let before = store.load(&id(1)).await.unwrap();
        store.close().await;

        let store = open(&url).await;
        assert_eq!(store.load(&id(1)).await.unwrap(), before);
        assert_eq!(store.last_seq().await.unwrap(), last);
        let next = store
            .put_snapshot(&id(2), Bytes::from_static(b"later"))
            .await
            .unwrap();
        assert_eq!(next, last + 1);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_fails_while_the_server_is_down_and_recovers_by_itself() {
        // A server of its own: stopping the shared one would fail every other test.
        let server = zbase_tests::postgres::dedicated().await;
        let options = PostgresOptions {
            acquire_timeout: Duration::from_secs(1),
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect(&server.create_database().await, options)
            .await
            .unwrap();
        store.claim(&id(1), &jwk(1)).await.unwrap();
        store.ping().await.unwrap();

        server.stop().await;
        let down = store.ping().await;
        assert!(matches!(down, Err(StoreError::Database(_))), "{down:?}");
        let lost = store
            .put_snapshot(&id(1), Bytes::from_static(b"lost"))
            .await;
        assert!(matches!(lost, Err(StoreError::Database(_))), "{lost:?}");

        server.start().await;
        store.ping().await.unwrap();
        let seq = store
            .put_snapshot(&id(1), Bytes::from_static(b"kept"))
            .await
            .unwrap();
        assert_eq!(seq, 2, "the failed write took a sequence number");
        let loaded = store.load(&id(1)).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot, Some(Bytes::from_static(b"kept")));
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_schema_holds_only_key_snapshot_and_sequence() {
        let url = fresh_database().await;
        open(&url).await.close().await;
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = 'resources' ORDER BY ordinal_position",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(columns, ["id", "jwk", "snapshot", "seq"]);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        // Beside resources, only the counter, the pods' membership and the site's role and
        // epochs (nothing per resource).
        assert_eq!(
            tables,
            [
                "_sqlx_migrations",
                "resources",
                "zbase_epochs",
                "zbase_members",
                "zbase_membership",
                "zbase_sequence",
                "zbase_site"
            ]
        );
        conn.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_server_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = PostgresOptions {
            acquire_timeout: Duration::from_millis(500),
            ..PostgresOptions::default()
        };
        let url = format!("postgres://postgres:secret@127.0.0.1:{port}/none");
        let error = PostgresStore::connect(&url, options)
            .await
            .err()
            .expect("nothing listens there");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn options_never_print_the_password() {
        let options = PostgresOptions {
            password: Some("hunter2".into()),
            ..PostgresOptions::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
