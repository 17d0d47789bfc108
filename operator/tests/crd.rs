//! The CRDs the chart ships are the ones generated from the Rust types, and stay small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize as _;
use std::path::Path;
use zbase_operator::crd::{CRDS, crd_yaml};

/// Where the chart keeps the CRD of `plural`.
fn chart_crd(plural: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../charts/zbase-operator/files/crds/{plural}.zbase.dev.yaml"
    ))
}

#[test]
fn the_chart_ships_the_generated_crds() {
    for plural in CRDS {
        let path = chart_crd(plural);
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == crd_yaml(plural).unwrap().unwrap(),
            "{} is not what `zbase-operator crd {plural}` generates: run `make crds` and commit \
             the file",
            path.display()
        );
    }
    assert!(crd_yaml("stations").is_none());
}

#[test]
fn the_crds_stay_far_below_the_client_side_apply_limit() {
    // `kubectl apply` keeps the whole object in an annotation limited to 256 KiB.
    for plural in CRDS {
        let size = crd_yaml(plural).unwrap().unwrap().len();
        assert!(size < 64 * 1024, "the CRD of {plural} is {size} bytes");
    }
}

#[test]
fn a_backup_request_names_its_station_and_cannot_be_changed() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&crd_yaml("basestationbackups").unwrap().unwrap()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert!(version["subresources"]["status"].is_object());
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["baseStation"]));
    assert_eq!(
        spec["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
}

#[test]
fn the_schema_carries_the_rules_kubernetes_can_check() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&crd_yaml("basestations").unwrap().unwrap()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(
        version["subresources"]["status"].is_object(),
        "status is a subresource"
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"self.replicas <= 1 || has(self.store.postgres)"),
        "{rules:?}"
    );
    assert_eq!(
        spec["properties"]["replicas"]["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        spec["properties"]["replicas"]["maximum"].as_f64(),
        Some(64.0)
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Pods",
            "Desired",
            "Endpoint",
            "Role",
            "Lag",
            "Cert-Expiry",
            "Last-Backup",
            "Reason",
            "Age"
        ]
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
}

/// The rules of `schema` (an object with `x-kubernetes-validations`).
fn rules_of(schema: &serde_json::Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_site_is_checked_by_the_api_server_where_it_can_be() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&crd_yaml("basestations").unwrap().unwrap()).unwrap();
    let version = &crd["spec"]["versions"][0];
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = rules_of(spec);
    for rule in [
        "self.replicas <= 1 || has(self.store.postgres)",
        "!has(self.site) || !has(self.site.replicaOf) || !has(self.store.postgres)",
    ] {
        assert!(rules.iter().any(|r| r == rule), "{rule} in {rules:?}");
    }
    let site = &spec["properties"]["site"];
    let rules = rules_of(site);
    assert!(
        rules
            .iter()
            .any(|r| r.contains("has(self.promote)") && r.contains("self.demote")),
        "promote and demote exclude each other: {rules:?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r == "!has(self.promote) || has(self.replicaOf)"),
        "{rules:?}"
    );
    let promote = &site["properties"]["promote"];
    assert!(
        rules_of(promote)
            .iter()
            .any(|r| r.contains("has(self.token) !=")),
        "token xor failover"
    );
    assert!(
        rules_of(&promote["properties"]["token"])
            .iter()
            .any(|r| r.contains("^[0-9]+:[0-9]+$")),
        "the token's shape"
    );
    let replication = &site["properties"]["replication"]["properties"];
    assert_eq!(replication["port"]["default"], 7443);
    assert_eq!(replication["port"]["maximum"].as_f64(), Some(65535.0));
    let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"];
    for field in [
        "role",
        "following",
        "lagSeconds",
        "handoverToken",
        "promotion",
    ] {
        assert!(
            status["properties"]["site"]["properties"][field].is_object(),
            "status.site.{field}"
        );
    }
}

/// The paths in `value` that `schema` has no field for: what the API server would silently
/// drop (prune) from an object, so a misspelt field in an example is never just ignored.
fn unknown_fields(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        serde_json::Value::Object(fields) => {
            for (key, inner) in fields {
                let at = format!("{path}.{key}");
                match (&schema["properties"][key], &schema["additionalProperties"]) {
                    (serde_json::Value::Object(field), _) => {
                        unknown_fields(inner, &serde_json::Value::Object(field.clone()), &at, out);
                    }
                    (_, serde_json::Value::Object(any)) => {
                        unknown_fields(inner, &serde_json::Value::Object(any.clone()), &at, out);
                    }
                    (_, serde_json::Value::Bool(true)) => {}
                    _ => out.push(at),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                unknown_fields(item, &schema["items"], &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_example_and_fixture_uses_only_fields_the_crd_knows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["deploy", "operator/tests/fixtures"] {
        let mut pending = vec![root.join(dir)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
        }
    }
    let schemas: std::collections::HashMap<String, serde_json::Value> = CRDS
        .iter()
        .map(|plural| {
            let crd: serde_json::Value =
                serde_yaml::from_str(&crd_yaml(plural).unwrap().unwrap()).unwrap();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
            (
                kind,
                crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
            )
        })
        .collect();
    let mut checked = 0;
    let mut unknown = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(doc) = serde_json::Value::deserialize(doc) else {
                continue;
            };
            let Some(schema) = doc["kind"].as_str().and_then(|kind| schemas.get(kind)) else {
                continue;
            };
            checked += 1;
            let at = format!("{}:", file.display());
            unknown_fields(
                &doc["spec"],
                &schema["properties"]["spec"],
                &format!("{at}spec"),
                &mut unknown,
            );
        }
    }
    assert!(checked >= 5, "found only {checked} BaseStation documents");
    assert!(
        unknown.is_empty(),
        "fields the API server would drop: {unknown:#?}"
    );
}
