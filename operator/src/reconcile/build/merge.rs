//! Pod overrides: a user's partial pod template merged over the built one, like a strategic
//! merge patch for the lists that matter (containers, volumes, env... merge by `name`),
//! and like a JSON merge patch otherwise (objects merge, `null` removes, other lists replace).

use serde_json::Value;

/// Lists whose items are merged by their `name` field.
const MERGE_BY_NAME: [&str; 7] = [
    "containers",
    "initContainers",
    "volumes",
    "env",
    "volumeMounts",
    "ports",
    "imagePullSecrets",
];

/// `overrides` merged over `base`.
pub fn merge_pod_template(base: &mut Value, overrides: &Value) {
    merge(base, overrides, None);
}

fn merge(base: &mut Value, over: &Value, key: Option<&str>) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                if v.is_null() {
                    base.remove(k);
                } else if let Some(existing) = base.get_mut(k) {
                    merge(existing, v, Some(k));
                } else {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        (Value::Array(base), Value::Array(over))
            if key.is_some_and(|k| MERGE_BY_NAME.contains(&k)) =>
        {
            for item in over {
                let name = item.get("name");
                match base
                    .iter_mut()
                    .find(|b| name.is_some() && b.get("name") == name)
                {
                    Some(existing) => merge(existing, item, None),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_other_lists_replace() {
        let mut base = json!({"spec": {
            "containers": [{"name": "station", "image": "a", "args": ["serve"],
                            "env": [{"name": "A", "value": "1"}]}],
            "tolerations": [{"key": "x"}],
            "hostNetwork": false
        }});
        merge_pod_template(
            &mut base,
            &json!({"spec": {
                "containers": [{"name": "station", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "3"}]},
                               {"name": "sidecar", "image": "s"}],
                "tolerations": [{"key": "y"}],
                "hostNetwork": null
            }}),
        );
        assert_eq!(
            base,
            json!({"spec": {
                "containers": [{"name": "station", "image": "a", "args": ["serve"],
                                "env": [{"name": "A", "value": "3"}, {"name": "B", "value": "2"}]},
                               {"name": "sidecar", "image": "s"}],
                "tolerations": [{"key": "y"}]
            }})
        );
    }
}
