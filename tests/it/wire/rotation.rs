//! Extension R1 (docs/KEY-ROTATION.md): rotating a resource's verification key on a live
//! session, judged from outside on both transports, through the real binary.

use std::time::Duration;

use zbase_proto::wire::{Challenge, Code, ResourceId, encode_b64url, rotate_message};
use zbase_tests::client::{
    CloseKind, Conn, Event, Identity, SILENCE, Transport, create_resource, join, random_bytes,
    random_id, rotate_payload_text, seed_snapshot, sync_fresh, verify_keeping_challenge,
};
use zbase_tests::station::Station;

both_transports!(
    r1_rotation_is_acknowledged_with_a_fresh_challenge_and_the_session_goes_on,
    r1_every_other_session_of_the_resource_is_closed,
    r1_old_key_fails_and_new_key_is_offered_the_untouched_snapshot,
    r1_replayed_rotate_frame_fails_verification,
    r1_second_rotation_signs_the_key_rotated_challenge,
    r1_refused_rotations_fail_verification_and_change_nothing,
    r1_rotate_key_outside_a_verified_session_is_a_protocol_violation,
    r1_racing_rotations_have_exactly_one_winner,
    r1_rotated_key_survives_a_restart,
    r1_rotated_key_survives_sigkill_right_after_the_ack,
    r1_sessions_closed_by_a_rotation_are_not_failed_handshakes,
);

/// A fresh connection to `id`, verified with `identity`; returns it with its first rotation
/// challenge (the one it answered).
async fn verified(
    t: Transport,
    station: &Station,
    id: &ResourceId,
    identity: &Identity,
) -> (Conn, Challenge) {
    let mut conn = Conn::connect(t, station.addr(), id).await;
    let challenge = verify_keeping_challenge(&mut conn, id, identity).await;
    (conn, challenge)
}

/// Sends `rotate-key` from `current` to `new` and expects `key-rotated`; returns its
/// challenge, the next rotation challenge.
async fn rotate(
    conn: &mut Conn,
    id: &ResourceId,
    current: &Identity,
    new: &Identity,
    challenge: &Challenge,
) -> Challenge {
    conn.send(Code::RotateKey, current.rotate_payload(new, challenge, id))
        .await
        .expect("send rotate-key");
    let next = conn.expect_frame(Code::KeyRotated).await;
    Challenge::try_from(&next[..]).unwrap_or_else(|_| {
        panic!(
            "key-rotated carried {} bytes, not a 32-byte challenge",
            next.len()
        )
    })
}

/// A connection with `identity` must now fail verification (1008 / UNAUTHENTICATED).
async fn refused(t: Transport, station: &Station, id: &ResourceId, identity: &Identity) {
    let (mut conn, _) = verified(t, station, id, identity).await;
    conn.expect_close(CloseKind::Auth).await;
}

async fn r1_rotation_is_acknowledged_with_a_fresh_challenge_and_the_session_goes_on(t: Transport) {
    let station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    let next = rotate(&mut a, &id, &old, &new, &first).await;
    assert_ne!(next, first, "the next rotation challenge is fresh");
    assert_ne!(next, [0; 32]);
    // Frames after the rotation are served: a snapshot is stored and offered, and a peer that
    // proved the new key exchanges deltas with the rotating session.
    let snapshot = random_bytes(64);
    a.send(Code::SubmitSnapshot, snapshot.clone())
        .await
        .unwrap();
    a.send(Code::SubmitRequest, random_bytes(4)).await.unwrap();
    super::expect_shown(&mut a, &snapshot).await;
    let (mut b, _) = verified(t, &station, &id, &new).await;
    super::expect_shown(&mut b, &snapshot).await;
    sync_fresh(&mut a, &mut b).await;
    let d = random_bytes(16);
    b.send(Code::SubmitDelta, d.clone()).await.unwrap();
    a.expect_payload(Code::ForwardDelta, &d).await;
    a.expect_silence(SILENCE).await;
}

