//! Throwaway PostgreSQL servers for tests: one shared per test process, or a dedicated one for
//! a test that stops and restarts its server.
//!
//! Each server is a fresh cluster (Debian's `initdb`/`pg_ctl`) in a temporary folder on a
//! loopback port, run as the `postgres` user when the tests run as root (initdb refuses root).
//! A guardian shell owns it: it stops the server and deletes the folder when the test process
//! exits, however it exits (or, for a dedicated server, when its [`PgCluster`] is dropped).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use sqlx::{Connection as _, PgConnection};

/// Started by the test process, stopped and deleted by a guardian shell when the process
/// exits however it exits: the guardian waits for end-of-file on a pipe only this process
/// holds open, and the kernel closes it on exit, panic and SIGKILL alike. Rust never drops
/// statics, so a `Drop` guard alone would leave the shared server running after `cargo test`.
/// The server may be stopped by [`PgCluster::stop`] when the pipe closes; stopping a stopped
/// server fails harmlessly and the folder is removed all the same.
const GUARDIAN: &str = r#"
    trap '' INT TERM HUP
    T="$1"; PORT="$2"; BIN="$3"; AS="$4"; OPTS="$5"
    run() { if [ -n "$AS" ]; then runuser -u "$AS" -- "$@"; else "$@"; fi; }
    if run "$BIN/initdb" -D "$T/data" -U postgres -A trust --no-sync -E UTF8 \
            --locale=C.UTF-8 >"$T/setup.log" 2>&1 \
       && run "$BIN/pg_ctl" -D "$T/data" -l "$T/server.log" -w -t 60 start -o "$OPTS" \
            >>"$T/setup.log" 2>&1; then
        echo ready
    else
        echo failed
        tail -n 20 "$T/setup.log" "$T/server.log" 2>/dev/null
    fi
    exec >/dev/null 2>&1
    cat >/dev/null
    run "$BIN/pg_ctl" -D "$T/data" -m immediate -w stop
    rm -rf "$T"
"#;

/// What every test needs and nothing durable: tests never survive a crash of the machine, so
/// fsync is off; the conformance suite opens many pools at once.
fn server_options(dir: &Path, port: u16) -> String {
    format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=400",
        dir.display()
    )
}

const INSTALL: &str = "the PostgreSQL tests need a PostgreSQL server: install it with \
                       `apt-get install postgresql` (Debian puts initdb and pg_ctl under \
                       /usr/lib/postgresql/<version>/bin), or set ZBASE_PG_BIN to the \
                       directory holding them";

/// A running throwaway PostgreSQL server that accepts `postgres` without a password.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    /// The guardian's folder: `data/`, the server log and the socket.
    dir: PathBuf,
    /// Where `initdb` and `pg_ctl` are.
    bin: PathBuf,
    /// `postgres` when the tests run as root, since the cluster must belong to that user.
    run_as: Option<&'static str>,
    /// Never written: held open so the guardian sees end-of-file only when we exit or drop.
    _lifeline: ChildStdin,
    _guardian: Child,
}

/// The server shared by every test of this process, started on first use.
///
/// Panics, with how to install PostgreSQL, if no server can be started. It blocks while the
/// server starts (a few seconds, once): from async code, prefer [`fresh_database`].
pub fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(error) => panic!("{INSTALL}\n{error}"),
    }
}

/// The URL of a new, empty database on the shared server ([`cluster`]).
pub async fn fresh_database() -> String {
    let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
    cluster.create_database().await
}

/// A server of the calling test's own, for tests that stop and start it: restarting the
/// shared [`cluster`] would break every other test running in the same process. The server is
/// stopped and deleted when the returned value is dropped or the process exits.
pub async fn dedicated() -> PgCluster {
    match tokio::task::spawn_blocking(start).await.unwrap() {
        Ok(cluster) => cluster,
        Err(error) => panic!("{INSTALL}\n{error}"),
    }
}

impl PgCluster {
    /// The port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/{database}`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database with a random name and returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("test_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connect to the test server on port {}: {e}", self.port));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        self.url(&name)
    }

    /// Stops the server (`pg_ctl -m fast`: clients are disconnected, nothing is lost) and
    /// waits until it is down. Every test using this server sees the outage.
    pub async fn stop(&self) {
        let mut command = self.pg_ctl();
        command.arg("-D").arg(self.dir.join("data"));
        command.args(["-m", "fast", "-w", "stop"]);
        self.run(command, "stop").await;
    }

    /// Starts the stopped server again on the same data and port, and waits until it accepts
    /// connections.
    pub async fn start(&self) {
        let mut command = self.pg_ctl();
        command.arg("-D").arg(self.dir.join("data"));
        command.arg("-l").arg(self.dir.join("server.log"));
        command.args(["-w", "-t", "60", "start", "-o"]);
        command.arg(server_options(&self.dir, self.port));
        self.run(command, "start").await;
    }

    /// `pg_ctl`, run as the cluster's owner.
    fn pg_ctl(&self) -> tokio::process::Command {
        let pg_ctl = self.bin.join("pg_ctl");
        match self.run_as {
            Some(user) => {
                let mut command = tokio::process::Command::new("runuser");
                command.arg("-u").arg(user).arg("--").arg(pg_ctl);
                command
            }
            None => tokio::process::Command::new(pg_ctl),
        }
    }

    /// Runs a `pg_ctl` command to completion; panics with its output and the server log if it
    /// fails.
    async fn run(&self, mut command: tokio::process::Command, what: &str) {
        let output = command
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run pg_ctl {what}: {e}"));
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "pg_ctl {what} failed ({}):\n{}{}\n----- server log -----\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
    }
}

/// The directory of `initdb` and `pg_ctl`.
fn server_binaries() -> Result<PathBuf, String> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("ZBASE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has(&dir) {
            Ok(dir)
        } else {
            Err(format!("ZBASE_PG_BIN={} has no initdb", dir.display()))
        };
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    if let Some(dir) = versions.into_iter().rev().find(|dir| has(dir)) {
        return Ok(dir);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).find(|dir| has(dir)))
        .unwrap_or_default();
    on_path.ok_or_else(|| "no initdb found".to_owned())
}

fn start() -> Result<PgCluster, String> {
    let bin = server_binaries()?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.trim_ascii() == b"0")
        .unwrap_or(false);
    let run_as = root.then_some("postgres");
    let mut last_error = String::new();
    // A port picked free can be taken before the server binds it; a retry picks another.
    for _ in 0..3 {
        let dir = tempfile::Builder::new()
            .prefix("zbase-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        // initdb refuses to run as root, so as root the cluster belongs to `postgres`.
        if root {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status();
            if !chown.is_ok_and(|status| status.success()) {
                return Err("cannot give the cluster folder to the postgres user".into());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut guardian = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg("guardian")
            .arg(&dir)
            .arg(port.to_string())
            .arg(&bin)
            .arg(run_as.unwrap_or_default())
            .arg(server_options(&dir, port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let lifeline = guardian.stdin.take().ok_or("no pipe to the guardian")?;
        let mut out = BufReader::new(guardian.stdout.take().ok_or("no guardian output")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() == "ready" {
            return Ok(PgCluster {
                port,
                dir,
                bin,
                run_as,
                _lifeline: lifeline,
                _guardian: guardian,
            });
        }
        let mut log = String::new();
        drop(lifeline);
        // Ignored: the log is only for the message, and the guardian has exited anyway.
        let _ = out.read_to_string(&mut log);
        let _ = guardian.wait();
        last_error = format!("initdb/pg_ctl from {} failed:\n{log}", bin.display());
    }
    Err(last_error)
}
