//! Settings in two stages: [`RawSettings`] is what the user wrote (flags, `ZBASE_*`
//! environment variables, an optional YAML file; parsing only), and [`Settings`] is what the
//! station runs with (merged, defaulted, cross-checked). Only `Settings` travels further.
//!
//! Precedence: flag, then environment variable (clap reads both), then the YAML file, then the
//! default. Pure: no file is read here except the one named by `--config`, by the caller.

use crate::acme::AcmeSettings;
use crate::limits::Limits;
use crate::telemetry::LogFormat;
use crate::tls::{PairFiles, TlsFiles};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The smallest frame limit that still carries an 8 KiB configuration payload.
const MIN_FRAME_BYTES: usize = 8 * 1024 + 2;
/// The largest frame limit accepted: frames are held whole in memory.
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// What `serve` accepts, each field optional so that sources can be merged.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSettings {
    /// YAML file with any of these settings as keys (e.g. `frame-max-bytes: 65536`).
    #[arg(long, env = "ZBASE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address of the public port (WebSocket, gRPC, health, metrics). [default: 127.0.0.1:8080]
    #[arg(long, env = "ZBASE_LISTEN", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Directory of the embedded SQLite store. [default: ./data]
    #[arg(long, env = "ZBASE_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Where resources are stored: `sqlite` (a file under --data-dir) or a PostgreSQL URL,
    /// `postgres://user@host:5432/db`, for several pods on one database. [default: sqlite]
    #[arg(long, env = "ZBASE_STORE", value_name = "sqlite|URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,

    /// File whose content (trimmed) is the PostgreSQL password, e.g. a mounted Kubernetes
    /// Secret; it replaces any password in --store.
    #[arg(long, env = "ZBASE_STORE_PASSWORD_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_password_file: Option<PathBuf>,

    /// Log line format. [default: text]
    #[arg(long, env = "ZBASE_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Log filter in RUST_LOG syntax. [default: info]
    #[arg(long, env = "ZBASE_LOG", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// OTLP/gRPC endpoint to export traces to, e.g. http://127.0.0.1:4317. [default: off]
    #[arg(long, env = "ZBASE_OTLP_ENDPOINT", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,

    /// Largest frame accepted, in bytes, header included. [default: 8388608]
    #[arg(long, env = "ZBASE_FRAME_MAX_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_max_bytes: Option<usize>,

    /// Time a client has to answer the handshake. [default: 10s]
    #[arg(long, env = "ZBASE_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<Duration>,

    /// Verified peers per resource. [default: 1024]
    #[arg(long, env = "ZBASE_PEERS_PER_RESOURCE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_per_resource: Option<usize>,

    /// Open connections per client IP. [default: 256]
    #[arg(long, env = "ZBASE_CONNECTIONS_PER_IP", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_per_ip: Option<usize>,

    /// Failed handshakes per client IP within a minute before it is refused. [default: 20]
    #[arg(long, env = "ZBASE_FAILED_HANDSHAKES_PER_MINUTE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_handshakes_per_minute: Option<u32>,

    /// How long a client IP over its failed handshakes is refused. [default: 60s]
    #[arg(long, env = "ZBASE_FAILED_HANDSHAKE_BAN", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_handshake_ban: Option<Duration>,

    /// Frames queued towards one peer before it is disconnected. [default: 1024]
    #[arg(long, env = "ZBASE_PEER_QUEUE_FRAMES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_queue_frames: Option<usize>,

    /// How long a requester waits for the next snapshot as forward-response. [default: 30s]
    #[arg(long, env = "ZBASE_PENDING_REQUEST_WINDOW", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_request_window: Option<Duration>,

    /// How long a resource without peers stays in memory. [default: 30s]
    #[arg(long, env = "ZBASE_RESOURCE_IDLE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_idle: Option<Duration>,

    /// How long SIGTERM waits for connections and writes to finish. [default: 10s]
    #[arg(long, env = "ZBASE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<Duration>,

    /// This pod's name among the pods sharing a PostgreSQL store; unique per pod (a
    /// StatefulSet pod name). [default: $HOSTNAME]
    #[arg(long, env = "ZBASE_POD_ID", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<String>,

    /// Address of the internal port, where other pods relay sessions of resources homed here
    /// (PostgreSQL store only; never expose it publicly). [default: 127.0.0.1:0]
    #[arg(long, env = "ZBASE_INTERNAL_LISTEN", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_listen: Option<SocketAddr>,

    /// Address other pods reach the internal port at, e.g. the pod IP and port.
    /// [default: the bound internal address, when it is not 0.0.0.0]
    #[arg(long, env = "ZBASE_INTERNAL_ADVERTISE", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_advertise: Option<String>,

    /// How long a pod's membership lasts without renewal: a killed pod's resources move to
    /// other pods after about this long. [default: 5s]
    #[arg(long, env = "ZBASE_LEASE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Duration>,

    /// PEM certificate chain (leaf first) for the public port; with --tls-key the port serves
    /// TLS only (ALPN h2 and http/1.1). [default: plain HTTP]
    #[arg(long, env = "ZBASE_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "ZBASE_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// How often the TLS files are checked for a replacement (a renewed Secret). [default: 5s]
    #[arg(long, env = "ZBASE_TLS_RELOAD_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_reload_interval: Option<Duration>,

    /// ACME directory URL (e.g. https://acme-v02.api.letsencrypt.org/directory): the station
    /// obtains and renews the public port's certificate itself, answering TLS-ALPN-01 on the
    /// public port, and keeps it under --data-dir/acme/. Excludes --tls-cert and --tls-key.
    #[arg(long, env = "ZBASE_ACME_DIRECTORY", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_directory: Option<String>,

    /// The domain the ACME certificate is for (the name clients connect to).
    #[arg(long, env = "ZBASE_ACME_DOMAIN", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_domain: Option<String>,

    /// Contact address given to the ACME server for expiry notices. [default: none]
    #[arg(long, env = "ZBASE_ACME_EMAIL", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_email: Option<String>,

    /// PEM root certificate(s) to trust for the ACME directory's HTTPS, for a private ACME
    /// server. [default: the system's roots]
    #[arg(long, env = "ZBASE_ACME_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_ca: Option<PathBuf>,

    /// Renew the ACME certificate when it expires within this long. [default: 30d]
    #[arg(long, env = "ZBASE_ACME_RENEW_BEFORE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_renew_before: Option<Duration>,

    /// PEM certificate this pod presents on the internal port, as server and as client; with
    /// --internal-tls-key and --internal-ca the internal port requires mutual TLS.
    #[arg(long, env = "ZBASE_INTERNAL_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_tls_cert: Option<PathBuf>,

    /// PEM private key of --internal-tls-cert.
    #[arg(long, env = "ZBASE_INTERNAL_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_tls_key: Option<PathBuf>,

    /// PEM bundle of the site CA(s): every pod's internal certificate must chain to one.
    #[arg(long, env = "ZBASE_INTERNAL_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_ca: Option<PathBuf>,

    /// Start as a read-only caching replica of the primary site whose replication port is at
    /// this URL (`https://host:port`; `http://` only on a private network): follow its change
    /// feed into the local SQLite cache, serve verification and snapshots from it, and send
    /// configurations and snapshots to the primary. Read at the first start: a promotion
    /// later is kept with the data. [default: this station starts as the primary]
    #[arg(long, env = "ZBASE_REPLICA_OF", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,

    /// The replication ports of the deployment's other sites, comma-separated: a replica
    /// follows whichever is primary in the latest epoch (so it follows a promoted site by
    /// itself), and a primary watches them and stops accepting writes when one is primary in
    /// a later epoch. [default: only --replica-of]
    #[arg(long, env = "ZBASE_SITES", value_name = "URL,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sites: Option<String>,

    /// Address of the replication port, where replica sites follow this station (mutual TLS
    /// with --replication-tls-cert, --replication-tls-key, --replication-ca). [default: off]
    #[arg(long, env = "ZBASE_REPLICATION_LISTEN", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_listen: Option<SocketAddr>,

    /// PEM certificate this site presents between sites: as the replication port's server,
    /// and as a replica's client certificate.
    #[arg(long, env = "ZBASE_REPLICATION_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_tls_cert: Option<PathBuf>,

    /// PEM private key of --replication-tls-cert.
    #[arg(long, env = "ZBASE_REPLICATION_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_tls_key: Option<PathBuf>,

    /// PEM bundle of the CA(s) of every site of this deployment: the other side's
    /// certificate must chain to one.
    #[arg(long, env = "ZBASE_REPLICATION_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_ca: Option<PathBuf>,
}

