//! `zbase-station`: flags -> settings -> telemetry -> store -> relay -> serve, then drain.
//!
//! Exit codes: 0 after a clean drain, 1 when the station fails at run time (store, socket),
//! 2 for unusable flags or settings.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use zbase_basestation::cluster::{Directory, Identity, Membership};
use zbase_basestation::config::{RawSettings, Settings, StoreBackend};
use zbase_basestation::relay::{Relay, RelayParts, Uplink};
use zbase_basestation::replication::{self, Peer, SiteStore, Upstream};
use zbase_basestation::store::{
    Epoch, Fence, PostgresOptions, PostgresStore, Role, Site, SqliteStore, Store,
};
use zbase_basestation::telemetry::{Metrics, init_telemetry};
use zbase_basestation::tls::{Challenges, Watched};
use zbase_basestation::{shutdown, transport};

mod admin;
mod offline;

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
    // Boxed: each command's settings are large, and only one is ever built.
    Serve(Box<RawSettings>),
    /// Write an encrypted backup of the store (while it serves), or verify or list backups.
    Backup(Box<offline::BackupArgs>),
    /// Restore a backup into a fresh store (a new --data-dir, or an empty database).
    Restore(Box<offline::RestoreArgs>),
    /// Show a running station's role among the sites, its epoch and its last sequence.
    Status(Box<admin::SiteArgs>),
    /// Make a running primary hand over: it accepts no write from then on, and prints the
    /// token its successor is promoted with.
    Demote(Box<admin::SiteArgs>),
    /// Make a running replica the primary, in the next epoch (with --token, only once it has
    /// every change the demoted primary had).
    Promote(Box<admin::PromoteArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let raw = match cli.command {
        Command::Serve(raw) => *raw,
        Command::Backup(args) => return offline::run(offline::backup(*args)),
        Command::Restore(args) => return offline::run(offline::restore(*args)),
        Command::Status(args) => return offline::run(admin::status(*args)),
        Command::Demote(args) => return offline::run(admin::demote(*args)),
        Command::Promote(args) => return offline::run(admin::promote(*args)),
    };
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
    let metrics = Arc::new(Metrics::new());
    // Certificates are checked before anything else starts: a station never comes up with
    // a certificate it would refuse on reload.
    let challenges = settings.acme.as_ref().map(|_| Challenges::default());
    if let Some(acme) = &settings.acme {
        zbase_basestation::acme::prepare(acme).context("preparing the ACME certificate files")?;
    }
    let public_tls = match &settings.tls {
        Some(tls) => Some(Arc::new(
            Watched::load_with_challenges(
                tls.clone(),
                "public",
                metrics.clone(),
                challenges.clone(),
            )
            .context(
                "the public port's TLS certificate (--tls-cert, --tls-key, or --data-dir/acme)",
            )?,
        )),
        None => None,
    };
    let internal_tls = match &settings.cluster.internal_tls {
        Some(files) => Some(Arc::new(
            Watched::load(files.clone(), "internal", metrics.clone()).context(
                "the internal port's TLS (--internal-tls-cert, --internal-tls-key, --internal-ca)",
            )?,
        )),
        None => None,
    };
    let replication_tls = match &settings.replication.tls {
        Some(files) => Some(Arc::new(
            Watched::load(files.clone(), "replication", metrics.clone()).context(
                "the TLS between sites (--replication-tls-cert, --replication-tls-key, --replication-ca)",
            )?,
        )),
        None => None,
    };
    let (local, cache, mut cluster) = open_store(&settings).await?;
    let site = site_store(&settings, local, cache, &replication_tls, &metrics).await?;
    replication::check_at_start(&site).await;
    let store: Arc<dyn Store> = site.clone();
    let token = CancellationToken::new();
    let relay = Relay::new(RelayParts {
        store: store.clone(),
        limits: settings.limits.clone(),
        metrics: metrics.clone(),
        shutdown: token.clone(),
        directory: cluster.as_ref().map(|cluster| cluster.directory.clone()),
        internal_tls: internal_tls.as_ref().and_then(|tls| tls.client()),
        uplink: site
            .upstream()
            .map(|upstream| Arc::new(upstream.clone()) as Arc<dyn Uplink>),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    // The one line on stdout: scripts and the test harness read the port from it.
    println!("zbase-station listening on {addr}");
    let scheme = if public_tls.is_some() { "wss" } else { "ws" };
    tracing::info!(%addr, "serving WebSocket on {scheme}://{addr}/v1/resources/{{id}} and gRPC zbase.v1.Station/Connect");
    if public_tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "PLAIN HTTP on a non-loopback address: clients' traffic is readable on the network; use --tls-cert and --tls-key, or a TLS-terminating proxy in front");
    }
    let grace = settings.limits.shutdown_grace;
    tokio::spawn(replication::run(site.clone(), relay.clone(), token.clone()));
    if let Some(listen) = settings.replication.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on the replication port {listen}"))?;
        let tls = replication_tls.as_ref().map(|tls| tls.server());
        if tls.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "the replication port has no mutual TLS and listens beyond loopback: any host that reaches it can read every stored resource and write snapshots; set --replication-tls-cert, --replication-tls-key and --replication-ca");
        }
        tracing::info!(%listen, "serving replica sites: zbase.v1.Replication");
        tokio::spawn(transport::serve_replication(
            listener,
            replication::router(relay.clone(), site.clone()),
            relay.clone(),
            grace,
            tls,
        ));
    }
    let reload_stop = CancellationToken::new();
    for watched in public_tls
        .iter()
        .chain(&internal_tls)
        .chain(&replication_tls)
    {
        let every = settings.tls_reload_interval;
        tokio::spawn(Arc::clone(watched).watch(every, reload_stop.clone()));
    }
    if let (Some(acme), Some(challenges)) = (&settings.acme, challenges) {
        tokio::spawn(zbase_basestation::acme::maintain(
            acme.clone(),
            challenges,
            metrics.clone(),
            reload_stop.clone(),
        ));
    }
    let signal = CancellationToken::new();
    tokio::spawn(shutdown::on_signal(signal.clone()));
    let membership_stopped = CancellationToken::new();
    let mut membership_task = None;
    if let Some(cluster) = &mut cluster
        && let Some(internal) = cluster.internal.take()
    {
        let tls = internal_tls.as_ref().map(|tls| tls.server());
        if tls.is_none() && !internal.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
            tracing::warn!(
                "the internal port has no mutual TLS and listens beyond loopback: only pods may reach it (a NetworkPolicy), or set --internal-tls-cert, --internal-tls-key and --internal-ca"
            );
        }
        tokio::spawn(transport::serve_internal(
            internal,
            relay.clone(),
            Some(replication::service(relay.clone(), site.clone())),
            grace,
            tls,
        ));
        membership_task = Some(tokio::spawn(zbase_basestation::cluster::maintain(
            cluster.membership.clone(),
            cluster.directory.clone(),
            Arc::new(relay.clone()),
            metrics.clone(),
            membership_stopped.clone(),
        )));
    }
    // On the signal, a pod first stops being anyone's home (so the others prepare to take its
    // resources), then closes its connections and drains.
    let leaving = cluster
        .as_ref()
        .map(|cluster| (cluster.membership.clone(), cluster.directory.clone()));
    let drain = token.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        if let Some((membership, directory)) = leaving {
            match tokio::time::timeout(Duration::from_secs(5), membership.start_leaving()).await {
                Ok(Ok(view)) => {
                    let until = membership.local_deadline(tokio::time::Instant::now());
                    directory.publish(view, until);
                    tracing::info!("left the home rotation; handing resources over");
                }
                Ok(Err(error)) => tracing::warn!(%error, "could not announce leaving"),
                Err(_) => tracing::warn!("announcing leaving timed out"),
            }
        }
        drain.cancel();
    });
    let tls = public_tls.as_ref().map(|tls| tls.server());
    transport::serve(listener, relay.clone(), grace, tls).await;
    reload_stop.cancel();
    if tokio::time::timeout(grace, relay.drained()).await.is_err() {
        tracing::warn!("connections or writes still running after the shutdown grace period");
    }
    store.close().await;
    if let Some(cluster) = cluster {
        // The lease held through the drain, so the last writes committed under it; now the
        // other pods may serve what was homed here.
        membership_stopped.cancel();
        if let Some(task) = membership_task {
            let _ = task.await;
        }
        if let Err(error) = cluster.membership.leave().await {
            tracing::warn!(%error, "could not leave the membership; other pods take over when the lease lapses");
        }
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// The store the relay runs over, in the role kept with the data (or, at the first start, the
/// one the flags say), with a link to the other sites if any are configured.
async fn site_store(
    settings: &Settings,
    local: Arc<dyn Store>,
    cache: Option<Arc<SqliteStore>>,
    tls: &Option<Arc<Watched>>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<SiteStore>> {
    let wanted = &settings.replication;
    let stored = local
        .site()
        .await
        .context("cannot read this station's role from its store")?;
    // A fenced former primary rejoining as a replica stays recorded as fenced until its
    // history is found to fit the new primary's: restarted before that, it must still know
    // that its store may hold writes nobody else has.
    let former_primary = stored
        .as_ref()
        .is_some_and(|site| site.role == Role::Fenced);
    let site = match (stored.clone(), &wanted.primary) {
        (Some(site), Some(_)) if site.role == Role::Primary => {
            tracing::warn!(
                epoch = site.epoch(),
                "this station was promoted to primary: --replica-of is ignored (remove it)"
            );
            site
        }
        (Some(site), Some(_)) if site.role == Role::Fenced => {
            tracing::warn!(
                epoch = site.epoch(),
                "this former primary starts again as a replica (--replica-of); it keeps its history if it diverged from the new primary's"
            );
            Site {
                role: Role::Replica,
                epochs: site.epochs,
            }
        }
        (Some(site), _) => site,
        (None, Some(_)) => Site {
            role: Role::Replica,
            epochs: Vec::new(),
        },
        (None, None) => Site {
            role: Role::Primary,
            epochs: vec![Epoch {
                epoch: 1,
                first_seq: 1,
            }],
        },
    };
    if stored.as_ref() != Some(&site) && !former_primary {
        local
            .set_site(site.clone())
            .await
            .context("cannot record this station's role in its store")?;
    }
    if site.role == Role::Replica && cache.is_none() {
        anyhow::bail!(
            "this store is a replica's, but a replica's cache is the embedded SQLite store: drop --store"
        );
    }
    let client = tls.as_ref().and_then(|tls| tls.client());
    let peers = wanted
        .primary
        .iter()
        .chain(&wanted.sites)
        .map(|address| replication::peer(address, client.clone()))
        .collect::<Result<Vec<Peer>, String>>()
        .map_err(|error| anyhow::anyhow!("--replica-of and --sites: {error}"))?;
    tracing::info!(
        role = site.role.name(),
        epoch = site.epoch(),
        sites = peers.len(),
        "this station's role among the sites"
    );
    let upstream = (!peers.is_empty()).then(|| Upstream::new(peers, metrics.clone()));
    Ok(Arc::new(SiteStore::new(
        local,
        cache,
        upstream,
        site,
        former_primary,
    )))
}

/// What a pod on a shared PostgreSQL store runs beside the relay.
struct Cluster {
    membership: Arc<Membership>,
    directory: Directory,
    /// Taken by the internal port's server once the relay exists.
    internal: Option<tokio::net::TcpListener>,
}

/// The backend `--store` names: the store, the same again when it is SQLite (a replica's
/// cache), and for PostgreSQL this pod's membership. Only the redacted URL ever reaches a
/// message.
async fn open_store(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<SqliteStore>>, Option<Cluster>)> {
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
        let store = Arc::new(store);
        return Ok((store.clone(), Some(store), None));
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
    let wanted = &settings.cluster;
    let internal = tokio::net::TcpListener::bind(wanted.internal_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the internal port {}",
                wanted.internal_listen
            )
        })?;
    let bound = internal
        .local_addr()
        .context("internal listener has no local address")?;
    let address = match &wanted.internal_advertise {
        Some(address) => address.clone(),
        None if bound.ip().is_unspecified() => anyhow::bail!(
            "the internal port listens on {bound}, which other pods cannot dial: set --internal-advertise to this pod's address (e.g. $POD_IP:{})",
            bound.port()
        ),
        None => bound.to_string(),
    };
    let identity = Identity {
        pod: wanted.pod_id.clone(),
        incarnation: format!("{:016x}", rand::random::<u64>()),
        address,
        lease: wanted.lease,
    };
    let options = PostgresOptions {
        password,
        fence: Some(Fence {
            pod: identity.pod.clone(),
            incarnation: identity.incarnation.clone(),
        }),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(url.expose(), options.clone())
        .await
        .with_context(|| format!("cannot open the store {url}"))?;
    tracing::info!(store = %url, "using the PostgreSQL store");
    let membership = Membership::connect(url.expose(), &options, identity.clone())
        .await
        .with_context(|| format!("cannot reach the membership table in {url}"))?;
    let sent = tokio::time::Instant::now();
    let view = membership
        .join()
        .await
        .with_context(|| format!("cannot join the pods of {url}"))?;
    let directory = Directory::new(&identity.pod, identity.lease);
    directory.publish(view.clone(), membership.local_deadline(sent));
    tracing::info!(
        pod = %identity.pod,
        internal = %identity.address,
        members = view.members.len(),
        generation = view.generation,
        "joined the pods sharing this store"
    );
    Ok((
        Arc::new(store),
        None,
        Some(Cluster {
            membership: Arc::new(membership),
            directory,
            internal: Some(internal),
        }),
    ))
}
