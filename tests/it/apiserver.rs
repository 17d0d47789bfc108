//! The stand-in Kubernetes API server, driven by kube-rs over HTTP as the operator drives a
//! real cluster: if these pass, an operator test that fails points at the operator.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Resource as _,
};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use zbase_tests::apiserver::{ApiServer, MAX_BODY};

/// A tiny custom resource with a status subresource.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.zbase.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
struct WidgetStatus {
    ready: bool,
}

const WAIT: Duration = Duration::from_secs(15);

/// The API error a result carries: code and reason.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn data(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data.clone().unwrap_or_default()
}

async fn install_widget_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .create(&PostParams::default(), &Widget::crd())
        .await
        .unwrap();
    let established = crd.status.unwrap().conditions.unwrap_or_default();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
}

/// A raw request through the kube client, for what `Api<K>` cannot send.
async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Value, kube::Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap();
    client.request::<Value>(request).await
}

#[tokio::test]
async fn config_maps_crud() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());

    let created = api
        .create(&PostParams::default(), &config_map("one", &[("a", "1")]))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

    let got = api.get("one").await.unwrap();
    assert_eq!(got, created);

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.metadata.resource_version.as_deref(),
        Some(rv1.to_string().as_str())
    );

    let mut changed = got.clone();
    changed.data = Some([("a".to_owned(), "2".to_owned())].into());
    let replaced = api
        .replace("one", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(data(&replaced)["a"], "2");
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "every write bumps the resourceVersion");

    let patched = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        data(&patched),
        BTreeMap::from([("a".into(), "2".into()), ("b".into(), "3".into())])
    );

    let json_patched = raw(
        &server.client(),
        "PATCH",
        "/api/v1/namespaces/default/configmaps/one",
        "application/json-patch+json",
        br#"[{"op":"remove","path":"/data/a"}]"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(json_patched["data"], json!({"b": "3"}));

    let unchanged = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        unchanged.metadata.resource_version.as_deref(),
        json_patched["metadata"]["resourceVersion"].as_str(),
        "a write that changes nothing gets no new resourceVersion"
    );

    api.delete("one", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(api.get("one").await), (404, "NotFound".into()));
    assert_eq!(
        api_error(api.delete("one", &DeleteParams::default()).await).0,
        404
    );
}

#[tokio::test]
async fn create_of_an_existing_name_is_already_exists_and_generate_name_picks_one() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("dup", &[]))
        .await
        .unwrap();
    let again = api
        .create(&PostParams::default(), &config_map("dup", &[]))
        .await;
    assert_eq!(api_error(again), (409, "AlreadyExists".into()));

    let mut generated = config_map("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let a = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(a.starts_with("gen-") && a.len() == 9 && a != b, "{a} {b}");

    let missing_ns: Api<ConfigMap> = Api::namespaced(server.client(), "nowhere");
    let err = missing_ns
        .create(&PostParams::default(), &config_map("x", &[]))
        .await;
    assert_eq!(
        api_error(err).0,
        404,
        "a namespaced object needs its namespace"
    );
    let bad_name = api
        .create(&PostParams::default(), &config_map("Not_A_Name", &[]))
        .await;
    assert_eq!(api_error(bad_name).0, 422);
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_conflicts() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let first = api
        .create(&PostParams::default(), &config_map("cm", &[("v", "1")]))
        .await
        .unwrap();
    let mut second = first.clone();
    second.data = Some([("v".to_owned(), "2".to_owned())].into());
    api.replace("cm", &PostParams::default(), &second)
        .await
        .unwrap();

    let mut stale = first.clone();
    stale.data = Some([("v".to_owned(), "3".to_owned())].into());
    assert_eq!(
        api_error(api.replace("cm", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    assert_eq!(data(&api.get("cm").await.unwrap())["v"], "2");

    let precondition =
        Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"v": "4"}}));
    assert_eq!(
        api_error(
            api.patch("cm", &PatchParams::default(), &precondition)
                .await
        )
        .0,
        409
    );
}

