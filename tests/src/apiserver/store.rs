//! The object store: every resource's objects, the global resourceVersion, the event history
//! watches replay, field-manager bookkeeping for server-side apply, finalizers and garbage
//! collection. Synchronous and free of HTTP; the HTTP layer holds it behind a mutex.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::patch::{self, FieldSet, PatchType};
use super::resources::{self, CRD_GROUP, CRD_PLURAL, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};

/// Namespaces a fresh cluster has.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
/// Capacity of the live-event channel; a watch that falls this far behind is ended with 410.
const CHANNEL_CAPACITY: usize = 4096;

/// Where an object lives. The version is not part of it: objects are stored once per
/// group and plural, whatever version they were written through.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group: String,
    plural: String,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

/// The kind of a change, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created, or started matching a watch's selectors.
    Added,
    /// Changed.
    Modified,
    /// Removed, or stopped matching a watch's selectors.
    Deleted,
}

impl EventType {
    /// The watch event's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One committed change, kept in the history for watches that resume from an older version.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    group: String,
    plural: String,
    namespace: String,
    /// The object after the change (for deletions: its last state).
    pub object: Value,
    /// The object before a modification, so selector watches can turn it into ADDED/DELETED.
    prev: Option<Value>,
}

/// What live watches receive.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// A committed change.
    Event(Arc<Event>),
    /// The history was compacted: every open watch ends, as after an API server restart.
    Reset,
}

/// Which server-side-apply operation wrote fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Operation {
    Apply,
    Update,
}

/// A `managedFields` entry: one manager, one operation, one subresource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ManagerKey {
    manager: String,
    operation: Operation,
    /// `""` or `"status"`.
    subresource: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Managed {
    api_version: String,
    time: String,
    fields: FieldSet,
    /// The last applied configuration, for Apply entries: what the manager will lose when it
    /// omits a field next time.
    config: Option<Value>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Stored without `apiVersion` and `kind`; responses add the request's.
    object: Value,
    managers: BTreeMap<ManagerKey, Managed>,
    /// The pending deletion asked for `propagationPolicy=Orphan`.
    orphan: bool,
}

/// How a deletion treats the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Dependents are deleted (Foreground is treated the same: dependents go first, at once).
    #[default]
    Background,
    /// Dependents stay, their owner reference to the deleted object removed.
    Orphan,
}

/// The parts of `DeleteOptions` the fake honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// `propagationPolicy` (or the deprecated `orphanDependents`).
    pub propagation: Propagation,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
}

/// Who is writing, and through which endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// `fieldManager`, or the client's user-agent name.
    pub manager: &'a str,
    /// Whether the request went to the `status` subresource.
    pub status: bool,
}

/// A watch's scope and selectors.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    /// The watched resource.
    pub info: ResourceInfo,
    /// `None` watches all namespaces (or a cluster-scoped resource).
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// What this watch sees of a change: a modification moves an object into or out of the
    /// selection as ADDED or DELETED, like the real server.
    pub fn translate<'e>(&self, event: &'e Event) -> Option<(EventType, &'e Value)> {
        if event.group != self.info.group || event.plural != self.info.plural {
            return None;
        }
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != event.namespace)
        {
            return None;
        }
        let now = self.matches(&event.object);
        let kind = match event.kind {
            EventType::Modified => {
                let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
            kind if now => kind,
            _ => return None,
        };
        Some((kind, &event.object))
    }
}

/// What a new watch starts with.
#[derive(Debug)]
pub struct WatchStart {
    /// Events to send before live ones: replayed history, or ADDED for every match.
    pub initial: Vec<(EventType, Value)>,
    /// The resourceVersion the live stream continues from.
    pub rv: u64,
    /// Live changes.
    pub live: broadcast::Receiver<Broadcast>,
}

/// All objects and their history.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<Key, Entry>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Watches from a resourceVersion below this are too old (410 Gone).
    oldest_watchable: u64,
    live: broadcast::Sender<Broadcast>,
}

/// Now, as Kubernetes writes `metav1.Time`.
fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn new_uid() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..]
    )
}

/// `generateName` suffix: five characters from the alphabet the real server uses.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// `metadata` as a mutable map, created if absent; callers have checked `object` is an object.
fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // Unreachable: metadata was just made an object.
        _ => unreachable!("metadata is an object"),
    }
}