/// Why settings are refused. Each message names the setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML file does not parse or has unknown keys.
    #[error(
        "config file {path} is not valid: {source} (keys are the long flags without '--', e.g. 'frame-max-bytes')"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_yaml::Error,
    },
    /// A value is out of its range.
    #[error("setting '{name}' is {value}: {expected}")]
    Range {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
}

/// Which [`Store`](crate::store::Store) backend the station runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded SQLite file under the data directory.
    Sqlite,
    /// A PostgreSQL database, possibly shared with other pods.
    Postgres {
        /// Where to connect; prints without its password.
        url: StoreUrl,
        /// A file holding the password, read when connecting.
        password_file: Option<PathBuf>,
    },
}

/// A database URL that may hold a password: `Debug` and `Display` show it with the password
/// replaced, so it can go into logs and error messages; [`StoreUrl::expose`] gives it whole.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({:?})", self.redacted())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:password@host/...` with the password (up to the last `@` of the authority)
/// replaced; a URL without one comes back unchanged. Also hides `password=` query parameters.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// How this pod takes part in a cluster of pods sharing a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This pod's unique name.
    pub pod_id: String,
    /// Where the internal port listens.
    pub internal_listen: SocketAddr,
    /// Where other pods reach it; `None` means the bound address.
    pub internal_advertise: Option<String>,
    /// The membership lease.
    pub lease: Duration,
    /// Mutual TLS on the internal port, if configured.
    pub internal_tls: Option<TlsFiles>,
}

