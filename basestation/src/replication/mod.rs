//! Replica sites: read-only caching stations in other places that follow the one writable
//! primary site (docs/REPLICATION.md).
//!
//! The primary serves `zbase.v1.Replication` on its replication port ([`feed`]); a replica
//! follows the change feed into its local SQLite cache ([`follower`]) and runs the usual relay
//! over a store that reads the cache and writes through the primary ([`cache`]); each resource
//! with peers on a replica bridges their deltas and requests with the primary's ([`bridge`]). Sites
//! authenticate each other by mutual TLS against the sites' CA bundle.

mod bridge;
mod cache;
mod feed;
mod follower;

pub use cache::{Cache, Upstream};
pub use feed::{Feed, MESSAGE_MAX, service};
pub use follower::follow;

/// The router of the replication port.
pub fn router(
    relay: crate::relay::Relay,
    store: std::sync::Arc<dyn crate::store::Store>,
) -> axum::Router {
    tonic::service::Routes::new(service(relay, store)).into_axum_router()
}
