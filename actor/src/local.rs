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

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS resources (
  id TEXT PRIMARY KEY,
  station TEXT NOT NULL,
  owner TEXT NOT NULL,
  owner_sealing TEXT NOT NULL,
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
  sealing TEXT NOT NULL,
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
        let db = sqlx::pool::PoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&db).await?;
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
            "INSERT INTO resources (id, station, owner, owner_sealing, access) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET station = excluded.station, access = excluded.access",
        )
        .bind(id.as_str())
        .bind(station)
        .bind(owner.id.to_string())
        .bind(crate::b64(&owner.sealing))
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
            "SELECT station, owner, owner_sealing, access, next_access, next_epoch, next_key,
                    rotation_due FROM resources WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| LocalError::UnknownResource(id.as_str().to_owned()))?;
        let owner = PublicIdentity {
            id: ActorId::parse(row.get(1)).ok_or_else(|| corrupt("owner"))?,
            sealing: crate::from_b64::<32>(row.get(2)).ok_or_else(|| corrupt("owner key"))?,
        };
        let access = AccessKey::from_text(row.get(3)).ok_or_else(|| corrupt("access key"))?;
        let rotating = match (
            row.get::<Option<&str>, _>(4),
            row.get::<Option<i64>, _>(5),
            row.get::<Option<&str>, _>(6),
        ) {
            (Some(access), Some(epoch), Some(key)) => Some((
                AccessKey::from_text(access).ok_or_else(|| corrupt("next access key"))?,
                content_key(epoch, key)?,
            )),
            _ => None,
        };
        Ok(Held {
            id: *id,
            station: row.get(0),
            owner,
            access,
            rotating,
            rotation_due: row.get::<i64, _>(7) != 0,
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

    /// Records a rotation about to be sent, so a crash after the station took it loses nothing.
    pub async fn begin_rotation(
        &self,
        id: &ResourceId,
        access: &AccessKey,
        key: &ContentKey,
    ) -> Result<(), LocalError> {
        sqlx::query(
            "UPDATE resources SET next_access = ?, next_epoch = ?, next_key = ? WHERE id = ?",
        )
        .bind(access.to_text().as_str())
        .bind(i64::from(key.epoch()))
        .bind(crate::b64(key.bytes()))
        .bind(id.as_str())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// The station took the rotation: its keys become the resource's, and `readers` are
    /// queued to be sent them, in one transaction (a crash cannot install the keys and forget
    /// the members).
    pub async fn finish_rotation(
        &self,
        id: &ResourceId,
        readers: &[PublicIdentity],
    ) -> Result<(), LocalError> {
        let held = self.resource(id).await?;
        let Some((access, key)) = held.rotating else {
            return Ok(());
        };
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO content_keys (resource, epoch, key) VALUES (?, ?, ?)")
            .bind(id.as_str())
            .bind(i64::from(key.epoch()))
            .bind(crate::b64(key.bytes()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE resources SET access = ?, next_access = NULL, next_epoch = NULL,
             next_key = NULL, rotation_due = 0 WHERE id = ?",
        )
        .bind(access.to_text().as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        for member in readers {
            sqlx::query(
                "INSERT OR REPLACE INTO deliveries (resource, member, sealing) VALUES (?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(member.id.to_string())
            .bind(crate::b64(&member.sealing))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The station refused the rotation (another member rotated first): forget it.
    pub async fn abandon_rotation(&self, id: &ResourceId) -> Result<(), LocalError> {
        sqlx::query("UPDATE resources SET next_access = NULL, next_epoch = NULL, next_key = NULL WHERE id = ?")
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
        let rows = sqlx::query(
            "SELECT member, sealing FROM deliveries WHERE resource = ? ORDER BY member",
        )
        .bind(id.as_str())
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PublicIdentity {
                    id: ActorId::parse(row.get(0)).ok_or_else(|| corrupt("member"))?,
                    sealing: crate::from_b64::<32>(row.get(1))
                        .ok_or_else(|| corrupt("member key"))?,
                })
            })
            .collect()
    }

    /// Records that `member` must be sent the keys.
    pub async fn add_delivery(
        &self,
        id: &ResourceId,
        member: &PublicIdentity,
    ) -> Result<(), LocalError> {
        sqlx::query(
            "INSERT OR REPLACE INTO deliveries (resource, member, sealing) VALUES (?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(member.id.to_string())
        .bind(crate::b64(&member.sealing))
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// `member` has its keys.
    pub async fn delivered(&self, id: &ResourceId, member: &ActorId) -> Result<(), LocalError> {
        sqlx::query("DELETE FROM deliveries WHERE resource = ? AND member = ?")
            .bind(id.as_str())
            .bind(member.to_string())
            .execute(&self.db)
            .await?;
        Ok(())
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
