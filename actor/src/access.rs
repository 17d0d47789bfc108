//! A resource's access key: the Ed25519 key the station checks at the door (WIRE.md section 4).
//!
//! It is not an actor's identity: every resource gets a fresh one, so the station cannot link
//! two resources, or a resource to an actor. Every member holds the same access key; it opens
//! no content, and revoking a member replaces it on the station (docs/KEY-ROTATION.md) so the
//! revoked member cannot even connect.

use ed25519_dalek::{Signer as _, SigningKey};
use rand::{CryptoRng, RngCore};
use zbase_proto::wire::{
    Challenge, ResourceId, VerificationKey, config_message, rotate_message, rotate_proof_message,
    verify_message,
};
use zeroize::Zeroizing;

/// The Ed25519 key a resource's members prove to the station.
#[derive(Clone)]
pub struct AccessKey(SigningKey);

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKey({})", crate::b64(&self.thumbprint()))
    }
}

impl PartialEq for AccessKey {
    fn eq(&self, other: &AccessKey) -> bool {
        self.0.verifying_key() == other.0.verifying_key()
    }
}

impl AccessKey {
    /// A new key from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> AccessKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        AccessKey::from_seed(&seed)
    }

    /// The key with this 32-byte secret.
    pub fn from_seed(seed: &[u8; 32]) -> AccessKey {
        AccessKey(SigningKey::from_bytes(seed))
    }

    /// The secret, base64url: how members hand the key to each other (always encrypted).
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(crate::b64(self.0.as_bytes()))
    }

    /// Reads [`AccessKey::to_text`] back.
    pub fn from_text(text: &str) -> Option<AccessKey> {
        let seed = Zeroizing::new(crate::from_b64::<32>(text)?);
        Some(AccessKey::from_seed(&seed))
    }

    /// The public JWK the station stores.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": self.public_x()})
    }

    fn public_x(&self) -> String {
        crate::b64(self.0.verifying_key().as_bytes())
    }

    /// The RFC 7638 SHA-256 thumbprint of the public JWK, as the station computes it.
    pub fn thumbprint(&self) -> [u8; 32] {
        VerificationKey::Ed25519(self.0.verifying_key()).thumbprint()
    }

    /// The `submit-config` payload proposing `id` for this key.
    pub fn config_payload(&self, challenge: &Challenge, id: &ResourceId) -> Vec<u8> {
        let proof = self.0.sign(&config_message(challenge, id)).to_bytes();
        json_bytes(&serde_json::json!({"jwk": self.jwk(), "proof": crate::b64(&proof)}))
    }

    /// The `submit-verification` payload: the signature of the challenge.
    pub fn verification(&self, challenge: &Challenge, id: &ResourceId) -> [u8; 64] {
        self.0.sign(&verify_message(challenge, id)).to_bytes()
    }

    /// The `rotate-key` payload that replaces this key by `next`, on the session whose rotation
    /// challenge is `challenge`.
    pub fn rotation_payload(
        &self,
        next: &AccessKey,
        challenge: &Challenge,
        id: &ResourceId,
    ) -> Vec<u8> {
        let proof = next.0.sign(&rotate_proof_message(challenge, id));
        let authorization = self
            .0
            .sign(&rotate_message(challenge, id, &next.thumbprint()));
        json_bytes(&serde_json::json!({
            "jwk": next.jwk(),
            "proof": crate::b64(&proof.to_bytes()),
            "authorization": crate::b64(&authorization.to_bytes()),
        }))
    }
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    // Serialising a JSON value built in memory cannot fail.
    serde_json::to_vec(value).unwrap_or_else(|_| unreachable!("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_is_rfc_7638_of_the_public_jwk() {
        // RFC 8037 appendix A: the Ed25519 key and its RFC 7638 thumbprint.
        let seed: [u8; 32] = crate::from_b64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("the RFC's secret key is 32 bytes");
        let key = AccessKey::from_seed(&seed);
        assert_eq!(
            key.public_x(),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(
            crate::b64(&key.thumbprint()),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn a_key_survives_its_text_form_and_junk_is_refused() {
        let key = AccessKey::generate(&mut rand::rngs::OsRng);
        assert_eq!(AccessKey::from_text(&key.to_text()), Some(key));
        assert_eq!(AccessKey::from_text("short"), None);
        assert_eq!(AccessKey::from_text(&"A".repeat(44)), None);
    }
}
