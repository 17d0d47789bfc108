//! Sections 3, 4 and 5: connection phases, verification keys and signatures, configuration.

use std::collections::HashSet;
use std::time::Duration;

use super::{join_peers, same};
use zbase_proto::wire::{
    Challenge, Code, ResourceId, config_message, encode_b64url, verify_message,
};
use zbase_tests::client::{
    CloseKind, Conn, Event, Identity, SILENCE, Transport, config_payload_text, configure,
    create_resource, create_resource_with, finish_configure, join, random_bytes, random_id,
    seed_snapshot, sync, sync_fresh, verify,
};
use zbase_tests::station::Station;

both_transports!(
    s3_unknown_resource_gets_exactly_require_config,
    s3_existing_resource_gets_exactly_require_verification,
    s3_challenges_are_fresh_random_bytes,
    s3_early_frame_terminates,
    s3_answer_with_wrong_code_is_a_protocol_violation,
    s3_verified_session_refuses_handshake_frames,
    s3_handshake_timeout_fails_like_verification,
    s9_default_handshake_timeout_is_not_short,
    s3_verified_peer_is_offered_the_snapshot_at_once,
    s3_verified_peer_without_snapshot_gets_nothing,
    s3_configuration_closes_normally_and_client_reconnects,
    s3_verified_session_accepts_any_order_of_client_frames,
    s4_ed25519_and_p256_keys_verify,
    s4_p256_high_s_signature_accepted,
    s4_wrong_signature_fails,
    s4_replayed_signature_fails,
    s4_cross_identifier_signature_fails,
    s4_config_proof_is_bound_to_proposed_identifier,
    s5_malformed_json_is_refused,
    s5_unknown_and_duplicate_members_are_refused,
    s5_jwk_with_d_is_refused,
    s5_malformed_or_unsupported_jwk_is_refused,
    s5_bad_proof_is_refused,
    s5_payload_over_8_kib_is_refused,
    s5_payload_of_exactly_8_kib_is_accepted,
    s5_free_identifier_is_kept,
    s5_taken_identifier_gets_a_new_identifier,
    s5_racing_creators_get_different_identifiers,
    s5_key_is_durable_before_offer_config,
);

async fn s3_unknown_resource_gets_exactly_require_config(t: Transport) {
    let station = Station::start().await;
    let mut conn = Conn::connect(t, station.addr(), &random_id()).await;
    conn.expect_challenge(Code::RequireConfig).await;
    conn.expect_silence(SILENCE).await;
}

async fn s3_existing_resource_gets_exactly_require_verification(t: Transport) {
    let station = Station::start().await;
    let (id, _) = create_resource(station.addr(), t).await;
    let mut conn = Conn::connect(t, station.addr(), &id).await;
    conn.expect_challenge(Code::RequireVerification).await;
    conn.expect_silence(SILENCE).await;
}

async fn s3_challenges_are_fresh_random_bytes(t: Transport) {
    let station = Station::start().await;
    let (id, _) = create_resource(station.addr(), t).await;
    let unknown = random_id();
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let mut conn = Conn::connect(t, station.addr(), &id).await;
        let challenge = conn.expect_challenge(Code::RequireVerification).await;
        assert!(
            seen.insert(challenge),
            "a verification challenge was reused"
        );
        let mut conn = Conn::connect(t, station.addr(), &unknown).await;
        let challenge = conn.expect_challenge(Code::RequireConfig).await;
        assert!(
            seen.insert(challenge),
            "a configuration challenge was reused"
        );
    }
    assert!(
        !seen.contains(&[0u8; 32]),
        "an all-zero challenge is not random"
    );
}

/// Events after an early frame: at most the `require-*` frame it raced, then the close.
async fn close_after_early_frame(conn: &mut Conn, required: Code) -> CloseKind {
    match conn.recv().await {
        Event::Frame(frame) if frame.code() == required => conn.expect_closed().await,
        Event::Frame(frame) => panic!("after an early frame: unexpected {frame:?}"),
        Event::Closed(kind) => kind,
    }
}

