//! `zbase`: the command-line actor. One device's identity and store in a home directory;
//! resources created, shared, revoked, edited offline and synced through a base station.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use zbase_actor::station::StationError;
use zbase_actor::{ActorId, Change, Device, PublicIdentity, Role, SyncError, SyncReport};
use zbase_proto::wire::ResourceId;

/// The zbase actor: end-to-end encrypted resources synced through a base station that can
/// read none of them.
///
/// Identifiers are base64url and may start with '-': every argument that takes one accepts
/// that.
#[derive(Parser)]
#[command(name = "zbase", version, about)]
struct Cli {
    /// This device's directory (identity and local store).
    #[arg(long, global = true, env = "ZBASE_HOME")]
    home: Option<PathBuf>,
    /// PEM file of the CA to trust for wss:// and grpcs:// stations (default: the system's).
    #[arg(long, global = true, env = "ZBASE_CA")]
    ca: Option<PathBuf>,
    /// Print JSON, one document per result (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates this device's identity.
    Init,
    /// Prints this device's public identity: give it to whoever shares with you.
    Whoami,
    /// Creates a resource on a station; this device owns it.
    Create {
        /// The station: ws://, wss://, grpc:// or grpcs:// then host:port.
        #[arg(long, env = "ZBASE_STATION")]
        station: String,
    },
    /// Lists the resources on this device.
    Resources,
    /// Sets a key to a value.
    Put {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
        /// The key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// The value (UTF-8 text).
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Record it locally only; the next sync sends it.
        #[arg(long)]
        offline: bool,
    },
    /// Prints one value, or every value.
    Get {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
        /// The key (all keys if absent).
        #[arg(allow_hyphen_values = true)]
        key: Option<String>,
    },
    /// Removes a key.
    Delete {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
        /// The key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// Record it locally only; the next sync sends it.
        #[arg(long)]
        offline: bool,
    },
    /// Gives a member a role (owner, manager, editor, viewer) and sends them the keys.
    Share {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
        /// The member's public identity (`zbase whoami` on their device).
        #[arg(allow_hyphen_values = true)]
        member: String,
        /// The role.
        role: String,
        /// Record it locally only; the next sync sends it.
        #[arg(long)]
        offline: bool,
    },
    /// Takes a member's role away and rotates the keys so they read nothing newer.
    Revoke {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
        /// The member's actor id (or public identity).
        #[arg(allow_hyphen_values = true)]
        member: String,
        /// Record it locally only; the next sync rotates the keys.
        #[arg(long)]
        offline: bool,
    },
    /// Replaces the resource's keys now (owners and managers): after a revocation made on a
    /// device that is gone, or whenever its keys may have leaked.
    Rotate {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
    },
    /// Lists the members and their roles.
    Members {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
    },
    /// Takes up a resource shared with this device.
    Join {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
        /// Who shared it: their public identity.
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// The owner's actor id, when the sharer is not the owner: confirms the root of trust.
        #[arg(long, allow_hyphen_values = true)]
        owner: Option<String>,
        /// The station it lives on.
        #[arg(long, env = "ZBASE_STATION")]
        station: String,
    },
    /// Syncs one resource, or all.
    Sync {
        /// The resource (all if absent).
        #[arg(allow_hyphen_values = true)]
        resource: Option<String>,
    },
    /// Prints changes as they happen, until interrupted.
    Watch {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
    },
    /// Prints everything this device holds of a resource: values, members, operations.
    Export {
        /// The resource.
        #[arg(allow_hyphen_values = true)]
        resource: String,
    },
}

fn default_home() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("no HOME: give --home DIR"))?;
    Ok(PathBuf::from(home).join(".zbase"))
}

fn resource(text: &str) -> anyhow::Result<ResourceId> {
    ResourceId::parse(text)
        .map_err(|_| anyhow!("{text:?} is not a resource identifier (43 base64url characters)"))
}

fn member(text: &str) -> anyhow::Result<PublicIdentity> {
    PublicIdentity::parse(text).ok_or_else(|| {
        anyhow!(
            "{text:?} is not a public identity, or its signature does not match its key: ask the member for the output of `zbase whoami`"
        )
    })
}

/// An actor id, or the public identity that starts with one.
fn actor(text: &str) -> anyhow::Result<ActorId> {
    ActorId::parse(text.split('.').next().unwrap_or_default())
        .ok_or_else(|| anyhow!("{text:?} is not an actor id"))
}

fn role(text: &str) -> anyhow::Result<Role> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "owner" => Role::Owner,
        "manager" => Role::Manager,
        "editor" => Role::Editor,
        "viewer" => Role::Viewer,
        "revoked" => Role::Revoked,
        _ => {
            return Err(anyhow!(
                "{text:?} is not a role: owner, manager, editor or viewer (or revoked, with `zbase revoke`)"
            ));
        }
    })
}

