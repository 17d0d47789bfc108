//! Sealed boxes: a resource's content key encrypted to one member's X25519 key, so the key
//! travels inside the (itself encrypted) snapshot and only members can take it out.
//!
//! ```text
//! "zbs1" | ephemeral X25519 public key (32) | nonce (12) | AES-256-GCM(content key) and tag
//! ```
//!
//! The AES key is HKDF-SHA-256(X25519(ephemeral, recipient), salt = ephemeral public key then
//! recipient public key, info "zbase/v1/seal"); the additional data is "zbs1", the resource
//! identifier's 43 characters and the key epoch (u32, big-endian), so a box opens only as the
//! key of that resource and epoch.

use crate::envelope::ContentKey;
use crate::identity::Identity;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::{CryptoRng, RngCore};
use zbase_proto::wire::ResourceId;
use zeroize::Zeroizing;

/// The first four bytes of every version-1 sealed box.
pub const MAGIC: &[u8; 4] = b"zbs1";
/// A sealed box's length: magic, ephemeral key, nonce, key and tag.
pub const SEALED_LEN: usize = 4 + 32 + 12 + 32 + 16;
const INFO: &[u8] = b"zbase/v1/seal";

/// Why a sealed box did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not the length of a version-1 box.
    #[error("not a sealed key: {0} bytes where a version-1 box has {SEALED_LEN}")]
    Length(usize),
    /// Another format or version.
    #[error("not a version-1 sealed key (it does not start with \"zbs1\")")]
    UnknownVersion,
    /// A low-order X25519 key (the ephemeral one, or the recipient's): no secret is shared.
    #[error("a degenerate X25519 public key: no secret can be shared with it")]
    Degenerate,
    /// Sealed to someone else, for another resource or epoch, or altered.
    #[error(
        "the sealed key does not open: not sealed to this actor, or for another resource or epoch"
    )]
    Forged,
}

fn aad(resource: &ResourceId, epoch: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + 43 + 4);
    aad.extend_from_slice(MAGIC);
    aad.extend_from_slice(resource.as_str().as_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

fn cipher(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Aes256Gcm {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let key = crate::derive_key(shared, &salt, INFO);
    Aes256Gcm::new(key.as_ref().into())
}

/// Whether `public` is an X25519 key a secret can be shared with: not one of the low-order
/// points, with which every shared secret is zero (anyone could open what is sealed to it).
pub fn usable_key(public: &[u8; 32]) -> bool {
    x25519_dalek::StaticSecret::from([0x42; 32])
        .diffie_hellman(&x25519_dalek::PublicKey::from(*public))
        .was_contributory()
}

/// Seals `key` of `resource` to the member whose X25519 public key is `recipient`.
pub fn seal(
    key: &ContentKey,
    resource: &ResourceId,
    recipient: &[u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, SealError> {
    let mut ephemeral = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    rng.fill_bytes(ephemeral.as_mut());
    rng.fill_bytes(&mut nonce);
    seal_with(key, resource, recipient, &ephemeral, nonce)
}

/// [`seal`] with a given ephemeral secret and nonce: for test vectors only.
pub fn seal_with(
    key: &ContentKey,
    resource: &ResourceId,
    recipient: &[u8; 32],
    ephemeral: &[u8; 32],
    nonce: [u8; 12],
) -> Result<Vec<u8>, SealError> {
    if !usable_key(recipient) {
        return Err(SealError::Degenerate);
    }
    let secret = x25519_dalek::StaticSecret::from(*ephemeral);
    let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let shared = Zeroizing::new(
        secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*recipient))
            .to_bytes(),
    );
    let mut sealed = Vec::with_capacity(SEALED_LEN);
    sealed.extend_from_slice(MAGIC);
    sealed.extend_from_slice(&public);
    sealed.extend_from_slice(&nonce);
    let aad = aad(resource, key.epoch());
    let boxed = cipher(&shared, &public, recipient)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: key.bytes(),
                aad: &aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("AES-256-GCM encrypts 32 bytes"));
    sealed.extend_from_slice(&boxed);
    Ok(sealed)
}

/// Opens a box sealed to `identity`: the content key of `resource` at `epoch`.
pub fn open(
    identity: &Identity,
    resource: &ResourceId,
    epoch: u32,
    sealed: &[u8],
) -> Result<ContentKey, SealError> {
    if sealed.len() != SEALED_LEN {
        return Err(SealError::Length(sealed.len()));
    }
    if &sealed[..4] != MAGIC {
        return Err(SealError::UnknownVersion);
    }
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(&sealed[4..36]);
    let shared = identity
        .sealing_secret()
        .diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(SealError::Degenerate);
    }
    let shared = Zeroizing::new(shared.to_bytes());
    let recipient = identity.public().sealing;
    let aad = aad(resource, epoch);
    let key = cipher(&shared, &ephemeral, &recipient)
        .decrypt(
            &Nonce::from(crate::nonce(&sealed[36..48])),
            Payload {
                msg: &sealed[48..],
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Forged)?;
    let key: [u8; 32] = key.try_into().map_err(|_| SealError::Forged)?;
    Ok(ContentKey::from_bytes(epoch, key))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_key_opens_for_its_member_resource_and_epoch_only() {
        let rng = &mut rand::rngs::OsRng;
        let member = Identity::generate(rng);
        let stranger = Identity::generate(rng);
        let id = ResourceId::from_bytes([1; 32]);
        let key = ContentKey::generate(2, rng);
        let sealed = seal(&key, &id, &member.public().sealing, rng).unwrap();
        assert_eq!(sealed.len(), SEALED_LEN);
        assert_eq!(seal(&key, &id, &[0; 32], rng), Err(SealError::Degenerate));
        assert_eq!(open(&member, &id, 2, &sealed).unwrap().bytes(), key.bytes());
        assert_eq!(
            open(&stranger, &id, 2, &sealed).unwrap_err(),
            SealError::Forged
        );
        assert_eq!(
            open(&member, &id, 3, &sealed).unwrap_err(),
            SealError::Forged
        );
        let other = ResourceId::from_bytes([2; 32]);
        assert_eq!(
            open(&member, &other, 2, &sealed).unwrap_err(),
            SealError::Forged
        );
    }

    #[test]
    fn malformed_and_degenerate_boxes_are_refused() {
        let rng = &mut rand::rngs::OsRng;
        let member = Identity::generate(rng);
        let id = ResourceId::from_bytes([1; 32]);
        let sealed = seal(
            &ContentKey::generate(1, rng),
            &id,
            &member.public().sealing,
            rng,
        )
        .unwrap();
        assert_eq!(
            open(&member, &id, 1, &sealed[1..]).unwrap_err(),
            SealError::Length(SEALED_LEN - 1)
        );
        let mut version = sealed.clone();
        version[3] = b'9';
        assert_eq!(
            open(&member, &id, 1, &version).unwrap_err(),
            SealError::UnknownVersion
        );
        let mut zero = sealed.clone();
        zero[4..36].fill(0);
        assert_eq!(
            open(&member, &id, 1, &zero).unwrap_err(),
            SealError::Degenerate
        );
        let mut flipped = sealed;
        flipped[60] ^= 1;
        assert_eq!(
            open(&member, &id, 1, &flipped).unwrap_err(),
            SealError::Forged
        );
    }
}