/// The settings the station runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Address of the public port.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Which backend holds resources.
    pub store: StoreBackend,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// Where traces go, if anywhere.
    pub otlp_endpoint: Option<String>,
    /// Every bound.
    pub limits: Limits,
    /// Membership, used with a PostgreSQL store.
    pub cluster: ClusterSettings,
    /// TLS on the public port; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// How often every TLS port's files are checked for a replacement.
    pub tls_reload_interval: Duration,
    /// The public certificate obtained over ACME; `tls` then names its files.
    pub acme: Option<AcmeSettings>,
    /// Following a primary site, and being followed.
    pub replication: ReplicationSettings,
}

/// How this station takes part in replication between sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// The primary this station starts following as a replica; `None` starts as a primary.
    pub primary: Option<SiteAddress>,
    /// The other sites (`--sites`), without the primary.
    pub sites: Vec<SiteAddress>,
    /// Where the replication port listens, if it is served.
    pub listen: Option<SocketAddr>,
    /// Mutual TLS between sites, if configured.
    pub tls: Option<TlsFiles>,
}

/// Where a site's replication port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteAddress {
    /// `host:port`.
    pub authority: String,
    /// Whether the port speaks (mutual) TLS: `https://` in the URL.
    pub tls: bool,
}

impl SiteAddress {
    /// Parses `https://host[:port]` or `http://host[:port]` (no path).
    pub fn parse(url: &str) -> Result<SiteAddress, &'static str> {
        const EXPECTED: &str = "a URL of the primary's replication port: https://host:port (or http:// on a private network), without a path";
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(EXPECTED);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(EXPECTED);
        }
        let uri: http::uri::Authority = rest.parse().map_err(|_| EXPECTED)?;
        // What follows the host (past an IPv6 literal's brackets) must be a port, if anything.
        let tail = &rest[rest.rfind(']').map_or(0, |end| end + 1)..];
        let port = match tail.rsplit_once(':') {
            Some((_, port)) => port.parse::<u16>().map_err(|_| EXPECTED)?,
            None if tls => 443,
            None => 80,
        };
        Ok(SiteAddress {
            authority: format!("{}:{port}", uri.host()),
            tls,
        })
    }
}

impl RawSettings {
    /// Reads a YAML settings file.
    pub fn from_yaml_file(path: &Path) -> Result<RawSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses YAML settings text (an empty document is no settings).
    pub fn from_yaml(text: &str) -> Result<RawSettings, serde_yaml::Error> {
        // A file of comments only is a null document: no settings, not an error.
        let value: serde_yaml::Value = serde_yaml::from_str(text)?;
        if value.is_null() {
            return Ok(RawSettings::default());
        }
        serde_yaml::from_value(value)
    }

