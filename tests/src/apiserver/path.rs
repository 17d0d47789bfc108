//! Request paths, parsed into what they address, without looking at what the store holds.

use super::error::ApiError;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/version`.
    Version,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every group.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`: the resources of one group version.
    Resources {
        /// API group, empty for the core group.
        group: String,
        /// API version within the group.
        version: String,
    },
    /// Objects of one resource: a collection, or one object, or its subresource.
    Resource(ResourcePath),
}

/// A path below a group version that addresses objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group, empty for the core group.
    pub group: String,
    /// API version as the request spelled it; responses echo it.
    pub version: String,
    /// Plural resource name, e.g. `configmaps`.
    pub plural: String,
    /// `Some` when the path went through `namespaces/{ns}/`; `None` for cluster-scoped
    /// resources and for lists and watches across all namespaces.
    pub namespace: Option<String>,
    /// Object name, `None` for the collection.
    pub name: Option<String>,
    /// Subresource such as `status`.
    pub subresource: Option<String>,
}

/// Parses a request path (without the query string).
pub fn parse(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ApiError::no_resource());
    }
    match segments.as_slice() {
        ["version"] => Ok(Target::Version),
        ["api"] => Ok(Target::CoreVersions),
        ["apis"] => Ok(Target::Groups),
        ["apis", group] => Ok(Target::Group((*group).to_owned())),
        ["api", version] => Ok(Target::Resources {
            group: String::new(),
            version: (*version).to_owned(),
        }),
        ["apis", group, version] => Ok(Target::Resources {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        }),
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Err(ApiError::no_resource()),
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let owned = |s: &&str| (*s).to_owned();
    let (plural, namespace, name, subresource) = match rest {
        // `namespaces/{name}/status` and `/finalize` are subresources of the Namespace object
        // itself; no resource is called `status` or `finalize`, so this is unambiguous, as on
        // the real server.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            ("namespaces", None, Some(owned(name)), Some(owned(sub)))
        }
        ["namespaces", ns, plural, tail @ ..] => match tail {
            [] => (*plural, Some(owned(ns)), None, None),
            [name] => (*plural, Some(owned(ns)), Some(owned(name)), None),
            [name, sub] => (
                *plural,
                Some(owned(ns)),
                Some(owned(name)),
                Some(owned(sub)),
            ),
            _ => return Err(ApiError::no_resource()),
        },
        [plural] => (*plural, None, None, None),
        [plural, name] => (*plural, None, Some(owned(name)), None),
        [plural, name, sub] => (*plural, None, Some(owned(name)), Some(owned(sub))),
        _ => return Err(ApiError::no_resource()),
    };
    Ok(Target::Resource(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
        namespace,
        name,
        subresource,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse(path).unwrap() {
            Target::Resource(r) => r,
            other => panic!("{path} parsed as {other:?}"),
        }
    }

    #[test]
    fn discovery_paths() {
        assert_eq!(parse("/version").unwrap(), Target::Version);
        assert_eq!(parse("/api").unwrap(), Target::CoreVersions);
        assert_eq!(parse("/apis/").unwrap(), Target::Groups);
        assert_eq!(parse("/apis/apps").unwrap(), Target::Group("apps".into()));
        assert_eq!(
            parse("/api/v1").unwrap(),
            Target::Resources {
                group: String::new(),
                version: "v1".into()
            }
        );
        assert_eq!(
            parse("/apis/apps/v1").unwrap(),
            Target::Resources {
                group: "apps".into(),
                version: "v1".into()
            }
        );
    }

    #[test]
    fn namespace_object_versus_namespaced_collection() {
        let ns = res("/api/v1/namespaces/prod");
        assert_eq!(
            (ns.plural.as_str(), ns.namespace, ns.name.as_deref()),
            ("namespaces", None, Some("prod"))
        );
        let status = res("/api/v1/namespaces/prod/status");
        assert_eq!(status.name.as_deref(), Some("prod"));
        assert_eq!(status.subresource.as_deref(), Some("status"));
        let cms = res("/api/v1/namespaces/prod/configmaps");
        assert_eq!(
            (cms.plural.as_str(), cms.namespace.as_deref(), cms.name),
            ("configmaps", Some("prod"), None)
        );
        let all = res("/api/v1/namespaces");
        assert_eq!(
            (all.plural.as_str(), all.namespace, all.name),
            ("namespaces", None, None)
        );
    }

    #[test]
    fn namespaced_cluster_and_all_namespaces_paths() {
        let one = res("/apis/apps/v1/namespaces/a/statefulsets/db/status");
        assert_eq!(one.group, "apps");
        assert_eq!(one.namespace.as_deref(), Some("a"));
        assert_eq!(one.name.as_deref(), Some("db"));
        assert_eq!(one.subresource.as_deref(), Some("status"));
        let all = res("/apis/apps/v1/statefulsets");
        assert_eq!((all.namespace, all.name), (None, None));
        let crd = res("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.example.com");
        assert_eq!(crd.name.as_deref(), Some("x.example.com"));
    }

    #[test]
    fn malformed_paths_are_not_found() {
        for path in [
            "/",
            "/apis/a/v1/namespaces/n/p/x/y/z",
            "/api/v1/a/b/c/d",
            "/api//v1",
            "/nope",
            "/api/v1/namespaces//pods",
        ] {
            let err = parse(path).unwrap_err();
            assert_eq!(err.code, 404, "{path}");
        }
    }
}
