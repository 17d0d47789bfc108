//! The operator's Helm chart (`charts/zbase-operator`), linted and rendered by the real Helm
//! engine (Helm's Go SDK through `tests/helm/helm.py`; `make helm-venv` provides it): what a
//! plain install creates, the RBAC the operator's contract needs and nothing more, the
//! restricted pod security, each value doing what values.yaml says, and typos refused.
//!
//! Still to come, with the operator: the rendered Deployment's command starts the real
//! operator binary (against a stand-in API server).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};
use zbase_tests::helm::{Chart, Rendered, chart_dir, workspace_root, yaml_documents};

const NS: &str = "zbase-system";
const CRD_FILE: &str = "files/crds/basestations.zbase.dev.yaml";

/// What server-side apply and pruning need.
const APPLY: &[&str] = &[
    "get", "list", "watch", "create", "patch", "update", "delete",
];

/// The operator's contract: every (API group, resource) it touches, with exactly these verbs.
const STATION_RULES: &[(&str, &str, &[&str])] = &[
    ("zbase.dev", "basestations", &["get", "list", "watch"]),
    (
        "zbase.dev",
        "basestations/status",
        &["get", "patch", "update"],
    ),
    ("zbase.dev", "basestations/finalizers", &["update"]),
    ("apps", "statefulsets", APPLY),
    ("", "services", APPLY),
    ("", "configmaps", APPLY),
    ("", "secrets", APPLY),
    ("", "serviceaccounts", APPLY),
    ("policy", "poddisruptionbudgets", APPLY),
    ("networking.k8s.io", "networkpolicies", APPLY),
    ("batch", "cronjobs", APPLY),
    ("cert-manager.io", "certificates", APPLY),
    ("", "persistentvolumeclaims", &["list", "delete"]),
    ("postgresql.cnpg.io", "clusters", &["get", "list", "watch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
    ("", "events", &["create", "patch"]),
];

type Grants = BTreeMap<(String, String), BTreeSet<String>>;

fn expected(rules: &[(&str, &str, &[&str])]) -> Grants {
    rules
        .iter()
        .map(|(group, resource, verbs)| {
            (
                (group.to_string(), resource.to_string()),
                verbs.iter().map(|verb| verb.to_string()).collect(),
            )
        })
        .collect()
}

/// What a Role or ClusterRole grants, per (API group, resource).
fn grants(role: &Value) -> Grants {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {value}"))
            .iter()
            .map(|item| item.as_str().unwrap().to_owned())
            .collect()
    };
    let mut grants = Grants::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                grants
                    .entry((group.clone(), resource))
                    .or_default()
                    .extend(strings(&rule["verbs"]));
            }
        }
    }
    grants
}

fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings_in(item, out)),
        Value::Object(map) => map.values().for_each(|item| strings_in(item, out)),
        _ => {}
    }
}

/// No wildcard in any rule, and nothing bound to cluster-admin (or any role but ours).
fn assert_least_privilege(rendered: &Rendered) {
    for kind in ["Role", "ClusterRole"] {
        for role in rendered.all(kind) {
            let mut words = Vec::new();
            strings_in(&role["rules"], &mut words);
            assert!(
                !words.iter().any(|word| word.contains('*')),
                "a wildcard in {kind} {}: {words:?}",
                role["metadata"]["name"]
            );
            assert!(role.get("aggregationRule").is_none(), "{role}");
        }
    }
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        for binding in rendered.all(kind) {
            let role = binding["roleRef"]["name"].as_str().unwrap();
            assert_ne!(role, "cluster-admin");
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
            assert!(
                rendered.find(role_kind, role).is_some(),
                "{kind} {} binds {role_kind} {role}, which the chart does not define",
                binding["metadata"]["name"]
            );
        }
    }
    let mut words = Vec::new();
    for object in &rendered.objects {
        strings_in(&object.value, &mut words);
    }
    assert!(!words.iter().any(|word| word.contains("cluster-admin")));
}