async fn r1_every_other_session_of_the_resource_is_closed(t: Transport) {
    let station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    let (mut b, _) = verified(t, &station, &id, &old).await;
    sync_fresh(&mut b, &mut a).await;
    let (mut c, _) = verified(t, &station, &id, &old).await;
    let d = random_bytes(8);
    c.send(Code::SubmitDelta, d.clone()).await.unwrap();
    a.expect_payload(Code::ForwardDelta, &d).await;
    b.expect_payload(Code::ForwardDelta, &d).await;
    // A connection in the handshake, challenged for the old key.
    let mut h = Conn::connect(t, station.addr(), &id).await;
    let challenge = h.expect_challenge(Code::RequireVerification).await;
    // Another resource is not touched.
    let (other_id, other) = create_resource(station.addr(), t).await;
    let (mut o1, _) = verified(t, &station, &other_id, &other).await;
    let (mut o2, _) = verified(t, &station, &other_id, &other).await;
    sync_fresh(&mut o1, &mut o2).await;

    rotate(&mut a, &id, &old, &new, &first).await;
    b.expect_close(CloseKind::Auth).await;
    c.expect_close(CloseKind::Auth).await;
    h.expect_close(CloseKind::Auth).await;
    // Had it answered just in time, the answer would not admit it either.
    let _ = h
        .send(
            Code::SubmitVerification,
            old.verify_payload(&challenge, &id).to_vec(),
        )
        .await;
    a.expect_silence(SILENCE).await;
    let d = random_bytes(8);
    o2.send(Code::SubmitDelta, d.clone()).await.unwrap();
    o1.expect_payload(Code::ForwardDelta, &d).await;
}

async fn r1_old_key_fails_and_new_key_is_offered_the_untouched_snapshot(t: Transport) {
    let station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let snapshot = random_bytes(256);
    seed_snapshot(station.addr(), t, &id, &old, &snapshot).await;
    let new = Identity::p256();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    a.expect_payload(Code::OfferSnapshot, &snapshot).await;
    rotate(&mut a, &id, &old, &new, &first).await;
    refused(t, &station, &id, &old).await;
    let mut b = join(station.addr(), t, &id, &new).await;
    b.expect_payload(Code::OfferSnapshot, &snapshot).await;
    b.expect_silence(SILENCE).await;
}

async fn r1_replayed_rotate_frame_fails_verification(t: Transport) {
    let station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    let payload = old.rotate_payload(&new, &first, &id);
    a.send(Code::RotateKey, payload.clone()).await.unwrap();
    a.expect_frame(Code::KeyRotated).await;
    a.send(Code::RotateKey, payload).await.unwrap();
    a.expect_close(CloseKind::Auth).await;
    // The rotation that did happen stands.
    refused(t, &station, &id, &old).await;
    let (mut b, _) = verified(t, &station, &id, &new).await;
    b.expect_silence(SILENCE).await;
}

async fn r1_second_rotation_signs_the_key_rotated_challenge(t: Transport) {
    let station = Station::start().await;
    let (id, one) = create_resource(station.addr(), t).await;
    let (two, three, four, five) = (
        Identity::p256(),
        Identity::ed25519(),
        Identity::ed25519(),
        Identity::ed25519(),
    );
    // Two rotations in a row on one session, each over the latest challenge.
    let (mut a, first) = verified(t, &station, &id, &one).await;
    let next = rotate(&mut a, &id, &one, &two, &first).await;
    rotate(&mut a, &id, &two, &three, &next).await;
    for gone in [&one, &two] {
        refused(t, &station, &id, gone).await;
    }
    // A spent challenge does not serve again, even signed by the current key.
    let (mut b, first_b) = verified(t, &station, &id, &three).await;
    rotate(&mut b, &id, &three, &four, &first_b).await;
    a.expect_close(CloseKind::Auth).await;
    b.send(Code::RotateKey, four.rotate_payload(&five, &first_b, &id))
        .await
        .unwrap();
    b.expect_close(CloseKind::Auth).await;
    refused(t, &station, &id, &five).await;
    let (mut c, _) = verified(t, &station, &id, &four).await;
    c.expect_silence(SILENCE).await;
}