/// The largest value `put` takes.
const MAX_VALUE: usize = 1 << 20;

struct Out {
    json: bool,
}

impl Out {
    fn print(&self, human: impl FnOnce() -> String, machine: serde_json::Value) {
        if self.json {
            println!("{machine}");
        } else {
            println!("{}", human());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if json {
                eprintln!("{}", json!({"error": format!("{e:#}")}));
            } else {
                eprintln!("zbase: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = match cli.home {
        Some(home) => home,
        None => default_home()?,
    };
    let out = Out { json: cli.json };
    if let Command::Init = cli.command {
        let public = Device::init(&home).await?;
        out.print(
            || format!("Created an identity in {}.\nYour public identity (give it to whoever shares with you):\n{}", home.display(), public.to_text()),
            json!({"actor": public.id.to_string(), "identity": public.to_text()}),
        );
        return Ok(());
    }
    let ca = cli
        .ca
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading CA file {}", path.display()))
        })
        .transpose()?;
    let device = Device::open(&home, ca).await?;
    match cli.command {
        Command::Init => unreachable!("handled above"),
        Command::Whoami => {
            let public = device.public();
            out.print(
                || public.to_text(),
                json!({"actor": public.id.to_string(), "identity": public.to_text()}),
            );
        }
        Command::Create { station } => {
            let id = device.create(&station).await?;
            out.print(
                || format!("Created {}", id.as_str()),
                json!({"resource": id.as_str(), "station": station}),
            );
        }
        Command::Resources => {
            let ids = device.resources().await?;
            out.print(
                || {
                    ids.iter()
                        .map(|id| id.as_str().to_owned())
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                json!(ids.iter().map(|id| id.as_str()).collect::<Vec<_>>()),
            );
        }
        Command::Put {
            resource: res,
            key,
            value,
            offline,
        } => {
            let id = resource(&res)?;
            if value.len() > MAX_VALUE {
                return Err(anyhow!(
                    "a value of {} bytes is over the limit of {MAX_VALUE}: every snapshot holds every value ever written, and a snapshot must fit in one frame",
                    value.len()
                ));
            }
            let change = Change::Put {
                key: key.clone(),
                value: b64(value.as_bytes()),
            };
            let op = device.record(&id, change).await?;
            changed(&device, &out, &id, op, offline, &format!("Set {key}")).await?;
        }
        Command::Delete {
            resource: res,
            key,
            offline,
        } => {
            let id = resource(&res)?;
            let op = device
                .record(&id, Change::Delete { key: key.clone() })
                .await?;
            changed(&device, &out, &id, op, offline, &format!("Deleted {key}")).await?;
        }
        Command::Get { resource: res, key } => {
            let id = resource(&res)?;
            let values = device.state(&id).await?.values;
            match key {
                Some(key) => {
                    let value = values
                        .get(&key)
                        .ok_or_else(|| anyhow!("no key {key:?} in {res}"))?;
                    let text = String::from_utf8_lossy(value).into_owned();
                    out.print(|| text.clone(), json!({"key": key, "value": text}));
                }
                None => {
                    let map: serde_json::Map<String, serde_json::Value> = values
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
                        .collect();
                    out.print(
                        || {
                            values
                                .iter()
                                .map(|(k, v)| format!("{k}\t{}", String::from_utf8_lossy(v)))
                                .collect::<Vec<_>>()
                                .join("\n")
                        },
                        serde_json::Value::Object(map),
                    );
                }
            }
        }
        Command::Share {
            resource: res,
            member: text,
            role: role_text,
            offline,
        } => {
            let id = resource(&res)?;
            let member = member(&text)?;
            let role = role(&role_text)?;
            if role == Role::Revoked {
                return Err(anyhow!(
                    "to take a role away, use `zbase revoke {res} {}`",
                    member.id
                ));
            }
            let op = device.share(&id, &member, role).await?;
            let me = device.public().to_text();
            let station = device.local().resource(&id).await?.station;
            let message = format!(
                "Shared {res} with {} as {}. They take it up with:\n  zbase join {res} --from {me} --station {station}",
                member.id,
                role.name()
            );
            changed(&device, &out, &id, op, offline, &message).await?;
        }
        Command::Revoke {
            resource: res,
            member: text,
            offline,
        } => {
            let id = resource(&res)?;
            let actor = actor(&text)?;
            let op = device.revoke(&id, &actor).await?;
            changed(&device, &out, &id, op, offline, &format!("Revoked {actor}")).await?;
        }
        Command::Rotate { resource: res } => {
            let id = resource(&res)?;
            let report = device.rotate_keys(&id).await?;
            out.print(
                || format!("{}: {}", id.as_str(), describe(&report)),
                json!({"resource": id.as_str(), "sync": report}),
            );
        }
        Command::Members { resource: res } => {
            let id = resource(&res)?;
            let state = device.state(&id).await?;
            let members: Vec<_> = state
                .acl
                .members()
                .map(|(actor, m)| (actor.to_string(), m.role.name()))
                .collect();
            out.print(
                || {
                    members
                        .iter()
                        .map(|(a, r)| format!("{a}\t{r}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                json!(
                    members
                        .iter()
                        .map(|(a, r)| json!({"actor": a, "role": r}))
                        .collect::<Vec<_>>()
                ),
            );
        }
        Command::Join {
            resource: res,
            from,
            owner,
            station,
        } => {
            let id = resource(&res)?;
            let from = member(&from)?;
            let owner = owner.as_deref().map(actor).transpose()?;
            let report = device.join(&station, &id, &from, owner.as_ref()).await?;
            out.print(
                || format!("Joined {res}: {} operations received", report.received),
                json!({"resource": res, "sync": report}),
            );
        }
        Command::Sync { resource: res } => {
            if let Some(res) = res {
                let id = resource(&res)?;
                let report = device.sync(&id).await?;
                out.print(
                    || format!("{}: {}", id.as_str(), describe(&report)),
                    json!({"resource": id.as_str(), "sync": report}),
                );
                return Ok(());
            }
            // Every resource: one that fails (its station down, access taken away) must not
            // keep the others from syncing. Each failure is reported beside it.
            let ids = device.resources().await?;
            let mut failed = 0;
            for id in &ids {
                match device.sync(id).await {
                    Ok(report) => out.print(
                        || format!("{}: {}", id.as_str(), describe(&report)),
                        json!({"resource": id.as_str(), "sync": report}),
                    ),
                    Err(e) => {
                        failed += 1;
                        out.print(
                            || format!("{}: failed: {e}", id.as_str()),
                            json!({"resource": id.as_str(), "error": e.to_string()}),
                        );
                    }
                }
            }
            if failed > 0 {
                bail!(
                    "{failed} of {} resources did not sync (see above); the others did",
                    ids.len()
                );
            }
        }
        Command::Watch { resource: res } => {
            let id = resource(&res)?;
            device
                .watch(&id, |change| {
                    out.print(
                        || match &change.value {
                            Some(value) => format!("{}\t{value}", change.key),
                            None => format!("{}\t(deleted)", change.key),
                        },
                        json!(change),
                    );
                })
                .await?;
        }
        Command::Export { resource: res } => {
            let id = resource(&res)?;
            let state = device.state(&id).await?;
            let ops = device.operations(&id).await?;
            let export = json!({
                "resource": res,
                "values": state.values.iter().map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v)))).collect::<serde_json::Map<_, _>>(),
                "members": state.acl.members().map(|(a, m)| json!({"actor": a.to_string(), "role": m.role.name()})).collect::<Vec<_>>(),
                "operations": ops.iter().map(|op| b64(op.token())).collect::<Vec<_>>(),
                "rejected": state.rejected.iter().map(|(op, why)| json!({"operation": op.to_string(), "why": format!("{why:?}")})).collect::<Vec<_>>(),
            });
            // Export is for keeping or moving data: always JSON.
            println!("{}", serde_json::to_string_pretty(&export)?);
        }
    }
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    zbase_proto::wire::encode_b64url(bytes)
}