/// The leader-election Role: leases only, in the release namespace, only this release's
/// Lease apart from `create` (which cannot be limited to a name).
fn assert_leader_election(rendered: &Rendered, lease: &str) {
    let role = rendered
        .find_in("Role", NS, "zbase-operator-leader-election")
        .unwrap_or_else(|| panic!("no leader-election Role in {NS}:\n{}", rendered.summary()));
    assert_eq!(
        grants(role),
        expected(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"]
        )])
    );
    for rule in role["rules"].as_array().unwrap() {
        if rule["verbs"] != json!(["create"]) {
            assert_eq!(rule["resourceNames"], json!([lease]), "{rule}");
        }
    }
    let binding = rendered
        .find_in("RoleBinding", NS, "zbase-operator-leader-election")
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], "zbase-operator-leader-election");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "zbase-operator", "namespace": NS}])
    );
}

fn args(rendered: &Rendered) -> Vec<String> {
    let container = rendered.operator_container().unwrap();
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_owned())
        .collect()
}

/// The value of `--flag=value` among the operator's arguments.
fn flag(rendered: &Rendered, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args(rendered)
        .iter()
        .find_map(|arg| arg.strip_prefix(&prefix).map(str::to_owned))
}

fn deploy_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("deploy"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("values.yaml"))
        .filter(|file| file.exists())
        .collect();
    files.sort();
    files
}

#[test]
fn lint_is_clean_with_strict_on_oldest_and_newest_kubernetes() {
    let chart = Chart::operator();
    for lint in [
        chart.lint().unwrap(),
        chart.lint_for("v1.28.0").unwrap(),
        chart.lint_for("v1.36.0").unwrap(),
    ] {
        assert!(lint.is_clean(), "helm lint --strict:\n{lint}");
    }
}

#[test]
fn defaults_install_the_operator_crd_and_rbac_and_nothing_optional() {
    let rendered = Chart::operator().render().unwrap();
    let kinds: BTreeSet<&str> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .into();
    assert_eq!(rendered.kinds(), kinds, "{}", rendered.summary());
    assert!(rendered.all("ServiceMonitor").is_empty());
    assert!(rendered.all("NetworkPolicy").is_empty());

    let crd = rendered
        .get("CustomResourceDefinition", "basestations.zbase.dev")
        .unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(crd["spec"]["group"], "zbase.dev");
    assert_eq!(crd["spec"]["names"]["kind"], "BaseStation");
    assert_eq!(crd["spec"]["scope"], "Namespaced");

    let deployment = rendered.get("Deployment", "zbase-operator").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "zbase-operator");
    rendered.get("ServiceAccount", "zbase-operator").unwrap();

    // Every object but the cluster-scoped ones lives in the release namespace, and every
    // object the chart owns carries the standard labels (the CRD is the generated file as is).
    for object in &rendered.objects {
        let kind = object.kind();
        if [
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
        .contains(&kind)
        {
            assert_eq!(object.namespace(), "", "{kind} {}", object.name());
        } else {
            assert_eq!(object.namespace(), NS, "{kind} {}", object.name());
        }
        if kind == "CustomResourceDefinition" {
            continue;
        }
        let labels = &object.value["metadata"]["labels"];
        for (key, value) in [
            ("app.kubernetes.io/name", "zbase-operator"),
            ("app.kubernetes.io/instance", "zbase"),
            ("app.kubernetes.io/version", "0.1.0"),
            ("app.kubernetes.io/managed-by", "Helm"),
            ("helm.sh/chart", "zbase-operator-0.1.0"),
        ] {
            assert_eq!(labels[key], value, "{key} on {kind} {}", object.name());
        }
    }

    // The metrics Service reaches the operator's pods on its named port.
    let service = rendered.get("Service", "zbase-operator-metrics").unwrap();
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "http", "protocol": "TCP"}])
    );
    assert!(rendered.notes.contains("kubectl"), "{}", rendered.notes);
    assert!(
        rendered.notes.contains("basestations"),
        "{}",
        rendered.notes
    );
}