async fn s3_early_frame_terminates(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let either = [CloseKind::Protocol, CloseKind::Auth];

    // A signature sent before the challenge arrived cannot be valid.
    let mut conn = Conn::connect(t, addr, &id).await;
    let guess = me.verify_payload(&[0; 32], &id);
    let _ = conn.send(Code::SubmitVerification, guess.to_vec()).await;
    let kind = close_after_early_frame(&mut conn, Code::RequireVerification).await;
    assert!(
        either.contains(&kind),
        "early submit-verification: {kind:?}"
    );

    // Same for a configuration proof on an unknown resource.
    let proposed = random_id();
    let mut conn = Conn::connect(t, addr, &proposed).await;
    let _ = conn
        .send(Code::SubmitConfig, me.config_payload(&[0; 32], &proposed))
        .await;
    let kind = close_after_early_frame(&mut conn, Code::RequireConfig).await;
    assert!(either.contains(&kind), "early submit-config: {kind:?}");

    // A session frame before the handshake is a protocol violation, whatever the race.
    for (target, required) in [
        (id, Code::RequireVerification),
        (random_id(), Code::RequireConfig),
    ] {
        for code in [Code::SubmitDelta, Code::SubmitSnapshot, Code::SubmitRequest] {
            let mut conn = Conn::connect(t, addr, &target).await;
            let _ = conn.send(code, random_bytes(8)).await;
            let kind = close_after_early_frame(&mut conn, required).await;
            assert_eq!(kind, CloseKind::Protocol, "early {code} on {required}");
        }
    }
    let mut conn = Conn::connect(t, addr, &id).await;
    let _ = conn.send(Code::SubmitDelta, random_bytes(8)).await;
    assert_eq!(
        close_after_early_frame(&mut conn, Code::RequireVerification).await,
        CloseKind::Protocol
    );
    // None of this configured anything or stopped the resource from working.
    let mut conn = Conn::connect(t, addr, &proposed).await;
    conn.expect_challenge(Code::RequireConfig).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    let (a, b) = peers.split_at_mut(1);
    sync(&mut b[0], &mut a[0]).await;
}

async fn s3_answer_with_wrong_code_is_a_protocol_violation(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;

    // submit-config where verification was required, with a well-formed, valid-looking proof.
    let mut conn = Conn::connect(t, addr, &id).await;
    let challenge = conn.expect_challenge(Code::RequireVerification).await;
    conn.send(Code::SubmitConfig, me.config_payload(&challenge, &id))
        .await
        .unwrap();
    conn.expect_close(CloseKind::Protocol).await;

    // submit-verification where configuration was required, with a real signature.
    let proposed = random_id();
    let mut conn = Conn::connect(t, addr, &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    conn.send(
        Code::SubmitVerification,
        me.verify_payload(&challenge, &proposed).to_vec(),
    )
    .await
    .unwrap();
    conn.expect_close(CloseKind::Protocol).await;

    // Session frames as the answer, in both handshakes.
    for code in [Code::SubmitSnapshot, Code::SubmitDelta, Code::SubmitRequest] {
        for (target, required) in [
            (id, Code::RequireVerification),
            (random_id(), Code::RequireConfig),
        ] {
            let mut conn = Conn::connect(t, addr, &target).await;
            conn.expect_challenge(required).await;
            conn.send(code, random_bytes(64)).await.unwrap();
            assert_eq!(
                conn.expect_closed().await,
                CloseKind::Protocol,
                "{code} answering {required}"
            );
        }
    }
    // The refused configurations configured nothing.
    let mut conn = Conn::connect(t, addr, &proposed).await;
    conn.expect_challenge(Code::RequireConfig).await;
}

async fn s3_verified_session_refuses_handshake_frames(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 3), &id, &me).await;
    let mut c = peers.pop().unwrap();
    let mut b = peers.pop().unwrap();
    let mut a = peers.pop().unwrap();
    // A second, well-formed answer is still a frame the verified phase does not allow.
    b.send(
        Code::SubmitVerification,
        me.verify_payload(&[1; 32], &id).to_vec(),
    )
    .await
    .unwrap();
    b.expect_close(CloseKind::Protocol).await;
    c.send(Code::SubmitConfig, me.config_payload(&[1; 32], &id))
        .await
        .unwrap();
    c.expect_close(CloseKind::Protocol).await;
    let mut d = join(addr, t, &id, &me).await;
    sync(&mut d, &mut a).await;
    sync(&mut a, &mut d).await;
}

