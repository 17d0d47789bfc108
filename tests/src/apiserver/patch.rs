//! Patches and server-side apply on JSON values, independent of the store and of HTTP.
//!
//! Server-side apply is emulated with leaf paths instead of the real structured-merge-diff
//! field sets: a leaf is a scalar, a list (lists are atomic: replaced whole, never merged by
//! key) or an empty object, reached through nested objects.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::error::ApiError;

/// A path of object keys from the root to a leaf.
pub type FieldPath = Vec<String>;
/// A set of leaf paths, e.g. what one field manager owns.
pub type FieldSet = BTreeSet<FieldPath>;

/// The patch types the server accepts, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
    /// `application/merge-patch+json`: RFC 7386.
    Merge,
    /// `application/strategic-merge-patch+json`: applied as a merge patch (lists are replaced,
    /// not merged by their patch merge key; `$patch`-style directives are dropped).
    Strategic,
    /// `application/json-patch+json`: RFC 6902.
    Json,
}

impl PatchType {
    /// The patch type a `Content-Type` header names (parameters such as `charset` ignored).
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/apply-patch+yaml" => Ok(Self::Apply),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Parses a request body as JSON, or as YAML when the content type says so (or, for apply
/// bodies, when it is not JSON: kubectl sends YAML, kube-rs sends JSON).
pub fn parse_body(body: &[u8], yaml: bool) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(json_err) if yaml => serde_yaml::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is neither JSON ({json_err}) nor YAML ({e})"
            ))
        }),
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Applies a merge, strategic merge or JSON patch body to `doc`.
pub fn apply_patch(doc: &mut Value, kind: PatchType, body: &[u8]) -> Result<(), ApiError> {
    match kind {
        PatchType::Merge | PatchType::Strategic => {
            let mut patch = parse_body(body, false)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            if kind == PatchType::Strategic {
                strip_directives(&mut patch);
            }
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the body is not a JSON patch: {e}")))?;
            json_patch::patch(doc, &patch.0)
                .map_err(|e| ApiError::invalid(format!("the JSON patch failed: {e}")))
        }
        PatchType::Apply => Err(ApiError::bad_request(
            "server-side apply is not a plain patch",
        )),
    }
}

/// Drops strategic-merge-patch directives (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`), which a merge patch would otherwise store as fields.
fn strip_directives(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|k, _| !k.starts_with('$'));
        map.values_mut().for_each(strip_directives);
    }
}

/// Removes `null` values from objects, recursively: in an applied configuration a null says
/// nothing about the field, so it must neither be stored nor count as owned.
pub fn strip_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

/// Top-level and `metadata` fields the server owns; they are never part of a field set.
fn is_system_path(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [meta, field, ..] if meta == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The leaf paths of a value, system fields excluded.
pub fn leaves(value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect_leaves(value, &mut Vec::new(), &mut out);
    out.retain(|p| !p.is_empty() && !is_system_path(p));
    out
}

fn collect_leaves(value: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                collect_leaves(v, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The leaf paths whose values differ between two objects: `(set_or_changed, removed)`.
pub fn diff(old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    let (mut changed, mut removed) = (FieldSet::new(), FieldSet::new());
    diff_into(old, new, &mut Vec::new(), &mut changed, &mut removed);
    changed.retain(|p| !p.is_empty() && !is_system_path(p));
    removed.retain(|p| !p.is_empty() && !is_system_path(p));
    (changed, removed)
}

fn diff_into(
    old: &Value,
    new: &Value,
    path: &mut FieldPath,
    changed: &mut FieldSet,
    removed: &mut FieldSet,
) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) if !o.is_empty() && !n.is_empty() => {
            for (k, nv) in n {
                path.push(k.clone());
                match o.get(k) {
                    Some(ov) => diff_into(ov, nv, path, changed, removed),
                    None => collect_leaves(nv, path, changed),
                }
                path.pop();
            }
            for (k, ov) in o {
                if !n.contains_key(k) {
                    path.push(k.clone());
                    collect_leaves(ov, path, removed);
                    path.pop();
                }
            }
        }
        _ if old == new => {}
        _ => collect_leaves(new, path, changed),
    }
}

/// The value at a path, if every step is an object key.
pub fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.as_object()?.get(k))
}

/// Removes the value at a path; missing steps are fine.
pub fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let parent = parents
        .iter()
        .try_fold(value, |v, k| v.as_object_mut()?.get_mut(k));
    if let Some(Value::Object(map)) = parent {
        map.remove(last);
    }
}