#[test]
fn defaults_run_restricted_with_probes_resources_and_the_contract_flags() {
    let rendered = Chart::operator().render().unwrap();
    let deployment = rendered.only("Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);

    let container = rendered.operator_container().unwrap();
    assert_eq!(
        container["securityContext"],
        json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(container["image"], "ghcr.io/zbase-dev/zbase-operator:0.1.0");
    assert_eq!(
        container["command"],
        json!(["/usr/local/bin/zbase-operator"])
    );
    assert_eq!(args(&rendered)[0], "run");
    assert_eq!(flag(&rendered, "--listen").unwrap(), "0.0.0.0:8080");
    assert_eq!(
        flag(&rendered, "--station-image").unwrap(),
        "ghcr.io/zbase-dev/zbase-station:0.1.0"
    );
    assert_eq!(flag(&rendered, "--lease-name").unwrap(), "zbase-operator");
    assert_eq!(flag(&rendered, "--log-format").unwrap(), "json");
    assert_eq!(flag(&rendered, "--watch-namespaces"), None);
    assert_eq!(
        container["env"],
        json!([
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ])
    );
    assert_eq!(
        container["ports"],
        json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
}

#[test]
fn cluster_wide_rbac_is_exactly_the_operators_contract() {
    let rendered = Chart::operator().render().unwrap();
    let role = rendered.get("ClusterRole", "zbase-operator").unwrap();
    assert_eq!(grants(role), expected(STATION_RULES));
    let binding = rendered
        .get("ClusterRoleBinding", "zbase-operator")
        .unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "zbase-operator"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "zbase-operator", "namespace": NS}])
    );
    // Besides the leader-election Role, nothing else grants anything.
    assert_eq!(rendered.all("Role").len(), 1, "{}", rendered.summary());
    assert_eq!(rendered.all("RoleBinding").len(), 1);
    assert_leader_election(&rendered, "zbase-operator");
    assert_least_privilege(&rendered);
}

#[test]
fn every_rbac_rule_says_why_in_a_comment() {
    let templates = chart_dir().join("templates");
    for file in ["_helpers.tpl", "rbac.yaml"] {
        let text = std::fs::read_to_string(templates.join(file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                let before = lines[index - 1].trim_start();
                assert!(
                    before.starts_with('#'),
                    "{file}:{}: a rule without a comment saying why: {line}",
                    index + 1
                );
            }
        }
    }
}

#[test]
fn watch_namespaces_grant_a_role_in_each_and_nothing_cluster_wide() {
    let rendered = Chart::operator()
        .values(json!({"watchNamespaces": ["a", "b"]}))
        .render()
        .unwrap();
    assert!(
        rendered.all("ClusterRole").is_empty(),
        "{}",
        rendered.summary()
    );
    assert!(rendered.all("ClusterRoleBinding").is_empty());
    for namespace in ["a", "b"] {
        let role = rendered
            .find_in("Role", namespace, "zbase-operator")
            .unwrap_or_else(|| panic!("no Role in {namespace}:\n{}", rendered.summary()));
        assert_eq!(
            grants(role),
            expected(STATION_RULES),
            "the Role in {namespace}"
        );
        let binding = rendered
            .find_in("RoleBinding", namespace, "zbase-operator")
            .unwrap();
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "zbase-operator"})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "zbase-operator", "namespace": NS}])
        );
    }
    assert_eq!(rendered.all("Role").len(), 3, "{}", rendered.summary());
    assert_leader_election(&rendered, "zbase-operator");
    assert_least_privilege(&rendered);
    assert_eq!(flag(&rendered, "--watch-namespaces").unwrap(), "a,b");
    assert!(rendered.notes.contains("a, b"), "{}", rendered.notes);
}

