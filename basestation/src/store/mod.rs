//! Durable storage of resources: verification key, latest snapshot, and a global change
//! sequence. Nothing else about a resource is stored or indexed.
//!
//! Promise of every implementation: a call that changes data returns only once the change is
//! durable (SQLite: committed with `synchronous=FULL`; PostgreSQL: committed), and each change
//! gets a sequence number strictly greater than every change committed before it, so a reader
//! that resumes from a position with [`Store::changes_since`] never misses a committed change.
//! The store knows nothing of sessions or relays; it holds JWKs as opaque text.

mod batch;
#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod memory;
mod postgres;
mod rows;
mod sqlite;

pub use batch::WriteStats;
#[cfg(test)]
pub(crate) use postgres::FENCE_FOR_TESTS;
pub use postgres::{Fence, PostgresOptions, PostgresStore, connect_options};
pub use sqlite::SqliteStore;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use zbase_proto::wire::ResourceId;

/// A position in the global change sequence. 0 means "before every change".
pub type Seq = u64;

/// What the store keeps for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResource {
    /// The verification key, as canonical JWK JSON.
    pub jwk: String,
    /// The latest snapshot, if any was ever submitted.
    pub snapshot: Option<Bytes>,
    /// The sequence of the resource's latest change.
    pub seq: Seq,
}

/// The outcome of claiming an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The identifier was free and now belongs to the new resource.
    Claimed {
        /// The change sequence of the creation.
        seq: Seq,
    },
    /// Another resource already has this identifier; nothing was written.
    Taken,
}

/// The outcome of replacing a resource's key if it is still the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReplacement {
    /// The key was the expected one and is now the new one.
    Replaced {
        /// The change sequence of the replacement.
        seq: Seq,
    },
    /// The resource's key is not the expected one (another rotation came first), or there is
    /// no such resource; nothing was written.
    Stale,
}

/// One committed change, as replication and backups read it: the resource's state at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The change's sequence.
    pub seq: Seq,
    /// The resource changed.
    pub id: ResourceId,
    /// Its key at that point.
    pub jwk: String,
    /// Its snapshot at that point.
    pub snapshot: Option<Bytes>,
}

/// A station's role among the sites of a deployment (docs/REPLICATION.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one writable site.
    Primary,
    /// A read-only cache of the primary.
    Replica,
    /// A former primary that learned of a later epoch, or handed over: it accepts no write.
    Fenced,
}

impl Role {
    /// The name stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Fenced => "fenced",
        }
    }

    /// The role a stored name stands for.
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Primary, Role::Replica, Role::Fenced]
            .into_iter()
            .find(|role| role.name() == name)
    }
}

/// One epoch of a store's history: a period with one primary, from its first sequence on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch's number; each promotion takes the next one.
    pub epoch: u64,
    /// The first sequence numbered in this epoch.
    pub first_seq: Seq,
}

/// What a store keeps about its station's place among the sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The station's role.
    pub role: Role,
    /// The epochs of the history the store holds, oldest first.
    pub epochs: Vec<Epoch>,
}

impl Site {
    /// The current epoch (0 before any).
    pub fn epoch(&self) -> u64 {
        self.epochs.last().map_or(0, |epoch| epoch.epoch)
    }
}

impl Change {
    /// The bytes it carries (key and snapshot), for bounding batches and messages.
    pub fn weight(&self) -> usize {
        self.jwk.len() + self.snapshot.as_ref().map_or(0, Bytes::len)
    }
}

