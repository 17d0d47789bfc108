//! An actor's identity: an Ed25519 key pair that signs its operations (its public half is the
//! actor's identifier) and an X25519 key pair that resource keys are sealed to.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// An actor's identifier: its Ed25519 public key, 32 bytes, shown as 43 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId([u8; 32]);

impl ActorId {
    /// The identifier for these public key bytes (not checked to be a curve point; see
    /// [`ActorId::verify`]).
    pub fn from_bytes(bytes: [u8; 32]) -> ActorId {
        ActorId(bytes)
    }

    /// Parses the 43-character base64url form.
    pub fn parse(text: &str) -> Option<ActorId> {
        crate::from_b64(text).map(ActorId)
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `signature` is this actor's Ed25519 signature of `message` (strict: no
    /// malleable or small-order forms, as WebCrypto's Ed25519 also refuses them).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::b64(&self.0))
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({self})")
    }
}

/// What others need to know of an actor: its identifier and the key to seal resource keys to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicIdentity {
    /// Its identifier (Ed25519 public key).
    pub id: ActorId,
    /// Its X25519 public key.
    pub sealing: [u8; 32],
}

impl PublicIdentity {
    /// Text to hand to whoever shares with this actor: `<actor id>.<X25519 key>`, both
    /// base64url.
    pub fn to_text(&self) -> String {
        format!("{}.{}", self.id, crate::b64(&self.sealing))
    }

    /// Reads [`PublicIdentity::to_text`]; a degenerate (low-order) X25519 key is refused.
    pub fn parse(text: &str) -> Option<PublicIdentity> {
        let (id, sealing) = text.trim().split_once('.')?;
        let sealing = crate::from_b64::<32>(sealing)?;
        crate::seal::usable_key(&sealing).then_some(PublicIdentity {
            id: ActorId::parse(id)?,
            sealing,
        })
    }
}

/// An actor's secret keys.
pub struct Identity {
    signing: SigningKey,
    sealing: x25519_dalek::StaticSecret,
}

/// An identity's secret keys as stored on the actor's device (never sent anywhere).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredIdentity {
    /// Format version, 1.
    pub version: u32,
    /// The Ed25519 secret key (32 bytes, base64url).
    pub signing: String,
    /// The X25519 secret key (32 bytes, base64url).
    pub sealing: String,
}

/// Why stored keys could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a zbase identity (version 1 with two 32-byte base64url secret keys): {0}")]
pub struct IdentityError(&'static str);

impl Identity {
    /// A new identity from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Identity {
        let mut signing = Zeroizing::new([0u8; 32]);
        let mut sealing = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(signing.as_mut());
        rng.fill_bytes(sealing.as_mut());
        Identity::from_secrets(&signing, &sealing)
    }

    /// The identity with these secret keys (test vectors, and keys read back from storage).
    pub fn from_secrets(signing: &[u8; 32], sealing: &[u8; 32]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(signing),
            sealing: x25519_dalek::StaticSecret::from(*sealing),
        }
    }

    /// The actor's identifier.
    pub fn id(&self) -> ActorId {
        ActorId(self.signing.verifying_key().to_bytes())
    }

    /// What others need to know of this actor.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            id: self.id(),
            sealing: x25519_dalek::PublicKey::from(&self.sealing).to_bytes(),
        }
    }

    /// Signs `message` with the actor's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 secret, to open boxes sealed to this actor.
    pub(crate) fn sealing_secret(&self) -> &x25519_dalek::StaticSecret {
        &self.sealing
    }

    /// The secret keys in their stored form.
    pub fn to_stored(&self) -> StoredIdentity {
        StoredIdentity {
            version: 1,
            signing: crate::b64(self.signing.as_bytes()),
            sealing: crate::b64(self.sealing.as_bytes()),
        }
    }

    /// Reads secret keys back from their stored form.
    pub fn from_stored(stored: &StoredIdentity) -> Result<Identity, IdentityError> {
        if stored.version != 1 {
            return Err(IdentityError("unknown version"));
        }
        let signing = Zeroizing::new(
            crate::from_b64::<32>(&stored.signing).ok_or(IdentityError("bad signing key"))?,
        );
        let sealing = Zeroizing::new(
            crate::from_b64::<32>(&stored.sealing).ok_or(IdentityError("bad sealing key"))?,
        );
        Ok(Identity::from_secrets(&signing, &sealing))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        write!(f, "Identity({})", self.id())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_identity_survives_storage_and_signs_what_its_id_verifies() {
        let identity = Identity::generate(&mut rand::rngs::OsRng);
        let json = serde_json::to_string(&identity.to_stored()).unwrap();
        let back = Identity::from_stored(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.public(), identity.public());
        let signature = back.sign(b"message");
        assert!(identity.id().verify(b"message", &signature));
        assert!(!identity.id().verify(b"massage", &signature));
        assert_eq!(
            ActorId::parse(&identity.id().to_string()),
            Some(identity.id())
        );
        assert!(!format!("{identity:?}").contains(&json));
    }

    #[test]
    fn malformed_stored_keys_are_refused() {
        for bad in [
            r#"{"version":2,"signing":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","sealing":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
            r#"{"version":1,"signing":"short","sealing":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
            r#"{"version":1,"signing":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","sealing":"!!"}"#,
        ] {
            let stored: StoredIdentity = serde_json::from_str(bad).unwrap();
            assert!(Identity::from_stored(&stored).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<StoredIdentity>(r#"{"version":1,"extra":1}"#).is_err());
    }
}