async fn s3_handshake_timeout_fails_like_verification(t: Transport) {
    let station = Station::builder()
        .handshake_timeout(Duration::from_millis(500))
        .start()
        .await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut silent = Conn::connect(t, addr, &id).await;
    silent.expect_challenge(Code::RequireVerification).await;
    silent.expect_close(CloseKind::Auth).await;
    let proposed = random_id();
    let mut silent = Conn::connect(t, addr, &proposed).await;
    silent.expect_challenge(Code::RequireConfig).await;
    silent.expect_close(CloseKind::Auth).await;
    // A client that answers in time is not affected by the short timeout.
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    let (a, b) = peers.split_at_mut(1);
    sync(&mut a[0], &mut b[0]).await;
    // A verified peer is past the handshake: the timeout no longer applies to it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    sync(&mut b[0], &mut a[0]).await;
}

async fn s9_default_handshake_timeout_is_not_short(t: Transport) {
    // The default is 10 s; a client answering after 2 s must still get in (and configure).
    let station = Station::start().await;
    let addr = station.addr();
    let me = Identity::ed25519();
    let proposed = random_id();
    let mut conn = Conn::connect(t, addr, &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    conn.send(Code::SubmitConfig, me.config_payload(&challenge, &proposed))
        .await
        .unwrap();
    assert_eq!(finish_configure(&mut conn).await, proposed);
    let mut first = join_peers(addr, &same(t, 1), &proposed, &me)
        .await
        .remove(0);
    let mut slow = Conn::connect(t, addr, &proposed).await;
    let challenge = slow.expect_challenge(Code::RequireVerification).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.send(
        Code::SubmitVerification,
        me.verify_payload(&challenge, &proposed).to_vec(),
    )
    .await
    .unwrap();
    sync_fresh(&mut slow, &mut first).await;
}

async fn s3_verified_peer_is_offered_the_snapshot_at_once(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let snapshot = random_bytes(5000);
    seed_snapshot(addr, t, &id, &me, &snapshot).await;
    for transport in Transport::ALL {
        let mut peer = join(addr, transport, &id, &me).await;
        peer.expect_payload(Code::OfferSnapshot, &snapshot).await;
        peer.expect_silence(SILENCE).await;
    }
}

async fn s3_verified_peer_without_snapshot_gets_nothing(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    for peer in &mut peers {
        peer.expect_silence(SILENCE).await;
    }
    // Both were verified all along.
    let (a, b) = peers.split_at_mut(1);
    sync(&mut a[0], &mut b[0]).await;
}

async fn s3_configuration_closes_normally_and_client_reconnects(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let me = Identity::ed25519();
    let proposed = random_id();
    let mut conn = Conn::connect(t, addr, &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    conn.send(Code::SubmitConfig, me.config_payload(&challenge, &proposed))
        .await
        .unwrap();
    conn.expect_payload(Code::OfferConfig, proposed.as_bytes())
        .await;
    conn.expect_close(CloseKind::Normal).await;
    // The configuring connection is never a peer: reconnecting is how one verifies.
    let mut peers = join_peers(addr, &same(t, 2), &proposed, &me).await;
    let (a, b) = peers.split_at_mut(1);
    sync(&mut b[0], &mut a[0]).await;
}

async fn s3_verified_session_accepts_any_order_of_client_frames(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    let mut b = peers.pop().unwrap();
    let mut a = peers.pop().unwrap();
    let mut last = None;
    for round in 0..5u8 {
        let order: [Code; 3] = match round % 3 {
            0 => [Code::SubmitSnapshot, Code::SubmitDelta, Code::SubmitRequest],
            1 => [Code::SubmitRequest, Code::SubmitSnapshot, Code::SubmitDelta],
            _ => [Code::SubmitDelta, Code::SubmitRequest, Code::SubmitSnapshot],
        };
        for code in order {
            let payload = vec![round + 1; 10];
            a.send(code, payload.clone()).await.unwrap();
            if code == Code::SubmitSnapshot {
                last = Some(payload);
            }
        }
    }
    // Still connected, and b saw the deltas and requests (snapshots only as answers).
    let token = random_bytes(16);
    a.send(Code::SubmitDelta, token.clone()).await.unwrap();
    loop {
        match b.recv().await {
            Event::Frame(f) if f.code() == Code::ForwardDelta && f.payload()[..] == token[..] => {
                break;
            }
            Event::Frame(f) if matches!(f.code(), Code::ForwardDelta | Code::ForwardRequest) => {}
            other => panic!("peer b: unexpected {other:?}"),
        }
    }
    // The last snapshot becomes the persisted one. Writes complete after their submitter
    // moves on and the contract has no event for "persisted", so poll with newcomers, whose
    // first frame is the persisted snapshot.
    let last = last.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = join(addr, t, &id, &me).await;
        // No offer at all while no write has completed yet.
        match c.recv_timeout(SILENCE).await {
            Some(Event::Frame(f))
                if f.code() == Code::OfferSnapshot && f.payload()[..] == last[..] =>
            {
                break;
            }
            Some(Event::Frame(f)) if f.code() == Code::OfferSnapshot => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the last snapshot was never offered"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => assert!(
                tokio::time::Instant::now() < deadline,
                "no snapshot was ever offered"
            ),
            other => panic!("newcomer: unexpected {other:?}"),
        }
    }
}

