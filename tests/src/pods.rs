//! Several station processes ("pods") on one PostgreSQL database, behind HAProxy in TCP mode
//! with round robin: the virtual IP a site's clients connect to.
//!
//! Each pod listens on its own loopback address (127.X.Y.10, .11, ..., in a /24 of the
//! deployment's own) on a port fixed for its lifetime, so HAProxy's configuration stays right across restarts; its internal port is
//! on the same address. HAProxy health-checks `/readyz`, retries a refused connection on
//! another pod, and is stopped with the deployment. The database is fresh per deployment on
//! the test process's throwaway PostgreSQL cluster (see [`crate::postgres`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::postgres;
use crate::station::{Station, StationBuilder};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

/// The membership lease the pods run with: short, so a killed pod is detected quickly.
pub const LEASE: Duration = Duration::from_secs(2);
/// How long a deployment may take to come up (every pod joined, HAProxy sees each).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

const HAPROXY_INSTALL: &str = "the multi-pod tests need HAProxy as the virtual IP: install it \
                               with `apt-get install haproxy` (.ci/run does), or set \
                               ZBASE_HAPROXY to its path";

/// A running set of pods and the HAProxy in front of them.
pub struct Pods {
    pods: Vec<Station>,
    listen: Vec<SocketAddr>,
    internal: Vec<SocketAddr>,
    vip: SocketAddr,
    url: String,
    haproxy: Child,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods")
            .field("vip", &self.vip)
            .field("listen", &self.listen)
            .finish()
    }
}

fn haproxy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ZBASE_HAPROXY") {
        return PathBuf::from(path);
    }
    for candidate in [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ] {
        if std::path::Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    panic!("{HAPROXY_INSTALL}");
}

/// `N` distinct ports free on `ip` just now (the kernel's picks, held together so they
/// differ), for a pod to keep across restarts.
pub fn free_ports<const N: usize>(ip: IpAddr) -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind((ip, 0)).expect("pick a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("a bound port").port())
}

/// A loopback network of this deployment's own, `127.X.Y.0/24`: its pods and virtual IP
/// take fixed ports, and nothing else in the test process binds these addresses, so no
/// other test's listener can take a port between picking it and a pod's restart.
pub fn private_net() -> [u8; 3] {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // A random second octet keeps test processes running side by side apart too.
    let salt = 1 + (rand::random::<u8>() % 254);
    let [high, low] = n.to_be_bytes();
    [salt, high.wrapping_add(1), low]
}

/// Host `host` of the private loopback network `net`.
pub fn ip_in(net: [u8; 3], host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], host))
}

impl Pods {
    /// `n` pods with default settings on a fresh database, behind a fresh HAProxy.
    pub async fn start(n: usize) -> Pods {
        Pods::start_with(n, Station::builder()).await
    }

    /// `n` pods each started from `builder` (limits and other flags), plus the cluster flags.
    pub async fn start_with(n: usize, builder: StationBuilder) -> Pods {
        Pods::start_each(n, |_, _| builder.clone()).await
    }

    /// `n` pods, pod `i` started from `each(i, its address)` plus the cluster flags: for
    /// flags that differ per pod, such as each pod's own certificate.
    pub async fn start_each(n: usize, each: impl Fn(usize, IpAddr) -> StationBuilder) -> Pods {
        let url = postgres::fresh_database().await;
        let dir = tempfile::Builder::new()
            .prefix("zbase-pods-")
            .tempdir()
            .expect("create the deployment's folder");
        let net = private_net();
        let ports: Vec<(IpAddr, [u16; 2])> = (0..n)
            .map(|i| ip_in(net, 10 + u8::try_from(i).unwrap()))
            .map(|ip| (ip, free_ports::<2>(ip)))
            .collect();
        let listen: Vec<SocketAddr> = ports
            .iter()
            .map(|(ip, [public, _])| SocketAddr::new(*ip, *public))
            .collect();
        let internal: Vec<SocketAddr> = ports
            .iter()
            .map(|(ip, [_, internal])| SocketAddr::new(*ip, *internal))
            .collect();
        let mut pods = Vec::with_capacity(n);
        for (i, (ip, [public, internal])) in ports.iter().enumerate() {
            let pod = each(i, *ip)
                .flag("store", &url)
                .flag("listen", SocketAddr::new(*ip, *public))
                .flag("internal-listen", SocketAddr::new(*ip, *internal))
                .flag("pod-id", format!("pod-{i}"))
                .flag("lease", format!("{}ms", LEASE.as_millis()))
                .start_process()
                .await;
            pods.push(pod);
        }
        let vip_ip = ip_in(net, 9);
        let [vip_port] = free_ports::<1>(vip_ip);
        let vip = SocketAddr::new(vip_ip, vip_port);
        let haproxy = start_haproxy(&dir, vip, &listen).await;
        let deployment = Pods {
            pods,
            listen,
            internal,
            vip,
            url,
            haproxy,
            dir,
        };
        deployment.settle().await;
        deployment
    }

