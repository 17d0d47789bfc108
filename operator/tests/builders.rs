//! Golden tests of the pure builders: each fixture BaseStation in `tests/fixtures/` is
//! validated and built, and every object must equal `tests/golden/<fixture>.yaml`. After an
//! intended change, `ZBASE_BLESS=1 cargo test -p zbase-operator --test builders` rewrites the
//! golden files; review their diff like code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use zbase_operator::crd::BaseStation;
use zbase_operator::reconcile::build::{self, CONFIG_HASH_ANNOTATION, Desired, SiteCredentials};
use zbase_operator::reconcile::validate::{self, Defaults, References, Station};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

fn fixture(name: &str) -> BaseStation {
    let text = std::fs::read_to_string(dir("fixtures").join(format!("{name}.yaml"))).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn defaults() -> Defaults {
    Defaults {
        station_image: "ghcr.io/zbase-dev/zbase-station:0.1.0".into(),
    }
}

/// Every reference a fixture may name exists.
fn all_present() -> References {
    References {
        secrets: [
            ("home-cert", vec!["tls.crt", "tls.key", "ca.crt"]),
            ("relay-db", vec!["url"]),
            ("relay-s3", vec!["access-key-id", "secret-access-key"]),
            ("storage-ca", vec!["ca.crt"]),
            ("home-backup-key", vec!["key.txt"]),
            ("backup-s3", vec!["access-key-id", "secret-access-key"]),
            ("other-sites", vec!["ca.crt", "bundle.crt"]),
        ]
        .into_iter()
        .map(|(n, keys)| (n.to_owned(), keys.into_iter().map(String::from).collect()))
        .collect(),
        cnpg_cluster: Some(true),
        service_addresses: Vec::new(),
        replication_addresses: Vec::new(),
        site_trust: Some(other_sites_ca().into_bytes()),
    }
}

/// The other site's CA certificate, as a user copies it into the trust Secret.
fn other_sites_ca() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/other-sites-ca.pem"))
        .unwrap()
}

/// Site credentials as a plan would hand them over; the bytes stand in for PEM.
fn site() -> SiteCredentials {
    let data = |keys: &[(&str, &str)]| {
        keys.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    };
    SiteCredentials {
        ca: data(&[
            ("ca.crt", "site CA"),
            ("ca.key", "site CA key"),
            ("bundle.crt", "site CA"),
        ]),
        leaf: data(&[
            ("tls.crt", "site certificate"),
            ("tls.key", "site key"),
            ("ca.crt", "site CA"),
        ]),
    }
}

fn built(station: &Station) -> Desired {
    build::build(station, &site()).unwrap()
}

fn station(bs: &BaseStation) -> Station {
    validate::validate(bs, &defaults(), &all_present()).unwrap()
}

fn render(desired: &Desired) -> String {
    let Desired {
        service_account,
        config_map,
        ca_secret,
        leaf_secret,
        public_service,
        headless_service,
        internal_service,
        replication_service,
        replication_trust,
        stateful_set,
        pod_disruption_budget,
        network_policy,
        certificate,
        backup_cron_job,
        config_hash: _,
    } = desired;
    let mut docs = vec![
        serde_yaml::to_string(service_account).unwrap(),
        serde_yaml::to_string(config_map).unwrap(),
        serde_yaml::to_string(ca_secret).unwrap(),
        serde_yaml::to_string(leaf_secret).unwrap(),
        serde_yaml::to_string(public_service).unwrap(),
        serde_yaml::to_string(headless_service).unwrap(),
        serde_yaml::to_string(internal_service).unwrap(),
    ];
    docs.extend(
        replication_service
            .iter()
            .map(|s| serde_yaml::to_string(s).unwrap()),
    );
    docs.extend(
        replication_trust
            .iter()
            .map(|s| serde_yaml::to_string(s).unwrap()),
    );
    docs.push(serde_yaml::to_string(stateful_set).unwrap());
    docs.push(serde_yaml::to_string(pod_disruption_budget).unwrap());
    docs.extend(
        network_policy
            .iter()
            .map(|p| serde_yaml::to_string(p).unwrap()),
    );
    docs.extend(
        certificate
            .iter()
            .map(|c| serde_yaml::to_string(c).unwrap()),
    );
    docs.extend(
        backup_cron_job
            .iter()
            .map(|c| serde_yaml::to_string(c).unwrap()),
    );
    docs.join("---\n")
}

