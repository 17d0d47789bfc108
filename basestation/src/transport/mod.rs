//! Thin adapters from sockets to the connection driver, all on one public port.
//!
//! One listener serves HTTP/1.1 (WebSocket upgrades, health, metrics) and HTTP/2 (gRPC) side
//! by side: hyper's automatic protocol detection picks per connection, so one virtual IP and,
//! with TLS, one certificate serve every client. The adapters only translate messages; every
//! protocol decision is made by `relay` and `session`.

pub mod close;
mod grpc;
mod http;
mod ws;

use crate::relay::{Origin, Relay};
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The router of everything the public port serves.
pub fn router(relay: Relay) -> axum::Router {
    let grpc = tonic::service::Routes::new(grpc::service(relay.clone(), Origin::Client))
        .into_axum_router();
    http::router(relay.clone())
        .merge(ws::router(relay))
        .merge(grpc)
}

/// The router of the internal port: sessions other pods relay to this one as their home.
pub fn internal_router(relay: Relay) -> axum::Router {
    tonic::service::Routes::new(grpc::service(relay, Origin::Pod)).into_axum_router()
}

/// Accepts connections on the public `listener` until shutdown, then waits (at most `grace`)
/// for the HTTP connections still open to finish. Upgraded WebSockets are drained by the relay.
pub async fn serve(listener: TcpListener, relay: Relay, grace: Duration) {
    accept(listener, router(relay.clone()), relay, grace, None).await;
}

/// Serves the internal port on `listener` (HTTP/2 only in practice) until shutdown.
pub async fn serve_internal(listener: TcpListener, relay: Relay, grace: Duration) {
    // Every session relayed from one pod to another shares that pair's one HTTP/2
    // connection, so the usual cap of a few hundred streams would stall the rest.
    let streams = Some(INTERNAL_STREAMS);
    accept(
        listener,
        internal_router(relay.clone()),
        relay,
        grace,
        streams,
    )
    .await;
}

/// Concurrent relayed sessions one pod may send another over its one connection.
const INTERNAL_STREAMS: u32 = 1 << 20;

async fn accept(
    listener: TcpListener,
    app: axum::Router,
    relay: Relay,
    grace: Duration,
    max_streams: Option<u32>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(streams) = max_streams {
        builder.http2().max_concurrent_streams(streams);
    }
    // Small per-connection windows keep idle HTTP/2 connections cheap; large frames still
    // flow because the window grows with use.
    builder
        .http2()
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(256 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = relay.shutdown().clone();
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            tower::service_fn(move |mut request: ::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(addr));
                app.clone().oneshot(request)
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the shutdown grace period");
    }
}

/// The client's address, as the accept loop recorded it.
fn client_addr(extensions: &::http::Extensions) -> SocketAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        // Every request passes the accept loop, which inserts it; an unspecified address only
        // appears if the router is driven some other way (tests), and is then one bucket.
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}