/// A verified peer pair of `id` proves `identity` works there.
async fn assert_identity_works(
    t: Transport,
    station: &Station,
    id: &ResourceId,
    identity: &Identity,
) {
    let mut peers = join_peers(station.addr(), &same(t, 2), id, identity).await;
    let (a, b) = peers.split_at_mut(1);
    sync(&mut b[0], &mut a[0]).await;
}

async fn s4_ed25519_and_p256_keys_verify(t: Transport) {
    let station = Station::start().await;
    for identity in [Identity::ed25519(), Identity::p256()] {
        let id = create_resource_with(station.addr(), t, &identity).await;
        assert_identity_works(t, &station, &id, &identity).await;
    }
}

async fn s4_p256_high_s_signature_accepted(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let me = Identity::p256();
    let proposed = random_id();
    let mut conn = Conn::connect(t, addr, &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    let proof = me.sign_high_s(&config_message(&challenge, &proposed));
    conn.send(Code::SubmitConfig, config_payload_text(&me.jwk(), &proof))
        .await
        .unwrap();
    let id = finish_configure(&mut conn).await;
    assert_eq!(id, proposed);

    let mut low = join_peers(addr, &same(t, 2), &id, &me).await.remove(0);
    let mut high = Conn::connect(t, addr, &id).await;
    let challenge = high.expect_challenge(Code::RequireVerification).await;
    let signature = me.sign_high_s(&verify_message(&challenge, &id));
    high.send(Code::SubmitVerification, signature.to_vec())
        .await
        .unwrap();
    sync(&mut high, &mut low).await;
    sync(&mut low, &mut high).await;
}

/// Answers the challenge of a fresh connection to `id` with `make(challenge)` and expects
/// `Auth`; the close carries nothing about the identifier or the key.
async fn assert_verification_refused(
    t: Transport,
    station: &Station,
    id: &ResourceId,
    identity: &Identity,
    what: &str,
    make: impl Fn(&Challenge) -> Vec<u8>,
) {
    let mut conn = Conn::connect(t, station.addr(), id).await;
    let challenge = conn.expect_challenge(Code::RequireVerification).await;
    conn.send(Code::SubmitVerification, make(&challenge))
        .await
        .unwrap();
    assert_eq!(conn.expect_closed().await, CloseKind::Auth, "{what}");
    let detail = conn.close_detail();
    assert!(
        !detail.contains(id.as_str()) && !detail.contains(&identity.jwk_x()),
        "{what}: the close detail {detail:?} names the identifier or the key"
    );
}

/// Makes a `submit-verification` payload from the challenge.
type SignatureMaker<'a> = Box<dyn Fn(&Challenge) -> Vec<u8> + 'a>;

async fn s4_wrong_signature_fails(t: Transport) {
    let station = Station::start().await;
    for me in [Identity::ed25519(), Identity::p256()] {
        let id = create_resource_with(station.addr(), t, &me).await;
        let other = Identity::ed25519();
        let cases: Vec<(&str, SignatureMaker)> = vec![
            (
                "another key's signature",
                Box::new(|c: &Challenge| other.verify_payload(c, &id).to_vec()),
            ),
            (
                "signature over the configuration context",
                Box::new(|c: &Challenge| me.sign(&config_message(c, &id)).to_vec()),
            ),
            (
                "signature over another challenge",
                Box::new(|c: &Challenge| {
                    let mut wrong = *c;
                    wrong[0] ^= 1;
                    me.verify_payload(&wrong, &id).to_vec()
                }),
            ),
            (
                "signature with a flipped bit",
                Box::new(|c: &Challenge| {
                    let mut sig = me.verify_payload(c, &id);
                    sig[10] ^= 0x40;
                    sig.to_vec()
                }),
            ),
            ("64 zero bytes", Box::new(|_: &Challenge| vec![0; 64])),
            (
                "63 bytes of a valid signature",
                Box::new(|c: &Challenge| me.verify_payload(c, &id)[..63].to_vec()),
            ),
            (
                "a valid signature and one extra byte",
                Box::new(|c: &Challenge| {
                    let mut sig = me.verify_payload(c, &id).to_vec();
                    sig.push(0);
                    sig
                }),
            ),
        ];
        for (what, make) in &cases {
            assert_verification_refused(t, &station, &id, &me, what, make).await;
        }
        assert_identity_works(t, &station, &id, &me).await;
    }
}

async fn s4_replayed_signature_fails(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut first = Conn::connect(t, addr, &id).await;
    let challenge = first.expect_challenge(Code::RequireVerification).await;
    let signature = me.verify_payload(&challenge, &id);
    first
        .send(Code::SubmitVerification, signature.to_vec())
        .await
        .unwrap();
    // The first use worked...
    let mut witness = join(addr, t, &id, &me).await;
    sync_fresh(&mut witness, &mut first).await;
    // ...and the same signature, replayed on a new connection (while the first is open and
    // after it closed), fails.
    assert_verification_refused(t, &station, &id, &me, "replay", |_| signature.to_vec()).await;
    first.close().await;
    assert_verification_refused(t, &station, &id, &me, "replay after close", |_| {
        signature.to_vec()
    })
    .await;
}

async fn s4_cross_identifier_signature_fails(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    // One key for two resources: only the identifier in the signed message tells them apart.
    let me = Identity::ed25519();
    let a = create_resource_with(addr, t, &me).await;
    let b = create_resource_with(addr, t, &me).await;
    assert_verification_refused(t, &station, &b, &me, "b's challenge signed for a", |c| {
        me.verify_payload(c, &a).to_vec()
    })
    .await;
    // A signature made on a connection to a, carried to b.
    let mut on_a = Conn::connect(t, addr, &a).await;
    let challenge_a = on_a.expect_challenge(Code::RequireVerification).await;
    let for_a = me.verify_payload(&challenge_a, &a);
    assert_verification_refused(t, &station, &b, &me, "a's signature on b", |_| {
        for_a.to_vec()
    })
    .await;
    on_a.send(Code::SubmitVerification, for_a.to_vec())
        .await
        .unwrap();
    // The signature still verifies where it belongs.
    let mut witness = join(addr, t, &a, &me).await;
    sync_fresh(&mut witness, &mut on_a).await;
    assert_identity_works(t, &station, &b, &me).await;
}

/// Answers `require-config` on a fresh identifier with `make(challenge, proposed)` and expects
/// `Auth`; the identifier must remain unconfigured.
async fn assert_config_refused(
    t: Transport,
    station: &Station,
    what: &str,
    make: impl Fn(&Challenge, &ResourceId) -> Vec<u8>,
) {
    let proposed = random_id();
    let mut conn = Conn::connect(t, station.addr(), &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    let _ = conn
        .send(Code::SubmitConfig, make(&challenge, &proposed))
        .await;
    assert_eq!(conn.expect_closed().await, CloseKind::Auth, "{what}");
    let mut again = Conn::connect(t, station.addr(), &proposed).await;
    again.expect_challenge(Code::RequireConfig).await;
}

async fn s4_config_proof_is_bound_to_proposed_identifier(t: Transport) {
    let station = Station::start().await;
    let me = Identity::ed25519();
    let other_id = random_id();
    assert_config_refused(t, &station, "proof for another identifier", |c, _| {
        config_payload_text(&me.jwk(), &me.sign(&config_message(c, &other_id))).into_bytes()
    })
    .await;
    assert_config_refused(
        t,
        &station,
        "proof over the verification context",
        |c, p| config_payload_text(&me.jwk(), &me.sign(&verify_message(c, p))).into_bytes(),
    )
    .await;
    assert_config_refused(t, &station, "proof over another challenge", |c, p| {
        let mut wrong = *c;
        wrong[31] ^= 0x80;
        me.config_payload(&wrong, p)
    })
    .await;
    assert_config_refused(t, &station, "proof by another key", |c, p| {
        config_payload_text(&me.jwk(), &Identity::ed25519().sign(&config_message(c, p)))
            .into_bytes()
    })
    .await;
}

/// A proof made for the real challenge, so only the named defect can be the reason.
fn proof(me: &Identity, c: &Challenge, p: &ResourceId) -> String {
    encode_b64url(&me.sign(&config_message(c, p)))
}

async fn s5_malformed_json_is_refused(t: Transport) {
    let station = Station::start().await;
    let me = Identity::ed25519();
    assert_config_refused(t, &station, "truncated JSON", |c, p| {
        let text = String::from_utf8(me.config_payload(c, p)).unwrap();
        text.as_bytes()[..text.len() - 1].to_vec()
    })
    .await;
    assert_config_refused(t, &station, "an array", |_, _| b"[1,2]".to_vec()).await;
    assert_config_refused(t, &station, "null", |_, _| b"null".to_vec()).await;
    assert_config_refused(t, &station, "not UTF-8", |c, p| {
        let mut bytes = me.config_payload(c, p);
        bytes.insert(1, 0xff);
        bytes
    })
    .await;
    assert_config_refused(t, &station, "jwk is a string", |c, p| {
        format!(
            r#"{{"jwk":{:?},"proof":"{}"}}"#,
            me.jwk_json(),
            proof(&me, c, p)
        )
        .into_bytes()
    })
    .await;
    assert_config_refused(t, &station, "deep nesting", |_, _| {
        format!("{}{}", "[".repeat(3000), "]".repeat(3000)).into_bytes()
    })
    .await;
}

async fn s5_unknown_and_duplicate_members_are_refused(t: Transport) {
    let station = Station::start().await;
    let me = Identity::ed25519();
    assert_config_refused(t, &station, "unknown member", |c, p| {
        format!(
            r#"{{"jwk":{},"proof":"{}","note":"hi"}}"#,
            me.jwk_json(),
            proof(&me, c, p)
        )
        .into_bytes()
    })
    .await;
    assert_config_refused(t, &station, "duplicate proof member", |c, p| {
        let proof = proof(&me, c, p);
        format!(
            r#"{{"jwk":{},"proof":"{proof}","proof":"{proof}"}}"#,
            me.jwk_json()
        )
        .into_bytes()
    })
    .await;
    assert_config_refused(t, &station, "duplicate jwk member", |c, p| {
        let jwk = me.jwk_json();
        format!(
            r#"{{"jwk":{jwk},"jwk":{jwk},"proof":"{}"}}"#,
            proof(&me, c, p)
        )
        .into_bytes()
    })
    .await;
    assert_config_refused(t, &station, "missing proof", |_, _| {
        format!(r#"{{"jwk":{}}}"#, me.jwk_json()).into_bytes()
    })
    .await;
    assert_config_refused(t, &station, "missing jwk", |c, p| {
        format!(r#"{{"proof":"{}"}}"#, proof(&me, c, p)).into_bytes()
    })
    .await;
}

async fn s5_jwk_with_d_is_refused(t: Transport) {
    let station = Station::start().await;
    for me in [Identity::ed25519(), Identity::p256()] {
        assert_config_refused(t, &station, "JWK with d", |c, p| {
            let mut jwk = me.jwk();
            jwk["d"] = encode_b64url(&[7; 32]).into();
            config_payload_text(&jwk, &me.sign(&config_message(c, p))).into_bytes()
        })
        .await;
    }
}

/// One defect applied to a valid JWK.
type JwkEdit = fn(&mut serde_json::Value);

async fn s5_malformed_or_unsupported_jwk_is_refused(t: Transport) {
    let station = Station::start().await;
    let me = Identity::p256();
    let with = |edit: fn(&mut serde_json::Value)| {
        let me = me.clone();
        move |c: &Challenge, p: &ResourceId| {
            let mut jwk = me.jwk();
            edit(&mut jwk);
            config_payload_text(&jwk, &me.sign(&config_message(c, p))).into_bytes()
        }
    };
    let cases: [(&str, JwkEdit); 8] = [
        ("unknown JWK member", |j| j["color"] = "blue".into()),
        ("unsupported curve", |j| j["crv"] = "P-384".into()),
        ("unsupported key type", |j| j["kty"] = "RSA".into()),
        ("missing y", |j| {
            j.as_object_mut().unwrap().remove("y");
        }),
        ("short x", |j| j["x"] = "AAAA".into()),
        ("padded x", |j| {
            let x = format!("{}=", j["x"].as_str().unwrap());
            j["x"] = x.into();
        }),
        ("point off the curve", |j| {
            j["y"] = encode_b64url(&[1; 32]).into();
        }),
        ("signing-only key_ops", |j| {
            j["key_ops"] = serde_json::json!(["sign"])
        }),
    ];
    for (what, edit) in cases {
        assert_config_refused(t, &station, what, with(edit)).await;
    }
    // A small-order Ed25519 key would let anyone verify by luck.
    assert_config_refused(t, &station, "weak Ed25519 key", |c, p| {
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(&{
            let mut x = [0u8; 32];
            x[0] = 1;
            x
        })});
        config_payload_text(&jwk, &Identity::ed25519().sign(&config_message(c, p))).into_bytes()
    })
    .await;
}

async fn s5_bad_proof_is_refused(t: Transport) {
    let station = Station::start().await;
    let me = Identity::ed25519();
    let with_proof = |text: String| {
        let me = me.clone();
        move |_: &Challenge, _: &ResourceId| {
            format!(r#"{{"jwk":{},"proof":"{text}"}}"#, me.jwk_json()).into_bytes()
        }
    };
    for (what, text) in [
        ("empty proof", String::new()),
        ("not base64url", "not base64!".to_owned()),
        ("padded", format!("{}==", "A".repeat(86))),
        ("63 bytes", encode_b64url(&[1; 63])),
        ("65 bytes", encode_b64url(&[1; 65])),
        ("zero signature", encode_b64url(&[0; 64])),
    ] {
        assert_config_refused(t, &station, what, with_proof(text)).await;
    }
}

/// A valid configuration payload padded with trailing JSON whitespace to `len` bytes.
fn padded_config(me: &Identity, c: &Challenge, p: &ResourceId, len: usize) -> Vec<u8> {
    let mut bytes = me.config_payload(c, p);
    assert!(bytes.len() <= len);
    bytes.resize(len, b' ');
    bytes
}

async fn s5_payload_over_8_kib_is_refused(t: Transport) {
    let station = Station::start().await;
    let me = Identity::p256();
    assert_config_refused(t, &station, "8193 bytes", |c, p| {
        padded_config(&me, c, p, 8 * 1024 + 1)
    })
    .await;
    assert_config_refused(t, &station, "64 KiB", |c, p| {
        padded_config(&me, c, p, 64 * 1024)
    })
    .await;
}

async fn s5_payload_of_exactly_8_kib_is_accepted(t: Transport) {
    let station = Station::start().await;
    let me = Identity::p256();
    let proposed = random_id();
    let mut conn = Conn::connect(t, station.addr(), &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    conn.send(
        Code::SubmitConfig,
        padded_config(&me, &challenge, &proposed, 8 * 1024),
    )
    .await
    .unwrap();
    assert_eq!(finish_configure(&mut conn).await, proposed);
    assert_identity_works(t, &station, &proposed, &me).await;
}

async fn s5_free_identifier_is_kept(t: Transport) {
    let station = Station::start().await;
    let me = Identity::ed25519();
    let proposed = random_id();
    let mut conn = Conn::connect(t, station.addr(), &proposed).await;
    assert_eq!(configure(&mut conn, &proposed, &me).await, proposed);
}

async fn s5_taken_identifier_gets_a_new_identifier(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let proposed = random_id();
    let (first_key, second_key) = (Identity::ed25519(), Identity::p256());
    // Both see an unknown resource; the first configures it, then the second tries.
    let mut first = Conn::connect(t, addr, &proposed).await;
    let mut second = Conn::connect(t.other(), addr, &proposed).await;
    let first_challenge = first.expect_challenge(Code::RequireConfig).await;
    let second_challenge = second.expect_challenge(Code::RequireConfig).await;
    first
        .send(
            Code::SubmitConfig,
            first_key.config_payload(&first_challenge, &proposed),
        )
        .await
        .unwrap();
    assert_eq!(finish_configure(&mut first).await, proposed);
    second
        .send(
            Code::SubmitConfig,
            second_key.config_payload(&second_challenge, &proposed),
        )
        .await
        .unwrap();
    let assigned = finish_configure(&mut second).await;
    assert_ne!(
        assigned, proposed,
        "a taken identifier was handed out twice"
    );
    // Each key opens its own resource and only that one.
    assert_identity_works(t, &station, &proposed, &first_key).await;
    assert_identity_works(t, &station, &assigned, &second_key).await;
    assert_verification_refused(
        t,
        &station,
        &proposed,
        &second_key,
        "second key on first",
        |c| second_key.verify_payload(c, &proposed).to_vec(),
    )
    .await;
    assert_verification_refused(
        t,
        &station,
        &assigned,
        &first_key,
        "first key on second",
        |c| first_key.verify_payload(c, &assigned).to_vec(),
    )
    .await;
}

async fn s5_racing_creators_get_different_identifiers(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    for round in 0..5 {
        let proposed = random_id();
        let keys = [Identity::ed25519(), Identity::ed25519()];
        let mut conns = [
            Conn::connect(t, addr, &proposed).await,
            Conn::connect(t, addr, &proposed).await,
        ];
        let mut payloads = Vec::new();
        for (conn, key) in conns.iter_mut().zip(&keys) {
            let challenge = conn.expect_challenge(Code::RequireConfig).await;
            payloads.push(key.config_payload(&challenge, &proposed));
        }
        let [a, b] = &mut conns;
        let (ra, rb) = tokio::join!(
            async {
                a.send(Code::SubmitConfig, payloads[0].clone())
                    .await
                    .unwrap();
                finish_configure(a).await
            },
            async {
                b.send(Code::SubmitConfig, payloads[1].clone())
                    .await
                    .unwrap();
                finish_configure(b).await
            }
        );
        assert_ne!(ra, rb, "round {round}: two creators got one identifier");
        assert!(
            ra == proposed || rb == proposed,
            "round {round}: the proposed identifier was free; one creator must get it"
        );
        assert_identity_works(t, &station, &ra, &keys[0]).await;
        assert_identity_works(t, &station, &rb, &keys[1]).await;
    }
}

async fn s5_key_is_durable_before_offer_config(t: Transport) {
    let mut station = Station::start().await;
    let me = Identity::ed25519();
    let proposed = random_id();
    let mut conn = Conn::connect(t, station.addr(), &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    conn.send(Code::SubmitConfig, me.config_payload(&challenge, &proposed))
        .await
        .unwrap();
    conn.expect_payload(Code::OfferConfig, proposed.as_bytes())
        .await;
    // The offer was seen: the key must survive a SIGKILL right now.
    station.kill().await;
    station.restart().await;
    let mut conn = Conn::connect(t, station.addr(), &proposed).await;
    verify(&mut conn, &proposed, &me).await;
    let mut other = join(station.addr(), t, &proposed, &me).await;
    sync_fresh(&mut other, &mut conn).await;
}
