//! A stand-in Kubernetes API server over real HTTP, in memory, for the operator's tests.
//!
//! No kube-apiserver can run where the tests run, so [`ApiServer`] serves the API paths a
//! kube-rs client, `Api<K>`, `kube::runtime::Controller`/`watcher`, server-side apply and
//! Lease-based leader election use, with the semantics they rely on:
//!
//! - Generic storage for any resource: the built-in kinds an operator touches (a fixed
//!   table, see `resources.rs`) and custom resources whose CRD is stored; a custom resource
//!   without its CRD is 404, as on a real cluster. Objects are stored once per group and
//!   plural; responses echo the request's version.
//! - GET, LIST (label selectors with `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`; field
//!   selectors on `metadata.name` and `metadata.namespace` only), POST (`generateName`, uid,
//!   timestamps, generation 1, 409 AlreadyExists; namespaced objects need their namespace,
//!   `default`, `kube-system`, `kube-public` and `kube-node-lease` exist from the start), PUT
//!   with optimistic concurrency on `metadata.resourceVersion`, PATCH (server-side apply,
//!   merge patch, strategic merge patch, JSON patch), DELETE and delete-collection.
//! - One global resourceVersion, bumped by every write; a write that changes nothing gets no
//!   new version and no watch event, as on the real server.
//! - The `status` subresource for built-in kinds that have one and for CRDs that declare it:
//!   main-resource writes never change `.status`, status writes change nothing else, and
//!   `metadata.generation` grows only when something outside metadata (and status) changes.
//! - Finalizers delay deletion (`deletionTimestamp` is set, the object goes when its last
//!   finalizer is removed); garbage collection of dependents by owner reference, recursively,
//!   unless `propagationPolicy=Orphan`; deleting a namespace deletes its contents, deleting a
//!   CRD its custom resources.
//! - WATCH with resume from a resourceVersion out of an in-memory history (410 Gone when older
//!   than the history kept, see [`ApiServer::compact_history`]), `timeoutSeconds`, bookmarks,
//!   selectors (objects moving in or out of a selection become ADDED or DELETED), and
//!   `sendInitialEvents` for the streaming-list strategy.
//! - Metadata-only clients (`Accept: ...;as=PartialObjectMetadata`, `Api<PartialObjectMeta<K>>`)
//!   get `PartialObjectMetadata[List]` from reads, writes and watches.
//! - Discovery (`/version` says 1.33, `/api`, `/apis`, per group version, aggregated too).
//!
//! Simplifications, on purpose:
//! - No authentication, authorisation or admission: RBAC is checked elsewhere. No defaulting
//!   and no schema validation of objects (CRD schemas are stored, not enforced).
//! - `limit`/`continue` are ignored: a list is one page. `resourceVersion` on GET and LIST is
//!   ignored: reads are always the latest. `dryRun` is refused with 400.
//! - Strategic merge patch is applied as a JSON merge patch: lists are replaced whole, not
//!   merged by their merge key, and `$patch`-style directives are dropped.
//! - Server-side apply tracks leaf paths, not structured-merge-diff sets: lists are atomic
//!   (owned and replaced whole), a manager's omitted fields are removed unless another
//!   manager owns them, conflicts are reported (409) only for leaves another manager owns
//!   with a different value, and `force=true` takes them over. `managedFields` show the
//!   leaves in `fieldsV1` form.
//! - Non-apply writes are owned by `fieldManager` or the user agent's first word and take
//!   over the leaves they change. Creating an object whose kind has a status subresource
//!   drops `.status`, as the real server does for most kinds.
//! - Foreground deletion is treated as background; garbage collection happens at once.
//! - Deleting a CRD removes its custom resources at once, finalizers or not.
//!
//! Use:
//!
//! ```text
//! let server = ApiServer::start().await;
//! let client = server.client(); // or KUBECONFIG=server.kubeconfig() for a separate binary
//! Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &MyKind::crd()).await?;
//! // ... run the controller against `client`, then:
//! server.clear_requests();
//! // ... pause the reconcile ...
//! assert!(server.requests().iter().all(|r| !r.is_write()));
//! ```

mod error;
mod patch;
mod path;
mod resources;
mod routes;
mod selector;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use self::error::ApiError;
pub use self::routes::MAX_BODY;

/// How many changes the watch history keeps before resuming older watches means 410 Gone.
pub const HISTORY_LIMIT: usize = 10_000;

/// One request the server received, for tests that assert what a controller did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `PATCH`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string, empty when there was none.
    pub query: String,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
}

impl RequestRecord {
    /// Whether the request could change state: POST, PUT, PATCH or DELETE.
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// A running stand-in API server on `127.0.0.1`; stops (with every connection and watch)
/// when dropped.
#[derive(Debug)]
pub struct ApiServer {
    address: SocketAddr,
    shared: Arc<routes::Shared>,
    server: JoinHandle<()>,
    kubeconfig: PathBuf,
    /// Holds the kubeconfig file; removed with the server.
    _dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts a server on a port the kernel picks. Panics if no loopback port can be bound
    /// or no temporary directory created, which leaves a test nothing to do.
    pub async fn start() -> Self {
        match Self::try_start().await {
            Ok(server) => server,
            Err(e) => panic!("starting the stand-in API server: {e}"),
        }
    }

    /// Starts a server on a port the kernel picks.
    pub async fn try_start() -> std::io::Result<Self> {
        Self::try_start_with_history(HISTORY_LIMIT).await
    }

    /// Starts a server whose watch history keeps only `history_limit` changes, so a test can
    /// make a resuming watch fall off its end.
    pub async fn try_start_with_history(history_limit: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&format!("http://{address}")))?;
        let shared = Arc::new(routes::Shared::new(
            store::Store::new(history_limit),
            address.to_string(),
        ));
        let app = Router::new()
            .fallback(routes::handle)
            .with_state(shared.clone());
        let server = tokio::spawn(serve(listener, app));
        Ok(Self {
            address,
            shared,
            server,
            kubeconfig,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kube client for this server, default namespace `default`, no credentials. Call it
    /// inside a Tokio runtime (the client spawns its request buffer there).
    pub fn client(&self) -> kube::Client {
        let uri = match self.url().parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(e) => unreachable!("http://127.0.0.1:PORT is a valid URI: {e}"),
        };
        match kube::Client::try_from(kube::Config::new(uri)) {
            Ok(client) => client,
            // kube only fails here for TLS or auth settings, and this config has neither.
            Err(e) => unreachable!("a plain-HTTP config without auth makes a client: {e}"),
        }
    }

    /// A kubeconfig file for this server (one cluster, one context, no auth), for a separate
    /// process started with `KUBECONFIG=` this path; removed when the server is dropped.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests().clone()
    }

    /// Forgets the recorded requests, e.g. after a test's setup.
    pub fn clear_requests(&self) {
        self.shared.requests().clear();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Drops the watch history and ends every open watch, as etcd compaction plus an API
    /// server restart would: watches resuming from any resourceVersion issued so far get
    /// 410 Gone, so clients must re-list.
    pub fn compact_history(&self) {
        self.shared.store().compact();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The accept loop owns every connection task; aborting it drops them all, and with
        // them the watch streams.
        self.server.abort();
    }
}

/// Accepts connections until aborted; each is served over HTTP/1.1 or h2c.
async fn serve(listener: TcpListener, app: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        // A connection error concerns only that client.
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: zbase-fake
  cluster:
    server: {server}
users:
- name: zbase-fake
  user: {{}}
contexts:
- name: zbase-fake
  context:
    cluster: zbase-fake
    user: zbase-fake
    namespace: default
current-context: zbase-fake
"
    )
}