#[tokio::test]
async fn server_side_apply_removes_what_a_manager_dropped_and_keeps_other_managers_fields() {
    let server = ApiServer::start().await;
    let client = server.client();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let apply = |manager: &str, body: Value| {
        let api = api.clone();
        let params = PatchParams::apply(manager).force();
        async move { api.patch("applied", &params, &Patch::Apply(body)).await }
    };

    let created = apply(
        "operator",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "labels": {"app": "zbase"}}, "data": {"a": "1", "b": "2"}}),
    )
    .await
    .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    apply(
        "admin",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"c": "3"}}),
    )
    .await
    .unwrap();

    let after = apply(
        "operator",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        data(&after),
        BTreeMap::from([("a".into(), "1".into()), ("c".into(), "3".into())])
    );
    assert_eq!(
        after.metadata.labels, None,
        "the dropped label is removed too"
    );
    let managers: Vec<(String, String)> = after
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("operator".into(), "Apply".into())),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("admin".into(), "Apply".into())),
        "{managers:?}"
    );

    let same = apply(
        "operator",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        same.metadata.resource_version, after.metadata.resource_version,
        "re-applying is a no-op"
    );

    let conflict = api
        .patch(
            "applied",
            &PatchParams::apply("intruder"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "9"}})),
        )
        .await;
    assert_eq!(
        api_error(conflict),
        (409, "Conflict".into()),
        "unforced apply over another manager's field"
    );

    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n";
    let path = "/api/v1/namespaces/default/configmaps/from-yaml?fieldManager=kubectl";
    let created = raw(
        &client,
        "PATCH",
        path,
        "application/apply-patch+yaml",
        yaml.into(),
    )
    .await
    .unwrap();
    assert_eq!(created["data"], json!({"k": "v"}));
    let no_manager = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/x",
        "application/apply-patch+yaml",
        yaml.into(),
    )
    .await;
    assert_eq!(api_error(no_manager).0, 400, "apply needs fieldManager");
}

fn deployment(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
        "status": {"replicas": 99},
    }))
    .unwrap()
}

#[tokio::test]
async fn status_is_a_subresource_and_generation_counts_spec_changes_only() {
    let server = ApiServer::start().await;
    let api: Api<Deployment> = Api::default_namespaced(server.client());
    let created = api
        .create(&PostParams::default(), &deployment(1))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.status, None,
        "create drops status where it is a subresource"
    );

    let status = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}, "spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "a status write does not bump generation"
    );
    assert_eq!(status.status.as_ref().unwrap().ready_replicas, Some(1));
    assert_eq!(
        status.spec.as_ref().unwrap().replicas,
        Some(1),
        "a status write changes nothing but status"
    );

    let spec = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(
        spec.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    let labels = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labels.metadata.generation,
        Some(2),
        "a metadata change does not"
    );

    let main = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.status.as_ref().unwrap().ready_replicas,
        Some(1),
        "the main resource cannot write status"
    );
    let mut put = main.clone();
    put.status.as_mut().unwrap().ready_replicas = Some(8);
    let put = api
        .replace("web", &PostParams::default(), &put)
        .await
        .unwrap();
    assert_eq!(put.status.unwrap().ready_replicas, Some(1));

    let mut status_put = api.get_status("web").await.unwrap();
    status_put.status.as_mut().unwrap().ready_replicas = Some(2);
    let replaced = api
        .replace_status("web", &PostParams::default(), &status_put)
        .await
        .unwrap();
    assert_eq!(replaced.status.unwrap().ready_replicas, Some(2));
    assert_eq!(replaced.metadata.generation, Some(2));
}

