//! Encrypted backups of the store, and restores into a fresh station.
//!
//! A backup is a folder: `manifest.json` (plain JSON: format, sequence, counts, sizes, the
//! SHA-256 of each part) and parts `part-NNNNN.jsonl.zst.age`, each resources as JSON lines,
//! compressed with zstd and encrypted with age to the backup's recipients. So a cluster that
//! takes backups holds only public keys, and any backup opens with the standard tools:
//! `age -d -i key.txt part-00000.jsonl.zst.age | zstd -d`. `docs/BACKUP.md` is the format.
//!
//! [`create`] streams a consistent export (the store's own snapshot of one sequence point)
//! through a blocking writer thread; [`restore`] streams parts back into the store in one
//! transaction committed only once every part, line and count was found sound, so a bad
//! backup writes nothing. Neither holds more than a bounded queue of resources in memory.

pub mod bucket;
pub mod folder;
pub mod location;
pub mod manifest;
pub mod part;
pub mod retention;

use crate::store::{Change, RestoreItem, Seq, StoreError};
pub use bucket::S3Settings;
pub use location::Location;
use manifest::{FORMAT, Manifest, Part};
use std::future::Future;
use std::path::Path;
use tokio::sync::mpsc;

/// Resources queued between the database and the files.
const QUEUE: usize = 256;
/// A new part starts once this many bytes of lines went into the current one.
pub const DEFAULT_PART_BYTES: u64 = 1024 * 1024 * 1024;

/// Why a backup, verification or restore failed. Each message names the file, part or line.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file or object failed.
    #[error("{at}: {error}")]
    Io {
        /// The file or object.
        at: String,
        /// What the system said.
        error: std::io::Error,
    },
    /// The object store refused or failed.
    #[error("{at}: {reason}")]
    Remote {
        /// The bucket, prefix or object.
        at: String,
        /// What the store said, and what to do about it.
        reason: String,
    },
    /// The manifest is not one this station can use.
    #[error("{file} {reason}")]
    Manifest {
        /// The manifest's path.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The backup is of another format version.
    #[error(
        "{file} is a backup of format {found}; this station reads {FORMAT}: restore it with the \
         zbase version that wrote it"
    )]
    Version {
        /// The manifest's path.
        file: String,
        /// The format it names.
        found: String,
    },
    /// The recipients cannot be used.
    #[error("age recipients: {0}")]
    Recipients(String),
    /// The identities cannot be used.
    #[error("age identities: {0}")]
    Identities(String),
    /// A part cannot be decrypted with the identities given.
    #[error("part {part} cannot be decrypted: {reason}")]
    Decrypt {
        /// The part's file name.
        part: String,
        /// Why.
        reason: String,
    },
    /// A part's decrypted stream is broken (tampered, cut, or not zstd).
    #[error(
        "part {part} is damaged: {reason}; copy it again from where backups are kept, or use \
         another backup"
    )]
    Damaged {
        /// The part's file name.
        part: String,
        /// Why.
        reason: String,
    },
    /// A part's file is not the one the manifest describes.
    #[error(
        "part {part} does not match the manifest (expected {expected}, found {found}): it was \
         cut short, corrupted or replaced; copy it again from where backups are kept, or use \
         another backup"
    )]
    Checksum {
        /// The part's file name.
        part: String,
        /// What the manifest says.
        expected: String,
        /// What the file is.
        found: String,
    },
    /// A line of a part is not a resource.
    #[error("part {part}, line {line} {reason}")]
    Record {
        /// The part's file name.
        part: String,
        /// The line, from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A count differs from the manifest's.
    #[error("{what}: the manifest says {expected}, the backup holds {found}")]
    Count {
        /// What was counted.
        what: String,
        /// The manifest's figure.
        expected: u64,
        /// What was found.
        found: u64,
    },
    /// The resources are not in the order a backup writes them.
    #[error("part {part}, line {line}: {reason}")]
    Order {
        /// The part's file name.
        part: String,
        /// The line, from 1.
        line: u64,
        /// What is out of order.
        reason: String,
    },
    /// The store failed or refused.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A worker thread ended without an answer (it panicked).
    #[error("the backup's file thread stopped unexpectedly: {0}")]
    Thread(String),
}

impl BackupError {
    pub(crate) fn io(at: impl std::fmt::Display, error: std::io::Error) -> BackupError {
        BackupError::Io {
            at: at.to_string(),
            error,
        }
    }

    pub(crate) fn decrypt(part: &str, error: age::DecryptError) -> BackupError {
        let reason = match error {
            age::DecryptError::NoMatchingKeys => {
                "none of the identities given is one of the recipients the manifest names".into()
            }
            other => format!("{other}"),
        };
        BackupError::Decrypt {
            part: part.to_owned(),
            reason,
        }
    }
}

