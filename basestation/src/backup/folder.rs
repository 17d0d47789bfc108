//! Backups in a directory (a mounted volume): one folder per backup, named for its time and
//! sequence, holding the manifest and the parts. A backup is written under a hidden name and
//! renamed into place only once its manifest is on disk, so a folder with a visible name is
//! complete, and a crash leaves only a hidden folder that the next run removes.

use super::BackupError;
use super::manifest::{MANIFEST_FILE, MANIFEST_MAX_BYTES, Manifest};
use super::retention::{Candidate, Retention};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Prefix of every backup folder's name.
pub const PREFIX: &str = "zbase-";
/// Prefix of a folder being written.
const STAGING: &str = ".zbase-staging-";

/// A backup folder being written.
pub struct Staging {
    root: PathBuf,
    dir: PathBuf,
}

/// A complete backup found in a directory.
#[derive(Debug)]
pub struct Listed {
    /// Its folder.
    pub dir: PathBuf,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<Manifest, BackupError>,
}

impl Staging {
    /// Starts a backup in `root` (created if missing), clearing what crashed runs left.
    pub fn begin(root: &Path) -> Result<Staging, BackupError> {
        std::fs::create_dir_all(root).map_err(|e| BackupError::io(root, e))?;
        for entry in std::fs::read_dir(root).map_err(|e| BackupError::io(root, e))? {
            let entry = entry.map_err(|e| BackupError::io(root, e))?;
            if entry.file_name().to_string_lossy().starts_with(STAGING) {
                let stale = entry.path();
                std::fs::remove_dir_all(&stale).map_err(|e| BackupError::io(&stale, e))?;
            }
        }
        let dir = root.join(format!("{STAGING}{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).map_err(|e| BackupError::io(&dir, e))?;
        Ok(Staging {
            root: root.to_path_buf(),
            dir,
        })
    }

    /// Where part `file` is written.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Writes the manifest, then gives the folder its name: `zbase-<time>-<sequence>`.
    pub fn commit(self, manifest: &Manifest) -> Result<PathBuf, BackupError> {
        let path = self.dir.join(MANIFEST_FILE);
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupError::io(&path, e))?;
        file.write_all(&manifest.to_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| BackupError::io(&path, e))?;
        sync_dir(&self.dir)?;
        let stamp: String = manifest
            .created
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let name = format!("{PREFIX}{stamp}-{}", manifest.sequence);
        let target = self.root.join(&name);
        if target.exists() {
            return Err(BackupError::io(
                &target,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a backup of this time and sequence exists already",
                ),
            ));
        }
        std::fs::rename(&self.dir, &target).map_err(|e| BackupError::io(&target, e))?;
        sync_dir(&self.root)?;
        Ok(target)
    }
}

/// Reads the manifest of the backup in `dir`.
pub fn manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let file = std::fs::File::open(&path).map_err(|e| BackupError::io(&path, e))?;
    let mut bytes = Vec::new();
    file.take(MANIFEST_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackupError::io(&path, e))?;
    if bytes.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(BackupError::Manifest {
            file: path.display().to_string(),
            reason: format!("is larger than {MANIFEST_MAX_BYTES} bytes"),
        });
    }
    Manifest::parse(&bytes, &path.display().to_string())
}

/// The backups in `root`, oldest first (names sort by time).
pub fn list(root: &Path) -> Result<Vec<Listed>, BackupError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| BackupError::io(root, e))? {
        let entry = entry.map_err(|e| BackupError::io(root, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(PREFIX) && entry.path().is_dir() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|dir| Listed {
            manifest: manifest(&dir),
            dir,
        })
        .collect())
}

/// Deletes the backups in `root` that `retention` lets go at `now`, and returns them. A
/// backup whose manifest cannot be read is left alone and does not count as good.
pub fn prune(
    root: &Path,
    retention: &Retention,
    now: std::time::SystemTime,
) -> Result<Vec<PathBuf>, BackupError> {
    let candidates: Vec<Candidate<PathBuf>> = list(root)?
        .into_iter()
        .map(|listed| Candidate {
            created: listed
                .manifest
                .ok()
                .and_then(|m| humantime::parse_rfc3339(&m.created).ok()),
            key: listed.dir,
        })
        .collect();
    let doomed = retention.expired(&candidates, now);
    for dir in &doomed {
        std::fs::remove_dir_all(dir).map_err(|e| BackupError::io(dir, e))?;
    }
    Ok(doomed)
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackupError::io(dir, e))
}
