//! The HTTP layer: routes a request to discovery or the store, and renders results and
//! errors the way the real API server does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse as _, Response};
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::RequestRecord;
use super::error::ApiError;
use super::patch::{self, PatchType};
use super::path::{self, ResourcePath, Target};
use super::resources;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{DeleteOptions, Propagation, Store, WatchFilter, Writer};
use super::watch::{self, WatchOptions};

/// Request bodies above this are refused with 413, like the real server's 3 MiB limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// A watch without `timeoutSeconds` ends after this long (the real server picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// State shared by every request.
#[derive(Debug)]
pub struct Shared {
    store: Mutex<Store>,
    requests: Mutex<Vec<RequestRecord>>,
    /// `host:port`, for `/api`'s server address.
    address: String,
}

/// Locks a mutex, recovering from poisoning: a panicking request must not take every later
/// request down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// State for a server listening on `address`.
    pub fn new(store: Store, address: String) -> Self {
        Self {
            store: Mutex::new(store),
            requests: Mutex::new(Vec::new()),
            address,
        }
    }

    /// The store, locked.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// The recorded requests, locked.
    pub fn requests(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        lock(&self.requests)
    }
}

fn json(code: StatusCode, value: &Value) -> Response {
    json_as(code, value, "application/json")
}

fn json_as(code: StatusCode, value: &Value, content_type: &'static str) -> Response {
    // Serialising a `Value` cannot fail: its map keys are strings.
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(CONTENT_TYPE, content_type)], body).into_response()
}

fn error(e: &ApiError) -> Response {
    json(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

/// The one handler: every path goes through here.
pub async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    shared.requests().push(RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    match route(&shared, &parts, body).await {
        Ok(response) => response,
        Err(e) => error(&e),
    }
}

async fn route(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query): Query<HashMap<String, String>> = Query::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let target = path::parse(parts.uri.path())?;
    if let Target::Resource(path) = target {
        return resource(shared, parts, body, &query, path).await;
    }
    if parts.method != Method::GET {
        return Err(ApiError::method_not_allowed("discovery is read-only"));
    }
    let aggregated = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"));
    let crds = shared.store().crds();
    let ok = |v: Value| Ok(json(StatusCode::OK, &v));
    match target {
        Target::Version => ok(resources::version_info()),
        Target::CoreVersions if aggregated => Ok(json_as(
            StatusCode::OK,
            &resources::aggregated(true, &crds),
            AGGREGATED_CONTENT_TYPE,
        )),
        Target::CoreVersions => ok(resources::core_versions(&shared.address)),
        Target::Groups if aggregated => Ok(json_as(
            StatusCode::OK,
            &resources::aggregated(false, &crds),
            AGGREGATED_CONTENT_TYPE,
        )),
        Target::Groups => ok(resources::group_list(&crds)),
        Target::Group(group) => {
            resources::group(&group, &crds).map_or_else(|| Err(ApiError::no_resource()), ok)
        }
        Target::Resources { group, version } => resources::resource_list(&group, &version, &crds)
            .map_or_else(|| Err(ApiError::no_resource()), ok),
        Target::Resource(_) => Err(ApiError::no_resource()),
    }
}

/// Reads the body, refusing more than [`MAX_BODY`] bytes with 413.
async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::too_large(MAX_BODY)
            } else {
                ApiError::bad_request(format!("reading the body: {e}"))
            })
        }
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
}

/// A create or replace body: JSON, or YAML when the content type says so.
fn object_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = content_type(headers);
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => patch::parse_body(body, false),
        "application/yaml" | "application/x-yaml" | "text/yaml" => patch::parse_body(body, true),
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// The field manager: `fieldManager`, else the user agent's first word, as the real server
/// derives it.
fn manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return manager.clone();
    }
    headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

fn selectors(query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
    Ok((labels, fields))
}

fn propagation(value: &str) -> Result<Propagation, ApiError> {
    match value {
        "Orphan" => Ok(Propagation::Orphan),
        "Background" | "Foreground" => Ok(Propagation::Background),
        other => Err(ApiError::bad_request(format!(
            "unknown propagationPolicy {other:?}"
        ))),
    }
}