#[test]
fn every_fixture_builds_its_golden_objects() {
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(dir("fixtures")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let desired = built(&station(&fixture(&name)));
        let text = render(&desired);
        let golden = dir("golden").join(format!("{name}.yaml"));
        if std::env::var_os("ZBASE_BLESS").is_some() {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == text => {}
            Ok(_) => failures.push(format!("{name}: differs from {}", golden.display())),
            Err(_) => failures.push(format!("{name}: no golden file {}", golden.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nrun `ZBASE_BLESS=1 cargo test -p zbase-operator --test builders` and review the diff",
        failures.join("\n")
    );
}

#[test]
fn a_config_change_changes_the_pod_template_hash_and_nothing_else_does() {
    let base = fixture("minimal");
    let hash = |bs: &BaseStation| {
        let desired = built(&station(bs));
        let annotations = desired
            .stateful_set
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], desired.config_hash);
        desired.config_hash
    };
    let original = hash(&base);

    let mut tuned = base.clone();
    tuned.spec.station.peers_per_resource = Some(10);
    assert_ne!(hash(&tuned), original, "a station setting is in the file");

    let mut scaled = base.clone();
    scaled
        .spec
        .service
        .annotations
        .insert("a".into(), "b".into());
    scaled.spec.pod_labels.insert("x".into(), "y".into());
    scaled.metadata.generation = Some(9);
    assert_eq!(
        hash(&scaled),
        original,
        "service and pod metadata are not configuration"
    );
}

#[test]
fn the_rendered_config_is_one_the_station_reads() {
    for name in [
        "minimal",
        "sqlite-tls-secret",
        "postgres-three-pods",
        "acme-nodeport",
        "site-primary",
        "site-replica",
    ] {
        let desired = built(&station(&fixture(name)));
        let text = &desired.config_map.data.unwrap()[build::CONFIG_KEY];
        let raw = zbase_basestation::config::RawSettings::from_yaml(text)
            .unwrap_or_else(|e| panic!("{name}: the station refuses its config: {e}\n{text}"));
        assert_eq!(raw.listen.unwrap().port() as i32, build::PUBLIC_PORT);
        assert_eq!(
            raw.internal_listen.unwrap().port() as i32,
            build::INTERNAL_PORT
        );
        assert!(
            !text.contains("postgres://"),
            "no database URL (it may hold a password) in a ConfigMap"
        );
    }
}

#[test]
fn stopping_scales_to_zero_and_keeps_the_claims_policy() {
    let s = station(&fixture("cloudnativepg-stopped"));
    assert_eq!(s.replicas, 0);
    let desired = built(&s);
    assert_eq!(
        desired.stateful_set.spec.as_ref().unwrap().replicas,
        Some(0)
    );
    assert!(desired.network_policy.is_none());
    let env = desired
        .stateful_set
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    let store = env.iter().find(|e| e.name == "ZBASE_STORE").unwrap();
    let secret = store
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("lab-db-app", "uri")
    );
}

#[test]
fn volumes_are_retained_by_default_and_deleted_only_when_asked() {
    let policy = |name: &str| {
        built(&station(&fixture(name)))
            .stateful_set
            .spec
            .unwrap()
            .persistent_volume_claim_retention_policy
            .unwrap()
    };
    let kept = policy("minimal");
    assert_eq!(kept.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(kept.when_scaled.as_deref(), Some("Retain"));
    assert_eq!(
        policy("sqlite-tls-secret").when_deleted.as_deref(),
        Some("Delete")
    );
}

#[test]
fn pod_overrides_reach_the_container_and_cannot_break_the_selector() {
    let mut bs = fixture("postgres-three-pods");
    let desired = built(&station(&bs));
    let pod = desired.stateful_set.spec.unwrap().template;
    let spec = pod.spec.unwrap();
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let env = spec.containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "RUST_BACKTRACE"));
    assert!(
        env.iter().any(|e| e.name == "ZBASE_POD_ID"),
        "the built env is kept"
    );

    bs.spec.pod_overrides =
        Some(serde_json::json!({"metadata": {"labels": {"app.kubernetes.io/instance": "other"}}}));
    let labels = built(&station(&bs))
        .stateful_set
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels["app.kubernetes.io/instance"], "relay");

    bs.spec.pod_overrides = Some(serde_json::json!({"spec": {"containers": "not a list"}}));
    let Err(err) = build::build(&station(&bs), &site()) else {
        panic!("a pod template of the wrong shape must be refused")
    };
    assert!(err.to_string().contains("spec.podOverrides"), "{err}");
}

