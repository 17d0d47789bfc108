//! The "restored" test topology (`ZBASE_TEST_TOPOLOGY=restored`): every station a test starts
//! runs on a store restored from a backup, so the wire contract is judged against a station
//! as it is after a disaster recovery, not only against a fresh one.
//!
//! The backup is made once per test process, by the real `zbase-station backup`, from a store
//! of [`SEED_RESOURCES`] resources (keys and snapshots); each station then gets its own
//! `zbase-station restore` of it into its fresh data directory.
#![allow(clippy::expect_used)]

use crate::client::random_bytes;
use crate::station::station_bin;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use tokio::sync::OnceCell;
use zbase_basestation::store::{SqliteStore, Store as _};
use zbase_proto::wire::ResourceId;

/// Resources in the restored store besides what the tests create.
pub const SEED_RESOURCES: usize = 2_000;

/// True when `ZBASE_TEST_TOPOLOGY=restored`.
pub fn topology_is_restored() -> bool {
    std::env::var("ZBASE_TEST_TOPOLOGY").is_ok_and(|topology| topology == "restored")
}

/// The one backup of this test process, and the identity that opens it.
struct Seed {
    backup: PathBuf,
    identity: PathBuf,
}

/// Prefix of a seed's directory; the process id follows, since a static is never dropped
/// and each run clears what runs that ended left.
const SEED_DIR_PREFIX: &str = "zbase-restored-seed-";

static SEED: OnceCell<Seed> = OnceCell::const_new();

/// Restores this process's backup into `data_dir` (a fresh SQLite data directory).
pub async fn restore_into(data_dir: &Path) {
    let seed = SEED.get_or_init(make_seed).await;
    let out = tokio::process::Command::new(station_bin())
        .arg("restore")
        .arg("--from")
        .arg(&seed.backup)
        .arg("--identity")
        .arg(&seed.identity)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("ZBASE_STORE")
        .output()
        .await
        .expect("run zbase-station restore");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("{SEED_RESOURCES} resources")),
        "the restore of the test topology failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn make_seed() -> Seed {
    use age::secrecy::ExposeSecret as _;
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ended = name
                .strip_prefix(SEED_DIR_PREFIX)
                .is_some_and(|pid| !Path::new("/proc").join(pid).exists());
            if ended {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{SEED_DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let source = dir.join("source");
    std::fs::create_dir_all(&source).expect("create the seed's directory");
    let store = SqliteStore::open(&source.join("station.sqlite3"))
        .await
        .expect("open the seed store");
    for i in 0..SEED_RESOURCES {
        let id = ResourceId::from_bytes(
            random_bytes(32)
                .try_into()
                .expect("32 random bytes make an identifier"),
        );
        let jwk = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"seed-{i}"}}"#);
        store.claim(&id, &jwk).await.expect("claim a seed resource");
        store
            .put_snapshot(&id, Bytes::from(random_bytes(100 + i % 2000)))
            .await
            .expect("write a seed snapshot");
    }
    store.close().await;

    let key = age::x25519::Identity::generate();
    let identity = dir.join("key.txt");
    std::fs::write(&identity, key.to_string().expose_secret()).expect("write the seed key");
    let backups = dir.join("backups");
    let out = tokio::process::Command::new(station_bin())
        .arg("backup")
        .arg("--data-dir")
        .arg(&source)
        .arg("--to")
        .arg(&backups)
        .arg("--recipient")
        .arg(key.to_public().to_string())
        .env_remove("ZBASE_STORE")
        .output()
        .await
        .expect("run zbase-station backup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the backup of the test topology failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = text
        .lines()
        .find_map(|l| l.strip_prefix("backup ")?.split(" written").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the backup named no folder: {text}"));
    Seed { backup, identity }
}
