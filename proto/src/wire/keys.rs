//! Verification keys (JWK) and the handshake messages they sign (WIRE.md section 4).
//!
//! A resource's key is a connection firewall only: it never unlocks content. What is checked
//! here is exactly what the contract names, so a browser with WebCrypto alone can comply.

use super::{Challenge, ResourceId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Verifier as _;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Both accepted signature schemes produce 64 bytes (Ed25519, and P-256 as `r || s`).
pub const SIGNATURE_LEN: usize = 64;
const CONFIG_CONTEXT: &[u8] = b"zbase/v1/config";
const VERIFY_CONTEXT: &[u8] = b"zbase/v1/verify";
const ROTATE_CONTEXT: &[u8] = b"zbase/v1/rotate";
const ROTATE_PROOF_CONTEXT: &[u8] = b"zbase/v1/rotate-proof";

/// Length of an RFC 7638 SHA-256 JWK thumbprint.
pub const THUMBPRINT_LEN: usize = 32;

/// Why a JWK or a signature is refused. Messages name the member at fault, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The JWK is not a JSON object of the accepted shape.
    #[error("malformed JWK: {0}")]
    Malformed(String),
    /// The JWK carries private key material.
    #[error("the JWK contains private key material ('{0}'); send the public key only")]
    PrivateMember(&'static str),
    /// A `kty`/`crv` pair other than OKP/Ed25519 or EC/P-256.
    #[error("unsupported key type {kty}/{crv}; use OKP/Ed25519 or EC/P-256")]
    Unsupported {
        /// The `kty` given.
        kty: String,
        /// The `crv` given.
        crv: String,
    },
    /// A coordinate is not canonical base64url of the right length.
    #[error("JWK member '{0}' is not 32 bytes of unpadded base64url")]
    Coordinate(&'static str),
    /// The coordinates are not a valid public key (off the curve, identity, or a weak key).
    #[error("the JWK's coordinates are not a valid public key")]
    InvalidPoint,
    /// `alg`, `use` or `key_ops` contradict a verification key of this type.
    #[error("JWK member '{0}' does not allow signature verification with this key")]
    Usage(&'static str),
    /// The signature is not 64 bytes.
    #[error("signature is {0} bytes; Ed25519 and P-256 (r||s) signatures are 64")]
    SignatureLength(usize),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The wire shape of a public JWK. Registered members that WebCrypto exports (`ext`,
/// `key_ops`) are accepted; anything unknown is refused, and private members are named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwkWire {
    kty: String,
    crv: String,
    x: String,
    y: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    kid: Option<String>,
    ext: Option<bool>,
    d: Option<serde::de::IgnoredAny>,
    p: Option<serde::de::IgnoredAny>,
    q: Option<serde::de::IgnoredAny>,
    dp: Option<serde::de::IgnoredAny>,
    dq: Option<serde::de::IgnoredAny>,
    qi: Option<serde::de::IgnoredAny>,
    k: Option<serde::de::IgnoredAny>,
}

/// The canonical form the station keeps: only the members that define the key.
#[derive(Serialize)]
struct JwkCanonical<'a> {
    kty: &'a str,
    crv: &'a str,
    x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
}

/// A resource's verification public key.
#[derive(Clone, PartialEq, Eq)]
pub enum VerificationKey {
    /// `{"kty":"OKP","crv":"Ed25519"}`.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// `{"kty":"EC","crv":"P-256"}`.
    P256(p256::ecdsa::VerifyingKey),
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public, but still not worth spilling into logs.
        match self {
            VerificationKey::Ed25519(_) => f.write_str("VerificationKey::Ed25519(..)"),
            VerificationKey::P256(_) => f.write_str("VerificationKey::P256(..)"),
        }
    }
}

impl VerificationKey {
    /// Parses a public JWK from JSON text.
    pub fn from_jwk_json(text: &str) -> Result<VerificationKey, KeyError> {
        let wire: JwkWire =
            serde_json::from_str(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        Self::from_wire(wire)
    }

    /// Parses a public JWK from an already-parsed JSON value.
    pub fn from_jwk_value(value: serde_json::Value) -> Result<VerificationKey, KeyError> {
        let wire: JwkWire =
            serde_json::from_value(value).map_err(|e| KeyError::Malformed(e.to_string()))?;
        Self::from_wire(wire)
    }

    fn from_wire(wire: JwkWire) -> Result<VerificationKey, KeyError> {
        let private = [
            ("d", wire.d.is_some()),
            ("p", wire.p.is_some()),
            ("q", wire.q.is_some()),
            ("dp", wire.dp.is_some()),
            ("dq", wire.dq.is_some()),
            ("qi", wire.qi.is_some()),
            ("k", wire.k.is_some()),
        ];
        if let Some((name, _)) = private.iter().find(|(_, present)| *present) {
            return Err(KeyError::PrivateMember(name));
        }
        let _ = (&wire.kid, &wire.ext);
        if let Some(usage) = &wire.use_
            && usage != "sig"
        {
            return Err(KeyError::Usage("use"));
        }
        if let Some(ops) = &wire.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err(KeyError::Usage("key_ops"));
        }
        match (wire.kty.as_str(), wire.crv.as_str()) {
            ("OKP", "Ed25519") => {
                if wire.y.is_some() {
                    return Err(KeyError::Malformed("an Ed25519 JWK has no 'y'".into()));
                }
                if let Some(alg) = &wire.alg
                    && alg != "EdDSA"
                    && alg != "Ed25519"
                {
                    return Err(KeyError::Usage("alg"));
                }
                let x = coordinate(&wire.x, "x")?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| KeyError::InvalidPoint)?;
                // A small-order key lets anyone forge a signature with luck 1 in 8.
                if key.is_weak() {
                    return Err(KeyError::InvalidPoint);
                }
                Ok(VerificationKey::Ed25519(key))
            }
            ("EC", "P-256") => {
                if let Some(alg) = &wire.alg
                    && alg != "ES256"
                {
                    return Err(KeyError::Usage("alg"));
                }
                let x = coordinate(&wire.x, "x")?;
                let y = wire
                    .y
                    .as_deref()
                    .ok_or_else(|| KeyError::Malformed("a P-256 JWK needs 'y'".into()))
                    .and_then(|y| coordinate(y, "y"))?;
                let point =
                    p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| KeyError::InvalidPoint)?;
                Ok(VerificationKey::P256(key))
            }
            (kty, crv) => Err(KeyError::Unsupported {
                kty: kty.chars().take(16).collect(),
                crv: crv.chars().take(16).collect(),
            }),
        }
    }

    /// The canonical JWK JSON (`kty`, `crv`, `x`, and `y` for P-256), as the station stores it.
    pub fn to_jwk_json(&self) -> String {
        let canonical = match self {
            VerificationKey::Ed25519(key) => JwkCanonical {
                kty: "OKP",
                crv: "Ed25519",
                x: encode_b64url(key.as_bytes()),
                y: None,
            },
            VerificationKey::P256(key) => {
                let point = key.to_encoded_point(false);
                JwkCanonical {
                    kty: "EC",
                    crv: "P-256",
                    x: point.x().map(|x| encode_b64url(x)).unwrap_or_default(),
                    y: point
                        .y()
                        .map(|y| encode_b64url(y))
                        .unwrap_or_default()
                        .into(),
                }
            }
        };
        // Serialising a struct of strings cannot fail.
        serde_json::to_string(&canonical).unwrap_or_default()
    }

    /// The RFC 7638 SHA-256 thumbprint: the hash of the required members in lexicographic
    /// order, without whitespace (`crv`, `kty`, `x`, and `y` for P-256).
    pub fn thumbprint(&self) -> [u8; THUMBPRINT_LEN] {
        use sha2::Digest as _;
        // Every value is a fixed name or base64url, so no JSON escaping can arise and the
        // text can be written directly in the order RFC 7638 requires.
        let text = match self {
            VerificationKey::Ed25519(key) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                encode_b64url(key.as_bytes())
            ),
            VerificationKey::P256(key) => {
                let point = key.to_encoded_point(false);
                let x = point.x().map(|x| encode_b64url(x)).unwrap_or_default();
                let y = point.y().map(|y| encode_b64url(y)).unwrap_or_default();
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
        };
        sha2::Sha256::digest(text.as_bytes()).into()
    }

    /// Checks `signature` over `message`. P-256 signatures are `r || s` and high-S is accepted.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(KeyError::SignatureLength(signature.len()));
        }
        match self {
            VerificationKey::Ed25519(key) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| KeyError::BadSignature)?;
                key.verify_strict(message, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            VerificationKey::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| KeyError::BadSignature)?;
                key.verify(message, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
        }
    }
}