fn problems(bs: &BaseStation, refs: &References) -> String {
    validate::validate(bs, &defaults(), refs)
        .unwrap_err()
        .to_string()
}

#[test]
fn invalid_specs_are_refused_with_what_to_change() {
    let mut sqlite3 = fixture("minimal");
    sqlite3.spec.replicas = 3;
    let message = problems(&sqlite3, &all_present());
    assert!(
        message.contains("spec.replicas is 3 but the store is SQLite"),
        "{message}"
    );
    assert!(message.contains("set spec.store.postgres"), "{message}");

    let mut two_certs = fixture("sqlite-tls-secret");
    two_certs.spec.tls.acme = fixture("acme-nodeport").spec.tls.acme;
    assert!(problems(&two_certs, &all_present()).contains("more than one certificate source"));

    let mut acme3 = fixture("postgres-three-pods");
    acme3.spec.tls = fixture("acme-nodeport").spec.tls;
    assert!(problems(&acme3, &all_present()).contains("use tls.certManager for several pods"));

    let mut bad = fixture("minimal");
    bad.spec.storage.size = "lots".into();
    bad.spec.station.handshake_timeout = Some("soon".into());
    bad.spec.service.type_ = "Ingress".into();
    let message = problems(&bad, &all_present());
    for part in [
        "storage.size 'lots'",
        "station.handshakeTimeout 'soon'",
        "service.type is 'Ingress'",
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }

    let mut long = fixture("minimal");
    long.metadata.name = Some("x".repeat(53));
    assert!(problems(&long, &all_present()).contains("at most 52"));
}

