//! The commands that work on a store rather than serve it: `backup` (and `backup verify`,
//! `backup list`) and `restore`. Each prints progress on a terminal as a bar, and elsewhere
//! (a Job's log) as a line every few seconds.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zbase_basestation::backup::retention::Retention;
use zbase_basestation::backup::{self, BackupError, Location, Progress, S3Settings, Summary};
use zbase_basestation::config::{RawSettings, StoreBackend};
use zbase_basestation::store::{
    PostgresOptions, PostgresStore, SqliteStore, Store as _, StoreError,
};

/// The store a command reads or writes: the same flags and variables as `serve`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store. [default: ./data]
    #[arg(long, env = "ZBASE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `sqlite` (a file under --data-dir) or a PostgreSQL URL. [default: sqlite]
    #[arg(long, env = "ZBASE_STORE", value_name = "sqlite|URL")]
    store: Option<String>,
    /// File whose content (trimmed) is the PostgreSQL password.
    #[arg(long, env = "ZBASE_STORE_PASSWORD_FILE", value_name = "FILE")]
    store_password_file: Option<PathBuf>,
}

/// Where a store is, resolved the way `serve` resolves it.
enum Target {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        password: Option<String>,
    },
}

impl StoreArgs {
    fn target(self) -> anyhow::Result<Target> {
        let settings = RawSettings {
            data_dir: self.data_dir,
            store: self.store,
            store_password_file: self.store_password_file,
            ..RawSettings::default()
        }
        .resolve()?;
        Ok(match settings.store {
            StoreBackend::Sqlite => Target::Sqlite(settings.data_dir.join("station.sqlite3")),
            StoreBackend::Postgres { url, password_file } => Target::Postgres {
                url: url.expose().to_owned(),
                password: password_file
                    .map(|path| {
                        std::fs::read_to_string(&path)
                            .map(|p| p.trim().to_owned())
                            .with_context(|| {
                                format!("cannot read the store password file {}", path.display())
                            })
                    })
                    .transpose()?,
            },
        })
    }
}

async fn postgres(url: &str, password: Option<String>) -> anyhow::Result<PostgresStore> {
    let options = PostgresOptions {
        password,
        ..PostgresOptions::default()
    };
    PostgresStore::connect(url, options)
        .await
        .context("cannot open the PostgreSQL store")
}

/// How to reach S3-compatible storage, for `s3://` places. Credentials come from
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, or from files (a mounted Secret).
#[derive(Debug, Args)]
struct S3Args {
    /// URL of the S3-compatible server, e.g. https://s3.example.org:9000 (path-style).
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Region to sign requests for. [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "AWS_REGION", value_name = "REGION")]
    s3_region: Option<String>,
    /// File holding the access key id (instead of AWS_ACCESS_KEY_ID).
    #[arg(long, env = "AWS_ACCESS_KEY_ID_FILE", value_name = "FILE")]
    s3_access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key (instead of AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY_FILE", value_name = "FILE")]
    s3_secret_access_key_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the server, besides the system's.
    #[arg(long, env = "ZBASE_S3_CA_FILE", value_name = "FILE")]
    s3_ca_file: Option<PathBuf>,
}

impl S3Args {
    /// Resolves `text` (a directory or `s3://bucket/prefix`) with these settings.
    fn place(&self, text: &str) -> anyhow::Result<Location> {
        let read = |file: &Option<PathBuf>, what: &str| -> anyhow::Result<Option<String>> {
            file.as_ref()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map(|t| t.trim().to_owned())
                        .with_context(|| format!("cannot read the {what} file {}", path.display()))
                })
                .transpose()
        };
        let settings = if text.starts_with("s3://") {
            S3Settings {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                access_key_id: read(&self.s3_access_key_id_file, "S3 access key id")?,
                secret_access_key: read(&self.s3_secret_access_key_file, "S3 secret access key")?,
                ca_pem: self
                    .s3_ca_file
                    .as_ref()
                    .map(|path| {
                        std::fs::read(path).with_context(|| {
                            format!("cannot read the S3 CA file {}", path.display())
                        })
                    })
                    .transpose()?,
            }
        } else {
            S3Settings::default()
        };
        Ok(Location::parse(text, &settings)?)
    }
}

/// `zbase-station backup`: take a backup, or verify or list them.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    #[command(flatten)]
    create: CreateArgs,
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// Read a whole backup, checking every part, line and count; needs an identity.
    Verify(VerifyArgs),
    /// List the backups in a directory, newest last, from their manifests (no key needed).
    List(ListArgs),
}

