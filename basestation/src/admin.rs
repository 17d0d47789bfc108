//! `zbase-station status|demote|promote`: a site's role, asked of and changed on a running
//! station over its replication port (docs/REPLICATION.md, "Switching the primary").

use anyhow::Context as _;
use std::path::PathBuf;
use zbase_basestation::config::{self, SiteAddress};
use zbase_basestation::replication::{self, Token, with_epoch};
use zbase_basestation::telemetry::Metrics;
use zbase_basestation::tls::Watched;
use zbase_proto::pb;

/// Where the station's replication port is, and how to authenticate to it.
#[derive(Debug, clap::Args)]
pub struct SiteArgs {
    /// The station's replication port: https://host:port (http:// on a private network).
    #[arg(long, env = "ZBASE_SITE", value_name = "URL")]
    site: String,

    /// PEM certificate of a site of this deployment (the station's own will do).
    #[arg(long, env = "ZBASE_REPLICATION_TLS_CERT", value_name = "FILE")]
    replication_tls_cert: Option<PathBuf>,

    /// PEM private key of --replication-tls-cert.
    #[arg(long, env = "ZBASE_REPLICATION_TLS_KEY", value_name = "FILE")]
    replication_tls_key: Option<PathBuf>,

    /// PEM bundle of the sites' CA(s).
    #[arg(long, env = "ZBASE_REPLICATION_CA", value_name = "FILE")]
    replication_ca: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `promote`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    site: SiteArgs,

    /// The token `demote` printed on the old primary: wait until this site has every change
    /// it had, then promote (nothing lost). Without it, promote at once: a failover.
    #[arg(long, value_name = "EPOCH:SEQUENCE")]
    token: Option<Token>,
}

impl SiteArgs {
    /// A client of the station's replication port.
    fn client(
        &self,
    ) -> anyhow::Result<pb::replication_client::ReplicationClient<tonic::transport::Channel>> {
        let address = SiteAddress::parse(&self.site)
            .map_err(|expected| anyhow::anyhow!("--site {}: {expected}", self.site))?;
        let files = config::mutual_tls(
            "replication-tls-cert",
            (
                self.replication_tls_cert.clone(),
                self.replication_tls_key.clone(),
                self.replication_ca.clone(),
            ),
            "--replication-tls-cert, --replication-tls-key and --replication-ca go together: give all three",
        )?;
        let tls = match files {
            Some(files) => Watched::load(files, "replication", std::sync::Arc::new(Metrics::new()))
                .context("the site certificate (--replication-tls-cert, --replication-tls-key, --replication-ca)")?
                .client(),
            None => None,
        };
        let peer = replication::peer(&address, tls).map_err(anyhow::Error::msg)?;
        Ok(peer.client)
    }
}

/// `message` as a request from an operator (epoch 0: it never fences anyone).
fn failed(site: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{site}: {}", status.message())
}

/// `zbase-station status`: the site's role, epochs and position.
pub async fn status(args: SiteArgs) -> anyhow::Result<()> {
    let mut client = args.client()?;
    let status = client
        .status(with_epoch(pb::StatusRequest {}, 0))
        .await
        .map_err(|status| failed(&args.site, status))?
        .into_inner();
    let epoch = status.epochs.last().map_or(0, |epoch| epoch.epoch);
    if args.json {
        let epochs: Vec<serde_json::Value> = status
            .epochs
            .iter()
            .map(|e| serde_json::json!({"epoch": e.epoch, "firstSequence": e.first_seq}))
            .collect();
        let out = serde_json::json!({
            "role": status.role,
            "epoch": epoch,
            "epochs": epochs,
            "lastSequence": status.last_seq,
            "following": (!status.following.is_empty()).then_some(&status.following),
            "lagChanges": status.lag_changes,
            "lagSeconds": status.lag_seconds,
        });
        println!("{out}");
    } else {
        println!(
            "{}: {} at epoch {epoch}, last sequence {}",
            args.site, status.role, status.last_seq
        );
        if status.role == "replica" {
            match status.following.as_str() {
                "" => println!(
                    "  no live change feed (lagging {:.1} s)",
                    status.lag_seconds
                ),
                url => println!(
                    "  following {url}: {} changes behind, {:.1} s",
                    status.lag_changes, status.lag_seconds
                ),
            }
        }
    }
    Ok(())
}

/// `zbase-station demote`: the primary stops accepting writes and prints its token.
pub async fn demote(args: SiteArgs) -> anyhow::Result<()> {
    let mut client = args.client()?;
    let token = client
        .demote(with_epoch(pb::DemoteRequest {}, 0))
        .await
        .map_err(|status| failed(&args.site, status))?
        .into_inner();
    let token = Token {
        epoch: token.epoch,
        seq: token.seq,
    };
    if args.json {
        println!("{}", serde_json::json!({"token": token.to_string()}));
    } else {
        println!("{token}");
        eprintln!(
            "{} accepts no write from now on. Promote the next primary with: zbase-station promote --site URL --token {token}",
            args.site
        );
    }
    Ok(())
}

/// `zbase-station promote`: the replica becomes the primary in the next epoch.
pub async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    let mut client = args.site.client()?;
    let token = args.token.map(|token| pb::HandoverToken {
        epoch: token.epoch,
        seq: token.seq,
    });
    let promoted = client
        .promote(with_epoch(pb::PromoteRequest { token }, 0))
        .await
        .map_err(|status| failed(&args.site.site, status))?
        .into_inner();
    if args.site.json {
        let out = serde_json::json!({
            "epoch": promoted.epoch,
            "firstSequence": promoted.first_seq,
            "failover": promoted.failover,
        });
        println!("{out}");
    } else if promoted.failover {
        println!(
            "{} is the primary at epoch {} (a FAILOVER: writes the old primary took after this site's last change are not here; rebuild the old primary as a replica)",
            args.site.site, promoted.epoch
        );
    } else {
        println!(
            "{} is the primary at epoch {}, with every change the old primary had",
            args.site.site, promoted.epoch
        );
    }
    Ok(())
}
