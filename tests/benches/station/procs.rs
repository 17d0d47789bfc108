//! The processes under test: the real release station and the bare baseline servers (this same
//! bench binary, re-executed), each alone in its own process with its own tokio runtime, so
//! the client load generator never shares a heap or a scheduler with the server it measures
//! and each server's RSS is its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::bare as bare_server;
use crate::tls;

/// A server child process on 127.0.0.1:PORT, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id, for /proc.
    pub pid: u32,
}

/// `$ZBASE_STATION_BIN`, else the workspace's release build (`make bench` builds it first).
pub fn station_bin() -> PathBuf {
    std::env::var_os("ZBASE_STATION_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/zbase-station")
        })
}

/// Starts `zbase-station serve` on port 0 with its store in `data_dir` and `flags` added.
pub async fn station(data_dir: &Path, flags: &[(&str, String)]) -> anyhow::Result<Server> {
    let bin = station_bin();
    if !bin.is_file() {
        bail!(
            "{} does not exist: run `cargo build --release -p zbase-basestation` (make bench does)",
            bin.display()
        );
    }
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::File::create(data_dir.with_extension("stderr.log"))?;
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir);
    for (flag, value) in flags {
        command.arg(format!("--{flag}")).arg(value);
    }
    command.stderr(Stdio::from(log));
    spawn(command, "zbase-station listening on ").await
}

/// Starts the bare tokio-tungstenite broadcast server in a child process.
pub async fn bare() -> anyhow::Result<Server> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(bare_server::ROLE_ENV, "1")
        .stderr(Stdio::inherit());
    spawn(command, bare_server::LISTENING_PREFIX).await
}

/// Starts the bare tokio-rustls server (figure 10's baseline) in a child process, serving the
/// pair `certs` names.
pub async fn bare_tls(certs: &tls::Certs) -> anyhow::Result<Server> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(tls::ROLE_ENV, "1")
        .env(tls::CERT_ENV, &certs.cert)
        .env(tls::KEY_ENV, &certs.key)
        .stderr(Stdio::inherit());
    spawn(command, tls::LISTENING_PREFIX).await
}

async fn spawn(mut command: Command, prefix: &str) -> anyhow::Result<Server> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().context("spawn a server process")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the server did not print its address within 30 s")??
        .context("the server exited before it listened")?;
    let addr: SocketAddr = line
        .strip_prefix(prefix)
        .with_context(|| format!("unexpected first stdout line {line:?}"))?
        .trim()
        .parse()?;
    let pid = child.id().context("the server has no pid")?;
    // Keep reading so a chatty child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server { child, addr, pid })
}

impl Server {
    /// The process's resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line in /proc/PID/status")
    }

    /// Descriptors the process holds now (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count())
    }

    /// CPU time (user + system) the process has used so far, from /proc/PID/stat.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
            + fields.get(12).context("stime")?.parse::<u64>()?;
        // CLK_TCK is 100 on every Linux this runs on.
        Ok(ticks as f64 / 100.0)
    }

    /// The station's Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.addr);
        Ok(reqwest::get(&url).await?.error_for_status()?.text().await?)
    }

    /// Sum of every sample of the station metric `name` (all label sets), 0 if absent.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(metric_sum(&text, name))
    }

    /// Waits until the station's `zbase_verified_peers` gauge reaches `count`: a verified
    /// handshake has no success frame, so this is how the bench knows every peer is in.
    pub async fn await_verified(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let verified = self.metric("zbase_verified_peers").await?;
            if verified >= count as f64 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("only {verified} of {count} peers verified within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process and waits for it, so its sockets and memory are gone before the next.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Sum of the samples of `name` in Prometheus text (`name 3` or `name{labels} 3`).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Raises this process's open-file soft limit to its hard limit before any server starts, so
/// the children (which inherit it) and the client side can hold tens of thousands of
/// sockets. Returns the limit now in force.
pub fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}
