//! The relay driven through channels: no sockets, no disk. Each test names its WIRE.md rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::limits::Limits;
use crate::session::CloseReason;
use crate::session::tests::config_payload;
use crate::store::memory::MemoryStore;
use crate::store::{Change, Claim, Seq, Store, StoreError, StoredResource};
use crate::telemetry::Metrics;
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, PollSender};
use zbase_proto::wire::{Code, Frame, ResourceId, verify_message};

const WAIT: Duration = Duration::from_secs(5);

struct Client {
    to_station: mpsc::Sender<Incoming>,
    from_station: mpsc::Receiver<Outgoing>,
}

impl Client {
    fn connect(relay: &Relay, id: ResourceId) -> Client {
        Self::connect_with_buffer(relay, id, 64)
    }

    fn connect_with_buffer(relay: &Relay, id: ResourceId, buffer: usize) -> Client {
        let (to_station, inbound) = mpsc::channel(64);
        let (outbound, from_station) = mpsc::channel(buffer);
        let sink = PollSender::new(outbound);
        let ip = IpAddr::from([127, 0, 0, 1]);
        tokio::spawn(run_connection(
            relay.clone(),
            id,
            ip,
            "test",
            Origin::Client,
            ReceiverStream::new(inbound),
            sink,
        ));
        Client {
            to_station,
            from_station,
        }
    }

    async fn send(&self, code: Code, payload: impl Into<Bytes>) {
        let frame = Frame::new(code, payload).unwrap();
        self.to_station
            .send(Incoming::Frame(Ok(frame)))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Outgoing {
        tokio::time::timeout(WAIT, self.from_station.recv())
            .await
            .expect("station silent")
            .expect("connection gone")
    }

    async fn frame(&mut self, code: Code) -> Bytes {
        match self.next().await {
            Outgoing::Frame(bytes) => {
                let frame = Frame::decode(bytes, usize::MAX).unwrap();
                assert_eq!(frame.code(), code);
                frame.into_payload()
            }
            Outgoing::Close(reason) => panic!("expected {code}, got close {reason:?}"),
        }
    }

    async fn closed(&mut self) -> CloseReason {
        loop {
            match self.next().await {
                Outgoing::Close(reason) => return reason,
                Outgoing::Frame(_) => continue,
            }
        }
    }

    async fn silent(&mut self) {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), self.from_station.recv())
                .await
                .is_err()
        );
    }
}

fn relay_with(store: Arc<dyn Store>, limits: Limits) -> Relay {
    Relay::new(RelayParts {
        store,
        limits,
        metrics: Arc::new(Metrics::new()),
        shutdown: CancellationToken::new(),
        directory: None,
        internal_tls: None,
        uplink: None,
    })
}

fn relay() -> Relay {
    relay_with(Arc::new(MemoryStore::default()), Limits::default())
}

fn challenge(payload: &Bytes) -> [u8; 32] {
    payload.as_ref().try_into().unwrap()
}

async fn create(relay: &Relay, key: &SigningKey) -> ResourceId {
    let proposed = ResourceId::from_bytes(rand::random());
    let mut client = Client::connect(relay, proposed);
    let c = challenge(&client.frame(Code::RequireConfig).await);
    client
        .send(Code::SubmitConfig, config_payload(key, &c, &proposed))
        .await;
    let offered = client.frame(Code::OfferConfig).await;
    assert_eq!(client.closed().await, CloseReason::Normal);
    ResourceId::parse(std::str::from_utf8(&offered).unwrap()).unwrap()
}

async fn verified(relay: &Relay, id: ResourceId, key: &SigningKey) -> Client {
    verified_with_buffer(relay, id, key, 64).await
}

async fn verified_with_buffer(
    relay: &Relay,
    id: ResourceId,
    key: &SigningKey,
    buffer: usize,
) -> Client {
    let mut client = Client::connect_with_buffer(relay, id, buffer);
    let c = challenge(&client.frame(Code::RequireVerification).await);
    client
        .send(
            Code::SubmitVerification,
            key.sign(&verify_message(&c, &id)).to_bytes().to_vec(),
        )
        .await;
    client
}

