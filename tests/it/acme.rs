//! ACME against a real ACME server: Debian's `pebble`, with `pebble-challtestsrv` as its DNS
//! (every name resolves to 127.0.0.1), validating TLS-ALPN-01 by dialling the station's own
//! public port. Nothing is skipped: without pebble the test fails with the install command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use zbase_tests::station::Station;
use zbase_tests::tls::{TestCa, tls_client_config};

const DOMAIN: &str = "zbase.test";
const INSTALL: &str =
    "pebble and pebble-challtestsrv are needed: apt-get install pebble (.ci/run does)";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn bin(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(path.is_file(), "{INSTALL}");
    path
}

/// pebble and its DNS, killed on drop.
struct Pebble {
    _dns: Child,
    _pebble: Child,
    /// pebble's listener CA: what the station trusts for the directory.
    listener_ca: PathBuf,
    directory: String,
    management: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts both, with TLS-ALPN-01 validation dialling `tls_port`.
    async fn start(tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("pebble listener CA");
        let leaf = ca.server_leaf(1);
        std::fs::write(dir.path().join("cert.pem"), leaf.chain_pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
        let listener_ca = dir.path().join("ca.pem");
        std::fs::write(&listener_ca, ca.pem()).unwrap();
        let (api, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let dns_child = Command::new(bin("pebble-challtestsrv"))
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(INSTALL);
        let pebble_child = Command::new(bin("pebble"))
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::fs::File::create(dir.path().join("pebble.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(INSTALL);
        let pebble = Pebble {
            _dns: dns_child,
            _pebble: pebble_child,
            listener_ca,
            directory: format!("https://localhost:{api}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            _dir: dir,
        };
        // Up when the management port serves its root.
        for _ in 0..100 {
            if pebble.root().await.is_ok() {
                return pebble;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let error = pebble.root().await.unwrap_err();
        panic!("pebble did not come up within 10 s: {error:#}");
    }

    /// The root pebble issues under (it changes with every pebble start), PEM.
    async fn root(&self) -> anyhow::Result<String> {
        let ca = std::fs::read_to_string(&self.listener_ca)?;
        let config = tls_client_config(&ca, &[b"http/1.1"], None)?;
        let tcp = tokio::net::TcpStream::connect(self.management).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        // pebble closes without close_notify; what arrived is the whole response.
        let _ = tls.read_to_end(&mut response).await;
        let response = String::from_utf8(response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no HTTP body"))?;
        anyhow::ensure!(head.split_whitespace().nth(1) == Some("200"), "{head}");
        Ok(body.to_owned())
    }
}

/// A certificate's serial, hex (pebble's serials are wider than 64 bits).
fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

/// The leaf served to a client that trusts only pebble's `root` and asks for `DOMAIN`,
/// or the handshake error (the placeholder, before issuance, fails verification).
async fn served(addr: SocketAddr, root: &str) -> anyhow::Result<Vec<u8>> {
    let config: Arc<rustls::ClientConfig> = tls_client_config(root, &[b"h2"], None)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (_, session) = tls.get_ref();
    Ok(session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| anyhow::anyhow!("no certificate"))?
        .to_vec())
}

/// Waits (at most 60 s) until the station serves a pebble-issued certificate other than
/// `not` (by serial) and returns it.
async fn wait_issued(station: &Station, root: &str, not: Option<String>) -> Vec<u8> {
    let mut last = String::new();
    for _ in 0..240 {
        match served(station.addr(), root).await {
            Ok(leaf) if Some(serial_of(&leaf)) != not => return leaf,
            Ok(_) => last = "the previous certificate is still served".into(),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no new pebble-issued certificate within 60 s; last: {last}");
}

#[tokio::test]
async fn the_station_obtains_and_renews_its_certificate_over_tls_alpn_01() {
    let port = free_port();
    let pebble = Pebble::start(port).await;
    let root = pebble.root().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let station = |renew_before: &str| {
        Station::builder()
            .data_dir(data.path())
            .flag("listen", format!("127.0.0.1:{port}"))
            .flag("acme-directory", &pebble.directory)
            .flag("acme-domain", DOMAIN)
            .flag("acme-email", "ops@zbase.test")
            .flag("acme-ca", pebble.listener_ca.display())
            .flag("acme-renew-before", renew_before)
            .flag("tls-reload-interval", "200ms")
            .start_process()
    };

    let mut first = station("30d").await;
    let leaf = wait_issued(&first, &root, None).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(
        cert.issuer().to_string().contains("Pebble"),
        "issuer {}",
        cert.issuer()
    );
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| name.to_string())
        .collect();
    assert_eq!(names, [format!("DNSName({DOMAIN})")]);
    let acme = data.path().join("acme");
    for file in ["tls.crt", "tls.key", "account.json"] {
        assert!(acme.join(file).is_file(), "{file} not kept");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(acme.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let account = std::fs::read(acme.join("account.json")).unwrap();
    first.terminate().await;

    // A restart with a fresh certificate keeps serving it: nothing is due.
    let mut second = station("30d").await;
    assert_eq!(
        serial_of(&served(second.addr(), &root).await.unwrap()),
        serial_of(&leaf)
    );
    second.terminate().await;

    // A renewal window longer than the certificate's life forces a new order at start.
    let third = station("10000d").await;
    let renewed = wait_issued(&third, &root, Some(serial_of(&leaf))).await;
    assert_ne!(serial_of(&renewed), serial_of(&leaf));
    // The account was reused, not registered again.
    assert_eq!(std::fs::read(acme.join("account.json")).unwrap(), account);
}
