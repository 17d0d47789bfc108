//! Operations: self-contained signed tokens, one per change an actor makes to a resource.
//!
//! ```text
//! "zbo1" | resource identifier (43 ASCII) | actor (32, Ed25519 public key)
//!        | clock (u64, big-endian) | dependency count (u16) | dependencies (32 each)
//!        | payload length (u32) | payload | Ed25519 signature (64)
//! ```
//!
//! The signature is detached in the sense the specification asks for: it covers every byte
//! before it (actor, resource, payload and causal metadata, under the "zbo1" domain tag) and
//! is checked against the actor's key, never trusted from the token alone. The causal
//! metadata is a Lamport clock and the identifiers of the operations this one follows; an
//! operation's identifier is SHA-256 of its whole token.

use crate::identity::{ActorId, Identity};
use sha2::{Digest, Sha256};
use std::fmt;
use zbase_proto::wire::ResourceId;

/// The first four bytes of every version-1 operation.
pub const MAGIC: &[u8; 4] = b"zbo1";
/// The most operations one may follow directly.
pub const MAX_DEPS: usize = 256;
/// The largest payload of one operation.
pub const MAX_PAYLOAD: usize = 1 << 24;
const FIXED: usize = 4 + 43 + 32 + 8 + 2 + 4;
const SIGNATURE: usize = 64;

/// An operation's identifier: SHA-256 of its signed token.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub [u8; 32]);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::b64(&self.0))
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({self})")
    }
}

/// One change to a resource, before it is signed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Operation {
    /// The resource it changes.
    pub resource: ResourceId,
    /// Who makes it.
    pub actor: ActorId,
    /// Lamport clock: above the clock of every operation in `deps`.
    pub clock: u64,
    /// The operations it follows directly (its causal point).
    pub deps: Vec<OpId>,
    /// What it does, for the merge engine.
    pub payload: Vec<u8>,
}

/// An operation with its signature, as it travels inside snapshots.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedOperation {
    operation: Operation,
    token: Vec<u8>,
}

/// Why a token is not a valid operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperationError {
    /// Another format or version.
    #[error("not a version-1 operation (it does not start with \"zbo1\")")]
    UnknownVersion,
    /// Shorter or longer than its own lengths say.
    #[error("malformed operation: {0}")]
    Malformed(&'static str),
    /// More than the format allows.
    #[error("operation too large: {0}")]
    TooLarge(&'static str),
    /// The signature is not the actor's over these bytes.
    #[error("the operation's signature is not its actor's: altered, or forged")]
    BadSignature,
    /// Signed by another actor than the identity signing it now.
    #[error("an operation must be signed by its own actor")]
    WrongSigner,
}

impl Operation {
    /// The bytes the signature covers.
    fn signed_bytes(&self) -> Result<Vec<u8>, OperationError> {
        if self.deps.len() > MAX_DEPS {
            return Err(OperationError::TooLarge("more than 256 dependencies"));
        }
        if self.payload.len() > MAX_PAYLOAD {
            return Err(OperationError::TooLarge("payload above 16 MiB"));
        }
        let mut bytes =
            Vec::with_capacity(FIXED + 32 * self.deps.len() + self.payload.len() + SIGNATURE);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(self.resource.as_str().as_bytes());
        bytes.extend_from_slice(self.actor.as_bytes());
        bytes.extend_from_slice(&self.clock.to_be_bytes());
        // Bounded above by MAX_DEPS and MAX_PAYLOAD, both within these widths.
        bytes.extend_from_slice(&(self.deps.len() as u16).to_be_bytes());
        for dep in &self.deps {
            bytes.extend_from_slice(&dep.0);
        }
        bytes.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&self.payload);
        Ok(bytes)
    }

    /// Signs it as `identity`, which must be its actor.
    pub fn sign(self, identity: &Identity) -> Result<SignedOperation, OperationError> {
        if identity.id() != self.actor {
            return Err(OperationError::WrongSigner);
        }
        let mut token = self.signed_bytes()?;
        let signature = identity.sign(&token);
        token.extend_from_slice(&signature);
        Ok(SignedOperation {
            operation: self,
            token,
        })
    }
}