#[test]
fn invalid_backups_are_refused_with_what_to_change() {
    let mut bs = fixture("sqlite-tls-secret");
    let backup = bs.spec.backup.as_mut().unwrap();
    backup.schedule = "daily".into();
    backup.recipients.push("age1notakey".into());
    backup.keep_within = Some("a month".into());
    backup.keep_last = Some(0);
    backup.volume.as_mut().unwrap().sub_path = Some("../elsewhere".into());
    let message = problems(&bs, &all_present());
    for part in [
        "backup.schedule 'daily' is not a cron schedule",
        "backup.recipients[1]",
        "backup.keepWithin 'a month' is not a duration",
        "backup.keepLast is 0",
        "backup.volume.subPath '../elsewhere' must be a relative path",
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    assert!(
        !message.contains("backup.recipients[0]"),
        "the good recipient passes: {message}"
    );

    let mut both = fixture("sqlite-tls-secret");
    both.spec.backup.as_mut().unwrap().s3 = fixture("postgres-three-pods").spec.backup.unwrap().s3;
    assert!(problems(&both, &all_present()).contains("exactly one destination"));
    let mut neither = fixture("sqlite-tls-secret");
    neither.spec.backup.as_mut().unwrap().volume = None;
    assert!(problems(&neither, &all_present()).contains("exactly one destination"));

    let mut s3 = fixture("postgres-three-pods");
    let dest = s3.spec.backup.as_mut().unwrap().s3.as_mut().unwrap();
    dest.url = "s3://".into();
    dest.endpoint = Some("minio:9000".into());
    let message = problems(&s3, &all_present());
    assert!(message.contains("backup.s3.url"), "{message}");
    assert!(
        message.contains("backup.s3.endpoint 'minio:9000' is not an http(s):// URL"),
        "{message}"
    );

    let only_db = References {
        secrets: [
            ("relay-db".to_owned(), vec!["url".to_owned()]),
            ("relay-s3".to_owned(), vec!["access-key-id".to_owned()]),
        ]
        .into(),
        ..Default::default()
    };
    let message = problems(&fixture("postgres-three-pods"), &only_db);
    assert!(
        message.contains("backup.s3.credentialsSecret names Secret 'relay-s3', which has no key 'secret-access-key'"),
        "{message}"
    );
    assert!(
        message.contains("backup.s3.ca names Secret 'storage-ca', which does not exist"),
        "{message}"
    );
    assert_eq!(
        validate::referenced_secrets(&fixture("postgres-three-pods")),
        ["relay-db", "relay-s3", "storage-ca"],
        "the operator watches the Secrets a backup reads"
    );
}

#[test]
fn a_restore_needs_a_backup_name_its_destination_and_the_key() {
    let mut bs = fixture("sqlite-tls-secret");
    bs.spec.restore.as_mut().unwrap().backup = "backups/zbase-20261201T023000Z-4711".into();
    bs.spec.backup = None;
    let message = problems(&bs, &References::default());
    for part in [
        "restore.backup 'backups/zbase-20261201T023000Z-4711' is not a backup's name",
        "restore reads the backup from spec.backup's destination",
        "restore.identitySecret names Secret 'home-backup-key', which does not exist",
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    // Without spec.restore, no init container and no identity.
    let mut plain = fixture("sqlite-tls-secret");
    plain.spec.restore = None;
    let pod = built(&station(&plain))
        .stateful_set
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert!(pod.init_containers.is_none());
    assert!(
        !pod.volumes
            .unwrap()
            .iter()
            .any(|v| v.name == "restore-identity"),
        "no private key is mounted when nothing is restored"
    );
}

/// The backup CronJob's only pod template.
fn backup_pod(desired: &Desired) -> k8s_openapi::api::core::v1::PodSpec {
    let cron = desired
        .backup_cron_job
        .clone()
        .expect("spec.backup builds a CronJob");
    let spec = cron.spec.unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    spec.job_template.spec.unwrap().template.spec.unwrap()
}

#[test]
fn the_backup_job_reads_pod_zeros_volume_on_its_node_and_is_no_station_pod() {
    let desired = built(&station(&fixture("sqlite-tls-secret")));
    let selector = desired
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    let cron = desired.backup_cron_job.clone().unwrap();
    let labels = cron
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    assert!(
        selector.iter().any(|(k, v)| labels.get(k) != Some(v)),
        "a backup pod must not be counted as a station pod: {labels:?}"
    );
    let pod = backup_pod(&desired);
    let claims: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
        .collect();
    assert_eq!(claims, ["data-home-0", "home-backups"]);
    let term = &pod
        .affinity
        .unwrap()
        .pod_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()[0];
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["statefulset.kubernetes.io/pod-name"],
        "home-0"
    );

    // A stopped station runs no pod to be beside; its volume is free.
    let mut stopped = fixture("sqlite-tls-secret");
    stopped.spec.replicas = 0;
    assert!(backup_pod(&built(&station(&stopped))).affinity.is_none());

    // PostgreSQL: the store's Secret, no volume of the station's, and no affinity.
    let pod = backup_pod(&built(&station(&fixture("postgres-three-pods"))));
    assert!(pod.affinity.is_none());
    let env = pod.containers[0].env.clone().unwrap();
    let store = env.iter().find(|e| e.name == "ZBASE_STORE").unwrap();
    assert_eq!(
        store
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "relay-db"
    );
    assert!(
        !pod.volumes
            .iter()
            .flatten()
            .any(|v| v.persistent_volume_claim.is_some())
    );

    let mut no_backup = fixture("postgres-three-pods");
    no_backup.spec.backup = None;
    assert!(built(&station(&no_backup)).backup_cron_job.is_none());
}

#[test]
fn missing_references_are_named() {
    let none = References::default();
    let message = problems(&fixture("sqlite-tls-secret"), &none);
    assert!(
        message.contains("tls.secretName names Secret 'home-cert', which does not exist"),
        "{message}"
    );

    let wrong_key = References {
        secrets: [("relay-db".to_owned(), vec!["uri".to_owned()])].into(),
        ..Default::default()
    };
    let message = problems(&fixture("postgres-three-pods"), &wrong_key);
    assert!(
        message.contains("has no key 'url' (it has: uri)"),
        "{message}"
    );

    let message = problems(
        &fixture("cloudnativepg-stopped"),
        &References {
            cnpg_cluster: None,
            ..Default::default()
        },
    );
    assert!(
        message.contains("CloudNativePG is not installed"),
        "{message}"
    );
    let message = problems(
        &fixture("cloudnativepg-stopped"),
        &References {
            cnpg_cluster: Some(false),
            ..Default::default()
        },
    );
    assert!(
        message.contains("Cluster 'lab-db', which does not exist"),
        "{message}"
    );
}

#[test]
fn every_deploy_example_validates_and_builds() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut seen = 0;
    let examples: Vec<PathBuf> = std::fs::read_dir(&deploy)
        .unwrap()
        .flat_map(|example| {
            let dir = example.unwrap().path();
            ["basestation.yaml", "primary.yaml", "replica.yaml"].map(|file| dir.join(file))
        })
        .filter(|path| path.is_file())
        .collect();
    for path in examples {
        let mut bs: BaseStation = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bs.metadata.namespace = Some("zbase".into());
        bs.metadata.uid = Some("uid".into());
        let refs = References {
            cnpg_cluster: Some(true),
            ..all_present()
        };
        let station = validate::validate(&bs, &defaults(), &refs)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        built(&station);
        seen += 1;
    }
    assert!(
        seen >= 5,
        "the deploy examples were not found under {}",
        deploy.display()
    );
}

