//! Why a connection ends. Each reason maps to exactly one WebSocket close code and one gRPC
//! status in `transport`, and is the label of the terminations metric.

/// The reason a connection is terminated (WIRE.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Normal end after `offer-config` (1000 / OK).
    Normal,
    /// The client ended the connection.
    ClientClosed,
    /// The station is shutting down (1001 / UNAVAILABLE).
    ShuttingDown,
    /// A protocol violation (1002 / INVALID_ARGUMENT); the text is for logs only.
    Protocol(&'static str),
    /// Bad verification signature (1008 / UNAUTHENTICATED).
    VerificationFailed,
    /// The resource's key was replaced (extension R1): the session proved the old one, or its
    /// own rotation lost to another (1008 / UNAUTHENTICATED). Not a failed handshake: the
    /// client proved a key that was valid, so its IP is not throttled for it.
    KeyReplaced,
    /// Bad configuration payload or proof (1008 / UNAUTHENTICATED).
    ConfigurationFailed,
    /// No answer within the handshake timeout (1008 / UNAUTHENTICATED).
    HandshakeTimeout,
    /// A frame over the size limit (1009 / OUT_OF_RANGE).
    FrameTooLarge,
    /// The peer's outgoing queue overflowed (1013 / RESOURCE_EXHAUSTED).
    QueueOverflow,
    /// The resource has its maximum of verified peers (1013 / RESOURCE_EXHAUSTED).
    PeersFull,
    /// The client IP has its maximum of connections (1013 / RESOURCE_EXHAUSTED).
    TooManyConnections,
    /// The client IP failed too many handshakes (1013 / RESOURCE_EXHAUSTED).
    Throttled,
    /// Storage could not complete a write or read (1013 / UNAVAILABLE: try again later).
    StoreUnavailable,
    /// The resource's home moved to another pod, or no pod can be its home just now
    /// (1013 / UNAVAILABLE: reconnect, and the new home serves it).
    Moved,
    /// A bug in the station (1011 / INTERNAL); never carries detail to the client.
    Internal(&'static str),
}

impl CloseReason {
    /// Every reason, once (detail texts are placeholders).
    pub const ALL: [CloseReason; 16] = [
        CloseReason::Normal,
        CloseReason::ClientClosed,
        CloseReason::ShuttingDown,
        CloseReason::Protocol("any"),
        CloseReason::VerificationFailed,
        CloseReason::KeyReplaced,
        CloseReason::ConfigurationFailed,
        CloseReason::HandshakeTimeout,
        CloseReason::FrameTooLarge,
        CloseReason::QueueOverflow,
        CloseReason::PeersFull,
        CloseReason::TooManyConnections,
        CloseReason::Throttled,
        CloseReason::StoreUnavailable,
        CloseReason::Moved,
        CloseReason::Internal("any"),
    ];

    /// The metric label and log field for this reason.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ShuttingDown => "shutting_down",
            CloseReason::Protocol(_) => "protocol_violation",
            CloseReason::VerificationFailed => "verification_failed",
            CloseReason::KeyReplaced => "key_replaced",
            CloseReason::ConfigurationFailed => "configuration_failed",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::QueueOverflow => "queue_overflow",
            CloseReason::PeersFull => "peers_full",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::Throttled => "throttled",
            CloseReason::StoreUnavailable => "store_unavailable",
            CloseReason::Moved => "rehomed",
            CloseReason::Internal(_) => "internal",
        }
    }

    /// The reason whose [`CloseReason::label`] is `label`, for a termination relayed from a
    /// resource's home pod. Detail texts do not cross pods, so they read "relayed".
    pub fn from_label(label: &str) -> Option<CloseReason> {
        Some(match label {
            "normal" => CloseReason::Normal,
            "client_closed" => CloseReason::ClientClosed,
            "shutting_down" => CloseReason::ShuttingDown,
            "protocol_violation" => CloseReason::Protocol("relayed"),
            "verification_failed" => CloseReason::VerificationFailed,
            "key_replaced" => CloseReason::KeyReplaced,
            "configuration_failed" => CloseReason::ConfigurationFailed,
            "handshake_timeout" => CloseReason::HandshakeTimeout,
            "frame_too_large" => CloseReason::FrameTooLarge,
            "queue_overflow" => CloseReason::QueueOverflow,
            "peers_full" => CloseReason::PeersFull,
            "too_many_connections" => CloseReason::TooManyConnections,
            "throttled" => CloseReason::Throttled,
            "store_unavailable" => CloseReason::StoreUnavailable,
            "rehomed" => CloseReason::Moved,
            "internal" => CloseReason::Internal("relayed"),
            _ => return None,
        })
    }

    /// True for the reasons that count as a failed handshake against the client's IP.
    pub fn is_failed_handshake(self) -> bool {
        matches!(
            self,
            CloseReason::VerificationFailed
                | CloseReason::ConfigurationFailed
                | CloseReason::HandshakeTimeout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::CloseReason;

    #[test]
    fn every_label_reads_back_as_its_reason() {
        let all = CloseReason::ALL;
        for reason in all {
            let back = CloseReason::from_label(reason.label());
            assert_eq!(back.map(CloseReason::label), Some(reason.label()));
        }
        assert_eq!(CloseReason::from_label("nonsense"), None);
    }
}
