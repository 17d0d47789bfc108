//! TLS through the real binary: the public port serves TLS from files and swaps in a renewed
//! certificate under live connections without dropping one; bad replacements are refused; the
//! internal port between pods admits only certificates of the site CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zbase_proto::wire::{Code, ResourceId};
use zbase_tests::client::{
    Conn, Event, Identity, Tls, Transport, configure, random_bytes, random_id, verify,
};
use zbase_tests::pods::Pods;
use zbase_tests::station::{Station, StationBuilder};
use zbase_tests::tls::{Leaf, TestCa, serial_of, tls_client_config, write_pair, write_secret};

/// How often the station under test reads its TLS files again.
const RELOAD: Duration = Duration::from_millis(200);

/// A station serving `leaf` from Kubernetes-style Secret files in its own folder.
struct TlsStation {
    station: Station,
    secret: tempfile::TempDir,
    tls: Tls,
}

impl TlsStation {
    async fn start(ca: &TestCa, leaf: &Leaf, builder: StationBuilder) -> TlsStation {
        let secret = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(secret.path(), leaf);
        let station = builder
            .flag("tls-cert", cert.display())
            .flag("tls-key", key.display())
            .flag("tls-reload-interval", format!("{}ms", RELOAD.as_millis()))
            .start()
            .await;
        TlsStation {
            station,
            secret,
            tls: Tls::new(ca.pem(), "localhost"),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.station.addr()
    }

    async fn connect(&self, t: Transport, id: &ResourceId) -> Conn {
        Conn::connect_tls(t, self.addr(), id, &self.tls).await
    }

    /// The serial a new connection is served.
    async fn served_serial(&self) -> u64 {
        let conn = self.connect(Transport::Ws, &random_id()).await;
        serial_of(
            &conn
                .peer_certificate()
                .expect("a TLS connection has a peer certificate"),
        )
    }

    /// Waits until new connections are served `serial`.
    async fn until_serving(&self, serial: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let served = self.served_serial().await;
            if served == serial {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still serving {served}, not {serial}\n{}",
                self.station.stderr_log()
            );
            tokio::time::sleep(RELOAD).await;
        }
    }

    /// Waits until the station's log has `count` refusals of new TLS files.
    async fn until_refused(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .station
            .stderr_log()
            .matches("new TLS files refused")
            .count()
            < count
        {
            assert!(Instant::now() < deadline, "{}", self.station.stderr_log());
            tokio::time::sleep(RELOAD).await;
        }
    }
}

async fn create(station: &TlsStation, t: Transport) -> (ResourceId, Identity) {
    let identity = Identity::ed25519();
    let proposed = random_id();
    let mut conn = station.connect(t, &proposed).await;
    let id = configure(&mut conn, &proposed, &identity).await;
    (id, identity)
}

