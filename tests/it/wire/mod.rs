//! WIRE.md conformance, judged from outside: each test drives the real station binary as an
//! independent client would, and is named for the section and rule it checks. Every test body
//! is written once, generic over the transport, and runs as `<name>::ws` and `<name>::grpc`;
//! a few rules that exist on one transport only are plain tests.

use zbase_proto::wire::Code;
pub(crate) use zbase_tests::client::join_peers;
use zbase_tests::client::{Conn, Event, Transport};

/// For each named `async fn name(t: Transport)`, a module `name` with tests `ws` and `grpc`.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ws() {
                    super::$name(zbase_tests::client::Transport::Ws).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn grpc() {
                    super::$name(zbase_tests::client::Transport::Grpc).await;
                }
            }
        )*
    };
}

mod frames;
mod handshake;
mod limits;
mod relay;
mod rotation;

/// Receives until `payload` is shown as the snapshot: `offer-snapshot` (the answer to a
/// request or a join) or `forward-response` (the answer to a pending request). Snapshot writes
/// may still be in flight when a request is answered, so offers of older snapshots on the way
/// are allowed and skipped; anything else fails. Returns the code that showed it.
pub(crate) async fn expect_shown(conn: &mut Conn, payload: &[u8]) -> Code {
    loop {
        match conn.recv().await {
            Event::Frame(frame)
                if matches!(frame.code(), Code::OfferSnapshot | Code::ForwardResponse)
                    && frame.payload()[..] == payload[..] =>
            {
                return frame.code();
            }
            Event::Frame(frame) if frame.code() == Code::OfferSnapshot => {}
            other => panic!("expected the snapshot to be shown, got {other:?}"),
        }
    }
}

/// `t` repeated `n` times.
pub(crate) fn same(t: Transport, n: usize) -> Vec<Transport> {
    vec![t; n]
}
