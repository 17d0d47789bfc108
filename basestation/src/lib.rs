//! The zbase base station: stores the latest encrypted snapshot of each resource and relays
//! encrypted deltas between the devices that prove they hold the resource's key, understanding
//! none of it.
//!
//! Layers, lowest first (a module never imports a higher one): `limits`, `store`, `cluster`
//! (membership and home pods), `session` (the pure protocol), `relay` (one task per resource,
//! the connection driver, and relaying to a home pod),
//! `replication` (a replica site following the primary, beside `relay`), `transport`
//! (WebSocket and gRPC on one port, and the other ports). `backup` sits on `store` only. `config`
//! turns flags, environment and a YAML file into [`config::Settings`]; `main.rs` wires it
//! together.

pub mod acme;
pub mod backup;
pub mod cluster;
pub mod config;
pub mod limits;
pub mod relay;
pub mod replication;
pub mod session;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
