//! Frames: `[VERSION][CODE][PAYLOAD 1..=N]`, and the code table of WIRE.md section 2.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// The only protocol version this contract defines.
pub const VERSION: u8 = 0x01;
/// Version byte plus code byte.
pub const HEADER_LEN: usize = 2;
/// A frame carries at least one payload byte.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + 1;

/// Every assigned frame code. Codes below 0x50 are the station's, the rest the clients'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// Station asks an existing resource's client to sign a challenge.
    RequireVerification = 0x00,
    /// Station asks a client of an unknown resource to configure it.
    RequireConfig = 0x01,
    /// Station tells a configuring client the authoritative identifier.
    OfferConfig = 0x02,
    /// Station offers the persisted snapshot.
    OfferSnapshot = 0x04,
    /// Station relays another peer's delta.
    ForwardDelta = 0x05,
    /// Station relays another peer's request.
    ForwardRequest = 0x06,
    /// Station sends a pending requester the snapshot persisted after its request.
    ForwardResponse = 0x07,
    /// Station confirms a key rotation with the session's next rotation challenge
    /// (extension R1, docs/KEY-ROTATION.md).
    KeyRotated = 0x08,
    /// Client answers `require-verification` with a signature.
    SubmitVerification = 0x50,
    /// Client answers `require-config` with a JWK and a proof.
    SubmitConfig = 0x51,
    /// Client replaces the persisted snapshot.
    SubmitSnapshot = 0x52,
    /// Client sends a delta for the other peers.
    SubmitDelta = 0x53,
    /// Client asks the other peers (and the station) for state.
    SubmitRequest = 0x54,
    /// Client replaces the resource's key with a new one (extension R1).
    RotateKey = 0x55,
}

impl Code {
    /// The code for a byte, or `None` when the byte is unassigned.
    pub fn from_byte(byte: u8) -> Option<Code> {
        Some(match byte {
            0x00 => Code::RequireVerification,
            0x01 => Code::RequireConfig,
            0x02 => Code::OfferConfig,
            0x04 => Code::OfferSnapshot,
            0x05 => Code::ForwardDelta,
            0x06 => Code::ForwardRequest,
            0x07 => Code::ForwardResponse,
            0x08 => Code::KeyRotated,
            0x50 => Code::SubmitVerification,
            0x51 => Code::SubmitConfig,
            0x52 => Code::SubmitSnapshot,
            0x53 => Code::SubmitDelta,
            0x54 => Code::SubmitRequest,
            0x55 => Code::RotateKey,
            _ => return None,
        })
    }

    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// True for codes only a client may send (0x50-0xFF).
    pub fn is_client(self) -> bool {
        self.byte() >= 0x50
    }

    /// The contract's name for the code, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Code::RequireVerification => "require-verification",
            Code::RequireConfig => "require-config",
            Code::OfferConfig => "offer-config",
            Code::OfferSnapshot => "offer-snapshot",
            Code::ForwardDelta => "forward-delta",
            Code::ForwardRequest => "forward-request",
            Code::ForwardResponse => "forward-response",
            Code::KeyRotated => "key-rotated",
            Code::SubmitVerification => "submit-verification",
            Code::SubmitConfig => "submit-config",
            Code::SubmitSnapshot => "submit-snapshot",
            Code::SubmitDelta => "submit-delta",
            Code::SubmitRequest => "submit-request",
            Code::RotateKey => "rotate-key",
        }
    }

    /// Every assigned code, in byte order.
    pub const ALL: [Code; 14] = [
        Code::RequireVerification,
        Code::RequireConfig,
        Code::OfferConfig,
        Code::OfferSnapshot,
        Code::ForwardDelta,
        Code::ForwardRequest,
        Code::ForwardResponse,
        Code::KeyRotated,
        Code::SubmitVerification,
        Code::SubmitConfig,
        Code::SubmitSnapshot,
        Code::SubmitDelta,
        Code::SubmitRequest,
        Code::RotateKey,
    ];
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), self.byte())
    }
}

/// Why bytes are not a frame. Each is a protocol violation except [`FrameError::Oversize`],
/// which the contract answers with its own close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than three bytes: no room for a payload.
    #[error("frame of {len} bytes is shorter than the minimum of 3 (version, code, payload)")]
    Short {
        /// Bytes received.
        len: usize,
    },
    /// Larger than the configured frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// Bytes received (or announced).
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A version other than 0x01.
    #[error("frame version {found} is not supported; this contract is version 1")]
    Version {
        /// The version received.
        found: u32,
    },
    /// A code the contract does not assign.
    #[error("frame code {found:#04x} is unassigned")]
    Unassigned {
        /// The code received.
        found: u32,
    },
}

/// One WCP frame: a code and a non-empty, opaque payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    code: Code,
    payload: Bytes,
}

impl fmt::Debug for Frame {
    // Payloads are never printed: they are user data even when encrypted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("code", &self.code)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Frame {
    /// A frame with `code` and `payload`; the payload must not be empty.
    pub fn new(code: Code, payload: impl Into<Bytes>) -> Result<Frame, FrameError> {
        let payload = payload.into();
        if payload.is_empty() {
            return Err(FrameError::Short { len: HEADER_LEN });
        }
        Ok(Frame { code, payload })
    }