fn config_of(desired: &Desired) -> zbase_basestation::config::RawSettings {
    let text = &desired.config_map.data.as_ref().unwrap()[build::CONFIG_KEY];
    zbase_basestation::config::RawSettings::from_yaml(text).unwrap()
}

#[test]
fn by_default_the_site_certificate_serves_both_ports() {
    let desired = built(&station(&fixture("minimal")));
    let config = config_of(&desired);
    let site = |key: &str| {
        Some(std::path::PathBuf::from(format!(
            "/etc/zbase/site-tls/{key}"
        )))
    };
    assert_eq!(config.tls_cert, site("tls.crt"));
    assert_eq!(config.tls_key, site("tls.key"));
    assert_eq!(config.internal_tls_cert, site("tls.crt"));
    assert_eq!(config.internal_tls_key, site("tls.key"));
    assert_eq!(config.internal_ca, site("ca.crt"));
    let secret_volumes: Vec<String> = desired
        .stateful_set
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .filter_map(|v| v.secret.and_then(|s| s.secret_name))
        .collect();
    assert_eq!(secret_volumes, ["home-tls"]);
    assert_eq!(
        desired.leaf_secret.type_.as_deref(),
        Some("kubernetes.io/tls")
    );
    assert_eq!(
        desired.leaf_secret.data.as_ref().unwrap()["tls.crt"].0,
        b"site certificate"
    );
}

#[test]
fn plain_http_and_other_sources_keep_mutual_tls_inside() {
    let mut plain = fixture("minimal");
    plain.spec.tls.plain_http = true;
    let config = config_of(&built(&station(&plain)));
    assert_eq!(config.tls_cert, None, "plain HTTP on the public port");
    assert!(config.internal_ca.is_some(), "mutual TLS stays on inside");

    let desired = built(&station(&fixture("sqlite-tls-secret")));
    let config = config_of(&desired);
    assert_eq!(
        config.tls_cert.as_deref(),
        Some(Path::new("/etc/zbase/tls/tls.crt")),
        "the user's Secret is served publicly"
    );
    assert_eq!(
        config.internal_tls_cert.as_deref(),
        Some(Path::new("/etc/zbase/site-tls/tls.crt")),
        "the site certificate inside"
    );
}

#[test]
fn the_site_ca_outlives_the_station_unless_its_volumes_go_too() {
    let kept = built(&station(&fixture("minimal")));
    assert!(kept.ca_secret.metadata.owner_references.is_none());
    assert!(
        kept.ca_secret.metadata.labels.as_ref().unwrap()[build::INSTANCE_LABEL] == "home",
        "labelled, so it is found"
    );
    assert!(kept.leaf_secret.metadata.owner_references.is_some());
    let deleted = built(&station(&fixture("sqlite-tls-secret")));
    assert!(deleted.ca_secret.metadata.owner_references.is_some());
}

#[test]
fn site_names_cover_the_services_the_pods_and_what_the_user_adds() {
    let mut bs = fixture("minimal");
    bs.spec.tls.names = vec!["zbase.example.org".into(), "192.0.2.7".into()];
    let refs = References {
        service_addresses: vec!["198.51.100.4".into(), "not a name!".into()],
        ..all_present()
    };
    let names = validate::validate(&bs, &defaults(), &refs)
        .unwrap()
        .site_names;
    assert_eq!(
        names[0], "zbase.example.org",
        "the user's first name is the CN"
    );
    for expected in [
        "192.0.2.7",
        "198.51.100.4",
        "home.zbase.svc",
        "home-internal.zbase.svc",
        "*.home-pods.zbase.svc",
        "*.home-pods.zbase.svc.cluster.local",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "not a name!"),
        "a load balancer's odd answer is dropped"
    );

    bs.spec.tls.names = vec!["bad name".into()];
    let message = problems(&bs, &all_present());
    assert!(message.contains("tls.names[0]: 'bad name'"), "{message}");

    let mut elsewhere = fixture("sqlite-tls-secret");
    elsewhere.spec.tls.names = vec!["zbase.example.org".into()];
    let message = problems(&elsewhere, &all_present());
    assert!(
        message.contains("tls.names are for the certificate the operator issues"),
        "{message}"
    );
}

