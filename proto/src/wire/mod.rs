//! The WCP wire format, free of I/O and of the clock.
//!
//! Every function here is deterministic on its inputs; sockets, time and randomness belong to
//! the caller. This is what makes each rule of the contract a fast unit test on both sides.

mod config;
mod frame;
mod id;
mod keys;
mod rotate;

pub use config::{CONFIG_MAX_LEN, ConfigError, ConfigPayload};
pub use frame::{Code, Frame, FrameError, HEADER_LEN, MIN_FRAME_LEN, VERSION};
pub use id::{ID_LEN, IdError, ResourceId};
pub use keys::{
    KeyError, SIGNATURE_LEN, THUMBPRINT_LEN, VerificationKey, config_message, decode_b64url,
    encode_b64url, rotate_message, rotate_proof_message, verify_message,
};
pub use rotate::{ROTATE_MAX_LEN, RotateError, RotatePayload};

/// Length of the random challenge in `require-verification`, `require-config` and
/// `key-rotated`.
pub const CHALLENGE_LEN: usize = 32;

/// A challenge drawn by the station for one handshake.
pub type Challenge = [u8; CHALLENGE_LEN];
