//! The embedded backend: one SQLite file in WAL mode.
//!
//! Promise: `claim` and `put_snapshot` return only once their transaction is committed with
//! `synchronous=FULL`, that is, fsynced. Every write goes through one writer task that owns the
//! only writing connection. When it wakes it takes every request already queued (up to a bounded
//! batch), applies them in one transaction and commits once, so concurrent writers share one
//! fsync instead of paying one each (group commit). The writer numbers changes in commit order
//! and a batch becomes visible all at once, so readers, a separate pool that WAL lets run beside
//! the writer, always see a prefix of the sequence: resuming from the last position seen never
//! misses a committed change.

use super::batch::{Backend, Failure, Op, Write, WriteQueue};
use super::rows::{self, ChangeRow, ResourceRow, read_error, seq_from_sql};
use super::{
    Change, Claim, KeyReplacement, RestoreItem, Seq, Site, Store, StoreError, StoredResource,
};
use bytes::Bytes;
use futures::TryStreamExt as _;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _};
use std::path::Path;
use std::sync::PoisonError;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use zbase_proto::wire::ResourceId;

/// Read connections: loads and change feeds run beside the writer, never behind it.
const READERS: u32 = 4;

/// How long a statement waits for a lock. Readers and the writer never block each other in WAL
/// mode; this covers other users of the file: an operator's `sqlite3`, a backup, or a store
/// dropped without `close` whose writer is still finishing as the file is reopened.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on the write-ahead log left on disk after a checkpoint; one large batch would
/// otherwise keep its full size forever.
const WAL_SIZE_LIMIT: &str = "67108864";

/// The file, next to the database, that a station holds an exclusive lock on while it has the
/// store open.
pub const LOCK_FILE: &str = "station.lock";

/// `PRAGMA application_id` of a zbase store (the bytes "zbas"); set by the first migration.
const APPLICATION_ID: i64 = 0x7a62_6173;

/// SQLite's primary result codes for "this file is damaged" and "this is not a database".
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;

/// Creates a resource if its identifier is free; zero rows affected means taken.
const CLAIM: &str = "INSERT INTO resources (id, jwk, snapshot, seq) VALUES (?1, ?2, NULL, ?3) \
                     ON CONFLICT (id) DO NOTHING";

/// Replaces a resource's snapshot and moves it to the new sequence; zero rows means unknown.
const PUT: &str = "UPDATE resources SET snapshot = ?1, seq = ?2 WHERE id = ?3";

/// Replaces a resource's key if it is still the expected one; zero rows means another key
/// (or no resource). The snapshot stays.
const ROTATE: &str = "UPDATE resources SET jwk = ?1, seq = ?2 WHERE id = ?3 AND jwk = ?4";

/// The writer's page cache, in KiB when negative (SQLite's convention): 32 MiB.
const WRITER_CACHE: &str = "-32768";

/// Takes changes as the primary numbered them (the VALUES go between the two parts); a row
/// that already holds a later change stays. SQLite applies the rows in order, so a resource
/// twice in one statement ends at its later change.
const MIRROR_INTO: &str = "INSERT INTO resources (id, jwk, snapshot, seq) VALUES";
const MIRROR_CONFLICT: &str = "ON CONFLICT (id) DO UPDATE SET jwk = excluded.jwk, \
                               snapshot = excluded.snapshot, seq = excluded.seq \
                               WHERE excluded.seq > resources.seq";
/// Rows per mirroring statement (four parameters each, far below SQLite's limit).
const MIRROR_ROWS: usize = 128;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A [`Store`] in one SQLite file, written through one group-committing writer task.
pub struct SqliteStore {
    /// The writer's queue and task; closed before the files close.
    writes: WriteQueue,
    /// Connections for reads; they only ever see committed transactions.
    reader: SqlitePool,
    /// The exclusive lock on [`LOCK_FILE`], released on close (or drop). Two processes
    /// writing one file would each number changes from their own counter, so a second
    /// station must be refused before it opens the database.
    lock: std::sync::Mutex<Option<std::fs::File>>,
}

