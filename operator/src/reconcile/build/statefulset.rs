//! The StatefulSet: the pods, their container and volumes.

use super::config::{DATA_DIR, REPLICATION_PORT, REPLICATION_TRUST_DIR, SITE_TLS_DIR, TLS_DIR};
use super::{
    BuildError, CONFIG_FILE, CONFIG_HASH_ANNOTATION, CONFIG_KEY, INTERNAL_PORT, PUBLIC_PORT,
    config_name, headless_name, merge_pod_template, metadata, selector_labels,
};
use crate::pki;
use crate::reconcile::validate::{DataVolume, Station, Store};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The station container's name (pod overrides address it by this name).
pub const CONTAINER: &str = "station";
/// The non-root user the station runs as (distroless `nonroot`).
const USER: i64 = 65532;

pub(super) fn stateful_set(
    station: &Station,
    config_hash: &str,
) -> Result<StatefulSet, BuildError> {
    let selector = selector_labels(station);
    let template = pod_template(station, config_hash)?;
    let (claims, retention) = match &station.volume {
        DataVolume::Claim {
            size,
            storage_class_name,
            when_deleted,
        } => (
            Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(selector.clone()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(size.clone()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            // Kubernetes keeps or deletes the claims itself, so no finalizer is needed; a
            // scale-down never deletes data.
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(when_deleted.clone()),
                when_scaled: Some("Retain".into()),
            }),
        ),
        DataVolume::Scratch => (None, None),
    };
    Ok(StatefulSet {
        metadata: metadata(station, &station.name),
        spec: Some(StatefulSetSpec {
            replicas: Some(station.replicas),
            service_name: Some(headless_name(&station.name)),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // Pods are peers that find each other through the database; none waits for another.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            template,
            volume_claim_templates: claims,
            persistent_volume_claim_retention_policy: retention,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn pod_template(station: &Station, config_hash: &str) -> Result<PodTemplateSpec, BuildError> {
    let mut labels = station.pod_labels.clone();
    labels.extend(selector_labels(station));
    let mut annotations = station.pod_annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned());

    let scheme = if station.tls.is_on() { "HTTPS" } else { "HTTP" };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("public".into()),
            scheme: Some(scheme.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_name(&station.name),
            items: Some(vec![KeyToPath {
                key: CONFIG_KEY.into(),
                path: CONFIG_KEY.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: parent(CONFIG_FILE).into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        },
    ];
    if station.volume == DataVolume::Scratch {
        volumes.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    // The whole Secret, not items: Kubernetes then swaps its `..data` link on renewal, which
    // the station's reload watches for.
    let mut mount_secret = |name: &str, secret: String, dir: &str| {
        volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
    };
    mount_secret(
        "site-tls",
        pki::leaf_secret_name(&station.name),
        SITE_TLS_DIR,
    );
    if let Some(secret) = station.tls.secret_name() {
        mount_secret("tls", secret.to_owned(), TLS_DIR);
    }
    if station.site.is_some() {
        mount_secret(
            "replication-trust",
            super::replication_trust_name(&station.name),
            REPLICATION_TRUST_DIR,
        );
    }

    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: "ZBASE_POD_ID".into(),
            value_from: Some(field("metadata.name")),
            ..Default::default()
        },
        EnvVar {
            name: "POD_NAMESPACE".into(),
            value_from: Some(field("metadata.namespace")),
            ..Default::default()
        },
        // Other pods dial this pod by its stable DNS name under the headless Service.
        EnvVar {
            name: "ZBASE_INTERNAL_ADVERTISE".into(),
            value: Some(format!(
                "$(ZBASE_POD_ID).{}.$(POD_NAMESPACE).svc:{INTERNAL_PORT}",
                headless_name(&station.name)
            )),
            ..Default::default()
        },
    ];
    env.extend(store_env(station));

    let container_port = |name: &str, number: i32| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ports = vec![
        container_port("public", PUBLIC_PORT),
        container_port("internal", INTERNAL_PORT),
    ];
    if station.site.is_some() {
        ports.push(container_port("replication", REPLICATION_PORT));
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(station.image.clone()),
        image_pull_policy: Some(station.image_pull_policy.clone()),
        args: Some(vec!["serve".into(), "--config".into(), CONFIG_FILE.into()]),
        env: Some(env),
        ports: Some(ports),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: station.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let init_containers = super::backup::restore_container(station, &mut volumes).map(|c| vec![c]);

    let scheduling = &station.scheduling;
    let spec = PodSpec {
        // The station's own drain, plus time for the kubelet to deliver SIGTERM and log.
        termination_grace_period_seconds: Some(
            i64::try_from(station.shutdown_grace.as_secs()).unwrap_or(i64::MAX / 2) + 5,
        ),
        init_containers,
        containers: vec![container],
        volumes: Some(volumes),
        affinity: Some(
            scheduling
                .affinity
                .clone()
                .unwrap_or_else(|| spread_over_nodes(station)),
        ),
        topology_spread_constraints: (!scheduling.topology_spread_constraints.is_empty())
            .then(|| scheduling.topology_spread_constraints.clone()),
        ..pod_base(station)
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(spec),
    };
    match &station.pod_overrides {
        None => Ok(template),
        Some(overrides) => {
            let mut value = serde_json::to_value(&template)
                .map_err(|e| BuildError::PodOverrides(e.to_string()))?;
            merge_pod_template(&mut value, overrides);
            let merged: PodTemplateSpec = serde_json::from_value(value)
                .map_err(|e| BuildError::PodOverrides(e.to_string()))?;
            // The selector labels are how the StatefulSet finds its pods: not overridable.
            let mut merged = merged;
            let meta = merged.metadata.get_or_insert_with(Default::default);
            meta.labels
                .get_or_insert_with(Default::default)
                .extend(selector_labels(station));
            Ok(merged)
        }
    }
}

/// The `ZBASE_STORE` variable of a PostgreSQL store, from its Secret (never in a ConfigMap).
pub(super) fn store_env(station: &Station) -> Option<EnvVar> {
    let Store::Postgres { secret, key } = &station.store else {
        return None;
    };
    Some(EnvVar {
        name: "ZBASE_STORE".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.clone(),
                key: key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What every pod the operator runs for `station` shares, station or backup: its identity
/// (no API token: none of them calls the API), restricted security, pull secrets, and the
/// spec's node selector, tolerations and priority.
pub(super) fn pod_base(station: &Station) -> PodSpec {
    let scheduling = &station.scheduling;
    PodSpec {
        service_account_name: Some(station.name.clone()),
        automount_service_account_token: Some(false),
        // Service environment variables are noise to the station and grow with the namespace.
        enable_service_links: Some(false),
        security_context: Some(pod_security()),
        image_pull_secrets: pull_secrets(station),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        priority_class_name: scheduling.priority_class_name.clone(),
        ..Default::default()
    }
}

/// Restricted pod security for every container the operator runs: no privilege, nothing
/// writable but volumes, no capabilities.
pub(super) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod-level half of [`container_security`]: the non-root user, and seccomp.
pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(USER),
        run_as_group: Some(USER),
        fs_group: Some(USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The image pull Secrets, as the pod spec wants them.
pub(super) fn pull_secrets(station: &Station) -> Option<Vec<LocalObjectReference>> {
    (!station.image_pull_secrets.is_empty()).then(|| {
        station
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// Prefer one pod per node, without refusing to schedule on a one-node k3s.
fn spread_over_nodes(station: &Station) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(station)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(dir, _)| dir)
}
