//! Sites in network namespaces of their own, as `../shared/design/COMPONENTS.md` describes:
//! each site's namespace has a link to the test's (where the clients are) and a link to every
//! other site's, so a partition between sites is one `ip link set ... down` while each site's
//! own clients still reach it. The kernel here has no netem, so latency between sites comes from
//! [`DelayProxy`], a TCP proxy inside the replica's namespace that holds each chunk for a fixed
//! time. Everything is removed when the [`Net`] is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Namespaces for `n` sites and the links between them.
pub struct Net {
    id: String,
    block: u8,
    sites: usize,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Net {
    /// `n` (at most 9) site namespaces, each linked to this one and to every other.
    pub fn create(n: usize) -> Net {
        assert!(n <= 9, "at most 9 sites");
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let id = format!("{:04x}", rand::random::<u16>());
        // A 10.B.0.0/16 block per net that no address here uses yet (other tests, other test
        // processes, or a namespace the kernel has not finished tearing down).
        let taken = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-br", "addr"])
                .output()
                .expect("run ip")
                .stdout,
        )
        .into_owned();
        let block = (0..150u8)
            .map(|k| 100 + (NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(k) % 150))
            .find(|block| !taken.contains(&format!(" 10.{block}.")))
            .expect("a free 10.B.0.0/16 block");
        let net = Net {
            id,
            block,
            sites: n,
        };
        for site in 0..n {
            let ns = net.namespace(site);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // The clients' link: this namespace's end .1, the site's end .2, in 10.B.site.0/30.
            let (outer, inner) = (format!("zr{}{site}", net.id), format!("zs{}{site}", net.id));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&[
                "addr",
                "add",
                &format!("10.{}.{site}.1/30", net.block),
                "dev",
                &outer,
            ]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{}.{site}.2/30", net.block),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
        }
        for a in 0..n {
            for b in a + 1..n {
                let (left, right) = (net.link_name(a, b), net.link_name(b, a));
                ip(&["link", "add", &left, "type", "veth", "peer", "name", &right]);
                ip(&["link", "set", &left, "netns", &net.namespace(a)]);
                ip(&["link", "set", &right, "netns", &net.namespace(b)]);
                let subnet = 100 + a * 10 + b;
                ip(&[
                    "-n",
                    &net.namespace(a),
                    "addr",
                    "add",
                    &format!("10.{}.{subnet}.1/30", net.block),
                    "dev",
                    &left,
                ]);
                ip(&[
                    "-n",
                    &net.namespace(b),
                    "addr",
                    "add",
                    &format!("10.{}.{subnet}.2/30", net.block),
                    "dev",
                    &right,
                ]);
                ip(&["-n", &net.namespace(a), "link", "set", &left, "up"]);
                ip(&["-n", &net.namespace(b), "link", "set", &right, "up"]);
            }
        }
        net
    }

    /// The namespace of site `site`.
    pub fn namespace(&self, site: usize) -> String {
        format!("zbase-{}-{site}", self.id)
    }

    fn link_name(&self, from: usize, to: usize) -> String {
        format!("zp{}{from}{to}", self.id)
    }

    /// Where this namespace's clients reach site `site`.
    pub fn client_ip(&self, site: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.block, site as u8, 2))
    }

    /// Site `site`'s address on its link to site `other`.
    pub fn site_ip(&self, site: usize, other: usize) -> IpAddr {
        let (a, b) = (site.min(other), site.max(other));
        let host = if site == a { 1 } else { 2 };
        IpAddr::V4(Ipv4Addr::new(
            10,
            self.block,
            (100 + a * 10 + b) as u8,
            host,
        ))
    }

    /// Takes the link between sites `a` and `b` down (a partition) or up again.
    pub fn set_link(&self, a: usize, b: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.namespace(a),
            "link",
            "set",
            &self.link_name(a, b),
            state,
        ]);
        ip(&[
            "-n",
            &self.namespace(b),
            "link",
            "set",
            &self.link_name(b, a),
            state,
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for site in 0..self.sites {
            // The namespace may outlive its name for a while (the kernel tears it down later),
            // so the clients' veth is deleted here, which deletes its peer too.
            let _ = Command::new("ip")
                .args(["link", "del", &format!("zr{}{site}", self.id)])
                .output();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(site)])
                .output();
        }
    }
}

/// A TCP proxy inside a namespace that delivers every chunk `delay` after it was read, both
/// ways: latency without a throughput cap (chunks are not sent one delay apart).
pub struct DelayProxy {
    /// Where it listens, inside its namespace.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DelayProxy {
    /// Starts the proxy on 127.0.0.1 in `namespace` (this process's own with `None`), towards
    /// `target`.
    pub fn start(namespace: Option<&str>, target: SocketAddr, delay: Duration) -> DelayProxy {
        let path = namespace.map(|namespace| format!("/var/run/netns/{namespace}"));
        let (ready, listening) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            // Sockets belong to the namespace of the thread that creates them.
            if let Some(path) = path {
                let file = std::fs::File::open(&path).expect("open the namespace");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the namespace");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the proxy");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready.send(listener.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            tokio::spawn(carry(client_read, server_write, delay));
                            carry(server_read, client_write, delay).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        let addr = listening
            .recv_timeout(Duration::from_secs(10))
            .expect("the delay proxy listens");
        DelayProxy {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buffer[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(writer, reader);
}
