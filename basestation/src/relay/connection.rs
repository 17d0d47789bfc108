//! The driver of one connection: admits it, runs its [`Session`], and carries out the session's
//! actions against the resource task and the transport.
//!
//! Transports hand in a stream of [`Incoming`] and a sink of [`Outgoing`]; everything else,
//! and so every behaviour of WIRE.md sections 3 to 9, is the same on each transport.

use super::registry::Relay;
use super::resource::{Command, PeerLink, Refused};
use crate::cluster::Route;
use crate::session::{Action, CloseReason, Session};
use crate::telemetry::{ReasonLabel, TransportLabel};
use bytes::Bytes;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use rand::RngCore;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use zbase_proto::wire::{Challenge, Code, Frame, FrameError};

/// How long a closed connection keeps reading before its socket is dropped, so the client's
/// unread bytes do not turn our close into a reset that could swallow the close frame.
const LINGER: Duration = Duration::from_secs(2);

/// What a transport delivers from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A binary message, parsed (or not) as a frame.
    Frame(Result<Frame, FrameError>),
    /// A message that cannot carry a frame (WebSocket text).
    NotAFrame,
    /// The client closed the connection or the socket failed.
    Closed,
}

/// What the station sends to the client.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// One frame, already encoded (`[version][code][payload]`).
    Frame(Bytes),
    /// End the connection with this reason's code or status.
    Close(CloseReason),
}

/// Where a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client on the public port: admitted per IP here, relayed if another pod is home.
    Client,
    /// Relayed by another pod over the internal port, which already admitted the client:
    /// served only if this pod is the resource's home.
    Pod,
}

/// A verified peer's link and the mailbox of its resource.
struct Joined {
    peer: u64,
    link: PeerLink,
    resource: mpsc::Sender<Command>,
}

