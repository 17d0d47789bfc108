//! Resource identifiers: 32 random bytes as canonical, unpadded base64url (WIRE.md section 1).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::fmt;
use std::str::FromStr;

/// Characters in an encoded identifier.
pub const ID_LEN: usize = 43;
const RAW_LEN: usize = 32;

/// A resource identifier, known to be canonical.
///
/// `Debug` and `Display` print it whole because clients need it; a station must log a keyed
/// hash instead, never this value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    text: [u8; ID_LEN],
}

/// Why a string is not a resource identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not exactly 43 characters.
    #[error("an identifier is exactly 43 characters of base64url; got {len}")]
    Length {
        /// Characters (bytes) given.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("an identifier uses only A-Z, a-z, 0-9, '-' and '_'; found byte {byte:#04x} at {at}")]
    Alphabet {
        /// The offending byte.
        byte: u8,
        /// Its position.
        at: usize,
    },
    /// Decodes, but re-encoding gives another string (stray low bits in the last character).
    #[error(
        "identifier is not canonical base64url: its last character must be one of AEIMQUYcgkosw048"
    )]
    NotCanonical,
}

impl ResourceId {
    /// The identifier of 32 raw bytes (the station draws these from a CSPRNG).
    pub fn from_bytes(raw: [u8; RAW_LEN]) -> ResourceId {
        let mut text = [0u8; ID_LEN];
        // Cannot fail: 32 bytes always encode to exactly 43 characters without padding.
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .unwrap_or_default();
        debug_assert_eq!(written, ID_LEN);
        ResourceId { text }
    }

    /// Parses and checks an identifier: length, alphabet, canonical encoding.
    pub fn parse(text: &str) -> Result<ResourceId, IdError> {
        let bytes = text.as_bytes();
        if bytes.len() != ID_LEN {
            return Err(IdError::Length { len: bytes.len() });
        }
        if let Some(at) = bytes
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
        {
            return Err(IdError::Alphabet {
                byte: bytes[at],
                at,
            });
        }
        // The strict engine rejects non-zero trailing bits, which is exactly non-canonical.
        let raw = URL_SAFE_NO_PAD
            .decode(bytes)
            .map_err(|_| IdError::NotCanonical)?;
        let raw: [u8; RAW_LEN] = raw.try_into().map_err(|_| IdError::NotCanonical)?;
        let id = ResourceId::from_bytes(raw);
        if id.text != bytes {
            return Err(IdError::NotCanonical);
        }
        Ok(id)
    }

    /// The 43-character encoding.
    pub fn as_str(&self) -> &str {
        // The text is base64url output or a checked copy of ASCII input: always UTF-8.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// The 43 ASCII bytes, as signed in proofs.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.text
    }
}

impl FromStr for ResourceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceId::parse(s)
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn section1_random_bytes_round_trip() {
        let id = ResourceId::from_bytes([0xab; 32]);
        assert_eq!(id.as_str().len(), ID_LEN);
        assert_eq!(ResourceId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn section1_wrong_length_is_rejected() {
        let good = ResourceId::from_bytes([7; 32]).to_string();
        assert_eq!(
            ResourceId::parse(&good[..42]),
            Err(IdError::Length { len: 42 })
        );
        assert_eq!(
            ResourceId::parse(&format!("{good}A")),
            Err(IdError::Length { len: 44 })
        );
        assert_eq!(ResourceId::parse(""), Err(IdError::Length { len: 0 }));
        assert!(
            ResourceId::parse(&format!("{good}=")).is_err(),
            "padding is refused"
        );
    }

    #[test]
    fn section1_alphabet_is_enforced() {
        let good = ResourceId::from_bytes([7; 32]).to_string();
        for bad in ['+', '/', '=', '.', ' ', '%'] {
            let text = format!("{bad}{}", &good[1..]);
            assert!(
                matches!(
                    ResourceId::parse(&text),
                    Err(IdError::Alphabet { at: 0, .. })
                ),
                "{bad}"
            );
        }
        // A multi-byte character is refused on bytes, not chars.
        let text = format!("é{}", &good[2..]);
        assert!(ResourceId::parse(&text).is_err());
    }

    #[test]
    fn section1_last_character_must_be_canonical() {
        let good = ResourceId::from_bytes([0; 32]).to_string();
        assert!(good.ends_with('A'));
        let canonical = "AEIMQUYcgkosw048";
        for c in ('A'..='Z')
            .chain('a'..='z')
            .chain('0'..='9')
            .chain(['-', '_'])
        {
            let text = format!("{}{c}", &good[..42]);
            let parsed = ResourceId::parse(&text);
            assert_eq!(parsed.is_ok(), canonical.contains(c), "last character {c}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,64}") {
            let _ = ResourceId::parse(&text);
        }

        #[test]
        fn every_byte_string_is_one_identifier(raw in any::<[u8; 32]>()) {
            let id = ResourceId::from_bytes(raw);
            prop_assert_eq!(ResourceId::parse(id.as_str()), Ok(id));
        }
    }
}
