//! From identifier to resource task: find it, wake it, or start it.

use super::readiness::Readiness;
use super::resource::{self, Command, Opened, PeerLink, Refused, Reply};
use crate::cluster::{Directory, Homes, Route};
use crate::limits::{Admission, Limits};
use crate::session::CloseReason;
use crate::store::{Claim, Seq, Store};
use crate::telemetry::{IdHasher, Metrics};
use crate::tls::ClientTls;
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zbase_proto::wire::{ResourceId, VerificationKey};

/// Commands a resource task buffers before senders wait: deep enough for bursts, shallow
/// enough that a flooding peer is slowed at its own socket.
const COMMAND_QUEUE: usize = 256;
/// A handshake retries this often when it meets a resource that is hibernating just then.
const MAX_RETRIES: usize = 8;

/// A running resource task's mailbox.
#[derive(Clone)]
pub(super) struct Handle {
    pub(super) tx: mpsc::Sender<Command>,
    generation: u64,
}

/// What the relay is built from.
pub struct RelayParts {
    /// Where resources are kept.
    pub store: Arc<dyn Store>,
    /// Every bound.
    pub limits: Limits,
    /// Where counts go.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the station starts to shut down.
    pub shutdown: CancellationToken,
    /// The cluster's view when pods share a PostgreSQL store; `None` serves everything here.
    pub directory: Option<Directory>,
    /// This pod's client side of mutual TLS on the internal port; `None` dials other pods in
    /// plain HTTP/2.
    pub internal_tls: Option<ClientTls>,
    /// On a replica site, the bridge of each resource's deltas and requests to the primary.
    pub uplink: Option<Arc<dyn Uplink>>,
}

/// Carries one resource's deltas and requests between this site's peers and another site's
/// (a replica's bridge to its primary).
pub trait Uplink: Send + Sync + 'static {
    /// Opens the bridge for `id`. The resource sends its peers' `submit-delta` and
    /// `submit-request` frames (encoded) into the returned sender, and closes the bridge by
    /// dropping it; the bridge delivers the other sites' `forward-delta` and
    /// `forward-request` frames (encoded) into `to_peers`, dropping them when it is full.
    /// `None` when this site has no other site to bridge to now (it is the primary).
    fn open(&self, id: ResourceId, to_peers: mpsc::Sender<Bytes>) -> Option<mpsc::Sender<Bytes>>;
}

/// Another site's bridge, joined to one resource's peers as a peer (see [`Relay::join_site`]).
pub struct SiteLink {
    peer: u64,
    tx: mpsc::Sender<Command>,
    link: PeerLink,
}

impl SiteLink {
    /// Relays the other site's delta to this site's peers.
    pub async fn delta(&self, payload: Bytes) -> bool {
        let peer = self.peer;
        self.tx.send(Command::Delta { peer, payload }).await.is_ok()
    }

    /// Relays the other site's request to this site's peers.
    pub async fn request(&self, payload: Bytes) -> bool {
        let peer = self.peer;
        self.tx
            .send(Command::Request { peer, payload })
            .await
            .is_ok()
    }

    /// The next frame (encoded) for the other site; `None` once the resource let go of it.
    pub async fn next(&mut self) -> Option<Bytes> {
        tokio::select! {
            frame = self.link.frames.recv() => frame,
            _ = &mut self.link.kicked => None,
        }
    }
}

impl Drop for SiteLink {
    fn drop(&mut self) {
        let (tx, peer) = (self.tx.clone(), self.peer);
        // Not awaited in drop: the resource learns of it as soon as its mailbox has room.
        tokio::spawn(async move {
            let _ = tx.send(Command::Leave { peer }).await;
        });
    }
}

pub(super) struct Inner {
    resources: DashMap<ResourceId, Handle>,
    pub(super) store: Arc<dyn Store>,
    pub(super) limits: Limits,
    pub(super) metrics: Arc<Metrics>,
    pub(super) hasher: IdHasher,
    pub(super) admission: Admission,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: TaskTracker,
    connections: TaskTracker,
    pub(super) directory: Option<Directory>,
    pub(super) internal_tls: Option<ClientTls>,
    uplink: Option<Arc<dyn Uplink>>,
    /// One HTTP/2 channel per other pod's internal address, shared by every relayed session.
    pub(super) pods: DashMap<String, tonic::transport::Channel>,
    next_peer: AtomicU64,
    next_generation: AtomicU64,
    pub(super) readiness: Readiness,
}

/// The registry of active resources and everything a connection needs to reach them.
#[derive(Clone)]
pub struct Relay {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("active", &self.inner.resources.len())
            .finish()
    }
}

