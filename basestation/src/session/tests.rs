//! Each test names the WIRE.md rule it checks.
#![allow(clippy::unwrap_used)]

use super::*;
use ed25519_dalek::Signer as _;
use rand::rngs::OsRng;
use zbase_proto::wire::{Frame, encode_b64url};

const TIMEOUT: Duration = Duration::from_secs(10);

fn id() -> ResourceId {
    ResourceId::from_bytes([1; 32])
}

fn signer() -> (ed25519_dalek::SigningKey, Arc<VerificationKey>) {
    let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let key = Arc::new(VerificationKey::Ed25519(sk.verifying_key()));
    (sk, key)
}

fn frame(code: Code, payload: &[u8]) -> Result<Frame, FrameError> {
    Frame::new(code, payload.to_vec())
}

/// A valid `submit-config` payload for `sk`'s Ed25519 key (shared with the relay tests).
pub(crate) fn config_payload(
    sk: &ed25519_dalek::SigningKey,
    challenge: &Challenge,
    id: &ResourceId,
) -> Vec<u8> {
    let proof = sk.sign(&config_message(challenge, id)).to_bytes();
    format!(
        r#"{{"jwk":{{"kty":"OKP","crv":"Ed25519","x":"{}"}},"proof":"{}"}}"#,
        encode_b64url(sk.verifying_key().as_bytes()),
        encode_b64url(&proof)
    )
    .into_bytes()
}

fn verified(sk: &ed25519_dalek::SigningKey, key: &Arc<VerificationKey>) -> Session {
    let mut session = Session::new(id());
    let now = Instant::now();
    session.start(Some(key.clone()), [7; 32], now, TIMEOUT);
    let sig = sk.sign(&verify_message(&[7; 32], &id())).to_bytes();
    assert!(matches!(
        session.frame(frame(Code::SubmitVerification, &sig)),
        Action::Join(_)
    ));
    session
}

#[test]
fn s3_existing_resource_requires_verification_with_the_challenge() {
    let (_, key) = signer();
    let mut session = Session::new(id());
    let action = session.start(Some(key), [9; 32], Instant::now(), TIMEOUT);
    assert_eq!(
        action,
        Action::Send(Frame::new(Code::RequireVerification, vec![9; 32]).unwrap())
    );
}

#[test]
fn s3_unknown_resource_requires_config() {
    let mut session = Session::new(id());
    let action = session.start(None, [9; 32], Instant::now(), TIMEOUT);
    assert_eq!(
        action,
        Action::Send(Frame::new(Code::RequireConfig, vec![9; 32]).unwrap())
    );
}

#[test]
fn s3_early_frame_terminates() {
    let mut session = Session::new(id());
    let action = session.frame(frame(Code::SubmitVerification, &[0; 64]));
    assert!(matches!(action, Action::Close(CloseReason::Protocol(_))));
}

#[test]
fn s3_answer_must_match_what_was_required() {
    let (_, key) = signer();
    let mut session = Session::new(id());
    session.start(Some(key), [1; 32], Instant::now(), TIMEOUT);
    let action = session.frame(frame(Code::SubmitConfig, b"{}"));
    assert!(matches!(action, Action::Close(CloseReason::Protocol(_))));

    let mut session = Session::new(id());
    session.start(None, [1; 32], Instant::now(), TIMEOUT);
    let action = session.frame(frame(Code::SubmitVerification, &[0; 64]));
    assert!(matches!(action, Action::Close(CloseReason::Protocol(_))));
}

#[test]
fn s3_handshake_frames_other_than_answers_terminate() {
    for code in [Code::SubmitDelta, Code::SubmitSnapshot, Code::SubmitRequest] {
        let mut session = Session::new(id());
        session.start(None, [1; 32], Instant::now(), TIMEOUT);
        assert!(matches!(
            session.frame(frame(code, b"x")),
            Action::Close(CloseReason::Protocol(_))
        ));
    }
}

