//! Backups to S3-compatible storage through the real `zbase-station`, against s3s-fs: a real
//! S3 server (in this process, files in a temporary directory) that checks every SigV4
//! signature. Multipart uploads, credentials from files and from the environment, retention,
//! what a dead run left, and wrong credentials refused with nothing written.

use super::backup::{Key, filled, key, sqlite_contents, sqlite_path, station_env};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use zbase_basestation::store::{SqliteStore, Store as _};
use zbase_proto::wire::ResourceId;
use zbase_tests::client::random_bytes;

pub(super) const BUCKET: &str = "backups";
pub(super) const ACCESS_KEY: &str = "zbase-test";
pub(super) const SECRET_KEY: &str = "s3cret-for-tests-only";

/// An S3 server on loopback, and every request line it received.
pub(super) struct S3 {
    addr: SocketAddr,
    root: tempfile::TempDir,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3 {
    pub(super) async fn start() -> S3 {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let service = service.clone();
                let seen = seen.clone();
                let logged = hyper::service::service_fn(move |req: http::Request<_>| {
                    seen.lock()
                        .unwrap()
                        .push(format!("{} {}", req.method(), req.uri()));
                    let service = service.clone();
                    async move { hyper::service::Service::call(&service, req).await }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), logged)
                        .await;
                });
            }
        });
        S3 {
            addr,
            root,
            requests,
            task,
        }
    }

    pub(super) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment a backup Job would have: endpoint and credentials in `AWS_*`.
    pub(super) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    /// Every object's key in the bucket, sorted (s3s-fs keeps them as files).
    fn objects(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, found);
                } else {
                    let key = path.strip_prefix(base).unwrap().to_str().unwrap();
                    // s3s-fs's own bookkeeping files sit beside the objects.
                    if !key.split('/').any(|s| s.starts_with(".")) {
                        found.push(key.to_owned());
                    }
                }
            }
        }
        let base = self.root.path().join(BUCKET);
        let mut found = Vec::new();
        walk(&base, &base, &mut found);
        found.sort();
        found
    }

    /// The backups (prefixes with a manifest) below `prefix`.
    pub(super) fn backups(&self, prefix: &str) -> Vec<String> {
        self.objects()
            .iter()
            .filter_map(|k| {
                k.strip_prefix(&format!("{prefix}/"))?
                    .strip_suffix("/manifest.json")
            })
            .map(str::to_owned)
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn run(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    station_env(args, &env)
}

/// `zbase-station backup` into `to`, returning the backup's URL.
fn backup_to(
    data_dir: &Path,
    to: &str,
    key: &Key,
    extra: &[&str],
    env: &[(&str, String)],
) -> String {
    let mut args = vec![
        "backup",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--to",
        to,
        "--recipient",
        &key.recipient,
    ];
    args.extend_from_slice(extra);
    let (ok, out) = run(&args, env);
    assert!(ok, "backup failed: {out}");
    out.lines()
        .find_map(|l| l.strip_prefix("backup ")?.split(" written").next())
        .unwrap_or_else(|| panic!("no backup named in: {out}"))
        .to_owned()
}

/// A SQLite store of `n` resources, each with a random (incompressible) snapshot of `len`.
async fn big(n: usize, len: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&sqlite_path(dir.path())).await.unwrap();
    for i in 0..n {
        let id = ResourceId::from_bytes(random_bytes(32).try_into().unwrap());
        let jwk = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"big-{i}"}}"#);
        store.claim(&id, &jwk).await.unwrap();
        store
            .put_snapshot(&id, Bytes::from(random_bytes(len)))
            .await
            .unwrap();
    }
    store.close().await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_goes_up_in_multipart_uploads_and_restores_from_the_bucket() {
    let s3 = S3::start().await;
    // 12 MiB of snapshots, 16 MiB as base64 lines: the first part (15 MB of lines, 11 MiB
    // compressed back) needs two multipart requests of 8 MiB.
    let source = big(192, 64 * 1024).await;
    let (point, before) = sqlite_contents(source.path()).await;
    let key = key();
    // Credentials from files, as a mounted Secret gives them.
    let secrets = tempfile::tempdir().unwrap();
    let id_file = secrets.path().join("access-key-id");
    let secret_file = secrets.path().join("secret-access-key");
    std::fs::write(&id_file, format!("{ACCESS_KEY}\n")).unwrap();
    std::fs::write(&secret_file, format!("{SECRET_KEY}\n")).unwrap();
    let env = vec![
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID_FILE", id_file.display().to_string()),
        (
            "AWS_SECRET_ACCESS_KEY_FILE",
            secret_file.display().to_string(),
        ),
    ];
    let to = format!("s3://{BUCKET}/site-a");
    let made = backup_to(
        source.path(),
        &to,
        &key,
        &["--part-bytes", "15000000"],
        &env,
    );
    assert!(made.starts_with(&format!("{to}/zbase-")), "{made}");

    let name = made.rsplit('/').next().unwrap();
    assert_eq!(s3.backups("site-a"), [name]);
    let objects = s3.objects();
    assert!(
        objects.contains(&format!("site-a/{name}/part-00000.jsonl.zst.age"))
            && objects.contains(&format!("site-a/{name}/part-00001.jsonl.zst.age")),
        "{objects:?}"
    );
    let requests = s3.requests();
    let first_part = format!("/{BUCKET}/site-a/{name}/part-00000.jsonl.zst.age");
    let uploads = |number: &str| {
        requests
            .iter()
            .any(|r| r.starts_with("PUT ") && r.contains(&first_part) && r.contains(number))
    };
    assert!(
        uploads("partNumber=1") && uploads("partNumber=2"),
        "the first part did not go up in several requests: {requests:#?}"
    );

    let (ok, listed) = run(&["backup", "list", "--in", &to], &env);
    assert!(
        ok && listed.contains(&format!("{made}\t"))
            && listed.contains(&format!("sequence {point}\t192 resources\t2 parts")),
        "{listed}"
    );
    let identity = key.identity.to_str().unwrap();
    let (ok, verified) = run(
        &["backup", "verify", "--from", &made, "--identity", identity],
        &env,
    );
    assert!(ok && verified.contains("is sound"), "{verified}");

    let target = tempfile::tempdir().unwrap();
    let (ok, out) = run(
        &[
            "restore",
            "--from",
            &made,
            "--identity",
            identity,
            "--data-dir",
            target.path().to_str().unwrap(),
        ],
        &env,
    );
    assert!(ok && out.contains("192 resources"), "{out}");
    assert_eq!(sqlite_contents(target.path()).await, (point, before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_in_a_bucket_keeps_the_newest_and_clears_what_a_dead_run_left() {
    let s3 = S3::start().await;
    let env = s3.env();
    let (source, _) = filled(20, &[]).await;
    let key = key();
    let to = format!("s3://{BUCKET}/nightly");
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(backup_to(
            source.path(),
            &to,
            &key,
            &["--keep-last", "2"],
            &env,
        ));
    }
    let names: Vec<String> = made
        .iter()
        .map(|m| m.rsplit('/').next().unwrap().to_owned())
        .collect();
    let mut kept = s3.backups("nightly");
    kept.sort();
    let mut expected = names[1..].to_vec();
    expected.sort();
    assert_eq!(kept, expected);

    // A run that died after uploading a part leaves a prefix with no manifest; the next run
    // removes it. Backups elsewhere in the bucket are not touched.
    let dead = s3
        .root
        .path()
        .join(BUCKET)
        .join("nightly/zbase-20200101T000000Z-0badf00d");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("part-00000.jsonl.zst.age"), b"half a part").unwrap();
    let other = backup_to(
        source.path(),
        &format!("s3://{BUCKET}/other-site"),
        &key,
        &[],
        &env,
    );
    let newest = backup_to(source.path(), &to, &key, &["--keep-last", "1"], &env);
    assert_eq!(
        s3.backups("nightly"),
        [newest.rsplit('/').next().unwrap().to_owned()]
    );
    // (s3s-fs leaves the emptied directory; the object is what counts.)
    assert!(
        !dead.join("part-00000.jsonl.zst.age").exists(),
        "the dead run's part is still there"
    );
    assert_eq!(s3.backups("other-site").len(), 1, "{other}");
    assert!(
        !s3.objects().iter().any(|k| k.contains("0badf00d")),
        "{:?}",
        s3.objects()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_by_name_and_nothing_is_written() {
    let s3 = S3::start().await;
    let (source, _) = filled(10, &[]).await;
    let key = key();
    let to = format!("s3://{BUCKET}/site");
    let wrong = vec![
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret".to_owned()),
    ];
    let mut args = vec![
        "backup",
        "--data-dir",
        source.path().to_str().unwrap(),
        "--to",
        &to,
        "--recipient",
        &key.recipient,
    ];
    let (ok, out) = run(&args, &wrong);
    assert!(!ok, "{out}");
    assert!(
        out.contains("refused the credentials") && out.contains("AWS_SECRET_ACCESS_KEY"),
        "{out}"
    );
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());

    // With the right ones, a backup; then a restore with wrong ones writes nothing.
    let made = backup_to(source.path(), &to, &key, &[], &s3.env());
    let target = tempfile::tempdir().unwrap();
    let (ok, out) = run(
        &[
            "restore",
            "--from",
            &made,
            "--identity",
            key.identity.to_str().unwrap(),
            "--data-dir",
            target.path().to_str().unwrap(),
        ],
        &wrong,
    );
    assert!(!ok && out.contains("refused the credentials"), "{out}");
    assert!(
        !sqlite_path(target.path()).exists(),
        "a refused restore created the store"
    );

    // A bucket that does not exist is named as such.
    args[4] = "s3://no-such-bucket/site";
    let (ok, out) = run(&args, &s3.env());
    assert!(!ok && out.contains("s3://no-such-bucket"), "{out}");
}
