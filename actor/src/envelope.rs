//! Envelopes: a resource snapshot encrypted under the resource's content key, bound to the
//! resource's identifier, in the only form the station ever sees.
//!
//! ```text
//! "zbe1" | key epoch (u32, big-endian) | nonce (12) | AES-256-GCM ciphertext and tag (16)
//! ```
//!
//! The AES key is HKDF-SHA-256(content key, no salt, info "zbase/v1/envelope"); the
//! additional data is the first 8 bytes followed by the resource identifier's 43 ASCII
//! characters, so an envelope copied to another resource, or relabelled with another epoch,
//! does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::{CryptoRng, RngCore};
use zbase_proto::wire::ResourceId;
use zeroize::Zeroizing;

/// The first four bytes of every version-1 envelope.
pub const MAGIC: &[u8; 4] = b"zbe1";
/// Bytes before the ciphertext: magic, epoch, nonce.
pub const HEADER_LEN: usize = 4 + 4 + 12;
/// AES-GCM's tag.
pub const TAG_LEN: usize = 16;
const INFO: &[u8] = b"zbase/v1/envelope";

/// A resource's content key of one epoch (a revocation starts the next epoch with a new key).
#[derive(Clone)]
pub struct ContentKey {
    epoch: u32,
    key: Zeroizing<[u8; 32]>,
}

impl ContentKey {
    /// A new random key for `epoch`.
    pub fn generate(epoch: u32, rng: &mut (impl RngCore + CryptoRng)) -> ContentKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        ContentKey { epoch, key }
    }

    /// The key of `epoch` with these bytes (opened from a sealed box, or a test vector).
    pub fn from_bytes(epoch: u32, key: [u8; 32]) -> ContentKey {
        ContentKey {
            epoch,
            key: Zeroizing::new(key),
        }
    }

    /// The epoch this key encrypts.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The key bytes (to seal them to a member).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn cipher(&self) -> Aes256Gcm {
        let key = crate::derive_key(self.key.as_ref(), &[], INFO);
        Aes256Gcm::new(key.as_ref().into())
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentKey(epoch {})", self.epoch)
    }
}

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short to hold a header and a tag.
    #[error("not an envelope: {0} bytes, fewer than a header and a tag")]
    Truncated(usize),
    /// Another format or version.
    #[error("not a version-1 envelope (it does not start with \"zbe1\")")]
    UnknownVersion,
    /// Encrypted under an epoch whose key this actor does not hold.
    #[error(
        "encrypted under key epoch {0}, which this actor does not hold (revoked before it, or not yet received)"
    )]
    NoKey(u32),
    /// Wrong key, another resource, or altered on the way.
    #[error(
        "the envelope does not authenticate: altered, of another resource, or under another key"
    )]
    Forged,
}

fn aad(header: &[u8], resource: &ResourceId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + resource.as_str().len());
    aad.extend_from_slice(&header[..8]);
    aad.extend_from_slice(resource.as_str().as_bytes());
    aad
}

/// Encrypts `snapshot` for `resource` under `key`, with a random nonce.
pub fn encrypt(
    key: &ContentKey,
    resource: &ResourceId,
    snapshot: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    encrypt_with_nonce(key, resource, snapshot, nonce)
}

/// [`encrypt`] with a given nonce: for test vectors only, since a nonce must never repeat
/// under one key.
pub fn encrypt_with_nonce(
    key: &ContentKey,
    resource: &ResourceId,
    snapshot: &[u8],
    nonce: [u8; 12],
) -> Vec<u8> {
    let mut envelope = Vec::with_capacity(HEADER_LEN + snapshot.len() + TAG_LEN);
    envelope.extend_from_slice(MAGIC);
    envelope.extend_from_slice(&key.epoch.to_be_bytes());
    envelope.extend_from_slice(&nonce);
    let aad = aad(&envelope, resource);
    // AES-GCM encryption fails only past 64 GiB of plaintext, far beyond any frame.
    let sealed = key
        .cipher()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: snapshot,
                aad: &aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("AES-256-GCM encrypts anything below 64 GiB"));
    envelope.extend_from_slice(&sealed);
    envelope
}

