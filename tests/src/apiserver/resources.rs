//! What the server knows about each resource: the built-in kinds, custom resources from stored
//! CRDs, and the discovery documents built from both.

use serde_json::{Value, json};

/// Everything the store needs to know about one resource, for the version a request used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, empty for the core group.
    pub group: String,
    /// The version the request used; responses echo it.
    pub version: String,
    /// Plural name, the path segment.
    pub plural: String,
    /// Singular name, for discovery.
    pub singular: String,
    /// Kind of the objects.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `.status` is a subresource: main-resource writes then leave it alone.
    pub status_subresource: bool,
}

impl ResourceInfo {
    /// `v1` for the core group, `{group}/{version}` otherwise.
    pub fn api_version(&self) -> String {
        group_version(&self.group, &self.version)
    }
}

/// `v1` for the core group, `{group}/{version}` otherwise.
pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// The group of CustomResourceDefinitions.
pub const CRD_GROUP: &str = "apiextensions.k8s.io";
/// The plural of CustomResourceDefinitions.
pub const CRD_PLURAL: &str = "customresourcedefinitions";

/// A built-in resource: group, plural, singular, kind, namespaced, status subresource.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
);

/// The built-in resources the fake serves, a subset of Kubernetes 1.33's that covers what an
/// operator and its tests touch. Requests for other plurals in these groups are 404.
const BUILTINS: &[Builtin] = &[
    ("", "namespaces", "namespace", "Namespace", false, true),
    ("", "pods", "pod", "Pod", true, true),
    ("", "services", "service", "Service", true, true),
    ("", "configmaps", "configmap", "ConfigMap", true, false),
    ("", "secrets", "secret", "Secret", true, false),
    (
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        false,
    ),
    ("", "events", "event", "Event", true, false),
    ("", "endpoints", "endpoints", "Endpoints", true, false),
    (
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        true,
    ),
    (
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        true,
    ),
    ("", "nodes", "node", "Node", false, true),
    ("", "limitranges", "limitrange", "LimitRange", true, false),
    (
        "",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        true,
    ),
    (
        "",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        true,
    ),
    (
        "",
        "podtemplates",
        "podtemplate",
        "PodTemplate",
        true,
        false,
    ),
    (
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        true,
    ),
    (
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        true,
    ),
    ("apps", "daemonsets", "daemonset", "DaemonSet", true, true),
    (
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        true,
    ),
    (
        "apps",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
        false,
    ),
    ("batch", "jobs", "job", "Job", true, true),
    ("batch", "cronjobs", "cronjob", "CronJob", true, true),
    (
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        true,
    ),
    (
        "autoscaling",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        true,
    ),
    (
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "roles",
        "role",
        "Role",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        false,
    ),
    (
        "networking.k8s.io",
        "ingresses",
        "ingress",
        "Ingress",
        true,
        true,
    ),
    (
        "networking.k8s.io",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        false,
    ),
    (
        "networking.k8s.io",
        "ingressclasses",
        "ingressclass",
        "IngressClass",
        false,
        false,
    ),
    (
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        false,
    ),
    ("events.k8s.io", "events", "event", "Event", true, false),
    (
        "storage.k8s.io",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        false,
    ),
    (
        "scheduling.k8s.io",
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        false,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration",
        false,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        false,
        false,
    ),
    (
        "certificates.k8s.io",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        true,
    ),
    (
        CRD_GROUP,
        CRD_PLURAL,
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        true,
    ),
];

/// Built-in groups and their served versions, preferred first.
const BUILTIN_GROUPS: &[(&str, &[&str])] = &[
    ("", &["v1"]),
    ("apps", &["v1"]),
    ("batch", &["v1"]),
    ("policy", &["v1"]),
    ("autoscaling", &["v2", "v1"]),
    ("coordination.k8s.io", &["v1"]),
    ("rbac.authorization.k8s.io", &["v1"]),
    ("networking.k8s.io", &["v1"]),
    ("discovery.k8s.io", &["v1"]),
    ("events.k8s.io", &["v1"]),
    ("storage.k8s.io", &["v1"]),
    ("scheduling.k8s.io", &["v1"]),
    ("admissionregistration.k8s.io", &["v1"]),
    ("certificates.k8s.io", &["v1"]),
    (CRD_GROUP, &["v1"]),
];

