//! The `submit-config` payload: `{"jwk": {...}, "proof": "<base64url>"}` (WIRE.md section 5).

use super::keys::{KeyError, SIGNATURE_LEN, VerificationKey, decode_b64url};
use serde::Deserialize;

/// The largest configuration payload accepted, in bytes.
pub const CONFIG_MAX_LEN: usize = 8 * 1024;

/// Why a configuration payload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Over [`CONFIG_MAX_LEN`].
    #[error("configuration payload of {0} bytes exceeds 8 KiB")]
    TooLarge(usize),
    /// Not UTF-8 JSON, not an object, duplicate or unknown members, or missing members.
    #[error("configuration payload is not {{\"jwk\": {{...}}, \"proof\": \"...\"}}: {0}")]
    Malformed(String),
    /// The JWK is refused.
    #[error("configuration JWK refused: {0}")]
    Key(#[from] KeyError),
    /// The proof is not canonical base64url of a 64-byte signature.
    #[error("configuration proof is not unpadded base64url of a 64-byte signature")]
    Proof,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    jwk: serde_json::Value,
    proof: String,
}

/// A parsed configuration: the proposed key and its proof, not yet checked against a challenge.
#[derive(Debug, Clone)]
pub struct ConfigPayload {
    /// The verification key the resource will have.
    pub key: VerificationKey,
    /// The configuration proof's signature bytes.
    pub proof: [u8; SIGNATURE_LEN],
}

impl ConfigPayload {
    /// Parses and checks the payload's shape, key and proof encoding.
    pub fn parse(bytes: &[u8]) -> Result<ConfigPayload, ConfigError> {
        if bytes.len() > CONFIG_MAX_LEN {
            return Err(ConfigError::TooLarge(bytes.len()));
        }
        // serde's derive refuses duplicate members, which a map-based parse would let win.
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        if !wire.jwk.is_object() {
            return Err(ConfigError::Malformed("'jwk' must be an object".into()));
        }
        let key = VerificationKey::from_jwk_value(wire.jwk)?;
        let proof = decode_b64url(&wire.proof)
            .ok()
            .and_then(|raw| <[u8; SIGNATURE_LEN]>::try_from(raw).ok())
            .ok_or(ConfigError::Proof)?;
        Ok(ConfigPayload { key, proof })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ResourceId, config_message, encode_b64url};
    use ed25519_dalek::Signer as _;
    use proptest::prelude::*;
    use rand::rngs::OsRng;

    fn payload() -> (String, ed25519_dalek::SigningKey) {
        let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let id = ResourceId::from_bytes([5; 32]);
        let sig = sk.sign(&config_message(&[2; 32], &id)).to_bytes();
        let text = format!(
            r#"{{"jwk":{{"kty":"OKP","crv":"Ed25519","x":"{}"}},"proof":"{}"}}"#,
            encode_b64url(sk.verifying_key().as_bytes()),
            encode_b64url(&sig)
        );
        (text, sk)
    }

    #[test]
    fn section5_well_formed_payload_parses() {
        let (text, sk) = payload();
        let parsed = ConfigPayload::parse(text.as_bytes()).unwrap();
        let id = ResourceId::from_bytes([5; 32]);
        assert!(
            parsed
                .key
                .verify(&config_message(&[2; 32], &id), &parsed.proof)
                .is_ok()
        );
        assert_eq!(parsed.key, VerificationKey::Ed25519(sk.verifying_key()));
    }

    #[test]
    fn section5_unknown_duplicate_and_missing_members_are_refused() {
        let (text, _) = payload();
        let extra = text.replacen('{', r#"{"extra":1,"#, 1);
        assert!(matches!(
            ConfigPayload::parse(extra.as_bytes()),
            Err(ConfigError::Malformed(_))
        ));
        let dup = text.replacen('{', r#"{"proof":"AA","#, 1);
        assert!(matches!(
            ConfigPayload::parse(dup.as_bytes()),
            Err(ConfigError::Malformed(_))
        ));
        assert!(ConfigPayload::parse(br#"{"proof":"AA"}"#).is_err());
        assert!(ConfigPayload::parse(br#"{"jwk":{}}"#).is_err());
        assert!(ConfigPayload::parse(br#"{"jwk":"x","proof":"AA"}"#).is_err());
    }

    #[test]
    fn section5_malformed_json_and_bad_utf8_are_refused() {
        for bad in [
            &b"{"[..],
            b"",
            b"null",
            b"[1,2]",
            b"\xff\xfe{}",
            b"{\"jwk\":{},\"proof\":\"\xff\"}",
        ] {
            assert!(ConfigPayload::parse(bad).is_err());
        }
    }

    #[test]
    fn section5_oversize_is_refused_before_parsing() {
        let big = vec![b' '; CONFIG_MAX_LEN + 1];
        assert_eq!(
            ConfigPayload::parse(&big).unwrap_err(),
            ConfigError::TooLarge(CONFIG_MAX_LEN + 1)
        );
        // Whitespace padding up to the limit is still a valid payload.
        let (text, _) = payload();
        let padded = format!("{text}{}", " ".repeat(CONFIG_MAX_LEN - text.len()));
        assert!(ConfigPayload::parse(padded.as_bytes()).is_ok());
    }

    #[test]
    fn section5_proof_must_be_canonical_64_bytes() {
        let (text, _) = payload();
        let mut wire: serde_json::Value = serde_json::from_str(&text).unwrap();
        for bad in [
            "",
            "AAAA",
            "not base64!",
            &"A".repeat(85),
            &"A".repeat(87),
            &format!("{}==", "A".repeat(86)),
            &format!("{}B", "A".repeat(85)),
        ] {
            wire["proof"] = bad.into();
            assert_eq!(
                ConfigPayload::parse(wire.to_string().as_bytes()).unwrap_err(),
                ConfigError::Proof,
                "{bad}"
            );
        }
    }

    #[test]
    fn section5_private_jwk_is_refused() {
        let (text, _) = payload();
        let with_d = text.replace(r#""crv":"Ed25519""#, r#""crv":"Ed25519","d":"AA""#);
        assert_eq!(
            ConfigPayload::parse(with_d.as_bytes()).unwrap_err(),
            ConfigError::Key(KeyError::PrivateMember("d"))
        );
    }

    #[test]
    fn hostile_nesting_is_refused_without_overflow() {
        let deep = format!("{}{}", "[".repeat(4000), "]".repeat(4000));
        assert!(ConfigPayload::parse(deep.as_bytes()).is_err());
        let deep_jwk = format!(
            r#"{{"jwk":{}1{},"proof":"AA"}}"#,
            "[".repeat(3000),
            "]".repeat(3000)
        );
        assert!(ConfigPayload::parse(deep_jwk.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ConfigPayload::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_like_text(text in r#"[{}\[\]":,a-z0-9 ]{0,256}"#) {
            let _ = ConfigPayload::parse(text.as_bytes());
        }
    }
}