/// `DeleteOptions` from the body (kube-rs sends them there) and the query string.
fn delete_options(query: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions::default();
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        patch::parse_body(body, false)?
    };
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    if from_body
        .pointer("/orphanDependents")
        .and_then(Value::as_bool)
        == Some(true)
        || flag(query, "orphanDependents")
    {
        options.propagation = Propagation::Orphan;
    }
    if let Some(policy) =
        text(&from_body, "/propagationPolicy").or_else(|| query.get("propagationPolicy").cloned())
    {
        options.propagation = propagation(&policy)?;
    }
    options.uid = text(&from_body, "/preconditions/uid");
    options.resource_version = text(&from_body, "/preconditions/resourceVersion");
    Ok(options)
}

async fn resource(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Body,
    query: &HashMap<String, String>,
    path: ResourcePath,
) -> Result<Response, ApiError> {
    let info = shared
        .store()
        .resolve(&path.group, &path.version, &path.plural)?;
    let status = match path.subresource.as_deref() {
        None => false,
        Some("status") if info.status_subresource => true,
        Some(_) => return Err(ApiError::no_resource()),
    };
    let namespace = path.namespace.as_deref();
    if (!info.namespaced && namespace.is_some())
        || (info.namespaced
            && namespace.is_none()
            && (path.name.is_some() || parts.method == Method::POST))
    {
        return Err(ApiError::no_resource());
    }
    if query.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the stand-in API server",
        ));
    }
    let manager = manager(query, &parts.headers);
    let writer = Writer {
        manager: &manager,
        status,
    };
    let method = &parts.method;
    let name = path.name.as_deref();
    let metadata_only = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let (code, object) = match (method, name) {
        (&Method::GET, None) if flag(query, "watch") => {
            return start_watch(shared, query, info, namespace, metadata_only);
        }
        (&Method::GET, None) => {
            let (labels, fields) = selectors(query)?;
            (
                StatusCode::OK,
                shared.store().list(&info, namespace, &labels, &fields)?,
            )
        }
        (&Method::GET, Some(name)) => (StatusCode::OK, shared.store().get(&info, namespace, name)?),
        (&Method::POST, None) if !status => {
            let body = object_body(&parts.headers, &read_body(body).await?)?;
            (
                StatusCode::CREATED,
                shared.store().create(&info, namespace, body, writer)?,
            )
        }
        (&Method::PUT, Some(name)) => {
            let body = object_body(&parts.headers, &read_body(body).await?)?;
            (
                StatusCode::OK,
                shared
                    .store()
                    .replace(&info, namespace, name, body, writer)?,
            )
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchType::from_content_type(content_type(&parts.headers))?;
            if kind == PatchType::Apply && query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let body = read_body(body).await?;
            let force = flag(query, "force");
            if force && kind != PatchType::Apply {
                return Err(ApiError::bad_request(
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            let (object, created) = shared
                .store()
                .patch(&info, namespace, name, kind, &body, writer, force)?;
            (
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                object,
            )
        }
        (&Method::DELETE, Some(name)) if !status => {
            let options = delete_options(query, &read_body(body).await?)?;
            let (object, pending) = shared.store().delete(&info, namespace, name, &options)?;
            (
                if pending {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                },
                object,
            )
        }
        (&Method::DELETE, None) => {
            let options = delete_options(query, &read_body(body).await?)?;
            let (labels, fields) = selectors(query)?;
            let deleted = shared
                .store()
                .delete_collection(&info, namespace, &labels, &fields, &options)?;
            (StatusCode::OK, deleted)
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {}",
                parts.uri.path()
            )));
        }
    };
    let object = if metadata_only {
        Store::metadata_only(&object)
    } else {
        object
    };
    Ok(json(code, &object))
}

fn start_watch(
    shared: &Shared,
    query: &HashMap<String, String>,
    info: resources::ResourceInfo,
    namespace: Option<&str>,
    metadata_only: bool,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = match query.get("timeoutSeconds") {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
    };
    let initial_events = flag(query, "sendInitialEvents");
    let options = WatchOptions {
        timeout,
        bookmarks: flag(query, "allowWatchBookmarks"),
        initial_events_end: initial_events,
        metadata_only,
    };
    let filter = WatchFilter {
        info,
        namespace: namespace.map(str::to_owned),
        labels,
        fields,
    };
    let since = if initial_events { None } else { since };
    let started = shared.store().watch(&filter, since);
    let body = match started {
        Ok(start) => watch::body(start, filter, options),
        Err(e) => watch::error_body(&e),
    };
    Ok((StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response())
}
