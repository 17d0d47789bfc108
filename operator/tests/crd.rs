//! The CRD the chart ships is the one generated from the Rust types, and stays small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use zbase_operator::crd::crd_yaml;

const CHART_CRD: &str = "../charts/zbase-operator/files/crds/basestations.zbase.dev.yaml";

#[test]
fn the_chart_ships_the_generated_crd() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_CRD);
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == crd_yaml().unwrap(),
        "{} is not what `zbase-operator crd` generates: run `make crds` and commit the file",
        path.display()
    );
}

#[test]
fn the_crd_stays_far_below_the_client_side_apply_limit() {
    // `kubectl apply` keeps the whole object in an annotation limited to 256 KiB.
    let size = crd_yaml().unwrap().len();
    assert!(size < 64 * 1024, "the CRD is {size} bytes");
}

#[test]
fn the_schema_carries_the_rules_kubernetes_can_check() {
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml().unwrap()).unwrap();
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
