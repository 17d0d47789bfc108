//! The actor side of z-base: what runs on a user's devices and makes the station useful
//! without trusting it. An actor holds an [`Identity`] (an Ed25519 key that signs and names
//! it, and an X25519 key others seal resource keys to), encrypts each resource snapshot into
//! an [`envelope`] under the resource's content key, hands that key to members in
//! [`seal`]ed boxes, and records every change as a signed [`operation`].
//!
//! Every format here is byte-exact and versioned (docs/ACTOR-FORMATS.md), built from
//! primitives a browser has in WebCrypto: Ed25519, X25519, HKDF-SHA-256 and AES-256-GCM. The
//! test vectors in `vectors/v1.json` are the contract between this crate and any other
//! implementation.

pub mod access;
pub mod acl;
pub mod bundle;
pub mod envelope;
pub mod identity;
pub mod local;
pub mod mailbox;
pub mod merge;
pub mod operation;
pub mod seal;
pub mod station;
pub mod sync;

pub use access::AccessKey;
pub use acl::{Acl, Role};
pub use envelope::{ContentKey, EnvelopeError};
pub use identity::{ActorId, Identity, PublicIdentity};
pub use merge::{Change, Merged, Rejection, merge};
pub use operation::{OpId, Operation, OperationError, SignedOperation};
pub use seal::SealError;
pub use sync::{Device, SyncError, SyncReport, ValueChange};

/// Base64url without padding, the text form of every key, identifier and signature here.
pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads base64url without padding into exactly `N` bytes.
pub(crate) fn from_b64<const N: usize>(text: &str) -> Option<[u8; N]> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

/// The AES-256-GCM key HKDF-SHA-256 derives from `ikm` for one purpose (`info`).
pub(crate) fn derive_key(ikm: &[u8], salt: &[u8], info: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA-256's limit of 255 blocks: the expansion cannot fail.
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), ikm)
        .expand(info, key.as_mut())
        .unwrap_or_else(|_| unreachable!("HKDF-SHA-256 expands 32 bytes"));
    key
}

/// The 12 bytes of a nonce field (callers slice exactly 12).
pub(crate) fn nonce(field: &[u8]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&field[..12]);
    nonce
}
