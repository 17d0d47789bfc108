//! Starts the real `zbase-station` binary for one test and stops it for real.
//!
//! Each [`Station`] owns a fresh temporary directory (data directory and stderr log) and
//! listens on a port the kernel picked (`--listen 127.0.0.1:0`); the port is read from the one
//! line the binary prints on stdout. The process is SIGKILLed on drop, and if the test is
//! failing its stderr log is printed, so a failure shows what the station said.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a station may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a station may take to exit after SIGTERM or SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

const LISTENING_PREFIX: &str = "zbase-station listening on ";

/// The station binary: `$ZBASE_STATION_BIN`, else the workspace's debug build.
pub fn station_bin() -> PathBuf {
    workspace_bin("zbase-station", "ZBASE_STATION_BIN", "zbase-basestation")
}

/// A binary of the workspace: `$env_var`, else `target/debug/<name>`; fails the test with the
/// command that builds it (package `package`) when it is missing.
pub fn workspace_bin(name: &str, env_var: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debug")
                .join(name)
        });
    assert!(
        path.is_file(),
        "{} does not exist; build it first: cargo build -p {package} (make test does this)",
        path.display()
    );
    path
}

/// Limit flags and environment for a station, then [`StationBuilder::start`].
#[derive(Debug, Default, Clone)]
pub struct StationBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    data_dir: Option<PathBuf>,
    /// The network namespace to run in (`ip netns exec`), if not this one.
    netns: Option<String>,
}

impl StationBuilder {
    /// Adds `--{flag} {value}`, e.g. `.flag("peer-queue-frames", 8)`.
    pub fn flag(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(format!("--{flag}").into());
        self.args.push(value.to_string().into());
        self
    }

