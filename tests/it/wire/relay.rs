//! Sections 6 and 7: snapshots, deltas, requests, and both transports on one resource.

use std::time::Duration;

use super::{expect_shown, join_peers, same};
use zbase_proto::wire::Code;
use zbase_tests::client::{
    CloseKind, Conn, Event, Identity, SILENCE, Transport, create_resource, create_resource_with,
    join, random_bytes, seed_snapshot, sync,
};
use zbase_tests::station::Station;

both_transports!(
    s6_delta_reaches_every_other_peer_never_the_sender,
    s6_deltas_are_not_persisted,
    s6_snapshot_replaces_the_persisted_one_byte_for_byte,
    s6_snapshot_is_not_broadcast_to_peers_that_did_not_ask,
    s6_request_is_answered_with_snapshot_and_forwarded,
    s6_request_without_snapshot_is_only_forwarded,
    s6_pending_requester_gets_the_next_snapshot_once,
    s6_pending_requester_gets_its_own_next_snapshot,
    s6_pending_request_expires_after_the_window,
    s6_frames_never_cross_resources,
    s6_slow_peer_is_disconnected_not_starved,
    s6_flood_on_one_resource_does_not_stall_another,
    s7_websocket_and_grpc_peers_share_a_resource,
);

fn take3(mut peers: Vec<Conn>) -> (Conn, Conn, Conn) {
    let c = peers.pop().unwrap();
    let b = peers.pop().unwrap();
    let a = peers.pop().unwrap();
    (a, b, c)
}

async fn s6_delta_reaches_every_other_peer_never_the_sender(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let (mut a, mut b, mut c) = take3(join_peers(addr, &same(t, 3), &id, &me).await);
    for _ in 0..3 {
        let d = random_bytes(100);
        a.send(Code::SubmitDelta, d.clone()).await.unwrap();
        b.expect_payload(Code::ForwardDelta, &d).await;
        c.expect_payload(Code::ForwardDelta, &d).await;
        // a's next frame is c's delta, not its own.
        let e = random_bytes(100);
        c.send(Code::SubmitDelta, e.clone()).await.unwrap();
        a.expect_payload(Code::ForwardDelta, &e).await;
        b.expect_payload(Code::ForwardDelta, &e).await;
    }
    for peer in [&mut a, &mut b, &mut c] {
        peer.expect_silence(SILENCE).await;
    }
    // Payloads are verbatim, whatever they hold.
    let odd: Vec<u8> = (0..=255u8).chain([0, 1, 0x50, 0x53]).collect();
    b.send(Code::SubmitDelta, odd.clone()).await.unwrap();
    a.expect_payload(Code::ForwardDelta, &odd).await;
    c.expect_payload(Code::ForwardDelta, &odd).await;
    b.expect_silence(SILENCE).await;
}

async fn s6_deltas_are_not_persisted(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    for _ in 0..5 {
        let d = random_bytes(50);
        peers[0].send(Code::SubmitDelta, d.clone()).await.unwrap();
        peers[1].expect_payload(Code::ForwardDelta, &d).await;
    }
    // A later peer sees none of them, and no snapshot either.
    let mut late = join(addr, t, &id, &me).await;
    sync(&mut late, &mut peers[1]).await;
    late.expect_silence(SILENCE).await;
    // With a snapshot, the late peer gets exactly that.
    let snapshot = random_bytes(64);
    seed_snapshot(addr, t, &id, &me, &snapshot).await;
    peers[0]
        .send(Code::SubmitDelta, random_bytes(9))
        .await
        .unwrap();
    let mut later = join(addr, t, &id, &me).await;
    later.expect_payload(Code::OfferSnapshot, &snapshot).await;
    later.expect_silence(SILENCE).await;
}

async fn s6_snapshot_replaces_the_persisted_one_byte_for_byte(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    for snapshot in [vec![0u8], big, vec![0xff, 0, 0x52], random_bytes(3)] {
        seed_snapshot(addr, t, &id, &me, &snapshot).await;
        for transport in Transport::ALL {
            let mut peer = join(addr, transport, &id, &me).await;
            peer.expect_payload(Code::OfferSnapshot, &snapshot).await;
            peer.expect_silence(Duration::from_millis(100)).await;
        }
    }
}