#[tokio::test]
async fn custom_resources_need_their_crd_and_then_behave_like_built_ins() {
    let server = ApiServer::start().await;
    let client = server.client();
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let w = Widget::new(
        "w1",
        WidgetSpec {
            size: 1,
            color: None,
        },
    );
    assert_eq!(
        api_error(widgets.create(&PostParams::default(), &w).await).0,
        404,
        "no CRD, no resource"
    );
    assert_eq!(api_error(widgets.list(&ListParams::default()).await).0, 404);

    install_widget_crd(&client).await;
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.spec, w.spec);
    assert_eq!(created.metadata.generation, Some(1));

    let mut w2 = Widget::new(
        "w2",
        WidgetSpec {
            size: 2,
            color: Some("red".into()),
        },
    );
    w2.metadata.labels = Some([("tier".to_owned(), "gold".to_owned())].into());
    let applied = widgets
        .patch(
            "w2",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&w2),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.color.as_deref(), Some("red"));

    w2.spec.color = None;
    let applied = widgets
        .patch(
            "w2",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&w2),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.color, None, "the dropped field is gone");
    assert_eq!(applied.metadata.generation, Some(2));

    let status = widgets
        .patch_status("w2", &PatchParams::apply("test").force(), &Patch::Apply(json!({"apiVersion": "test.zbase.dev/v1", "kind": "Widget", "status": {"ready": true}})))
        .await
        .unwrap();
    assert_eq!(status.status, Some(WidgetStatus { ready: true }));
    assert_eq!(
        status.spec.size, 2,
        "a status apply keeps the spec the main apply owns"
    );
    assert_eq!(status.metadata.generation, Some(2));

    let all = widgets.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        all.items
            .iter()
            .map(|w| w.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["w1", "w2"]
    );
    let gold = widgets
        .list(&ListParams::default().labels("tier=gold"))
        .await
        .unwrap();
    assert_eq!(gold.items.len(), 1);
    let everywhere: Api<Widget> = Api::all(client.clone());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete(Widget::crd_name(), &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_error(widgets.get("w1").await).0,
        404,
        "deleting the CRD removes the resource"
    );
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    for (name, app, tier) in [
        ("a", "web", "front"),
        ("b", "web", "back"),
        ("c", "db", "back"),
    ] {
        let mut cm = config_map(name, &[]);
        cm.metadata.labels = Some(
            [
                ("app".to_owned(), app.to_owned()),
                ("tier".to_owned(), tier.to_owned()),
            ]
            .into(),
        );
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    api.create(&PostParams::default(), &config_map("plain", &[]))
        .await
        .unwrap();
    let names = |selector: &'static str| {
        let api = api.clone();
        async move {
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap();
            list.items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("app=web").await, ["a", "b"]);
    assert_eq!(names("app==web,tier!=front").await, ["b"]);
    assert_eq!(names("tier in (back)").await, ["b", "c"]);
    assert_eq!(names("app notin (web)").await, ["c", "plain"]);
    assert_eq!(names("app").await, ["a", "b", "c"]);
    assert_eq!(names("!app").await, ["plain"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(
        api_error(api.list(&ListParams::default().labels("app in (web")).await).0,
        400
    );
    assert_eq!(
        api_error(api.list(&ListParams::default().fields("data.x=1")).await).0,
        400
    );
}

/// Runs a watcher in the background, forwarding its events (errors as strings).
fn spawn_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> mpsc::UnboundedReceiver<Result<watcher::Event<K>, String>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config));
        while let Some(event) = stream.next().await {
            if tx.send(event.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no watch event in time")
        .expect("watcher ended")
}

/// Skips the initial list's events, up to `InitDone`.
async fn until_init_done<K>(rx: &mut mpsc::UnboundedReceiver<Result<watcher::Event<K>, String>>) {
    loop {
        if let Ok(watcher::Event::InitDone) = next(rx).await {
            return;
        }
    }
}

fn summary(event: &watcher::Event<ConfigMap>) -> String {
    match event {
        watcher::Event::Apply(cm) => format!(
            "apply {} {:?}",
            cm.metadata.name.as_deref().unwrap_or(""),
            data(cm).get("v")
        ),
        watcher::Event::Delete(cm) => {
            format!("delete {}", cm.metadata.name.as_deref().unwrap_or(""))
        }
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(cm) => {
            format!("init-apply {}", cm.metadata.name.as_deref().unwrap_or(""))
        }
        watcher::Event::InitDone => "init-done".into(),
    }
}

#[tokio::test]
async fn watcher_sees_changes_in_order_and_resumes_after_timeouts_without_gaps() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("unwatched", &[]))
        .await
        .unwrap();
    let mut rx = spawn_watcher(
        api.clone(),
        watcher::Config::default().labels("watched=yes").timeout(1),
    );
    until_init_done(&mut rx).await;

    let mut cm = config_map("w", &[("v", "0")]);
    cm.metadata.labels = Some([("watched".to_owned(), "yes".to_owned())].into());
    api.create(&PostParams::default(), &cm).await.unwrap();
    // Writes spread over several one-second watches: each reconnect must resume exactly.
    for i in 1..=30 {
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": i.to_string()}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "no"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "unwatched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "y"}})),
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 32 {
        match next(&mut rx).await {
            Ok(event) => seen.push(summary(&event)),
            Err(e) => panic!("watch error: {e}"),
        }
    }
    let mut expected: Vec<String> = (0..=30).map(|i| format!("apply w Some(\"{i}\")")).collect();
    expected.push("delete w".into());
    assert_eq!(seen, expected, "leaving the selection reads as a deletion");

    let requests = server.requests();
    let cm_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/namespaces/default/configmaps")
        .collect();
    let lists = cm_requests
        .iter()
        .filter(|r| !r.query.contains("watch="))
        .count();
    let watches: Vec<_> = cm_requests
        .iter()
        .filter(|r| r.query.contains("watch="))
        .collect();
    assert_eq!(lists, 1, "resuming after a timeout needs no re-list");
    assert!(watches.len() >= 3, "{watches:?}");
    assert!(
        watches.iter().all(|w| w.query.contains("resourceVersion=")),
        "{watches:?}"
    );
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("before", &[]))
        .await
        .unwrap();
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default());
    until_init_done(&mut rx).await;
    api.create(&PostParams::default(), &config_map("seen-live", &[]))
        .await
        .unwrap();
    assert_eq!(
        summary(&next(&mut rx).await.unwrap()),
        "apply seen-live None"
    );

    server.compact_history();
    api.create(&PostParams::default(), &config_map("after", &[]))
        .await
        .unwrap();

    let gone = next(&mut rx)
        .await
        .expect_err("a watch from a compacted version fails");
    assert!(
        gone.contains("410") || gone.to_lowercase().contains("too old"),
        "{gone}"
    );
    let mut relisted = Vec::new();
    loop {
        let event = next(&mut rx).await.unwrap();
        let done = matches!(event, watcher::Event::InitDone);
        relisted.push(summary(&event));
        if done {
            break;
        }
    }
    assert_eq!(relisted.first().map(String::as_str), Some("init"));
    assert!(
        relisted.contains(&"init-apply before".to_owned()),
        "{relisted:?}"
    );
    assert!(
        relisted.contains(&"init-apply seen-live".to_owned()),
        "{relisted:?}"
    );
    // `after` arrives in the re-list, or right after it if it was created later.
    if !relisted.contains(&"init-apply after".to_owned()) {
        assert_eq!(summary(&next(&mut rx).await.unwrap()), "apply after None");
    }

    let lists = server
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path == "/api/v1/namespaces/default/configmaps"
                && !r.query.contains("watch=")
        })
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn raw_watch_replays_history_and_bookmarks_on_timeout() {
    let server = ApiServer::start().await;
    let client = server.client();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let created = api
        .create(&PostParams::default(), &config_map("h", &[("v", "1")]))
        .await
        .unwrap();
    let from = created.metadata.resource_version.unwrap();
    api.patch(
        "h",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    api.delete("h", &DeleteParams::default()).await.unwrap();

    let path = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={from}&timeoutSeconds=1&allowWatchBookmarks=true"
    );
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["MODIFIED", "DELETED", "BOOKMARK"]);
    assert_eq!(events[0]["object"]["data"]["v"], "2");
    assert_eq!(
        events[2]["object"]["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );

    server.compact_history();
    let request = http::Request::get(format!(
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={from}"
    ))
    .body(Vec::new())
    .unwrap();
    let text = client.request_text(request).await.unwrap();
    let event: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
}

#[tokio::test]
async fn finalizers_delay_deletion_until_they_are_removed() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut cm = config_map("held", &[]);
    cm.metadata.finalizers = Some(vec!["test.zbase.dev/hold".into()]);
    api.create(&PostParams::default(), &cm).await.unwrap();

    api.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = api.get("held").await.unwrap();
    assert!(
        pending.metadata.deletion_timestamp.is_some(),
        "still there, marked for deletion"
    );

    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(
        api_error(api.get("held").await).0,
        404,
        "gone once the last finalizer is"
    );
}

