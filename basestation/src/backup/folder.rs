//! Backups in a directory (a mounted volume): one folder per backup, named for its time and
//! sequence, holding the manifest and the parts. A backup is written under a hidden name and
//! renamed into place only once its manifest is on disk, so a folder with a visible name is
//! complete, and a crash leaves only a hidden folder that the next run removes.

use super::BackupError;
use super::manifest::{MANIFEST_FILE, MANIFEST_MAX_BYTES, Manifest};
use super::part::Output;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

/// Prefix of every backup folder's name.
pub const PREFIX: &str = "zbase-";
/// How many backups may share one second and store sequence in one folder.
const MAX_SAME_NAME: u32 = 9;
/// Prefix of a folder being written.
const STAGING: &str = ".zbase-staging-";

/// A backup folder being written.
pub struct Staging {
    root: PathBuf,
    dir: PathBuf,
}

impl Staging {
    /// Starts a backup in `root` (created if missing), clearing what crashed runs left.
    pub fn begin(root: &Path) -> Result<Staging, BackupError> {
        std::fs::create_dir_all(root).map_err(|e| BackupError::io(root.display(), e))?;
        for entry in std::fs::read_dir(root).map_err(|e| BackupError::io(root.display(), e))? {
            let entry = entry.map_err(|e| BackupError::io(root.display(), e))?;
            if entry.file_name().to_string_lossy().starts_with(STAGING) {
                let stale = entry.path();
                std::fs::remove_dir_all(&stale).map_err(|e| BackupError::io(stale.display(), e))?;
            }
        }
        let dir = root.join(format!("{STAGING}{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).map_err(|e| BackupError::io(dir.display(), e))?;
        Ok(Staging {
            root: root.to_path_buf(),
            dir,
        })
    }

    /// Creates part `file` (which must not exist yet); returns it and its path for errors.
    pub fn part(&self, file: &str) -> Result<(Box<dyn Output>, String), BackupError> {
        let path = self.dir.join(file);
        let created = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupError::io(path.display(), e))?;
        Ok((
            Box::new(std::io::BufWriter::new(created)),
            path.display().to_string(),
        ))
    }

    /// Removes the folder of a backup that failed (best effort: the next run removes it).
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Writes the manifest, then gives the folder its name: `zbase-<time>-<sequence>`.
    pub fn commit(self, manifest: &Manifest) -> Result<PathBuf, BackupError> {
        let path = self.dir.join(MANIFEST_FILE);
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupError::io(path.display(), e))?;
        file.write_all(&manifest.to_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| BackupError::io(path.display(), e))?;
        sync_dir(&self.dir)?;
        let name = format!("{PREFIX}{}-{}", stamp(&manifest.created), manifest.sequence);
        // Two backups of an unchanged store within one second (a run by hand beside the
        // scheduled one) get `-2`, `-3`..., which sort after the first.
        let mut target = self.root.join(&name);
        for n in 2..=MAX_SAME_NAME {
            if !target.exists() {
                break;
            }
            target = self.root.join(format!("{name}-{n}"));
        }
        if target.exists() {
            return Err(BackupError::io(
                target.display(),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{MAX_SAME_NAME} backups of this time and sequence exist already"),
                ),
            ));
        }
        std::fs::rename(&self.dir, &target).map_err(|e| BackupError::io(target.display(), e))?;
        sync_dir(&self.root)?;
        Ok(target)
    }
}

/// A backup's time as it appears in names: `2026-12-02T18:15:00Z` becomes `20261202T181500Z`.
pub fn stamp(created: &str) -> String {
    created
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// Opens part `file` of the backup in `dir`; returns it and its path for errors.
pub fn open_part(dir: &Path, file: &str) -> Result<(Box<dyn Read + Send>, String), BackupError> {
    let path = dir.join(file);
    let opened = std::fs::File::open(&path).map_err(|e| BackupError::io(path.display(), e))?;
    Ok((Box::new(opened), path.display().to_string()))
}

/// Reads the manifest of the backup in `dir`.
pub fn manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let file = std::fs::File::open(&path).map_err(|e| BackupError::io(path.display(), e))?;
    let mut bytes = Vec::new();
    file.take(MANIFEST_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackupError::io(path.display(), e))?;
    if bytes.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(BackupError::Manifest {
            file: path.display().to_string(),
            reason: format!("is larger than {MANIFEST_MAX_BYTES} bytes"),
        });
    }
    Manifest::parse(&bytes, &path.display().to_string())
}

/// The backup folders in `root`, oldest first (names sort by time).
pub fn list(root: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| BackupError::io(root.display(), e))? {
        let entry = entry.map_err(|e| BackupError::io(root.display(), e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(PREFIX) && entry.path().is_dir() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes the backup in `dir`.
pub fn remove(dir: &Path) -> Result<(), BackupError> {
    std::fs::remove_dir_all(dir).map_err(|e| BackupError::io(dir.display(), e))
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackupError::io(dir.display(), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backups_of_one_second_and_sequence_get_names_that_sort_in_order() {
        let root = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            format: "zbase-backup/1".into(),
            station_version: "test".into(),
            created: "2026-12-03T06:18:09Z".into(),
            sequence: 557,
            resources: 0,
            snapshots: 0,
            snapshot_bytes: 0,
            recipients: Vec::new(),
            parts: Vec::new(),
        };
        let taken: Vec<PathBuf> = (0..MAX_SAME_NAME)
            .map(|_| {
                Staging::begin(root.path())
                    .unwrap()
                    .commit(&manifest)
                    .unwrap()
            })
            .collect();
        assert_eq!(taken[0], root.path().join("zbase-20261203T061809Z-557"));
        assert_eq!(taken[1], root.path().join("zbase-20261203T061809Z-557-2"));
        assert_eq!(list(root.path()).unwrap(), taken, "oldest first");
        let Err(refused) = Staging::begin(root.path()).unwrap().commit(&manifest) else {
            panic!("a tenth backup of the same name is refused")
        };
        assert!(refused.to_string().contains("exist already"), "{refused}");
    }
}