    /// Runs on `dir` as `--data-dir` instead of a fresh one, e.g. another station's
    /// [`Station::data_dir`].
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Runs the station in network namespace `name` (see [`crate::netns`]); give it a
    /// `--listen` address of that namespace.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    /// Sets an environment variable for the station process.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.into(), value.to_string().into()));
        self
    }

    /// `--frame-max-bytes`.
    pub fn frame_max_bytes(self, bytes: usize) -> Self {
        self.flag("frame-max-bytes", bytes)
    }

    /// `--handshake-timeout`, given as milliseconds.
    pub fn handshake_timeout(self, timeout: Duration) -> Self {
        self.flag("handshake-timeout", format!("{}ms", timeout.as_millis()))
    }

    /// `--peers-per-resource`.
    pub fn peers_per_resource(self, peers: usize) -> Self {
        self.flag("peers-per-resource", peers)
    }

    /// `--connections-per-ip`.
    pub fn connections_per_ip(self, connections: usize) -> Self {
        self.flag("connections-per-ip", connections)
    }

    /// `--failed-handshakes-per-minute`.
    pub fn failed_handshakes_per_minute(self, failures: usize) -> Self {
        self.flag("failed-handshakes-per-minute", failures)
    }

    /// `--failed-handshake-ban`, given as milliseconds.
    pub fn failed_handshake_ban(self, ban: Duration) -> Self {
        self.flag("failed-handshake-ban", format!("{}ms", ban.as_millis()))
    }

    /// `--peer-queue-frames`.
    pub fn peer_queue_frames(self, frames: usize) -> Self {
        self.flag("peer-queue-frames", frames)
    }

    /// `--pending-request-window`, given as milliseconds.
    pub fn pending_request_window(self, window: Duration) -> Self {
        self.flag(
            "pending-request-window",
            format!("{}ms", window.as_millis()),
        )
    }

    /// Starts the station in a fresh temporary directory and waits until it listens.
    ///
    /// With `ZBASE_TEST_TOPOLOGY=pods` in the environment, "the station" is instead three
    /// pods on a fresh PostgreSQL database behind HAProxy, each started with these flags, and
    /// [`Station::addr`] is the virtual IP: the same tests then judge the deployment from
    /// outside, as a client sees it. With `ZBASE_TEST_TOPOLOGY=restored`, the station starts
    /// on a store restored from a backup (unless the test gave its own data directory).
    pub async fn start(self) -> Station {
        if topology_is_pods() {
            let pods = crate::pods::Pods::start_with(PODS, self.clone()).await;
            let dir = tempfile::Builder::new()
                .prefix("zbase-station-test-")
                .tempdir()
                .expect("create a temporary directory for the station");
            return Station {
                child: None,
                addr: pods.vip(),
                data_dir: dir.path().join("data"),
                log: dir.path().join("station.stderr.log"),
                dir,
                builder: self,
                starts: 1,
                deployment: Some(Box::new(pods)),
            };
        }
        if crate::restored::topology_is_restored() && self.data_dir.is_none() {
            let (dir, data_dir) = self.folders();
            crate::restored::restore_into(&data_dir).await;
            return self.spawn_in(dir, data_dir).await;
        }
        self.start_process().await
    }

    /// Starts one station process, whatever the test topology.
    pub async fn start_process(self) -> Station {
        let (dir, data_dir) = self.folders();
        self.spawn_in(dir, data_dir).await
    }

    /// Starts one station process on `data_dir`, its log and anything else in `dir`.
    async fn spawn_in(self, dir: tempfile::TempDir, data_dir: PathBuf) -> Station {
        let mut station = Station {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            log: dir.path().join("station.stderr.log"),
            dir,
            builder: self,
            starts: 0,
            deployment: None,
        };
        std::fs::create_dir_all(&station.data_dir).expect("create the data directory");
        station.spawn().await;
        station
    }

    /// Runs a station that must fail to start: waits (at most [`START_TIMEOUT`]) for it to
    /// exit and returns its exit status and everything it wrote to stderr. Panics if it
    /// starts listening instead.
    pub async fn start_failure(self) -> (ExitStatus, String) {
        // Held until the process has exited: its data directory may be in it.
        let (_dir, data_dir) = self.folders();
        let output = self
            .command(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(START_TIMEOUT, output)
            .await
            .expect("the station was expected to fail at start, but it is still running")
            .expect("run zbase-station");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !stdout.contains(LISTENING_PREFIX),
            "the station was expected to fail at start, but it listened: {stdout}"
        );
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A fresh temporary folder for one station, and its data directory (in it, unless one
    /// was given).
    fn folders(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("zbase-station-test-")
            .tempdir()
            .expect("create a temporary directory for the station");
        let data_dir = match &self.data_dir {
            Some(data_dir) => data_dir.clone(),
            None => dir.path().join("data"),
        };
        (dir, data_dir)
    }

    /// `zbase-station serve` on 127.0.0.1:0 and `data_dir`, with this builder's flags.
    fn command(&self, data_dir: &Path) -> Command {
        let mut command = match &self.netns {
            Some(name) => {
                // `ip netns exec` enters the namespace and execs the station: same pid.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name]).arg(station_bin());
                command
            }
            None => Command::new(station_bin()),
        };
        command.arg("serve");
        // A pod of a deployment keeps the address it was given, across restarts.
        if !self.args.iter().any(|arg| arg == "--listen") {
            command.arg("--listen").arg("127.0.0.1:0");
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// A running (or stopped, restartable) `zbase-station serve` process.
#[derive(Debug)]
pub struct Station {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    // Kept for its lifetime: the directory is removed when the station is dropped.
    dir: tempfile::TempDir,
    builder: StationBuilder,
    starts: usize,
    /// The pods behind the virtual IP, when the tests run against a deployment.
    deployment: Option<Box<crate::pods::Pods>>,
}

/// Pods in a deployment started by [`StationBuilder::start`] under `ZBASE_TEST_TOPOLOGY=pods`.
const PODS: usize = 3;

/// True when `ZBASE_TEST_TOPOLOGY=pods`: tests run against pods behind a virtual IP.
pub fn topology_is_pods() -> bool {
    std::env::var("ZBASE_TEST_TOPOLOGY").is_ok_and(|topology| topology == "pods")
}

impl Station {
    /// A builder for a station with non-default limits.
    pub fn builder() -> StationBuilder {
        StationBuilder::default()
    }

    /// Starts a station with default limits.
    pub async fn start() -> Station {
        StationBuilder::default().start().await
    }

    /// The address it listens on (changes on [`Station::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `--data-dir` it runs on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The test's temporary directory (data directory and logs live under it).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the station has written to stderr so far, across restarts (every pod's, for
    /// a deployment).
    pub fn stderr_log(&self) -> String {
        if let Some(pods) = &self.deployment {
            return pods.stderr_logs();
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the station is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the station's stderr log");
        writeln!(log, "===== zbase-station start #{} =====", self.starts).expect("write log");
        let mut command = self.builder.command(&self.data_dir);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn zbase-station");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => match line
                .strip_prefix(LISTENING_PREFIX)
                .and_then(|rest| rest.trim().parse::<SocketAddr>().ok())
            {
                Some(addr) => addr,
                None => self.start_failed(
                    &mut child,
                    &format!("its first stdout line was {line:?}, not `{LISTENING_PREFIX}ADDR`"),
                ),
            },
            Ok(Ok(None)) => self.start_failed(&mut child, "stdout closed before it listened"),
            Ok(Err(e)) => self.start_failed(&mut child, &format!("reading its stdout: {e}")),
            Err(_) => self.start_failed(&mut child, "it did not listen within 30 s"),
        };
        assert!(
            (addr.ip().is_loopback() || self.builder.netns.is_some()) && addr.port() != 0,
            "station reported {addr}, expected 127.0.0.1 and a real port"
        );
        // The contract is exactly one stdout line; anything later goes to the log, marked.
        let log_path = self.log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut log) = OpenOptions::new().append(true).open(&log_path) {
                    let _ = writeln!(log, "UNEXPECTED STDOUT LINE: {line}");
                }
            }
        });
        self.addr = addr;
        self.child = Some(child);
    }

    fn start_failed(&self, child: &mut Child, why: &str) -> ! {
        let _ = child.start_kill();
        panic!(
            "zbase-station failed to start: {why}\n----- stderr -----\n{}",
            self.stderr_log()
        );
    }

    fn signal(&self, signal: Signal) {
        assert!(
            self.deployment.is_none(),
            "signals address one process: in a pods deployment, use Pods::pod(i)"
        );
        let pid = self.pid().expect("the station is not running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
        kill(pid, signal).expect("signal the station");
    }

    async fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the station is not running");
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for the station"),
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "zbase-station did not exit within {STOP_TIMEOUT:?}\n----- stderr -----\n{}",
                    self.stderr_log()
                );
            }
        }
    }

    /// The exit status if the process has exited on its own (it is not waited for); `None`
    /// while it runs. Panics if it was never started or was already waited for.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the station is not running");
        child.try_wait().expect("check on the station process")
    }

    /// SIGKILL: no drain, no flush, nothing the process can do about it. Waits for the exit
    /// (of every pod, for a deployment).
    pub async fn kill(&mut self) {
        if let Some(pods) = &mut self.deployment {
            return Box::pin(pods.kill_all()).await;
        }
        self.signal(Signal::SIGKILL);
        let _ = self.wait().await;
    }

    /// Sends SIGTERM without waiting; pair with [`Station::wait_exit`].
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Waits (at most [`STOP_TIMEOUT`]) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.wait().await
    }

    /// SIGTERM, then waits for the drain to finish and returns the exit status (for a
    /// deployment, of every pod in turn: the first failure, else success).
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(pods) = &mut self.deployment {
            let statuses = Box::pin(pods.terminate()).await;
            return statuses
                .iter()
                .find(|status| !status.success())
                .or(statuses.first())
                .copied()
                .expect("a deployment has pods");
        }
        self.sigterm();
        self.wait().await
    }

    /// Starts the binary again on the same data directory with the same flags. The port is
    /// picked afresh, so read [`Station::addr`] again afterwards (a deployment restarts every
    /// stopped pod and keeps its virtual IP).
    pub async fn restart(&mut self) {
        if let Some(pods) = &mut self.deployment {
            return Box::pin(pods.restart_stopped()).await;
        }
        self.spawn().await;
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- zbase-station stderr ({}) -----\n{}\n----- end of zbase-station stderr -----",
                self.log.display(),
                self.stderr_log()
            );
        }
    }
}
