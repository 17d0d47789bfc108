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

/// The domain tag of an actor's signature over its own sealing key.
pub const SEALING_PROOF_TAG: &[u8; 20] = b"zbase sealing key v1";

/// What others need to know of an actor: its identifier, the key to seal resource keys to,
/// and the actor's signature binding the two.
///
/// The signature is what stops anyone else from naming a key of their own as this actor's:
/// keys are sent to a member's sealing key after every rotation, so whoever could choose it
/// would go on reading after losing its own access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicIdentity {
    /// Its identifier (Ed25519 public key).
    pub id: ActorId,
    /// Its X25519 public key.
    pub sealing: [u8; 32],
    /// The actor's Ed25519 signature of [`sealing_proof_message`] for these two.
    pub proof: [u8; 64],
}

/// The bytes an actor signs to claim `sealing` as its key: the tag, its identifier, the key.
pub fn sealing_proof_message(id: &ActorId, sealing: &[u8; 32]) -> [u8; 84] {
    let mut message = [0u8; 84];
    message[..20].copy_from_slice(SEALING_PROOF_TAG);
    message[20..52].copy_from_slice(id.as_bytes());
    message[52..].copy_from_slice(sealing);
    message
}

impl PublicIdentity {
    /// These three parts, if the proof is the actor's signature of the sealing key and the
    /// key is usable (not of low order).
    pub fn verified(id: ActorId, sealing: [u8; 32], proof: [u8; 64]) -> Option<PublicIdentity> {
        (crate::seal::usable_key(&sealing)
            && id.verify(&sealing_proof_message(&id, &sealing), &proof))
        .then_some(PublicIdentity { id, sealing, proof })
    }

    /// Reads the three parts from base64url text, verified as [`PublicIdentity::verified`].
    pub fn from_parts(id: &str, sealing: &str, proof: &str) -> Option<PublicIdentity> {
        PublicIdentity::verified(
            ActorId::parse(id)?,
            crate::from_b64::<32>(sealing)?,
            crate::from_b64::<64>(proof)?,
        )
    }

    /// Text to hand to whoever shares with this actor: `<actor id>.<X25519 key>.<proof>`,
    /// each base64url.
    pub fn to_text(&self) -> String {
        format!(
            "{}.{}.{}",
            self.id,
            crate::b64(&self.sealing),
            crate::b64(&self.proof)
        )
    }

    /// Reads [`PublicIdentity::to_text`]; `None` unless it verifies.
    pub fn parse(text: &str) -> Option<PublicIdentity> {
        let mut parts = text.trim().split('.');
        let (id, sealing, proof) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        PublicIdentity::from_parts(id, sealing, proof)
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

    /// What others need to know of this actor (Ed25519 is deterministic: the same every
    /// time).
    pub fn public(&self) -> PublicIdentity {
        let id = self.id();
        let sealing = x25519_dalek::PublicKey::from(&self.sealing).to_bytes();
        let proof = self.sign(&sealing_proof_message(&id, &sealing));
        PublicIdentity { id, sealing, proof }
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
    fn a_public_identity_reads_back_only_with_its_own_proof() {
        let me = Identity::from_secrets(&[1; 32], &[2; 32]);
        let other = Identity::from_secrets(&[3; 32], &[4; 32]);
        let public = me.public();
        assert_eq!(PublicIdentity::parse(&public.to_text()), Some(public));
        assert_eq!(
            PublicIdentity::parse(&format!(" {}\n", public.to_text())),
            Some(public)
        );
        // Another actor's key under my name, with my proof or with theirs: refused.
        let theirs = other.public();
        let b64 = crate::b64;
        for forged in [
            format!(
                "{}.{}.{}",
                public.id,
                b64(&theirs.sealing),
                b64(&public.proof)
            ),
            format!(
                "{}.{}.{}",
                public.id,
                b64(&theirs.sealing),
                b64(&theirs.proof)
            ),
            format!("{}.{}", public.id, b64(&public.sealing)),
            format!("{}.x", public.to_text()),
            format!("{}.{}.{}", public.id, b64(&[0u8; 32]), b64(&public.proof)),
            String::new(),
        ] {
            assert_eq!(PublicIdentity::parse(&forged), None, "{forged}");
        }
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