fn has_finalizers(object: &Value) -> bool {
    meta(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn owner_uids(object: &Value) -> Vec<String> {
    meta(object)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// What generation counts: everything but metadata (and status where it is a subresource).
fn spec_part(object: &Value, info: &ResourceInfo) -> Value {
    let mut part = object.clone();
    if let Value::Object(map) = &mut part {
        map.remove("metadata");
        map.remove("apiVersion");
        map.remove("kind");
        if info.status_subresource {
            map.remove("status");
        }
    }
    part
}

/// Name rules by kind: DNS labels for namespaces and services, path segments for RBAC (whose
/// names have colons, e.g. `system:auth-delegator`), DNS subdomains for everything else.
fn validate_name(info: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    let dns_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum_edges = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    let ok = match (info.group.as_str(), info.plural.as_str()) {
        ("", "namespaces" | "services") => {
            name.len() <= 63 && alnum_edges(name) && name.chars().all(dns_char)
        }
        ("rbac.authorization.k8s.io", _) => {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
        }
        _ => {
            name.len() <= 253
                && name
                    .split('.')
                    .all(|l| alnum_edges(l) && l.chars().all(dns_char))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value: {name:?}",
            info.kind
        )))
    }
}

impl Store {
    /// A store holding the namespaces a fresh cluster has.
    pub fn new(history_limit: usize) -> Self {
        let (live, _) = broadcast::channel(CHANNEL_CAPACITY);
        let mut store = Self {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            oldest_watchable: 0,
            live,
        };
        let Some(info) = resources::builtin("", "v1", "namespaces") else {
            unreachable!("namespaces are built in")
        };
        for ns in INITIAL_NAMESPACES {
            let body = json!({"metadata": {"name": ns}});
            if let Err(e) = store.create(
                &info,
                None,
                body,
                Writer {
                    manager: "kube-apiserver",
                    status: false,
                },
            ) {
                unreachable!("creating namespace {ns} in an empty store failed: {e}");
            }
        }
        store
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Every stored CRD.
    pub fn crds(&self) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.group == CRD_GROUP && k.plural == CRD_PLURAL)
            .map(|(_, e)| e.object.clone())
            .collect()
    }

    /// The resource a request addresses: built in, or defined by a stored CRD; 404 otherwise,
    /// so custom resources need their CRD first, as on a real cluster.
    pub fn resolve(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Result<ResourceInfo, ApiError> {
        if resources::is_builtin_group(group) {
            return resources::builtin(group, version, plural).ok_or_else(ApiError::no_resource);
        }
        let key = Key {
            group: CRD_GROUP.into(),
            plural: CRD_PLURAL.into(),
            namespace: String::new(),
            name: format!("{plural}.{group}"),
        };
        let crd = self.objects.get(&key).ok_or_else(ApiError::no_resource)?;
        resources::from_crd(&crd.object, version).ok_or_else(ApiError::no_resource)
    }

    fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<Key, ApiError> {
        let namespace = match (info.namespaced, namespace) {
            (true, Some(ns)) => ns.to_owned(),
            (false, None) => String::new(),
            _ => return Err(ApiError::no_resource()),
        };
        Ok(Key {
            group: info.group.clone(),
            plural: info.plural.clone(),
            namespace,
            name: name.to_owned(),
        })
    }

    /// An object as a response shows it: with the request's `apiVersion` and the kind.
    pub fn present(object: &Value, info: &ResourceInfo) -> Value {
        let mut out = Map::new();
        out.insert("apiVersion".into(), Value::String(info.api_version()));
        out.insert("kind".into(), Value::String(info.kind.clone()));
        if let Value::Object(map) = object {
            out.extend(
                map.iter()
                    .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        Value::Object(out)
    }

    /// An object or list as a metadata-only client (`Accept: ...;as=PartialObjectMetadata`)
    /// gets it: `meta.k8s.io/v1` `PartialObjectMetadata[List]`, metadata only.
    pub fn metadata_only(value: &Value) -> Value {
        let partial = |o: &Value| {
            json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        };
        match value.get("items").and_then(Value::as_array) {
            Some(items) => json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadataList",
                "metadata": value.get("metadata").cloned().unwrap_or_else(|| json!({})),
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
            None => partial(value),
        }
    }

    /// GET one object.
    pub fn get(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = Self::key(info, namespace, name)?;
        let entry = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, name))?;
        Ok(Self::present(&entry.object, info))
    }

    fn matching<'a>(
        &'a self,
        info: &'a ResourceInfo,
        namespace: Option<&'a str>,
        labels: &'a LabelSelector,
        fields: &'a FieldSelector,
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        self.objects.iter().filter(move |(k, e)| {
            k.group == info.group
                && k.plural == info.plural
                && namespace.is_none_or(|ns| k.namespace == ns)
                && labels.matches(&e.object)
                && fields.matches(&e.object)
        })
    }

    /// LIST: every match, in the `<Kind>List` envelope with the current resourceVersion.
    /// `limit` and `continue` are not implemented: the whole list comes in one page.
    pub fn list(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Result<Value, ApiError> {
        if namespace.is_some() && !info.namespaced {
            return Err(ApiError::no_resource());
        }
        let items: Vec<Value> = self
            .matching(info, namespace, labels, fields)
            .map(|(_, e)| Self::present(&e.object, info))
            .collect();
        Ok(json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    fn record(&mut self, kind: EventType, key: &Key, object: Value, prev: Option<Value>) {
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            group: key.group.clone(),
            plural: key.plural.clone(),
            namespace: key.namespace.clone(),
            object,
            prev,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_watchable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(Broadcast::Event(event));
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// POST: create, with `generateName`, uid, timestamps, generation 1.
    pub fn create(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        body: Value,
        writer: Writer<'_>,
    ) -> Result<Value, ApiError> {
        let object = self.prepare_create(info, namespace, body)?;
        let fields = patch::leaves(&object);
        self.insert_new(info, object, writer, Operation::Update, fields, None)
    }

    /// Checks a create body and fills in name and namespace.
    fn prepare_create(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        check_type(&body, info)?;
        let meta = meta_mut(&mut body);
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", name_suffix()),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        info.kind
                    )));
                }
            },
        };
        meta.insert("name".into(), Value::String(name.clone()));
        match (info.namespaced, namespace) {
            (true, Some(ns)) => {
                if meta
                    .get("namespace")
                    .and_then(Value::as_str)
                    .is_some_and(|b| b != ns)
                {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta.insert("namespace".into(), Value::String(ns.to_owned()));
            }
            (false, None) => {
                meta.remove("namespace");
            }
            _ => return Err(ApiError::no_resource()),
        }
        validate_name(info, &name)?;
        if let Some(ns) = namespace {
            let ns_key = Key {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: ns.to_owned(),
            };
            if !self.objects.contains_key(&ns_key) {
                return Err(ApiError::not_found("namespaces", "", ns));
            }
        }
        if self
            .objects
            .contains_key(&Self::key(info, namespace, &name)?)
        {
            return Err(ApiError::already_exists(&info.plural, &info.group, &name));
        }
        Ok(body)
    }

    fn insert_new(
        &mut self,
        info: &ResourceInfo,
        mut object: Value,
        writer: Writer<'_>,
        operation: Operation,
        fields: FieldSet,
        config: Option<Value>,
    ) -> Result<Value, ApiError> {
        if let Value::Object(map) = &mut object {
            map.remove("apiVersion");
            map.remove("kind");
            if info.status_subresource {
                map.remove("status");
            }
        }
        match (info.group.as_str(), info.plural.as_str()) {
            (CRD_GROUP, CRD_PLURAL) => {
                validate_crd(&object)?;
                let names = object
                    .pointer("/spec/names")
                    .cloned()
                    .unwrap_or(Value::Null);
                let time = now();
                object["status"] = json!({
                    "acceptedNames": names,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time},
                    ],
                    "storedVersions": object.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten()
                        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                        .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>(),
                });
            }
            ("", "namespaces") => object["status"] = json!({"phase": "Active"}),
            _ => {}
        }
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let namespace = meta_str(&object, "namespace").map(str::to_owned);
        let key = Self::key(info, namespace.as_deref(), &name)?;
        let rv = self.bump();
        let mut managers = BTreeMap::new();
        managers.insert(
            ManagerKey {
                manager: writer.manager.to_owned(),
                operation,
                subresource: String::new(),
            },
            Managed {
                api_version: info.api_version(),
                time: now(),
                fields,
                config,
            },
        );
        let meta = meta_mut(&mut object);
        meta.insert("uid".into(), Value::String(new_uid()));
        meta.insert("creationTimestamp".into(), Value::String(now()));
        meta.insert("generation".into(), json!(1));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.insert("managedFields".into(), render_managers(&managers));
        self.objects.insert(
            key.clone(),
            Entry {
                object: object.clone(),
                managers,
                orphan: false,
            },
        );
        let out = Self::present(&object, info);
        let owners = owner_uids(&object);
        self.record(EventType::Added, &key, object, None);
        // The real garbage collector also deletes a new dependent whose every owner is gone
        // (a controller acting on a stale cache); this one does it at once.
        let orphaned = !owners.is_empty()
            && !owners.iter().any(|o| {
                self.objects
                    .values()
                    .any(|e| meta_str(&e.object, "uid") == Some(o.as_str()))
            });
        if orphaned {
            self.delete_key(&key, Propagation::Background);
        }
        Ok(out)
    }

    fn existing(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Key, &Entry), ApiError> {
        let key = Self::key(info, namespace, name)?;
        match self.objects.get(&key) {
            Some(entry) => Ok((key, entry)),
            None => Err(ApiError::not_found(&info.plural, &info.group, name)),
        }
    }

    /// PUT: replace, with optimistic concurrency on `metadata.resourceVersion`.
    pub fn replace(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        writer: Writer<'_>,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        check_type(&body, info)?;
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if namespace.is_some() && meta_str(&body, "namespace").is_some_and(|n| Some(n) != namespace)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let (key, entry) = self.existing(info, namespace, name)?;
        let stale = meta_str(&body, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .is_some_and(|rv| Some(rv) != meta_str(&entry.object, "resourceVersion"));
        if stale {
            return Err(ApiError::conflict(&info.plural, &info.group, name));
        }
        self.commit(info, key, body, writer, Operation::Update, None)
    }

    /// PATCH with any of the four patch types; apply creates the object if it is absent.
    /// Returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &[u8],
        writer: Writer<'_>,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        if kind == PatchType::Apply {
            return self.apply(info, namespace, name, body, writer, force);
        }
        let (key, entry) = self.existing(info, namespace, name)?;
        let mut object = Self::present(&entry.object, info);
        patch::apply_patch(&mut object, kind, body)?;
        if !object.is_object() {
            return Err(ApiError::invalid("the patched object is not a JSON object"));
        }
        if meta_str(&object, "name") != Some(name) {
            return Err(ApiError::invalid("a patch cannot change metadata.name"));
        }
        if meta_str(&object, "resourceVersion") != meta_str(&entry.object, "resourceVersion") {
            // The patch named a resourceVersion: that is a precondition, like on PUT.
            return Err(ApiError::conflict(&info.plural, &info.group, name));
        }
        Ok((
            self.commit(info, key, object, writer, Operation::Update, None)?,
            false,
        ))
    }

    fn apply(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: &[u8],
        writer: Writer<'_>,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        let mut config = patch::parse_body(body, true)?;
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "an applied configuration must be an object",
            ));
        }
        patch::strip_nulls(&mut config);
        let precondition = meta_str(&config, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(str::to_owned);
        if config.get("apiVersion").and_then(Value::as_str).is_none()
            || config.get("kind").and_then(Value::as_str).is_none()
        {
            return Err(ApiError::bad_request(
                "an applied configuration must set apiVersion and kind",
            ));
        }
        check_type(&config, info)?;
        if meta_str(&config, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if namespace.is_some()
            && meta_str(&config, "namespace").is_some_and(|n| Some(n) != namespace)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        // Only the part the endpoint writes counts as applied: a main-resource apply does not
        // own status where it is a subresource, a status apply owns only status.
        if let Value::Object(map) = &mut config {
            if writer.status {
                map.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
            } else if info.status_subresource {
                map.remove("status");
            }
            if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                meta.remove("resourceVersion");
                meta.remove("managedFields");
            }
        }
        let me = ManagerKey {
            manager: writer.manager.to_owned(),
            operation: Operation::Apply,
            subresource: if writer.status {
                "status".into()
            } else {
                String::new()
            },
        };
        let key = Self::key(info, namespace, name)?;
        let Some(entry) = self.objects.get(&key) else {
            if writer.status {
                return Err(ApiError::not_found(&info.plural, &info.group, name));
            }
            let mut object = config.clone();
            meta_mut(&mut object).insert("name".into(), Value::String(name.to_owned()));
            let object = self.prepare_create(info, namespace, object)?;
            let fields = patch::leaves(&config);
            return Ok((
                self.insert_new(info, object, writer, Operation::Apply, fields, Some(config))?,
                true,
            ));
        };
        if precondition
            .is_some_and(|rv| Some(rv.as_str()) != meta_str(&entry.object, "resourceVersion"))
        {
            return Err(ApiError::conflict(&info.plural, &info.group, name));
        }
        let others: BTreeMap<String, FieldSet> = entry
            .managers
            .iter()
            .filter(|(k, _)| **k != me)
            .map(|(k, m)| {
                (
                    format!("{} ({:?})", k.manager, k.operation),
                    m.fields.clone(),
                )
            })
            .collect();
        let current = Self::present(&entry.object, info);
        let previous = entry.managers.get(&me).and_then(|m| m.config.as_ref());
        let applied = patch::server_side_apply(&current, previous, &config, &others, force)?;
        let object = self.commit(
            info,
            key,
            applied.object,
            writer,
            Operation::Apply,
            Some((config, applied.taken)),
        )?;
        Ok((object, false))
    }

    /// Writes a new version of an existing object: keeps what the endpoint may not change,
    /// maintains generation and field managers, skips no-op writes (no new resourceVersion,
    /// no event, as the real server does), and completes a deletion once the last finalizer
    /// is gone.
    fn commit(
        &mut self,
        info: &ResourceInfo,
        key: Key,
        mut new: Value,
        writer: Writer<'_>,
        operation: Operation,
        apply: Option<(Value, FieldSet)>,
    ) -> Result<Value, ApiError> {
        let (old, old_managers, orphan) = match self.objects.get(&key) {
            Some(entry) => (entry.object.clone(), entry.managers.clone(), entry.orphan),
            None => return Err(ApiError::not_found(&info.plural, &info.group, &key.name)),
        };
        if let Value::Object(map) = &mut new {
            map.remove("apiVersion");
            map.remove("kind");
        }
        if writer.status {
            let status = new.get("status").cloned();
            new = old.clone();
            match (status, &mut new) {
                (Some(status), new) => new["status"] = status,
                (None, Value::Object(map)) => {
                    map.remove("status");
                }
                _ => {}
            }
        } else if info.status_subresource {
            match (old.get("status"), &mut new) {
                (Some(status), new) => new["status"] = status.clone(),
                (None, Value::Object(map)) => {
                    map.remove("status");
                }
                _ => {}
            }
        }
        let old_meta = meta(&old).cloned().unwrap_or_default();
        let new_meta = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "managedFields",
        ] {
            match old_meta.get(field) {
                Some(v) => new_meta.insert(field.into(), v.clone()),
                None => new_meta.remove(field),
            };
        }

        let subresource = if writer.status {
            "status".to_owned()
        } else {
            String::new()
        };
        let me = ManagerKey {
            manager: writer.manager.to_owned(),
            operation,
            subresource,
        };
        let mut managers = old_managers.clone();
        let (changed, removed) = patch::diff(&old, &new);
        let lost: FieldSet = match &apply {
            Some((_, taken)) => taken.clone(),
            None => changed.union(&removed).cloned().collect(),
        };
        for (_, m) in managers.iter_mut().filter(|(k, _)| **k != me) {
            strip_fields(m, &lost);
        }
        let mine = managers.entry(me.clone()).or_insert_with(|| Managed {
            api_version: info.api_version(),
            time: now(),
            fields: FieldSet::new(),
            config: None,
        });
        match apply {
            Some((config, _)) => {
                mine.fields = patch::leaves(&config);
                mine.config = Some(config);
            }
            None => {
                mine.fields = mine.fields.difference(&removed).cloned().collect();
                mine.fields.extend(changed.iter().cloned());
            }
        }
        managers.retain(|k, m| k.operation == Operation::Apply || !m.fields.is_empty());
        let managers_changed = !same_fields(&managers, &old_managers);
        if new == old && !managers_changed {
            return Ok(Self::present(&old, info));
        }
        if let Some(m) = managers.get_mut(&me) {
            m.time = now();
            m.api_version = info.api_version();
        }

        if old
            .get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some()
            && !has_finalizers(&new)
        {
            if let Some(entry) = self.objects.get_mut(&key) {
                entry.object = new;
            }
            return self
                .remove_now(&key, orphan)
                .map(|o| Self::present(&o, info))
                .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, &key.name));
        }

        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if spec_part(&old, info) != spec_part(&new, info) {
            generation + 1
        } else {
            generation
        };
        let rv = self.bump();
        let meta = meta_mut(&mut new);
        meta.insert("generation".into(), json!(generation));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert("managedFields".into(), render_managers(&managers));
        if let Some(entry) = self.objects.get_mut(&key) {
            entry.object = new.clone();
            entry.managers = managers;
        }
        let out = Self::present(&new, info);
        self.record(EventType::Modified, &key, new, Some(old));
        Ok(out)
    }

    /// A write by the server itself (deletion timestamps, garbage collection): no field
    /// manager, no generation change.
    fn system_update(&mut self, key: &Key, change: impl FnOnce(&mut Value)) {
        let Some(entry) = self.objects.get_mut(key) else {
            return;
        };
        let old = entry.object.clone();
        change(&mut entry.object);
        if entry.object == old {
            return;
        }
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut entry.object).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let new = entry.object.clone();
        self.record(EventType::Modified, key, new, Some(old));
    }

    /// DELETE one object. Returns it and whether deletion is pending on finalizers.
    pub fn delete(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let (key, entry) = self.existing(info, namespace, name)?;
        let uid_ok = options
            .uid
            .as_deref()
            .is_none_or(|u| Some(u) == meta_str(&entry.object, "uid"));
        let rv_ok = options
            .resource_version
            .as_deref()
            .is_none_or(|rv| Some(rv) == meta_str(&entry.object, "resourceVersion"));
        if !uid_ok || !rv_ok {
            return Err(ApiError::conflict(&info.plural, &info.group, name));
        }
        let (object, pending) = self.delete_key(&key, options.propagation);
        Ok((Self::present(&object, info), pending))
    }

    /// DELETE on a collection: every match, like `deletecollection`.
    pub fn delete_collection(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let keys: Vec<Key> = self
            .matching(info, namespace, labels, fields)
            .map(|(k, _)| k.clone())
            .collect();
        let items: Vec<Value> = keys
            .iter()
            .map(|k| Self::present(&self.delete_key(k, options.propagation).0, info))
            .collect();
        Ok(json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    /// Deletes now, or marks for deletion when finalizers remain.
    fn delete_key(&mut self, key: &Key, propagation: Propagation) -> (Value, bool) {
        let Some(entry) = self.objects.get_mut(key) else {
            return (Value::Null, false);
        };
        let orphan = propagation == Propagation::Orphan;
        if has_finalizers(&entry.object) {
            entry.orphan = orphan;
            let time = now();
            self.system_update(key, |o| {
                let meta = meta_mut(o);
                if !meta.contains_key("deletionTimestamp") {
                    meta.insert("deletionTimestamp".into(), Value::String(time));
                    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
            });
            let object = self
                .objects
                .get(key)
                .map(|e| e.object.clone())
                .unwrap_or_default();
            return (object, true);
        }
        (self.remove_now(key, orphan).unwrap_or_default(), false)
    }

    /// Removes an object for good and cascades: garbage collection of dependents, the custom
    /// resources of a CRD, the contents of a namespace.
    fn remove_now(&mut self, key: &Key, orphan: bool) -> Option<Value> {
        let entry = self.objects.remove(key)?;
        let rv = self.bump();
        let mut object = entry.object;
        meta_mut(&mut object).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.record(EventType::Deleted, key, object.clone(), None);

        if key.group == CRD_GROUP && key.plural == CRD_PLURAL {
            // The real server waits for custom resources' finalizers; the fake removes them.
            let group = object
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let plural = object
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let doomed: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.group == group && k.plural == plural)
                .cloned()
                .collect();
            for k in doomed {
                self.remove_now(&k, false);
            }
        }
        if key.group.is_empty() && key.plural == "namespaces" {
            let doomed: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.namespace == key.name)
                .cloned()
                .collect();
            for k in doomed {
                self.delete_key(&k, Propagation::Background);
            }
        }
        if let Some(uid) = meta_str(&object, "uid") {
            self.collect_garbage(uid, orphan);
        }
        Some(object)
    }

    /// Like kube-controller-manager's garbage collector, at once: dependents whose only
    /// remaining owner is gone are deleted, others lose the dangling owner reference; with
    /// `orphan` every dependent just loses the reference.
    fn collect_garbage(&mut self, uid: &str, orphan: bool) {
        let dependents: Vec<(Key, Vec<String>)> = self
            .objects
            .iter()
            .map(|(k, e)| (k, owner_uids(&e.object)))
            .filter(|(_, owners)| owners.iter().any(|o| o == uid))
            .map(|(k, owners)| (k.clone(), owners))
            .collect();
        for (key, owners) in dependents {
            let other_owner_alive = owners.iter().filter(|o| *o != uid).any(|o| {
                self.objects
                    .values()
                    .any(|e| meta_str(&e.object, "uid") == Some(o))
            });
            if orphan || other_owner_alive {
                self.system_update(&key, |o| {
                    if let Some(Value::Array(refs)) = meta_mut(o).get_mut("ownerReferences") {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                    }
                });
            } else {
                self.delete_key(&key, Propagation::Background);
            }
        }
    }

    /// Starts a watch: replays history after `since` (410 Gone if it is older than the
    /// history kept), or lists current matches as ADDED when `since` is `None` or 0.
    pub fn watch(&self, filter: &WatchFilter, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let initial = match since {
            Some(since) if since > 0 => {
                if since < self.oldest_watchable {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {since} ({})",
                        self.oldest_watchable
                    )));
                }
                self.history
                    .iter()
                    .filter(|e| e.rv > since)
                    .filter_map(|e| filter.translate(e).map(|(kind, o)| (kind, o.clone())))
                    .collect()
            }
            _ => self
                .matching(
                    &filter.info,
                    filter.namespace.as_deref(),
                    &filter.labels,
                    &filter.fields,
                )
                .map(|(_, e)| (EventType::Added, e.object.clone()))
                .collect(),
        };
        Ok(WatchStart {
            initial,
            rv: self.rv,
            live: self.live.subscribe(),
        })
    }

    /// Forgets the event history, as etcd compaction does, and ends every open watch: a
    /// watch resuming from any resourceVersion issued so far gets 410 Gone and must re-list.
    pub fn compact(&mut self) {
        self.bump();
        self.history.clear();
        self.oldest_watchable = self.rv;
        let _ = self.live.send(Broadcast::Reset);
    }
}