/// Reads big-endian fields off the front of a token.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OperationError> {
        if self.0.len() < n {
            return Err(OperationError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], OperationError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

impl SignedOperation {
    /// Parses and verifies a token: its format, its bounds, and its actor's signature.
    pub fn decode(token: &[u8]) -> Result<SignedOperation, OperationError> {
        let mut reader = Reader(token);
        if reader.take(4).map_err(|_| OperationError::UnknownVersion)? != MAGIC {
            return Err(OperationError::UnknownVersion);
        }
        let resource = std::str::from_utf8(reader.take(43)?)
            .ok()
            .and_then(|text| ResourceId::parse(text).ok())
            .ok_or(OperationError::Malformed("resource identifier"))?;
        let actor = ActorId::from_bytes(reader.array::<32>()?);
        let clock = u64::from_be_bytes(reader.array::<8>()?);
        let count = usize::from(u16::from_be_bytes(reader.array::<2>()?));
        if count > MAX_DEPS {
            return Err(OperationError::TooLarge("more than 256 dependencies"));
        }
        let deps = (0..count)
            .map(|_| reader.array::<32>().map(OpId))
            .collect::<Result<Vec<_>, _>>()?;
        let length = u32::from_be_bytes(reader.array::<4>()?) as usize;
        if length > MAX_PAYLOAD {
            return Err(OperationError::TooLarge("payload above 16 MiB"));
        }
        let payload = reader.take(length)?.to_vec();
        let signature = reader.array::<SIGNATURE>()?;
        if !reader.0.is_empty() {
            return Err(OperationError::Malformed("bytes after the signature"));
        }
        if !actor.verify(&token[..token.len() - SIGNATURE], &signature) {
            return Err(OperationError::BadSignature);
        }
        Ok(SignedOperation {
            operation: Operation {
                resource,
                actor,
                clock,
                deps,
                payload,
            },
            token: token.to_vec(),
        })
    }

    /// The operation.
    pub fn operation(&self) -> &Operation {
        &self.operation
    }

    /// The signed token, as it travels.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// Its identifier.
    pub fn id(&self) -> OpId {
        OpId(Sha256::digest(&self.token).into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn signed(identity: &Identity, payload: Vec<u8>, deps: Vec<OpId>) -> SignedOperation {
        Operation {
            resource: ResourceId::from_bytes([4; 32]),
            actor: identity.id(),
            clock: 7,
            deps,
            payload,
        }
        .sign(identity)
        .unwrap()
    }

    #[test]
    fn a_token_verifies_and_reads_back_as_signed() {
        let identity = Identity::from_secrets(&[1; 32], &[2; 32]);
        let op = signed(&identity, b"set a=1".to_vec(), vec![OpId([9; 32])]);
        let back = SignedOperation::decode(op.token()).unwrap();
        assert_eq!(back, op);
        assert_eq!(back.id(), op.id());
    }

    #[test]
    fn only_its_actor_signs_an_operation() {
        let me = Identity::from_secrets(&[1; 32], &[2; 32]);
        let other = Identity::from_secrets(&[3; 32], &[4; 32]);
        let op = Operation {
            resource: ResourceId::from_bytes([4; 32]),
            actor: me.id(),
            clock: 1,
            deps: vec![],
            payload: vec![],
        };
        assert_eq!(op.sign(&other), Err(OperationError::WrongSigner));
    }

    #[test]
    fn hostile_tokens_are_refused_with_a_reason() {
        let identity = Identity::from_secrets(&[1; 32], &[2; 32]);
        let token = signed(&identity, b"p".to_vec(), vec![]).token().to_vec();
        assert_eq!(
            SignedOperation::decode(b"zb"),
            Err(OperationError::UnknownVersion)
        );
        assert_eq!(
            SignedOperation::decode(b"zbo2rest"),
            Err(OperationError::UnknownVersion)
        );
        assert_eq!(
            SignedOperation::decode(&token[..token.len() - 1]),
            Err(OperationError::Malformed("truncated"))
        );
        let mut longer = token.clone();
        longer.push(0);
        assert_eq!(
            SignedOperation::decode(&longer),
            Err(OperationError::Malformed("bytes after the signature"))
        );
        let mut many = token.clone();
        many[87..89].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            SignedOperation::decode(&many),
            Err(OperationError::TooLarge("more than 256 dependencies"))
        );
        let mut huge = token.clone();
        huge[89..93].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            SignedOperation::decode(&huge),
            Err(OperationError::TooLarge("payload above 16 MiB"))
        );
        let mut id = token.clone();
        id[4] = b'!';
        assert_eq!(
            SignedOperation::decode(&id),
            Err(OperationError::Malformed("resource identifier"))
        );
    }

    proptest! {
        #[test]
        fn any_altered_byte_breaks_the_signature_or_the_format(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let identity = Identity::from_secrets(&[1; 32], &[2; 32]);
            let mut token = signed(&identity, payload, vec![OpId([5; 32])]).token().to_vec();
            let at = at.index(token.len());
            token[at] ^= flip;
            prop_assert!(SignedOperation::decode(&token).is_err());
        }
    }
}
