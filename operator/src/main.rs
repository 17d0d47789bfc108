//! `zbase-operator`: `run` reconciles BaseStations; `crd` prints the CRD the chart ships.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::runtime::events::{Recorder, Reporter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zbase_operator::controller::{self, Scope};
use zbase_operator::leader::{Elector, LeaseConfig};
use zbase_operator::pki;
use zbase_operator::reconcile::Context;
use zbase_operator::reconcile::validate::Defaults;
use zbase_operator::telemetry::{self, Metrics};

/// The zbase operator: keeps every BaseStation's StatefulSet, Services, configuration and
/// policies as its spec describes.
#[derive(Parser)]
#[command(name = "zbase-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile BaseStations until SIGTERM.
    // Boxed: the run flags dwarf the other variant.
    Run(Box<RunArgs>),
    /// Print a CustomResourceDefinition (YAML), as the chart ships it.
    Crd {
        /// Its plural name.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(zbase_operator::crd::CRDS), default_value = "basestations")]
        name: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "ZBASE_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "HOST:PORT"
    )]
    listen: SocketAddr,
    /// Namespaces to act in, comma-separated. [default: all namespaces]
    #[arg(
        long,
        env = "ZBASE_OPERATOR_WATCH_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS,..."
    )]
    watch_namespaces: Vec<String>,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "zbase-operator", value_name = "NAME")]
    lease_name: String,
    /// This replica's identity in the Lease. [default: the host name]
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    identity: Option<String>,
    /// Station image for BaseStations that name none.
    #[arg(long, env = "ZBASE_OPERATOR_STATION_IMAGE", default_value = concat!("ghcr.io/zbase-dev/zbase-station:", env!("CARGO_PKG_VERSION")), value_name = "IMAGE")]
    station_image: String,
    /// Validity of a new site CA.
    #[arg(long, env = "ZBASE_OPERATOR_SITE_CA_LIFETIME", default_value = "3650d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_ca_lifetime: Duration,
    /// Start rotating a site CA (publish the next one) once it expires within this long.
    #[arg(long, env = "ZBASE_OPERATOR_SITE_CA_ROTATE_BEFORE", default_value = "365d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_ca_rotate_before: Duration,
    /// How long the next site CA is trusted before it signs, so pods and clients have it
    /// first.
    #[arg(long, env = "ZBASE_OPERATOR_SITE_CA_PUBLISH_AHEAD", default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_ca_publish_ahead: Duration,
    /// How long the previous site CA stays trusted after a rotation (at least the
    /// certificate lifetime).
    #[arg(long, env = "ZBASE_OPERATOR_SITE_CA_OVERLAP", default_value = "90d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_ca_overlap: Duration,
    /// Validity of a new site certificate.
    #[arg(long, env = "ZBASE_OPERATOR_SITE_CERT_LIFETIME", default_value = "90d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_cert_lifetime: Duration,
    /// Renew a site certificate once it expires within this long.
    #[arg(long, env = "ZBASE_OPERATOR_SITE_CERT_RENEW_BEFORE", default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_cert_renew_before: Duration,
    /// How often a site's station is asked for its role and lag (spec.site), which also
    /// picks up a changed spec.site.trust Secret.
    #[arg(long, env = "ZBASE_OPERATOR_SITE_REFRESH", default_value = "15s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    site_refresh: Duration,
    /// Log line format.
    #[arg(
        long,
        env = "ZBASE_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Log filter in RUST_LOG syntax.
    #[arg(
        long,
        env = "ZBASE_OPERATOR_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { name } => zbase_operator::crd::crd_yaml(&name)
            .context("no such CRD")
            .and_then(|yaml| yaml.context("cannot write the CRD"))
            .map(|yaml| print!("{yaml}")),
        Command::Run(args) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zbase-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).with_context(|| {
        format!(
            "--log '{}' is not a log filter (e.g. info or zbase_operator=debug)",
            args.log
        )
    })?;
    let pki = pki::Policy {
        ca_lifetime: args.site_ca_lifetime,
        ca_rotate_before: args.site_ca_rotate_before,
        ca_publish_ahead: args.site_ca_publish_ahead,
        overlap: args.site_ca_overlap,
        leaf_lifetime: args.site_cert_lifetime,
        leaf_renew_before: args.site_cert_renew_before,
    };
    pki.check()
        .context("the --site-ca-* and --site-cert-* durations do not fit together")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }

    let metrics = Metrics::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };
    let health = tokio::spawn(telemetry::serve(args.listen, metrics.clone(), stopped()));
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        }
    });

    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in a pod: the service account; elsewhere: KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("the Kubernetes API server does not answer")?;
    tracing::info!(version = %version.git_version, "connected to the Kubernetes API server");
    metrics.set_ready(true);

    let identity = match args.identity {
        Some(id) => id,
        None => hostname(),
    };
    let elector = Elector::new(
        client.clone(),
        &args.leader_election_namespace,
        &args.lease_name,
        &identity,
        LeaseConfig::default(),
    );
    tokio::select! {
        () = elector.acquire() => {}
        () = stopped() => return finish(health).await,
    }
    metrics.set_leader(true);
    tracing::info!(identity = %identity, lease = %args.lease_name, "leading");

    let scope = if args.watch_namespaces.is_empty() {
        Scope::Cluster
    } else {
        Scope::Namespaces(args.watch_namespaces.clone())
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        defaults: Defaults {
            station_image: args.station_image,
        },
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "zbase-operator".into(),
                instance: Some(identity),
            },
        ),
        metrics: metrics.clone(),
        pki,
        site_refresh: args.site_refresh,
    });
    let lost = tokio::select! {
        () = controller::run(ctx, scope, stop_rx.clone()) => false,
        () = elector.hold() => true,
    };
    metrics.set_leader(false);
    if lost {
        // Another replica may already act: stop at once, and let Kubernetes restart this one
        // as a candidate.
        anyhow::bail!("lost the leader lease; exiting so that only one replica acts");
    }
    elector.release().await;
    finish(health).await
}

async fn finish(health: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    health
        .await
        .context("the health server panicked")?
        .context("the health server failed (is --listen free?)")
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("zbase-operator-{}", std::process::id()))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
