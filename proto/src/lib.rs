//! The zbase wire contract, compiled once for both sides.
//!
//! [`wire`] is pure: frames, codes, identifiers, verification keys and the messages they sign,
//! with no I/O and no clock, so the station and every client agree byte for byte. [`pb`] is the
//! generated gRPC code for `zbase.v1.Station/Connect`, which encodes through
//! [`codec`]: tonic's protobuf codec with buffers allocated by use rather than 8 KiB up front.

pub mod codec;
pub mod pb;
pub mod wire;