fn owned_by(name: &str, owner: &ConfigMap) -> ConfigMap {
    let mut cm = config_map(name, &[]);
    cm.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    cm
}

#[tokio::test]
async fn garbage_collection_follows_owner_references_unless_orphaned() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let pp = PostParams::default();
    let parent = api.create(&pp, &config_map("parent", &[])).await.unwrap();
    let child = api.create(&pp, &owned_by("child", &parent)).await.unwrap();
    api.create(&pp, &owned_by("grandchild", &child))
        .await
        .unwrap();
    api.create(&pp, &config_map("bystander", &[]))
        .await
        .unwrap();

    api.delete("parent", &DeleteParams::default())
        .await
        .unwrap();
    for gone in ["parent", "child", "grandchild"] {
        assert_eq!(api_error(api.get(gone).await).0, 404, "{gone}");
    }
    api.get("bystander").await.unwrap();

    let parent = api.create(&pp, &config_map("parent", &[])).await.unwrap();
    api.create(&pp, &owned_by("kept", &parent)).await.unwrap();
    api.delete("parent", &DeleteParams::orphan()).await.unwrap();
    let kept = api.get("kept").await.unwrap();
    assert_eq!(
        kept.metadata.owner_references.unwrap_or_default(),
        vec![],
        "orphaned: the reference is removed"
    );

    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("doomed".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&pp, &ns).await.unwrap();
    let inside: Api<ConfigMap> = Api::namespaced(server.client(), "doomed");
    inside
        .create(&pp, &config_map("content", &[]))
        .await
        .unwrap();
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_error(inside.get("content").await).0,
        404,
        "a namespace takes its contents along"
    );
}