fn strip_fields(managed: &mut Managed, lost: &FieldSet) {
    managed.fields.retain(|p| !lost.contains(p));
    if let Some(config) = &mut managed.config {
        for path in lost {
            patch::remove_path(config, path);
        }
    }
}

fn same_fields(a: &BTreeMap<ManagerKey, Managed>, b: &BTreeMap<ManagerKey, Managed>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, ma), (kb, mb))| {
            ka == kb && ma.fields == mb.fields && ma.config == mb.config
        })
}

fn render_managers(managers: &BTreeMap<ManagerKey, Managed>) -> Value {
    Value::Array(
        managers
            .iter()
            .map(|(k, m)| {
                let mut entry = json!({
                    "manager": k.manager,
                    "operation": match k.operation { Operation::Apply => "Apply", Operation::Update => "Update" },
                    "apiVersion": m.api_version,
                    "time": m.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": patch::fields_v1(&m.fields),
                });
                if !k.subresource.is_empty() {
                    entry["subresource"] = Value::String(k.subresource.clone());
                }
                entry
            })
            .collect(),
    )
}

/// A body's `kind` (when given) must be the resource's.
fn check_type(body: &Value, info: &ResourceInfo) -> Result<(), ApiError> {
    match body.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != info.kind => Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind of the resource ({})",
            info.kind
        ))),
        _ => Ok(()),
    }
}

