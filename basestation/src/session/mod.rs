//! The WCP state machine for one connection: `(state, input, now) -> actions`, with no I/O.
//!
//! It never awaits, spawns, reads the clock or draws random bytes: its driver hands in the
//! time, the challenge and the resource's key, and carries out what it returns. Each rule of
//! WIRE.md sections 3 to 5 is therefore a deterministic test here, and every transport gets the
//! same behaviour because every transport runs this.

mod close;

pub use close::CloseReason;

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zbase_proto::wire::{
    Challenge, Code, ConfigPayload, Frame, FrameError, ResourceId, RotatePayload, VerificationKey,
    config_message, rotate_message, rotate_proof_message, verify_message,
};

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this frame to the client.
    Send(Frame),
    /// The client proved its key: add it to the resource's verified peers.
    Join(Arc<VerificationKey>),
    /// The client proved a new key: claim the identifier, then call [`Session::configured`].
    Configure(VerificationKey),
    /// Persist this snapshot, then offer it.
    Snapshot(Bytes),
    /// Relay this delta to the other peers.
    Delta(Bytes),
    /// Answer this request and relay it to the other peers.
    Request(Bytes),
    /// The client proved it holds `current` and `new` and asked to replace the one with the
    /// other (extension R1): replace the stored key if it is still `current`, close every
    /// other session of the resource, then call [`Session::rotated`] with a fresh challenge.
    Rotate {
        /// The key this session verified with (or last rotated to).
        current: Arc<VerificationKey>,
        /// The key that replaces it.
        new: Arc<VerificationKey>,
    },
    /// End the connection for this reason.
    Close(CloseReason),
}

#[derive(Debug)]
enum State {
    /// Connected; the `require-*` frame is not sent yet, so any client frame is early.
    Opened,
    /// `require-verification` sent.
    AwaitVerification {
        challenge: Challenge,
        key: Arc<VerificationKey>,
        deadline: Instant,
    },
    /// `require-config` sent.
    AwaitConfig {
        challenge: Challenge,
        deadline: Instant,
    },
    /// A configuration proof was accepted; the identifier is being claimed.
    Configuring,
    /// A member of the verified peer set.
    Verified(Verified),
    /// Terminated; nothing more is accepted.
    Closed,
}

/// What a verified session knows for rotating its resource's key (extension R1).
#[derive(Debug)]
struct Verified {
    /// The key the session proved: at verification, then each key it rotated to.
    key: Arc<VerificationKey>,
    /// The challenge the next `rotate-key` must sign; `None` once used and until the driver
    /// hands in the next one, so a replayed or overlapping rotation fails.
    rotation: Option<Challenge>,
    /// The key a rotation under way will make current once the driver confirms it.
    rotating: Option<Arc<VerificationKey>>,
}

/// One connection's protocol state for one resource.
#[derive(Debug)]
pub struct Session {
    id: ResourceId,
    state: State,
}

impl Session {
    /// A connection that has just arrived for `id`.
    pub fn new(id: ResourceId) -> Session {
        Session {
            id,
            state: State::Opened,
        }
    }

    /// The identifier the connection is for.
    pub fn id(&self) -> &ResourceId {
        &self.id
    }

    /// True once the connection joined the verified peer set.
    pub fn is_verified(&self) -> bool {
        matches!(self.state, State::Verified(_))
    }

    /// True while the connection is in the handshake (counted against failed handshakes).
    pub fn in_handshake(&self) -> bool {
        matches!(
            self.state,
            State::Opened | State::AwaitVerification { .. } | State::AwaitConfig { .. }
        )
    }

    /// Starts the handshake: `require-verification` if the resource has a key, else
    /// `require-config`. `challenge` must be fresh random bytes, used for nothing else.
    pub fn start(
        &mut self,
        key: Option<Arc<VerificationKey>>,
        challenge: Challenge,
        now: Instant,
        timeout: Duration,
    ) -> Action {
        if !matches!(self.state, State::Opened) {
            return self.close(CloseReason::Internal("handshake started twice"));
        }
        let deadline = now + timeout;
        let code = match key {
            Some(key) => {
                self.state = State::AwaitVerification {
                    challenge,
                    key,
                    deadline,
                };
                Code::RequireVerification
            }
            None => {
                self.state = State::AwaitConfig {
                    challenge,
                    deadline,
                };
                Code::RequireConfig
            }
        };
        match Frame::new(code, challenge.to_vec()) {
            Ok(frame) => Action::Send(frame),
            Err(_) => self.close(CloseReason::Internal("challenge frame")),
        }
    }