/// Whether a group is served by the server itself rather than by CRDs.
pub fn is_builtin_group(group: &str) -> bool {
    BUILTIN_GROUPS.iter().any(|(g, _)| *g == group)
}

/// The built-in resource at group/version/plural, if the fake serves it.
pub fn builtin(group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
    let (_, versions) = BUILTIN_GROUPS.iter().find(|(g, _)| *g == group)?;
    if !versions.contains(&version) {
        return None;
    }
    BUILTINS
        .iter()
        .find(|b| b.0 == group && b.1 == plural)
        .map(|b| from_builtin(b, version))
}

fn from_builtin(b: &Builtin, version: &str) -> ResourceInfo {
    ResourceInfo {
        group: b.0.to_owned(),
        version: version.to_owned(),
        plural: b.1.to_owned(),
        singular: b.2.to_owned(),
        kind: b.3.to_owned(),
        namespaced: b.4,
        status_subresource: b.5,
    }
}

/// The served versions of a CRD, each with whether it has a status subresource; storage
/// version first so it becomes the preferred one.
fn crd_versions(crd: &Value) -> Vec<(String, bool)> {
    let mut versions: Vec<(bool, String, bool)> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .filter_map(|v| {
            let name = v.get("name")?.as_str()?.to_owned();
            let storage = v.get("storage").and_then(Value::as_bool).unwrap_or(false);
            let status = v.pointer("/subresources/status").is_some();
            Some((!storage, name, status))
        })
        .collect();
    versions.sort_by_key(|v| v.0);
    versions
        .into_iter()
        .map(|(_, name, status)| (name, status))
        .collect()
}

/// The resource a stored CRD defines, for one of its served versions.
pub fn from_crd(crd: &Value, version: &str) -> Option<ResourceInfo> {
    let names = crd.pointer("/spec/names")?;
    let name = |field: &str| names.get(field).and_then(Value::as_str).map(str::to_owned);
    let (_, status) = crd_versions(crd).into_iter().find(|(v, _)| v == version)?;
    let kind = name("kind")?;
    Some(ResourceInfo {
        group: crd.pointer("/spec/group")?.as_str()?.to_owned(),
        version: version.to_owned(),
        plural: name("plural")?,
        singular: name("singular").unwrap_or_else(|| kind.to_lowercase()),
        kind,
        namespaced: crd.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster"),
        status_subresource: status,
    })
}

/// One group as discovery lists it: name and served versions, preferred first.
struct GroupVersions {
    name: String,
    versions: Vec<String>,
}

fn all_groups(crds: &[Value]) -> Vec<GroupVersions> {
    let mut groups: Vec<GroupVersions> = BUILTIN_GROUPS
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| GroupVersions {
            name: (*g).to_owned(),
            versions: vs.iter().map(|v| (*v).to_owned()).collect(),
        })
        .collect();
    for crd in crds {
        let Some(group) = crd.pointer("/spec/group").and_then(Value::as_str) else {
            continue;
        };
        let versions = crd_versions(crd).into_iter().map(|(v, _)| v);
        match groups.iter_mut().find(|g| g.name == group) {
            Some(existing) => {
                for v in versions {
                    if !existing.versions.contains(&v) {
                        existing.versions.push(v);
                    }
                }
            }
            None => groups.push(GroupVersions {
                name: group.to_owned(),
                versions: versions.collect(),
            }),
        }
    }
    groups.retain(|g| !g.versions.is_empty());
    groups
}

