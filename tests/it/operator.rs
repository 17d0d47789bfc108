//! The operator against the real station and (once merged) a stand-in API server.
//!
//! `the_rendered_pod_template_starts_the_real_station`: the StatefulSet's pod template and
//! ConfigMap, as the operator builds them from the fixtures in `operator/tests/fixtures/`, run
//! the real `zbase-station` through the stand-in kubelet, and it serves on the probed port.

use kube::ResourceExt as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zbase_operator::crd::{BaseStation, TlsSpec};
use zbase_operator::pki;
use zbase_operator::reconcile::build::{self, CONFIG_KEY, Desired, SiteCredentials};
use zbase_operator::reconcile::validate::{self, Defaults, References};
use zbase_tests::client::{Conn, Tls};
use zbase_tests::kubelet::{LocalPod, LocalVolume, VolumeFiles};
use zbase_tests::station::station_bin;
use zbase_tests::tls::{TestCa, tls_client_config};

fn fixture(name: &str) -> BaseStation {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../operator/tests/fixtures/{name}.yaml"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// GETs `path` over plain HTTP or TLS (trusting `ca`), as the kubelet's probe does; returns
/// the status code.
async fn probe(addr: std::net::SocketAddr, path: &str, ca: Option<&str>) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    match ca {
        None => {
            let mut tcp = tcp;
            tcp.write_all(request.as_bytes()).await.ok()?;
            tcp.read_to_end(&mut response).await.ok()?;
        }
        Some(ca) => {
            let config: Arc<rustls::ClientConfig> =
                tls_client_config(ca, &[b"http/1.1"], None).ok()?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let mut tls = connector.connect(name, tcp).await.ok()?;
            tls.write_all(request.as_bytes()).await.ok()?;
            let _ = tls.read_to_end(&mut response).await;
        }
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Every object the operator builds for `bs`, with the site credentials its own plan issues.
fn desired(bs: &BaseStation, refs: &References) -> (Desired, pki::Plan) {
    let station = validate::validate(
        bs,
        &Defaults {
            station_image: "unused".into(),
        },
        refs,
    )
    .unwrap();
    let plan = pki::plan(
        &station.name,
        &station.site_names,
        None,
        None,
        &pki::Policy::default(),
        SystemTime::now(),
    )
    .unwrap();
    let site = SiteCredentials {
        ca: plan.ca.clone(),
        leaf: plan.leaf.clone(),
    };
    let Ok(desired) = build::build(&station, &site) else {
        panic!("{} does not build", station.name)
    };
    (desired, plan)
}

/// Starts the station of `bs` as its pod template says, with the site credentials the
/// operator's own plan issues (returned, for the CA), `volumes` beside the config and site
/// credentials (`tls`, `data`), and `env`.
async fn start(
    bs: &BaseStation,
    refs: &References,
    volumes: BTreeMap<String, LocalVolume>,
    env: &[(&str, String)],
) -> (LocalPod, pki::Plan) {
    let (desired, plan) = desired(bs, refs);
    let template = desired.stateful_set.spec.unwrap().template;
    let config: VolumeFiles = desired
        .config_map
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    assert!(config.contains_key(CONFIG_KEY));
    let mut volumes = volumes;
    volumes.insert("config".to_owned(), config.into());
    volumes.insert("site-tls".to_owned(), plan.leaf.clone().into());
    let pod = LocalPod::start(
        &template,
        "station",
        &station_bin(),
        &volumes,
        &format!("{}-0", bs.name_any()),
        &bs.namespace().unwrap(),
        env,
    );
    (pod, plan)
}

async fn wait_ready(pod: &mut LocalPod, ca: Option<&str>) {
    for _ in 0..200 {
        if probe(pod.port("public"), "/readyz", ca).await == Some(200) {
            return;
        }
        assert!(!pod.exited(), "the station exited:\n{}", pod.stderr_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the station never became ready:\n{}", pod.stderr_log());
}

#[tokio::test]
async fn the_rendered_pod_template_starts_the_real_station() {
    let mut plain = fixture("minimal");
    plain.spec.tls.plain_http = true;
    let (mut pod, _) = start(&plain, &References::default(), BTreeMap::new(), &[]).await;
    wait_ready(&mut pod, None).await;
    assert_eq!(probe(pod.port("public"), "/healthz", None).await, Some(200));
    Conn::ws(
        pod.port("public"),
        zbase_tests::client::random_id().as_str(),
    )
    .await
    .unwrap();
    let log = pod.stderr_log();
    assert!(
        log.contains("\"level\""),
        "the rendered config asks for JSON logs:\n{log}"
    );
}

#[tokio::test]
async fn the_rendered_pod_template_serves_tls_from_the_mounted_secret() {
    let ca = TestCa::new("zbase test site");
    let leaf = ca.server_leaf(7);
    let files: VolumeFiles = BTreeMap::from([
        ("tls.crt".to_owned(), leaf.chain_pem().into_bytes()),
        ("tls.key".to_owned(), leaf.key_pem.clone().into_bytes()),
    ]);
    let refs = References {
        secrets: [(
            "home-cert".to_owned(),
            vec!["tls.crt".to_owned(), "tls.key".to_owned()],
        )]
        .into(),
        ..Default::default()
    };
    let tls = BTreeMap::from([("tls".to_owned(), files.into())]);
    let mut bs = fixture("sqlite-tls-secret");
    bs.spec.restore = None;
    let (mut pod, _) = start(&bs, &refs, tls, &[]).await;
    wait_ready(&mut pod, Some(&ca.pem())).await;
    let conn = Conn::ws_tls(
        pod.port("public"),
        zbase_tests::client::random_id().as_str(),
        &Tls::new(ca.pem(), "localhost"),
    )
    .await
    .unwrap();
    assert_eq!(
        zbase_tests::tls::serial_of(&conn.peer_certificate().unwrap()),
        7
    );
}

/// Bytes the internal port sends first over a TLS connection presenting `client` (chain and
/// key PEM), or the error that ended it, after the HTTP/2 preface: an accepted client reads
/// the server's SETTINGS, and a refused one the alert.
async fn internal_first_read(
    addr: std::net::SocketAddr,
    trust: &str,
    client: Option<(&str, &str)>,
) -> std::io::Result<usize> {
    let config = tls_client_config(trust, &[b"h2"], client).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    // Pods check each other's chain, not names (addresses change with every reschedule).
    let name = rustls::pki_types::ServerName::try_from("relay-0.relay-pods.apps.svc").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    // The HTTP/2 client preface and an empty SETTINGS frame; the server answers with its own.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("the internal port said nothing"))?
}

#[tokio::test]
async fn by_default_the_site_ca_secures_both_ports() {
    // The internal port exists with PostgreSQL, where pods share the store.
    let mut bs = fixture("postgres-three-pods");
    bs.spec.backup = None;
    bs.spec.tls = TlsSpec {
        names: vec!["localhost".into()],
        ..Default::default()
    };
    let refs = References {
        secrets: [("relay-db".to_owned(), vec!["url".to_owned()])].into(),
        ..Default::default()
    };
    let url = zbase_tests::postgres::fresh_database().await;
    let (mut pod, plan) = start(&bs, &refs, BTreeMap::new(), &[("ZBASE_STORE", url)]).await;
    let text = |data: &pki::SecretData, key: &str| String::from_utf8(data[key].clone()).unwrap();
    let trust = text(&plan.leaf, pki::TLS_TRUST);
    wait_ready(&mut pod, Some(&trust)).await;

    // Public: a client that trusts the site CA reaches the station under the name it uses.
    let conn = Conn::ws_tls(
        pod.port("public"),
        zbase_tests::client::random_id().as_str(),
        &Tls::new(trust.clone(), "localhost"),
    )
    .await
    .unwrap();
    let served = conn.peer_certificate().unwrap();
    let leaf_pem = text(&plan.leaf, pki::TLS_CERT);
    let leaf_der = zbase_tests::tls::certs_from_pem(&leaf_pem).unwrap()[0].to_vec();
    assert_eq!(
        served, leaf_der,
        "the site certificate is what the public port serves"
    );

    // Internal: the site certificate gets in; no certificate, or another CA's, does not.
    let internal = pod.port("internal");
    let key = text(&plan.leaf, pki::TLS_KEY);
    let read = internal_first_read(internal, &trust, Some((&leaf_pem, &key))).await;
    assert!(
        matches!(read, Ok(n) if n > 0),
        "a pod of the site is let in: {read:?}"
    );
    let read = internal_first_read(internal, &trust, None).await;
    assert!(
        read.is_err() || read.as_ref().is_ok_and(|n| *n == 0),
        "no certificate: {read:?}"
    );
    let stranger = TestCa::new("another site").client_leaf("home-1", 3);
    let read = internal_first_read(
        internal,
        &trust,
        Some((&stranger.chain_pem(), &stranger.key_pem)),
    )
    .await;
    assert!(
        read.is_err() || read.as_ref().is_ok_and(|n| *n == 0),
        "another CA: {read:?}"
    );
}

/// The backup CronJob's pod template, as the operator builds it for `bs`.
fn backup_template(
    bs: &BaseStation,
    refs: &References,
) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let cron = desired(bs, refs)
        .0
        .backup_cron_job
        .expect("spec.backup gives a CronJob");
    cron.spec.unwrap().job_template.spec.unwrap().template
}

/// Runs the backup Job's pod to its end, as the Job controller would once; fails with its log
/// if it does not succeed. Returns where the report (the termination message) says the
/// backup is.
async fn run_backup_job(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    volumes: &BTreeMap<String, LocalVolume>,
    env: &[(&str, String)],
) -> String {
    let mut job = LocalPod::start(
        template,
        build::BACKUP_CONTAINER,
        &station_bin(),
        volumes,
        "home-backup-29412345-x7k2p",
        "zbase",
        env,
    );
    let status = job.finished(Duration::from_secs(120)).await;
    let log = job.stderr_log();
    assert!(
        status.is_some_and(|s| s.success()),
        "the backup Job's pod did not succeed ({status:?}):\n{log}"
    );
    let report: serde_json::Value = serde_json::from_str(&job.termination_message())
        .unwrap_or_else(|e| panic!("no report in the termination message ({e}):\n{log}"));
    report["backup"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_rendered_backup_job_backs_up_the_running_station_into_a_volume() {
    let key = super::backup::key();
    let (data, _) = super::backup::filled(300, &[]).await;
    let (point, before) = super::backup::sqlite_contents(data.path()).await;
    let mut bs = fixture("minimal");
    bs.spec.tls.plain_http = true;
    bs.spec.backup = fixture("sqlite-tls-secret").spec.backup;
    let spec = bs.spec.backup.as_mut().unwrap();
    spec.recipients = vec![key.recipient.clone()];
    spec.keep_last = Some(2);

    // The station's claim and the backup Job's mount of it are one folder, as pod 0's volume
    // is on its node; the backup runs while the station serves from it.
    let claim = || LocalVolume::Shared(data.path().to_owned());
    let (mut station, _) = start(
        &bs,
        &References::default(),
        BTreeMap::from([("data".to_owned(), claim())]),
        &[],
    )
    .await;
    wait_ready(&mut station, None).await;
    let backups = tempfile::tempdir().unwrap();
    let volumes = BTreeMap::from([
        ("data".to_owned(), claim()),
        (
            "backups".to_owned(),
            LocalVolume::Shared(backups.path().to_owned()),
        ),
    ]);
    let template = backup_template(&bs, &References::default());
    let mut reported = Vec::new();
    for _ in 0..3 {
        reported.push(run_backup_job(&template, &volumes, &[]).await);
    }
    assert!(
        !station.exited(),
        "the station runs on: {}",
        station.stderr_log()
    );

    // Into the subPath the spec names; keepLast 2 of the three runs.
    let folder = backups.path().join("zbase/home");
    let mut taken: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    taken.sort();
    assert_eq!(taken.len(), 2, "keepLast 2: {taken:?}");
    assert_eq!(
        Path::new(reported.last().unwrap()),
        taken.last().unwrap(),
        "the report names the backup it wrote"
    );
    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("data");
    let (ok, out) = super::backup::restore(
        taken.last().unwrap(),
        &key,
        &["--data-dir", target.to_str().unwrap()],
        &[],
    );
    assert!(ok, "restore failed: {out}");
    assert_eq!(
        super::backup::sqlite_contents(&target).await,
        (point, before),
        "the backup holds what the station stored"
    );
}

// Two workers: the restore below blocks one, and the S3 server runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_backup_job_writes_to_s3_with_the_mounted_credentials() {
    use super::backup_s3::{ACCESS_KEY, BUCKET, S3, SECRET_KEY};
    let s3 = S3::start().await;
    let key = super::backup::key();
    let (data, _) = super::backup::filled(120, &[]).await;
    let (point, before) = super::backup::sqlite_contents(data.path()).await;
    let mut bs = fixture("minimal");
    bs.spec.tls.plain_http = true;
    bs.spec.backup = fixture("postgres-three-pods").spec.backup;
    let spec = bs.spec.backup.as_mut().unwrap();
    spec.recipients = vec![key.recipient.clone()];
    let dest = spec.s3.as_mut().unwrap();
    dest.url = format!("s3://{BUCKET}/sites/home");
    dest.endpoint = Some(s3.endpoint());
    dest.ca = None;
    let refs = References {
        secrets: [(
            dest.credentials_secret.clone(),
            vec!["access-key-id".to_owned(), "secret-access-key".to_owned()],
        )]
        .into(),
        ..Default::default()
    };
    let template = backup_template(&bs, &refs);
    // The Secret's keys, as the kubelet mounts them.
    let credentials: VolumeFiles = BTreeMap::from([
        ("access-key-id".to_owned(), ACCESS_KEY.as_bytes().to_vec()),
        (
            "secret-access-key".to_owned(),
            SECRET_KEY.as_bytes().to_vec(),
        ),
    ]);
    let volumes = BTreeMap::from([
        (
            "data".to_owned(),
            LocalVolume::Shared(data.path().to_owned()),
        ),
        ("s3-credentials".to_owned(), credentials.into()),
    ]);
    let reported = run_backup_job(&template, &volumes, &[]).await;
    let taken = s3.backups("sites/home");
    assert_eq!(
        taken.len(),
        1,
        "one backup under the url's prefix: {taken:?}"
    );
    let from = format!("s3://{BUCKET}/sites/home/{}", taken[0]);
    assert_eq!(reported, from, "the report names the backup it wrote");

    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("data");
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, out) = super::backup::station_env(
        &[
            "restore",
            "--from",
            &from,
            "--identity",
            key.identity.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        &env,
    );
    assert!(ok, "restore failed: {out}");
    assert_eq!(
        super::backup::sqlite_contents(&target).await,
        (point, before)
    );
}

#[tokio::test]
async fn a_new_station_starts_from_a_backup_through_its_init_container() {
    let key = super::backup::key();
    let (source, _) = super::backup::filled(200, &[]).await;
    let expected = super::backup::sqlite_contents(source.path()).await;
    let mut bs = fixture("minimal");
    bs.spec.tls.plain_http = true;
    bs.spec.backup = fixture("sqlite-tls-secret").spec.backup;
    bs.spec.backup.as_mut().unwrap().recipients = vec![key.recipient.clone()];
    let backups = tempfile::tempdir().unwrap();
    let shared = |dir: &Path| LocalVolume::Shared(dir.to_owned());
    let taken = run_backup_job(
        &backup_template(&bs, &References::default()),
        &BTreeMap::from([
            ("data".to_owned(), shared(source.path())),
            ("backups".to_owned(), shared(backups.path())),
        ]),
        &[],
    )
    .await;
    let name = Path::new(&taken).file_name().unwrap().to_str().unwrap();

    // A new station, on an empty claim, from that backup by its name.
    bs.spec.restore = Some(zbase_operator::crd::RestoreSpec {
        backup: name.to_owned(),
        identity_secret: zbase_operator::crd::IdentityKeyRef {
            name: "home-backup-key".into(),
            key: "key.txt".into(),
        },
    });
    let refs = References {
        secrets: [("home-backup-key".to_owned(), vec!["key.txt".to_owned()])].into(),
        ..Default::default()
    };
    let template = desired(&bs, &refs).0.stateful_set.spec.unwrap().template;
    let claim = tempfile::tempdir().unwrap();
    let identity: VolumeFiles =
        BTreeMap::from([("key.txt".to_owned(), std::fs::read(&key.identity).unwrap())]);
    let init = || {
        LocalPod::start(
            &template,
            build::RESTORE_CONTAINER,
            &station_bin(),
            &BTreeMap::from([
                ("data".to_owned(), shared(claim.path())),
                ("backups".to_owned(), shared(backups.path())),
                ("restore-identity".to_owned(), identity.clone().into()),
            ]),
            "home-0",
            "zbase",
            &[],
        )
    };
    let mut first = init();
    let status = first.finished(Duration::from_secs(120)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the restore init container failed ({status:?}):\n{}",
        first.stderr_log()
    );
    assert_eq!(
        super::backup::sqlite_contents(claim.path()).await,
        expected,
        "the first start restores the backup"
    );

    // The station starts on it and serves; a restart runs the init container again, which
    // leaves the store as it is.
    let (mut station, _) = start(
        &bs,
        &refs,
        BTreeMap::from([("data".to_owned(), shared(claim.path()))]),
        &[],
    )
    .await;
    wait_ready(&mut station, None).await;
    drop(station);
    let mut again = init();
    let status = again.finished(Duration::from_secs(120)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "a later start must not fail ({status:?}):\n{}",
        again.stderr_log()
    );
    assert_eq!(
        super::backup::sqlite_contents(claim.path()).await.1,
        expected.1
    );
}
