//! The task that owns one active resource: key, cached snapshot, verified peers, pending
//! requesters and in-flight snapshot writes.
//!
//! Snapshot writes are queued to the store in arrival order and complete in that order; the
//! cache, `offer-snapshot` and `forward-response` see a snapshot only after its write is
//! durable. Deltas never wait for the disk.

use super::registry::Relay;
use crate::session::CloseReason;
use crate::store::{Claim, KeyReplacement, Seq, StoreError};
use crate::telemetry::StoreTimer;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use rand::RngCore;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use zbase_proto::wire::{Code, Frame, ResourceId, VerificationKey};

/// Attempts at drawing a free identifier when the proposed one is taken. 32 random bytes
/// collide with negligible probability, so more than one retry means a broken generator.
const CLAIM_ATTEMPTS: usize = 8;

/// Why a resource task did not do what was asked.
#[derive(Debug)]
pub(super) enum Refused {
    /// The task is hibernating; ask the registry again.
    Retired,
    /// End the connection for this reason.
    Close(CloseReason),
}

/// A resource task's answer.
pub(super) type Reply<T> = Result<T, Refused>;

/// A verified peer's end of its link to the resource: frames to send, and the signal that the
/// resource disconnected it (queue overflow, shutdown).
pub(crate) struct PeerLink {
    pub(crate) frames: mpsc::Receiver<Bytes>,
    pub(crate) kicked: oneshot::Receiver<CloseReason>,
}

/// What a new connection must prove: the resource's key (`None`: it is not configured), and
/// the signal that this key was replaced, which ends a handshake still under way with it.
pub(crate) struct Opened {
    pub(crate) key: Option<Arc<VerificationKey>>,
    pub(crate) revoked: CancellationToken,
}

/// What connections ask of a resource task.
pub(super) enum Command {
    /// Which key must a new connection prove?
    Open {
        reply: oneshot::Sender<Reply<Opened>>,
    },
    /// Claim the identifier (or a fresh one) for this key.
    Configure {
        key: VerificationKey,
        reply: oneshot::Sender<Reply<ResourceId>>,
    },
    /// Claim exactly this identifier for this key, or say it is taken (a replica site's
    /// client configuring through this primary; the replica draws other identifiers itself).
    Claim {
        key: VerificationKey,
        reply: oneshot::Sender<Reply<Claim>>,
    },
    /// Persist this snapshot, then answer with its sequence (a replica site's client writing
    /// through this primary), and offer it as any peer's snapshot would be.
    /// With `jwk`, only while that is the key (else `None`, nothing written): the writing
    /// session may have been closed by a rotation here that its site has not heard of yet.
    Write {
        payload: Bytes,
        jwk: Option<String>,
        reply: oneshot::Sender<Reply<Option<Seq>>>,
    },
    /// Add another site's bridge as a peer: it receives this site's deltas and requests and
    /// sends its own site's, but is never offered a snapshot (its site has the feed).
    JoinSite {
        peer: u64,
        reply: oneshot::Sender<Reply<PeerLink>>,
    },
    /// Add a peer that proved `key`, unless `revoked` says that key was replaced since.
    Join {
        peer: u64,
        key: Arc<VerificationKey>,
        revoked: CancellationToken,
        reply: oneshot::Sender<Reply<PeerLink>>,
    },
    /// Replace the key `current` by `new` (extension R1), then close every other session that
    /// proved `current`: for a verified `peer` of this task, or with `None` for a replica
    /// site's session rotating through this primary. Answers with the change's sequence.
    Rotate {
        peer: Option<u64>,
        current: Arc<VerificationKey>,
        new: Arc<VerificationKey>,
        reply: oneshot::Sender<Reply<Seq>>,
    },
    /// The peer's connection ended.
    Leave { peer: u64 },
    /// Persist and then offer this snapshot.
    Snapshot { peer: u64, payload: Bytes },
    /// Relay this delta.
    Delta { peer: u64, payload: Bytes },
    /// Answer and relay this request.
    Request { peer: u64, payload: Bytes },
    /// The stored resource changed under this task (claimed elsewhere, or mirrored from the
    /// primary site): load it again, and answer pending requesters with a newer snapshot.
    Reload,
    /// This pod is no longer the resource's home: close every peer with 1013, finish every
    /// write, exit, then say so on `done`.
    Evict { done: oneshot::Sender<()> },
}

