//! The termination table of WIRE.md section 8: one close reason, one WebSocket close code, one
//! gRPC status. Both transports read it, so they cannot disagree.

use crate::session::CloseReason;

/// The WebSocket close code for `reason`.
pub fn websocket_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Normal | CloseReason::ClientClosed => 1000,
        CloseReason::ShuttingDown => 1001,
        CloseReason::Protocol(_) => 1002,
        CloseReason::VerificationFailed
        | CloseReason::KeyReplaced
        | CloseReason::ConfigurationFailed
        | CloseReason::HandshakeTimeout => 1008,
        CloseReason::FrameTooLarge => 1009,
        CloseReason::QueueOverflow
        | CloseReason::PeersFull
        | CloseReason::TooManyConnections
        | CloseReason::Throttled
        | CloseReason::StoreUnavailable
        | CloseReason::Moved => 1013,
        CloseReason::Internal(_) => 1011,
    }
}

/// The gRPC status code for `reason`.
pub fn grpc_code(reason: CloseReason) -> tonic::Code {
    match reason {
        CloseReason::Normal | CloseReason::ClientClosed => tonic::Code::Ok,
        CloseReason::ShuttingDown | CloseReason::StoreUnavailable | CloseReason::Moved => {
            tonic::Code::Unavailable
        }
        CloseReason::Protocol(_) => tonic::Code::InvalidArgument,
        CloseReason::VerificationFailed
        | CloseReason::KeyReplaced
        | CloseReason::ConfigurationFailed
        | CloseReason::HandshakeTimeout => tonic::Code::Unauthenticated,
        CloseReason::FrameTooLarge => tonic::Code::OutOfRange,
        CloseReason::QueueOverflow
        | CloseReason::PeersFull
        | CloseReason::TooManyConnections
        | CloseReason::Throttled => tonic::Code::ResourceExhausted,
        CloseReason::Internal(_) => tonic::Code::Internal,
    }
}

/// The text sent with a termination: the contract's category, never content or key detail.
pub fn public_text(reason: CloseReason) -> &'static str {
    match websocket_code(reason) {
        1000 => "",
        1001 => "station shutting down",
        1002 => "protocol violation",
        1008 => "verification or configuration failed",
        1009 => "frame too large",
        1013 => "try again later",
        _ => "internal error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s8_codes_pair_up_across_transports() {
        let pairs = [
            (CloseReason::Normal, 1000, tonic::Code::Ok),
            (CloseReason::ShuttingDown, 1001, tonic::Code::Unavailable),
            (
                CloseReason::Protocol("x"),
                1002,
                tonic::Code::InvalidArgument,
            ),
            (
                CloseReason::VerificationFailed,
                1008,
                tonic::Code::Unauthenticated,
            ),
            (CloseReason::KeyReplaced, 1008, tonic::Code::Unauthenticated),
            (
                CloseReason::ConfigurationFailed,
                1008,
                tonic::Code::Unauthenticated,
            ),
            (
                CloseReason::HandshakeTimeout,
                1008,
                tonic::Code::Unauthenticated,
            ),
            (CloseReason::FrameTooLarge, 1009, tonic::Code::OutOfRange),
            (
                CloseReason::QueueOverflow,
                1013,
                tonic::Code::ResourceExhausted,
            ),
            (CloseReason::Throttled, 1013, tonic::Code::ResourceExhausted),
            (
                CloseReason::StoreUnavailable,
                1013,
                tonic::Code::Unavailable,
            ),
            (CloseReason::Moved, 1013, tonic::Code::Unavailable),
        ];
        for (reason, ws, grpc) in pairs {
            assert_eq!(websocket_code(reason), ws, "{reason:?}");
            assert_eq!(grpc_code(reason), grpc, "{reason:?}");
        }
    }
}