    /// When the handshake times out, if it is under way.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitVerification { deadline, .. } | State::AwaitConfig { deadline, .. } => {
                Some(*deadline)
            }
            _ => None,
        }
    }

    /// The clock reached `now`: closes a handshake that ran past its deadline.
    pub fn tick(&mut self, now: Instant) -> Option<Action> {
        match self.deadline() {
            Some(deadline) if now >= deadline => Some(self.close(CloseReason::HandshakeTimeout)),
            _ => None,
        }
    }

    /// The transport delivered a message that is not a frame (a WebSocket text message).
    pub fn not_a_frame(&mut self) -> Action {
        self.close(NOT_A_FRAME)
    }

    /// The transport delivered a frame, or bytes that failed to parse as one.
    pub fn frame(&mut self, frame: Result<Frame, FrameError>) -> Action {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return self.close(rejection(&error)),
        };
        if !frame.code().is_client() {
            return self.close(CloseReason::Protocol("station code from client"));
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        match (state, frame.code()) {
            (State::Opened, _) => self.close(CloseReason::Protocol("frame before require")),
            (State::AwaitVerification { challenge, key, .. }, Code::SubmitVerification) => {
                let message = verify_message(&challenge, &self.id);
                match key.verify(&message, frame.payload()) {
                    Ok(()) => {
                        // The challenge the client has just answered becomes its first
                        // rotation challenge: a second signature over it, in another context.
                        self.state = State::Verified(Verified {
                            key: Arc::clone(&key),
                            rotation: Some(challenge),
                            rotating: None,
                        });
                        Action::Join(key)
                    }
                    Err(_) => self.close(CloseReason::VerificationFailed),
                }
            }
            (State::AwaitConfig { challenge, .. }, Code::SubmitConfig) => {
                let config = match ConfigPayload::parse(frame.payload()) {
                    Ok(config) => config,
                    Err(_) => return self.close(CloseReason::ConfigurationFailed),
                };
                let message = config_message(&challenge, &self.id);
                match config.key.verify(&message, &config.proof) {
                    Ok(()) => {
                        self.state = State::Configuring;
                        Action::Configure(config.key)
                    }
                    Err(_) => self.close(CloseReason::ConfigurationFailed),
                }
            }
            (State::AwaitVerification { .. } | State::AwaitConfig { .. }, _) => {
                self.close(CloseReason::Protocol("unexpected handshake frame"))
            }
            (State::Configuring, _) => {
                self.close(CloseReason::Protocol("frame after configuration"))
            }
            (State::Verified(verified), Code::RotateKey) => self.rotate(verified, frame.payload()),
            (State::Verified(verified), code) => {
                self.state = State::Verified(verified);
                let payload = frame.into_payload();
                match code {
                    Code::SubmitSnapshot => Action::Snapshot(payload),
                    Code::SubmitDelta => Action::Delta(payload),
                    Code::SubmitRequest => Action::Request(payload),
                    _ => self.close(CloseReason::Protocol("handshake frame after verification")),
                }
            }
            (State::Closed, _) => Action::Close(CloseReason::Protocol("frame after close")),
        }
    }

    /// Checks a `rotate-key` payload against this session's rotation challenge and key
    /// (docs/KEY-ROTATION.md, "What the station does", step 1).
    fn rotate(&mut self, mut verified: Verified, payload: &[u8]) -> Action {
        // The challenge is spent whatever the outcome: a failure closes the session anyway,
        // and a success gets a fresh one only from the driver.
        let (Some(challenge), None) = (verified.rotation.take(), &verified.rotating) else {
            return self.close(CloseReason::VerificationFailed);
        };
        let Ok(request) = RotatePayload::parse(payload) else {
            return self.close(CloseReason::VerificationFailed);
        };
        if request.key == *verified.key {
            return self.close(CloseReason::VerificationFailed);
        }
        let proof = rotate_proof_message(&challenge, &self.id);
        let authorization = rotate_message(&challenge, &self.id, &request.key.thumbprint());
        if request.key.verify(&proof, &request.proof).is_err()
            || verified
                .key
                .verify(&authorization, &request.authorization)
                .is_err()
        {
            return self.close(CloseReason::VerificationFailed);
        }
        let new = Arc::new(request.key);
        let current = Arc::clone(&verified.key);
        verified.rotating = Some(Arc::clone(&new));
        self.state = State::Verified(verified);
        Action::Rotate { current, new }
    }

    /// The rotation asked by [`Action::Rotate`] is durable and every other session closed:
    /// the session goes on under the new key, and `challenge` (fresh random bytes) is the one
    /// its next rotation must sign, sent in `key-rotated`.
    pub fn rotated(&mut self, challenge: Challenge) -> Action {
        let State::Verified(verified) = &mut self.state else {
            return self.close(CloseReason::Internal("rotated without a session"));
        };
        let Some(new) = verified.rotating.take() else {
            return self.close(CloseReason::Internal("rotated without a rotation"));
        };
        verified.key = new;
        verified.rotation = Some(challenge);
        match Frame::new(Code::KeyRotated, challenge.to_vec()) {
            Ok(frame) => Action::Send(frame),
            Err(_) => self.close(CloseReason::Internal("key-rotated frame")),
        }
    }

    /// The identifier was claimed for the configured key (possibly another one than proposed):
    /// offer it, then close normally so the client reconnects to it and verifies.
    pub fn configured(&mut self, id: ResourceId) -> [Action; 2] {
        self.state = State::Closed;
        match Frame::new(Code::OfferConfig, id.as_bytes().to_vec()) {
            Ok(frame) => [Action::Send(frame), Action::Close(CloseReason::Normal)],
            Err(_) => [
                Action::Close(CloseReason::Internal("offer-config frame")),
                Action::Close(CloseReason::Internal("offer-config frame")),
            ],
        }
    }

    /// Ends the session for a reason found outside it (overload, shutdown, store failure).
    pub fn close(&mut self, reason: CloseReason) -> Action {
        self.state = State::Closed;
        Action::Close(reason)
    }
}

/// Why a WebSocket text message ends a session, in any state.
pub const NOT_A_FRAME: CloseReason = CloseReason::Protocol("text message");

/// Why bytes that failed to parse as a frame end a session, in any state (WIRE.md section 3).
pub fn rejection(error: &FrameError) -> CloseReason {
    match error {
        FrameError::Oversize { .. } => CloseReason::FrameTooLarge,
        FrameError::Short { .. } => CloseReason::Protocol("short frame"),
        FrameError::Version { .. } => CloseReason::Protocol("wrong version"),
        FrameError::Unassigned { .. } => CloseReason::Protocol("unassigned code"),
    }
}

#[cfg(test)]
pub(crate) mod tests;
