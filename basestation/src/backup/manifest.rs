//! The manifest: what a backup holds and how to check it, as plain JSON beside the encrypted
//! parts, so a backup can be listed and its files checked without any key. It says nothing
//! about a resource: counts, sizes and the checksums of ciphertext only.

use super::BackupError;
use serde::{Deserialize, Serialize};

/// The format this station writes and reads.
pub const FORMAT: &str = "zbase-backup/1";
/// The manifest's file name in a backup.
pub const MANIFEST_FILE: &str = "manifest.json";
/// A manifest larger than this is not one of ours (a million parts would be 200 MB).
pub const MANIFEST_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Everything a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`]: how the parts are encoded.
    pub format: String,
    /// The version of the station that wrote it.
    pub station_version: String,
    /// When the export began, RFC 3339.
    pub created: String,
    /// The change sequence the backup is consistent at: every resource as it was then.
    pub sequence: u64,
    /// Resources in the backup.
    pub resources: u64,
    /// Resources with a snapshot.
    pub snapshots: u64,
    /// Snapshot bytes in all (before encoding).
    pub snapshot_bytes: u64,
    /// The age recipients every part is encrypted to: the identity of any one opens it.
    pub recipients: Vec<String>,
    /// The parts, in sequence order.
    pub parts: Vec<Part>,
}

/// One encrypted file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Its file name beside the manifest.
    pub file: String,
    /// Resources in it.
    pub records: u64,
    /// Its size in bytes, as stored.
    pub size: u64,
    /// SHA-256 of the file as stored (the ciphertext), lowercase hex.
    pub sha256: String,
}

/// Just the format, read first so a manifest of another version is named as such rather than
/// failing on a field it lacks.
#[derive(Deserialize)]
struct Versioned {
    format: Option<String>,
}

impl Manifest {
    /// Parses and checks a manifest's bytes; `source` names it in errors.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Manifest, BackupError> {
        let bad = |reason: String| BackupError::Manifest {
            file: source.to_owned(),
            reason,
        };
        let versioned: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("is not a backup manifest (JSON: {e})")))?;
        match versioned.format.as_deref() {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(BackupError::Version {
                    file: source.to_owned(),
                    found: other.to_owned(),
                });
            }
            None => return Err(bad("has no \"format\": it is not a zbase backup".into())),
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("is not a complete {FORMAT} manifest ({e})")))?;
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }

    /// The manifest as written: pretty JSON with a final newline, for people reading it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self)
            .unwrap_or_else(|e| unreachable!("a manifest of strings and numbers serializes: {e}"));
        text.push(b'\n');
        text
    }

    /// The rules a written manifest keeps: hostile ones (paths out of the backup, counts that
    /// do not add up) are refused before any part is opened.
    fn check(&self) -> Result<(), String> {
        if self.recipients.is_empty() {
            return Err("names no recipient".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for part in &self.parts {
            if !is_plain_name(&part.file) {
                return Err(format!(
                    "names a part {:?} outside the backup's folder",
                    part.file
                ));
            }
            if part.file == MANIFEST_FILE || !names.insert(part.file.as_str()) {
                return Err(format!("names the file {:?} twice", part.file));
            }
            if part.sha256.len() != 64 || !part.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "gives part {} a checksum that is not SHA-256 hex",
                    part.file
                ));
            }
        }
        let records: u64 = self.parts.iter().map(|p| p.records).sum();
        if records != self.resources {
            return Err(format!(
                "counts {} resources but its parts hold {records}",
                self.resources
            ));
        }
        if self.snapshots > self.resources {
            return Err(format!(
                "counts {} snapshots for {} resources",
                self.snapshots, self.resources
            ));
        }
        Ok(())
    }
}

/// A file name with no directory in it.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            station_version: "0.1.0".into(),
            created: "2026-12-02T15:00:00Z".into(),
            sequence: 42,
            resources: 3,
            snapshots: 2,
            snapshot_bytes: 100,
            recipients: vec!["age1example".into()],
            parts: vec![
                Part {
                    file: "part-00000.jsonl.zst.age".into(),
                    records: 2,
                    size: 10,
                    sha256: "a".repeat(64),
                },
                Part {
                    file: "part-00001.jsonl.zst.age".into(),
                    records: 1,
                    size: 10,
                    sha256: "b".repeat(64),
                },
            ],
        }
    }

    fn refused(manifest: &Manifest) -> String {
        Manifest::parse(&manifest.to_bytes(), "m.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_written_manifest_reads_back() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes(), "m.json").unwrap(), m);
    }

    #[test]
    fn another_format_is_named_as_such() {
        let text = br#"{"format": "zbase-backup/2", "parts": "whatever"}"#;
        let err = Manifest::parse(text, "m.json").unwrap_err().to_string();
        assert!(
            err.contains("zbase-backup/2") && err.contains(FORMAT),
            "{err}"
        );
    }

    #[test]
    fn malformed_manifests_are_refused_with_the_reason() {
        for (bytes, says) in [
            (&b""[..], "is not a backup manifest"),
            (b"[1,2]", "is not a backup manifest"),
            (b"{}", "has no \"format\""),
            (
                br#"{"format": "zbase-backup/1", "sequence": -1}"#,
                "is not a complete",
            ),
        ] {
            let err = Manifest::parse(bytes, "m.json").unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("m.json"), "{err}");
        }
    }

    #[test]
    fn hostile_manifests_are_refused_before_any_part_is_read() {
        for (file, says) in [
            ("../escape", "outside the backup's folder"),
            ("/etc/passwd", "outside the backup's folder"),
            (".hidden", "outside the backup's folder"),
            ("", "outside the backup's folder"),
            (MANIFEST_FILE, "twice"),
        ] {
            let mut m = sample();
            m.parts[0].file = file.into();
            assert!(refused(&m).contains(says), "{file}: {}", refused(&m));
        }
        let mut m = sample();
        m.parts[1].file = m.parts[0].file.clone();
        assert!(refused(&m).contains("twice"));
        let mut m = sample();
        m.resources = 4;
        assert!(refused(&m).contains("counts 4 resources but its parts hold 3"));
        let mut m = sample();
        m.snapshots = 9;
        assert!(refused(&m).contains("9 snapshots for 3 resources"));
        let mut m = sample();
        m.parts[0].sha256 = "zz".into();
        assert!(refused(&m).contains("not SHA-256 hex"));
        let mut m = sample();
        m.recipients.clear();
        assert!(refused(&m).contains("names no recipient"));
    }
}
