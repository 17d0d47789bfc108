//! One round with a site's station, after its objects are applied: carry out the role change
//! the spec asks for (once), then ask the station for its role and lag. What happened is
//! handed to [`super::status`] as a [`SiteObserved`]; nothing here writes status.
//!
//! A role change is done once: status.site records it (the promotion with the request it
//! answered, the demotion's handover token), and a station that answers "already the
//! primary" to a promotion, or "not the primary" to a demotion, is taken at its word, so an
//! answer lost with an operator restart is never a reason to act twice.

use super::build::{REPLICATION_PORT, headless_name};
use super::validate::{Promote, Site, Station};
use crate::crd::BaseStation;
use crate::pki;
use crate::site::{Credentials, Promoted, Reported, Site as Client, SiteError};
use k8s_openapi::api::core::v1::Pod;
use kube::Client as KubeClient;
use kube::api::Api;
use std::net::{IpAddr, SocketAddr};

/// What one round with the station found and did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteObserved {
    /// The station's own report, or why it could not be had.
    pub reported: Option<Result<Reported, String>>,
    /// A promotion made (or found made) in this round, with the request it answered.
    pub promoted: Option<(String, Promoted)>,
    /// A demotion made (or found made) in this round: its handover token.
    pub demoted: Option<String>,
    /// A role change the station refused, with its reason.
    pub refused: Option<String>,
    /// Whether the role change above was found already made (the station said "already the
    /// primary" or "not the primary"): recorded as done, but no Event claims it just happened.
    pub found_done: bool,
}

/// The pod the operator asks about the site's role: the first (the role is one for the
/// whole site, kept in its store, so any pod answers for it).
pub fn site_pod(station: &str) -> String {
    format!("{station}-0")
}

/// Asks the station of `station`, carrying out `site`'s role change if `bs`'s status does not
/// record it done yet.
pub async fn round(
    client: &KubeClient,
    bs: &BaseStation,
    station: &Station,
    site: &Site,
    plan: &pki::Plan,
) -> SiteObserved {
    let mut observed = SiteObserved::default();
    let mut station_client = match connect(client, station, plan).await {
        Ok(c) => c,
        Err(why) => {
            observed.reported = Some(Err(why));
            return observed;
        }
    };
    let old = bs.status.as_ref().and_then(|s| s.site.as_ref());

    if site.demote && old.and_then(|s| s.handover_token.as_ref()).is_none() {
        match station_client.demote().await {
            // A station that handed over answers a repeated demotion with the same token, so
            // a round whose status was lost simply asks again. One fenced because another site
            // is primary in a later epoch refuses: its history is no prefix to promote from.
            Ok((epoch, seq)) => observed.demoted = Some(format!("{epoch}:{seq}")),
            Err(e) => observed.refused = Some(format!("demote: {e}")),
        }
    }
    if let Some(promote) = site.promote {
        let request = promote.request();
        let done = old
            .and_then(|s| s.promotion.as_ref())
            .and_then(|p| p.request.as_deref())
            == Some(request.as_str());
        if !done {
            let token = match promote {
                Promote::Token { epoch, seq } => Some((epoch, seq)),
                Promote::Failover => None,
            };
            match station_client.promote(token).await {
                Ok(promoted) => observed.promoted = Some((request, promoted)),
                // "already the primary": promoted by an earlier round whose answer was lost.
                Err(SiteError::Refused(why)) => match station_client.status().await {
                    Ok(now) if now.role == "primary" => {
                        observed.found_done = true;
                        observed.promoted = Some((
                            request,
                            Promoted {
                                epoch: now.epoch,
                                failover: promote == Promote::Failover,
                            },
                        ));
                    }
                    _ => observed.refused = Some(format!("promote: {why}")),
                },
                Err(e) => observed.refused = Some(format!("promote: {e}")),
            }
        }
    }
    observed.reported = Some(station_client.status().await.map_err(|e| e.to_string()));
    observed
}

/// Dials the site pod's replication port with the site certificate.
async fn connect(
    client: &KubeClient,
    station: &Station,
    plan: &pki::Plan,
) -> Result<Client, String> {
    let pod_name = site_pod(&station.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &station.namespace);
    let pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(|e| format!("reading pod '{pod_name}': {e}"))?
        .ok_or_else(|| format!("pod '{pod_name}' does not exist yet"))?;
    let ip: IpAddr = pod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| format!("pod '{pod_name}' has no IP yet"))?
        .parse()
        .map_err(|e| format!("pod '{pod_name}' has an IP that is not one: {e}"))?;
    let key = |data: &pki::SecretData, key: &str| data.get(key).cloned().unwrap_or_default();
    let credentials = Credentials {
        cert: key(&plan.leaf, pki::TLS_CERT),
        key: key(&plan.leaf, pki::TLS_KEY),
        ca: key(&plan.ca, pki::CA_BUNDLE),
    };
    // A name on the site certificate (the headless Service's wildcard), so the station's
    // certificate is checked in full.
    let name = format!(
        "{pod_name}.{}.{}.svc",
        headless_name(&station.name),
        station.namespace
    );
    let port = u16::try_from(REPLICATION_PORT).unwrap_or(7443);
    Client::connect(SocketAddr::new(ip, port), &name, &credentials)
        .await
        .map_err(|e| e.to_string())
}