#[tokio::test]
async fn leases_support_leader_election_with_resource_version_checks() {
    let server = ApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "zbase-operator"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z", "leaseTransitions": 0},
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(
        api_error(leases.create(&PostParams::default(), &lease).await).0,
        409
    );

    let mut renew = created.clone();
    renew.spec.as_mut().unwrap().renew_time =
        serde_json::from_value(json!("2025-01-01T00:00:10.000000Z")).unwrap();
    let renewed = leases
        .replace("zbase-operator", &PostParams::default(), &renew)
        .await
        .unwrap();

    let mut takeover = created.clone();
    let spec = takeover.spec.as_mut().unwrap();
    spec.holder_identity = Some("pod-b".into());
    spec.lease_transitions = Some(1);
    let lost = leases
        .replace("zbase-operator", &PostParams::default(), &takeover)
        .await;
    assert_eq!(
        api_error(lost),
        (409, "Conflict".into()),
        "pod-b read an old version: it must not win"
    );

    takeover.metadata.resource_version = renewed.metadata.resource_version.clone();
    let won = leases
        .replace("zbase-operator", &PostParams::default(), &takeover)
        .await
        .unwrap();
    assert_eq!(won.spec.unwrap().holder_identity.as_deref(), Some("pod-b"));
}

#[tokio::test]
async fn kubeconfig_file_points_kube_at_the_server() {
    let server = ApiServer::start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.default_namespace, "default");
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    let client = Client::try_from(config).unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(
        names.contains(&"default".to_owned()) && names.contains(&"kube-system".to_owned()),
        "{names:?}"
    );
    // A separate process that gets only KUBECONFIG is the real operator binary in
    // operator_reconcile.rs, which finds this server through Config::infer.
}