#[test]
fn a_site_spec_that_cannot_work_is_refused_with_what_to_change() {
    // A primary of several pods on PostgreSQL is a site like any other.
    let mut primary_pods = fixture("postgres-three-pods");
    primary_pods.spec.site = fixture("site-primary").spec.site.clone();
    assert!(validate::validate(&primary_pods, &defaults(), &all_present()).is_ok());

    let replica = fixture("site-replica");
    let mut on_postgres = fixture("postgres-three-pods");
    on_postgres.spec.site = replica.spec.site.clone();
    let message = problems(&on_postgres, &all_present());
    assert!(
        message.contains("replica site caches in its own SQLite file"),
        "{message}"
    );

    let mut promote_primary = fixture("site-primary");
    let site = promote_primary.spec.site.as_mut().unwrap();
    site.promote = Some(zbase_operator::crd::PromoteSpec {
        failover: true,
        ..Default::default()
    });
    site.demote = true;
    let message = problems(&promote_primary, &all_present());
    assert!(
        message.contains("site.promote is for a replica site"),
        "{message}"
    );
    assert!(message.contains("exclude each other"), "{message}");

    let mut both = replica.clone();
    both.spec.site.as_mut().unwrap().promote = Some(zbase_operator::crd::PromoteSpec {
        token: Some("1:42".into()),
        failover: true,
    });
    assert!(problems(&both, &all_present()).contains("exactly one of token"));

    let mut malformed = replica.clone();
    let site = malformed.spec.site.as_mut().unwrap();
    site.promote = Some(zbase_operator::crd::PromoteSpec {
        token: Some("1-42".into()),
        failover: false,
    });
    site.replica_of = Some("east.example.org:7443".into());
    site.sites = vec!["https://east.example.org/feed".into()];
    site.replication.allow_from = vec!["10.0.0.0/40".into()];
    let message = problems(&malformed, &all_present());
    for expected in [
        "site.promote.token: \"1-42\" is not a handover token",
        "site.replicaOf 'east.example.org:7443' is not",
        "site.sites[0] 'https://east.example.org/feed' is not",
        "site.replication.allowFrom[0] '10.0.0.0/40' is not a CIDR",
    ] {
        assert!(message.contains(expected), "{expected} in {message}");
    }

    let garbage = References {
        site_trust: Some(b"not a certificate".to_vec()),
        ..all_present()
    };
    assert!(
        problems(&replica, &garbage).contains("holds no PEM certificate"),
        "a trust bundle that is not one is refused before any pod mounts it"
    );
}

#[test]
fn a_site_without_its_trust_secret_still_builds_trusting_its_own_ca() {
    let replica = fixture("site-replica");
    let missing = References {
        secrets: Default::default(),
        site_trust: None,
        ..all_present()
    };
    let station = validate::validate(&replica, &defaults(), &missing).unwrap();
    let site = station.site.as_ref().unwrap();
    let why = site.trust_missing.as_deref().unwrap();
    assert!(
        why.contains("Secret 'other-sites', which does not exist") && why.contains("bundle.crt"),
        "{why}"
    );
    let trust = built(&station).replication_trust.unwrap();
    assert_eq!(
        trust.data.unwrap()[build::REPLICATION_TRUST_KEY].0,
        b"site CA",
        "this site's own CA only, until the others' are given"
    );

    // Given, the others' CAs follow this site's own.
    let with = built(&self::station(&replica)).replication_trust.unwrap();
    let bundle =
        String::from_utf8(with.data.unwrap()[build::REPLICATION_TRUST_KEY].0.clone()).unwrap();
    assert!(
        bundle.starts_with("site CA\n") && bundle.ends_with(&other_sites_ca()),
        "{bundle}"
    );
}

#[test]
fn a_site_certificate_names_the_replication_service_and_its_address() {
    let primary = fixture("site-primary");
    let refs = References {
        replication_addresses: vec!["203.0.113.77".into()],
        ..all_present()
    };
    let names = validate::site_names("east", "zbase", &primary.spec, &refs);
    for name in ["203.0.113.77", "203.0.113.10", "east-replication.zbase.svc"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let plain = validate::site_names("home", "zbase", &fixture("minimal").spec, &refs);
    assert!(!plain.iter().any(|n| n == "203.0.113.77"), "{plain:?}");
}
