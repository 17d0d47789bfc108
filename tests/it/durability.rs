//! Durability through the real binary (WIRE.md section 6): a snapshot is durable before it is
//! offered to anyone, so SIGKILL at any moment never loses a snapshot some peer was shown.
//!
//! The contract has no acknowledgement frame for `submit-snapshot`; a snapshot is
//! "acknowledged" once any client has been shown it (`offer-snapshot` or `forward-response`).
//! A writer submits numbered snapshots as fast as it can, a reader keeps asking for the
//! current one, the station is SIGKILLed at a random moment, and after every restart a fresh
//! peer must be offered a snapshot at least as new as the newest one ever shown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use zbase_proto::wire::ResourceId;
use zbase_proto::wire::{Code, Frame};
use zbase_tests::client::{
    Conn, Event, Identity, SILENCE, Transport, create_resource, join, seed_snapshot,
};
use zbase_tests::station::Station;

const ROUNDS: usize = 6;
const SNAPSHOT_LEN: usize = 2048;

/// Snapshot number `n`: its number, then filler derived from it, so a torn or mixed-up write
/// cannot pass for a whole one.
fn snapshot(n: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SNAPSHOT_LEN);
    bytes.extend_from_slice(&n.to_be_bytes());
    let seed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    bytes.extend((8..SNAPSHOT_LEN).map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8));
    bytes
}

/// The number of a shown snapshot, after checking it byte for byte.
fn snapshot_number(frame: &Frame) -> u64 {
    let payload = frame.payload();
    assert_eq!(
        payload.len(),
        SNAPSHOT_LEN,
        "a shown snapshot has the wrong length"
    );
    let n = u64::from_be_bytes(payload[..8].try_into().unwrap());
    assert!(
        payload[..] == snapshot(n)[..],
        "snapshot #{n} was shown with different bytes than were written"
    );
    n
}

/// Records a frame that shows a snapshot; returns whether it was one.
fn record_shown(frame: &Frame, shown: &AtomicU64) -> bool {
    if matches!(frame.code(), Code::OfferSnapshot | Code::ForwardResponse) {
        shown.fetch_max(snapshot_number(frame), Ordering::SeqCst);
        true
    } else {
        false
    }
}

/// Submits numbered snapshots until the connection breaks, draining what arrives.
async fn write_until_killed(mut conn: Conn, next: Arc<AtomicU64>, shown: Arc<AtomicU64>) {
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if conn.send(Code::SubmitSnapshot, snapshot(n)).await.is_err() {
            return;
        }
        while let Some(event) = conn.recv_timeout(Duration::ZERO).await {
            match event {
                Event::Frame(frame) => {
                    record_shown(&frame, &shown);
                }
                Event::Closed(_) => return,
            }
        }
    }
}

/// Requests the current snapshot over and over until the connection breaks.
async fn read_until_killed(mut conn: Conn, shown: Arc<AtomicU64>) {
    let mut counter = 0u64;
    loop {
        counter += 1;
        if conn
            .send(Code::SubmitRequest, counter.to_be_bytes().to_vec())
            .await
            .is_err()
        {
            return;
        }
        loop {
            match conn.recv_timeout(Duration::from_secs(30)).await {
                Some(Event::Frame(frame)) => {
                    if record_shown(&frame, &shown) {
                        break;
                    }
                }
                Some(Event::Closed(_)) | None => return,
            }
        }
    }
}

/// A fresh peer after a restart: the offered snapshot must be at least as new as `newest`.
async fn check_after_restart(
    station: &Station,
    t: Transport,
    id: &ResourceId,
    me: &Identity,
    shown: &AtomicU64,
    round: usize,
) {
    let newest = shown.load(Ordering::SeqCst);
    let mut probe = join(station.addr(), t, id, me).await;
    if newest == 0 {
        // Nothing acknowledged yet: an offer is allowed (written, not yet shown), none too.
        if let Some(event) = probe.recv_timeout(SILENCE).await {
            match event {
                Event::Frame(frame) if record_shown(&frame, shown) => {}
                other => panic!("round {round}: probe got {other:?}"),
            }
        }
    } else {
        let frame = match probe.recv().await {
            Event::Frame(frame) if frame.code() == Code::OfferSnapshot => frame,
            other => panic!(
                "round {round}: snapshot #{newest} had been shown, but a new peer got {other:?}"
            ),
        };
        let offered = snapshot_number(&frame);
        assert!(
            offered >= newest,
            "round {round}: snapshot #{newest} had been shown before SIGKILL, but after the \
             restart the station offers #{offered}: an acknowledged snapshot was lost"
        );
        shown.fetch_max(offered, Ordering::SeqCst);
    }
    probe.close().await;
}

async fn sigkill_never_loses_a_shown_snapshot(t: Transport) {
    let mut station = Station::start().await;
    let (id, me) = create_resource(station.addr(), t).await;
    let next = Arc::new(AtomicU64::new(1));
    let shown = Arc::new(AtomicU64::new(0));
    let mut increases = 0;
    for round in 0..ROUNDS {
        check_after_restart(&station, t, &id, &me, &shown, round).await;
        let before = shown.load(Ordering::SeqCst);
        let writer = join(station.addr(), t, &id, &me).await;
        let reader = join(station.addr(), t.other(), &id, &me).await;
        let writer = tokio::spawn(write_until_killed(writer, next.clone(), shown.clone()));
        let reader = tokio::spawn(read_until_killed(reader, shown.clone()));
        let delay = rand::thread_rng().gen_range(50..=500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        station.kill().await;
        for task in [writer, reader] {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("clients notice the station is gone")
                .expect("client task");
        }
        if shown.load(Ordering::SeqCst) > before {
            increases += 1;
        }
        station.restart().await;
    }
    check_after_restart(&station, t, &id, &me, &shown, ROUNDS).await;
    // The test proved something only if snapshots were being acknowledged when killed.
    assert!(
        increases >= ROUNDS / 2,
        "only {increases} of {ROUNDS} rounds showed any new snapshot before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_sigkill_never_loses_a_shown_snapshot_ws_writer() {
    sigkill_never_loses_a_shown_snapshot(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_sigkill_never_loses_a_shown_snapshot_grpc_writer() {
    sigkill_never_loses_a_shown_snapshot(Transport::Grpc).await;
}

/// The simplest case, deterministic: a snapshot seen once survives SIGKILL at once.
async fn shown_snapshot_survives_immediate_sigkill(t: Transport) {
    let mut station = Station::start().await;
    let (id, me) = create_resource(station.addr(), t).await;
    let payload = snapshot(42);
    seed_snapshot(station.addr(), t, &id, &me, &payload).await;
    station.kill().await;
    station.restart().await;
    let mut peer = join(station.addr(), t, &id, &me).await;
    peer.expect_payload(Code::OfferSnapshot, &payload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_shown_snapshot_survives_immediate_sigkill_ws() {
    shown_snapshot_survives_immediate_sigkill(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_shown_snapshot_survives_immediate_sigkill_grpc() {
    shown_snapshot_survives_immediate_sigkill(Transport::Grpc).await;
}