fn describe(report: &SyncReport) -> String {
    let mut text = format!("{} received, {} sent", report.received, report.sent);
    if report.rotated {
        text.push_str(", keys rotated");
    }
    if report.delivered > 0 {
        text.push_str(&format!(", keys sent to {} member(s)", report.delivered));
    }
    for failed in &report.undelivered {
        text.push_str(&format!(
            "; keys not sent to {failed} (retried at the next sync)"
        ));
    }
    if !report.confirmed {
        text.push_str("; other devices kept writing: run `zbase sync` again");
    }
    text
}

/// After a local change: syncs unless offline; an unreachable station leaves the change for
/// the next sync rather than failing.
async fn changed(
    device: &Device,
    out: &Out,
    id: &ResourceId,
    op: zbase_actor::OpId,
    offline: bool,
    what: &str,
) -> anyhow::Result<()> {
    let (synced, detail) = if offline {
        (
            false,
            "saved on this device; `zbase sync` sends it".to_owned(),
        )
    } else {
        match device.sync(id).await {
            Ok(report) => (report.confirmed, describe(&report)),
            Err(SyncError::Station(e @ StationError::Unreachable { .. })) => (
                false,
                format!("saved on this device; not synced ({e}); `zbase sync` sends it"),
            ),
            Err(e) => {
                return Err(e).context(format!("{what}: saved on this device, but sync failed"));
            }
        }
    };
    out.print(
        || format!("{what}\n{detail}"),
        json!({"resource": id.as_str(), "operation": op.to_string(), "synced": synced, "detail": detail}),
    );
    Ok(())
}
