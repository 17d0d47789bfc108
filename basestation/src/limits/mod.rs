//! Every bound the station enforces, in one place, each with the default of WIRE.md section 9
//! or a note on why it has the value it has.

mod admission;

pub use admission::{Admission, IpPermit, Refusal};

use std::time::Duration;

/// The station's bounds. Built by `config`; read everywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, header included (8 MiB): bounds memory per message.
    pub frame_max_bytes: usize,
    /// Time a client has to answer `require-*` (10 s).
    pub handshake_timeout: Duration,
    /// Verified peers one resource may have (1024): bounds one fan-out.
    pub peers_per_resource: usize,
    /// Open connections from one client IP (256).
    pub connections_per_ip: usize,
    /// Failed handshakes one IP may have within a minute before it is refused (20).
    pub failed_handshakes_per_minute: u32,
    /// How long an IP that exceeded its failed handshakes is refused (60 s).
    pub failed_handshake_ban: Duration,
    /// Frames queued towards one peer before it is disconnected instead of starved (1024).
    pub peer_queue_frames: usize,
    /// How long a requester waits for the next snapshot as `forward-response` (30 s).
    pub pending_request_window: Duration,
    /// How long a resource with no peers stays in memory before it hibernates (30 s): long
    /// enough that a reconnecting peer finds its snapshot cached, short enough that idle
    /// resources cost nothing.
    pub resource_idle: Duration,
    /// How long SIGTERM waits for connections to close and writes to finish (10 s).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max_bytes: 8 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            peers_per_resource: 1024,
            connections_per_ip: 256,
            failed_handshakes_per_minute: 20,
            failed_handshake_ban: Duration::from_secs(60),
            peer_queue_frames: 1024,
            pending_request_window: Duration::from_secs(30),
            resource_idle: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