/// Parses age recipients (`age1...`), one per entry.
pub fn recipients(texts: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    if texts.is_empty() {
        return Err(BackupError::Recipients(
            "none given: pass --recipient age1... (make one with age-keygen)".into(),
        ));
    }
    texts
        .iter()
        .map(|t| {
            t.trim().parse().map_err(|e: &str| {
                BackupError::Recipients(format!("{t:?} is not an age X25519 recipient ({e})"))
            })
        })
        .collect()
}

/// Reads age identities from an identity file (as `age-keygen` writes).
pub fn identities(path: &Path) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, BackupError> {
    let file = age::IdentityFile::from_file(path.display().to_string())
        .map_err(|e| BackupError::Identities(format!("{}: {e}", path.display())))?;
    let identities = file
        .into_identities()
        .map_err(|e| BackupError::Identities(format!("{}: {e}", path.display())))?;
    if identities.is_empty() {
        return Err(BackupError::Identities(format!(
            "{} holds no identity",
            path.display()
        )));
    }
    Ok(identities)
}

/// How far a backup or restore has come: resources and snapshot bytes so far.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// What a backup holds, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The sequence point.
    pub sequence: Seq,
    /// Resources.
    pub resources: u64,
    /// Resources with a snapshot.
    pub snapshots: u64,
    /// Snapshot bytes.
    pub snapshot_bytes: u64,
}

/// Takes a backup into `place` (a directory or a bucket prefix): `export` sends every
/// resource at one sequence point to the channel and returns that point. Returns where the
/// backup is and its manifest. A backup that fails leaves nothing complete behind.
pub async fn create<F, Fut>(
    place: &Location,
    recipients: Vec<age::x25519::Recipient>,
    part_bytes: u64,
    export: F,
    progress: Progress,
) -> Result<(Location, Manifest), BackupError>
where
    F: FnOnce(mpsc::Sender<Change>) -> Fut,
    Fut: Future<Output = Result<Seq, StoreError>>,
{
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let staging = std::sync::Arc::new(place.begin().await?);
    let (tx, rx) = mpsc::channel::<Change>(QUEUE);
    let names: Vec<String> = recipients.iter().map(ToString::to_string).collect();
    let writing = staging.clone();
    let writer = tokio::task::spawn_blocking(move || {
        write_parts(&writing, &recipients, part_bytes, rx, &progress)
    });
    let exported = export(tx).await;
    let written = writer.await.map_err(|e| BackupError::Thread(e.to_string()));
    let staging = std::sync::Arc::into_inner(staging).ok_or_else(|| {
        BackupError::Thread("the backup's file thread still holds the backup".into())
    })?;
    // A writer that failed explains a store that could not send; a store that failed ends
    // the channel early, so the writer's totals mean nothing then.
    let checked = written.and_then(|w| w).and_then(|(parts, totals)| {
        let sequence = exported?;
        if totals.sequence > sequence {
            return Err(BackupError::Store(StoreError::Corrupt(format!(
                "the export sent a change at sequence {} past its point {sequence}",
                totals.sequence
            ))));
        }
        Ok((parts, Summary { sequence, ..totals }))
    });
    let (parts, totals) = match checked {
        Ok(done) => done,
        Err(failed) => {
            staging.abandon().await;
            return Err(failed);
        }
    };
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        station_version: env!("CARGO_PKG_VERSION").to_owned(),
        created,
        sequence: totals.sequence,
        resources: totals.resources,
        snapshots: totals.snapshots,
        snapshot_bytes: totals.snapshot_bytes,
        recipients: names,
        parts,
    };
    let backup = staging.commit(&manifest).await?;
    Ok((backup, manifest))
}

/// The writer thread of [`create`]: every resource from `rx` into parts of about
/// `part_bytes` each. Returns the parts and the totals (the highest sequence seen).
fn write_parts(
    staging: &location::Staging,
    recipients: &[age::x25519::Recipient],
    part_bytes: u64,
    mut rx: mpsc::Receiver<Change>,
    progress: &Progress,
) -> Result<(Vec<Part>, Summary), BackupError> {
    let mut parts: Vec<Part> = Vec::new();
    let mut current: Option<(String, part::PartWriter)> = None;
    let mut totals = Summary {
        sequence: 0,
        resources: 0,
        snapshots: 0,
        snapshot_bytes: 0,
    };
    let close = |(file, writer): (String, part::PartWriter),
                 parts: &mut Vec<Part>|
     -> Result<(), BackupError> {
        let written = writer.finish()?;
        parts.push(Part {
            file,
            records: written.records,
            size: written.size,
            sha256: written.sha256,
        });
        Ok(())
    };
    while let Some(change) = rx.blocking_recv() {
        let (file, mut writer) = match current.take() {
            Some(open) => open,
            None => {
                let file = format!("part-{:05}.jsonl.zst.age", parts.len());
                let (output, at) = staging.part(&file)?;
                (file, part::PartWriter::create(output, at, recipients)?)
            }
        };
        writer.write(&change)?;
        totals.resources += 1;
        totals.sequence = totals.sequence.max(change.seq);
        if let Some(snapshot) = &change.snapshot {
            totals.snapshots += 1;
            totals.snapshot_bytes += snapshot.len() as u64;
        }
        progress(totals.resources, totals.snapshot_bytes);
        if writer.plain_bytes() >= part_bytes {
            close((file, writer), &mut parts)?;
        } else {
            current = Some((file, writer));
        }
    }
    if let Some(last) = current.take() {
        close(last, &mut parts)?;
    }
    Ok((parts, totals))
}

