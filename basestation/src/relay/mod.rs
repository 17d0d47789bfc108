//! One task per active resource, the registry that finds it, and the driver that runs one
//! connection's session between a transport and its resource.
//!
//! Promises: a resource's peer set, cached snapshot and pending requesters are owned by its
//! task alone, so no lock is shared between resources and a flooded resource stalls only
//! itself. A snapshot is offered to anyone only after the store reports it durable. Payloads
//! are moved as reference-counted bytes and never inspected, transformed or logged.

mod connection;
mod forward;
mod readiness;
mod registry;
mod resource;

pub use connection::{Incoming, Origin, Outgoing, run as run_connection};
pub use forward::{CLIENT_IP_METADATA, CLOSE_REASON_METADATA};
pub use registry::{Relay, RelayParts, SiteLink, Uplink};

#[cfg(test)]
mod tests;