impl SqliteStore {
    /// Opens the store at `path`, creating it (and its directory) if missing, and migrates it.
    /// Refused with [`StoreError::InUse`] while another store (in any process) has the same
    /// directory open.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let lock = lock_directory(&directory_of(path).await?)?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT);
        let (mut conn, writer_options) = open_writer(path).await?;
        let last = max_seq(&mut conn).await?;

        // query_only makes a read connection unable to write even by mistake, so the writer's
        // numbering stays the only one.
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(base.pragma("query_only", "ON"))
            .await?;

        let writer = Writer {
            conn,
            options: writer_options,
            last,
        };
        Ok(SqliteStore {
            writes: WriteQueue::start(writer),
            reader,
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    /// Writes changes read from another store's feed with their own sequence numbers, in one
    /// transaction; durable on return. A resource that already holds a later change keeps it,
    /// so a page applied twice changes nothing. Returns the highest sequence now held, which
    /// is where a follower resumes. Only a replica's cache is written this way: its own
    /// numbering is then the primary's.
    pub async fn mirror(&self, changes: Vec<Change>) -> Result<Seq, StoreError> {
        self.writes.mirror(changes).await
    }

    /// Deletes every resource and epoch in one transaction (the site's role stays): a
    /// replica's cache that diverged from a new primary, before it syncs again from the start.
    pub async fn wipe(&self) -> Result<(), StoreError> {
        self.writes.wipe().await
    }

    /// Transactions committed and writes answered so far.
    pub fn stats(&self) -> super::WriteStats {
        self.writes.stats()
    }

    /// Exports the store at `path` while a station may be serving it (see [`Store::export`]):
    /// a read-only connection, without the directory's lock and without migrating, whose read
    /// transaction keeps one snapshot of the file however the station writes meanwhile.
    pub async fn export_file(path: &Path, into: mpsc::Sender<Change>) -> Result<Seq, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT)
            .connect()
            .await
            .map_err(|e| on_disk(path, e))?;
        refuse_foreign(&mut conn, path)
            .await
            .map_err(|e| on_disk(path, e))?;
        export_from(&mut conn, into).await
    }

    /// Restores into the store at `path`, which no station may be serving: the resources
    /// `from` sends are written in one transaction, committed on [`RestoreItem::Commit`]. A
    /// store holding resources is refused unless `wipe`, which deletes them in the same
    /// transaction.
    pub async fn restore(
        path: &Path,
        mut from: mpsc::Receiver<RestoreItem>,
        wipe: bool,
    ) -> Result<Seq, StoreError> {
        let _lock = lock_directory(&directory_of(path).await?)?;
        let (mut conn, _) = open_writer(path).await?;
        let mut tx = conn.begin().await?;
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
                        "INSERT INTO resources (id, jwk, snapshot, seq) VALUES (?1, ?2, ?3, ?4)",
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
                    let last = max_seq(&mut tx).await?;
                    if last > sequence {
                        return Err(StoreError::Corrupt(format!(
                            "the restored resources reach sequence {last}, past the backup's \
                             point {sequence}"
                        )));
                    }
                    tx.commit().await?;
                    conn.close().await?;
                    return Ok(last);
                }
            }
        }
        // Dropping the transaction rolls it back.
        Err(StoreError::RestoreAbandoned)
    }
}