/// Every resource of one group version, built-in or from CRDs.
fn resources_of(group: &str, version: &str, crds: &[Value]) -> Vec<ResourceInfo> {
    let mut out: Vec<ResourceInfo> = BUILTINS
        .iter()
        .filter(|b| b.0 == group)
        .filter_map(|b| builtin(group, version, b.1))
        .collect();
    out.extend(
        crds.iter()
            .filter(|crd| crd.pointer("/spec/group").and_then(Value::as_str) == Some(group))
            .filter_map(|crd| from_crd(crd, version)),
    );
    out
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &GroupVersions) -> Value {
    let versions: Vec<Value> = group
        .versions
        .iter()
        .map(|v| json!({"groupVersion": group_version(&group.name, v), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group.name,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`: every non-core group.
pub fn group_list(crds: &[Value]) -> Value {
    let groups: Vec<Value> = all_groups(crds).iter().map(group_json).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, or `None` when no such group is served.
pub fn group(name: &str, crds: &[Value]) -> Option<Value> {
    all_groups(crds)
        .iter()
        .find(|g| g.name == name)
        .map(group_json)
}

/// `/api/v1` or `/apis/{group}/{version}`, or `None` when that group version is not served.
pub fn resource_list(group: &str, version: &str, crds: &[Value]) -> Option<Value> {
    let served = if group.is_empty() {
        version == "v1"
    } else {
        all_groups(crds)
            .iter()
            .any(|g| g.name == group && g.versions.iter().any(|v| v == version))
    };
    if !served {
        return None;
    }
    let mut resources = Vec::new();
    for r in resources_of(group, version, crds) {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS,
        }));
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": STATUS_VERBS,
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    }))
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) for `/api`
/// (`core == true`) or `/apis`.
pub fn aggregated(core: bool, crds: &[Value]) -> Value {
    let groups = if core {
        vec![GroupVersions {
            name: String::new(),
            versions: vec!["v1".into()],
        }]
    } else {
        all_groups(crds)
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let versions: Vec<Value> = g
                .versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = resources_of(&g.name, v, crds)
                        .iter()
                        .map(|r| {
                            let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
                            let subresources: Vec<Value> = if r.status_subresource {
                                vec![json!({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS})]
                            } else {
                                vec![]
                            };
                            json!({
                                "resource": r.plural,
                                "responseKind": kind,
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": VERBS,
                                "subresources": subresources,
                            })
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g.name}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `/version`: Kubernetes 1.33, like the oldest minor the project supports.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(scope: &str, status: bool) -> Value {
        let subresources = if status {
            json!({"status": {}})
        } else {
            json!({})
        };
        json!({
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "scope": scope,
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": subresources},
                    {"name": "v0", "served": false, "storage": false},
                ],
            }
        })
    }

    #[test]
    fn builtins_know_scope_and_status() {
        let cm = builtin("", "v1", "configmaps").unwrap();
        assert!(cm.namespaced && !cm.status_subresource);
        assert_eq!(cm.api_version(), "v1");
        let sts = builtin("apps", "v1", "statefulsets").unwrap();
        assert!(sts.status_subresource);
        assert_eq!(sts.api_version(), "apps/v1");
        assert!(!builtin("", "v1", "namespaces").unwrap().namespaced);
        assert!(builtin("apps", "v1beta1", "deployments").is_none());
        assert!(builtin("apps", "v1", "widgets").is_none());
        assert!(builtin("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn crd_versions_scope_and_status() {
        let info = from_crd(&crd("Namespaced", true), "v1").unwrap();
        assert_eq!(
            (info.kind.as_str(), info.namespaced, info.status_subresource),
            ("Widget", true, true)
        );
        assert!(
            !from_crd(&crd("Namespaced", true), "v1beta1")
                .unwrap()
                .status_subresource
        );
        assert!(
            from_crd(&crd("Namespaced", true), "v0").is_none(),
            "unserved version"
        );
        assert!(!from_crd(&crd("Cluster", false), "v1").unwrap().namespaced);
        assert!(from_crd(&json!({"spec": {}}), "v1").is_none());
    }

    #[test]
    fn discovery_includes_crd_groups_with_storage_version_preferred() {
        let crds = [crd("Namespaced", true)];
        let group = group("example.com", &crds).unwrap();
        assert_eq!(group["preferredVersion"]["version"], "v1");
        assert!(
            group_list(&crds)["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "example.com")
        );
        let list = resource_list("example.com", "v1", &crds).unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(names, ["widgets", "widgets/status"]);
        assert!(resource_list("example.com", "v9", &crds).is_none());
        assert!(resource_list("", "v2", &crds).is_none());
        let agg = aggregated(false, &crds);
        assert!(
            agg["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["metadata"]["name"] == "example.com")
        );
    }
}