/// The CRD fields the fake relies on to serve the custom resource.
fn validate_crd(crd: &Value) -> Result<(), ApiError> {
    let text = |p: &str| {
        crd.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(group), Some(plural), Some(_kind)) = (
        text("/spec/group"),
        text("/spec/names/plural"),
        text("/spec/names/kind"),
    ) else {
        return Err(ApiError::invalid(
            "CustomResourceDefinition is invalid: spec.group, spec.names.plural and spec.names.kind are required",
        ));
    };
    if meta_str(crd, "name") != Some(format!("{plural}.{group}").as_str()) {
        return Err(ApiError::invalid(format!(
            "CustomResourceDefinition is invalid: metadata.name: must be spec.names.plural+\".\"+spec.group ({plural}.{group})"
        )));
    }
    if crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .is_none_or(|v| v.is_empty())
    {
        return Err(ApiError::invalid(
            "CustomResourceDefinition is invalid: spec.versions must have at least one version",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm_info() -> ResourceInfo {
        resources::builtin("", "v1", "configmaps").unwrap()
    }

    fn writer() -> Writer<'static> {
        Writer {
            manager: "test",
            status: false,
        }
    }

    fn filter(labels: &str) -> WatchFilter {
        WatchFilter {
            info: cm_info(),
            namespace: Some("default".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
        }
    }

    fn create(store: &mut Store, name: &str, labels: Value) -> Value {
        store
            .create(
                &cm_info(),
                Some("default"),
                json!({"metadata": {"name": name, "labels": labels}}),
                writer(),
            )
            .unwrap()
    }

    fn kinds(start: &WatchStart) -> Vec<(&'static str, String)> {
        start
            .initial
            .iter()
            .map(|(k, o)| (k.as_str(), meta_str(o, "name").unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn selector_watches_see_objects_move_in_and_out() {
        let mut store = Store::new(100);
        let from = store.resource_version();
        create(&mut store, "a", json!({"app": "x"}));
        create(&mut store, "b", json!({"app": "y"}));
        let relabel = |store: &mut Store, name: &str, app: &str| {
            let body = format!(r#"{{"metadata":{{"labels":{{"app":"{app}"}}}}}}"#);
            store
                .patch(
                    &cm_info(),
                    Some("default"),
                    name,
                    PatchType::Merge,
                    body.as_bytes(),
                    writer(),
                    false,
                )
                .unwrap();
        };
        relabel(&mut store, "b", "x");
        relabel(&mut store, "a", "z");
        let start = store.watch(&filter("app=x"), Some(from)).unwrap();
        assert_eq!(
            kinds(&start),
            [
                ("ADDED", "a".into()),
                ("ADDED", "b".into()),
                ("DELETED", "a".into())
            ]
        );
        let all = store.watch(&filter(""), Some(from)).unwrap();
        assert_eq!(all.initial.len(), 4);
        let current = store.watch(&filter("app=x"), None).unwrap();
        assert_eq!(kinds(&current), [("ADDED", "b".into())]);
    }

    #[test]
    fn history_limit_and_compaction_make_old_versions_gone() {
        let mut store = Store::new(2);
        let from = store.resource_version();
        for name in ["a", "b", "c"] {
            create(&mut store, name, json!({}));
        }
        assert_eq!(store.watch(&filter(""), Some(from)).unwrap_err().code, 410);
        let recent = store.resource_version() - 2;
        assert_eq!(
            store
                .watch(&filter(""), Some(recent))
                .unwrap()
                .initial
                .len(),
            2
        );
        store.compact();
        assert_eq!(
            store.watch(&filter(""), Some(recent + 2)).unwrap_err().code,
            410
        );
        let now = store.resource_version();
        assert!(
            store
                .watch(&filter(""), Some(now))
                .unwrap()
                .initial
                .is_empty()
        );
    }

    #[test]
    fn no_op_writes_keep_the_resource_version_and_emit_nothing() {
        let mut store = Store::new(100);
        let created = create(&mut store, "a", json!({"k": "v"}));
        let rv = store.resource_version();
        let body = json!({"metadata": {"name": "a", "labels": {"k": "v"}}});
        let replaced = store
            .replace(&cm_info(), Some("default"), "a", body, writer())
            .unwrap();
        assert_eq!(store.resource_version(), rv);
        assert_eq!(
            replaced["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn a_dependent_created_for_a_deleted_owner_is_collected() {
        let mut store = Store::new(100);
        let owner = create(&mut store, "owner", json!({}));
        let reference = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]});
        store
            .delete(
                &cm_info(),
                Some("default"),
                "owner",
                &DeleteOptions::default(),
            )
            .unwrap();
        let late = json!({"metadata": {"name": "late", "ownerReferences": [reference]}});
        store
            .create(&cm_info(), Some("default"), late, writer())
            .unwrap();
        assert!(
            store.get(&cm_info(), Some("default"), "late").is_err(),
            "a dependent of nothing stays"
        );
    }

    #[test]
    fn a_dependent_with_another_live_owner_survives() {
        let mut store = Store::new(100);
        let a = create(&mut store, "a", json!({}));
        let b = create(&mut store, "b", json!({}));
        let owner = |o: &Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]});
        let body =
            json!({"metadata": {"name": "child", "ownerReferences": [owner(&a), owner(&b)]}});
        store
            .create(&cm_info(), Some("default"), body, writer())
            .unwrap();
        store
            .delete(&cm_info(), Some("default"), "a", &DeleteOptions::default())
            .unwrap();
        let child = store.get(&cm_info(), Some("default"), "child").unwrap();
        assert_eq!(child["metadata"]["ownerReferences"], json!([owner(&b)]));
        store
            .delete(&cm_info(), Some("default"), "b", &DeleteOptions::default())
            .unwrap();
        assert_eq!(
            store
                .get(&cm_info(), Some("default"), "child")
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn delete_preconditions_are_checked() {
        let mut store = Store::new(100);
        create(&mut store, "a", json!({}));
        let wrong = DeleteOptions {
            uid: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .delete(&cm_info(), Some("default"), "a", &wrong)
                .unwrap_err()
                .code,
            409
        );
        let stale = DeleteOptions {
            resource_version: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .delete(&cm_info(), Some("default"), "a", &stale)
                .unwrap_err()
                .code,
            409
        );
    }

    #[test]
    fn crds_are_validated_and_define_resources() {
        let mut store = Store::new(100);
        let crd_info = resources::builtin(CRD_GROUP, "v1", CRD_PLURAL).unwrap();
        let bad = json!({"metadata": {"name": "wrong.example.com"}, "spec": {"group": "example.com", "names": {"plural": "things", "kind": "Thing"}, "scope": "Cluster", "versions": [{"name": "v1", "served": true, "storage": true}]}});
        assert_eq!(
            store
                .create(&crd_info, None, bad, writer())
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            store
                .resolve("example.com", "v1", "things")
                .unwrap_err()
                .code,
            404
        );
        let good = json!({"metadata": {"name": "things.example.com"}, "spec": {"group": "example.com", "names": {"plural": "things", "kind": "Thing"}, "scope": "Cluster", "versions": [{"name": "v1", "served": true, "storage": true}]}});
        store.create(&crd_info, None, good, writer()).unwrap();
        let info = store.resolve("example.com", "v1", "things").unwrap();
        assert!(!info.namespaced && !info.status_subresource);
        store
            .create(
                &info,
                None,
                json!({"metadata": {"name": "t"}, "spec": {"x": 1}}),
                writer(),
            )
            .unwrap();
        assert_eq!(
            store
                .create(
                    &info,
                    Some("default"),
                    json!({"metadata": {"name": "t2"}}),
                    writer()
                )
                .unwrap_err()
                .code,
            404
        );
    }
}