/// Sends every resource in one read transaction (see [`Store::export`]).
async fn export_from(
    conn: &mut SqliteConnection,
    into: mpsc::Sender<Change>,
) -> Result<Seq, StoreError> {
    let mut tx = conn.begin().await.map_err(read_error)?;
    // The first read fixes the snapshot the rest of the transaction sees.
    let last = max_seq(&mut tx).await?;
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
    Ok(last)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
        let row: Option<ResourceRow> =
            sqlx::query_as("SELECT jwk, snapshot, seq FROM resources WHERE id = ?1")
                .bind(id.as_str())
                .fetch_optional(&self.reader)
                .await
                .map_err(read_error)?;
        row.map(rows::stored).transpose()
    }

    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        self.writes.claim(id, jwk).await
    }

    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError> {
        self.writes.put_snapshot(id, snapshot).await
    }

    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError> {
        self.writes.replace_key(id, expected, jwk).await
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<Vec<Change>, StoreError> {
        let (after, limit) = rows::change_bounds(after, limit);
        let found: Vec<ChangeRow> = sqlx::query_as(
            "SELECT seq, id, jwk, snapshot FROM resources WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(read_error)?;
        found.into_iter().map(rows::change).collect()
    }

    async fn last_seq(&self) -> Result<Seq, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(read_error)?;
        max_seq(&mut conn).await
    }

    async fn export(&self, into: mpsc::Sender<Change>) -> Result<Seq, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(read_error)?;
        export_from(&mut conn, into).await
    }

    fn commits(&self) -> watch::Receiver<Seq> {
        self.writes.commits()
    }

    async fn site(&self) -> Result<Option<Site>, StoreError> {
        let mut tx = self.reader.begin().await.map_err(read_error)?;
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM site")
            .fetch_optional(&mut *tx)
            .await
            .map_err(read_error)?;
        let epochs: Vec<(i64, i64)> =
            sqlx::query_as("SELECT epoch, first_seq FROM epochs ORDER BY epoch")
                .fetch_all(&mut *tx)
                .await
                .map_err(read_error)?;
        tx.rollback().await.map_err(read_error)?;
        role.map(|role| rows::site(&role, &epochs)).transpose()
    }

    async fn set_site(&self, site: Site) -> Result<(), StoreError> {
        self.writes.set_site(site).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Reads a page of the file, not just the connection: a file that went away or became
        // unreadable fails here.
        sqlx::query("SELECT count(*) FROM sqlite_schema")
            .execute(&self.reader)
            .await
            .map_err(read_error)?;
        Ok(())
    }

    async fn close(&self) {
        // The writer commits everything queued, then closes its connection.
        self.writes.close().await;
        self.reader.close().await;
        // Only now that nothing of ours touches the file may another station open it.
        drop(
            self.lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// The only writer: owns the writing connection and numbers changes in commit order.
struct Writer {
    conn: SqliteConnection,
    /// To reconnect when the connection's state is in doubt after a failure.
    options: SqliteConnectOptions,
    /// The highest committed sequence; the next change gets `last + 1`.
    last: Seq,
}

impl Backend for Writer {
    /// Applies `batch` in one transaction and commits it: each request's sequence, or `None`
    /// where it changed nothing.
    async fn transact(&mut self, batch: &[Write]) -> Result<Vec<Option<Seq>>, Failure> {
        // IMMEDIATE takes the write lock up front, so a conflict shows at BEGIN, never halfway.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await
            .map_err(Failure::Batch)?;
        let mut last = self.last;
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            if let Op::Wipe = &write.op {
                for table in ["DELETE FROM resources", "DELETE FROM epochs"] {
                    sqlx::query(table)
                        .execute(&mut self.conn)
                        .await
                        .map_err(Failure::Request)?;
                }
                last = 0;
                outcomes.push(None);
                continue;
            }
            if let Op::Site { site } = &write.op {
                write_site(&mut self.conn, site).await?;
                outcomes.push(None);
                continue;
            }
            if let Op::Mirror { changes } = &write.op {
                for rows in changes.chunks(MIRROR_ROWS) {
                    mirror(&mut self.conn, rows).await?;
                }
                last = changes.iter().map(|change| change.seq).fold(last, Seq::max);
                outcomes.push(Some(last));
                continue;
            }
            let next = last.checked_add(1);
            let Some((next, seq)) = next.and_then(|n| Some((n, i64::try_from(n).ok()?))) else {
                let exhausted = "the change sequence is exhausted".to_owned();
                return Err(Failure::Batch(sqlx::Error::Protocol(exhausted)));
            };
            let result = match &write.op {
                Op::Claim { id, jwk } => {
                    let claim = sqlx::query(CLAIM).bind(id.as_str()).bind(jwk.as_str());
                    claim.bind(seq).execute(&mut self.conn).await
                }
                Op::Put { id, snapshot } => {
                    let put = sqlx::query(PUT).bind(&snapshot[..]).bind(seq);
                    put.bind(id.as_str()).execute(&mut self.conn).await
                }
                Op::Rotate { id, expected, jwk } => {
                    let rotate = sqlx::query(ROTATE).bind(jwk.as_str()).bind(seq);
                    let rotate = rotate.bind(id.as_str()).bind(expected.as_str());
                    rotate.execute(&mut self.conn).await
                }
                Op::Mirror { .. } | Op::Site { .. } | Op::Wipe => continue,
            };
            // Zero rows is the answer "taken" or "not found", and takes no sequence number.
            if result.map_err(Failure::Request)?.rows_affected() == 1 {
                last = next;
                outcomes.push(Some(next));
            } else {
                outcomes.push(None);
            }
        }
        sqlx::query("COMMIT")
            .execute(&mut self.conn)
            .await
            .map_err(Failure::Batch)?;
        self.last = last;
        Ok(outcomes)
    }

    /// After a failed transaction: make sure none is left open and relearn the committed
    /// sequence from disk. An error here means the writer cannot trust its connection.
    async fn recover(&mut self) -> Result<(), StoreError> {
        // SQLite may already have rolled back on its own (e.g. disk full), in which case ROLLBACK
        // fails too. A fresh connection is the one state that is certain either way.
        if sqlx::query("ROLLBACK")
            .execute(&mut self.conn)
            .await
            .is_err()
        {
            let fresh = self.options.connect().await?;
            let stale = std::mem::replace(&mut self.conn, fresh);
            // Closing abandons whatever the old connection still had open.
            if let Err(error) = stale.close().await {
                tracing::warn!(%error, "closing a failed write connection failed");
            }
        }
        self.last = max_seq(&mut self.conn).await?;
        Ok(())
    }

    async fn finish(self) {
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "closing the store's write connection failed");
        }
    }
}