#[tokio::test]
async fn s6_delta_reaches_every_other_peer_and_never_the_sender() {
    let relay = relay();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let mut a = verified(&relay, id, &key).await;
    let mut b = verified(&relay, id, &key).await;
    let mut c = verified(&relay, id, &key).await;
    a.send(Code::SubmitDelta, &b"d1"[..]).await;
    assert_eq!(b.frame(Code::ForwardDelta).await, &b"d1"[..]);
    assert_eq!(c.frame(Code::ForwardDelta).await, &b"d1"[..]);
    a.silent().await;
}

#[tokio::test]
async fn s6_frames_never_cross_resources() {
    let relay = relay();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let one = create(&relay, &key).await;
    let two = create(&relay, &key).await;
    let a = verified(&relay, one, &key).await;
    let mut b = verified(&relay, two, &key).await;
    a.send(Code::SubmitDelta, &b"d"[..]).await;
    a.send(Code::SubmitRequest, &b"r"[..]).await;
    b.silent().await;
}

/// A store whose snapshot writes wait for a permit, to observe what happens before durability.
struct GatedStore {
    inner: MemoryStore,
    gate: Semaphore,
    /// What `keeps_write_order` says.
    ordered: bool,
    /// Writes inside `put_snapshot` now, and the most seen at once.
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl GatedStore {
    fn new(ordered: bool) -> GatedStore {
        GatedStore {
            inner: MemoryStore::default(),
            gate: Semaphore::new(0),
            ordered,
            in_flight: Default::default(),
            most: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Store for GatedStore {
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
        self.inner.load(id).await
    }
    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        self.inner.claim(id, jwk).await
    }
    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<crate::store::KeyReplacement, StoreError> {
        self.inner.replace_key(id, expected, jwk).await
    }
    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        self.gate.acquire().await.unwrap().forget();
        let seq = self.inner.put_snapshot(id, snapshot).await;
        self.in_flight.fetch_sub(1, SeqCst);
        seq
    }
    async fn changes_since(&self, after: Seq, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.inner.changes_since(after, limit).await
    }
    async fn last_seq(&self) -> Result<Seq, StoreError> {
        self.inner.last_seq().await
    }
    async fn export(&self, into: tokio::sync::mpsc::Sender<Change>) -> Result<Seq, StoreError> {
        self.inner.export(into).await
    }
    fn commits(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.inner.commits()
    }
    fn keeps_write_order(&self) -> bool {
        self.ordered
    }
    async fn site(&self) -> Result<Option<crate::store::Site>, StoreError> {
        self.inner.site().await
    }
    async fn set_site(&self, site: crate::store::Site) -> Result<(), StoreError> {
        self.inner.set_site(site).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn close(&self) {}
}

#[tokio::test]
async fn s6_snapshot_is_offered_only_after_it_is_durable_and_deltas_do_not_wait() {
    let store = Arc::new(GatedStore::new(true));
    let relay = relay_with(store.clone(), Limits::default());
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let writer = verified(&relay, id, &key).await;
    let mut reader = verified(&relay, id, &key).await;
    reader.send(Code::SubmitRequest, &b"state?"[..]).await;
    writer.send(Code::SubmitSnapshot, &b"s1"[..]).await;
    // While the write waits, deltas still flow and nothing offers the snapshot.
    writer.send(Code::SubmitDelta, &b"d"[..]).await;
    assert_eq!(reader.frame(Code::ForwardDelta).await, &b"d"[..]);
    let mut late = verified(&relay, id, &key).await;
    late.silent().await;
    reader.silent().await;
    store.gate.add_permits(1);
    assert_eq!(reader.frame(Code::ForwardResponse).await, &b"s1"[..]);
    let mut fresh = verified(&relay, id, &key).await;
    assert_eq!(fresh.frame(Code::OfferSnapshot).await, &b"s1"[..]);
}

#[tokio::test]
async fn snapshots_go_one_at_a_time_to_a_store_that_cannot_keep_their_order() {
    for ordered in [true, false] {
        let store = Arc::new(GatedStore::new(ordered));
        let relay = relay_with(store.clone(), Limits::default());
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let id = create(&relay, &key).await;
        let writer = verified(&relay, id, &key).await;
        for n in 1..=3 {
            writer
                .send(Code::SubmitSnapshot, Bytes::from(format!("s{n}")))
                .await;
        }
        // Let every write the relay is willing to start reach the store.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let most = store.most.load(std::sync::atomic::Ordering::SeqCst);
        store.gate.add_permits(3);
        // Every write done: the permits are used and none is inside the store.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while store.gate.available_permits() > 0
                || store.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the three writes finish");
        let stored = store.inner.load(&id).await.unwrap().unwrap();
        assert_eq!(stored.snapshot.as_deref(), Some(&b"s3"[..]));
        if ordered {
            assert_eq!(most, 3, "an ordered store takes every write at once");
        } else {
            assert_eq!(
                most, 1,
                "one write at a time when the store cannot keep the order"
            );
        }
    }
}

#[tokio::test]
async fn s6_request_offers_snapshot_forwards_and_answers_once() {
    let relay = relay();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let mut a = verified(&relay, id, &key).await;
    a.send(Code::SubmitSnapshot, &b"s1"[..]).await;
    let mut b = verified(&relay, id, &key).await;
    assert_eq!(b.frame(Code::OfferSnapshot).await, &b"s1"[..]);
    b.send(Code::SubmitRequest, &b"req"[..]).await;
    assert_eq!(b.frame(Code::OfferSnapshot).await, &b"s1"[..]);
    assert_eq!(a.frame(Code::ForwardRequest).await, &b"req"[..]);
    a.send(Code::SubmitSnapshot, &b"s2"[..]).await;
    assert_eq!(b.frame(Code::ForwardResponse).await, &b"s2"[..]);
    a.send(Code::SubmitSnapshot, &b"s3"[..]).await;
    b.silent().await;
}

#[tokio::test]
async fn s6_overflowing_peer_is_disconnected_and_others_keep_going() {
    let limits = Limits {
        peer_queue_frames: 4,
        ..Limits::default()
    };
    let relay = relay_with(Arc::new(MemoryStore::default()), limits);
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let sender = verified(&relay, id, &key).await;
    // A peer that never reads: its transport buffer holds one frame, its queue four.
    let mut slow = verified_with_buffer(&relay, id, &key, 1).await;
    let mut fast = verified(&relay, id, &key).await;
    for n in 0..32u8 {
        sender.send(Code::SubmitDelta, vec![n]).await;
        assert_eq!(fast.frame(Code::ForwardDelta).await, &[n][..]);
    }
    assert_eq!(slow.closed().await, CloseReason::QueueOverflow);
}

#[tokio::test]
async fn s9_peers_per_resource_are_bounded() {
    let limits = Limits {
        peers_per_resource: 2,
        ..Limits::default()
    };
    let relay = relay_with(Arc::new(MemoryStore::default()), limits);
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let _a = verified(&relay, id, &key).await;
    let _b = verified(&relay, id, &key).await;
    let mut c = verified(&relay, id, &key).await;
    assert_eq!(c.closed().await, CloseReason::PeersFull);
}

#[tokio::test]
async fn idle_resource_hibernates_and_wakes_with_its_state() {
    let limits = Limits {
        resource_idle: Duration::from_millis(20),
        ..Limits::default()
    };
    let relay = relay_with(Arc::new(MemoryStore::default()), limits);
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let a = verified(&relay, id, &key).await;
    a.send(Code::SubmitSnapshot, &b"kept"[..]).await;
    a.send(Code::SubmitRequest, &b"r"[..]).await;
    drop(a);
    tokio::time::timeout(WAIT, async {
        while relay.active() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("resource never hibernated");
    let mut b = verified(&relay, id, &key).await;
    assert_eq!(b.frame(Code::OfferSnapshot).await, &b"kept"[..]);
}

#[tokio::test]
async fn shutdown_closes_peers_going_away_and_drains() {
    let relay = relay();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &key).await;
    let mut a = verified(&relay, id, &key).await;
    let mut waiting = Client::connect(&relay, id);
    waiting.frame(Code::RequireVerification).await;
    relay.shutdown().cancel();
    assert_eq!(a.closed().await, CloseReason::ShuttingDown);
    assert_eq!(waiting.closed().await, CloseReason::ShuttingDown);
    tokio::time::timeout(WAIT, relay.drained())
        .await
        .expect("relay did not drain");
}

#[tokio::test]
async fn s5_two_creators_racing_for_one_identifier_get_two_that_each_verify() {
    let relay = relay();
    let proposed = ResourceId::from_bytes(rand::random());
    let keys = [
        SigningKey::generate(&mut rand::rngs::OsRng),
        SigningKey::generate(&mut rand::rngs::OsRng),
    ];
    let mut a = Client::connect(&relay, proposed);
    let mut b = Client::connect(&relay, proposed);
    let ca = challenge(&a.frame(Code::RequireConfig).await);
    let cb = challenge(&b.frame(Code::RequireConfig).await);
    a.send(Code::SubmitConfig, config_payload(&keys[0], &ca, &proposed))
        .await;
    b.send(Code::SubmitConfig, config_payload(&keys[1], &cb, &proposed))
        .await;
    let ids: Vec<ResourceId> =
        futures::future::join_all([&mut a, &mut b].map(|client| async move {
            let offered = client.frame(Code::OfferConfig).await;
            assert_eq!(client.closed().await, CloseReason::Normal);
            ResourceId::parse(std::str::from_utf8(&offered).unwrap()).unwrap()
        }))
        .await;
    assert_ne!(ids[0], ids[1]);
    assert!(ids.contains(&proposed), "one of them keeps the proposal");
    for (id, key) in ids.iter().zip(&keys) {
        let mut peer = verified(&relay, *id, key).await;
        peer.silent().await;
    }
    // A newcomer to the proposal is now asked to verify, not to configure.
    let mut newcomer = Client::connect(&relay, proposed);
    newcomer.frame(Code::RequireVerification).await;
}

/// Verifies a new connection and returns it with its verification challenge, which is its
/// first rotation challenge (extension R1).
async fn verified_keeping_challenge(
    relay: &Relay,
    id: ResourceId,
    key: &SigningKey,
) -> (Client, [u8; 32]) {
    let mut client = Client::connect(relay, id);
    let c = challenge(&client.frame(Code::RequireVerification).await);
    client
        .send(
            Code::SubmitVerification,
            key.sign(&verify_message(&c, &id)).to_bytes().to_vec(),
        )
        .await;
    (client, c)
}

/// A valid `rotate-key` payload from `old` to `new` over `c`.
fn rotate_payload(old: &SigningKey, new: &SigningKey, c: &[u8; 32], id: &ResourceId) -> Vec<u8> {
    use zbase_proto::wire::{VerificationKey, encode_b64url, rotate_message, rotate_proof_message};
    let new_key = VerificationKey::Ed25519(new.verifying_key());
    let proof = new.sign(&rotate_proof_message(c, id)).to_bytes();
    let auth = old
        .sign(&rotate_message(c, id, &new_key.thumbprint()))
        .to_bytes();
    serde_json::json!({
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(new.verifying_key().as_bytes())},
        "proof": encode_b64url(&proof),
        "authorization": encode_b64url(&auth),
    })
    .to_string()
    .into_bytes()
}

fn jwk_of(key: &SigningKey) -> String {
    zbase_proto::wire::VerificationKey::Ed25519(key.verifying_key()).to_jwk_json()
}

#[tokio::test]
async fn r1_rotation_closes_every_other_session_and_keeps_the_rotating_one() {
    let store = Arc::new(MemoryStore::default());
    let relay = relay_with(store.clone(), Limits::default());
    let old = SigningKey::generate(&mut rand::rngs::OsRng);
    let new = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &old).await;
    let (mut a, c) = verified_keeping_challenge(&relay, id, &old).await;
    let mut b = verified(&relay, id, &old).await;
    b.send(Code::SubmitDelta, &b"joined"[..]).await;
    assert_eq!(a.frame(Code::ForwardDelta).await, &b"joined"[..]);
    // A handshake under way with the old key.
    let mut h = Client::connect(&relay, id);
    h.frame(Code::RequireVerification).await;

    a.send(Code::RotateKey, rotate_payload(&old, &new, &c, &id))
        .await;
    let next = a.frame(Code::KeyRotated).await;
    assert_eq!(next.len(), 32);
    assert_ne!(&next[..], &c[..]);
    assert_eq!(b.closed().await, CloseReason::KeyReplaced);
    assert_eq!(h.closed().await, CloseReason::KeyReplaced);
    assert_eq!(store.load(&id).await.unwrap().unwrap().jwk, jwk_of(&new));

    // The rotating session goes on under the new key; the old key opens nothing.
    a.send(Code::SubmitSnapshot, &b"after"[..]).await;
    let mut late = verified(&relay, id, &new).await;
    assert_eq!(late.frame(Code::OfferSnapshot).await, &b"after"[..]);
    late.send(Code::SubmitDelta, &b"hi"[..]).await;
    assert_eq!(a.frame(Code::ForwardDelta).await, &b"hi"[..]);
    let mut stale = verified(&relay, id, &old).await;
    assert_eq!(stale.closed().await, CloseReason::VerificationFailed);

    // The next rotation signs the key-rotated challenge with the new key.
    let third = SigningKey::generate(&mut rand::rngs::OsRng);
    let next: [u8; 32] = next[..].try_into().unwrap();
    a.send(Code::RotateKey, rotate_payload(&new, &third, &next, &id))
        .await;
    a.frame(Code::KeyRotated).await;
    assert_eq!(late.closed().await, CloseReason::KeyReplaced);
    assert_eq!(store.load(&id).await.unwrap().unwrap().jwk, jwk_of(&third));
}

#[tokio::test]
async fn r1_writes_queued_before_a_rotation_commit_first_and_a_closed_peers_later_ones_never() {
    let store = Arc::new(GatedStore::new(true));
    let relay = relay_with(store.clone(), Limits::default());
    let old = SigningKey::generate(&mut rand::rngs::OsRng);
    let new = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &old).await;
    let (mut a, c) = verified_keeping_challenge(&relay, id, &old).await;
    let mut b = verified(&relay, id, &old).await;
    b.send(Code::SubmitDelta, &b"joined"[..]).await;
    assert_eq!(a.frame(Code::ForwardDelta).await, &b"joined"[..]);

