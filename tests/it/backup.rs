//! Backups through the real `zbase-station backup` and `restore`: a round trip of 10,000
//! resources byte for byte into a station that then serves them, consistency under writes, the
//! standard `age` and `zstd` tools opening a backup, every kind of bad backup refused with
//! nothing written, a store with data refused, and PostgreSQL to PostgreSQL.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use zbase_basestation::store::{Change, Claim, PostgresOptions, PostgresStore, SqliteStore, Store};
use zbase_proto::wire::{Code, ResourceId};
use zbase_tests::client::{Identity, Transport, join, random_bytes};
use zbase_tests::station::{StationBuilder, station_bin};

/// An age key pair: the identity file's path and the recipient.
pub(super) struct Key {
    _dir: tempfile::TempDir,
    pub(super) identity: PathBuf,
    pub(super) recipient: String,
}

pub(super) fn key() -> Key {
    use age::secrecy::ExposeSecret as _;
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let path = dir.path().join("key.txt");
    std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    Key {
        _dir: dir,
        identity: path,
        recipient: identity.to_public().to_string(),
    }
}

/// Runs `zbase-station ARGS`: whether it succeeded, and stdout then stderr.
fn station(args: &[&str]) -> (bool, String) {
    station_env(args, &[])
}

/// Runs `zbase-station ARGS` with `env` added: whether it succeeded, and stdout then stderr.
pub(super) fn station_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(station_bin())
        .args(args)
        .env_remove("ZBASE_STORE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `zbase-station backup ... --to to`, returning the backup's folder.
fn backup(store: &[&str], to: &Path, key: &Key, extra: &[&str]) -> PathBuf {
    let mut args = vec!["backup"];
    args.extend_from_slice(store);
    args.extend_from_slice(&["--to", to.to_str().unwrap(), "--recipient", &key.recipient]);
    args.extend_from_slice(extra);
    let (ok, out) = station(&args);
    assert!(ok, "backup failed: {out}");
    let folder = out
        .lines()
        .find_map(|l| l.strip_prefix("backup ")?.split(" written").next())
        .unwrap_or_else(|| panic!("no folder in: {out}"));
    PathBuf::from(folder)
}

/// `zbase-station restore --from from` with `key`, into `store`.
pub(super) fn restore(from: &Path, key: &Key, store: &[&str], extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "restore",
        "--from",
        from.to_str().unwrap(),
        "--identity",
        key.identity.to_str().unwrap(),
    ];
    args.extend_from_slice(store);
    args.extend_from_slice(extra);
    station(&args)
}

pub(super) fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("station.sqlite3")
}

/// Everything a store exports, and its point.
async fn contents(store: &dyn Store) -> (u64, Vec<Change>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (point, all) = tokio::join!(store.export(tx), async move {
        let mut all = Vec::new();
        while let Some(c) = rx.recv().await {
            all.push(c);
        }
        all
    });
    (point.unwrap(), all)
}

pub(super) async fn sqlite_contents(data_dir: &Path) -> (u64, Vec<Change>) {
    let store = SqliteStore::open(&sqlite_path(data_dir)).await.unwrap();
    let found = contents(&store).await;
    store.close().await;
    found
}

