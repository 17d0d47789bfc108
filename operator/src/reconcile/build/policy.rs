//! Disruption and network policy.

use super::{INTERNAL_PORT, PUBLIC_PORT, REPLICATION_PORT, metadata, selector_labels};
use crate::reconcile::validate::Station;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One pod at a time may be evicted. `maxUnavailable` rather than `minAvailable`, so a
/// one-pod station on a one-node k3s can still be drained (a brief outage, which a single pod
/// cannot avoid) instead of blocking the node forever.
pub(super) fn pod_disruption_budget(station: &Station) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(station, &station.name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(station)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The public port from anywhere; the internal port only from this station's own pods (the
/// relay between pods); with spec.site, the replication port from `allowFrom` (anywhere by
/// default: the other sites are outside the cluster) and from the operator, which asks each
/// site for its status and changes its role there.
pub(super) fn network_policy(station: &Station) -> NetworkPolicy {
    let pods = LabelSelector {
        match_labels: Some(selector_labels(station)),
        ..Default::default()
    };
    let port = |n: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(n)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ingress = vec![
        NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![port(PUBLIC_PORT)]),
        },
        NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(pods.clone()),
                ..Default::default()
            }]),
            ports: Some(vec![port(INTERNAL_PORT)]),
        },
    ];
    if let Some(site) = &station.site {
        let from = (!site.replication.allow_from.is_empty()).then(|| {
            let mut peers: Vec<NetworkPolicyPeer> = site
                .replication
                .allow_from
                .iter()
                .map(|cidr| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: cidr.clone(),
                        except: None,
                    }),
                    ..Default::default()
                })
                .collect();
            // The operator, in whichever namespace it runs (its chart's name label).
            peers.push(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(
                        [(
                            "app.kubernetes.io/name".to_owned(),
                            "zbase-operator".to_owned(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            });
            peers
        });
        ingress.push(NetworkPolicyIngressRule {
            from,
            ports: Some(vec![port(REPLICATION_PORT)]),
        });
    }
    NetworkPolicy {
        metadata: metadata(station, &station.name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}