async fn s6_snapshot_is_not_broadcast_to_peers_that_did_not_ask(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let (mut a, mut b, mut c) = take3(join_peers(addr, &same(t, 3), &id, &me).await);
    let snapshot = random_bytes(200);
    a.send(Code::SubmitSnapshot, snapshot.clone())
        .await
        .unwrap();
    // a asks, so a is shown the snapshot; b and c see only the request.
    let request = random_bytes(5);
    a.send(Code::SubmitRequest, request.clone()).await.unwrap();
    expect_shown(&mut a, &snapshot).await;
    b.expect_payload(Code::ForwardRequest, &request).await;
    c.expect_payload(Code::ForwardRequest, &request).await;
    b.expect_silence(SILENCE).await;
    c.expect_silence(Duration::ZERO).await;
}

async fn s6_request_is_answered_with_snapshot_and_forwarded(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let snapshot = random_bytes(300);
    seed_snapshot(addr, t, &id, &me, &snapshot).await;
    let (mut a, mut b, mut c) = take3(join_peers(addr, &same(t, 3), &id, &me).await);
    for peer in [&mut a, &mut b, &mut c] {
        peer.expect_payload(Code::OfferSnapshot, &snapshot).await;
    }
    for request in [vec![0x54], random_bytes(1000)] {
        a.send(Code::SubmitRequest, request.clone()).await.unwrap();
        a.expect_payload(Code::OfferSnapshot, &snapshot).await;
        b.expect_payload(Code::ForwardRequest, &request).await;
        c.expect_payload(Code::ForwardRequest, &request).await;
    }
    // Never forwarded back to the requester.
    a.expect_silence(SILENCE).await;
}

async fn s6_request_without_snapshot_is_only_forwarded(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let (mut a, mut b, mut c) = take3(join_peers(addr, &same(t, 3), &id, &me).await);
    let request = random_bytes(20);
    a.send(Code::SubmitRequest, request.clone()).await.unwrap();
    b.expect_payload(Code::ForwardRequest, &request).await;
    c.expect_payload(Code::ForwardRequest, &request).await;
    a.expect_silence(SILENCE).await;
}

async fn s6_pending_requester_gets_the_next_snapshot_once(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let (mut a, mut b, mut c) = take3(join_peers(addr, &same(t, 3), &id, &me).await);
    let request = random_bytes(20);
    a.send(Code::SubmitRequest, request.clone()).await.unwrap();
    b.expect_payload(Code::ForwardRequest, &request).await;
    c.expect_payload(Code::ForwardRequest, &request).await;
    // b answers with a snapshot: persisted, and sent to the pending a only.
    let first = random_bytes(400);
    b.send(Code::SubmitSnapshot, first.clone()).await.unwrap();
    a.expect_payload(Code::ForwardResponse, &first).await;
    // a is no longer pending: b's next snapshot is not sent to it.
    let second = random_bytes(400);
    b.send(Code::SubmitSnapshot, second.clone()).await.unwrap();
    let probe = random_bytes(6);
    b.send(Code::SubmitRequest, probe.clone()).await.unwrap();
    expect_shown(&mut b, &second).await;
    a.expect_payload(Code::ForwardRequest, &probe).await;
    c.expect_payload(Code::ForwardRequest, &probe).await;
    a.expect_silence(SILENCE).await;
    c.expect_silence(Duration::ZERO).await;
}

async fn s6_pending_requester_gets_its_own_next_snapshot(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    let request = random_bytes(20);
    peers[0]
        .send(Code::SubmitRequest, request.clone())
        .await
        .unwrap();
    peers[1]
        .expect_payload(Code::ForwardRequest, &request)
        .await;
    // "The next snapshot (from any peer)": the requester's own counts too.
    let snapshot = random_bytes(50);
    peers[0]
        .send(Code::SubmitSnapshot, snapshot.clone())
        .await
        .unwrap();
    peers[0]
        .expect_payload(Code::ForwardResponse, &snapshot)
        .await;
    peers[1].expect_silence(SILENCE).await;
}