#[test]
fn values_reach_the_objects() {
    let rendered = Chart::operator()
        .values(json!({
            "image": {"tag": "0.2.0-rc.1", "pullPolicy": "Always"},
            "stationImage": {"repository": "registry.local/zbase-station", "digest": format!("sha256:{}", "ab".repeat(32))},
            "replicaCount": 3,
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"example.com/note": "hi"},
            "podLabels": {"team": "infra"},
            "imagePullSecrets": [{"name": "mirror"}],
            "log": {"format": "text", "level": "debug"},
            "port": 9090,
            "leaderElection": {"leaseName": "my-lease"},
            "serviceAccount": {"annotations": {"example.com/role": "x"}},
            "serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prom"}},
            "networkPolicy": {"enabled": true, "apiServer": {"cidrs": ["10.0.0.1/32"]}},
        }))
        .render()
        .unwrap();
    let deployment = rendered.only("Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/arch": "arm64"}));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "mirror"}]));
    let metadata = &deployment["spec"]["template"]["metadata"];
    assert_eq!(metadata["annotations"]["example.com/note"], "hi");
    assert_eq!(metadata["labels"]["team"], "infra");
    assert_eq!(
        metadata["labels"]["app.kubernetes.io/name"],
        "zbase-operator"
    );

    let container = rendered.operator_container().unwrap();
    assert_eq!(
        container["image"],
        "ghcr.io/zbase-dev/zbase-operator:0.2.0-rc.1"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}})
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(flag(&rendered, "--listen").unwrap(), "0.0.0.0:9090");
    assert_eq!(
        flag(&rendered, "--station-image").unwrap(),
        format!("registry.local/zbase-station@sha256:{}", "ab".repeat(32))
    );
    assert_eq!(flag(&rendered, "--log-format").unwrap(), "text");
    assert_eq!(flag(&rendered, "--log").unwrap(), "debug");
    assert_eq!(flag(&rendered, "--lease-name").unwrap(), "my-lease");
    assert_leader_election(&rendered, "my-lease");
    assert_eq!(
        rendered.get("ServiceAccount", "zbase-operator").unwrap()["metadata"]["annotations"],
        json!({"example.com/role": "x"})
    );

    let monitor = rendered.get("ServiceMonitor", "zbase-operator").unwrap();
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    let service = rendered.get("Service", "zbase-operator-metrics").unwrap();
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");

    let policy = rendered.get("NetworkPolicy", "zbase-operator").unwrap();
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": "http", "protocol": "TCP"}]}]),
        "ingress only to the metrics/probe port"
    );
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 2, "DNS and the API server only: {egress:?}");
    assert_eq!(
        egress[0]["ports"],
        json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[0]["to"][0]["podSelector"]["matchLabels"],
        json!({"k8s-app": "kube-dns"})
    );
    assert_eq!(
        egress[1],
        json!({
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        })
    );
}

#[test]
fn release_name_and_overrides_name_the_objects() {
    for (release, values, name) in [
        ("zbase", json!({}), "zbase-operator"),
        ("zbase-operator", json!({}), "zbase-operator"),
        ("edge", json!({}), "edge-operator"),
        ("edge", json!({"fullnameOverride": "relay"}), "relay"),
    ] {
        let rendered = Chart::operator()
            .release(release, NS)
            .values(values)
            .render()
            .unwrap();
        rendered.get("Deployment", name).unwrap();
        rendered.get("ClusterRole", name).unwrap();
        assert_eq!(flag(&rendered, "--lease-name").unwrap(), name);
    }
}

#[test]
fn a_typo_or_a_wrong_type_fails_naming_the_key() {
    for (values, key) in [
        (json!({"replicaCont": 2}), "replicaCont"),
        (json!({"image": {"tagg": "1.0"}}), "tagg"),
        (json!({"networkPolicy": {"enabeld": true}}), "enabeld"),
        (json!({"resources": {"request": {"cpu": "1"}}}), "request"),
        (json!({"replicaCount": "two"}), "/replicaCount"),
        (json!({"watchNamespaces": "a,b"}), "/watchNamespaces"),
        (
            json!({"serviceMonitor": {"enabled": "yes"}}),
            "/serviceMonitor/enabled",
        ),
        (json!({"log": {"format": "xml"}}), "/log/format"),
        (
            json!({"watchNamespaces": ["Not_A_Namespace"]}),
            "/watchNamespaces/0",
        ),
    ] {
        let chart = Chart::operator().values(values.clone());
        let refusal = chart.render_refused().unwrap();
        assert!(
            refusal.message.contains(key),
            "{values}: the refusal does not name {key}: {refusal}"
        );
        let lint = chart.lint().unwrap();
        assert!(
            lint.errors.iter().any(|error| error.contains(key)),
            "{values}: lint does not name {key}:\n{lint}"
        );
    }
}

