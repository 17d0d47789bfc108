//! The zbase operator: reconciles `BaseStation` resources into the objects a site needs.
//!
//! `crd` is the resource; `reconcile` is the pipeline (validate, build, apply, report), whose
//! validation and builders are pure; `controller` runs it for every BaseStation in the
//! watched namespaces; `leader` keeps two operator replicas from acting at once; `telemetry`
//! serves health and metrics; `pki` is the operator's own certificate authority (a CA per
//! station, rotated with an overlap, and the leaf its pods serve and use for mutual TLS),
//! planned purely like the builders; `site` is the client of a station's replication port,
//! through which the operator reads a site's role and lag and promotes or demotes it.

pub mod controller;
pub mod crd;
pub mod leader;
pub mod pki;
pub mod reconcile;
pub mod site;
pub mod telemetry;