/// Runs one connection for `id` from `ip` until it ends.
#[tracing::instrument(name = "connection", skip_all, fields(resource = %relay.tag(&id), transport = transport))]
pub async fn run<I, O>(
    relay: Relay,
    id: zbase_proto::wire::ResourceId,
    ip: IpAddr,
    transport: &'static str,
    origin: Origin,
    mut inbound: I,
    mut outbound: O,
) where
    I: Stream<Item = Incoming> + Unpin + Send,
    O: Sink<Outgoing> + Unpin + Send,
{
    let metrics = relay.metrics().clone();
    let connections = metrics
        .connections
        .get_or_create(&TransportLabel { transport })
        .clone();
    connections.inc();
    let reason = match origin {
        Origin::Client => match relay.admission().admit(ip, Instant::now()) {
            Err(refusal) => {
                let reason = match refusal {
                    crate::limits::Refusal::Throttled => {
                        metrics.throttled_handshakes.inc();
                        CloseReason::Throttled
                    }
                    crate::limits::Refusal::TooManyConnections => CloseReason::TooManyConnections,
                };
                let _ = outbound.send(Outgoing::Close(reason)).await;
                reason
            }
            Ok(_permit) => {
                let reason = route(&relay, id, ip, origin, &mut inbound, &mut outbound).await;
                if reason.is_failed_handshake()
                    && relay.admission().record_failure(ip, Instant::now())
                {
                    tracing::info!(%ip, "client IP refused after repeated failed handshakes");
                }
                reason
            }
        },
        Origin::Pod => route(&relay, id, ip, origin, &mut inbound, &mut outbound).await,
    };
    metrics
        .terminations
        .get_or_create(&ReasonLabel {
            reason: reason.label(),
        })
        .inc();
    // The span carries the resource tag and transport.
    tracing::debug!(reason = reason.label(), "connection ended");
    connections.dec();
    // Read what the client still sends for a moment, so closing does not reset the socket.
    if reason != CloseReason::ClientClosed {
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(item) = inbound.next().await {
                if matches!(item, Incoming::Closed) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Serves the connection here if this pod is home to `id`, relays it to the home pod if not
/// (only for clients: a relayed connection is never relayed again), and refuses it with 1013
/// if no pod can be home just now.
async fn route<I, O>(
    relay: &Relay,
    id: zbase_proto::wire::ResourceId,
    ip: IpAddr,
    origin: Origin,
    inbound: &mut I,
    outbound: &mut O,
) -> CloseReason
where
    I: Stream<Item = Incoming> + Unpin + Send,
    O: Sink<Outgoing> + Unpin + Send,
{
    // Boxed: it can wait for a settling view, and an idle connection should not carry that.
    let reason = match Box::pin(relay.route(&id)).await {
        Route::Local => None,
        Route::Remote { address, .. } if origin == Origin::Client => {
            return Box::pin(super::forward::forward(
                relay, id, ip, &address, inbound, outbound,
            ))
            .await;
        }
        Route::Remote { .. } | Route::Settling | Route::Unavailable => Some(CloseReason::Moved),
    };
    if let Some(reason) = reason {
        let _ = outbound.send(Outgoing::Close(reason)).await;
        return reason;
    }
    let mut session = Session::new(id);
    let mut driver = Driver {
        relay,
        session: &mut session,
        joined: None,
        revoked: CancellationToken::new(),
        outbound,
    };
    let reason = driver.run(inbound).await;
    if let Some(joined) = driver.joined.take() {
        let _ = joined
            .resource
            .send(Command::Leave { peer: joined.peer })
            .await;
    }
    reason
}

struct Driver<'a, O> {
    relay: &'a Relay,
    session: &'a mut Session,
    joined: Option<Joined>,
    /// Cancelled when the key this session was challenged with is replaced (a rotation):
    /// ends the handshake, which can no longer succeed.
    revoked: CancellationToken,
    outbound: &'a mut O,
}

enum Flow {
    Continue,
    End(CloseReason),
}

impl<O: Sink<Outgoing> + Unpin + Send> Driver<'_, O> {
    async fn run<I: Stream<Item = Incoming> + Unpin + Send>(
        &mut self,
        inbound: &mut I,
    ) -> CloseReason {
        let id = *self.session.id();
        // The rare, one-off awaits are boxed so the future every idle connection keeps stays small.
        let key = match Box::pin(self.relay.open(id)).await {
            Ok(opened) => {
                // Only a challenge for a key can be revoked; a configuration proves a new key.
                if opened.key.is_some() {
                    self.revoked = opened.revoked;
                }
                opened.key
            }
            Err(reason) => return self.finish(reason).await,
        };
        // A frame that arrived while the key was loading came before `require-*`: early.
        if let Some(Some(item)) = inbound.next().now_or_never()
            && let Flow::End(reason) = self.incoming(item).await
        {
            return reason;
        }
        let mut challenge: Challenge = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut challenge);
        let timeout = self.relay.limits().handshake_timeout;
        let action = self.session.start(key, challenge, Instant::now(), timeout);
        if let Flow::End(reason) = self.act(action).await {
            return reason;
        }
        let shutdown = self.relay.shutdown().clone();
        loop {
            let deadline = self.session.deadline();
            let joined = self.joined.is_some();
            // Every arm that ends the connection has already sent its termination.
            let flow = tokio::select! {
                biased;
                _ = shutdown.cancelled() => self.end(CloseReason::ShuttingDown).await,
                event = link_event(&mut self.joined) => match event {
                    LinkEvent::Frame(frame) => self.send(frame).await,
                    LinkEvent::Kicked(reason) => self.end(reason).await,
                },
                _ = key_replaced(&self.revoked, joined) => {
                    self.end(CloseReason::KeyReplaced).await
                }
                _ = sleep_until(deadline) => match self.session.tick(Instant::now()) {
                    Some(action) => self.act(action).await,
                    None => Flow::Continue,
                },
                item = inbound.next() => self.incoming(item.unwrap_or(Incoming::Closed)).await,
            };
            if let Flow::End(reason) = flow {
                return reason;
            }
        }
    }

    /// Ends the session for a reason found outside it.
    async fn end(&mut self, reason: CloseReason) -> Flow {
        let action = self.session.close(reason);
        self.act(action).await
    }

    async fn incoming(&mut self, item: Incoming) -> Flow {
        let action = match item {
            Incoming::Frame(frame) => {
                if let Ok(frame) = &frame {
                    self.relay
                        .metrics()
                        .frame_in(frame.code().name(), frame.encoded_len());
                }
                self.session.frame(frame)
            }
            Incoming::NotAFrame => self.session.not_a_frame(),
            Incoming::Closed => {
                self.session.close(CloseReason::ClientClosed);
                return Flow::End(CloseReason::ClientClosed);
            }
        };
        self.act(action).await
    }

    async fn act(&mut self, action: Action) -> Flow {
        match action {
            Action::Send(frame) => self.send(frame.encode()).await,
            Action::Close(reason) => Flow::End(self.finish(reason).await),
            Action::Join(key) => {
                let peer = self.relay.next_peer_id();
                let revoked = self.revoked.clone();
                match Box::pin(self.relay.join(*self.session.id(), peer, key, revoked)).await {
                    Ok((link, resource)) => {
                        self.joined = Some(Joined {
                            peer,
                            link,
                            resource,
                        });
                        Flow::Continue
                    }
                    Err(reason) => Box::pin(self.end(reason)).await,
                }
            }
            Action::Configure(key) => {
                match Box::pin(self.relay.configure(*self.session.id(), key)).await {
                    Ok(assigned) => {
                        let [offer, close] = self.session.configured(assigned);
                        if let Flow::End(reason) = Box::pin(self.act(offer)).await {
                            return Flow::End(reason);
                        }
                        Box::pin(self.act(close)).await
                    }
                    Err(reason) => Box::pin(self.end(reason)).await,
                }
            }
            Action::Snapshot(payload) => {
                self.command(|peer| Command::Snapshot { peer, payload })
                    .await
            }
            Action::Delta(payload) => self.command(|peer| Command::Delta { peer, payload }).await,
            Action::Request(payload) => {
                self.command(|peer| Command::Request { peer, payload })
                    .await
            }
            Action::Rotate { current, new } => Box::pin(self.rotate(current, new)).await,
        }
    }

    /// Has the resource replace the key and close every other session, then confirms with
    /// the next rotation challenge. Nothing else from this client is read meanwhile, so its
    /// frames sent after `rotate-key` are handled after the rotation.
    async fn rotate(
        &mut self,
        current: std::sync::Arc<zbase_proto::wire::VerificationKey>,
        new: std::sync::Arc<zbase_proto::wire::VerificationKey>,
    ) -> Flow {
        let Some(joined) = &self.joined else {
            return self
                .end(CloseReason::Internal("rotation before join"))
                .await;
        };
        let (reply, answer) = oneshot::channel();
        let command = Command::Rotate {
            peer: Some(joined.peer),
            current,
            new,
            reply,
        };
        if joined.resource.send(command).await.is_err() {
            return self.end(CloseReason::ShuttingDown).await;
        }
        match answer.await {
            Ok(Ok(_)) => {
                let mut challenge: Challenge = [0; 32];
                rand::rngs::OsRng.fill_bytes(&mut challenge);
                let action = self.session.rotated(challenge);
                Box::pin(self.act(action)).await
            }
            Ok(Err(Refused::Close(reason))) => self.end(reason).await,
            // The task ended (shutdown) before it answered.
            Ok(Err(Refused::Retired)) | Err(_) => self.end(CloseReason::ShuttingDown).await,
        }
    }

    async fn command(&mut self, make: impl FnOnce(u64) -> Command) -> Flow {
        let Some(joined) = &self.joined else {
            return Box::pin(self.end(CloseReason::Internal("command before join"))).await;
        };
        if joined.resource.send(make(joined.peer)).await.is_err() {
            return Box::pin(self.end(CloseReason::ShuttingDown)).await;
        }
        Flow::Continue
    }

    async fn send(&mut self, frame: Bytes) -> Flow {
        let code = frame
            .get(1)
            .copied()
            .and_then(Code::from_byte)
            .map_or("unknown", Code::name);
        self.relay.metrics().frame_out(code, frame.len());
        match self.outbound.send(Outgoing::Frame(frame)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::End(CloseReason::ClientClosed),
        }
    }

    /// Sends the termination for `reason` (if the client is still there) and returns it.
    async fn finish(&mut self, reason: CloseReason) -> CloseReason {
        if reason != CloseReason::ClientClosed {
            let _ = self.outbound.send(Outgoing::Close(reason)).await;
        }
        reason
    }
}

enum LinkEvent {
    Frame(Bytes),
    Kicked(CloseReason),
}

/// The next thing the resource says to a verified peer; never resolves before joining.
async fn link_event(joined: &mut Option<Joined>) -> LinkEvent {
    let Some(joined) = joined else {
        return std::future::pending().await;
    };
    tokio::select! {
        biased;
        // A dropped kick sender without a reason means the resource task ended.
        reason = &mut joined.link.kicked => LinkEvent::Kicked(reason.unwrap_or(CloseReason::ShuttingDown)),
        frame = joined.link.frames.recv() => match frame {
            Some(frame) => LinkEvent::Frame(frame),
            None => LinkEvent::Kicked(CloseReason::ShuttingDown),
        },
    }
}

/// Resolves when the key a handshake was given is replaced; never once joined, since a
/// verified peer is closed by its resource instead.
async fn key_replaced(token: &CancellationToken, joined: bool) {
    if joined {
        return std::future::pending().await;
    }
    token.cancelled().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