    /// Parses one whole frame, refusing anything over `max_len` bytes before looking further.
    pub fn decode(bytes: Bytes, max_len: usize) -> Result<Frame, FrameError> {
        let len = bytes.len();
        if len > max_len {
            return Err(FrameError::Oversize { len, max: max_len });
        }
        if len < MIN_FRAME_LEN {
            return Err(FrameError::Short { len });
        }
        let (version, code) = (bytes[0], bytes[1]);
        Self::from_parts(
            u32::from(version),
            u32::from(code),
            bytes.slice(HEADER_LEN..),
            max_len,
        )
    }

    /// Builds a frame from fields carried separately (the gRPC `Frame` message), applying
    /// exactly the rules of [`Frame::decode`] so both transports agree.
    pub fn from_parts(
        version: u32,
        code: u32,
        payload: Bytes,
        max_len: usize,
    ) -> Result<Frame, FrameError> {
        let len = HEADER_LEN.saturating_add(payload.len());
        if len > max_len {
            return Err(FrameError::Oversize { len, max: max_len });
        }
        if payload.is_empty() {
            return Err(FrameError::Short { len });
        }
        if version != u32::from(VERSION) {
            return Err(FrameError::Version { found: version });
        }
        let code = u8::try_from(code)
            .ok()
            .and_then(Code::from_byte)
            .ok_or(FrameError::Unassigned { found: code })?;
        Ok(Frame { code, payload })
    }

    /// The frame's code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The opaque payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Consumes the frame, returning its payload.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// Bytes the frame occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// The frame's wire bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(VERSION);
        out.put_u8(self.code.byte());
        out.put_slice(&self.payload);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 8 * 1024 * 1024;

    #[test]
    fn section2_round_trip_of_every_code() {
        for code in Code::ALL {
            let frame = Frame::new(code, vec![1, 2, 3]).unwrap();
            let bytes = frame.encode();
            assert_eq!(&bytes[..2], &[VERSION, code.byte()]);
            assert_eq!(Frame::decode(bytes, MAX).unwrap(), frame);
        }
    }

    #[test]
    fn section2_direction_split_at_0x50() {
        for byte in 0..=255u8 {
            if let Some(code) = Code::from_byte(byte) {
                assert_eq!(code.is_client(), byte >= 0x50, "{code}");
                assert_eq!(code.byte(), byte);
            }
        }
        assert_eq!(Code::ALL.iter().filter(|c| c.is_client()).count(), 6);
    }

    #[test]
    fn section2_short_frames_are_rejected() {
        for len in 0..MIN_FRAME_LEN {
            let bytes = Bytes::from(vec![VERSION; len]);
            assert_eq!(Frame::decode(bytes, MAX), Err(FrameError::Short { len }));
        }
        assert!(Frame::new(Code::SubmitDelta, Bytes::new()).is_err());
    }

    #[test]
    fn section2_wrong_version_is_rejected() {
        for version in [0u8, 2, 0x7f, 0xff] {
            let bytes = Bytes::from(vec![version, 0x53, 1]);
            assert_eq!(
                Frame::decode(bytes, MAX),
                Err(FrameError::Version {
                    found: version.into()
                })
            );
        }
    }

    #[test]
    fn section2_unassigned_codes_are_rejected() {
        for code in [0x03u8, 0x09, 0x4f, 0x56, 0xff] {
            let bytes = Bytes::from(vec![VERSION, code, 1]);
            assert_eq!(
                Frame::decode(bytes, MAX),
                Err(FrameError::Unassigned { found: code.into() })
            );
        }
        // Over gRPC a code is a uint32: 0x153 must not wrap to submit-delta.
        assert_eq!(
            Frame::from_parts(1, 0x153, Bytes::from_static(b"x"), MAX),
            Err(FrameError::Unassigned { found: 0x153 })
        );
        assert_eq!(
            Frame::from_parts(0x101, 0x53, Bytes::from_static(b"x"), MAX),
            Err(FrameError::Version { found: 0x101 })
        );
    }

    #[test]
    fn section9_oversize_is_checked_before_anything_else() {
        let bytes = Bytes::from(vec![0xffu8; 101]);
        assert_eq!(
            Frame::decode(bytes, 100),
            Err(FrameError::Oversize { len: 101, max: 100 })
        );
        let exact = Bytes::from([&[VERSION, 0x53][..], &[7u8; 98][..]].concat());
        assert!(Frame::decode(exact, 100).is_ok());
    }

    #[test]
    fn debug_never_prints_payload() {
        let frame = Frame::new(Code::SubmitDelta, &b"secret-bytes"[..]).unwrap();
        assert!(!format!("{frame:?}").contains("secret"));
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_agrees_with_from_parts(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let decoded = Frame::decode(Bytes::from(bytes.clone()), 40);
            if let Ok(frame) = &decoded {
                let encoded = frame.encode();
                prop_assert_eq!(&encoded[..], &bytes[..]);
            }
            if bytes.len() >= 2 && bytes.len() <= 40 {
                let parts = Frame::from_parts(bytes[0].into(), bytes[1].into(), Bytes::from(bytes[2..].to_vec()), 40);
                prop_assert_eq!(parts, decoded);
            }
        }
    }
}
