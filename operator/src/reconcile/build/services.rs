//! The three Services: public (the virtual IP), headless (a DNS name per pod, for the
//! internal port), internal (cluster-only admin port for replication and backups).

use super::{
    INTERNAL_PORT, PUBLIC_PORT, REPLICATION_PORT, headless_name, internal_name, metadata,
    replication_name, selector_labels,
};
use crate::reconcile::validate::Station;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The Service port clients use: the spec's, or 443 with TLS and 80 without.
pub fn public_port(station: &Station) -> i32 {
    station
        .service
        .port
        .unwrap_or(if station.tls.is_on() { 443 } else { 80 })
}

pub(super) fn public(station: &Station) -> Service {
    let spec = &station.service;
    let mut meta = metadata(station, &station.name);
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    let is_lb = spec.type_ == "LoadBalancer";
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.clone()),
            selector: Some(selector_labels(station)),
            ports: Some(vec![ServicePort {
                name: Some("public".into()),
                port: public_port(station),
                target_port: Some(IntOrString::String("public".into())),
                node_port: spec.node_port,
                protocol: Some("TCP".into()),
                // WebSocket, gRPC and HTTPS share the port; HTTP/2 needs no appProtocol hint.
                ..Default::default()
            }]),
            load_balancer_ip: spec.load_balancer_ip.clone().filter(|_| is_lb),
            load_balancer_class: spec.load_balancer_class.clone().filter(|_| is_lb),
            external_traffic_policy: spec
                .external_traffic_policy
                .clone()
                .filter(|_| spec.type_ != "ClusterIP"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn headless(station: &Station) -> Service {
    Service {
        metadata: metadata(station, &headless_name(&station.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(station)),
            // Pods must find each other while they start, before they are ready.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![
                port("internal", INTERNAL_PORT),
                port("public", PUBLIC_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn internal(station: &Station) -> Service {
    Service {
        metadata: metadata(station, &internal_name(&station.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(station)),
            ports: Some(vec![port("internal", INTERNAL_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The replication Service, with spec.site: its own address and port, so the other sites
/// (in other clusters) reach it apart from the public port and it can be firewalled to them.
pub(super) fn replication(station: &Station) -> Option<Service> {
    let site = station.site.as_ref()?;
    let spec = &site.replication.service;
    let mut meta = metadata(station, &replication_name(&station.name));
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    Some(Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.clone()),
            selector: Some(selector_labels(station)),
            ports: Some(vec![ServicePort {
                name: Some("replication".into()),
                port: site.replication.port,
                target_port: Some(IntOrString::Int(REPLICATION_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            load_balancer_ip: spec
                .load_balancer_ip
                .clone()
                .filter(|_| spec.type_ == "LoadBalancer"),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}