fn coordinate(text: &str, member: &'static str) -> Result<[u8; 32], KeyError> {
    decode_b64url(text)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(KeyError::Coordinate(member))
}

/// Decodes canonical, unpadded base64url (non-zero trailing bits are refused).
pub fn decode_b64url(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// Encodes bytes as unpadded base64url.
pub fn encode_b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signed_message(context: &[u8], challenge: &Challenge, id: &ResourceId) -> Vec<u8> {
    [context, &challenge[..], id.as_bytes()].concat()
}

/// `"zbase/v1/config" || challenge || proposed identifier`: what a configuration proof signs.
pub fn config_message(challenge: &Challenge, proposed: &ResourceId) -> Vec<u8> {
    signed_message(CONFIG_CONTEXT, challenge, proposed)
}

/// `"zbase/v1/verify" || challenge || identifier`: what a verification proof signs.
pub fn verify_message(challenge: &Challenge, id: &ResourceId) -> Vec<u8> {
    signed_message(VERIFY_CONTEXT, challenge, id)
}

/// `"zbase/v1/rotate-proof" || challenge || identifier`: what the new key signs to prove it
/// is held (extension R1).
pub fn rotate_proof_message(challenge: &Challenge, id: &ResourceId) -> Vec<u8> {
    signed_message(ROTATE_PROOF_CONTEXT, challenge, id)
}

/// `"zbase/v1/rotate" || challenge || identifier || thumbprint(new key)`: what the current key
/// signs to authorise its replacement by exactly that new key (extension R1).
pub fn rotate_message(
    challenge: &Challenge,
    id: &ResourceId,
    thumbprint: &[u8; THUMBPRINT_LEN],
) -> Vec<u8> {
    [
        ROTATE_CONTEXT,
        &challenge[..],
        id.as_bytes(),
        &thumbprint[..],
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use rand::rngs::OsRng;

    fn ed_jwk(key: &ed25519_dalek::SigningKey) -> String {
        format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#,
            encode_b64url(key.verifying_key().as_bytes())
        )
    }

    fn p256_jwk(key: &p256::ecdsa::SigningKey) -> String {
        let point = key.verifying_key().to_encoded_point(false);
        format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
            encode_b64url(point.x().unwrap()),
            encode_b64url(point.y().unwrap())
        )
    }

    fn id() -> ResourceId {
        ResourceId::from_bytes([9; 32])
    }

    #[test]
    fn section4_ed25519_verification_proof() {
        let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let key = VerificationKey::from_jwk_json(&ed_jwk(&sk)).unwrap();
        let challenge = [3u8; 32];
        let sig = sk.sign(&verify_message(&challenge, &id())).to_bytes();
        assert_eq!(key.verify(&verify_message(&challenge, &id()), &sig), Ok(()));
        // Bound to the context, the challenge and the identifier.
        assert!(
            key.verify(&config_message(&challenge, &id()), &sig)
                .is_err()
        );
        assert!(key.verify(&verify_message(&[4; 32], &id()), &sig).is_err());
        let other = ResourceId::from_bytes([10; 32]);
        assert!(
            key.verify(&verify_message(&challenge, &other), &sig)
                .is_err()
        );
    }

    #[test]
    fn section4_p256_p1363_and_high_s_accepted() {
        let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key = VerificationKey::from_jwk_json(&p256_jwk(&sk)).unwrap();
        let msg = config_message(&[1; 32], &id());
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        let low = sig.normalize_s().unwrap_or(sig);
        assert_eq!(key.verify(&msg, &low.to_bytes()), Ok(()));
        // High-S: s' = n - s, which WebCrypto may produce.
        let (r, s) = low.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        assert_eq!(key.verify(&msg, &high.to_bytes()), Ok(()));
        assert!(key.verify(b"other", &low.to_bytes()).is_err());
    }

    #[test]
    fn section4_signature_length_is_checked() {
        let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let key = VerificationKey::from_jwk_json(&ed_jwk(&sk)).unwrap();
        assert_eq!(
            key.verify(b"m", &[0; 63]),
            Err(KeyError::SignatureLength(63))
        );
        assert_eq!(
            key.verify(b"m", &[0; 65]),
            Err(KeyError::SignatureLength(65))
        );
        assert_eq!(key.verify(b"m", &[0; 64]), Err(KeyError::BadSignature));
    }

    #[test]
    fn section4_private_members_are_refused() {
        let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let jwk = ed_jwk(&sk).replace('}', r#","d":"AAAA"}"#);
        assert_eq!(
            VerificationKey::from_jwk_json(&jwk),
            Err(KeyError::PrivateMember("d"))
        );
    }

    #[test]
    fn section4_webcrypto_export_is_accepted_and_unknown_members_refused() {
        let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
        let exported = p256_jwk(&sk).replace('}', r#","ext":true,"key_ops":["verify"]}"#);
        assert!(VerificationKey::from_jwk_json(&exported).is_ok());
        let unknown = p256_jwk(&sk).replace('}', r#","color":"blue"}"#);
        assert!(matches!(
            VerificationKey::from_jwk_json(&unknown),
            Err(KeyError::Malformed(_))
        ));
        let signing_only = p256_jwk(&sk).replace('}', r#","key_ops":["sign"]}"#);
        assert_eq!(
            VerificationKey::from_jwk_json(&signing_only),
            Err(KeyError::Usage("key_ops"))
        );
    }

    #[test]
    fn section4_bad_coordinates_and_types_are_refused() {
        let cases = [
            r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
            r#"{"kty":"OKP","crv":"X25519","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
            r#"{"kty":"RSA","crv":"P-256","x":"AA"}"#,
            r#"{"kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
            r#"{"kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
            r#"{"kty":"OKP","crv":"Ed25519"}"#,
            r#"[]"#,
            r#""kty""#,
            r#"{"kty":1,"crv":"Ed25519","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        ];
        for case in cases {
            assert!(VerificationKey::from_jwk_json(case).is_err(), "{case}");
        }
        // The identity-adjacent small-order Ed25519 point (all zero y=0 encodes order 4).
        let weak =
            r#"{"kty":"OKP","crv":"Ed25519","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
        assert_eq!(
            VerificationKey::from_jwk_json(weak),
            Err(KeyError::InvalidPoint)
        );
    }

    #[test]
    fn canonical_jwk_round_trips() {
        let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key = VerificationKey::from_jwk_json(&p256_jwk(&sk)).unwrap();
        assert_eq!(
            VerificationKey::from_jwk_json(&key.to_jwk_json()).unwrap(),
            key
        );
        let ek = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let key = VerificationKey::from_jwk_json(&ed_jwk(&ek)).unwrap();
        assert_eq!(key.to_jwk_json(), ed_jwk(&ek));
    }

    #[test]
    fn thumbprint_of_rfc8037_a3_ed25519_key() {
        let jwk =
            r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let key = VerificationKey::from_jwk_json(jwk).unwrap();
        assert_eq!(
            encode_b64url(&key.thumbprint()),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // Optional members, and their order on the wire, do not change it.
        let decorated = r#"{"x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k","kty":"OKP","alg":"EdDSA","crv":"Ed25519","ext":true}"#;
        let same = VerificationKey::from_jwk_json(decorated).unwrap();
        assert_eq!(same.thumbprint(), key.thumbprint());
    }

    #[test]
    fn thumbprint_of_p256_hashes_crv_kty_x_y_in_order() {
        use sha2::Digest as _;
        let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key = VerificationKey::from_jwk_json(&p256_jwk(&sk)).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        let expected = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            encode_b64url(point.x().unwrap()),
            encode_b64url(point.y().unwrap())
        );
        let digest: [u8; 32] = sha2::Sha256::digest(expected.as_bytes()).into();
        assert_eq!(key.thumbprint(), digest);
        let other = p256::ecdsa::SigningKey::random(&mut OsRng);
        let other = VerificationKey::from_jwk_json(&p256_jwk(&other)).unwrap();
        assert_ne!(other.thumbprint(), key.thumbprint());
    }

    #[test]
    fn rotate_messages_are_bound_to_their_context_and_inputs() {
        let challenge = [6u8; 32];
        let proof = rotate_proof_message(&challenge, &id());
        assert_eq!(
            proof,
            [
                b"zbase/v1/rotate-proof".as_slice(),
                &challenge,
                id().as_bytes()
            ]
            .concat()
        );
        let thumb = [8u8; 32];
        let auth = rotate_message(&challenge, &id(), &thumb);
        assert_eq!(
            auth,
            [
                b"zbase/v1/rotate".as_slice(),
                &challenge,
                id().as_bytes(),
                &thumb
            ]
            .concat()
        );
        // No message of one kind is a message of another.
        for other in [
            verify_message(&challenge, &id()),
            config_message(&challenge, &id()),
        ] {
            assert_ne!(other, proof);
            assert_ne!(other, auth);
        }
        assert_ne!(auth, rotate_message(&challenge, &id(), &[9; 32]));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn member() -> impl Strategy<Value = (String, serde_json::Value)> {
            let names = prop::sample::select(vec![
                "kty", "crv", "x", "y", "d", "alg", "use", "key_ops", "kid", "ext", "k", "zz",
            ]);
            let values = prop_oneof![
                Just(serde_json::json!("OKP")),
                Just(serde_json::json!("EC")),
                Just(serde_json::json!("Ed25519")),
                Just(serde_json::json!("P-256")),
                "[A-Za-z0-9_-]{0,50}".prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                Just(serde_json::json!(null)),
                Just(serde_json::json!(["verify"])),
                Just(serde_json::json!({"nested": [1, 2, {"x": "y"}]})),
            ];
            (names.prop_map(str::to_string), values)
        }

        proptest! {
            #[test]
            fn jwk_parse_never_panics_and_never_accepts_private_members(
                members in proptest::collection::vec(member(), 0..8)
            ) {
                let object: serde_json::Map<String, serde_json::Value> = members.into_iter().collect();
                let has_private = object.contains_key("d") || object.contains_key("k");
                let text = serde_json::Value::Object(object).to_string();
                let parsed = VerificationKey::from_jwk_json(&text);
                if has_private {
                    prop_assert!(parsed.is_err());
                }
            }
        }
    }
}