async fn s6_pending_request_expires_after_the_window(t: Transport) {
    let window = Duration::from_millis(500);
    let station = Station::builder()
        .pending_request_window(window)
        .start()
        .await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    let (a, b) = peers.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);

    // Within the window: answered.
    let request = random_bytes(8);
    a.send(Code::SubmitRequest, request.clone()).await.unwrap();
    b.expect_payload(Code::ForwardRequest, &request).await;
    let first = random_bytes(30);
    b.send(Code::SubmitSnapshot, first.clone()).await.unwrap();
    a.expect_payload(Code::ForwardResponse, &first).await;

    // Past the window: not answered. The contract has no event for expiry, so wait it out.
    let request = random_bytes(8);
    a.send(Code::SubmitRequest, request.clone()).await.unwrap();
    a.expect_payload(Code::OfferSnapshot, &first).await;
    b.expect_payload(Code::ForwardRequest, &request).await;
    tokio::time::sleep(window * 2).await;
    let late = random_bytes(30);
    b.send(Code::SubmitSnapshot, late.clone()).await.unwrap();
    let probe = random_bytes(8);
    b.send(Code::SubmitRequest, probe.clone()).await.unwrap();
    expect_shown(b, &late).await;
    a.expect_payload(Code::ForwardRequest, &probe).await;
    a.expect_silence(SILENCE).await;
}

async fn s6_frames_never_cross_resources(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    // One key for both resources, so only the identifier separates them.
    let me = Identity::ed25519();
    let one = create_resource_with(addr, t, &me).await;
    let two = create_resource_with(addr, t, &me).await;
    let mut ones = join_peers(addr, &[t, t.other()], &one, &me).await;
    let mut twos = join_peers(addr, &[t, t.other()], &two, &me).await;

    let delta = random_bytes(10);
    ones[0]
        .send(Code::SubmitDelta, delta.clone())
        .await
        .unwrap();
    ones[1].expect_payload(Code::ForwardDelta, &delta).await;
    let snapshot = random_bytes(10);
    ones[0]
        .send(Code::SubmitSnapshot, snapshot.clone())
        .await
        .unwrap();
    let request = random_bytes(10);
    ones[1]
        .send(Code::SubmitRequest, request.clone())
        .await
        .unwrap();
    ones[0].expect_payload(Code::ForwardRequest, &request).await;
    expect_shown(&mut ones[1], &snapshot).await;

    for peer in &mut twos {
        peer.expect_silence(SILENCE).await;
    }
    // Resource two has no snapshot; one does.
    let mut late_two = join(addr, t, &two, &me).await;
    sync(&mut late_two, &mut twos[0]).await;
    late_two.expect_silence(SILENCE).await;
    let mut late_one = join(addr, t, &one, &me).await;
    late_one
        .expect_payload(Code::OfferSnapshot, &snapshot)
        .await;
    // And nothing from two reaches one.
    let (a, b) = twos.split_at_mut(1);
    sync(&mut b[0], &mut a[0]).await;
    for peer in &mut ones {
        peer.expect_silence(SILENCE).await;
    }
}