    /// Each setting from `self` where given, else from `fallback`.
    pub fn or(self, fallback: RawSettings) -> RawSettings {
        RawSettings {
            config: self.config.or(fallback.config),
            listen: self.listen.or(fallback.listen),
            data_dir: self.data_dir.or(fallback.data_dir),
            store: self.store.or(fallback.store),
            store_password_file: self.store_password_file.or(fallback.store_password_file),
            log_format: self.log_format.or(fallback.log_format),
            log: self.log.or(fallback.log),
            otlp_endpoint: self.otlp_endpoint.or(fallback.otlp_endpoint),
            frame_max_bytes: self.frame_max_bytes.or(fallback.frame_max_bytes),
            handshake_timeout: self.handshake_timeout.or(fallback.handshake_timeout),
            peers_per_resource: self.peers_per_resource.or(fallback.peers_per_resource),
            connections_per_ip: self.connections_per_ip.or(fallback.connections_per_ip),
            failed_handshakes_per_minute: self
                .failed_handshakes_per_minute
                .or(fallback.failed_handshakes_per_minute),
            failed_handshake_ban: self.failed_handshake_ban.or(fallback.failed_handshake_ban),
            peer_queue_frames: self.peer_queue_frames.or(fallback.peer_queue_frames),
            pending_request_window: self
                .pending_request_window
                .or(fallback.pending_request_window),
            resource_idle: self.resource_idle.or(fallback.resource_idle),
            shutdown_grace: self.shutdown_grace.or(fallback.shutdown_grace),
            pod_id: self.pod_id.or(fallback.pod_id),
            internal_listen: self.internal_listen.or(fallback.internal_listen),
            internal_advertise: self.internal_advertise.or(fallback.internal_advertise),
            lease: self.lease.or(fallback.lease),
            tls_cert: self.tls_cert.or(fallback.tls_cert),
            tls_key: self.tls_key.or(fallback.tls_key),
            tls_reload_interval: self.tls_reload_interval.or(fallback.tls_reload_interval),
            internal_tls_cert: self.internal_tls_cert.or(fallback.internal_tls_cert),
            internal_tls_key: self.internal_tls_key.or(fallback.internal_tls_key),
            internal_ca: self.internal_ca.or(fallback.internal_ca),
            replica_of: self.replica_of.or(fallback.replica_of),
            sites: self.sites.or(fallback.sites),
            replication_listen: self.replication_listen.or(fallback.replication_listen),
            replication_tls_cert: self.replication_tls_cert.or(fallback.replication_tls_cert),
            replication_tls_key: self.replication_tls_key.or(fallback.replication_tls_key),
            replication_ca: self.replication_ca.or(fallback.replication_ca),
            acme_directory: self.acme_directory.or(fallback.acme_directory),
            acme_domain: self.acme_domain.or(fallback.acme_domain),
            acme_email: self.acme_email.or(fallback.acme_email),
            acme_ca: self.acme_ca.or(fallback.acme_ca),
            acme_renew_before: self.acme_renew_before.or(fallback.acme_renew_before),
        }
    }