#[tokio::test]
async fn requests_are_recorded_for_assertions() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("r", &[]))
        .await
        .unwrap();
    server.clear_requests();
    api.get("r").await.unwrap();
    assert!(
        server.requests().iter().all(|r| !r.is_write()),
        "a read issued no writes"
    );

    api.patch(
        "r",
        &PatchParams::apply("rec").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}})),
    )
    .await
    .unwrap();
    let requests = server.requests();
    let writes: Vec<_> = requests.iter().filter(|r| r.is_write()).collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].method, "PATCH");
    assert_eq!(writes[0].path, "/api/v1/namespaces/default/configmaps/r");
    assert!(writes[0].query.contains("fieldManager=rec") && writes[0].query.contains("force=true"));
    assert_eq!(
        writes[0].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
}

#[tokio::test]
async fn oversize_and_malformed_bodies_are_refused() {
    let server = ApiServer::start().await;
    let client = server.client();
    let path = "/api/v1/namespaces/default/configmaps";
    let huge = raw(
        &client,
        "POST",
        path,
        "application/json",
        vec![b' '; MAX_BODY + 1],
    )
    .await;
    assert_eq!(api_error(huge), (413, "RequestEntityTooLarge".into()));
    assert_eq!(
        api_error(raw(&client, "POST", path, "application/json", b"{nope".to_vec()).await).0,
        400
    );
    assert_eq!(
        api_error(
            raw(
                &client,
                "POST",
                path,
                "application/vnd.kubernetes.protobuf",
                vec![]
            )
            .await
        )
        .0,
        415
    );
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &config_map("p", &[]))
        .await
        .unwrap();
    let bad_patch = raw(
        &client,
        "PATCH",
        &format!("{path}/p"),
        "application/json-patch+json",
        br#"{"op":"add"}"#.to_vec(),
    )
    .await;
    assert_eq!(api_error(bad_patch).0, 400);
    let failed_test = raw(
        &client,
        "PATCH",
        &format!("{path}/p"),
        "application/json-patch+json",
        br#"[{"op":"test","path":"/data","value":1}]"#.to_vec(),
    )
    .await;
    assert_eq!(api_error(failed_test).0, 422);
}

#[tokio::test]
async fn discovery_lists_built_in_and_custom_resources() {
    let server = ApiServer::start().await;
    let client = server.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );

    install_widget_crd(&client).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("apps") && discovery.has_group("test.zbase.dev"));
    let gvk = kube::api::GroupVersionKind::gvk("test.zbase.dev", "v1", "Widget");
    let (resource, caps) = discovery.resolve_gvk(&gvk).unwrap();
    assert_eq!(resource.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);

    let aggregated = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(aggregated.has_group("coordination.k8s.io") && aggregated.has_group("test.zbase.dev"));
    let (cm, _) = aggregated
        .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "ConfigMap"))
        .unwrap();
    assert_eq!(cm.plural, "configmaps");
}

