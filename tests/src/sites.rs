//! A primary site and a replica site, each a real `zbase-station` process, on a loopback
//! network of their own: the primary serves its replication port on a fixed address, so it
//! can be killed and restarted under its replica, optionally with mutual TLS from a test CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::pods::{free_ports, ip_in, private_net};
use crate::station::{Station, StationBuilder};
use crate::tls::{TestCa, write_pair};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long a station may take to become ready (a replica: its first sync).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Mutual TLS between sites: one CA, a leaf per site, files in a folder of their own.
pub struct SitesTls {
    dir: tempfile::TempDir,
    ca: TestCa,
    next_serial: u64,
}

impl SitesTls {
    /// A fresh sites CA.
    pub fn new() -> SitesTls {
        SitesTls {
            dir: tempfile::tempdir().expect("a folder for the sites' certificates"),
            ca: TestCa::new("zbase sites CA"),
            next_serial: 1,
        }
    }

    /// `builder` with this CA's bundle and a new leaf for one site.
    pub fn site(&mut self, builder: StationBuilder) -> StationBuilder {
        let serial = self.next_serial;
        self.next_serial += 1;
        let leaf = self.ca.pod_leaf(&["localhost"], serial);
        let site = self.dir.path().join(format!("site-{serial}"));
        std::fs::create_dir_all(&site).unwrap();
        let (cert, key) = write_pair(&site, &leaf);
        let ca = self.dir.path().join("sites-ca.pem");
        std::fs::write(&ca, self.ca.pem()).unwrap();
        builder
            .flag("replication-tls-cert", cert.display())
            .flag("replication-tls-key", key.display())
            .flag("replication-ca", ca.display())
    }
}

impl Default for SitesTls {
    fn default() -> Self {
        Self::new()
    }
}

/// A primary and its replica.
pub struct Sites {
    /// The writable primary site.
    pub primary: Station,
    /// The read-only replica following it.
    pub replica: Station,
    /// The primary's replication port.
    pub replication: SocketAddr,
}

impl Sites {
    /// A primary and a replica in plain HTTP on a private loopback network, both ready.
    pub async fn start() -> Sites {
        Sites::start_with(Station::builder(), Station::builder(), None).await
    }

    /// A primary from `primary` and a replica from `replica` (flags added here), with mutual
    /// TLS between them when `tls` is given; returns once both are ready.
    pub async fn start_with(
        primary: StationBuilder,
        replica: StationBuilder,
        tls: Option<&mut SitesTls>,
    ) -> Sites {
        let ip = ip_in(private_net(), 1);
        let [port] = free_ports::<1>(ip);
        let replication = SocketAddr::new(ip, port);
        let primary = primary.flag("replication-listen", replication);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let replica = replica.flag("replica-of", format!("{scheme}://{replication}"));
        let (primary, replica) = match tls {
            Some(tls) => (tls.site(primary), tls.site(replica)),
            None => (primary, replica),
        };
        let primary = primary.start_process().await;
        wait_ready(&primary).await;
        let replica = replica.start_process().await;
        wait_ready(&replica).await;
        Sites {
            primary,
            replica,
            replication,
        }
    }
}

/// Waits until `/readyz` on `station` answers 200.
pub async fn wait_ready(station: &Station) {
    let url = station.http_url("/readyz");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match reqwest::get(&url).await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => last = response.text().await.unwrap_or_default(),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} was not ready within {READY_TIMEOUT:?}: {last}\n{}",
        station.addr(),
        station.stderr_log()
    );
}

/// Waits until `check` holds (polled every 50 ms), at most `within`; panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The folder of a station's SQLite store, for checks on its bytes.
pub fn store_file(station: &Station) -> std::path::PathBuf {
    Path::new(station.data_dir()).join("station.sqlite3")
}

/// `count` replication addresses on a private loopback network, for sites that name each
/// other before they start (and keep their address across restarts).
pub fn replication_addresses(count: usize) -> Vec<SocketAddr> {
    let ip = ip_in(private_net(), 1);
    (0..count)
        .map(|_| SocketAddr::new(ip, free_ports::<1>(ip)[0]))
        .collect()
}

/// Runs `zbase-station <command> --site http://<site> <extra...>`; returns whether it
/// succeeded, its stdout and its stderr.
pub async fn admin(command: &str, site: SocketAddr, extra: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(crate::station::station_bin())
        .arg(command)
        .arg("--site")
        .arg(format!("http://{site}"))
        .args(extra)
        .output()
        .await
        .expect("run zbase-station");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A site's status as `zbase-station status --json` prints it.
pub async fn status(site: SocketAddr) -> serde_json::Value {
    let (ok, out, err) = admin("status", site, &["--json"]).await;
    assert!(ok, "zbase-station status failed: {err}");
    serde_json::from_str(&out).expect("status prints JSON")
}