/// Replaces the site's role and epochs (inside the writer's transaction).
async fn write_site(conn: &mut SqliteConnection, site: &Site) -> Result<(), Failure> {
    sqlx::query("DELETE FROM site")
        .execute(&mut *conn)
        .await
        .map_err(Failure::Request)?;
    sqlx::query("INSERT INTO site (singleton, role) VALUES (1, ?1)")
        .bind(site.role.name())
        .execute(&mut *conn)
        .await
        .map_err(Failure::Request)?;
    sqlx::query("DELETE FROM epochs")
        .execute(&mut *conn)
        .await
        .map_err(Failure::Request)?;
    for epoch in &site.epochs {
        let (number, first) = rows::epoch_to_sql(epoch).map_err(Failure::Request)?;
        sqlx::query("INSERT INTO epochs (epoch, first_seq) VALUES (?1, ?2)")
            .bind(number)
            .bind(first)
            .execute(&mut *conn)
            .await
            .map_err(Failure::Request)?;
    }
    Ok(())
}

/// Writes mirrored changes with their own sequences, in order, as one statement; a row
/// that already holds a later change stays. One statement per many rows, since each statement
/// is a round trip to SQLite's worker thread.
async fn mirror(conn: &mut SqliteConnection, rows: &[Change]) -> Result<(), Failure> {
    let values = vec!["(?, ?, ?, ?)"; rows.len()].join(", ");
    let sql = format!("{MIRROR_INTO} {values} {MIRROR_CONFLICT}");
    let mut query = sqlx::query(&sql);
    for change in rows {
        let seq = i64::try_from(change.seq).map_err(|_| {
            let message = format!("mirrored sequence {} is out of range", change.seq);
            Failure::Request(sqlx::Error::Protocol(message))
        })?;
        query = query
            .bind(change.id.as_str())
            .bind(&change.jwk)
            .bind(change.snapshot.as_deref())
            .bind(seq);
    }
    query.execute(conn).await.map_err(Failure::Request)?;
    Ok(())
}

