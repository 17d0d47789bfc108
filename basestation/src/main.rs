//! `zbase-station`: flags -> settings -> telemetry -> store -> relay -> serve, then drain.
//!
//! Exit codes: 0 after a clean drain, 1 when the station fails at run time (store, socket),
//! 2 for unusable flags or settings.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use zbase_basestation::config::{RawSettings, Settings, StoreBackend};
use zbase_basestation::relay::{Relay, RelayParts};
use zbase_basestation::store::{PostgresOptions, PostgresStore, SqliteStore, Store};
use zbase_basestation::telemetry::{Metrics, init_telemetry};
use zbase_basestation::{shutdown, transport};

/// The zbase base station: a zero-knowledge relay and store for encrypted resources.
#[derive(Debug, Parser)]
#[command(name = "zbase-station", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve WebSocket and gRPC clients on one port, with the store in --data-dir or --store.
    Serve(RawSettings),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(raw) = cli.command;
    let settings = match settings(raw) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("zbase-station: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("zbase-station: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let telemetry = match init_telemetry(
            settings.log_format,
            &settings.log,
            settings.otlp_endpoint.as_deref(),
        ) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("zbase-station: {error}");
                return ExitCode::from(2);
            }
        };
        let code = match serve(settings).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error:#}");
                eprintln!("zbase-station: {error:#}");
                ExitCode::from(1)
            }
        };
        telemetry.shutdown();
        code
    })
}

fn settings(raw: RawSettings) -> anyhow::Result<Settings> {
    let raw = match &raw.config {
        Some(path) => {
            let file = RawSettings::from_yaml_file(path)?;
            raw.or(file)
        }
        None => raw,
    };
    Ok(raw.resolve()?)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    let token = CancellationToken::new();
    let relay = Relay::new(RelayParts {
        store: store.clone(),
        limits: settings.limits.clone(),
        metrics: Arc::new(Metrics::new()),
        shutdown: token.clone(),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    // The one line on stdout: scripts and the test harness read the port from it.
    println!("zbase-station listening on {addr}");
    tracing::info!(%addr, "serving WebSocket on ws://{addr}/v1/resources/{{id}} and gRPC zbase.v1.Station/Connect");
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plain HTTP on a non-loopback address: put a TLS-terminating proxy in front");
    }
    tokio::spawn(shutdown::on_signal(token.clone()));
    let grace = settings.limits.shutdown_grace;
    transport::serve(listener, relay.clone(), grace).await;
    if tokio::time::timeout(grace, relay.drained()).await.is_err() {
        tracing::warn!("connections or writes still running after the shutdown grace period");
    }
    store.close().await;
    tracing::info!("drained; exiting");
    Ok(())
}

/// The backend `--store` names. Only the redacted URL ever reaches a message.
async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let StoreBackend::Postgres { url, password_file } = &settings.store else {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let db = settings.data_dir.join("station.sqlite3");
        let store = SqliteStore::open(&db)
            .await
            .with_context(|| format!("cannot open the store {}", db.display()))?;
        tracing::info!(store = %db.display(), "using the embedded SQLite store");
        return Ok(Arc::new(store));
    };
    let password = match password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the store password file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let options = PostgresOptions {
        password,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(url.expose(), options)
        .await
        .with_context(|| format!("cannot open the store {url}"))?;
    tracing::info!(store = %url, "using the PostgreSQL store");
    Ok(Arc::new(store))
}