/// What a restore receives: the resources, then `Commit` once their source was read whole and
/// found sound. A restore whose channel closes before `Commit` writes nothing.
#[derive(Debug)]
pub enum RestoreItem {
    /// One resource, as exported.
    Resource(Change),
    /// Everything was sent: commit, and number later changes above `sequence`.
    Commit {
        /// The sequence point the resources were exported at.
        sequence: Seq,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist (a snapshot for an unknown identifier).
    #[error("resource not found")]
    NotFound,
    /// The database could not be opened, migrated, read or written.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}; the data directory may belong to a newer station")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store's writer has stopped (shutdown, or a fatal error logged where it happened).
    #[error("the store is shut down")]
    Closed,
    /// Another station process holds the SQLite data directory.
    #[error(
        "the data directory {0} is in use by another station process; SQLite serves one \
         process only: stop the other station, or, to run several station pods, use \
         PostgreSQL (--store postgres://...)"
    )]
    InUse(std::path::PathBuf),
    /// Stored data is not what this station wrote (a corrupt or foreign database).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A restore's target already holds resources.
    #[error(
        "the store already holds {0} resources: a backup is restored into a fresh station only; \
         point at an empty data directory or database, or pass --wipe to delete what it holds \
         first"
    )]
    NotEmpty(u64),
    /// A restore's source stopped before it was read whole; nothing was written.
    #[error("the restore stopped before its backup was read whole; nothing was written")]
    RestoreAbandoned,
    /// A replica's write could not reach the primary site, or did not come back from it.
    #[error(
        "this replica cannot write through the primary site now ({0}); it refuses configurations and snapshots until it can: try again later"
    )]
    PrimaryUnavailable(String),
    /// This station was the primary and is fenced: it handed over, or another site is primary
    /// in a later epoch.
    #[error(
        "this station is no longer the primary site (it was at epoch {0}, and handed over or saw a later epoch): it accepts no configuration or snapshot; point clients at the current primary, and rebuild this one as its replica"
    )]
    Fenced(u64),
    /// The writing session's key was replaced (rotated) on the primary before its write
    /// arrived there; the write was refused.
    #[error(
        "the resource's key was rotated on the primary site; the write of a session of the old key was refused"
    )]
    KeyReplaced,
    /// There is no store where one was expected.
    #[error("there is no station store at {0}: point --data-dir at the station's data directory")]
    Missing(std::path::PathBuf),
}

/// A backend for resources. SQLite is the embedded default; PostgreSQL serves several pods.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The resource's key and snapshot, or `None` if it was never configured.
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError>;

    /// Creates the resource with `jwk` if `id` is free, as one atomic step; durable on return.
    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError>;

    /// Replaces the resource's key with `jwk` if it is exactly `expected` now, as one atomic
    /// step that is a change like any other (replicated, exported); durable on return. The
    /// snapshot is untouched. Keys are compared as stored text, which is canonical JWK JSON.
    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError>;

    /// Replaces the resource's snapshot byte for byte; durable on return.
    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError>;

    /// [`Store::put_snapshot`] by a session that proved the key `jwk`: refused with
    /// [`StoreError::KeyReplaced`] where the write is taken elsewhere (a replica's, by the
    /// primary) and the key is another there. A local store writes as `put_snapshot` does:
    /// its resource task already orders writes and key rotations.
    async fn put_snapshot_as(
        &self,
        id: &ResourceId,
        snapshot: Bytes,
        jwk: &str,
    ) -> Result<Seq, StoreError> {
        let _ = jwk;
        self.put_snapshot(id, snapshot).await
    }

    /// Committed changes with a sequence above `after`, in sequence order, at most `limit`.
    /// A resource changed several times since `after` appears once, at its latest sequence.
    async fn changes_since(&self, after: Seq, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// The highest committed sequence (0 for an empty store).
    async fn last_seq(&self) -> Result<Seq, StoreError>;

    /// Sends every resource as of one sequence point, in sequence order, to `into`, and returns
    /// that point. It reads one snapshot of the database, so writes go on meanwhile and none
    /// of them shows; it stops early, without error, if `into` is closed.
    async fn export(&self, into: mpsc::Sender<Change>) -> Result<Seq, StoreError>;

    /// The station's role and epochs, or `None` in a store never served yet.
    async fn site(&self) -> Result<Option<Site>, StoreError>;

    /// Replaces the station's role and epochs, in one transaction; durable on return.
    async fn set_site(&self, site: Site) -> Result<(), StoreError>;

    /// Changes whenever this process commits a change, holding the highest sequence it
    /// committed; commits by other processes sharing the database do not show, so a reader
    /// waiting for changes (the replication feed) also polls.
    fn commits(&self) -> watch::Receiver<Seq>;

    /// Whether snapshot writes to one resource commit in the order they were submitted even
    /// while several are in flight. Local stores queue them in order; a replica's writes go
    /// to another site as separate calls that may overtake each other, so its resource
    /// tasks send one at a time.
    fn keeps_write_order(&self) -> bool {
        true
    }

    /// Checks that the database answers a trivial query now, for readiness probes. Bounded
    /// like any read: an unreachable PostgreSQL fails after the pool's acquire timeout.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Waits for queued writes to finish and closes the database.
    async fn close(&self);
}
