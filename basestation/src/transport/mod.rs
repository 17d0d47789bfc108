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
use crate::replication::Feed;
use crate::tls::{ACME_TLS_ALPN, ServerTls};
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;
use zbase_proto::pb::replication_server::ReplicationServer;

/// The router of everything the public port serves.
pub fn router(relay: Relay) -> axum::Router {
    let grpc = tonic::service::Routes::new(grpc::service(relay.clone(), Origin::Client))
        .into_axum_router();
    http::router(relay.clone())
        .merge(ws::router(relay))
        .merge(grpc)
}

/// The router of the internal port: sessions other pods relay to this one as their home, and
/// the replication calls other pods of this site pass on to the home of a resource.
pub fn internal_router(relay: Relay, replication: Option<ReplicationServer<Feed>>) -> axum::Router {
    let routes = tonic::service::Routes::new(grpc::service(relay, Origin::Pod));
    match replication {
        Some(replication) => routes.add_service(replication),
        None => routes,
    }
    .into_axum_router()
}

/// Accepts connections on the public `listener` until shutdown, then waits (at most `grace`)
/// for the HTTP connections still open to finish. Upgraded WebSockets are drained by the relay.
/// With `tls`, every connection is TLS (ALPN picks HTTP/2 or HTTP/1.1).
pub async fn serve(listener: TcpListener, relay: Relay, grace: Duration, tls: Option<ServerTls>) {
    let port = Port {
        app: router(relay.clone()),
        max_streams: None,
        tls,
    };
    accept(listener, port, relay, grace).await;
}

/// Serves the internal port on `listener` (HTTP/2 only in practice) until shutdown; with
/// `tls`, only pods presenting a certificate of the site CA get past the handshake.
pub async fn serve_internal(
    listener: TcpListener,
    relay: Relay,
    replication: Option<ReplicationServer<Feed>>,
    grace: Duration,
    tls: Option<ServerTls>,
) {
    let port = Port {
        app: internal_router(relay.clone(), replication),
        // Every session relayed from one pod to another shares that pair's one HTTP/2
        // connection, so the usual cap of a few hundred streams would stall the rest.
        max_streams: Some(INTERNAL_STREAMS),
        tls,
    };
    accept(listener, port, relay, grace).await;
}

/// Serves the replication port's `app` on `listener` until shutdown; with `tls`, only sites
/// presenting a certificate of the sites' CA bundle get past the handshake.
pub async fn serve_replication(
    listener: TcpListener,
    app: axum::Router,
    relay: Relay,
    grace: Duration,
    tls: Option<ServerTls>,
) {
    let port = Port {
        app,
        // A replica opens one feed and a bridge stream per resource its clients use.
        max_streams: Some(INTERNAL_STREAMS),
        tls,
    };
    accept(listener, port, relay, grace).await;
}

/// Concurrent relayed sessions one pod may send another over its one connection.
const INTERNAL_STREAMS: u32 = 1 << 20;

/// How long a client has to complete the TLS handshake before its socket is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one listener serves.
struct Port {
    app: axum::Router,
    max_streams: Option<u32>,
    tls: Option<ServerTls>,
}

async fn accept(listener: TcpListener, port: Port, relay: Relay, grace: Duration) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(streams) = port.max_streams {
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
        let app = port.app.clone();
        let service =
            tower::service_fn(move |mut request: ::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(addr));
                app.clone().oneshot(request)
            });
        let service = TowerToHyperService::new(service);
        let watcher = graceful.watcher();
        let Some(tls) = &port.tls else {
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(finish(watcher.watch(connection)));
            continue;
        };
        // The handshake runs in the connection's own task, so a slow client never holds up
        // the accept loop; it uses the configuration current at accept time.
        let acceptor = tls.acceptor();
        let builder = builder.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%addr, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
            if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                // An ACME server validating TLS-ALPN-01: the handshake was the whole answer
                // (RFC 8737), and this connection must never reach HTTP.
                tracing::debug!(%addr, "answered an ACME TLS-ALPN-01 validation");
                let mut stream = stream;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                return;
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            finish(watcher.watch(connection)).await;
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the shutdown grace period");
    }
}

async fn finish<E: std::fmt::Display>(
    connection: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "HTTP connection ended with an error");
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
