//! The public certificate obtained and renewed over ACME (RFC 8555), validated with
//! TLS-ALPN-01 (RFC 8737) on the public port itself, so no other port or DNS API is needed.
//!
//! The certificate and key are plain files under `--data-dir/acme/`, served through the same
//! reload machinery as operator-provided files: a renewal is new files, noticed on the next
//! poll. Until the first issuance a self-signed placeholder is served. The account's
//! credentials are kept beside them so a restart reuses the account.

mod certs;
mod client;

pub use certs::{Current, due, inspect};

use crate::telemetry::{Metrics, ResultLabel};
use crate::tls::{Challenges, PairFiles};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How the station gets its public certificate over ACME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The ACME server's directory URL.
    pub directory: String,
    /// The one name the certificate is for.
    pub domain: String,
    /// A contact address, if any.
    pub email: Option<String>,
    /// PEM roots to trust for the directory's HTTPS instead of the system's.
    pub ca: Option<PathBuf>,
    /// Renew when the certificate expires within this long.
    pub renew_before: Duration,
    /// Where certificate, key and account live (`DATA_DIR/acme`).
    pub dir: PathBuf,
}

impl AcmeSettings {
    /// The served certificate's files.
    pub fn pair(&self) -> PairFiles {
        PairFiles {
            cert: self.dir.join("tls.crt"),
            key: self.dir.join("tls.key"),
        }
    }

    fn account_file(&self) -> PathBuf {
        self.dir.join("account.json")
    }
}

/// Why obtaining a certificate failed. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// A file under the ACME directory could not be read or written.
    #[error("{path}: {source}; the ACME directory under --data-dir must be writable")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--acme-ca` bundle is unusable.
    #[error("--acme-ca {path}: {reason}; it must hold the ACME server's root(s) in PEM")]
    Ca {
        /// The bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The ACME server refused a request or could not be reached.
    #[error(
        "ACME server: {0}; check --acme-directory is reachable and, for TLS-ALPN-01, that the public port answers on port 443 of --acme-domain"
    )]
    Server(#[from] instant_acme::Error),
    /// A certificate or key could not be made.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The stored account credentials do not parse.
    #[error(
        "{path} is not valid account credentials ({source}); remove it to register a new account"
    )]
    Account {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The order did not go as RFC 8555 says it should.
    #[error("ACME order: {0}")]
    Order(String),
}

/// Creates the ACME directory and, before the first issuance, writes the placeholder, so
/// the public port has something to serve. Blocking; call once before loading TLS.
pub fn prepare(settings: &AcmeSettings) -> Result<(), AcmeError> {
    create_dir(&settings.dir)?;
    let pair = settings.pair();
    if pair.cert.exists() && pair.key.exists() {
        return Ok(());
    }
    let (chain, key) = certs::placeholder(&settings.domain)?;
    write_pair(&pair, &chain, &key)?;
    tracing::info!(domain = %settings.domain, "no ACME certificate yet; serving a self-signed placeholder until one is issued");
    Ok(())
}

