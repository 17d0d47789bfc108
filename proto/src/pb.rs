//! Generated gRPC and protobuf code for `proto/zbase/v1/*.proto` (the client contract's
//! `Station` and the site-to-site `Replication`); never edited by hand.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("zbase.v1");

/// The gRPC request metadata key that carries the resource identifier (WIRE.md section 7).
pub const RESOURCE_ID_METADATA: &str = "zbase-resource-id";