struct Peer {
    frames: mpsc::Sender<Bytes>,
    kick: Option<oneshot::Sender<CloseReason>>,
    /// The key the client proved (or rotated to); `None` for another site's bridge.
    key: Option<Arc<VerificationKey>>,
}

impl Peer {
    /// Another site's bridge rather than a client.
    fn site(&self) -> bool {
        self.key.is_none()
    }
}

/// Frames from other sites buffered for a resource before they are dropped (deltas may be
/// lost; a flood from another site must not grow memory).
const FROM_SITES_QUEUE: usize = 256;

struct Written {
    peer: u64,
    payload: Bytes,
    result: Result<u64, StoreError>,
    /// Who waits for the sequence (a write through the replication port), if anyone.
    ack: Option<oneshot::Sender<Reply<Option<Seq>>>>,
}

struct Resource {
    relay: Relay,
    id: ResourceId,
    tag: String,
    generation: u64,
    /// `None` until loaded or when loading failed.
    loaded: bool,
    key: Option<Arc<VerificationKey>>,
    /// Cancelled when `key` is replaced, so handshakes that were given it end at once.
    revoked: CancellationToken,
    /// Peers closed because their key was replaced, until their connection leaves: what they
    /// still had queued to this task must not be taken.
    revoked_peers: HashSet<u64>,
    snapshot: Option<Bytes>,
    /// The sequence of the change the cached key and snapshot come from.
    seq: Seq,
    peers: HashMap<u64, Peer>,
    pending: HashMap<u64, Instant>,
    writes: FuturesOrdered<BoxFuture<'static, Written>>,
    /// Signalled when the latest queued write finished, for a store that needs one write at a
    /// time per resource to keep their order.
    last_write: Option<oneshot::Receiver<()>>,
    /// On a replica while it has peers: this site's deltas and requests, to the primary.
    uplink: Option<mpsc::Sender<Bytes>>,
    /// Where the uplink delivers other sites' frames (drained by the run loop).
    from_sites: mpsc::Sender<Bytes>,
}

/// Starts the task for `id`; it loads the resource before answering its first command.
pub(super) fn spawn(relay: Relay, id: ResourceId, generation: u64, rx: mpsc::Receiver<Command>) {
    let tag = relay.tag(&id);
    let (from_sites, sites) = mpsc::channel(FROM_SITES_QUEUE);
    let resource = Resource {
        relay: relay.clone(),
        id,
        tag,
        generation,
        loaded: false,
        key: None,
        revoked: CancellationToken::new(),
        revoked_peers: HashSet::new(),
        snapshot: None,
        seq: 0,
        peers: HashMap::new(),
        pending: HashMap::new(),
        writes: FuturesOrdered::new(),
        last_write: None,
        uplink: None,
        from_sites,
    };
    relay.inner.tasks.spawn(resource.run(rx, sites));
}

fn encoded(code: Code, payload: &Bytes) -> Option<Bytes> {
    Frame::new(code, payload.clone())
        .ok()
        .map(|frame| frame.encode())
}