/// After a removal, removes the objects it left empty (`metadata.labels` once its last
/// applied label is gone), unless someone owns the empty object itself.
fn prune_empty_parents(value: &mut Value, path: &[String], owned: &FieldSet) {
    for depth in (1..path.len()).rev() {
        let parent = &path[..depth];
        let empty = get_path(value, parent)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty);
        if !empty || owned.contains(parent) {
            return;
        }
        remove_path(value, parent);
    }
}

/// Deep merge for apply: objects merge key by key, anything else (scalars, lists) replaces.
pub fn deep_merge(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (target, config) => *target = config.clone(),
    }
}

/// The result of one server-side apply, before the store commits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The new object.
    pub object: Value,
    /// Leaf paths other managers lose because this apply forced a different value on them.
    pub taken: FieldSet,
}

/// Server-side apply of `config` by one manager onto `current` (`Value::Null` when the
/// object does not exist yet).
///
/// `previous` is this manager's last applied configuration; `others` is every other manager's
/// field set. Fields the manager applied last time but omits now are removed, unless another
/// manager also owns them; then the config is deep-merged. A field the config sets to a value
/// different from the current one while another manager owns it is a conflict, unless
/// `force` (then the other manager loses it).
pub fn server_side_apply(
    current: &Value,
    previous: Option<&Value>,
    config: &Value,
    others: &BTreeMap<String, FieldSet>,
    force: bool,
) -> Result<Applied, ApiError> {
    let mine = leaves(config);
    let mut taken = FieldSet::new();
    let mut conflicts = Vec::new();
    for path in &mine {
        let differs = get_path(current, path) != get_path(config, path);
        if !differs {
            continue;
        }
        for (manager, fields) in others {
            if fields.contains(path) {
                conflicts.push(format!(".{} (owned by {manager:?})", path.join(".")));
                taken.insert(path.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::apply_conflict(format!(
            "Apply failed with {} conflict(s): {}",
            conflicts.len(),
            conflicts.join(", ")
        )));
    }
    let mut object = if current.is_object() {
        current.clone()
    } else {
        Value::Object(Map::new())
    };
    if let Some(previous) = previous {
        let owned_by_others: FieldSet = others.values().flatten().cloned().collect();
        for path in leaves(previous).difference(&mine) {
            if !owned_by_others.contains(path) {
                remove_path(&mut object, path);
                prune_empty_parents(&mut object, path, &owned_by_others);
            }
        }
    }
    deep_merge(&mut object, config);
    Ok(Applied { object, taken })
}

/// A field set as `metadata.managedFields[].fieldsV1`: `{"f:spec":{"f:replicas":{}}}`.
pub fn fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            let entry = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> FieldPath {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchType::Apply
        );
        assert_eq!(
            PatchType::from_content_type("application/json")
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn merge_patch_sets_and_deletes() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        apply_patch(
            &mut doc,
            PatchType::Merge,
            br#"{"b": {"c": null, "e": 4}, "l": [3]}"#,
        )
        .unwrap();
        assert_eq!(doc, json!({"a": 1, "b": {"d": 3, "e": 4}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_patch_drops_directives() {
        let mut doc = json!({"spec": {"x": 1}});
        let body =
            br#"{"spec": {"$retainKeys": ["x"], "y": 2, "$setElementOrder/containers": []}}"#;
        apply_patch(&mut doc, PatchType::Strategic, body).unwrap();
        assert_eq!(doc, json!({"spec": {"x": 1, "y": 2}}));
    }

    #[test]
    fn json_patch_and_its_failures() {
        let mut doc = json!({"a": {"b": 1}});
        apply_patch(
            &mut doc,
            PatchType::Json,
            br#"[{"op":"replace","path":"/a/b","value":2},{"op":"add","path":"/c","value":[]}]"#,
        )
        .unwrap();
        assert_eq!(doc, json!({"a": {"b": 2}, "c": []}));
        let failed = apply_patch(
            &mut doc,
            PatchType::Json,
            br#"[{"op":"test","path":"/a/b","value":9}]"#,
        )
        .unwrap_err();
        assert_eq!(failed.code, 422);
        assert_eq!(
            doc,
            json!({"a": {"b": 2}, "c": []}),
            "a failed JSON patch changes nothing"
        );
    }

    #[test]
    fn malformed_patch_bodies_are_bad_requests() {
        let mut doc = json!({});
        for (kind, body) in [
            (PatchType::Merge, &b"{not json"[..]),
            (PatchType::Merge, b"[1,2]"),
            (PatchType::Json, b"{\"op\":\"add\"}"),
            (
                PatchType::Json,
                b"[{\"op\":\"frobnicate\",\"path\":\"/a\"}]",
            ),
        ] {
            assert_eq!(
                apply_patch(&mut doc, kind, body).unwrap_err().code,
                400,
                "{kind:?} {body:?}"
            );
        }
    }

    #[test]
    fn yaml_bodies_for_apply() {
        let v = parse_body(
            b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: \"1\"\n",
            true,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}})
        );
        assert_eq!(parse_body(b"a: [", true).unwrap_err().code, 400);
        assert_eq!(parse_body(b"a: 1", false).unwrap_err().code, 400);
    }

    #[test]
    fn leaves_skip_system_fields_and_treat_lists_atomically() {
        let v = json!({"apiVersion": "v1", "metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"l": [{"x": 1}], "e": {}}});
        let got: Vec<String> = leaves(&v).iter().map(|p| p.join(".")).collect();
        assert_eq!(got, ["metadata.labels.a", "spec.e", "spec.l"]);
    }

    #[test]
    fn diff_reports_changes_and_removals() {
        let (changed, removed) = diff(
            &json!({"a": 1, "b": {"c": 1, "d": 2}}),
            &json!({"a": 2, "b": {"c": 1}, "e": {"f": 1}}),
        );
        assert_eq!(changed, [path("a"), path("e.f")].into_iter().collect());
        assert_eq!(removed, [path("b.d")].into_iter().collect());
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped_but_keeps_others() {
        let current = json!({"data": {"a": "1", "b": "2", "c": "3"}});
        let previous = json!({"data": {"a": "1", "b": "2"}});
        let config = json!({"data": {"a": "10"}});
        let others =
            BTreeMap::from([("kubectl".to_owned(), [path("data.c")].into_iter().collect())]);
        let out = server_side_apply(&current, Some(&previous), &config, &others, false).unwrap();
        assert_eq!(out.object, json!({"data": {"a": "10", "c": "3"}}));
    }

    #[test]
    fn apply_prunes_objects_its_removals_emptied() {
        let current =
            json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"keep": {}}});
        let previous = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"keep": {"b": 1}}});
        let others = BTreeMap::from([(
            "other".to_owned(),
            [path("spec.keep")].into_iter().collect(),
        )]);
        let out = server_side_apply(
            &current,
            Some(&previous),
            &json!({"metadata": {"name": "x"}}),
            &others,
            false,
        )
        .unwrap();
        assert_eq!(
            out.object,
            json!({"metadata": {"name": "x"}, "spec": {"keep": {}}})
        );
    }

    #[test]
    fn apply_keeps_a_dropped_field_another_manager_co_owns() {
        let current = json!({"data": {"a": "1"}});
        let others = BTreeMap::from([("other".to_owned(), [path("data.a")].into_iter().collect())]);
        let out = server_side_apply(
            &current,
            Some(&json!({"data": {"a": "1"}})),
            &json!({"data": {}}),
            &others,
            false,
        )
        .unwrap();
        assert_eq!(out.object, json!({"data": {"a": "1"}}));
    }

    #[test]
    fn apply_conflicts_unless_forced() {
        let current = json!({"spec": {"replicas": 3, "l": [1]}});
        let others = BTreeMap::from([(
            "hpa".to_owned(),
            [path("spec.replicas")].into_iter().collect(),
        )]);
        let same = server_side_apply(
            &current,
            None,
            &json!({"spec": {"replicas": 3}}),
            &others,
            false,
        )
        .unwrap();
        assert!(
            same.taken.is_empty(),
            "applying the same value shares ownership"
        );
        let err = server_side_apply(
            &current,
            None,
            &json!({"spec": {"replicas": 5}}),
            &others,
            false,
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        let forced = server_side_apply(
            &current,
            None,
            &json!({"spec": {"replicas": 5, "l": [2]}}),
            &others,
            true,
        )
        .unwrap();
        assert_eq!(forced.object, json!({"spec": {"replicas": 5, "l": [2]}}));
        assert_eq!(forced.taken, [path("spec.replicas")].into_iter().collect());
    }

    #[test]
    fn apply_creates_from_nothing() {
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let out = server_side_apply(&Value::Null, None, &config, &BTreeMap::new(), false).unwrap();
        assert_eq!(out.object, config);
    }

    #[test]
    fn fields_v1_nests_paths() {
        let set: FieldSet = [path("spec.replicas"), path("metadata.labels.app")]
            .into_iter()
            .collect();
        assert_eq!(
            fields_v1(&set),
            json!({"f:spec": {"f:replicas": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        );
    }

    #[test]
    fn strip_nulls_recursively() {
        let mut v = json!({"a": null, "b": {"c": null, "d": 1}, "l": [null]});
        strip_nulls(&mut v);
        assert_eq!(v, json!({"b": {"d": 1}, "l": [null]}));
    }
}
