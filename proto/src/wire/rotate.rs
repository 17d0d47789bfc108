//! The `rotate-key` payload of extension R1 (docs/KEY-ROTATION.md):
//! `{"jwk": {...}, "proof": "<base64url>", "authorization": "<base64url>"}`.
//!
//! Parsing checks shape and encodings only; which key must have signed what, over which
//! challenge, is the session's business, since only it knows the challenge and current key.

use super::keys::{KeyError, SIGNATURE_LEN, VerificationKey, decode_b64url};
use serde::Deserialize;

/// The largest `rotate-key` payload accepted, in bytes (as for `submit-config`).
pub const ROTATE_MAX_LEN: usize = 8 * 1024;

/// Why a `rotate-key` payload is refused. Every one ends the session as a failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// Over [`ROTATE_MAX_LEN`].
    #[error("rotate-key payload of {0} bytes exceeds 8 KiB")]
    TooLarge(usize),
    /// Not UTF-8 JSON, not an object, duplicate or unknown members, or missing members.
    #[error(
        "rotate-key payload is not {{\"jwk\": {{...}}, \"proof\": \"...\", \"authorization\": \"...\"}}: {0}"
    )]
    Malformed(String),
    /// The new JWK is refused by the rules of WIRE.md section 4.
    #[error("rotate-key JWK refused: {0}")]
    Key(#[from] KeyError),
    /// The proof is not canonical unpadded base64url of a 64-byte signature.
    #[error("rotate-key proof is not unpadded base64url of a 64-byte signature")]
    Proof,
    /// The authorization is not canonical unpadded base64url of a 64-byte signature.
    #[error("rotate-key authorization is not unpadded base64url of a 64-byte signature")]
    Authorization,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    jwk: serde_json::Value,
    proof: String,
    authorization: String,
}

/// A parsed rotation request, not yet checked against a challenge or the current key.
#[derive(Debug, Clone)]
pub struct RotatePayload {
    /// The key that is to replace the resource's current one.
    pub key: VerificationKey,
    /// The new key's signature over `rotate_proof_message`.
    pub proof: [u8; SIGNATURE_LEN],
    /// The current key's signature over `rotate_message`.
    pub authorization: [u8; SIGNATURE_LEN],
}

impl RotatePayload {
    /// Parses and checks the payload's shape, key and signature encodings.
    pub fn parse(bytes: &[u8]) -> Result<RotatePayload, RotateError> {
        if bytes.len() > ROTATE_MAX_LEN {
            return Err(RotateError::TooLarge(bytes.len()));
        }
        // serde's derive refuses duplicate members, which a map-based parse would let win.
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| RotateError::Malformed(e.to_string()))?;
        if !wire.jwk.is_object() {
            return Err(RotateError::Malformed("'jwk' must be an object".into()));
        }
        let key = VerificationKey::from_jwk_value(wire.jwk)?;
        let proof = signature(&wire.proof).ok_or(RotateError::Proof)?;
        let authorization = signature(&wire.authorization).ok_or(RotateError::Authorization)?;
        Ok(RotatePayload {
            key,
            proof,
            authorization,
        })
    }
}