impl Resource {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut sites: mpsc::Receiver<Bytes>) {
        let metrics = self.relay.metrics().clone();
        metrics.resources_active.inc();
        let homed = self.relay.clustered();
        if homed {
            metrics.homed_resources.inc();
        }
        self.load().await;
        let shutdown = self.relay.shutdown().clone();
        let idle_after = self.relay.limits().resource_idle;
        let mut idle_since = tokio::time::Instant::now();
        let mut evicted = Vec::new();
        loop {
            let idle = self.peers.is_empty() && self.writes.is_empty();
            tokio::select! {
                biased;
                Some(written) = self.writes.next(), if !self.writes.is_empty() => {
                    self.written(written);
                }
                // Never `None`: this task holds a sender.
                Some(frame) = sites.recv() => self.broadcast(0, frame),
                command = rx.recv() => match command {
                    Some(Command::Evict { done }) => {
                        evicted.push(done);
                        break;
                    }
                    Some(command) => {
                        self.handle(command).await;
                        idle_since = tokio::time::Instant::now();
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(idle_since + idle_after), if idle || !self.loaded => break,
                _ = shutdown.cancelled() => break,
            }
        }
        self.retire(rx, &mut evicted).await;
        metrics.resources_active.dec();
        if homed {
            metrics.homed_resources.dec();
        }
        for done in evicted {
            let _ = done.send(());
        }
    }

    /// Leaves the registry, answers what is still queued, finishes every write, and lets go of
    /// every peer: the task's last act, whether hibernating or shutting down.
    async fn retire(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        evicted: &mut Vec<oneshot::Sender<()>>,
    ) {
        self.relay.retire(&self.id, self.generation);
        rx.close();
        while let Some(command) = rx.recv().await {
            match command {
                Command::Open { reply } => drop(reply.send(Err(Refused::Retired))),
                Command::Configure { reply, .. } => drop(reply.send(Err(Refused::Retired))),
                Command::Claim { reply, .. } => drop(reply.send(Err(Refused::Retired))),
                Command::Join { reply, .. } => drop(reply.send(Err(Refused::Retired))),
                Command::JoinSite { reply, .. } => drop(reply.send(Err(Refused::Retired))),
                Command::Rotate { reply, .. } => drop(reply.send(Err(Refused::Retired))),
                // A snapshot that reached the task before shutdown is still written: the
                // peer may have seen its socket accept it. Not one whose key was replaced.
                Command::Snapshot { peer, payload } => {
                    if !self.revoked_peers.contains(&peer) {
                        self.persist(peer, payload, None);
                    }
                }
                Command::Write {
                    payload,
                    jwk,
                    reply,
                } => self.write(payload, jwk.as_deref(), reply),
                Command::Evict { done } => evicted.push(done),
                Command::Leave { .. }
                | Command::Delta { .. }
                | Command::Request { .. }
                | Command::Reload => {}
            }
        }
        while let Some(written) = self.writes.next().await {
            self.written(written);
        }
        let reason = if self.relay.shutdown().is_cancelled() {
            CloseReason::ShuttingDown
        } else if !evicted.is_empty() {
            CloseReason::Moved
        } else {
            CloseReason::Internal("resource retired with peers")
        };
        for (_, peer) in self.peers.drain() {
            self.relay.metrics().verified_peers.dec();
            if let Some(kick) = peer.kick {
                let _ = kick.send(reason);
            }
        }
    }

    async fn load(&mut self) {
        match self.relay.inner.store.load(&self.id).await {
            Ok(Some(stored)) => match VerificationKey::from_jwk_json(&stored.jwk) {
                Ok(key) => {
                    match &self.key {
                        // Rotated behind this task's back (by another site, or through it while
                        // this task was busy): whoever proved the old key is out.
                        Some(current) if **current != key => self.key_replaced(Arc::new(key), None),
                        Some(_) => {}
                        None => self.key = Some(Arc::new(key)),
                    }
                    if stored.seq > self.seq
                        && let Some(snapshot) = &stored.snapshot
                        && self.loaded
                    {
                        self.respond(snapshot.clone());
                    }
                    self.snapshot = stored.snapshot;
                    self.seq = stored.seq;
                    self.loaded = true;
                }
                Err(error) => {
                    tracing::error!(resource = %self.tag, %error, "stored key does not parse; the database is corrupt or foreign");
                }
            },
            Ok(None) => {
                self.key = None;
                self.loaded = true;
            }
            Err(error) => {
                tracing::error!(resource = %self.tag, %error, "could not load resource");
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        // The view may have moved this resource since the connection was routed here; the
        // eviction that follows closes existing peers, and no new one may join meanwhile.
        if !self.relay.is_home(&self.id) {
            match command {
                Command::Open { reply } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                Command::Configure { reply, .. } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                Command::Join { reply, .. } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                Command::JoinSite { reply, .. } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                Command::Claim { reply, .. } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                Command::Write { reply, .. } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                Command::Rotate { reply, .. } => {
                    let _ = reply.send(Err(Refused::Close(CloseReason::Moved)));
                    return;
                }
                _ => {}
            }
        }
        match command {
            Command::Open { reply } => {
                // A load that failed (database down) is retried by the next handshake, so
                // the resource serves again as soon as the database is back.
                if !self.loaded {
                    self.load().await;
                }
                let answer = if self.loaded {
                    Ok(Opened {
                        key: self.key.clone(),
                        revoked: self.revoked.clone(),
                    })
                } else {
                    Err(Refused::Close(CloseReason::StoreUnavailable))
                };
                let _ = reply.send(answer);
            }
            Command::Configure { key, reply } => {
                let answer = self.configure(key).await;
                let _ = reply.send(answer);
            }
            Command::Claim { key, reply } => {
                let answer = self.claim(key).await;
                let _ = reply.send(answer);
            }
            Command::Join {
                peer,
                key,
                revoked,
                reply,
            } => {
                if revoked.is_cancelled() {
                    let _ = reply.send(Err(Refused::Close(CloseReason::KeyReplaced)));
                } else {
                    self.join(peer, Some(key), reply);
                }
            }
            Command::JoinSite { peer, reply } => self.join(peer, None, reply),
            Command::Rotate {
                peer,
                current,
                new,
                reply,
            } => {
                let answer = self.rotate(peer, &current, new).await;
                let _ = reply.send(answer);
            }
            Command::Leave { peer } => {
                self.revoked_peers.remove(&peer);
                self.remove(peer);
            }
            // A peer closed by a rotation may have had frames queued behind the rotation;
            // none of them is taken (docs/KEY-ROTATION.md, step 3).
            Command::Snapshot { peer, .. }
            | Command::Delta { peer, .. }
            | Command::Request { peer, .. }
                if self.revoked_peers.contains(&peer) => {}
            Command::Snapshot { peer, payload } => self.persist(peer, payload, None),
            Command::Write {
                payload,
                jwk,
                reply,
            } => self.write(payload, jwk.as_deref(), reply),
            Command::Delta { peer, payload } => {
                if let Some(frame) = encoded(Code::ForwardDelta, &payload) {
                    self.broadcast(peer, frame);
                }
                self.up(Code::SubmitDelta, &payload);
            }
            Command::Request { peer, payload } => self.request(peer, payload),
            Command::Reload => self.load().await,
            // Taken by the run loop before it reaches here.
            Command::Evict { done } => drop(done.send(())),
        }
    }

    /// Claims exactly this resource's identifier for `key`.
    async fn claim(&mut self, key: VerificationKey) -> Reply<Claim> {
        if !self.loaded {
            return Err(Refused::Close(CloseReason::StoreUnavailable));
        }
        match self
            .relay
            .inner
            .store
            .claim(&self.id, &key.to_jwk_json())
            .await
        {
            Ok(Claim::Claimed { seq }) => {
                self.key = Some(Arc::new(key));
                self.seq = seq;
                Ok(Claim::Claimed { seq })
            }
            Ok(Claim::Taken) => {
                if self.key.is_none() {
                    // Claimed behind this task's back (another station on the same store, or
                    // the primary site): learn the key so the next connection must verify.
                    self.load().await;
                }
                Ok(Claim::Taken)
            }
            Err(error) => {
                tracing::error!(resource = %self.tag, %error, "could not claim identifier");
                Err(Refused::Close(CloseReason::StoreUnavailable))
            }
        }
    }

    /// Replaces `current` by `new` in the store, if `current` is still the key, after every
    /// write queued before; then closes every other session that proved `current`. `peer` is
    /// the rotating session when it is one of this task's peers.
    async fn rotate(
        &mut self,
        peer: Option<u64>,
        current: &VerificationKey,
        new: Arc<VerificationKey>,
    ) -> Reply<Seq> {
        let stale = Err(Refused::Close(CloseReason::KeyReplaced));
        // Replaced while this request was on its way: the session's key is stale.
        if !self.loaded || self.key.as_deref() != Some(current) {
            return stale;
        }
        if peer.is_some_and(|peer| !self.peers.contains_key(&peer)) {
            return stale;
        }
        // Snapshots queued before the rotation commit before it, so none from an old-key
        // session can commit after the new key is durable.
        while let Some(written) = self.writes.next().await {
            self.written(written);
        }
        if peer.is_some_and(|peer| !self.peers.contains_key(&peer)) {
            // Its own earlier write failed, and that closed it.
            return Err(Refused::Close(CloseReason::StoreUnavailable));
        }
        let timer = StoreTimer::start(&self.relay.metrics().store_write_seconds);
        let result = self
            .relay
            .inner
            .store
            .replace_key(&self.id, &current.to_jwk_json(), &new.to_jwk_json())
            .await;
        drop(timer);
        match result {
            Ok(KeyReplacement::Replaced { seq }) => {
                self.seq = self.seq.max(seq);
                self.key_replaced(new, peer);
                tracing::info!(resource = %self.tag, "verification key rotated");
                Ok(seq)
            }
            Ok(KeyReplacement::Stale) => {
                // Rotated elsewhere (another pod or site): learn the key, which closes
                // whoever proved the old one, this session included.
                self.load().await;
                stale
            }
            Err(error) => {
                tracing::error!(resource = %self.tag, %error, "could not rotate the key");
                // A failure may hide a commit (a replica's write whose change did not come
                // back in time): the stored key decides who stays.
                self.load().await;
                Err(Refused::Close(CloseReason::StoreUnavailable))
            }
        }
    }

    /// Makes `new` the key, closes every client that proved another (all but `keep`, which
    /// rotated to `new`), and ends every handshake that was given the old key.
    fn key_replaced(&mut self, new: Arc<VerificationKey>, keep: Option<u64>) {
        self.revoked.cancel();
        self.revoked = CancellationToken::new();
        let out: Vec<u64> = self
            .peers
            .iter_mut()
            .filter_map(|(id, peer)| match &peer.key {
                Some(_) if Some(*id) == keep => {
                    peer.key = Some(Arc::clone(&new));
                    None
                }
                Some(key) if *key != new => Some(*id),
                _ => None,
            })
            .collect();
        for peer in out {
            self.revoked_peers.insert(peer);
            self.kick(peer, CloseReason::KeyReplaced);
        }
        self.key = Some(new);
    }

    async fn configure(&mut self, key: VerificationKey) -> Reply<ResourceId> {
        if !self.loaded {
            return Err(Refused::Close(CloseReason::StoreUnavailable));
        }
        if let Claim::Claimed { .. } = self.claim(key.clone()).await? {
            return Ok(self.id);
        }
        let jwk = key.to_jwk_json();
        for _ in 0..CLAIM_ATTEMPTS {
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let candidate = ResourceId::from_bytes(raw);
            match self.relay.inner.store.claim(&candidate, &jwk).await {
                Ok(Claim::Claimed { .. }) => {
                    self.relay.reload(&candidate);
                    return Ok(candidate);
                }
                Ok(Claim::Taken) => {}
                Err(error) => {
                    tracing::error!(resource = %self.tag, %error, "could not claim identifier");
                    return Err(Refused::Close(CloseReason::StoreUnavailable));
                }
            }
        }
        Err(Refused::Close(CloseReason::Internal("no free identifier")))
    }

    /// Adds a client that proved `key`, or with `None` another site's bridge.
    fn join(
        &mut self,
        peer: u64,
        key: Option<Arc<VerificationKey>>,
        reply: oneshot::Sender<Reply<PeerLink>>,
    ) {
        let limits = self.relay.limits();
        let admitted = match &key {
            // The peer proved the key it was given at open; if the resource's key changed
            // since, that proof no longer admits it.
            Some(key) => self.key.as_deref() == Some(&**key),
            // Another site bridges only a resource that exists here.
            None => self.key.is_some(),
        };
        if !admitted {
            let reason = match key {
                Some(_) => CloseReason::KeyReplaced,
                None => CloseReason::VerificationFailed,
            };
            let _ = reply.send(Err(Refused::Close(reason)));
            return;
        }
        if self.peers.len() >= limits.peers_per_resource {
            let _ = reply.send(Err(Refused::Close(CloseReason::PeersFull)));
            return;
        }
        let site = key.is_none();
        let (frames_tx, frames) = mpsc::channel(limits.peer_queue_frames.max(1));
        let (kick, kicked) = oneshot::channel();
        // The offer goes first into an empty queue, so it is the first frame after joining.
        if let Some(offer) = self
            .snapshot
            .as_ref()
            .filter(|_| !site)
            .and_then(|s| encoded(Code::OfferSnapshot, s))
        {
            let _ = frames_tx.try_send(offer);
        }
        if reply.send(Ok(PeerLink { frames, kicked })).is_ok() {
            self.peers.insert(
                peer,
                Peer {
                    frames: frames_tx,
                    kick: Some(kick),
                    key,
                },
            );
            self.relay.metrics().verified_peers.inc();
            if !site && self.uplink.is_none() {
                self.uplink = self.relay.uplink(self.id, self.from_sites.clone());
            }
        }
    }

    /// Sends this site's delta or request on to the primary site, if this is a replica with a
    /// bridge open; dropped when the bridge is behind (deltas may be lost).
    fn up(&mut self, code: Code, payload: &Bytes) {
        if let (Some(uplink), Some(frame)) = (&self.uplink, encoded(code, payload)) {
            let _ = uplink.try_send(frame);
        }
    }

    /// Closes the bridge to the primary once no client of this site is left.
    fn forget_peer(&mut self) {
        self.relay.metrics().verified_peers.dec();
        if self.uplink.is_some() && !self.peers.values().any(|peer| !peer.site()) {
            self.uplink = None;
        }
    }

    fn remove(&mut self, peer: u64) {
        self.pending.remove(&peer);
        if self.peers.remove(&peer).is_some() {
            self.forget_peer();
        }
    }

    /// Queues `frame` to `peer`; a peer whose queue is full is disconnected, not starved.
    fn deliver(&mut self, peer: u64, frame: Bytes) {
        let Some(link) = self.peers.get_mut(&peer) else {
            return;
        };
        match link.frames.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.kick(peer, CloseReason::QueueOverflow),
            Err(mpsc::error::TrySendError::Closed(_)) => self.remove(peer),
        }
    }

    fn kick(&mut self, peer: u64, reason: CloseReason) {
        if let Some(mut link) = self.peers.remove(&peer) {
            self.forget_peer();
            self.pending.remove(&peer);
            if let Some(kick) = link.kick.take() {
                let _ = kick.send(reason);
            }
        }
    }

    fn broadcast(&mut self, from: u64, frame: Bytes) {
        let full: Vec<u64> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != from)
            .filter_map(|(id, link)| match link.frames.try_send(frame.clone()) {
                Ok(()) => None,
                Err(_) => Some(*id),
            })
            .collect();
        for peer in full {
            self.kick(peer, CloseReason::QueueOverflow);
        }
    }

    fn request(&mut self, peer: u64, payload: Bytes) {
        // Another site's requester is answered there, from its cache and its feed.
        let client = self.peers.get(&peer).is_some_and(|link| !link.site());
        if let Some(offer) = self
            .snapshot
            .as_ref()
            .filter(|_| client)
            .and_then(|s| encoded(Code::OfferSnapshot, s))
        {
            self.deliver(peer, offer);
        }
        if let Some(frame) = encoded(Code::ForwardRequest, &payload) {
            self.broadcast(peer, frame);
        }
        self.up(Code::SubmitRequest, &payload);
        if client {
            let window = self.relay.limits().pending_request_window;
            self.pending.insert(peer, Instant::now() + window);
        }
    }

    /// A snapshot written through this site by another site's session that proved `jwk`.
    fn write(
        &mut self,
        payload: Bytes,
        jwk: Option<&str>,
        reply: oneshot::Sender<Reply<Option<Seq>>>,
    ) {
        match (&self.key, jwk) {
            (None, _) => {
                let _ = reply.send(Err(Refused::Close(CloseReason::VerificationFailed)));
            }
            (Some(key), Some(jwk)) if key.to_jwk_json() != jwk => {
                let _ = reply.send(Ok(None));
            }
            (Some(_), _) => self.persist(0, payload, Some(reply)),
        }
    }

    fn persist(
        &mut self,
        peer: u64,
        payload: Bytes,
        ack: Option<oneshot::Sender<Reply<Option<Seq>>>>,
    ) {
        let store = self.relay.inner.store.clone();
        let id = self.id;
        // The key the writer proved, for a store that writes elsewhere (a replica's).
        let jwk = self
            .peers
            .get(&peer)
            .and_then(|peer| peer.key.as_ref())
            .map(|key| key.to_jwk_json());
        let timer = StoreTimer::start(&self.relay.metrics().store_write_seconds);
        // Two snapshots in flight must not commit in the other order, or the older one would
        // win; a store that cannot promise the order gets them one after the other.
        // Once a write went out one at a time, the next waits for it too even if the store
        // keeps order by now (a promotion between the two), until it is over: it may still be
        // in flight to the old primary.
        let ordered = store.keeps_write_order();
        if ordered
            && self.last_write.as_mut().is_some_and(|previous| {
                !matches!(
                    previous.try_recv(),
                    Err(oneshot::error::TryRecvError::Empty)
                )
            })
        {
            self.last_write = None;
        }
        let (finished, after) = if ordered && self.last_write.is_none() {
            (None, None)
        } else {
            let (finished, next) = oneshot::channel();
            (Some(finished), self.last_write.replace(next))
        };
        self.writes.push_back(Box::pin(async move {
            if let Some(previous) = after {
                // An error only means the previous write's future was dropped: it is over.
                let _ = previous.await;
            }
            let result = match &jwk {
                Some(jwk) => store.put_snapshot_as(&id, payload.clone(), jwk).await,
                None => store.put_snapshot(&id, payload.clone()).await,
            };
            if let Some(finished) = finished {
                let _ = finished.send(());
            }
            drop(timer);
            Written {
                peer,
                payload,
                result,
                ack,
            }
        }));
    }

    /// Sends `snapshot` as forward-response to every requester still waiting for one.
    fn respond(&mut self, snapshot: Bytes) {
        let now = Instant::now();
        let waiting: Vec<u64> = self
            .pending
            .drain()
            .filter(|(_, until)| *until > now)
            .map(|(peer, _)| peer)
            .collect();
        if let Some(frame) = encoded(Code::ForwardResponse, &snapshot) {
            for peer in waiting {
                self.deliver(peer, frame.clone());
            }
        }
    }

    fn written(&mut self, written: Written) {
        match written.result {
            Ok(seq) => {
                if let Some(ack) = written.ack {
                    let _ = ack.send(Ok(Some(seq)));
                }
                // A reload may already have brought a later change (a replica's cache is
                // written by its feed too); an older write must not replace it.
                if seq > self.seq {
                    self.respond(written.payload.clone());
                    self.snapshot = Some(written.payload);
                    self.seq = seq;
                }
            }
            Err(StoreError::KeyReplaced) => {
                // Rotated on the primary; the change on its way here closes the others too.
                if let Some(ack) = written.ack {
                    let _ = ack.send(Ok(None));
                }
                self.revoked_peers.insert(written.peer);
                self.kick(written.peer, CloseReason::KeyReplaced);
            }
            Err(error) => {
                tracing::error!(resource = %self.tag, %error, "snapshot write failed; disconnecting its submitter");
                if let Some(ack) = written.ack {
                    let _ = ack.send(Err(Refused::Close(CloseReason::StoreUnavailable)));
                }
                self.kick(written.peer, CloseReason::StoreUnavailable);
            }
        }
    }
}
