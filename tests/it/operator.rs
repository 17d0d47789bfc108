//! The operator against the real station and (once merged) a stand-in API server.
//!
//! `the_rendered_pod_template_starts_the_real_station`: the StatefulSet's pod template and
//! ConfigMap, as the operator builds them from the fixtures in `operator/tests/fixtures/`, run
//! the real `zbase-station` through the stand-in kubelet, and it serves on the probed port.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zbase_operator::crd::BaseStation;
use zbase_operator::reconcile::build::{self, CONFIG_KEY};
use zbase_operator::reconcile::validate::{self, Defaults, References};
use zbase_tests::client::{Conn, Tls};
use zbase_tests::kubelet::{LocalPod, VolumeFiles};
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

async fn start(bs: &BaseStation, refs: &References, tls: Option<VolumeFiles>) -> LocalPod {
    let station = validate::validate(
        bs,
        &Defaults {
            station_image: "unused".into(),
        },
        refs,
    )
    .unwrap();
    let desired = build::build(&station).unwrap();
    let template = desired.stateful_set.spec.unwrap().template;
    let config: VolumeFiles = desired
        .config_map
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    assert!(config.contains_key(CONFIG_KEY));
    let mut volumes = BTreeMap::from([("config".to_owned(), config)]);
    if let Some(files) = tls {
        volumes.insert("tls".to_owned(), files);
    }
    LocalPod::start(
        &template,
        "station",
        &station_bin(),
        &volumes,
        &format!("{}-0", station.name),
        &station.namespace,
        &[],
    )
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
    let mut pod = start(&fixture("minimal"), &References::default(), None).await;
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
    let mut pod = start(&fixture("sqlite-tls-secret"), &refs, Some(files)).await;
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