/// Fills `store` with `n` resources, 64 writers at a time; the first `keys.len()` have those
/// real keys, the rest opaque ones. Every resource but each seventh gets a snapshot.
async fn fill(store: Arc<dyn Store>, n: usize, keys: &[Identity]) -> Vec<ResourceId> {
    let ids: Vec<ResourceId> = (0..n)
        .map(|_| ResourceId::from_bytes(random_bytes(32).try_into().unwrap()))
        .collect();
    let jwks: Vec<String> = (0..n)
        .map(|i| match keys.get(i) {
            Some(key) => key.jwk_json(),
            None => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"opaque-{i}"}}"#),
        })
        .collect();
    let work: Vec<(usize, ResourceId, String)> = ids
        .iter()
        .zip(jwks)
        .enumerate()
        .map(|(i, (id, jwk))| (i, *id, jwk))
        .collect();
    let chunks: Vec<Vec<_>> = work
        .chunks(n.div_ceil(64).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for (i, id, jwk) in chunk {
                    let claim = store.claim(&id, &jwk).await.unwrap();
                    assert!(matches!(claim, Claim::Claimed { .. }), "{id}: {claim:?}");
                    if i % 7 != 0 {
                        let snapshot = Bytes::from(random_bytes(64 + i % 900));
                        store.put_snapshot(&id, snapshot).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    ids
}

/// A fresh SQLite data directory holding [`fill`]'s `n` resources.
pub(super) async fn filled(n: usize, keys: &[Identity]) -> (tempfile::TempDir, Vec<ResourceId>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&sqlite_path(dir.path())).await.unwrap());
    let ids = fill(store.clone(), n, keys).await;
    store.close().await;
    (dir, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_resources_restore_byte_for_byte_into_a_station_that_serves_them() {
    let keys: Vec<Identity> = (0..3).map(|_| Identity::ed25519()).collect();
    let (source, ids) = filled(10_000, &keys).await;
    let (point, before) = sqlite_contents(source.path()).await;
    assert_eq!(before.len(), 10_000);

    let key = key();
    let backups = tempfile::tempdir().unwrap();
    let data = ["--data-dir", source.path().to_str().unwrap()];
    // Small parts, so the backup spans several.
    let folder = backup(&data, backups.path(), &key, &["--part-bytes", "500000"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "zbase-backup/1");
    assert_eq!(manifest["sequence"], point);
    assert_eq!(manifest["resources"], 10_000);
    assert!(
        manifest["parts"].as_array().unwrap().len() > 3,
        "{manifest}"
    );

    let (ok, listed) = station(&["backup", "list", "--in", backups.path().to_str().unwrap()]);
    assert!(
        ok && listed.contains(&format!("sequence {point}\t10000 resources")),
        "{listed}"
    );
    let (ok, verified) = station(&[
        "backup",
        "verify",
        "--from",
        folder.to_str().unwrap(),
        "--identity",
        key.identity.to_str().unwrap(),
    ]);
    assert!(ok && verified.contains("is sound"), "{verified}");

    let target = tempfile::tempdir().unwrap();
    let (ok, out) = restore(
        &folder,
        &key,
        &["--data-dir", target.path().to_str().unwrap()],
        &[],
    );
    assert!(ok && out.contains("10000 resources"), "{out}");
    assert_eq!(
        sqlite_contents(target.path()).await,
        (point, before.clone())
    );

    // The restored station serves: a key holder verifies and is offered its snapshot, and a
    // new resource is numbered above the backup.
    let mut served = StationBuilder::default()
        .data_dir(target.path())
        .start()
        .await;
    let restored = &before.iter().find(|c| c.id == ids[1]).unwrap();
    let mut peer = join(served.addr(), Transport::Ws, &ids[1], &keys[1]).await;
    peer.expect_payload(Code::OfferSnapshot, restored.snapshot.as_ref().unwrap())
        .await;
    let fresh = zbase_tests::client::create_resource(served.addr(), Transport::Grpc).await;
    drop(fresh);
    served.terminate().await;
    let store = SqliteStore::open(&sqlite_path(target.path()))
        .await
        .unwrap();
    assert!(store.last_seq().await.unwrap() > point);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_continuous_writes_is_one_point_in_time() {
    let source = tempfile::tempdir().unwrap();
    let path = sqlite_path(source.path());
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let ids = fill(store.clone(), 20, &[]).await;
    // One writer, round after round over the resources in order: at any point in time, a
    // prefix of them holds round v + 1 and the rest round v. A torn export would not.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
        async move {
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                for id in &ids {
                    let snapshot = Bytes::from(round.to_be_bytes().to_vec());
                    store.put_snapshot(id, snapshot).await.unwrap();
                }
            }
            round
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let key = key();
    let backups = tempfile::tempdir().unwrap();
    let folder = tokio::task::spawn_blocking({
        let dir = source.path().to_path_buf();
        let to = backups.path().to_path_buf();
        move || {
            let key = key;
            let folder = backup(&["--data-dir", dir.to_str().unwrap()], &to, &key, &[]);
            (folder, key)
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.await.unwrap();
    store.close().await;
    let (folder, key) = folder;

    let target = tempfile::tempdir().unwrap();
    let (ok, out) = restore(
        &folder,
        &key,
        &["--data-dir", target.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (_, restored) = sqlite_contents(target.path()).await;
    let round_of = |id: &ResourceId| {
        let change = restored.iter().find(|c| c.id == *id).unwrap();
        u64::from_be_bytes(change.snapshot.as_ref().unwrap()[..].try_into().unwrap())
    };
    let seen: Vec<u64> = ids.iter().map(round_of).collect();
    let v = *seen.last().unwrap();
    let split = seen.iter().take_while(|&&r| r == v + 1).count();
    assert!(
        seen[..split].iter().all(|&r| r == v + 1) && seen[split..].iter().all(|&r| r == v),
        "not one point in time: rounds per resource {seen:?}"
    );
    assert!(
        v >= 1 && rounds > v,
        "the backup ran while writes went on ({v} of {rounds})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_age_and_zstd_tools_open_a_backup() {
    let (source, ids) = filled(30, &[]).await;
    let (key, _backups, folder) = backed_up(source.path());
    let part = folder.join("part-00000.jsonl.zst.age");
    let tool = |name: &str| {
        which(name).unwrap_or_else(|| {
            panic!("the `{name}` command is missing: apt-get install age zstd (.ci/run does)")
        })
    };
    let decrypted = Command::new(tool("age"))
        .args([
            "--decrypt",
            "--identity",
            key.identity.to_str().unwrap(),
            part.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        decrypted.status.success(),
        "{}",
        String::from_utf8_lossy(&decrypted.stderr)
    );
    let mut zstd = Command::new(tool("zstd"))
        .args(["--decompress", "--stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        zstd.stdin
            .take()
            .unwrap()
            .write_all(&decrypted.stdout)
            .unwrap();
    }
    let text = String::from_utf8(zstd.wait_with_output().unwrap().stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    for id in &ids {
        assert!(lines.iter().any(|l| l["id"] == id.as_str()), "{id} missing");
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Copies a backup folder, to break the copy.
fn copy(folder: &Path, into: &Path) -> PathBuf {
    let target = into.join(folder.file_name().unwrap());
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(folder).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    target
}

fn edit_manifest(folder: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = folder.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backups_are_refused_by_name_and_nothing_is_written() {
    let (source, _) = filled(200, &[]).await;
    let key = key();
    let backups = tempfile::tempdir().unwrap();
    let data = ["--data-dir", source.path().to_str().unwrap()];
    let good = backup(&data, backups.path(), &key, &["--part-bytes", "20000"]);
    let other = backup(
        &data,
        &backups.path().join("other"),
        &key,
        &["--part-bytes", "20000"],
    );
    let part = "part-00001.jsonl.zst.age";
    let size = std::fs::metadata(good.join(part)).unwrap().len();

    type Breakage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "truncated",
            Box::new(move |f: &Path| {
                let bytes = std::fs::read(f.join(part)).unwrap();
                std::fs::write(f.join(part), &bytes[..bytes.len() / 2]).unwrap();
            }),
            "part part-00001.jsonl.zst.age is damaged",
        ),
        (
            "a flipped byte",
            Box::new(move |f: &Path| {
                let mut bytes = std::fs::read(f.join(part)).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x40;
                std::fs::write(f.join(part), bytes).unwrap();
            }),
            "part part-00001.jsonl.zst.age is damaged",
        ),
        (
            "a part of another backup",
            Box::new({
                let other = other.clone();
                move |f: &Path| {
                    std::fs::copy(other.join(part), f.join(part)).unwrap();
                }
            }),
            "part part-00001.jsonl.zst.age does not match the manifest",
        ),
        (
            "a part missing",
            Box::new(move |f: &Path| std::fs::remove_file(f.join(part)).unwrap()),
            "part-00001.jsonl.zst.age: No such file",
        ),
        (
            "tampered counts",
            Box::new(|f: &Path| {
                edit_manifest(f, |m| {
                    m["resources"] = (m["resources"].as_u64().unwrap() + 1).into();
                    m["parts"][0]["records"] =
                        (m["parts"][0]["records"].as_u64().unwrap() + 1).into();
                });
            }),
            "resources in part part-00000.jsonl.zst.age: the manifest says",
        ),
        (
            "another format version",
            Box::new(|f: &Path| edit_manifest(f, |m| m["format"] = "zbase-backup/9".into())),
            "is a backup of format zbase-backup/9",
        ),
        (
            "a hostile part name",
            Box::new(|f: &Path| {
                edit_manifest(f, |m| m["parts"][0]["file"] = "../../etc/passwd".into())
            }),
            "outside the backup's folder",
        ),
        (
            "not a manifest",
            Box::new(|f: &Path| {
                std::fs::write(f.join("manifest.json"), b"\x00\xffgarbage").unwrap()
            }),
            "is not a backup manifest",
        ),
    ];
    assert!(size > 100);
    for (what, breakage, says) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let broken = copy(&good, scratch.path());
        breakage(&broken);
        let target = tempfile::tempdir().unwrap();
        let (ok, out) = restore(
            &broken,
            &key,
            &["--data-dir", target.path().to_str().unwrap()],
            &[],
        );
        assert!(!ok, "{what}: restored anyway: {out}");
        assert!(out.contains(says), "{what}: expected {says:?} in: {out}");
        assert!(out.contains("nothing was written"), "{what}: {out}");
        if sqlite_path(target.path()).exists() {
            assert_eq!(
                sqlite_contents(target.path()).await.1,
                vec![],
                "{what}: rows written"
            );
        }
        let (ok, out) = station(&[
            "backup",
            "verify",
            "--from",
            broken.to_str().unwrap(),
            "--identity",
            key.identity.to_str().unwrap(),
        ]);
        assert!(!ok && out.contains(says), "{what}: verify said: {out}");
    }

    let stranger = self::key();
    let target = tempfile::tempdir().unwrap();
    let (ok, out) = restore(
        &good,
        &stranger,
        &["--data-dir", target.path().to_str().unwrap()],
        &[],
    );
    assert!(!ok && out.contains("none of the identities given"), "{out}");

    // And the untouched backup still restores.
    let (ok, out) = restore(
        &good,
        &key,
        &["--data-dir", target.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
}

/// A backup of the SQLite store in `data_dir` with a fresh key into a fresh directory: the
/// key, the directory and the backup's folder.
fn backed_up(data_dir: &Path) -> (Key, tempfile::TempDir, PathBuf) {
    let key = key();
    let backups = tempfile::tempdir().unwrap();
    let folder = backup(
        &["--data-dir", data_dir.to_str().unwrap()],
        backups.path(),
        &key,
        &[],
    );
    (key, backups, folder)
}

/// Adds one resource to the SQLite store in `dir`, so the next backup has a new sequence.
async fn one_more(dir: &Path) {
    let store = Arc::new(SqliteStore::open(&sqlite_path(dir)).await.unwrap());
    fill(store.clone(), 1, &[]).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_and_leaves_unreadable_backups_alone() {
    let (source, _) = filled(5, &[]).await;
    let key = key();
    let backups = tempfile::tempdir().unwrap();
    let data = ["--data-dir", source.path().to_str().unwrap()];
    let mut made = Vec::new();
    for _ in 0..3 {
        one_more(source.path()).await;
        made.push(backup(&data, backups.path(), &key, &["--keep-last", "2"]));
    }
    let folders = |root: &Path| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        found.sort();
        found
    };
    assert_eq!(folders(backups.path()), made[1..]);

    // A backup whose manifest is unreadable is neither counted nor deleted.
    std::fs::write(made[1].join("manifest.json"), b"damaged").unwrap();
    one_more(source.path()).await;
    let newest = backup(&data, backups.path(), &key, &["--keep-last", "1"]);
    assert_eq!(folders(backups.path()), [made[1].clone(), newest]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_data_is_refused_unless_wiped_or_restored_only_if_empty() {
    let (source, _) = filled(10, &[]).await;
    let (key, _backups, folder) = backed_up(source.path());

    let target = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&sqlite_path(target.path()))
            .await
            .unwrap(),
    );
    fill(store.clone(), 3, &[]).await;
    store.close().await;
    let data = ["--data-dir", target.path().to_str().unwrap()];
    let (ok, out) = restore(&folder, &key, &data, &[]);
    assert!(
        !ok && out.contains("already holds 3 resources") && out.contains("--wipe"),
        "{out}"
    );
    assert_eq!(sqlite_contents(target.path()).await.1.len(), 3);
    // A station's every start runs the same restore: with data there already, it passes by.
    let (ok, out) = restore(&folder, &key, &data, &["--if-empty"]);
    assert!(
        ok && out.contains("holds 3 resources already; nothing restored"),
        "{out}"
    );
    assert_eq!(sqlite_contents(target.path()).await.1.len(), 3);
    let (ok, out) = restore(&folder, &key, &data, &["--wipe", "--if-empty"]);
    assert!(!ok && out.contains("cannot be used with"), "{out}");
    let (ok, out) = restore(&folder, &key, &data, &["--wipe"]);
    assert!(ok, "{out}");
    assert_eq!(
        sqlite_contents(target.path()).await,
        sqlite_contents(source.path()).await
    );
    // Into an empty store, --if-empty restores.
    let fresh = tempfile::tempdir().unwrap();
    let data = ["--data-dir", fresh.path().to_str().unwrap()];
    let (ok, out) = restore(&folder, &key, &data, &["--if-empty"]);
    assert!(ok && out.contains("restored"), "{out}");
    assert_eq!(
        sqlite_contents(fresh.path()).await,
        sqlite_contents(source.path()).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backs_up_and_restores_into_another_database() {
    let source_url = zbase_tests::postgres::fresh_database().await;
    let open = |url: String| async move {
        Arc::new(
            PostgresStore::connect(&url, PostgresOptions::default())
                .await
                .unwrap(),
        )
    };
    let source = open(source_url.clone()).await;
    fill(source.clone(), 500, &[]).await;
    let before = contents(source.as_ref()).await;
    let key = key();
    let backups = tempfile::tempdir().unwrap();
    // While the source still serves.
    let folder = tokio::task::spawn_blocking({
        let (url, to, recipient) = (
            source_url.clone(),
            backups.path().to_path_buf(),
            key.recipient.clone(),
        );
        move || {
            let key = Key {
                _dir: tempfile::tempdir().unwrap(),
                identity: PathBuf::new(),
                recipient,
            };
            backup(&["--store", &url], &to, &key, &[])
        }
    })
    .await
    .unwrap();
    source.close().await;

    let target_url = zbase_tests::postgres::fresh_database().await;
    let (ok, out) = restore(&folder, &key, &["--store", &target_url], &[]);
    assert!(ok, "{out}");
    let target = open(target_url.clone()).await;
    assert_eq!(contents(target.as_ref()).await, before);
    let id = ResourceId::from_bytes(random_bytes(32).try_into().unwrap());
    match target.claim(&id, "{}").await.unwrap() {
        Claim::Claimed { seq } => assert!(seq > before.0, "{seq} follows {}", before.0),
        Claim::Taken => panic!("a fresh identifier was taken"),
    }
    target.close().await;
    let (ok, out) = restore(&folder, &key, &["--store", &target_url], &[]);
    assert!(!ok && out.contains("already holds 501 resources"), "{out}");
}

/// Extension R1: a backup holds the key current when it was made, and a restore brings that
/// key back, not the one the resource was configured with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_holds_the_rotated_key_and_the_restore_brings_it_back() {
    let source = tempfile::tempdir().unwrap();
    let mut station = StationBuilder::default()
        .data_dir(source.path())
        .start_process()
        .await;
    let (id, old) = zbase_tests::client::create_resource(station.addr(), Transport::Ws).await;
    zbase_tests::client::seed_snapshot(station.addr(), Transport::Ws, &id, &old, b"kept").await;
    let new = Identity::p256();
    let mut conn = zbase_tests::client::Conn::connect(Transport::Grpc, station.addr(), &id).await;
    let challenge = zbase_tests::client::verify_keeping_challenge(&mut conn, &id, &old).await;
    conn.expect_payload(Code::OfferSnapshot, b"kept").await;
    conn.send(Code::RotateKey, old.rotate_payload(&new, &challenge, &id))
        .await
        .unwrap();
    conn.expect_frame(Code::KeyRotated).await;
    drop(conn);

    // Made while the station serves, as an operator would.
    let key = key();
    let backups = tempfile::tempdir().unwrap();
    let folder = backup(
        &["--data-dir", source.path().to_str().unwrap()],
        backups.path(),
        &key,
        &[],
    );
    station.terminate().await;
    let target = tempfile::tempdir().unwrap();
    let (ok, out) = restore(
        &folder,
        &key,
        &["--data-dir", target.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (_, restored) = sqlite_contents(target.path()).await;
    assert_eq!(restored.len(), 1);
    assert_eq!(
        zbase_proto::wire::VerificationKey::from_jwk_json(&restored[0].jwk).unwrap(),
        zbase_proto::wire::VerificationKey::from_jwk_json(&new.jwk_json()).unwrap()
    );

    let served = StationBuilder::default()
        .data_dir(target.path())
        .start_process()
        .await;
    let mut stale = join(served.addr(), Transport::Ws, &id, &old).await;
    stale
        .expect_close(zbase_tests::client::CloseKind::Auth)
        .await;
    let mut peer = join(served.addr(), Transport::Grpc, &id, &new).await;
    peer.expect_payload(Code::OfferSnapshot, b"kept").await;
}