/// Reads the whole backup at `backup`, checking every part, line and count against the
/// manifest.
pub async fn verify(
    backup: &Location,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    progress: Progress,
) -> Result<Summary, BackupError> {
    let manifest = backup.manifest().await?;
    let backup = backup.clone();
    tokio::task::spawn_blocking(move || {
        read_all(&backup, &manifest, &identities, &progress, &mut |_| Ok(()))
    })
    .await
    .map_err(|e| BackupError::Thread(e.to_string()))?
}

/// Restores the backup at `backup` through `import`, which must write what it receives in
/// one transaction and commit only on [`RestoreItem::Commit`]; that comes once the whole
/// backup was read and found sound, so a bad backup writes nothing.
pub async fn restore<F, Fut>(
    backup: &Location,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    import: F,
    progress: Progress,
) -> Result<Summary, BackupError>
where
    F: FnOnce(mpsc::Receiver<RestoreItem>) -> Fut,
    Fut: Future<Output = Result<Seq, StoreError>>,
{
    let manifest = backup.manifest().await?;
    let (tx, rx) = mpsc::channel::<RestoreItem>(QUEUE);
    let backup = backup.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let summary = read_all(&backup, &manifest, &identities, &progress, &mut |change| {
            tx.blocking_send(RestoreItem::Resource(change))
                // The store stopped taking: its own error says why.
                .map_err(|_| BackupError::Store(StoreError::RestoreAbandoned))
        })?;
        tx.blocking_send(RestoreItem::Commit {
            sequence: summary.sequence,
        })
        .map_err(|_| BackupError::Store(StoreError::RestoreAbandoned))?;
        Ok::<_, BackupError>(summary)
    });
    let imported = import(rx).await;
    let read = reader
        .await
        .map_err(|e| BackupError::Thread(e.to_string()))?;
    // A reading failure explains a store that was abandoned, and a store that stopped taking
    // (it refused the target) explains the reader's failure to send.
    match (read, imported) {
        (Err(BackupError::Store(StoreError::RestoreAbandoned)), Err(store)) => Err(store.into()),
        (Err(read), _) => Err(read),
        (Ok(_), Err(store)) => Err(store.into()),
        (Ok(summary), Ok(_)) => Ok(summary),
    }
}

/// Reads every part of `backup` in order, handing each resource to `each`.
fn read_all(
    backup: &Location,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    progress: &Progress,
    each: &mut dyn FnMut(Change) -> Result<(), BackupError>,
) -> Result<Summary, BackupError> {
    let mut found = Summary {
        sequence: manifest.sequence,
        resources: 0,
        snapshots: 0,
        snapshot_bytes: 0,
    };
    let mut last_seq = 0;
    for part in &manifest.parts {
        let mut line = 0;
        let (source, at) = backup.open_part(&part.file)?;
        part::read(source, &at, part, identities, &mut |change| {
            line += 1;
            let out_of_order = |reason: String| BackupError::Order {
                part: part.file.clone(),
                line,
                reason,
            };
            if change.seq <= last_seq {
                return Err(out_of_order(format!(
                    "sequence {} does not follow {last_seq}",
                    change.seq
                )));
            }
            if change.seq > manifest.sequence {
                return Err(out_of_order(format!(
                    "sequence {} is past the backup's point {}",
                    change.seq, manifest.sequence
                )));
            }
            last_seq = change.seq;
            found.resources += 1;
            if let Some(snapshot) = &change.snapshot {
                found.snapshots += 1;
                found.snapshot_bytes += snapshot.len() as u64;
            }
            progress(found.resources, found.snapshot_bytes);
            each(change)
        })?;
    }
    for (what, expected, counted) in [
        ("resources", manifest.resources, found.resources),
        ("snapshots", manifest.snapshots, found.snapshots),
        (
            "snapshot bytes",
            manifest.snapshot_bytes,
            found.snapshot_bytes,
        ),
    ] {
        if expected != counted {
            return Err(BackupError::Count {
                what: what.into(),
                expected,
                found: counted,
            });
        }
    }
    Ok(found)
}
