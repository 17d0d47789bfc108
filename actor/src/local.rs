//! The device's own store: its identity file and a SQLite database of the resources it holds,
//! their keys and every operation it has seen. Everything works offline against it; sync
//! brings it and the station's snapshot together.
//!
//! Layout of a home directory (`--home`, `$ZBASE_HOME`, or `~/.zbase`):
//! `identity.json` (the secret keys, mode 0600) and `zbase.db`.

use std::path::{Path, PathBuf};

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use zbase_proto::wire::ResourceId;

use crate::access::AccessKey;
use crate::envelope::ContentKey;
use crate::identity::{ActorId, Identity, PublicIdentity, StoredIdentity};
use crate::operation::SignedOperation;

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No identity yet.
    #[error("no identity in {0}: create one with `zbase init`")]
    NoIdentity(PathBuf),
    /// One exists already.
    #[error("an identity already exists in {0}; refusing to replace it")]
    IdentityExists(PathBuf),
    /// The identity file is unreadable.
    #[error("identity file {path}: {detail}")]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The resource is not held here.
    #[error("resource {0} is not on this device: create it, or join it when shared with you")]
    UnknownResource(String),
    /// A stored value is corrupt.
    #[error("local store corrupt: {0}")]
    Corrupt(String),
    /// File system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The database was made by an older zbase.
    #[error(
        "the database in {0} was made by an earlier zbase and cannot be carried forward (its \
         grants lack the proofs this version checks): move zbase.db aside, keeping \
         identity.json (it is who you are), and have each resource shared with you again; \
         resources created by the earlier zbase stay with it"
    )]
    OldFormat(PathBuf),
    /// The database was made by a newer zbase.
    #[error("{0} was made by a newer zbase (format {1}); upgrade zbase to use it")]
    NewerFormat(PathBuf, i64),
    /// The database.
    #[error("local database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A resource as this device holds it.
#[derive(Clone, Debug)]
pub struct Held {
    /// Its identifier.
    pub id: ResourceId,
    /// The station URL.
    pub station: String,
    /// Its owner.
    pub owner: PublicIdentity,
    /// The access key this device last proved (or will prove).
    pub access: AccessKey,
    /// A rotation sent but not confirmed: the access key and content key it would install.
    pub rotating: Option<(AccessKey, ContentKey)>,
    /// A revocation is recorded and the keys still have to be rotated.
    pub rotation_due: bool,
}

/// The device's store.
pub struct Local {
    home: PathBuf,
    db: SqlitePool,
}

/// The layout `SCHEMA` makes, kept in SQLite's `user_version`. Version 1 (before sealing keys
/// carried their actor's signature) cannot be carried forward: the proofs it lacks can only
/// come from the actors themselves.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS resources (
  id TEXT PRIMARY KEY,
  station TEXT NOT NULL,
  owner TEXT NOT NULL,
  access TEXT NOT NULL,
  next_access TEXT,
  next_epoch INTEGER,
  next_key TEXT,
  rotation_due INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS content_keys (
  resource TEXT NOT NULL,
  epoch INTEGER NOT NULL,
  key TEXT NOT NULL,
  PRIMARY KEY (resource, epoch)
);
CREATE TABLE IF NOT EXISTS operations (
  resource TEXT NOT NULL,
  id TEXT NOT NULL,
  token BLOB NOT NULL,
  PRIMARY KEY (resource, id)
);
CREATE TABLE IF NOT EXISTS deliveries (
  resource TEXT NOT NULL,
  member TEXT NOT NULL,
  public TEXT NOT NULL,
  PRIMARY KEY (resource, member)
);
"#;

fn corrupt(what: &str) -> LocalError {
    LocalError::Corrupt(what.to_owned())
}

