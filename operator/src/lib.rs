//! The zbase operator: reconciles `BaseStation` resources into the objects a site needs.
//!
//! `crd` is the resource; `reconcile` is the pipeline (validate, build, apply, report), whose
//! validation and builders are pure; `leader` keeps two operator replicas from acting at once;
//! `telemetry` serves health and metrics.

pub mod crd;
