//! Figure 11: backup and restore throughput in MB/s of snapshot data, beside the same bytes
//! through `zstd | age` (and `age -d | zstd -d`) on the command line, and the backup process's
//! peak RSS at two store sizes, to show it does not grow with the store.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use zbase_basestation::store::{SqliteStore, Store};
use zbase_proto::wire::ResourceId;

use crate::procs;

/// Bytes of each snapshot (incompressible, like the ciphertext clients send).
pub const SNAPSHOT_LEN: usize = 8 * 1024;

/// One measurement.
pub struct Run {
    /// Backup, MB/s of snapshot data.
    pub backup: f64,
    /// Restore, MB/s of snapshot data.
    pub restore: f64,
    /// `zstd | age` over the same bytes, MB/s.
    pub cli_encrypt: f64,
    /// `age -d | zstd -d` over that, MB/s.
    pub cli_decrypt: f64,
    /// Peak RSS of the backup process, KiB.
    pub backup_peak_kib: u64,
}

/// A store of `resources` snapshots under `dir/data`, and the same snapshot bytes in one file.
async fn fill(dir: &Path, resources: usize) -> anyhow::Result<()> {
    let store = Arc::new(SqliteStore::open(&dir.join("data/station.sqlite3")).await?);
    let mut raw = Vec::with_capacity(resources * SNAPSHOT_LEN);
    let tasks: Vec<_> = (0..16)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                for _ in (worker..resources).step_by(16) {
                    let id = ResourceId::from_bytes(rand::random());
                    let snapshot: Vec<u8> = (0..SNAPSHOT_LEN).map(|_| rand::random()).collect();
                    store
                        .claim(&id, r#"{"crv":"Ed25519","kty":"OKP","x":"bench"}"#)
                        .await?;
                    store
                        .put_snapshot(&id, Bytes::from(snapshot.clone()))
                        .await?;
                    bytes.extend_from_slice(&snapshot);
                }
                anyhow::Ok(bytes)
            })
        })
        .collect();
    for task in tasks {
        raw.extend_from_slice(&task.await??);
    }
    store.close().await;
    std::fs::write(dir.join("raw"), raw)?;
    Ok(())
}

/// Runs `command`, polling its peak RSS; returns the time it took and that peak.
async fn timed(mut command: Command) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut child = command.stdout(Stdio::null()).spawn()?;
    let pid = child.id().context("the child has no pid")?;
    let mut peak = 0;
    let status = loop {
        if let Ok(status) = tokio::time::timeout(Duration::from_millis(20), child.wait()).await {
            break status?;
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kib);
        }
    };
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok((started.elapsed(), peak))
}

fn shell(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg(script);
    command
}

/// One round on a store of `resources` snapshots in `dir`.
pub async fn run(dir: &Path, resources: usize) -> anyhow::Result<Run> {
    for tool in ["age", "age-keygen", "zstd"] {
        if !std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .success()
        {
            bail!("`{tool}` is missing: apt-get install age zstd");
        }
    }
    std::fs::create_dir_all(dir)?;
    fill(dir, resources).await?;
    let key = dir.join("key.txt");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .stderr(Stdio::piped())
        .output()?;
    let recipient = String::from_utf8(out.stderr)?
        .trim()
        .trim_start_matches("Public key: ")
        .to_owned();
    let mb = (resources * SNAPSHOT_LEN) as f64 / 1e6;
    let bin = procs::station_bin();

    let mut backup = Command::new(&bin);
    backup
        .arg("backup")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--to")
        .arg(dir.join("backups"))
        .arg("--recipient")
        .arg(&recipient);
    let (backup_time, backup_peak_kib) = timed(backup).await?;
    let folder = std::fs::read_dir(dir.join("backups"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("zbase-"))
        })
        .context("no backup folder")?;

    let mut restore = Command::new(&bin);
    restore
        .arg("restore")
        .arg("--from")
        .arg(&folder)
        .arg("--identity")
        .arg(&key)
        .arg("--data-dir")
        .arg(dir.join("restored"));
    let (restore_time, _) = timed(restore).await?;

    let raw = dir.join("raw").display().to_string();
    let sealed = dir.join("raw.zst.age").display().to_string();
    let (encrypt, _) = timed(shell(&format!(
        "zstd -3 -q -c {raw} | age -r {recipient} > {sealed}"
    )))
    .await?;
    let (decrypt, _) = timed(shell(&format!(
        "age -d -i {} {sealed} | zstd -d -q -c > /dev/null",
        key.display()
    )))
    .await?;
    let rate = |t: Duration| mb / t.as_secs_f64();
    Ok(Run {
        backup: rate(backup_time),
        restore: rate(restore_time),
        cli_encrypt: rate(encrypt),
        cli_decrypt: rate(decrypt),
        backup_peak_kib,
    })
}