async fn r1_refused_rotations_fail_verification_and_change_nothing(t: Transport) {
    let station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    let stranger = Identity::ed25519();
    // Each case builds a payload from the session's challenge.
    type Case = (&'static str, Box<dyn Fn(&Challenge) -> Vec<u8>>);
    let cases: Vec<Case> = vec![
        ("authorization by a wrong key", {
            let (new, stranger) = (new.clone(), stranger.clone());
            Box::new(move |c| stranger.rotate_payload(&new, c, &id))
        }),
        ("proof by a wrong key", {
            let (old, new, stranger) = (old.clone(), new.clone(), stranger.clone());
            Box::new(move |c| {
                rotate_payload_text(
                    &new.jwk(),
                    &stranger.sign(&zbase_proto::wire::rotate_proof_message(c, &id)),
                    &old.sign(&rotate_message(c, &id, &new.thumbprint())),
                )
                .into_bytes()
            })
        }),
        ("authorization of another new key", {
            let (old, new, stranger) = (old.clone(), new.clone(), stranger.clone());
            Box::new(move |c| {
                rotate_payload_text(
                    &new.jwk(),
                    &new.sign(&zbase_proto::wire::rotate_proof_message(c, &id)),
                    &old.sign(&rotate_message(c, &id, &stranger.thumbprint())),
                )
                .into_bytes()
            })
        }),
        ("signatures over another challenge", {
            let (old, new) = (old.clone(), new.clone());
            Box::new(move |_| old.rotate_payload(&new, &[7; 32], &id))
        }),
        ("new key equal to the current one", {
            let old = old.clone();
            Box::new(move |c| old.rotate_payload(&old, c, &id))
        }),
        ("malformed JSON", Box::new(|_| b"{\"jwk\":".to_vec())),
        ("unknown member", {
            let (old, new) = (old.clone(), new.clone());
            Box::new(move |c| {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&old.rotate_payload(&new, c, &id)).unwrap();
                value["note"] = "hello".into();
                value.to_string().into_bytes()
            })
        }),
        ("JWK with d", {
            let (old, new) = (old.clone(), new.clone());
            Box::new(move |c| {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&old.rotate_payload(&new, c, &id)).unwrap();
                value["jwk"]["d"] = encode_b64url(&[1; 32]).into();
                value.to_string().into_bytes()
            })
        }),
        ("a 63-byte authorization", {
            let (old, new) = (old.clone(), new.clone());
            Box::new(move |c| {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&old.rotate_payload(&new, c, &id)).unwrap();
                value["authorization"] = encode_b64url(&[1; 63]).into();
                value.to_string().into_bytes()
            })
        }),
        ("over 8 KiB", {
            let (old, new) = (old.clone(), new.clone());
            Box::new(move |c| {
                let mut text = old.rotate_payload(&new, c, &id);
                text.resize(8 * 1024 + 1, b' ');
                text
            })
        }),
    ];
    let (mut witness, _) = verified(t, &station, &id, &old).await;
    for (what, payload) in &cases {
        let (mut conn, challenge) = verified(t, &station, &id, &old).await;
        sync_fresh(&mut conn, &mut witness).await;
        conn.send(Code::RotateKey, payload(&challenge))
            .await
            .unwrap();
        assert_eq!(conn.expect_closed().await, CloseKind::Auth, "{what}");
    }
    // Nothing changed: the old key still verifies, the other sessions are still there.
    let (mut after, _) = verified(t, &station, &id, &old).await;
    sync_fresh(&mut after, &mut witness).await;
    refused(t, &station, &id, &new).await;
}