/// The writing connection to the store file `path` (created if missing), checked to be a
/// zbase store and migrated, and the options to open it again.
async fn open_writer(path: &Path) -> Result<(SqliteConnection, SqliteConnectOptions), StoreError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(BUSY_TIMEOUT)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .pragma("journal_size_limit", WAL_SIZE_LIMIT)
        // Group commits and a replica's pages make transactions of tens of megabytes: a page
        // cache big enough to hold one, and statement journals in memory, keep SQLite from
        // spilling pages to the log halfway through (measured in `make bench`, figure 12).
        .pragma("cache_size", WRITER_CACHE)
        .pragma("temp_store", "memory");
    // The first statements on a file are where SQLite notices it is not a database.
    let mut conn = options.connect().await.map_err(|e| on_disk(path, e))?;
    refuse_foreign(&mut conn, path)
        .await
        .map_err(|e| on_disk(path, e))?;
    MIGRATOR.run(&mut conn).await?;
    Ok((conn, options))
}

/// The directory of the store file `path`, created if missing.
async fn directory_of(path: &Path) -> Result<std::path::PathBuf, StoreError> {
    let dir = match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(sqlx::Error::Io)?;
    Ok(dir.to_path_buf())
}

/// Takes the exclusive lock on `dir`'s [`LOCK_FILE`], or says which directory is in use. The
/// kernel releases it when the process exits however it exits, so a killed station never
/// leaves a stale lock behind.
fn lock_directory(dir: &Path) -> Result<std::fs::File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(sqlx::Error::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(error)) => Err(sqlx::Error::Io(error).into()),
    }
}

/// Refuses a database that some other program wrote, rather than adding our tables to it.
async fn refuse_foreign(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let application: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut *conn)
        .await?;
    if application == APPLICATION_ID {
        return Ok(());
    }
    if application != 0 {
        return Err(StoreError::Corrupt(format!(
            "{} belongs to another application (application_id {application:#x}); give the \
             station a data directory of its own",
            path.display()
        )));
    }
    // A new file has no tables; sqlx's own table may exist if the first migration was interrupted.
    let foreign: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if foreign > 0 {
        return Err(StoreError::Corrupt(format!(
            "{} is a SQLite database that a zbase station did not create; give the station a \
             data directory of its own",
            path.display()
        )));
    }
    Ok(())
}

/// Names the file when SQLite reports it is not a database or is damaged.
fn on_disk(path: &Path, error: impl Into<StoreError>) -> StoreError {
    let error = error.into();
    let code = match &error {
        StoreError::Database(sqlx::Error::Database(db)) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff),
        _ => None,
    };
    match code {
        Some(SQLITE_NOTADB | SQLITE_CORRUPT) => StoreError::Corrupt(format!(
            "{} is not a readable SQLite database ({error}); restore it from a backup or move it \
             aside",
            path.display()
        )),
        _ => error,
    }
}

