//! One integration test binary; a module per feature, each test named for the rule it checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod actor;
mod apiserver;
mod backup;
mod backup_s3;
mod browser;
mod chart;
mod durability;
mod geo;
mod operator;
mod operator_reconcile;
mod pods;
mod postgres;
mod replication;
mod sqlite;
mod telemetry;
mod tls;
mod tls_harness;
mod wire;