    // b's write waits at the store; the rotation waits for it.
    b.send(Code::SubmitSnapshot, &b"before"[..]).await;
    a.send(Code::RotateKey, rotate_payload(&old, &new, &c, &id))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.silent().await;
    assert_eq!(
        store.inner.load(&id).await.unwrap().unwrap().jwk,
        jwk_of(&old)
    );
    // Queued behind the rotation: never taken.
    b.send(Code::SubmitSnapshot, &b"too late"[..]).await;
    b.send(Code::SubmitDelta, &b"too late"[..]).await;
    store.gate.add_permits(8);
    a.frame(Code::KeyRotated).await;
    assert_eq!(b.closed().await, CloseReason::KeyReplaced);
    a.silent().await;
    let stored = store.inner.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.jwk, jwk_of(&new));
    assert_eq!(stored.snapshot, Some(Bytes::from_static(b"before")));
}

#[tokio::test]
async fn r1_a_rotation_from_a_key_no_longer_current_fails_and_changes_nothing() {
    let store = Arc::new(MemoryStore::default());
    let relay = relay_with(store.clone(), Limits::default());
    let old = SigningKey::generate(&mut rand::rngs::OsRng);
    let new = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &old).await;
    let as_key =
        |key: &SigningKey| zbase_proto::wire::VerificationKey::Ed25519(key.verifying_key());
    relay.rotate(id, as_key(&old), as_key(&new)).await.unwrap();
    // A second rotation from the old key (a replica's session that lost the race).
    let other = SigningKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        relay.rotate(id, as_key(&old), as_key(&other)).await,
        Err(CloseReason::KeyReplaced)
    );
    assert_eq!(store.load(&id).await.unwrap().unwrap().jwk, jwk_of(&new));
    // Of an unknown resource.
    let unknown = ResourceId::from_bytes([3; 32]);
    assert_eq!(
        relay.rotate(unknown, as_key(&old), as_key(&new)).await,
        Err(CloseReason::KeyReplaced)
    );
}

