//! Generated gRPC and protobuf code for `proto/zbase/v1/*.proto` (the client contract's
//! `Station` and the site-to-site `Replication`); never edited by hand.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("zbase.v1");

/// The gRPC request metadata key that carries the resource identifier (WIRE.md section 7).
pub const RESOURCE_ID_METADATA: &str = "zbase-resource-id";

impl Frame {
    /// The message carrying an already encoded frame (`[version][code][payload]`), as the
    /// station queues them; the version is the contract's.
    pub fn from_encoded(bytes: bytes::Bytes) -> Frame {
        Frame {
            version: crate::wire::VERSION.into(),
            code: bytes.get(1).copied().unwrap_or_default().into(),
            payload: bytes.slice(crate::wire::HEADER_LEN.min(bytes.len())..),
        }
    }
}

/// The resource identifier a request's metadata names, or the status that refuses it
/// (WIRE.md section 7: a missing or invalid `zbase-resource-id` is `INVALID_ARGUMENT`).
pub fn resource_id(
    metadata: &tonic::metadata::MetadataMap,
) -> Result<crate::wire::ResourceId, tonic::Status> {
    metadata
        .get(RESOURCE_ID_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| crate::wire::ResourceId::parse(text).ok())
        .ok_or_else(|| {
            tonic::Status::invalid_argument(
                "metadata 'zbase-resource-id' must be a 43-character canonical base64url identifier",
            )
        })
}