    /// Applies defaults and checks every range.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let d = Limits::default();
        let limits = Limits {
            frame_max_bytes: range(
                "frame-max-bytes",
                self.frame_max_bytes.unwrap_or(d.frame_max_bytes),
                MIN_FRAME_BYTES..=MAX_FRAME_BYTES,
                "between 8194 (an 8 KiB configuration must fit) and 268435456",
            )?,
            handshake_timeout: positive(
                "handshake-timeout",
                self.handshake_timeout,
                d.handshake_timeout,
            )?,
            peers_per_resource: range(
                "peers-per-resource",
                self.peers_per_resource.unwrap_or(d.peers_per_resource),
                1..=1_000_000,
                "at least 1",
            )?,
            connections_per_ip: range(
                "connections-per-ip",
                self.connections_per_ip.unwrap_or(d.connections_per_ip),
                1..=10_000_000,
                "at least 1",
            )?,
            failed_handshakes_per_minute: range(
                "failed-handshakes-per-minute",
                self.failed_handshakes_per_minute
                    .unwrap_or(d.failed_handshakes_per_minute),
                1..=u32::MAX,
                "at least 1",
            )?,
            failed_handshake_ban: positive(
                "failed-handshake-ban",
                self.failed_handshake_ban,
                d.failed_handshake_ban,
            )?,
            peer_queue_frames: range(
                "peer-queue-frames",
                self.peer_queue_frames.unwrap_or(d.peer_queue_frames),
                1..=1_000_000,
                "at least 1",
            )?,
            pending_request_window: positive(
                "pending-request-window",
                self.pending_request_window,
                d.pending_request_window,
            )?,
            resource_idle: self.resource_idle.unwrap_or(d.resource_idle),
            shutdown_grace: self.shutdown_grace.unwrap_or(d.shutdown_grace),
        };
        let store = match self.store.as_deref().map(str::trim) {
            None | Some("sqlite") => {
                if self.store_password_file.is_some() {
                    return Err(ConfigError::Range {
                        name: "store-password-file",
                        value: "set".into(),
                        expected: "only with --store postgres://...; SQLite has no password",
                    });
                }
                StoreBackend::Sqlite
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreBackend::Postgres {
                    url: StoreUrl(url.to_owned()),
                    password_file: self.store_password_file,
                }
            }
            Some(other) => {
                return Err(ConfigError::Range {
                    name: "store",
                    value: redact(other),
                    expected: "'sqlite' or a PostgreSQL URL such as postgres://user@host:5432/db",
                });
            }
        };
        let lease = self.lease.unwrap_or(Duration::from_secs(5));
        if lease < Duration::from_millis(500) {
            return Err(ConfigError::Range {
                name: "lease",
                value: humantime::format_duration(lease).to_string(),
                expected: "at least 500ms (pods renew five times per lease)",
            });
        }
        let pod_id = self
            .pod_id
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|pod| pod.trim().to_owned())
            .filter(|pod| !pod.is_empty())
            .unwrap_or_else(|| "station".to_owned());
        if pod_id.len() > 253 || pod_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::Range {
                name: "pod-id",
                value: pod_id,
                expected: "up to 253 characters, no spaces (a pod name)",
            });
        }
        let reload_interval = positive(
            "tls-reload-interval",
            self.tls_reload_interval,
            Duration::from_secs(5),
        )?;
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                pair: PairFiles { cert, key },
                ca: None,
            }),
            (cert, _) => {
                return Err(ConfigError::Range {
                    name: if cert.is_some() {
                        "tls-key"
                    } else {
                        "tls-cert"
                    },
                    value: "missing".into(),
                    expected: "--tls-cert and --tls-key go together: give both files",
                });
            }
        };
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let acme = acme(
            self.acme_directory,
            self.acme_domain,
            self.acme_email,
            self.acme_ca,
            self.acme_renew_before,
            &data_dir,
        )?;
        let tls = match (&acme, tls) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Range {
                    name: "acme-directory",
                    value: "set with --tls-cert".into(),
                    expected: "either --acme-directory (the station gets its certificate) or --tls-cert and --tls-key (you provide it), not both",
                });
            }
            (Some(acme), None) => Some(TlsFiles {
                pair: acme.pair(),
                ca: None,
            }),
            (None, tls) => tls,
        };
        let internal_tls = mutual_tls(
            "internal-tls-cert",
            (
                self.internal_tls_cert,
                self.internal_tls_key,
                self.internal_ca,
            ),
            "--internal-tls-cert, --internal-tls-key and --internal-ca go together: give all three",
        )?;
        let replication = ReplicationSettings {
            tls: mutual_tls(
                "replication-tls-cert",
                (
                    self.replication_tls_cert,
                    self.replication_tls_key,
                    self.replication_ca,
                ),
                "--replication-tls-cert, --replication-tls-key and --replication-ca go together: give all three",
            )?,
            listen: self.replication_listen,
            sites: self
                .sites
                .iter()
                .flat_map(|list| list.split(','))
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(|url| {
                    SiteAddress::parse(url).map_err(|expected| ConfigError::Range {
                        name: "sites",
                        value: url.to_owned(),
                        expected,
                    })
                })
                .collect::<Result<_, _>>()?,
            primary: match self.replica_of.filter(|url| !url.is_empty()) {
                None => None,
                Some(url) => {
                    Some(
                        SiteAddress::parse(&url).map_err(|expected| ConfigError::Range {
                            name: "replica-of",
                            value: url.clone(),
                            expected,
                        })?,
                    )
                }
            },
        };
        if let Some(site) = replication
            .primary
            .iter()
            .chain(&replication.sites)
            .find(|site| site.tls && replication.tls.is_none())
        {
            let primary = replication.primary.as_ref() == Some(site);
            return Err(ConfigError::Range {
                name: if primary { "replica-of" } else { "sites" },
                value: site.authority.clone(),
                expected: "an https:// site needs this site's certificate and the sites' CA bundle: give --replication-tls-cert, --replication-tls-key and --replication-ca",
            });
        }
        if let Some(primary) = &replication.primary
            && matches!(store, StoreBackend::Postgres { .. })
        {
            return Err(ConfigError::Range {
                name: "replica-of",
                value: primary.authority.clone(),
                expected: "a replica keeps its cache in the embedded SQLite store: drop --store (a replica site runs one station pod)",
            });
        }
        let cluster = ClusterSettings {
            internal_tls,
            pod_id,
            internal_listen: self
                .internal_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            internal_advertise: self
                .internal_advertise
                .filter(|address| !address.is_empty()),
            lease,
        };
        Ok(Settings {
            tls,
            tls_reload_interval: reload_interval,
            cluster,
            store,
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            acme,
            replication,
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            log: self.log.unwrap_or_else(|| "info".to_string()),
            otlp_endpoint: self.otlp_endpoint.filter(|endpoint| !endpoint.is_empty()),
            limits,
        })
    }
}