/// A verified peer over TLS; its first frame (the snapshot offer) shows it joined.
async fn joined(
    station: &TlsStation,
    t: Transport,
    id: &ResourceId,
    me: &Identity,
    snapshot: &[u8],
) -> Conn {
    let mut conn = station.connect(t, id).await;
    verify(&mut conn, id, me).await;
    conn.expect_payload(Code::OfferSnapshot, snapshot).await;
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_live_connections_keep_flowing_through_two_renewals() {
    const RESOURCES: usize = 10;
    const PEERS: usize = 100;
    let ca = TestCa::new("public CA");
    let builder = Station::builder().connections_per_ip(4 * RESOURCES * PEERS);
    let station = TlsStation::start(&ca, &ca.server_leaf(1), builder).await;

    // Ten resources with a snapshot each, a hundred peers on each, alternating transports.
    let mut rooms = Vec::new();
    for r in 0..RESOURCES {
        let (id, me) = create(&station, Transport::ALL[r % 2]).await;
        let snapshot = random_bytes(64);
        let mut seeder = joined_empty(&station, Transport::Ws, &id, &me).await;
        seeder
            .send(Code::SubmitSnapshot, snapshot.clone())
            .await
            .unwrap();
        seeder
            .send(Code::SubmitRequest, random_bytes(4))
            .await
            .unwrap();
        expect_shown(&mut seeder, &snapshot).await;
        let mut peers = vec![seeder];
        for p in 1..PEERS {
            let t = Transport::ALL[p % 2];
            let peer = joined(&station, t, &id, &me, &snapshot).await;
            assert_eq!(serial_of(&peer.peer_certificate().unwrap()), 1);
            peers.push(peer);
        }
        rooms.push(peers);
    }

    // Deltas reach every peer now, and again after each of two renewals.
    deltas_reach_everyone(&mut rooms).await;
    for serial in [2, 3] {
        write_pair(station.secret.path(), &ca.server_leaf(serial));
        station.until_serving(serial).await;
        deltas_reach_everyone(&mut rooms).await;
    }
    for peer in rooms.iter().flatten() {
        assert_eq!(peer.closed(), None, "a live connection was dropped");
        assert_eq!(serial_of(&peer.peer_certificate().unwrap()), 1);
    }
    let log = station.station.stderr_log();
    assert_eq!(log.matches("TLS certificate reloaded").count(), 2, "{log}");
}

/// A verified peer of a resource without a snapshot yet (nothing is offered).
async fn joined_empty(station: &TlsStation, t: Transport, id: &ResourceId, me: &Identity) -> Conn {
    let mut conn = station.connect(t, id).await;
    verify(&mut conn, id, me).await;
    conn
}

/// Skips older offers until `snapshot` is shown back (the write is durable).
async fn expect_shown(conn: &mut Conn, snapshot: &[u8]) {
    loop {
        match conn.recv().await {
            Event::Frame(frame)
                if matches!(frame.code(), Code::OfferSnapshot | Code::ForwardResponse)
                    && frame.payload()[..] == snapshot[..] =>
            {
                return;
            }
            Event::Frame(frame) if frame.code() == Code::OfferSnapshot => {}
            other => panic!("waiting for the snapshot: {other:?}"),
        }
    }
}

/// In every room the first peer sends a delta and every other peer receives it.
async fn deltas_reach_everyone(rooms: &mut [Vec<Conn>]) {
    for peers in rooms.iter_mut() {
        let delta = random_bytes(32);
        peers[0]
            .send(Code::SubmitDelta, delta.clone())
            .await
            .unwrap();
        for peer in &mut peers[1..] {
            peer.expect_payload(Code::ForwardDelta, &delta).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replacement_files_are_refused_and_the_old_certificate_keeps_serving() {
    let ca = TestCa::new("public CA");
    let station = TlsStation::start(&ca, &ca.server_leaf(1), Station::builder()).await;
    let other = ca.server_leaf(7);
    let expired = ca.expired_leaf(&["localhost"], 8);
    let current_key = ca.server_leaf(9).key_pem;
    let bad: [(&str, Vec<u8>, Vec<u8>); 4] = [
        (
            "garbage",
            b"not a certificate".to_vec(),
            b"not a key".to_vec(),
        ),
        (
            "a key of another certificate",
            other.chain_pem().into_bytes(),
            current_key.into_bytes(),
        ),
        (
            "an expired certificate",
            expired.chain_pem().into_bytes(),
            expired.key_pem.clone().into_bytes(),
        ),
        (
            "a truncated certificate",
            other.chain_pem().as_bytes()[..200].to_vec(),
            other.key_pem.clone().into_bytes(),
        ),
    ];
    for (n, (what, cert, key)) in bad.into_iter().enumerate() {
        write_secret(station.secret.path(), &cert, &key).unwrap();
        station.until_refused(n + 1).await;
        assert_eq!(station.served_serial().await, 1, "after {what}");
    }
    // A good pair after the bad ones is taken.
    write_pair(station.secret.path(), &ca.server_leaf(2));
    station.until_serving(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_does_not_start_with_a_certificate_it_would_refuse() {
    let ca = TestCa::new("public CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &ca.expired_leaf(&["localhost"], 3));
    let (status, stderr) = Station::builder()
        .flag("tls-cert", cert.display())
        .flag("tls-key", key.display())
        .start_failure()
        .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not valid now"), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

/// Pods whose internal port requires mutual TLS with `site`'s certificates, each pod with a
/// leaf of its own (names do not matter between pods: the chain does).
async fn pods_with_mutual_tls(site: &TestCa, dir: &std::path::Path) -> Pods {
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, site.pem()).unwrap();
    let files: Vec<(PathBuf, PathBuf)> = (0..2u64)
        .map(|i| {
            let pod_dir = dir.join(format!("pod-{i}"));
            std::fs::create_dir_all(&pod_dir).unwrap();
            write_pair(&pod_dir, &site.pod_leaf(&["pod.zbase.internal"], 100 + i))
        })
        .collect();
    Pods::start_each(2, move |i, _| {
        let (cert, key) = &files[i];
        Station::builder()
            .flag("internal-tls-cert", cert.display())
            .flag("internal-tls-key", key.display())
            .flag("internal-ca", ca_file.display())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_port_admits_only_pods_of_the_site_ca() {
    let site = TestCa::new("site CA");
    let dir = tempfile::tempdir().unwrap();
    let mut pods = pods_with_mutual_tls(&site, dir.path()).await;

    // Sessions relayed between the two pods (over mutual TLS) share one peer set.
    let (id, me) = zbase_tests::client::create_resource(pods.pod(0).addr(), Transport::Ws).await;
    let mut a = zbase_tests::client::join(pods.pod(0).addr(), Transport::Ws, &id, &me).await;
    let mut b = zbase_tests::client::join(pods.pod(1).addr(), Transport::Grpc, &id, &me).await;
    zbase_tests::client::sync_fresh(&mut b, &mut a).await;
    zbase_tests::client::sync(&mut a, &mut b).await;

    let internal = pods.internal_addr(0);
    let pod = site.pod_leaf(&["pod.zbase.internal"], 200);
    assert!(
        h2_accepted(internal, &site, Some(&pod)).await,
        "a pod of the site was refused"
    );
    let stranger = TestCa::new("another site");
    let refused = [
        ("no certificate", None),
        (
            "a certificate of another CA",
            Some(stranger.pod_leaf(&["pod.zbase.internal"], 201)),
        ),
        (
            "an expired certificate",
            Some(site.expired_pod_leaf(&["pod.zbase.internal"], 202)),
        ),
    ];
    for (what, leaf) in refused {
        assert!(
            !h2_accepted(internal, &site, leaf.as_ref()).await,
            "the internal port admitted a client with {what}"
        );
    }
}

/// Whether the internal port at `addr` keeps a TLS connection presenting `leaf` (if any) and
/// answers an HTTP/2 preface with its SETTINGS: mutual TLS refusals arrive after the
/// client's side of the handshake, so only a read tells.
async fn h2_accepted(addr: SocketAddr, ca: &TestCa, leaf: Option<&Leaf>) -> bool {
    let pem = leaf.map(|leaf| (leaf.chain_pem(), leaf.key_pem.clone()));
    let config = tls_client_config(
        &ca.pem(),
        &[b"h2"],
        pem.as_ref()
            .map(|(cert, key)| (cert.as_str(), key.as_str())),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The pods' leaves are all for this name; the pods themselves do not check it.
    let name = rustls::pki_types::ServerName::try_from("pod.zbase.internal").unwrap();
    let Ok(mut stream) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    if stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .is_err()
    {
        return false;
    }
    let mut header = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header)).await {
        // A SETTINGS frame (type 4) from the server.
        Ok(Ok(_)) => header[3] == 4,
        _ => false,
    }
}

/// Runs `make demo`'s client with `args`; its success and what it printed.
fn quickstart(args: &[&str]) -> (bool, String) {
    let bin = zbase_tests::station::workspace_bin(
        "examples/quickstart",
        "ZBASE_QUICKSTART_BIN",
        "zbase-tests --examples",
    );
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_demo_client_speaks_wss_with_a_given_ca_and_refuses_another() {
    let ca = TestCa::new("demo CA");
    let station = TlsStation::start(
        &ca,
        &ca.server_leaf_for(&["localhost"], 1),
        StationBuilder::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("wss://{}", station.addr());
    let ca_arg = ca_file.to_str().unwrap();

    let (ok, out) = quickstart(&[&url, "--ca", ca_arg, "--server-name", "localhost"]);
    assert!(ok && out.contains("done:"), "{out}");

    // The certificate names localhost, not the address: by default the host is checked.
    let (ok, out) = quickstart(&[&url, "--ca", ca_arg]);
    assert!(!ok && out.contains("check --ca and --server-name"), "{out}");

    let stranger = dir.path().join("other.pem");
    std::fs::write(&stranger, TestCa::new("another CA").pem()).unwrap();
    let (ok, out) = quickstart(&[
        &url,
        "--ca",
        stranger.to_str().unwrap(),
        "--server-name",
        "localhost",
    ]);
    assert!(!ok && out.contains("TLS with"), "{out}");

    let (ok, out) = quickstart(&[&url]);
    assert!(!ok && out.contains("wss:// needs --ca FILE"), "{out}");
}