/// The highest committed sequence, 0 for an empty store.
async fn max_seq(conn: &mut SqliteConnection) -> Result<Seq, StoreError> {
    let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM resources")
        .fetch_one(&mut *conn)
        .await
        .map_err(read_error)?;
    seq_from_sql(max.unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Fixture, id, jwk};
    use std::sync::Arc;

    async fn fresh() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"))
            .await
            .unwrap();
        Fixture::new(store, dir)
    }

    conformance::conformance_tests!(fresh);

    fn mirrored(seq: Seq, n: u32, snapshot: &'static [u8]) -> Change {
        Change {
            seq,
            id: id(n),
            jwk: jwk(n),
            snapshot: Some(Bytes::from_static(snapshot)),
        }
    }

    #[tokio::test]
    async fn mirrored_changes_keep_their_sequence_and_a_repeated_or_older_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.sqlite3");
        let store = SqliteStore::open(&path).await.unwrap();
        let commits = store.commits();
        let page = vec![mirrored(5, 1, b"a at 5"), mirrored(9, 2, b"b at 9")];
        assert_eq!(store.mirror(page.clone()).await.unwrap(), 9);
        assert_eq!(*commits.borrow(), 9, "a mirror announces its commit");
        assert_eq!(store.mirror(page).await.unwrap(), 9, "the same page again");
        assert_eq!(
            store.mirror(vec![mirrored(3, 1, b"a at 3")]).await.unwrap(),
            9
        );
        let a = store.load(&id(1)).await.unwrap().unwrap();
        assert_eq!((a.seq, a.snapshot.as_deref()), (5, Some(&b"a at 5"[..])));
        assert_eq!(
            store
                .mirror(vec![mirrored(12, 1, b"a at 12")])
                .await
                .unwrap(),
            12
        );
        let changes: Vec<Seq> = store
            .changes_since(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|change| change.seq)
            .collect();
        assert_eq!(changes, vec![9, 12]);
        store.close().await;
        let reopened = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            reopened.last_seq().await.unwrap(),
            12,
            "the position survives a restart"
        );
    }

    #[tokio::test]
    async fn a_mirrored_page_is_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("station.sqlite3"))
            .await
            .unwrap();
        store.mirror(vec![mirrored(4, 1, b"a")]).await.unwrap();
        // The second change reuses sequence 4 under another identifier, which the unique index
        // refuses: the whole page fails, and its first change is not kept either.
        let clash = vec![mirrored(7, 2, b"b"), mirrored(4, 3, b"c")];
        assert!(store.mirror(clash).await.is_err());
        assert_eq!(store.load(&id(2)).await.unwrap(), None);
        assert_eq!(store.last_seq().await.unwrap(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_reproduces_an_export() {
        let source = fresh().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.sqlite3");
        conformance::restore_reproduces_an_export(
            Arc::clone(&source.store),
            |items, wipe| SqliteStore::restore(&path, items, wipe),
            || async { Arc::new(SqliteStore::open(&path).await.unwrap()) as Arc<dyn Store> },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_export_reads_one_point_beside_a_serving_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.sqlite3");
        let store = Arc::new(SqliteStore::open(&path).await.unwrap());
        conformance::populate(store.as_ref(), 20).await;
        let expected = store.changes_since(0, usize::MAX).await.unwrap();
        // What `zbase-station backup` does beside a running station: no lock, read only.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let export = tokio::spawn({
            let path = path.clone();
            async move { SqliteStore::export_file(&path, tx).await }
        });
        let mut all = vec![rx.recv().await.unwrap()];
        for i in 0..20 {
            store
                .put_snapshot(&id(i), Bytes::from_static(b"late"))
                .await
                .unwrap();
        }
        while let Some(change) = rx.recv().await {
            all.push(change);
        }
        assert_eq!(export.await.unwrap().unwrap(), expected.last().unwrap().seq);
        assert_eq!(all, expected);
        store.close().await;
        let missing =
            SqliteStore::export_file(&dir.path().join("nothing"), tokio::sync::mpsc::channel(1).0)
                .await
                .unwrap_err();
        assert!(missing.to_string().contains("--data-dir"), "{missing}");
    }

    /// A plain connection to the file, as an operator's `sqlite3` would open it.
    async fn inspect(path: &Path) -> SqliteConnection {
        SqliteConnectOptions::new()
            .filename(path)
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn concurrent_writers_share_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("store.db"))
                .await
                .unwrap(),
        );
        conformance::sixty_four_writers_write_704_times(store.clone()).await;
        let stats = store.stats();
        assert_eq!(stats.writes, 64 * 11);
        assert!(
            stats.transactions < stats.writes,
            "every write paid its own commit: {stats:?}"
        );
        store.close().await;
    }

    /// Claims `id(0..n)`, then puts a snapshot on each from `n` tasks at once. On this
    /// single-threaded runtime every task enqueues before the writer runs, so the puts form one
    /// batch.
    async fn one_batch_of_puts(store: &Arc<SqliteStore>, n: u32) -> Vec<Result<Seq, StoreError>> {
        for n in 0..n {
            store.claim(&id(n), &jwk(n)).await.unwrap();
        }
        let puts: Vec<_> = (0..n)
            .map(|n| {
                let store = Arc::clone(store);
                tokio::spawn(async move { store.put_snapshot(&id(n), Bytes::from("new")).await })
            })
            .collect();
        let mut results = Vec::new();
        for put in puts {
            results.push(put.await.unwrap());
        }
        results
    }

    #[tokio::test]
    async fn a_failing_request_does_not_fail_the_rest_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = Arc::new(SqliteStore::open(&path).await.unwrap());
        // Stands in for a request that SQLite refuses on its own merits.
        let refuse = format!(
            "CREATE TRIGGER refuse BEFORE UPDATE ON resources WHEN NEW.id = '{}' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            id(3).as_str()
        );
        sqlx::raw_sql(&refuse)
            .execute(&mut inspect(&path).await)
            .await
            .unwrap();

        let results = one_batch_of_puts(&store, 8).await;
        let mut previous = 8;
        for (n, result) in (0..).zip(results) {
            let loaded = store.load(&id(n)).await.unwrap().unwrap();
            if n == 3 {
                assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
                assert_eq!(loaded.snapshot, None);
            } else {
                let seq = result.unwrap();
                assert!(seq > previous, "{seq} after {previous}");
                previous = seq;
                assert_eq!(
                    (loaded.snapshot, loaded.seq),
                    (Some(Bytes::from("new")), seq)
                );
            }
        }
        assert_eq!(store.last_seq().await.unwrap(), previous);
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_commit_fails_its_whole_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = Arc::new(SqliteStore::open(&path).await.unwrap());
        // A deferred foreign key is checked at COMMIT, so updating id(3) makes the commit fail
        // (sqlx turns foreign keys on for every connection).
        let fail_commit = format!(
            "CREATE TABLE parent (y INTEGER PRIMARY KEY); \
             CREATE TABLE child (x INTEGER REFERENCES parent (y) DEFERRABLE INITIALLY DEFERRED); \
             CREATE TRIGGER orphan AFTER UPDATE ON resources WHEN NEW.id = '{}' \
             BEGIN INSERT INTO child VALUES (1); END",
            id(3).as_str()
        );
        sqlx::raw_sql(&fail_commit)
            .execute(&mut inspect(&path).await)
            .await
            .unwrap();

        let results = one_batch_of_puts(&store, 8).await;
        for (n, result) in (0..).zip(results) {
            assert!(
                matches!(result, Err(StoreError::Database(_))),
                "put {n}: {result:?}"
            );
            assert_eq!(store.load(&id(n)).await.unwrap().unwrap().snapshot, None);
        }
        assert_eq!(store.last_seq().await.unwrap(), 8);
        assert_eq!(store.changes_since(8, 100).await.unwrap(), []);

        let seq = store
            .put_snapshot(&id(0), Bytes::from("later"))
            .await
            .unwrap();
        assert_eq!(seq, 9, "the failed batch took no sequence numbers");
        store.close().await;
    }

    #[tokio::test]
    async fn data_and_sequence_survive_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.claim(&id(1), &jwk(1)).await.unwrap();
        store.claim(&id(2), &jwk(2)).await.unwrap();
        let last = store
            .put_snapshot(&id(1), Bytes::from_static(b"\0kept\xff"))
            .await
            .unwrap();
        let before = store.load(&id(1)).await.unwrap();
        store.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.load(&id(1)).await.unwrap(), before);
        assert_eq!(store.last_seq().await.unwrap(), last);
        let next = store
            .put_snapshot(&id(2), Bytes::from_static(b"later"))
            .await
            .unwrap();
        assert!(next > last, "{next} after reopening at {last}");
        store.close().await;
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_a_drop_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.claim(&id(1), &jwk(1)).await.unwrap();
        let seq = store
            .put_snapshot(&id(1), Bytes::from_static(b"acknowledged"))
            .await
            .unwrap();
        drop(store);

        let store = SqliteStore::open(&path).await.unwrap();
        let loaded = store.load(&id(1)).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot, Some(Bytes::from_static(b"acknowledged")));
        assert_eq!((loaded.seq, store.last_seq().await.unwrap()), (seq, seq));
        store.close().await;
    }

    #[tokio::test]
    async fn a_replaced_key_survives_a_drop_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.claim(&id(1), &jwk(1)).await.unwrap();
        store
            .put_snapshot(&id(1), Bytes::from_static(b"kept"))
            .await
            .unwrap();
        let replaced = store.replace_key(&id(1), &jwk(1), &jwk(7)).await.unwrap();
        let KeyReplacement::Replaced { seq } = replaced else {
            panic!("not replaced: {replaced:?}");
        };
        drop(store);

        let store = SqliteStore::open(&path).await.unwrap();
        let loaded = store.load(&id(1)).await.unwrap().unwrap();
        assert_eq!(loaded.jwk, jwk(7));
        assert_eq!(loaded.snapshot, Some(Bytes::from_static(b"kept")));
        assert_eq!((loaded.seq, store.last_seq().await.unwrap()), (seq, seq));
        store.close().await;
    }

    #[tokio::test]
    async fn writes_queued_before_close_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = Arc::new(SqliteStore::open(&path).await.unwrap());
        let writers: Vec<_> = (0..32)
            .map(|n| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.claim(&id(n), &jwk(n)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        store.close().await;
        let mut acknowledged = Vec::new();
        for (n, writer) in (0..).zip(writers) {
            match writer.await.unwrap() {
                Ok(claim) => acknowledged.push((n, claim)),
                Err(StoreError::Closed) => {}
                Err(other) => panic!("claim {n}: {other}"),
            }
        }

        let store = SqliteStore::open(&path).await.unwrap();
        for (n, claim) in acknowledged {
            let Claim::Claimed { seq } = claim else {
                panic!("identifier {n} was free");
            };
            assert_eq!(store.load(&id(n)).await.unwrap().unwrap().seq, seq);
        }
        store.close().await;
    }

    #[tokio::test]
    async fn a_second_store_on_one_directory_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let first = SqliteStore::open(&path).await.unwrap();
        // Another file in the same directory shares the directory's lock.
        match SqliteStore::open(&dir.path().join("other.db")).await {
            Err(error @ StoreError::InUse(_)) => {
                let message = error.to_string();
                assert!(
                    message.contains(&*dir.path().to_string_lossy()),
                    "{message}"
                );
                assert!(message.contains("--store postgres://"), "{message}");
            }
            Err(other) => panic!("expected InUse, got {other:?}"),
            Ok(_) => panic!("a second store opened a directory in use"),
        }
        first.close().await;
        SqliteStore::open(&path).await.unwrap().close().await;
    }

    #[tokio::test]
    async fn a_missing_parent_directory_is_created_and_the_file_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("nested").join("store.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.close().await;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut inspect(&path).await)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn the_schema_holds_only_key_snapshot_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        SqliteStore::open(&path).await.unwrap().close().await;
        let mut conn = inspect(&path).await;
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('resources')")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(columns, ["id", "jwk", "snapshot", "seq"]);
        let indexed: Vec<String> = sqlx::query_scalar(
            "SELECT i.name || ':' || c.name FROM pragma_index_list('resources') AS i \
             JOIN pragma_index_info(i.name) AS c ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            indexed,
            ["resources_by_seq:seq", "sqlite_autoindex_resources_1:id"]
        );
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(tables, ["_sqlx_migrations", "epochs", "resources", "site"]);
    }

    #[tokio::test]
    async fn a_file_that_is_not_sqlite_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        std::fs::write(&path, b"this is a text file, not a database\n".repeat(64)).unwrap();
        match SqliteStore::open(&path).await {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains(&*path.to_string_lossy()), "{message}");
            }
            Err(other) => panic!("expected Corrupt, got {other:?}"),
            Ok(_) => panic!("a text file opened as a store"),
        }
    }

    #[tokio::test]
    async fn another_programs_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut other = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE users (name TEXT)")
            .execute(&mut other)
            .await
            .unwrap();
        other.close().await.unwrap();
        let refused = SqliteStore::open(&path).await;
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{:?}",
            refused.err()
        );
    }
}
