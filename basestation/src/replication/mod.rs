//! Replica sites: read-only caching stations in other places that follow the one writable
//! primary site (docs/REPLICATION.md).
//!
//! The primary serves `zbase.v1.Replication` on its replication port ([`feed`]); a replica
//! follows the change feed into its local SQLite cache ([`follower`]) and runs the usual relay
//! over a store that reads the cache and writes through the primary ([`site`]); each resource
//! with peers on a replica bridges their deltas and requests with the primary's ([`bridge`]). Sites
//! authenticate each other by mutual TLS against the sites' CA bundle.

mod bridge;
mod feed;
mod follower;
mod site;

pub use feed::{Feed, MESSAGE_MAX, service};
pub use follower::{check_at_start, run};
pub use site::{
    EPOCH_METADATA, Peer, Promotion, RoleError, SiteStore, Token, Upstream, with_epoch,
};

/// The router of the replication port.
pub fn router(relay: crate::relay::Relay, site: std::sync::Arc<SiteStore>) -> axum::Router {
    tonic::service::Routes::new(service(relay, site)).into_axum_router()
}

/// HTTP/2 receive window towards another site: a window per round trip is the feed's
/// ceiling, so 8 MiB carries 200 MB/s over a 40 ms round trip.
const FEED_WINDOW: u32 = 8 << 20;

/// A peer site at `address`, dialled over mutual TLS with `tls` when its URL is `https://`.
pub fn peer(
    address: &crate::config::SiteAddress,
    tls: Option<crate::tls::ClientTls>,
) -> Result<Peer, String> {
    use std::time::Duration;
    let scheme = if address.tls { "https" } else { "http" };
    let url = format!("{scheme}://{}", address.authority);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", address.authority))
        .map_err(|error| format!("{url} is not a usable address: {error}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // The feed flows towards this side over a link of tens of milliseconds: HTTP/2's
        // default 64 KiB window would cap it at a window per round trip.
        .initial_stream_window_size(FEED_WINDOW)
        .initial_connection_window_size(FEED_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = match (address.tls, tls) {
        (true, Some(tls)) => endpoint.connect_with_connector_lazy(crate::tls::dial(tls)),
        (true, None) => {
            return Err(format!(
                "{url} uses https but this site has no certificate for it: give --replication-tls-cert, --replication-tls-key and --replication-ca"
            ));
        }
        (false, _) => endpoint.connect_lazy(),
    };
    Ok(Peer::new(url, channel))
}