#[tokio::test]
async fn r1_a_key_replaced_under_the_task_closes_the_sessions_of_the_old_key() {
    // What a replica sees when the rotation reaches it through its feed.
    let store = Arc::new(MemoryStore::default());
    let relay = relay_with(store.clone(), Limits::default());
    let old = SigningKey::generate(&mut rand::rngs::OsRng);
    let new = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &old).await;
    let mut a = verified(&relay, id, &old).await;
    let mut b = verified(&relay, id, &old).await;
    b.send(Code::SubmitDelta, &b"joined"[..]).await;
    assert_eq!(a.frame(Code::ForwardDelta).await, &b"joined"[..]);
    let mut h = Client::connect(&relay, id);
    h.frame(Code::RequireVerification).await;
    store
        .replace_key(&id, &jwk_of(&old), &jwk_of(&new))
        .await
        .unwrap();
    relay.reload(&id);
    assert_eq!(a.closed().await, CloseReason::KeyReplaced);
    assert_eq!(b.closed().await, CloseReason::KeyReplaced);
    assert_eq!(h.closed().await, CloseReason::KeyReplaced);
    let mut fresh = verified(&relay, id, &new).await;
    fresh.silent().await;
}

#[tokio::test]
async fn r1_a_write_through_this_primary_by_a_session_of_a_replaced_key_is_refused() {
    // A replica's session that proved the old key writes before the rotation reached its site.
    let store = Arc::new(MemoryStore::default());
    let relay = relay_with(store.clone(), Limits::default());
    let old = SigningKey::generate(&mut rand::rngs::OsRng);
    let new = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = create(&relay, &old).await;
    let written = relay
        .write(id, Bytes::from_static(b"one"), Some(jwk_of(&old)))
        .await
        .unwrap();
    assert!(written.is_some());
    let as_key =
        |key: &SigningKey| zbase_proto::wire::VerificationKey::Ed25519(key.verifying_key());
    relay.rotate(id, as_key(&old), as_key(&new)).await.unwrap();
    assert_eq!(
        relay
            .write(id, Bytes::from_static(b"two"), Some(jwk_of(&old)))
            .await,
        Ok(None)
    );
    assert_eq!(
        store.load(&id).await.unwrap().unwrap().snapshot,
        Some(Bytes::from_static(b"one"))
    );
    let written = relay
        .write(id, Bytes::from_static(b"three"), Some(jwk_of(&new)))
        .await
        .unwrap();
    assert!(written.is_some());
    // A replica of an older version sends no key: written as before.
    let written = relay
        .write(id, Bytes::from_static(b"four"), None)
        .await
        .unwrap();
    assert!(written.is_some());
}