/// values.yaml documents every key the schema defines, in a comment just above it, and the
/// schema knows every key values.yaml sets (a render with the defaults proves the latter).
#[test]
fn every_value_is_in_the_schema_and_commented() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // (indent, schema node) of the keys enclosing the current line.
    let mut stack: Vec<(usize, Option<&Value>)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(depth, _)| *depth >= indent) {
            stack.pop();
        }
        let parent = match stack.last() {
            None => Some(&schema),
            Some((_, node)) => *node,
        };
        // Keys under a strict object of the schema are ours to document.
        let node = parent
            .filter(|parent| parent["additionalProperties"] == false)
            .map(|parent| &parent["properties"][key]);
        if let Some(node) = node {
            assert!(
                !node.is_null(),
                "values.yaml:{}: {key} is not in the schema",
                index + 1
            );
            assert!(
                lines[index - 1].trim_start().starts_with('#'),
                "values.yaml:{}: {key} has no comment above it",
                index + 1
            );
            seen.insert((stack.len(), key.to_owned()));
        }
        stack.push((indent, node));
    }
    for key in schema["properties"].as_object().unwrap().keys() {
        if key != "global" {
            assert!(
                seen.contains(&(0, key.clone())),
                "{key} is not in values.yaml"
            );
        }
    }
}

#[test]
fn the_crd_is_the_generated_file_verbatim_and_upgrades_with_the_release() {
    let file = yaml_documents(&chart_dir().join(CRD_FILE)).unwrap();
    assert_eq!(file.len(), 1, "{CRD_FILE} holds one document");
    let file = &file[0];
    assert_eq!(file["metadata"]["name"], "basestations.zbase.dev");
    assert_eq!(
        file["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    for rendered in [
        Chart::operator().render().unwrap(),
        Chart::operator().render_upgrade().unwrap(),
    ] {
        let crd = rendered.only("CustomResourceDefinition").unwrap();
        assert_eq!(crd, file, "the rendered CRD differs from {CRD_FILE}");
    }
    let without = Chart::operator()
        .values(json!({"crds": {"install": false}}))
        .render()
        .unwrap();
    assert!(without.all("CustomResourceDefinition").is_empty());
    // Nothing in Helm's crds/ folder, which `helm upgrade` would never upgrade.
    assert!(!chart_dir().join("crds").exists());
}

#[test]
fn a_plain_install_dry_run_works_with_no_values() {
    let installed = Chart::operator().install_dry_run().unwrap();
    let rendered = Chart::operator().render().unwrap();
    assert_eq!(
        installed.kinds(),
        rendered.kinds(),
        "{}",
        installed.summary()
    );
    assert_eq!(installed.objects.len(), rendered.objects.len());
    assert!(installed.notes.contains("kubectl"), "{}", installed.notes);
}

#[test]
fn every_deploy_example_values_file_lints_and_renders() {
    let files = deploy_values();
    assert!(files.len() >= 2, "deploy/*/values.yaml: {files:?}");
    for file in files {
        let chart = Chart::operator().values_file(&file);
        let lint = chart.lint().unwrap();
        assert!(lint.is_clean(), "{}:\n{lint}", file.display());
        let rendered = chart.render().unwrap();
        rendered.only("Deployment").unwrap();
        assert_least_privilege(&rendered);
        chart.install_dry_run().unwrap();
    }
    let three = Chart::operator()
        .values_file(workspace_root().join("deploy/three-pods-cloudnativepg/values.yaml"))
        .render()
        .unwrap();
    assert!(three.find_in("Role", "zbase", "zbase-operator").is_some());
    assert!(three.all("ClusterRole").is_empty());
}