async fn s6_slow_peer_is_disconnected_not_starved(t: Transport) {
    const DELTA: usize = 256 * 1024;
    const COUNT: usize = 200;
    let station = Station::builder().peer_queue_frames(4).start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    // slow joins and then never reads until the flood is over.
    let (mut flooder, mut reader, mut slow) = take3(join_peers(addr, &same(t, 3), &id, &me).await);
    for i in 0..COUNT {
        let mut delta = vec![(i % 251) as u8; DELTA];
        delta[..8].copy_from_slice(&(i as u64).to_be_bytes());
        flooder
            .send(Code::SubmitDelta, delta.clone())
            .await
            .unwrap();
        // Lock-step, so the reader's own queue never holds more than one frame.
        reader.expect_payload(Code::ForwardDelta, &delta).await;
    }
    // The flooder and the reader are unaffected.
    sync(&mut reader, &mut flooder).await;
    sync(&mut flooder, &mut reader).await;
    // slow now reads what the kernel buffered, then must find itself disconnected.
    let mut received = 0usize;
    let kind = loop {
        match slow.recv().await {
            Event::Frame(frame) if frame.code() == Code::ForwardDelta => received += 1,
            Event::Frame(frame) => panic!("slow peer: unexpected {frame:?}"),
            Event::Closed(kind) => break kind,
        }
    };
    assert!(
        matches!(kind, CloseKind::Overloaded | CloseKind::Reset(_)),
        "the slow peer must be disconnected (1013, or a reset while its close was stuck \
         behind full buffers); it ended with {kind:?} after {received} deltas"
    );
    assert!(
        received < COUNT,
        "the slow peer received all {COUNT} deltas: it was never disconnected"
    );
    // It resynchronises by reconnecting.
    let mut again = join(addr, t, &id, &me).await;
    sync(&mut again, &mut reader).await;
}

async fn s6_flood_on_one_resource_does_not_stall_another(t: Transport) {
    const FLOOD: usize = 5000;
    let station = Station::start().await;
    let addr = station.addr();
    let (hostile_id, hostile_key) = create_resource(addr, t).await;
    let (calm_id, calm_key) = create_resource(addr, t).await;
    let mut hostile = join_peers(addr, &same(t, 2), &hostile_id, &hostile_key).await;
    let mut victim = hostile.pop().unwrap();
    let mut flooder = hostile.pop().unwrap();
    let mut calm = join_peers(addr, &[t, t.other()], &calm_id, &calm_key).await;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            let mut delta = random_bytes(4096);
            delta[..8].copy_from_slice(&(i as u64).to_be_bytes());
            if flooder.send(Code::SubmitDelta, delta).await.is_err() {
                break;
            }
        }
        flooder
    });
    // The victim reads as it can; it may be disconnected for falling behind, which is fine.
    let drain = tokio::spawn(async move {
        let mut started = Some(started_tx);
        let mut count = 0usize;
        while let Event::Frame(_) = victim.recv().await {
            count += 1;
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
            if count == FLOOD {
                break;
            }
        }
        count
    });
    started_rx.await.expect("the flood reached the victim");
    let exchange = async {
        for _ in 0..50 {
            let (a, b) = calm.split_at_mut(1);
            let (a, b) = (&mut a[0], &mut b[0]);
            let d = random_bytes(64);
            a.send(Code::SubmitDelta, d.clone()).await.unwrap();
            b.expect_payload(Code::ForwardDelta, &d).await;
            let e = random_bytes(64);
            b.send(Code::SubmitDelta, e.clone()).await.unwrap();
            a.expect_payload(Code::ForwardDelta, &e).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("100 deltas on a calm resource within 60 s of a flood elsewhere");
    let _flooder = flood.await.unwrap();
    let _ = drain.await.unwrap();
}

async fn s7_websocket_and_grpc_peers_share_a_resource(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    // The creator's transport is t; peers on both.
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &[Transport::Ws, Transport::Grpc], &id, &me).await;
    let (w, g) = peers.split_at_mut(1);
    let (w, g) = (&mut w[0], &mut g[0]);
    for _ in 0..3 {
        sync(w, g).await;
        sync(g, w).await;
    }
    let request = random_bytes(12);
    w.send(Code::SubmitRequest, request.clone()).await.unwrap();
    g.expect_payload(Code::ForwardRequest, &request).await;
    let snapshot = random_bytes(1234);
    g.send(Code::SubmitSnapshot, snapshot.clone())
        .await
        .unwrap();
    w.expect_payload(Code::ForwardResponse, &snapshot).await;
    for transport in Transport::ALL {
        let mut late = join(addr, transport, &id, &me).await;
        late.expect_payload(Code::OfferSnapshot, &snapshot).await;
        sync(&mut late, w).await;
    }
}