/// How often the certificate's expiry is checked.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// First and largest wait after a failed order.
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// Obtains a certificate whenever the current one is due, until `stop`: at start, then every
/// hour; after a failure, again with a doubling wait.
pub async fn maintain(
    settings: AcmeSettings,
    challenges: Challenges,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let current = std::fs::read(settings.pair().cert)
            .ok()
            .and_then(|chain| inspect(&chain));
        let wait = if due(current.as_ref(), SystemTime::now(), settings.renew_before) {
            let outcome = tokio::select! {
                outcome = obtain(&settings, &challenges) => outcome,
                _ = stop.cancelled() => return,
            };
            challenges.remove(&settings.domain);
            let result = if outcome.is_ok() { "issued" } else { "failed" };
            metrics
                .acme_orders
                .get_or_create(&ResultLabel { result })
                .inc();
            match outcome {
                Ok(issued) => {
                    tracing::info!(domain = %settings.domain, serial = %issued.serial, not_after = issued.not_after, "ACME certificate issued; the public port serves it from its next reload");
                    retry = RETRY_FIRST;
                    CHECK_EVERY
                }
                Err(error) => {
                    tracing::error!(domain = %settings.domain, %error, retry_in = ?retry, "ACME order failed; still serving the previous certificate");
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            }
        } else {
            CHECK_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One complete order: account, authorization by TLS-ALPN-01, finalization, files written.
async fn obtain(settings: &AcmeSettings, challenges: &Challenges) -> Result<Current, AcmeError> {
    let account = account(settings).await?;
    let identifiers = [Identifier::Dns(settings.domain.clone())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Order(format!(
                    "authorization is {status:?}, not pending"
                )));
            }
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| AcmeError::Order("the server offers no tls-alpn-01 challenge".into()))?;
        let domain = challenge.identifier().to_string();
        let digest = challenge.key_authorization().digest();
        challenges.insert(&domain, certs::challenge(&domain, digest.as_ref())?);
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(2.0)
        .timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order(format!(
            "order is {status:?} after validation: the ACME server could not complete TLS-ALPN-01 (is port 443 of {} this station's public port?)",
            settings.domain
        )));
    }
    let (csr, key) = certs::request(&settings.domain)?;
    order.finalize_csr(&csr).await?;
    let chain = order.poll_certificate(&retries).await?;
    let issued = inspect(chain.as_bytes())
        .ok_or_else(|| AcmeError::Order("the issued chain does not parse".into()))?;
    write_pair(&settings.pair(), &chain, &key)?;
    Ok(issued)
}

/// The stored account, or a new one registered and stored.
async fn account(settings: &AcmeSettings) -> Result<Account, AcmeError> {
    let builder = || -> Result<_, AcmeError> {
        Ok(match &settings.ca {
            Some(ca) => Account::builder_with_http(client::with_roots(ca)?),
            None => Account::builder()?,
        })
    };
    let path = settings.account_file();
    match std::fs::read(&path) {
        Ok(json) => {
            let credentials: AccountCredentials =
                serde_json::from_slice(&json).map_err(|source| AcmeError::Account {
                    path: path.clone(),
                    source,
                })?;
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AcmeError::Io { path, source }),
    }
    let contact: Vec<String> = settings
        .email
        .iter()
        .map(|email| format!("mailto:{email}"))
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_vec_pretty(&credentials).map_err(|source| AcmeError::Account {
        path: path.clone(),
        source,
    })?;
    write_atomically(&path, &json, true)?;
    tracing::info!(directory = %settings.directory, "registered a new ACME account");
    Ok(account)
}

fn create_dir(dir: &Path) -> Result<(), AcmeError> {
    std::fs::create_dir_all(dir).map_err(|source| AcmeError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes key and chain, each atomically: both are written and synced to temporary files
/// first, then renamed back to back. The reloader refuses a mismatched pair, so this keeps
/// the window in which it could see a new key with the old chain (and log a refusal) to the
/// time between two renames.
fn write_pair(pair: &PairFiles, chain: &str, key: &str) -> Result<(), AcmeError> {
    let key_temp = write_temp(&pair.key, key.as_bytes(), true)?;
    let chain_temp = write_temp(&pair.cert, chain.as_bytes(), false)?;
    rename(&key_temp, &pair.key)?;
    rename(&chain_temp, &pair.cert)
}

/// Writes `path` through a temporary file and a rename, so no reader sees half a file.
fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> Result<(), AcmeError> {
    let temp = write_temp(path, bytes, secret)?;
    rename(&temp, path)
}

/// Writes and syncs `bytes` to `path` + `.tmp`; secrets get mode 0600 before any byte is
/// written.
fn write_temp(path: &Path, bytes: &[u8], secret: bool) -> Result<PathBuf, AcmeError> {
    use std::io::Write as _;
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let io = |source| AcmeError::Io {
        path: temp.clone(),
        source,
    };
    // A leftover temporary file from a crash keeps its old mode; start afresh.
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(temp)
}

fn rename(from: &Path, to: &Path) -> Result<(), AcmeError> {
    std::fs::rename(from, to).map_err(|source| AcmeError::Io {
        path: to.to_path_buf(),
        source,
    })
}