    /// The virtual IP (HAProxy's frontend).
    pub fn vip(&self) -> SocketAddr {
        self.vip
    }

    /// Pod `index`'s internal port, where other pods relay sessions to it.
    pub fn internal_addr(&self, index: usize) -> SocketAddr {
        self.internal[index]
    }

    /// The database URL every pod shares.
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// How many pods the deployment has (running or not).
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True for a deployment without pods (never built by [`Pods::start`]).
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Pod `index`, to address it directly or stop and restart it.
    pub fn pod(&mut self, index: usize) -> &mut Station {
        &mut self.pods[index]
    }

    /// Every pod's stderr, each headed by its name.
    pub fn stderr_logs(&self) -> String {
        self.pods
            .iter()
            .enumerate()
            .map(|(i, pod)| format!("----- pod-{i} -----\n{}", pod.stderr_log()))
            .collect()
    }

    /// SIGTERM to every pod, then HAProxy; returns each pod's exit status.
    pub async fn terminate(&mut self) -> Vec<std::process::ExitStatus> {
        let mut statuses = Vec::new();
        for pod in &mut self.pods {
            if pod.pid().is_some() {
                statuses.push(pod.terminate().await);
            }
        }
        let _ = self.haproxy.start_kill();
        let _ = self.haproxy.wait().await;
        statuses
    }

    /// SIGKILL to every running pod; HAProxy stays, so the virtual IP keeps its address.
    pub async fn kill_all(&mut self) {
        for pod in &mut self.pods {
            if pod.pid().is_some() {
                pod.kill().await;
            }
        }
    }

    /// Starts every stopped pod again with its flags and address, and waits until they settle.
    pub async fn restart_stopped(&mut self) {
        for pod in &mut self.pods {
            if pod.pid().is_none() {
                pod.restart().await;
            }
        }
        self.settle().await;
    }

    /// Waits until every running pod counts `running` members and HAProxy sees each up.
    pub async fn settle(&self) {
        let running: Vec<&Station> = self.pods.iter().filter(|p| p.pid().is_some()).collect();
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut members = Vec::new();
            for pod in &running {
                members.push(metric(pod.addr(), "zbase_cluster_members").await);
            }
            let up = self.servers_up().await;
            if members.iter().all(|m| *m == Some(running.len() as f64)) && up == running.len() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pods did not settle within {SETTLE_TIMEOUT:?}: members {members:?}, {up} up in HAProxy\n{}",
                self.stderr_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many pods HAProxy currently considers up.
    pub async fn servers_up(&self) -> usize {
        let socket = self.dir.path().join("admin.sock");
        let Ok(mut stream) = tokio::net::UnixStream::connect(&socket).await else {
            return 0;
        };
        if stream.write_all(b"show stat\n").await.is_err() {
            return 0;
        }
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        text.lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|fields| fields.len() > 17 && fields[0] == "pods")
            .filter(|fields| fields[1] != "BACKEND" && fields[1] != "FRONTEND")
            .filter(|fields| fields[17].starts_with("UP"))
            .count()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let _ = self.haproxy.start_kill();
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_logs());
        }
    }
}

async fn start_haproxy(dir: &tempfile::TempDir, vip: SocketAddr, pods: &[SocketAddr]) -> Child {
    let servers: String = pods
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("    server pod-{i} {addr} check\n"))
        .collect();
    let config = format!(
        "global\n\
         \x20   maxconn 4000\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   retries 3\n\
         \x20   option redispatch\n\
         \x20   default-server inter 300ms fastinter 100ms downinter 300ms fall 2 rise 2\n\
         frontend vip\n\
         \x20   bind {vip}\n\
         \x20   default_backend pods\n\
         backend pods\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n\
         {servers}",
        socket = dir.path().join("admin.sock").display(),
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log");
    let mut child = Command::new(haproxy_bin())
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{HAPROXY_INSTALL}: {e}"));
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    while tokio::net::TcpStream::connect(vip).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
            panic!("haproxy exited with {status}:\n{log}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "haproxy did not listen on {vip}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// The value of an unlabelled metric on the station at `addr`, if it answers.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