/// A mutual-TLS triple (certificate, key, CA bundle): all three or none.
pub fn mutual_tls(
    name: &'static str,
    files: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    expected: &'static str,
) -> Result<Option<TlsFiles>, ConfigError> {
    match files {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
            pair: PairFiles { cert, key },
            ca: Some(ca),
        })),
        _ => Err(ConfigError::Range {
            name,
            value: "incomplete".into(),
            expected,
        }),
    }
}

/// The ACME settings, if `directory` turns ACME on.
fn acme(
    directory: Option<String>,
    domain: Option<String>,
    email: Option<String>,
    ca: Option<PathBuf>,
    renew_before: Option<Duration>,
    data_dir: &Path,
) -> Result<Option<AcmeSettings>, ConfigError> {
    let Some(directory) = directory.filter(|url| !url.trim().is_empty()) else {
        if domain.is_some() || email.is_some() || ca.is_some() || renew_before.is_some() {
            return Err(ConfigError::Range {
                name: "acme-directory",
                value: "missing".into(),
                expected: "the --acme-* settings take effect only with --acme-directory URL; give it, or drop them",
            });
        }
        return Ok(None);
    };
    if !directory.starts_with("https://") {
        return Err(ConfigError::Range {
            name: "acme-directory",
            value: directory,
            expected: "an https:// URL of the ACME server's directory",
        });
    }
    let domain = domain
        .map(|domain| domain.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|domain| !domain.is_empty());
    let Some(domain) = domain else {
        return Err(ConfigError::Range {
            name: "acme-domain",
            value: "missing".into(),
            expected: "the name clients connect to, e.g. --acme-domain relay.example.org",
        });
    };
    if domain.starts_with('*') || rustls::pki_types::ServerName::try_from(domain.as_str()).is_err()
    {
        return Err(ConfigError::Range {
            name: "acme-domain",
            value: domain,
            expected: "one DNS name (no wildcard: TLS-ALPN-01 cannot validate wildcards)",
        });
    }
    Ok(Some(AcmeSettings {
        directory,
        domain,
        email: email.filter(|email| !email.trim().is_empty()),
        ca,
        renew_before: positive(
            "acme-renew-before",
            renew_before,
            Duration::from_secs(30 * 24 * 3600),
        )?,
        dir: data_dir.join("acme"),
    }))
}

fn range<T: PartialOrd + std::fmt::Display>(
    name: &'static str,
    value: T,
    allowed: std::ops::RangeInclusive<T>,
    expected: &'static str,
) -> Result<T, ConfigError> {
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Range {
            name,
            value: value.to_string(),
            expected,
        })
    }
}