/// Taking a backup.
#[derive(Debug, Args)]
struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Where the backup is written: a directory (a mounted volume) or s3://bucket/prefix.
    #[arg(
        long,
        env = "ZBASE_BACKUP_TO",
        value_name = "DIR|s3://...",
        required = true
    )]
    to: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// An age recipient (`age1...`) the backup is encrypted to; repeat for several.
    #[arg(
        long = "recipient",
        env = "ZBASE_BACKUP_RECIPIENTS",
        value_delimiter = ',',
        value_name = "AGE1..."
    )]
    recipients: Vec<String>,
    /// A file of age recipients, one per line (`#` comments allowed), as `age -R` reads.
    #[arg(long, env = "ZBASE_BACKUP_RECIPIENTS_FILE", value_name = "FILE")]
    recipients_file: Option<PathBuf>,
    /// Start a new part file after this many bytes of records. [default: 1 GiB]
    #[arg(long, value_name = "BYTES", default_value_t = backup::DEFAULT_PART_BYTES)]
    part_bytes: u64,
    /// After a backup, keep the newest N backups in --to (and any --keep-within keeps).
    #[arg(long, env = "ZBASE_BACKUP_KEEP_LAST", value_name = "N")]
    keep_last: Option<usize>,
    /// After a backup, keep every backup in --to younger than this (e.g. 30d).
    #[arg(long, env = "ZBASE_BACKUP_KEEP_WITHIN", value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_within: Option<Duration>,
    /// Also write what was written (where, sequence, counts) as one JSON object into this
    /// file, such as a Kubernetes container's /dev/termination-log.
    #[arg(long, env = "ZBASE_BACKUP_REPORT", value_name = "FILE")]
    report: Option<PathBuf>,
}

/// What `--report` writes: enough to find and restore the backup without reading a log.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    backup: &'a str,
    sequence: u64,
    resources: u64,
    snapshots: u64,
    snapshot_bytes: u64,
    parts: usize,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The backup: its folder or prefix (`.../zbase-<time>-...`).
    #[arg(long, value_name = "DIR|s3://...")]
    from: String,
    #[command(flatten)]
    s3: S3Args,
    /// An age identity file holding a key the backup was encrypted to.
    #[arg(long, env = "ZBASE_BACKUP_IDENTITY", value_name = "FILE")]
    identity: PathBuf,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Where backups are written: a directory or s3://bucket/prefix.
    #[arg(long = "in", value_name = "DIR|s3://...")]
    place: String,
    #[command(flatten)]
    s3: S3Args,
}

/// `zbase-station restore`: a backup into a fresh station.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The backup: its folder or prefix (`.../zbase-<time>-...`).
    #[arg(long, value_name = "DIR|s3://...")]
    from: String,
    #[command(flatten)]
    s3: S3Args,
    /// An age identity file holding a key the backup was encrypted to.
    #[arg(long, env = "ZBASE_BACKUP_IDENTITY", value_name = "FILE")]
    identity: PathBuf,
    /// Delete what the store holds first (in the same transaction as the restore).
    #[arg(long, conflicts_with = "if_empty")]
    wipe: bool,
    /// Restore only into an empty store, and succeed without restoring when it holds
    /// resources already: a station's first start from a backup, run again at every start.
    #[arg(long, env = "ZBASE_RESTORE_IF_EMPTY")]
    if_empty: bool,
}