impl Relay {
    /// A relay over `parts.store`.
    pub fn new(parts: RelayParts) -> Relay {
        let codes = zbase_proto::wire::Code::ALL.map(zbase_proto::wire::Code::name);
        let reasons = CloseReason::ALL.map(CloseReason::label);
        parts.metrics.prime(&codes, &reasons);
        let admission = Admission::new(
            parts.limits.connections_per_ip,
            parts.limits.failed_handshakes_per_minute,
            parts.limits.failed_handshake_ban,
        );
        Relay {
            inner: Arc::new(Inner {
                resources: DashMap::new(),
                store: parts.store,
                limits: parts.limits,
                metrics: parts.metrics,
                hasher: IdHasher::random(),
                admission,
                shutdown: parts.shutdown,
                tasks: TaskTracker::new(),
                connections: TaskTracker::new(),
                directory: parts.directory,
                internal_tls: parts.internal_tls,
                uplink: parts.uplink,
                pods: DashMap::new(),
                next_peer: AtomicU64::new(1),
                next_generation: AtomicU64::new(1),
                readiness: Readiness::default(),
            }),
        }
    }

    /// The station's bounds.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The station's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Per-IP admission.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// The short keyed tag that stands for `id` in logs.
    pub fn tag(&self, id: &ResourceId) -> String {
        self.inner.hasher.tag(id)
    }

    /// The shutdown signal every connection and resource watches.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Resources currently held in memory.
    pub fn active(&self) -> usize {
        self.inner.resources.len()
    }

    /// Tracks connection drivers, so shutdown can wait for each to send its termination.
    pub fn connections(&self) -> &TaskTracker {
        &self.inner.connections
    }

    /// Waits until every connection has ended and every resource task has finished its writes
    /// and exited. Call after cancelling [`Relay::shutdown`].
    pub async fn drained(&self) {
        self.inner.connections.close();
        self.inner.connections.wait().await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Where a new connection for `id` is served: here when there is no cluster.
    pub async fn route(&self, id: &ResourceId) -> Route {
        match &self.inner.directory {
            Some(directory) => directory.route(id).await,
            None => Route::Local,
        }
    }

    /// True if this pod may act as `id`'s home now (always, without a cluster).
    pub(super) fn is_home(&self, id: &ResourceId) -> bool {
        self.inner
            .directory
            .as_ref()
            .is_none_or(|directory| directory.is_home(id))
    }

    /// Whether this pod holds its membership lease (always, without a cluster), or why not.
    pub fn membership_ready(&self) -> Result<(), &'static str> {
        match &self.inner.directory {
            Some(directory) if !directory.lease_valid() => Err(
                "no membership lease: this pod cannot renew it in the database (or is leaving); it retries on its own",
            ),
            _ => Ok(()),
        }
    }

    /// True when pods share the store and each resource has one home pod.
    pub(super) fn clustered(&self) -> bool {
        self.inner.directory.is_some()
    }

    pub(super) fn next_peer_id(&self) -> u64 {
        self.inner.next_peer.fetch_add(1, Ordering::Relaxed)
    }

    fn handle(&self, id: ResourceId) -> Handle {
        self.inner
            .resources
            .entry(id)
            .or_insert_with(|| {
                let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                resource::spawn(self.clone(), id, generation, rx);
                Handle { tx, generation }
            })
            .clone()
    }

    /// Removes the registry entry of a resource task that is hibernating, if it is still the
    /// current one for `id`.
    pub(super) fn retire(&self, id: &ResourceId, generation: u64) {
        self.inner
            .resources
            .remove_if(id, |_, handle| handle.generation == generation);
    }

    /// Sends a command built by `make` to `id`'s task and waits for its reply, starting the
    /// task again if it was hibernating when the command arrived.
    async fn call<T>(
        &self,
        id: ResourceId,
        make: impl Fn(oneshot::Sender<Reply<T>>) -> Command,
    ) -> Result<(T, mpsc::Sender<Command>), CloseReason> {
        for _ in 0..MAX_RETRIES {
            let handle = self.handle(id);
            let (reply, answer) = oneshot::channel();
            if handle.tx.send(make(reply)).await.is_err() {
                self.retire(&id, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(value)) => return Ok((value, handle.tx)),
                Ok(Err(Refused::Close(reason))) => return Err(reason),
                Ok(Err(Refused::Retired)) | Err(_) => {
                    self.retire(&id, handle.generation);
                }
            }
        }
        Err(CloseReason::Internal("resource kept hibernating"))
    }

    /// The resource's current verification key (`None` if it is not configured), and the
    /// signal that it was replaced.
    pub(super) async fn open(&self, id: ResourceId) -> Result<Opened, CloseReason> {
        self.call(id, |reply| Command::Open { reply })
            .await
            .map(|(opened, _)| opened)
    }

    /// Claims `id` (or a fresh identifier if it is taken) for `key`; returns the one claimed.
    pub(super) async fn configure(
        &self,
        id: ResourceId,
        key: VerificationKey,
    ) -> Result<ResourceId, CloseReason> {
        self.call(id, |reply| Command::Configure {
            key: key.clone(),
            reply,
        })
        .await
        .map(|(id, _)| id)
    }