fn positive(
    name: &'static str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(value) if value.is_zero() => Err(ConfigError::Range {
            name,
            value: "0s".into(),
            expected: "a duration above zero, such as 500ms or 10s",
        }),
        Some(value) => Ok(value),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_url_is_https_or_http_with_a_host_and_an_optional_port() {
        let parse = |url: &str| SiteAddress::parse(url).map(|a| (a.authority, a.tls));
        assert_eq!(
            parse("https://eu.example.org:7443"),
            Ok(("eu.example.org:7443".into(), true))
        );
        assert_eq!(
            parse("https://eu.example.org/"),
            Ok(("eu.example.org:443".into(), true))
        );
        assert_eq!(
            parse("http://10.0.0.1:7000"),
            Ok(("10.0.0.1:7000".into(), false))
        );
        assert_eq!(parse("http://[::1]:7000"), Ok(("[::1]:7000".into(), false)));
        for bad in [
            "eu.example.org:7443",
            "grpc://eu.example.org",
            "https://",
            "https://eu.example.org/replication",
            "https://user@eu.example.org",
            "https://eu.example.org:notaport",
        ] {
            assert!(SiteAddress::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_replica_needs_sqlite_and_for_https_its_certificate() {
        let replica = |url: &str| RawSettings {
            replica_of: Some(url.into()),
            ..RawSettings::default()
        };
        let on_postgres = RawSettings {
            store: Some("postgres://u@db/zbase".into()),
            ..replica("http://primary:7000")
        };
        let error = on_postgres.resolve().unwrap_err().to_string();
        assert!(error.contains("SQLite"), "{error}");
        let error = replica("https://primary:7443")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(error.contains("--replication-tls-cert"), "{error}");
        let incomplete = RawSettings {
            replication_tls_cert: Some("site.crt".into()),
            ..replica("https://primary:7443")
        };
        let error = incomplete.resolve().unwrap_err().to_string();
        assert!(error.contains("go together"), "{error}");
        let plain = replica("http://primary:7000").resolve().unwrap();
        assert_eq!(
            plain.replication.primary,
            Some(SiteAddress {
                authority: "primary:7000".into(),
                tls: false
            })
        );
    }

    #[test]
    fn s9_defaults_are_the_contracts() {
        let settings = RawSettings::default().resolve().unwrap();
        assert_eq!(settings.limits, Limits::default());
        assert_eq!(settings.limits.frame_max_bytes, 8 * 1024 * 1024);
        assert_eq!(settings.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(settings.limits.peers_per_resource, 1024);
        assert_eq!(settings.limits.connections_per_ip, 256);
        assert_eq!(settings.limits.failed_handshakes_per_minute, 20);
        assert_eq!(settings.limits.peer_queue_frames, 1024);
        assert_eq!(
            settings.limits.pending_request_window,
            Duration::from_secs(30)
        );
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    }

    #[test]
    fn yaml_keys_are_the_flag_names_and_flags_win() {
        let file = RawSettings::from_yaml(
            "frame-max-bytes: 65536\nhandshake-timeout: 500ms\nlisten: 0.0.0.0:9000\n",
        )
        .unwrap();
        let flags = RawSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            ..Default::default()
        };
        let settings = flags.or(file).resolve().unwrap();
        assert_eq!(settings.limits.frame_max_bytes, 65536);
        assert_eq!(
            settings.limits.handshake_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 1)));
    }

    #[test]
    fn unknown_yaml_keys_and_bad_values_are_refused_with_the_setting_named() {
        assert!(RawSettings::from_yaml("frame_max: 1\n").is_err());
        assert!(RawSettings::from_yaml("handshake-timeout: soon\n").is_err());
        assert!(RawSettings::from_yaml("- a\n- b\n").is_err());
        let error = RawSettings {
            frame_max_bytes: Some(10),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(error.to_string().contains("frame-max-bytes"), "{error}");
        let error = RawSettings {
            handshake_timeout: Some(Duration::ZERO),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(error.to_string().contains("handshake-timeout"), "{error}");
        assert!(
            RawSettings {
                peer_queue_frames: Some(0),
                ..Default::default()
            }
            .resolve()
            .is_err()
        );
    }

    #[test]
    fn store_is_sqlite_by_default_and_postgres_by_url() {
        let settings = RawSettings::default().resolve().unwrap();
        assert_eq!(settings.store, StoreBackend::Sqlite);
        let file = RawSettings::from_yaml("store: postgres://zbase@db:5432/zbase\n").unwrap();
        let flags = RawSettings {
            store_password_file: Some(PathBuf::from("/secrets/pw")),
            ..Default::default()
        };
        let StoreBackend::Postgres { url, password_file } = flags.or(file).resolve().unwrap().store
        else {
            panic!("expected PostgreSQL");
        };
        assert_eq!(url.expose(), "postgres://zbase@db:5432/zbase");
        assert_eq!(password_file, Some(PathBuf::from("/secrets/pw")));
        let error = RawSettings {
            store: Some("mysql://root:hunter2@db/x".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("store") && !error.contains("hunter2"),
            "{error}"
        );
        assert!(
            RawSettings {
                store_password_file: Some(PathBuf::from("pw")),
                ..Default::default()
            }
            .resolve()
            .is_err()
        );
    }

    #[test]
    fn store_urls_print_without_their_password() {
        let url =
            StoreUrl("postgres://zbase:s3cr@t@db:5432/zbase?sslmode=require&password=p2".into());
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("s3cr") && !shown.contains("p2"), "{shown}");
            assert!(shown.contains("zbase:***@db:5432/zbase"), "{shown}");
        }
        let plain = StoreUrl("postgres://zbase@db/zbase".into());
        assert_eq!(plain.to_string(), "postgres://zbase@db/zbase");
    }

    #[test]
    fn acme_turns_on_with_a_directory_and_excludes_tls_files() {
        let raw = RawSettings::from_yaml(
            "acme-directory: https://acme.test/dir\nacme-domain: Relay.Example.org\ndata-dir: /d\n",
        )
        .unwrap();
        let settings = raw.clone().resolve().unwrap();
        let acme = settings.acme.unwrap();
        assert_eq!(acme.domain, "relay.example.org");
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 24 * 3600));
        let tls = settings.tls.unwrap();
        assert_eq!(tls.pair.cert, PathBuf::from("/d/acme/tls.crt"));
        assert_eq!(tls.pair.key, PathBuf::from("/d/acme/tls.key"));

        let both = RawSettings {
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            ..raw.clone()
        };
        let error = both.resolve().unwrap_err().to_string();
        assert!(error.contains("not both"), "{error}");
        let no_domain = RawSettings {
            acme_domain: None,
            ..raw.clone()
        };
        assert!(
            no_domain
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("acme-domain")
        );
        let stray = RawSettings {
            acme_domain: Some("x.org".into()),
            ..Default::default()
        };
        assert!(stray.resolve().is_err());
        let plain_http = RawSettings {
            acme_directory: Some("http://acme.test/dir".into()),
            ..raw
        };
        assert!(plain_http.resolve().is_err());
    }

    #[test]
    fn written_settings_read_back_the_same() {
        // The operator writes station configuration files through this type.
        let raw = RawSettings::from_yaml(
            "listen: 0.0.0.0:8080\ndata-dir: /var/lib/zbase\nlog-format: json\n\
             handshake-timeout: 3s\nfrac: 1\n",
        );
        assert!(raw.is_err(), "unknown keys are refused");
        let raw = RawSettings::from_yaml(
            "listen: 0.0.0.0:8080\ndata-dir: /var/lib/zbase\nlog-format: json\n\
             handshake-timeout: 3s\nlease: 2s 500ms\npeers-per-resource: 9\n",
        )
        .unwrap();
        let text = serde_yaml::to_string(&raw).unwrap();
        assert!(
            !text.contains("null"),
            "unset settings are left out: {text}"
        );
        let again = RawSettings::from_yaml(&text).unwrap();
        assert_eq!(again.handshake_timeout, Some(Duration::from_secs(3)));
        assert_eq!(again.lease, Some(Duration::from_millis(2500)));
        assert_eq!(again.peers_per_resource, Some(9));
        assert_eq!(again.log_format, Some(LogFormat::Json));
        assert_eq!(again.listen, raw.listen);
        assert_eq!(again.data_dir, raw.data_dir);
    }

    #[test]
    fn empty_yaml_is_no_settings() {
        assert!(RawSettings::from_yaml("").is_ok());
        assert!(RawSettings::from_yaml("\n# nothing\n").is_ok());
    }
}