/// The key epoch an envelope says it is encrypted under (to pick the key).
pub fn epoch_of(envelope: &[u8]) -> Result<u32, EnvelopeError> {
    if envelope.len() < HEADER_LEN + TAG_LEN {
        return Err(EnvelopeError::Truncated(envelope.len()));
    }
    if &envelope[..4] != MAGIC {
        return Err(EnvelopeError::UnknownVersion);
    }
    let mut epoch = [0u8; 4];
    epoch.copy_from_slice(&envelope[4..8]);
    Ok(u32::from_be_bytes(epoch))
}

/// Opens `envelope` of `resource` with whichever of `keys` has its epoch.
pub fn decrypt(
    keys: &[ContentKey],
    resource: &ResourceId,
    envelope: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let epoch = epoch_of(envelope)?;
    let key = keys
        .iter()
        .find(|key| key.epoch == epoch)
        .ok_or(EnvelopeError::NoKey(epoch))?;
    let aad = aad(envelope, resource);
    key.cipher()
        .decrypt(
            &Nonce::from(crate::nonce(&envelope[8..HEADER_LEN])),
            Payload {
                msg: &envelope[HEADER_LEN..],
                aad: &aad,
            },
        )
        .map_err(|_| EnvelopeError::Forged)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn resource(byte: u8) -> ResourceId {
        ResourceId::from_bytes([byte; 32])
    }

    #[test]
    fn an_envelope_opens_only_for_its_resource_and_key() {
        let rng = &mut rand::rngs::OsRng;
        let key = ContentKey::generate(1, rng);
        let sealed = encrypt(&key, &resource(1), b"state", rng);
        assert_eq!(decrypt(&[key], &resource(1), &sealed).unwrap(), b"state");
        let key = ContentKey::from_bytes(1, *ContentKey::generate(1, rng).bytes());
        assert_eq!(
            decrypt(&[key], &resource(1), &sealed),
            Err(EnvelopeError::Forged)
        );
    }

    #[test]
    fn another_resource_another_epoch_or_a_stranger_format_is_refused() {
        let rng = &mut rand::rngs::OsRng;
        let key = ContentKey::from_bytes(3, [7; 32]);
        let sealed = encrypt(&key, &resource(1), b"state", rng);
        let keys = [ContentKey::from_bytes(3, [7; 32])];
        assert_eq!(
            decrypt(&keys, &resource(2), &sealed),
            Err(EnvelopeError::Forged)
        );
        let mut relabelled = sealed.clone();
        relabelled[7] = 4;
        assert_eq!(
            decrypt(&keys, &resource(1), &relabelled),
            Err(EnvelopeError::NoKey(4))
        );
        let keys4 = [ContentKey::from_bytes(4, [7; 32])];
        assert_eq!(
            decrypt(&keys4, &resource(1), &relabelled),
            Err(EnvelopeError::Forged)
        );
        let mut other = sealed.clone();
        other[3] = b'2';
        assert_eq!(
            decrypt(&keys, &resource(1), &other),
            Err(EnvelopeError::UnknownVersion)
        );
        assert_eq!(
            decrypt(&keys, &resource(1), &sealed[..HEADER_LEN + TAG_LEN - 1]),
            Err(EnvelopeError::Truncated(HEADER_LEN + TAG_LEN - 1))
        );
    }

    proptest! {
        #[test]
        fn any_snapshot_round_trips_and_any_flipped_bit_is_refused(
            snapshot in proptest::collection::vec(any::<u8>(), 0..512),
            bit in any::<prop::sample::Index>(),
        ) {
            let key = ContentKey::from_bytes(1, [9; 32]);
            let sealed = encrypt_with_nonce(&key, &resource(5), &snapshot, [1; 12]);
            let keys = [key];
            prop_assert_eq!(decrypt(&keys, &resource(5), &sealed).unwrap(), snapshot);
            let mut flipped = sealed.clone();
            let at = bit.index(flipped.len() * 8);
            flipped[at / 8] ^= 1 << (at % 8);
            prop_assert!(decrypt(&keys, &resource(5), &flipped).is_err());
        }
    }
}