#[test]
fn s3_handshake_timeout_closes_like_failed_verification() {
    let mut session = Session::new(id());
    let t0 = Instant::now();
    session.start(None, [1; 32], t0, TIMEOUT);
    assert_eq!(session.deadline(), Some(t0 + TIMEOUT));
    assert_eq!(session.tick(t0 + Duration::from_secs(9)), None);
    assert_eq!(
        session.tick(t0 + TIMEOUT),
        Some(Action::Close(CloseReason::HandshakeTimeout))
    );
    assert!(CloseReason::HandshakeTimeout.is_failed_handshake());
}

#[test]
fn s4_valid_verification_joins_and_bad_signature_fails() {
    let (sk, key) = signer();
    let session = verified(&sk, &key);
    assert!(session.is_verified());
    assert_eq!(session.deadline(), None, "no timeout once verified");

    let mut session = Session::new(id());
    session.start(Some(key), [7; 32], Instant::now(), TIMEOUT);
    let other = sk.sign(&verify_message(&[8; 32], &id())).to_bytes();
    assert_eq!(
        session.frame(frame(Code::SubmitVerification, &other)),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn s4_signature_is_bound_to_the_identifier() {
    let (sk, key) = signer();
    let mut session = Session::new(id());
    session.start(Some(key), [7; 32], Instant::now(), TIMEOUT);
    let elsewhere = ResourceId::from_bytes([2; 32]);
    let sig = sk.sign(&verify_message(&[7; 32], &elsewhere)).to_bytes();
    assert_eq!(
        session.frame(frame(Code::SubmitVerification, &sig)),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn s4_config_context_does_not_verify() {
    let (sk, key) = signer();
    let mut session = Session::new(id());
    session.start(Some(key), [7; 32], Instant::now(), TIMEOUT);
    let sig = sk.sign(&config_message(&[7; 32], &id())).to_bytes();
    assert_eq!(
        session.frame(frame(Code::SubmitVerification, &sig)),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn s5_valid_configuration_claims_then_offers_and_closes_normally() {
    let (sk, _) = signer();
    let mut session = Session::new(id());
    session.start(None, [4; 32], Instant::now(), TIMEOUT);
    let action = session.frame(frame(
        Code::SubmitConfig,
        &config_payload(&sk, &[4; 32], &id()),
    ));
    assert_eq!(
        action,
        Action::Configure(VerificationKey::Ed25519(sk.verifying_key()))
    );
    let assigned = ResourceId::from_bytes([3; 32]);
    let [offer, close] = session.configured(assigned);
    assert_eq!(
        offer,
        Action::Send(Frame::new(Code::OfferConfig, assigned.as_bytes().to_vec()).unwrap())
    );
    assert_eq!(close, Action::Close(CloseReason::Normal));
}

#[test]
fn s5_configuration_proof_is_bound_to_challenge_and_proposed_id() {
    let (sk, _) = signer();
    for (challenge, proposed) in [([5; 32], id()), ([4; 32], ResourceId::from_bytes([2; 32]))] {
        let mut session = Session::new(id());
        session.start(None, [4; 32], Instant::now(), TIMEOUT);
        let payload = config_payload(&sk, &challenge, &proposed);
        assert_eq!(
            session.frame(frame(Code::SubmitConfig, &payload)),
            Action::Close(CloseReason::ConfigurationFailed)
        );
    }
}

#[test]
fn s5_malformed_configuration_fails_configuration() {
    for payload in [&b"{"[..], b"null", br#"{"jwk":{},"proof":""}"#] {
        let mut session = Session::new(id());
        session.start(None, [4; 32], Instant::now(), TIMEOUT);
        assert_eq!(
            session.frame(frame(Code::SubmitConfig, payload)),
            Action::Close(CloseReason::ConfigurationFailed)
        );
    }
}

#[test]
fn s5_verified_session_accepts_snapshots_deltas_requests_in_any_order() {
    let (sk, key) = signer();
    let mut session = verified(&sk, &key);
    assert_eq!(
        session.frame(frame(Code::SubmitDelta, b"d")),
        Action::Delta(Bytes::from_static(b"d"))
    );
    assert_eq!(
        session.frame(frame(Code::SubmitSnapshot, b"s")),
        Action::Snapshot(Bytes::from_static(b"s"))
    );
    assert_eq!(
        session.frame(frame(Code::SubmitRequest, b"r")),
        Action::Request(Bytes::from_static(b"r"))
    );
    assert_eq!(
        session.frame(frame(Code::SubmitDelta, b"e")),
        Action::Delta(Bytes::from_static(b"e"))
    );
}

#[test]
fn s3_any_other_frame_in_a_verified_session_terminates() {
    let (sk, key) = signer();
    for code in [Code::SubmitVerification, Code::SubmitConfig] {
        let mut session = verified(&sk, &key);
        assert!(matches!(
            session.frame(frame(code, &[0; 64])),
            Action::Close(CloseReason::Protocol(_))
        ));
    }
    for code in [Code::OfferSnapshot, Code::ForwardDelta, Code::RequireConfig] {
        let mut session = verified(&sk, &key);
        assert!(matches!(
            session.frame(frame(code, b"x")),
            Action::Close(CloseReason::Protocol(_))
        ));
    }
}

#[test]
fn s2_malformed_frames_map_to_their_close_reasons() {
    let cases = [
        (FrameError::Short { len: 2 }, "protocol_violation"),
        (FrameError::Version { found: 2 }, "protocol_violation"),
        (FrameError::Unassigned { found: 0x56 }, "protocol_violation"),
        (FrameError::Oversize { len: 9, max: 8 }, "frame_too_large"),
    ];
    let (sk, key) = signer();
    for (error, label) in cases {
        let mut session = verified(&sk, &key);
        match session.frame(Err(error)) {
            Action::Close(reason) => assert_eq!(reason.label(), label),
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

#[test]
fn s7_text_message_is_a_protocol_violation() {
    let mut session = Session::new(id());
    assert!(matches!(
        session.not_a_frame(),
        Action::Close(CloseReason::Protocol(_))
    ));
}

#[test]
fn closed_session_accepts_nothing() {
    let (sk, key) = signer();
    let mut session = verified(&sk, &key);
    session.close(CloseReason::QueueOverflow);
    assert!(matches!(
        session.frame(frame(Code::SubmitDelta, b"d")),
        Action::Close(_)
    ));
}

/// A `rotate-key` payload rotating from `old` to `new` over `challenge`, with each signature
/// made by whoever the caller names.
fn rotate_payload(
    proof_by: &ed25519_dalek::SigningKey,
    auth_by: &ed25519_dalek::SigningKey,
    new: &ed25519_dalek::SigningKey,
    challenge: &Challenge,
) -> Vec<u8> {
    let new_key = VerificationKey::Ed25519(new.verifying_key());
    let proof = proof_by
        .sign(&rotate_proof_message(challenge, &id()))
        .to_bytes();
    let auth = auth_by
        .sign(&rotate_message(challenge, &id(), &new_key.thumbprint()))
        .to_bytes();
    serde_json::json!({
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(new.verifying_key().as_bytes())},
        "proof": encode_b64url(&proof),
        "authorization": encode_b64url(&auth),
    })
    .to_string()
    .into_bytes()
}

/// The verification challenge of [`verified`], which is the first rotation challenge.
const FIRST: Challenge = [7; 32];

#[test]
fn r1_rotation_signed_by_both_keys_over_the_verification_challenge_is_asked_of_the_driver() {
    let (old, old_key) = signer();
    let (new, new_key) = signer();
    let mut session = verified(&old, &old_key);
    let action = session.frame(frame(
        Code::RotateKey,
        &rotate_payload(&new, &old, &new, &FIRST),
    ));
    assert_eq!(
        action,
        Action::Rotate {
            current: old_key,
            new: new_key
        }
    );
    assert!(session.is_verified());
    // Frames sent after rotate-key are still served (the driver orders them after it).
    assert_eq!(
        session.frame(frame(Code::SubmitSnapshot, b"s")),
        Action::Snapshot(Bytes::from_static(b"s"))
    );
    assert_eq!(
        session.rotated([11; 32]),
        Action::Send(Frame::new(Code::KeyRotated, vec![11; 32]).unwrap())
    );
    assert!(session.is_verified());
}

#[test]
fn r1_next_rotation_signs_the_key_rotated_challenge_with_the_new_key() {
    let (old, old_key) = signer();
    let (new, new_key) = signer();
    let (third, third_key) = signer();
    let mut session = verified(&old, &old_key);
    session.frame(frame(
        Code::RotateKey,
        &rotate_payload(&new, &old, &new, &FIRST),
    ));
    session.rotated([11; 32]);
    // The old key no longer authorises anything on this session.
    let mut stale = verified(&old, &old_key);
    stale.frame(frame(
        Code::RotateKey,
        &rotate_payload(&new, &old, &new, &FIRST),
    ));
    stale.rotated([11; 32]);
    assert_eq!(
        stale.frame(frame(
            Code::RotateKey,
            &rotate_payload(&third, &old, &third, &[11; 32]),
        )),
        Action::Close(CloseReason::VerificationFailed)
    );
    // The first challenge is spent.
    let mut spent = verified(&old, &old_key);
    spent.frame(frame(
        Code::RotateKey,
        &rotate_payload(&new, &old, &new, &FIRST),
    ));
    spent.rotated([11; 32]);
    assert_eq!(
        spent.frame(frame(
            Code::RotateKey,
            &rotate_payload(&third, &new, &third, &FIRST),
        )),
        Action::Close(CloseReason::VerificationFailed)
    );
    // The new key over the new challenge works.
    assert_eq!(
        session.frame(frame(
            Code::RotateKey,
            &rotate_payload(&third, &new, &third, &[11; 32]),
        )),
        Action::Rotate {
            current: new_key,
            new: third_key
        }
    );
}

#[test]
fn r1_replayed_rotate_frame_fails_verification() {
    let (old, old_key) = signer();
    let (new, _) = signer();
    let mut session = verified(&old, &old_key);
    let payload = rotate_payload(&new, &old, &new, &FIRST);
    assert!(matches!(
        session.frame(frame(Code::RotateKey, &payload)),
        Action::Rotate { .. }
    ));
    session.rotated([11; 32]);
    assert_eq!(
        session.frame(frame(Code::RotateKey, &payload)),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn r1_second_rotation_before_the_first_is_confirmed_fails() {
    let (old, old_key) = signer();
    let (new, _) = signer();
    let mut session = verified(&old, &old_key);
    let payload = rotate_payload(&new, &old, &new, &FIRST);
    session.frame(frame(Code::RotateKey, &payload));
    assert_eq!(
        session.frame(frame(Code::RotateKey, &payload)),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn r1_bad_signatures_fail_verification() {
    let (old, old_key) = signer();
    let (new, _) = signer();
    let (stranger, _) = signer();
    let cases = [
        // Authorization by a key other than the current one.
        rotate_payload(&new, &stranger, &new, &FIRST),
        // Authorization by the new key itself.
        rotate_payload(&new, &new, &new, &FIRST),
        // Proof by a key other than the new one.
        rotate_payload(&stranger, &old, &new, &FIRST),
        // Proof by the current key.
        rotate_payload(&old, &old, &new, &FIRST),
        // Both over another challenge.
        rotate_payload(&new, &old, &new, &[8; 32]),
    ];
    for payload in cases {
        let mut session = verified(&old, &old_key);
        assert_eq!(
            session.frame(frame(Code::RotateKey, &payload)),
            Action::Close(CloseReason::VerificationFailed)
        );
    }
    // The authorization binds the new key's thumbprint: swapping in another key fails even
    // when its own proof is good.
    let mut session = verified(&old, &old_key);
    let genuine: serde_json::Value =
        serde_json::from_slice(&rotate_payload(&new, &old, &new, &FIRST)).unwrap();
    let swapped: serde_json::Value =
        serde_json::from_slice(&rotate_payload(&stranger, &old, &stranger, &[0; 32])).unwrap();
    let mut forged = swapped.clone();
    forged["authorization"] = genuine["authorization"].clone();
    let proof = stranger
        .sign(&rotate_proof_message(&FIRST, &id()))
        .to_bytes();
    forged["proof"] = encode_b64url(&proof).into();
    assert_eq!(
        session.frame(frame(Code::RotateKey, forged.to_string().as_bytes())),
        Action::Close(CloseReason::VerificationFailed)
    );
    // Bound to the identifier.
    let mut session = verified(&old, &old_key);
    let elsewhere = ResourceId::from_bytes([2; 32]);
    let proof = new
        .sign(&rotate_proof_message(&FIRST, &elsewhere))
        .to_bytes();
    let mut moved = genuine;
    moved["proof"] = encode_b64url(&proof).into();
    assert_eq!(
        session.frame(frame(Code::RotateKey, moved.to_string().as_bytes())),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn r1_new_key_equal_to_current_fails_verification() {
    let (old, old_key) = signer();
    let mut session = verified(&old, &old_key);
    assert_eq!(
        session.frame(frame(
            Code::RotateKey,
            &rotate_payload(&old, &old, &old, &FIRST),
        )),
        Action::Close(CloseReason::VerificationFailed)
    );
}

#[test]
fn r1_malformed_payloads_fail_verification() {
    let (old, old_key) = signer();
    let (new, _) = signer();
    let good: serde_json::Value =
        serde_json::from_slice(&rotate_payload(&new, &old, &new, &FIRST)).unwrap();
    let mut unknown = good.clone();
    unknown["extra"] = 1.into();
    let mut private = good.clone();
    private["jwk"]["d"] = "AAAA".into();
    let mut short = good.clone();
    short["proof"] = encode_b64url(&[0; 63]).into();
    let mut padded = good;
    padded["authorization"] = format!("{}==", padded["authorization"].as_str().unwrap()).into();
    let cases = [
        b"{".to_vec(),
        b"null".to_vec(),
        vec![b' '; 8 * 1024 + 1],
        unknown.to_string().into_bytes(),
        private.to_string().into_bytes(),
        short.to_string().into_bytes(),
        padded.to_string().into_bytes(),
    ];
    for payload in cases {
        let mut session = verified(&old, &old_key);
        assert_eq!(
            session.frame(frame(Code::RotateKey, &payload)),
            Action::Close(CloseReason::VerificationFailed)
        );
    }
}

#[test]
fn r1_rotate_key_outside_a_verified_session_is_a_protocol_violation() {
    let (old, old_key) = signer();
    let (new, _) = signer();
    let payload = rotate_payload(&new, &old, &new, &FIRST);
    // In place of submit-verification.
    let mut session = Session::new(id());
    session.start(Some(old_key), FIRST, Instant::now(), TIMEOUT);
    assert!(matches!(
        session.frame(frame(Code::RotateKey, &payload)),
        Action::Close(CloseReason::Protocol(_))
    ));
    // In place of submit-config, and before any challenge.
    let mut session = Session::new(id());
    session.start(None, FIRST, Instant::now(), TIMEOUT);
    assert!(matches!(
        session.frame(frame(Code::RotateKey, &payload)),
        Action::Close(CloseReason::Protocol(_))
    ));
    let mut session = Session::new(id());
    assert!(matches!(
        session.frame(frame(Code::RotateKey, &payload)),
        Action::Close(CloseReason::Protocol(_))
    ));
    // A station code is never accepted from a client.
    let mut session = verified(
        &old,
        &Arc::new(VerificationKey::Ed25519(old.verifying_key())),
    );
    assert!(matches!(
        session.frame(frame(Code::KeyRotated, &[1; 32])),
        Action::Close(CloseReason::Protocol(_))
    ));
}

#[test]
fn r1_rotated_without_a_rotation_is_an_internal_error() {
    let (old, old_key) = signer();
    let mut session = verified(&old, &old_key);
    assert!(matches!(
        session.rotated([1; 32]),
        Action::Close(CloseReason::Internal(_))
    ));
    let mut session = Session::new(id());
    assert!(matches!(
        session.rotated([1; 32]),
        Action::Close(CloseReason::Internal(_))
    ));
}