/// Runs an offline command to its end: exit 0, or 1 with the error on stderr.
pub fn run(
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("zbase-station: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zbase-station: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs `backup` and its subcommands.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    match args.action {
        Some(BackupAction::Verify(verify)) => {
            let identities = backup::identities(&verify.identity)?;
            let from = verify.s3.place(&verify.from)?;
            let (progress, done) = progress("verified");
            let summary = backup::verify(&from, identities, progress).await;
            done();
            let summary = summary.with_context(|| format!("{from} is not sound"))?;
            println!("{from} is sound: {}", describe(&summary));
            Ok(())
        }
        Some(BackupAction::List(list)) => {
            let place = list.s3.place(&list.place)?;
            let listed = place
                .list()
                .await
                .with_context(|| format!("cannot list the backups in {place}"))?;
            for listed in listed {
                match listed.manifest {
                    Ok(m) => println!(
                        "{}\t{}\tsequence {}\t{} resources\t{} parts",
                        listed.backup,
                        m.created,
                        m.sequence,
                        m.resources,
                        m.parts.len()
                    ),
                    Err(e) => println!("{}\tunreadable: {e}", listed.backup),
                }
            }
            Ok(())
        }
        None => create(args.create).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let to = args
        .to
        .context("--to is required: a directory or s3://bucket/prefix for the backup")?;
    let to = args.s3.place(&to)?;
    let mut texts = args.recipients;
    if let Some(file) = &args.recipients_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --recipients-file {}", file.display()))?;
        texts.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let recipients = backup::recipients(&texts)?;
    let (progress, done) = progress("backed up");
    let made = match args.store.target()? {
        Target::Sqlite(path) => {
            backup::create(
                &to,
                recipients,
                args.part_bytes,
                |tx| async move { SqliteStore::export_file(&path, tx).await },
                progress,
            )
            .await
        }
        Target::Postgres { url, password } => {
            let store = postgres(&url, password).await?;
            let made = backup::create(
                &to,
                recipients,
                args.part_bytes,
                |tx| {
                    let store = &store;
                    async move { store.export(tx).await }
                },
                progress,
            )
            .await;
            store.close().await;
            made
        }
    };
    done();
    let (written, manifest) = made.context("the backup failed; nothing was kept")?;
    println!(
        "backup {written} written: sequence {}, {} resources, {} snapshot bytes, {} parts",
        manifest.sequence,
        manifest.resources,
        manifest.snapshot_bytes,
        manifest.parts.len()
    );
    if let Some(file) = &args.report {
        let report = Report {
            backup: &written.to_string(),
            sequence: manifest.sequence,
            resources: manifest.resources,
            snapshots: manifest.snapshots,
            snapshot_bytes: manifest.snapshot_bytes,
            parts: manifest.parts.len(),
        };
        let text = serde_json::to_string(&report).context("cannot encode the report")?;
        std::fs::write(file, text).with_context(|| {
            format!(
                "the backup {written} was written, but not the report {}",
                file.display()
            )
        })?;
    }
    // Only after a good backup, so the newest good one is always this one.
    let retention = Retention {
        last: args.keep_last,
        within: args.keep_within,
    };
    let pruned = to
        .prune(&retention, std::time::SystemTime::now())
        .await
        .context("the backup was written, but removing old backups failed")?;
    for old in pruned {
        println!("removed old backup {old}");
    }
    Ok(())
}

/// Runs `restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let identities = backup::identities(&args.identity)?;
    let from = args.s3.place(&args.from)?;
    let (progress, done) = progress("restored");
    let wipe = args.wipe;
    let restored = match args.store.target()? {
        Target::Sqlite(path) => {
            backup::restore(
                &from,
                identities,
                |rx| async move { SqliteStore::restore(&path, rx, wipe).await },
                progress,
            )
            .await
        }
        Target::Postgres { url, password } => {
            let store = postgres(&url, password).await?;
            let restored = backup::restore(
                &from,
                identities,
                |rx| {
                    let store = &store;
                    async move { store.restore(rx, wipe).await }
                },
                progress,
            )
            .await;
            store.close().await;
            restored
        }
    };
    done();
    if let (true, Err(BackupError::Store(StoreError::NotEmpty(held)))) = (args.if_empty, &restored)
    {
        println!("the store holds {held} resources already; nothing restored (--if-empty)");
        return Ok(());
    }
    let summary = restored
        .with_context(|| format!("cannot restore {from}; nothing was written to the store"))?;
    println!("restored {from}: {}", describe(&summary));
    Ok(())
}

fn describe(summary: &Summary) -> String {
    format!(
        "sequence {}, {} resources, {} snapshots, {} snapshot bytes",
        summary.sequence, summary.resources, summary.snapshots, summary.snapshot_bytes
    )
}

/// A progress report for `verb` ("restored"), and what to call when done.
fn progress(verb: &'static str) -> (Progress, Box<dyn FnOnce()>) {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let shown = bar.clone();
        let report: Progress = Arc::new(move |resources, bytes| {
            shown.set_message(format!("{verb} {resources} resources, {}", mib(bytes)));
        });
        return (report, Box::new(move || bar.finish_and_clear()));
    }
    // Not a terminal: a line every 5 seconds, for a Job's log.
    let last = Mutex::new(Instant::now());
    let report: Progress = Arc::new(move |resources, bytes| {
        let Ok(mut last) = last.lock() else { return };
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            eprintln!(
                "zbase-station: {verb} {resources} resources, {} so far",
                mib(bytes)
            );
        }
    });
    (report, Box::new(|| ()))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