fn signature(text: &str) -> Option<[u8; SIGNATURE_LEN]> {
    decode_b64url(text)
        .ok()
        .and_then(|raw| <[u8; SIGNATURE_LEN]>::try_from(raw).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ResourceId, encode_b64url, rotate_message, rotate_proof_message};
    use ed25519_dalek::Signer as _;
    use proptest::prelude::*;
    use rand::rngs::OsRng;

    fn id() -> ResourceId {
        ResourceId::from_bytes([5; 32])
    }

    /// A valid payload rotating from `old` to a fresh key over challenge `[2; 32]`.
    fn payload() -> (serde_json::Value, ed25519_dalek::SigningKey) {
        let old = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let new = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let key = VerificationKey::Ed25519(new.verifying_key());
        let proof = new.sign(&rotate_proof_message(&[2; 32], &id())).to_bytes();
        let auth = old
            .sign(&rotate_message(&[2; 32], &id(), &key.thumbprint()))
            .to_bytes();
        let wire = serde_json::json!({
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(new.verifying_key().as_bytes())},
            "proof": encode_b64url(&proof),
            "authorization": encode_b64url(&auth),
        });
        (wire, new)
    }

    #[test]
    fn well_formed_payload_parses() {
        let (wire, new) = payload();
        let parsed = RotatePayload::parse(wire.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.key, VerificationKey::Ed25519(new.verifying_key()));
        assert!(
            parsed
                .key
                .verify(&rotate_proof_message(&[2; 32], &id()), &parsed.proof)
                .is_ok()
        );
    }

    #[test]
    fn unknown_duplicate_and_missing_members_are_refused() {
        let (wire, _) = payload();
        let text = wire.to_string();
        let extra = text.replacen('{', r#"{"extra":1,"#, 1);
        assert!(matches!(
            RotatePayload::parse(extra.as_bytes()),
            Err(RotateError::Malformed(_))
        ));
        for member in ["proof", "authorization"] {
            let dup = text.replacen('{', &format!(r#"{{"{member}":"AA","#), 1);
            assert!(
                matches!(
                    RotatePayload::parse(dup.as_bytes()),
                    Err(RotateError::Malformed(_))
                ),
                "duplicate {member}"
            );
        }
        let dup_jwk = text.replacen('{', r#"{"jwk":{},"#, 1);
        assert!(matches!(
            RotatePayload::parse(dup_jwk.as_bytes()),
            Err(RotateError::Malformed(_))
        ));
        for missing in ["jwk", "proof", "authorization"] {
            let mut partial = wire.clone();
            partial.as_object_mut().unwrap().remove(missing);
            assert!(
                matches!(
                    RotatePayload::parse(partial.to_string().as_bytes()),
                    Err(RotateError::Malformed(_))
                ),
                "missing {missing}"
            );
        }
        let mut not_object = wire.clone();
        not_object["jwk"] = "x".into();
        assert!(matches!(
            RotatePayload::parse(not_object.to_string().as_bytes()),
            Err(RotateError::Malformed(_))
        ));
    }

    #[test]
    fn a_config_payload_is_not_a_rotate_payload() {
        let (mut wire, _) = payload();
        wire.as_object_mut().unwrap().remove("authorization");
        assert!(RotatePayload::parse(wire.to_string().as_bytes()).is_err());
    }

    #[test]
    fn malformed_json_and_bad_utf8_are_refused() {
        for bad in [
            &b"{"[..],
            b"",
            b"null",
            b"[1,2]",
            b"\"jwk\"",
            b"\xff\xfe{}",
            b"{\"jwk\":{},\"proof\":\"\xff\",\"authorization\":\"AA\"}",
        ] {
            assert!(matches!(
                RotatePayload::parse(bad),
                Err(RotateError::Malformed(_))
            ));
        }
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let big = vec![b' '; ROTATE_MAX_LEN + 1];
        assert_eq!(
            RotatePayload::parse(&big).unwrap_err(),
            RotateError::TooLarge(ROTATE_MAX_LEN + 1)
        );
        let (wire, _) = payload();
        let text = wire.to_string();
        let padded = format!("{text}{}", " ".repeat(ROTATE_MAX_LEN - text.len()));
        assert!(RotatePayload::parse(padded.as_bytes()).is_ok());
        let over = format!("{padded} ");
        assert_eq!(
            RotatePayload::parse(over.as_bytes()).unwrap_err(),
            RotateError::TooLarge(ROTATE_MAX_LEN + 1)
        );
    }

    #[test]
    fn signatures_must_be_canonical_64_bytes() {
        let bad_values = [
            "".to_owned(),
            "AAAA".to_owned(),
            "not base64!".to_owned(),
            "A".repeat(85),
            "A".repeat(87),
            format!("{}==", "A".repeat(86)),
            format!("{}B", "A".repeat(85)),
            // 63 and 65 bytes.
            encode_b64url(&[1; 63]),
            encode_b64url(&[1; 65]),
        ];
        for (member, error) in [
            ("proof", RotateError::Proof),
            ("authorization", RotateError::Authorization),
        ] {
            let (mut wire, _) = payload();
            for bad in &bad_values {
                wire[member] = bad.as_str().into();
                assert_eq!(
                    RotatePayload::parse(wire.to_string().as_bytes()).unwrap_err(),
                    error,
                    "{member} = {bad:?}"
                );
            }
            wire[member] = 64.into();
            assert!(matches!(
                RotatePayload::parse(wire.to_string().as_bytes()),
                Err(RotateError::Malformed(_))
            ));
        }
    }

    #[test]
    fn private_and_foreign_jwks_are_refused() {
        let (wire, _) = payload();
        let mut with_d = wire.clone();
        with_d["jwk"]["d"] = "AAAA".into();
        assert_eq!(
            RotatePayload::parse(with_d.to_string().as_bytes()).unwrap_err(),
            RotateError::Key(KeyError::PrivateMember("d"))
        );
        let mut unknown = wire.clone();
        unknown["jwk"]["color"] = "blue".into();
        assert!(matches!(
            RotatePayload::parse(unknown.to_string().as_bytes()),
            Err(RotateError::Key(KeyError::Malformed(_)))
        ));
        let mut rsa = wire.clone();
        rsa["jwk"]["kty"] = "RSA".into();
        assert!(matches!(
            RotatePayload::parse(rsa.to_string().as_bytes()),
            Err(RotateError::Key(KeyError::Unsupported { .. }))
        ));
        let mut weak = wire;
        weak["jwk"]["x"] = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
        assert_eq!(
            RotatePayload::parse(weak.to_string().as_bytes()).unwrap_err(),
            RotateError::Key(KeyError::InvalidPoint)
        );
    }

    #[test]
    fn hostile_nesting_is_refused_without_overflow() {
        let deep = format!("{}{}", "[".repeat(4000), "]".repeat(4000));
        assert!(RotatePayload::parse(deep.as_bytes()).is_err());
        let deep_jwk = format!(
            r#"{{"jwk":{}1{},"proof":"AA","authorization":"AA"}}"#,
            "{\"a\":".repeat(2000),
            "}".repeat(2000)
        );
        assert!(RotatePayload::parse(deep_jwk.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RotatePayload::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_like_text(text in r#"[{}\[\]":,a-z0-9 ]{0,256}"#) {
            let _ = RotatePayload::parse(text.as_bytes());
        }
    }
}