async fn r1_rotate_key_outside_a_verified_session_is_a_protocol_violation(t: Transport) {
    let station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    // In place of submit-verification, signed over the challenge as if verified.
    let mut conn = Conn::connect(t, station.addr(), &id).await;
    let challenge = conn.expect_challenge(Code::RequireVerification).await;
    conn.send(Code::RotateKey, old.rotate_payload(&new, &challenge, &id))
        .await
        .unwrap();
    conn.expect_close(CloseKind::Protocol).await;
    // In place of submit-config.
    let proposed = random_id();
    let mut conn = Conn::connect(t, station.addr(), &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    conn.send(
        Code::RotateKey,
        old.rotate_payload(&new, &challenge, &proposed),
    )
    .await
    .unwrap();
    conn.expect_close(CloseKind::Protocol).await;
    // The key is unchanged.
    refused(t, &station, &id, &new).await;
    let (mut ok, _) = verified(t, &station, &id, &old).await;
    ok.expect_silence(SILENCE).await;
}

async fn r1_racing_rotations_have_exactly_one_winner(t: Transport) {
    let station = Station::start().await;
    for _ in 0..3 {
        let (id, old) = create_resource(station.addr(), t).await;
        let (mut a, ca) = verified(t, &station, &id, &old).await;
        let (mut b, cb) = verified(t, &station, &id, &old).await;
        sync_fresh(&mut a, &mut b).await;
        let (na, nb) = (Identity::ed25519(), Identity::ed25519());
        let (pa, pb) = (
            old.rotate_payload(&na, &ca, &id),
            old.rotate_payload(&nb, &cb, &id),
        );
        let (sa, sb) = tokio::join!(a.send(Code::RotateKey, pa), b.send(Code::RotateKey, pb));
        let _ = (sa, sb);
        let (ra, rb) = tokio::join!(outcome(&mut a), outcome(&mut b));
        let (winner, loser) = match (ra, rb) {
            (Ok(()), Err(CloseKind::Auth)) => (&na, &nb),
            (Err(CloseKind::Auth), Ok(())) => (&nb, &na),
            other => panic!("expected one key-rotated and one 1008, got {other:?}"),
        };
        refused(t, &station, &id, &old).await;
        refused(t, &station, &id, loser).await;
        let (mut w, _) = verified(t, &station, &id, winner).await;
        w.expect_silence(SILENCE).await;
    }
}

/// `Ok` for `key-rotated`, else how the connection ended.
async fn outcome(conn: &mut Conn) -> Result<(), CloseKind> {
    match conn.recv().await {
        Event::Frame(frame) if frame.code() == Code::KeyRotated => Ok(()),
        Event::Frame(frame) => panic!("unexpected {frame:?}"),
        Event::Closed(kind) => Err(kind),
    }
}

async fn r1_rotated_key_survives_a_restart(t: Transport) {
    let mut station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let snapshot = random_bytes(100);
    seed_snapshot(station.addr(), t, &id, &old, &snapshot).await;
    let new = Identity::ed25519();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    a.expect_payload(Code::OfferSnapshot, &snapshot).await;
    rotate(&mut a, &id, &old, &new, &first).await;
    drop(a);
    if zbase_tests::station::topology_is_pods() {
        // A deployment's terminate also stops its HAProxy for good; its restart follows a kill.
        station.kill().await;
    } else {
        assert!(station.terminate().await.success());
    }
    station.restart().await;
    refused(t, &station, &id, &old).await;
    let mut b = join(station.addr(), t, &id, &new).await;
    b.expect_payload(Code::OfferSnapshot, &snapshot).await;
}

async fn r1_rotated_key_survives_sigkill_right_after_the_ack(t: Transport) {
    let mut station = Station::start().await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    rotate(&mut a, &id, &old, &new, &first).await;
    station.kill().await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    station.restart().await;
    refused(t, &station, &id, &old).await;
    let (mut b, _) = verified(t, &station, &id, &new).await;
    b.expect_silence(SILENCE).await;
}

async fn r1_sessions_closed_by_a_rotation_are_not_failed_handshakes(t: Transport) {
    // Every client here shares 127.0.0.1: had the closed sessions counted as failed
    // handshakes, the IP would be refused with 1013 before any challenge.
    let station = Station::builder()
        .failed_handshakes_per_minute(2)
        .start()
        .await;
    let (id, old) = create_resource(station.addr(), t).await;
    let new = Identity::ed25519();
    let (mut a, first) = verified(t, &station, &id, &old).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let (mut other, _) = verified(t, &station, &id, &old).await;
        sync_fresh(&mut a, &mut other).await;
        others.push(other);
    }
    let mut handshakes = Vec::new();
    for _ in 0..2 {
        let mut h = Conn::connect(t, station.addr(), &id).await;
        h.expect_challenge(Code::RequireVerification).await;
        handshakes.push(h);
    }
    rotate(&mut a, &id, &old, &new, &first).await;
    for conn in others.iter_mut().chain(handshakes.iter_mut()) {
        // Earlier peers still hold the later peers' join tokens.
        loop {
            match conn.recv().await {
                Event::Frame(frame) if frame.code() == Code::ForwardDelta => {}
                Event::Frame(frame) => panic!("unexpected {frame:?}"),
                Event::Closed(kind) => {
                    assert_eq!(kind, CloseKind::Auth);
                    break;
                }
            }
        }
    }
    for _ in 0..3 {
        let (mut b, _) = verified(t, &station, &id, &new).await;
        b.expect_silence(SILENCE).await;
    }
}