impl Local {
    /// Opens (creating if needed) the store in `home`.
    pub async fn open(home: &Path) -> Result<Local, LocalError> {
        if !home.exists() {
            std::fs::create_dir_all(home)?;
            // Only a directory made here: `--home /tmp` must not change /tmp.
            restrict(home, 0o700)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(home.join("zbase.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Nothing acknowledged to the user (a put, a new key) may vanish in a crash.
            .synchronous(SqliteSynchronous::Full);
        let db: SqlitePool = sqlx::pool::PoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        // One immediate transaction: a second process opening a new home at the same moment
        // must see either nothing or the whole layout with its number, never tables without.
        let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?;
        let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut *tx)
            .await?;
        if version > SCHEMA_VERSION {
            return Err(LocalError::NewerFormat(home.to_owned(), version));
        }
        if version < SCHEMA_VERSION && tables > 0 {
            return Err(LocalError::OldFormat(home.to_owned()));
        }
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Local {
            home: home.to_owned(),
            db,
        })
    }

    fn identity_path(&self) -> PathBuf {
        self.home.join("identity.json")
    }

    /// Creates and stores a new identity; refuses to replace one.
    pub fn create_identity(&self) -> Result<Identity, LocalError> {
        let path = self.identity_path();
        if path.exists() {
            return Err(LocalError::IdentityExists(path));
        }
        let identity = Identity::generate(&mut rand::rngs::OsRng);
        let json = serde_json::to_vec_pretty(&identity.to_stored())
            .map_err(|e| corrupt(&e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            restrict(&tmp, 0o600)?;
            file.write_all(&json)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(identity)
    }

    /// The stored identity.
    pub fn identity(&self) -> Result<Identity, LocalError> {
        let path = self.identity_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::NoIdentity(self.home.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let bad = |detail: String| LocalError::BadIdentity {
            path: path.clone(),
            detail,
        };
        let stored: StoredIdentity =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        Identity::from_stored(&stored).map_err(|e| bad(e.to_string()))
    }

    /// Records a resource this device now holds (created here, or joined).
    pub async fn add_resource(
        &self,
        id: &ResourceId,
        station: &str,
        owner: &PublicIdentity,
        access: &AccessKey,
    ) -> Result<(), LocalError> {
        sqlx::query(
            "INSERT INTO resources (id, station, owner, access) VALUES (?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET station = excluded.station, access = excluded.access",
        )
        .bind(id.as_str())
        .bind(station)
        .bind(owner.to_text())
        .bind(access.to_text().as_str())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Every resource held here.
    pub async fn resources(&self) -> Result<Vec<ResourceId>, LocalError> {
        let rows = sqlx::query("SELECT id FROM resources ORDER BY id")
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|row| ResourceId::parse(row.get::<&str, _>(0)).map_err(|_| corrupt("resource id")))
            .collect()
    }

    /// A resource held here.
    pub async fn resource(&self, id: &ResourceId) -> Result<Held, LocalError> {
        let row = sqlx::query(
            "SELECT station, owner, access, next_access, next_epoch, next_key, rotation_due
             FROM resources WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| LocalError::UnknownResource(id.as_str().to_owned()))?;
        let owner = PublicIdentity::parse(row.get(1)).ok_or_else(|| corrupt("owner"))?;
        let access = AccessKey::from_text(row.get(2)).ok_or_else(|| corrupt("access key"))?;
        let rotating = rotation_at(&row, 3)?;
        Ok(Held {
            id: *id,
            station: row.get(0),
            owner,
            access,
            rotating,
            rotation_due: row.get::<i64, _>(6) != 0,
        })
    }

    /// Every content key of a resource held here.
    pub async fn keys(&self, id: &ResourceId) -> Result<Vec<ContentKey>, LocalError> {
        let rows =
            sqlx::query("SELECT epoch, key FROM content_keys WHERE resource = ? ORDER BY epoch")
                .bind(id.as_str())
                .fetch_all(&self.db)
                .await?;
        rows.iter()
            .map(|row| content_key(row.get(0), row.get(1)))
            .collect()
    }

    /// Adds content keys (an epoch already held keeps its key).
    pub async fn add_keys(&self, id: &ResourceId, keys: &[ContentKey]) -> Result<(), LocalError> {
        let mut tx = self.db.begin().await?;
        for key in keys {
            sqlx::query(
                "INSERT OR IGNORE INTO content_keys (resource, epoch, key) VALUES (?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(i64::from(key.epoch()))
            .bind(crate::b64(key.bytes()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets the key of one epoch, replacing any held: a key shown to open that epoch's data.
    pub async fn replace_key(&self, id: &ResourceId, key: &ContentKey) -> Result<(), LocalError> {
        sqlx::query("INSERT OR REPLACE INTO content_keys (resource, epoch, key) VALUES (?, ?, ?)")
            .bind(id.as_str())
            .bind(i64::from(key.epoch()))
            .bind(crate::b64(key.bytes()))
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Replaces the access key (learned from a mailbox).
    pub async fn set_access(&self, id: &ResourceId, access: &AccessKey) -> Result<(), LocalError> {
        sqlx::query("UPDATE resources SET access = ? WHERE id = ?")
            .bind(access.to_text().as_str())
            .bind(id.as_str())
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Records that a revocation needs the keys rotated.
    pub async fn set_rotation_due(&self, id: &ResourceId) -> Result<(), LocalError> {
        sqlx::query("UPDATE resources SET rotation_due = 1 WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Records a rotation about to be sent, so a crash after the station took it loses nothing;
    /// returns the keys to send: `access` and `key` for the epoch after the newest held.
    ///
    /// If keys for that epoch are already recorded (a rotation another `zbase` process on this
    /// home is sending, or one whose answer was lost), those are returned instead: two
    /// processes rotating at once then send the same keys, so whichever the station takes,
    /// both install the same ones. Keys recorded for an older epoch (a rotation another member
    /// made first) are replaced. The epoch is read in the same immediate transaction, so a
    /// process that read the keys earlier cannot record a stale epoch.
    pub async fn begin_rotation(
        &self,
        id: &ResourceId,
        access: &AccessKey,
        key: &[u8; 32],
    ) -> Result<(AccessKey, ContentKey), LocalError> {
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        let epoch: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(epoch), 0) + 1 FROM content_keys WHERE resource = ?",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE resources SET next_access = ?, next_epoch = ?, next_key = ?
             WHERE id = ? AND (next_epoch IS NULL OR next_epoch < ?)",
        )
        .bind(access.to_text().as_str())
        .bind(epoch)
        .bind(crate::b64(key))
        .bind(id.as_str())
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
        let recorded = recorded_rotation(&mut tx, id).await?;
        tx.commit().await?;
        recorded.ok_or_else(|| corrupt("a rotation recorded and gone"))
    }

    /// The station took the rotation to `sent`: the recorded keys become the resource's, and
    /// `readers` are queued to be sent them, in one transaction (a crash cannot install the
    /// keys and forget the members). Returns false, changing nothing, if the record is no
    /// longer that rotation's (another process on this home finished it already).
    pub async fn finish_rotation(
        &self,
        id: &ResourceId,
        sent: &AccessKey,
        readers: &[PublicIdentity],
    ) -> Result<bool, LocalError> {
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        let Some((next, key)) = recorded_rotation(&mut tx, id).await? else {
            return Ok(false);
        };
        if next != *sent {
            return Ok(false);
        }
        let epoch = i64::from(key.epoch());
        let held: Option<String> =
            sqlx::query_scalar("SELECT key FROM content_keys WHERE resource = ? AND epoch = ?")
                .bind(id.as_str())
                .bind(epoch)
                .fetch_optional(&mut *tx)
                .await?;
        match held {
            // Never replace a key of an epoch: data may already be written under it.
            Some(held) if held != crate::b64(key.bytes()) => {
                return Err(LocalError::Corrupt(format!(
                    "a rotation to epoch {epoch} was taken, but that epoch already has another key"
                )));
            }
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO content_keys (resource, epoch, key) VALUES (?, ?, ?)")
                    .bind(id.as_str())
                    .bind(epoch)
                    .bind(crate::b64(key.bytes()))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "UPDATE resources SET access = ?, next_access = NULL, next_epoch = NULL,
             next_key = NULL, rotation_due = 0 WHERE id = ?",
        )
        .bind(sent.to_text().as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        for member in readers {
            insert_delivery(&mut *tx, id, member).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Forgets a recorded rotation whose epoch this device now holds keys for: another member
    /// rotated first, so the recorded keys will never be the station's.
    pub async fn drop_stale_rotation(&self, id: &ResourceId) -> Result<(), LocalError> {
        sqlx::query(
            "UPDATE resources SET next_access = NULL, next_epoch = NULL, next_key = NULL
             WHERE id = ? AND next_epoch <=
               (SELECT COALESCE(MAX(epoch), 0) FROM content_keys WHERE resource = ?)",
        )
        .bind(id.as_str())
        .bind(id.as_str())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Every operation held for a resource.
    pub async fn operations(&self, id: &ResourceId) -> Result<Vec<SignedOperation>, LocalError> {
        let rows = sqlx::query("SELECT token FROM operations WHERE resource = ? ORDER BY id")
            .bind(id.as_str())
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|row| {
                SignedOperation::decode(row.get::<&[u8], _>(0))
                    .map_err(|e| corrupt(&format!("operation: {e}")))
            })
            .collect()
    }

    /// Adds operations; returns how many were new.
    pub async fn add_operations(
        &self,
        id: &ResourceId,
        operations: &[SignedOperation],
    ) -> Result<usize, LocalError> {
        let mut tx = self.db.begin().await?;
        let mut added = 0;
        for op in operations {
            let done = sqlx::query(
                "INSERT OR IGNORE INTO operations (resource, id, token) VALUES (?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(op.id().to_string())
            .bind(op.token())
            .execute(&mut *tx)
            .await?;
            added += done.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Members still to be sent the resource's keys.
    pub async fn deliveries(&self, id: &ResourceId) -> Result<Vec<PublicIdentity>, LocalError> {
        let rows = sqlx::query("SELECT public FROM deliveries WHERE resource = ? ORDER BY member")
            .bind(id.as_str())
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|row| PublicIdentity::parse(row.get(0)).ok_or_else(|| corrupt("member")))
            .collect()
    }

    /// Records that `member` must be sent the keys.
    pub async fn add_delivery(
        &self,
        id: &ResourceId,
        member: &PublicIdentity,
    ) -> Result<(), LocalError> {
        insert_delivery(&self.db, id, member).await
    }

    /// `member` was sent the keys with access key `access`: done, unless the resource's
    /// access key changed meanwhile (a rotation by this home's other process, which queued
    /// the member again for the new keys).
    pub async fn delivered(
        &self,
        id: &ResourceId,
        member: &ActorId,
        access: &AccessKey,
    ) -> Result<(), LocalError> {
        sqlx::query(
            "DELETE FROM deliveries WHERE resource = ? AND member = ?
             AND (SELECT access FROM resources WHERE id = ?) = ?",
        )
        .bind(id.as_str())
        .bind(member.to_string())
        .bind(id.as_str())
        .bind(access.to_text().as_str())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// `member` is to get no keys after all (it no longer reads).
    pub async fn drop_delivery(&self, id: &ResourceId, member: &ActorId) -> Result<(), LocalError> {
        sqlx::query("DELETE FROM deliveries WHERE resource = ? AND member = ?")
            .bind(id.as_str())
            .bind(member.to_string())
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

/// The rotation recorded for `id`, read inside a transaction.
async fn recorded_rotation(
    tx: &mut sqlx::SqliteConnection,
    id: &ResourceId,
) -> Result<Option<(AccessKey, ContentKey)>, LocalError> {
    let row = sqlx::query("SELECT next_access, next_epoch, next_key FROM resources WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| LocalError::UnknownResource(id.as_str().to_owned()))?;
    rotation_at(&row, 0)
}

/// The rotation recorded in columns `at`.. of `row` (next access key, epoch, content key).
fn rotation_at(
    row: &sqlx::sqlite::SqliteRow,
    at: usize,
) -> Result<Option<(AccessKey, ContentKey)>, LocalError> {
    match (
        row.get::<Option<&str>, _>(at),
        row.get::<Option<i64>, _>(at + 1),
        row.get::<Option<&str>, _>(at + 2),
    ) {
        (Some(access), Some(epoch), Some(key)) => Ok(Some((
            AccessKey::from_text(access).ok_or_else(|| corrupt("next access key"))?,
            content_key(epoch, key)?,
        ))),
        _ => Ok(None),
    }
}

fn content_key(epoch: i64, key: &str) -> Result<ContentKey, LocalError> {
    let epoch = u32::try_from(epoch).map_err(|_| corrupt("key epoch"))?;
    let key = crate::from_b64::<32>(key).ok_or_else(|| corrupt("content key"))?;
    Ok(ContentKey::from_bytes(epoch, key))
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Queues `member` for the resource's keys (once: a later entry replaces an earlier one).
async fn insert_delivery<'e>(
    db: impl sqlx::SqliteExecutor<'e>,
    id: &ResourceId,
    member: &PublicIdentity,
) -> Result<(), LocalError> {
    sqlx::query("INSERT OR REPLACE INTO deliveries (resource, member, public) VALUES (?, ?, ?)")
        .bind(id.as_str())
        .bind(member.id.to_string())
        .bind(member.to_text())
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `sql` on the database of `home` as another program would.
    async fn write_raw(home: &Path, sql: &'static str) {
        let db = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(home.join("zbase.db"))
                .create_if_missing(true),
        )
        .await
        .expect("sqlite");
        sqlx::raw_sql(sql).execute(&db).await.expect("written");
        db.close().await;
    }

    #[tokio::test]
    async fn a_home_of_another_format_is_refused_with_what_to_do() {
        let home = tempfile::tempdir().expect("a temporary directory");
        // A fresh home opens, and opens again.
        drop(Local::open(home.path()).await.expect("a new home"));
        drop(Local::open(home.path()).await.expect("the same home again"));

        // A database of the earlier layout: tables, and no format number.
        let old = tempfile::tempdir().expect("a temporary directory");
        write_raw(
            old.path(),
            "CREATE TABLE resources (id TEXT PRIMARY KEY, owner_sealing TEXT)",
        )
        .await;
        let error = Local::open(old.path()).await.err().expect("refused");
        assert!(matches!(error, LocalError::OldFormat(_)), "{error}");
        assert!(
            error.to_string().contains("keeping identity.json"),
            "{error}"
        );

        // One from a newer zbase.
        write_raw(home.path(), "PRAGMA user_version = 99").await;
        let error = Local::open(home.path()).await.err().expect("refused");
        assert!(matches!(error, LocalError::NewerFormat(_, 99)), "{error}");
    }

    #[tokio::test]
    async fn two_rotations_of_one_epoch_send_the_same_keys() {
        let home = tempfile::tempdir().expect("a temporary directory");
        let local = Local::open(home.path()).await.expect("a new home");
        let owner = Identity::from_secrets(&[1; 32], &[2; 32]).public();
        let id = ResourceId::from_bytes([3; 32]);
        let access = |n: u8| AccessKey::from_seed(&[n; 32]);
        local
            .add_resource(&id, "ws://127.0.0.1:1", &owner, &access(1))
            .await
            .expect("added");
        local
            .add_keys(&id, &[ContentKey::from_bytes(1, [10; 32])])
            .await
            .expect("epoch 1");
        let first = local
            .begin_rotation(&id, &access(2), &[20; 32])
            .await
            .expect("begun");
        assert_eq!((first.0.clone(), first.1.epoch()), (access(2), 2));
        // A second process, or a retry after a lost answer, proposes other keys: it gets the
        // ones recorded first, for the same epoch.
        let second = local
            .begin_rotation(&id, &access(3), &[30; 32])
            .await
            .expect("begun");
        assert_eq!(second.0, access(2));
        assert_eq!((second.1.epoch(), second.1.bytes()), (2, &[20; 32]));

        // Finishing a rotation that is not the recorded one changes nothing.
        assert!(
            !local
                .finish_rotation(&id, &access(3), &[])
                .await
                .expect("ok")
        );
        assert_eq!(local.resource(&id).await.expect("held").access, access(1));
        assert!(
            local
                .finish_rotation(&id, &access(2), &[])
                .await
                .expect("ok")
        );
        let held = local.resource(&id).await.expect("held");
        assert!(held.rotating.is_none());
        assert_eq!(held.access, access(2));
        // The other process finishing too finds nothing left to do.
        assert!(
            !local
                .finish_rotation(&id, &access(2), &[])
                .await
                .expect("ok")
        );

        // The next rotation is for epoch 3 whatever a process read before: the epoch comes
        // from the keys held when it is recorded. A slower process then reuses it.
        let third = local
            .begin_rotation(&id, &access(4), &[40; 32])
            .await
            .expect("begun");
        assert_eq!((third.1.epoch(), third.1.bytes()), (3, &[40; 32]));
        let slower = local
            .begin_rotation(&id, &access(5), &[50; 32])
            .await
            .expect("begun");
        assert_eq!(slower.0, access(4));

        // Another member took epoch 3 first: its key arrives, the record is stale and goes,
        // and the next rotation is for epoch 4.
        local
            .add_keys(&id, &[ContentKey::from_bytes(3, [33; 32])])
            .await
            .expect("their epoch 3");
        local.drop_stale_rotation(&id).await.expect("dropped");
        assert!(local.resource(&id).await.expect("held").rotating.is_none());
        let fourth = local
            .begin_rotation(&id, &access(6), &[60; 32])
            .await
            .expect("begun");
        assert_eq!((fourth.0, fourth.1.epoch()), (access(6), 4));
    }
}