    /// Joins the verified peer set of `id` with the key the peer proved, unless `revoked`
    /// says that key was replaced since the peer was given it.
    pub(super) async fn join(
        &self,
        id: ResourceId,
        peer: u64,
        key: Arc<VerificationKey>,
        revoked: CancellationToken,
    ) -> Result<(PeerLink, mpsc::Sender<Command>), CloseReason> {
        self.call(id, |reply| Command::Join {
            peer,
            key: key.clone(),
            revoked: revoked.clone(),
            reply,
        })
        .await
    }

    /// Replaces `id`'s key `current` by `new` through its task, which closes every session
    /// that proved `current`; for a replica site's session rotating through this primary.
    /// `VerificationFailed` when the key is not `current` (or there is no resource).
    pub(crate) async fn rotate(
        &self,
        id: ResourceId,
        current: VerificationKey,
        new: VerificationKey,
    ) -> Result<Seq, CloseReason> {
        let (current, new) = (Arc::new(current), Arc::new(new));
        self.call(id, |reply| Command::Rotate {
            peer: None,
            current: Arc::clone(&current),
            new: Arc::clone(&new),
            reply,
        })
        .await
        .map(|(seq, _)| seq)
    }

    /// Claims exactly `id` for `key` through its task, which learns the key at once; for a
    /// replica site configuring a resource through this primary.
    pub(crate) async fn claim(
        &self,
        id: ResourceId,
        key: VerificationKey,
    ) -> Result<Claim, CloseReason> {
        self.call(id, |reply| Command::Claim {
            key: key.clone(),
            reply,
        })
        .await
        .map(|(claim, _)| claim)
    }

    /// Persists `payload` as `id`'s snapshot through its task (so its peers and requesters
    /// see it as any peer's write) and returns the write's sequence once durable; with `jwk`,
    /// only while that is the resource's key (`None`: it was replaced, nothing was written).
    pub(crate) async fn write(
        &self,
        id: ResourceId,
        payload: Bytes,
        jwk: Option<String>,
    ) -> Result<Option<Seq>, CloseReason> {
        self.call(id, |reply| Command::Write {
            payload: payload.clone(),
            jwk: jwk.clone(),
            reply,
        })
        .await
        .map(|(seq, _)| seq)
    }

    /// Joins another site's bridge to `id`'s peers.
    pub(crate) async fn join_site(&self, id: ResourceId) -> Result<SiteLink, CloseReason> {
        let peer = self.next_peer_id();
        let (link, tx) = self
            .call(id, |reply| Command::JoinSite { peer, reply })
            .await?;
        Ok(SiteLink { peer, tx, link })
    }

    /// Opens the bridge to the primary site for `id`, on a replica.
    pub(super) fn uplink(
        &self,
        id: ResourceId,
        to_peers: mpsc::Sender<Bytes>,
    ) -> Option<mpsc::Sender<Bytes>> {
        self.inner
            .uplink
            .as_ref()
            .and_then(|uplink| uplink.open(id, to_peers))
    }

    /// Tells `id`'s task, if one is running, that its stored key or snapshot changed.
    pub(crate) fn reload(&self, id: &ResourceId) {
        let Some(tx) = self.inner.resources.get(id).map(|handle| handle.tx.clone()) else {
            return;
        };
        // Not awaited here: the caller is another resource's task, which must not wait on
        // this one. A closed mailbox means the task is gone and the next one loads afresh.
        tokio::spawn(async move {
            let _ = tx.send(Command::Reload).await;
        });
    }
}

impl Homes for Relay {
    fn release(&self, directory: &Directory) -> futures::future::BoxFuture<'_, usize> {
        let moved = self.tasks_of(|id| !directory.is_home(id));
        Box::pin(async move {
            let released = evict(moved).await;
            self.inner.metrics.rehomes.inc_by(released as u64);
            released
        })
    }
}

impl Relay {
    /// The mailboxes of the active resources `which` selects.
    fn tasks_of(&self, which: impl Fn(&ResourceId) -> bool) -> Vec<mpsc::Sender<Command>> {
        self.inner
            .resources
            .iter()
            .filter(|entry| which(entry.key()))
            .map(|entry| entry.value().tx.clone())
            .collect()
    }

    /// Closes every peer of every active resource with 1013 and lets each task go once its
    /// writes are done, so the next connection loads the resource afresh: for a store whose
    /// contents were replaced under the tasks (a replica's cache wiped to sync again).
    pub(crate) async fn evict_all(&self) -> usize {
        evict(self.tasks_of(|_| true)).await
    }
}

/// Sends each task an eviction and waits until it is gone; returns how many were active.
async fn evict(tasks: Vec<mpsc::Sender<Command>>) -> usize {
    let evictions = tasks.into_iter().map(|tx| async move {
        let (done, evicted) = oneshot::channel();
        // A closed mailbox is a task already gone: nothing to let go of.
        if tx.send(Command::Evict { done }).await.is_ok() {
            let _ = evicted.await;
            1
        } else {
            0
        }
    });
    futures::future::join_all(evictions).await.into_iter().sum()
}
