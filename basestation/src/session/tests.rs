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
