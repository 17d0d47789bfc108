//! Logs, metrics and the keyed hash that stands for an identifier in both.
//!
//! Promise: no log line or metric ever carries an identifier in full, a payload or a key. An
//! identifier appears only as [`IdHasher::tag`], a short keyed hash whose key is drawn at start
//! and never leaves the process, so it correlates one run's events and nothing else.

mod logs;
mod metrics;

pub use logs::{LogFormat, Telemetry, init as init_telemetry};
pub use metrics::{
    CodeLabel, DirectionLabel, Metrics, PortLabel, ReasonLabel, ReloadLabel, ResultLabel,
    StoreTimer, TransportLabel,
};

use rand::RngCore;
use zbase_proto::wire::ResourceId;

/// Turns identifiers into short, per-process keyed tags for logs.
#[derive(Clone)]
pub struct IdHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher(..)")
    }
}

impl IdHasher {
    /// A hasher with a fresh random key.
    pub fn random() -> IdHasher {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        IdHasher { key }
    }

    /// Eight hex characters: enough to tell apart the resources in one log, useless to find one.
    pub fn tag(&self, id: &ResourceId) -> String {
        let hash = blake3::keyed_hash(&self.key, id.as_bytes());
        hash.to_hex()[..8].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s1_tags_are_short_keyed_and_stable_within_a_run() {
        let id = ResourceId::from_bytes([1; 32]);
        let a = IdHasher::random();
        let b = IdHasher::random();
        assert_eq!(a.tag(&id), a.tag(&id));
        assert_ne!(a.tag(&id), b.tag(&id), "another run cannot correlate");
        assert_eq!(a.tag(&id).len(), 8);
        assert!(!id.as_str().contains(&a.tag(&id)));
    }
}