#[tokio::test]
async fn metadata_only_clients_get_partial_object_metadata() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut cm = config_map("meta", &[("secret-ish", "x")]);
    cm.metadata.labels = Some([("app".to_owned(), "zbase".to_owned())].into());
    api.create(&PostParams::default(), &cm).await.unwrap();

    let one = api.get_metadata("meta").await.unwrap();
    assert_eq!(one.types.unwrap().kind, "PartialObjectMetadata");
    assert_eq!(one.metadata.labels.unwrap()["app"], "zbase");
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);

    let partial: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::default_namespaced(server.client());
    let mut events = std::pin::pin!(watcher(partial, watcher::Config::default()));
    let mut names = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, events.next()).await.unwrap() {
        match event.unwrap() {
            watcher::Event::InitApply(m) => names.push(m.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["meta"]);
    let client = server.client();
    let raw = client.request_text(
        http::Request::get("/api/v1/namespaces/default/configmaps/meta")
            .header(
                http::header::ACCEPT,
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            )
            .body(Vec::new())
            .unwrap(),
    );
    let raw: Value = serde_json::from_str(&raw.await.unwrap()).unwrap();
    assert_eq!(raw.get("data"), None, "metadata only");
}

#[tokio::test]
async fn streaming_list_watchers_get_the_initial_events_end_bookmark() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("s", &[]))
        .await
        .unwrap();
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().streaming_lists());
    let mut seen = Vec::new();
    loop {
        let event = next(&mut rx).await.unwrap();
        let done = matches!(event, watcher::Event::InitDone);
        seen.push(summary(&event));
        if done {
            break;
        }
    }
    assert_eq!(seen, ["init", "init-apply s", "init-done"]);
    api.create(&PostParams::default(), &config_map("t", &[]))
        .await
        .unwrap();
    assert_eq!(summary(&next(&mut rx).await.unwrap()), "apply t None");
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.query.contains("watch=")),
        "no list request"
    );
}

/// What the test controller did, to assert it settles instead of looping.
#[derive(Default)]
struct Reconciles(std::sync::atomic::AtomicUsize);

async fn reconcile_widget(
    widget: std::sync::Arc<Widget>,
    ctx: std::sync::Arc<(Client, Reconciles)>,
) -> Result<kube::runtime::controller::Action, kube::Error> {
    let (client, count) = &*ctx;
    count.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ns = widget.metadata.namespace.clone().unwrap();
    let name = widget.metadata.name.clone().unwrap();
    let mut cm = config_map(
        &format!("{name}-config"),
        &[("size", &widget.spec.size.to_string())],
    );
    cm.metadata.owner_references = Some(vec![widget.controller_owner_ref(&()).unwrap()]);
    let params = PatchParams::apply("widget-controller").force();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(&format!("{name}-config"), &params, &Patch::Apply(&cm))
        .await?;
    let status =
        json!({"apiVersion": "test.zbase.dev/v1", "kind": "Widget", "status": {"ready": true}});
    Api::<Widget>::namespaced(client.clone(), &ns)
        .patch_status(&name, &params, &Patch::Apply(status))
        .await?;
    Ok(kube::runtime::controller::Action::await_change())
}

#[tokio::test]
async fn a_kube_runtime_controller_reconciles_against_the_fake_and_settles() {
    use kube::runtime::Controller;
    let server = ApiServer::start().await;
    let client = server.client();
    install_widget_crd(&client).await;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let configs: Api<ConfigMap> = Api::default_namespaced(client.clone());
    widgets
        .create(
            &PostParams::default(),
            &Widget::new(
                "w",
                WidgetSpec {
                    size: 3,
                    color: None,
                },
            ),
        )
        .await
        .unwrap();

    let ctx = std::sync::Arc::new((client.clone(), Reconciles::default()));
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .owns(configs.clone(), watcher::Config::default())
        .run(
            reconcile_widget,
            |_, _, _| kube::runtime::controller::Action::requeue(Duration::from_secs(1)),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = widgets
            .get("w")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.ready);
        if ready && configs.get_opt("w-config").await.unwrap().is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller did not reconcile"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(data(&configs.get("w-config").await.unwrap())["size"], "3");

    // No-op applies make no events, so the controller goes quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = ctx.1.0.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ctx.1.0.load(std::sync::atomic::Ordering::SeqCst),
        settled,
        "reconciles keep coming: a hot loop"
    );

    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 4}})),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while data(&configs.get("w-config").await.unwrap())["size"] != "4" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spec change was not reconciled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    widgets.delete("w", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_error(configs.get("w-config").await).0,
        404,
        "owned objects are garbage collected"
    );
    controller.abort();
}
