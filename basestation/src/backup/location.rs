//! Where backups are kept: a directory or an S3-compatible bucket. One type for both, so
//! creating, listing, pruning, verifying and restoring read the same whatever the place.
//!
//! A `Location` names either the place that holds backups (`--to`, `--in`) or one backup in
//! it (`--from`): a folder, or a prefix.

use super::bucket::{Bucket, S3Settings};
use super::manifest::Manifest;
use super::part::Output;
use super::retention::{Candidate, Retention};
use super::{BackupError, folder};
use std::io::Read;
use std::path::PathBuf;

/// A directory or a bucket prefix.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on a mounted volume.
    Folder(PathBuf),
    /// A prefix in an S3-compatible bucket.
    Bucket(Bucket),
}

/// A backup found where backups are kept.
#[derive(Debug)]
pub struct Listed {
    /// The backup.
    pub backup: Location,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<Manifest, BackupError>,
}

/// A backup being written.
pub enum Staging {
    /// Into a hidden folder, renamed at the end.
    Folder(folder::Staging),
    /// Into its final prefix; complete once the manifest is there.
    Bucket(Bucket),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Folder(dir) => write!(f, "{}", dir.display()),
            Location::Bucket(bucket) => write!(f, "{bucket}"),
        }
    }
}

impl Location {
    /// `s3://bucket/prefix` (reached with `s3`), or a directory.
    pub fn parse(text: &str, s3: &S3Settings) -> Result<Location, BackupError> {
        if text.starts_with("s3://") {
            Ok(Location::Bucket(Bucket::open(text, s3)?))
        } else {
            Ok(Location::Folder(PathBuf::from(text)))
        }
    }

    /// Starts a new backup here.
    pub async fn begin(&self) -> Result<Staging, BackupError> {
        match self {
            Location::Folder(root) => Ok(Staging::Folder(folder::Staging::begin(root)?)),
            Location::Bucket(bucket) => {
                // No rename in object storage, so the name is chosen now, before the sequence
                // is known: the time to the millisecond, so names sort in the order taken, and
                // a random tail, so two runs never share one.
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                let name = format!(
                    "{}{}-{:04x}",
                    folder::PREFIX,
                    folder::stamp(&now.to_string()),
                    rand::random::<u16>()
                );
                Ok(Staging::Bucket(bucket.begin(&name).await?))
            }
        }
    }

    /// Reads the manifest of the backup this names.
    pub async fn manifest(&self) -> Result<Manifest, BackupError> {
        match self {
            Location::Folder(dir) => folder::manifest(dir),
            Location::Bucket(bucket) => bucket.manifest().await,
        }
    }

    /// Opens part `file` of the backup this names; returns it and its name for errors. Call
    /// from a blocking thread.
    pub fn open_part(&self, file: &str) -> Result<(Box<dyn Read + Send>, String), BackupError> {
        match self {
            Location::Folder(dir) => folder::open_part(dir, file),
            Location::Bucket(bucket) => bucket.open_part(file),
        }
    }

    /// The backups kept here, oldest first, each with its manifest.
    pub async fn list(&self) -> Result<Vec<Listed>, BackupError> {
        let backups: Vec<Location> = match self {
            Location::Folder(root) => folder::list(root)?
                .into_iter()
                .map(Location::Folder)
                .collect(),
            Location::Bucket(bucket) => bucket
                .list()
                .await?
                .into_iter()
                .map(Location::Bucket)
                .collect(),
        };
        let mut listed = Vec::with_capacity(backups.len());
        for backup in backups {
            let manifest = backup.manifest().await;
            listed.push(Listed { backup, manifest });
        }
        Ok(listed)
    }

    /// Deletes the backups here that `retention` lets go at `now`, and returns them. A
    /// backup whose manifest cannot be read is left alone and does not count as good.
    pub async fn prune(
        &self,
        retention: &Retention,
        now: std::time::SystemTime,
    ) -> Result<Vec<Location>, BackupError> {
        if !retention.is_set() {
            return Ok(Vec::new());
        }
        let listed = self.list().await?;
        let candidates: Vec<Candidate<usize>> = listed
            .iter()
            .enumerate()
            .map(|(i, listed)| Candidate {
                key: i,
                created: listed
                    .manifest
                    .as_ref()
                    .ok()
                    .and_then(|m| humantime::parse_rfc3339(&m.created).ok()),
            })
            .collect();
        let mut removed = Vec::new();
        for i in retention.expired(&candidates, now) {
            let backup = &listed[i].backup;
            match backup {
                Location::Folder(dir) => folder::remove(dir)?,
                Location::Bucket(bucket) => bucket.remove().await?,
            }
            removed.push(backup.clone());
        }
        Ok(removed)
    }
}

impl Staging {
    /// Starts part `file`; returns it and its name for errors. Call from a blocking thread.
    pub fn part(&self, file: &str) -> Result<(Box<dyn Output>, String), BackupError> {
        match self {
            Staging::Folder(staging) => staging.part(file),
            Staging::Bucket(bucket) => bucket.part(file),
        }
    }

    /// Writes the manifest, which makes the backup complete; returns where it is.
    pub async fn commit(self, manifest: &Manifest) -> Result<Location, BackupError> {
        match self {
            Staging::Folder(staging) => staging.commit(manifest).map(Location::Folder),
            Staging::Bucket(bucket) => {
                bucket.commit(manifest).await?;
                Ok(Location::Bucket(bucket))
            }
        }
    }

    /// Removes what a failed backup wrote (best effort: the next run removes what is left).
    pub async fn abandon(self) {
        match self {
            Staging::Folder(staging) => staging.abandon(),
            Staging::Bucket(bucket) => {
                if let Err(error) = bucket.remove().await {
                    tracing::warn!(%error, "cannot remove what a failed backup uploaded");
                }
            }
        }
    }
}
