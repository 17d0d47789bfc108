//! A bundle of signed operations: what a snapshot or a delta holds once its envelope is opened.
//!
//! `"zbb1" || count (u32 BE) || count × (length (u32 BE) || operation token)`. A snapshot
//! bundles a resource's whole history (the station keeps only the latest, so every snapshot
//! written folds in the deltas before it); a delta bundles the operations one actor just made.

use crate::operation::SignedOperation;

/// The format tag and version.
pub const MAGIC: &[u8; 4] = b"zbb1";

/// Why bytes are not a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Another format or version.
    #[error("not an operation bundle (expected the tag zbb1)")]
    UnknownVersion,
    /// The bytes end inside a length or a token, or go on after the last token.
    #[error("operation bundle is cut short or has trailing bytes")]
    Malformed,
}

/// What a bundle held: the operations whose signatures hold, and how many did not.
#[derive(Debug, Default)]
pub struct Opened {
    /// Valid, signed operations (not yet merged: the merge decides what counts).
    pub operations: Vec<SignedOperation>,
    /// Tokens that were not valid operations; excluded without blocking the rest.
    pub invalid: usize,
}

/// The bundle of these operations' tokens.
pub fn encode<'a>(operations: impl IntoIterator<Item = &'a SignedOperation>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for op in operations {
        let token = op.token();
        // A token is at most a few bytes over 16 MiB (operation::MAX_PAYLOAD), far below u32.
        out.extend_from_slice(&(token.len() as u32).to_be_bytes());
        out.extend_from_slice(token);
        count += 1;
    }
    out[4..8].copy_from_slice(&count.to_be_bytes());
    out
}

/// Reads a bundle, checking every operation's signature.
pub fn decode(bytes: &[u8]) -> Result<Opened, BundleError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(BundleError::UnknownVersion)?;
    let (count, mut rest) = take_u32(rest)?;
    let mut opened = Opened::default();
    for _ in 0..count {
        let (len, after) = take_u32(rest)?;
        let len = usize::try_from(len).map_err(|_| BundleError::Malformed)?;
        if after.len() < len {
            return Err(BundleError::Malformed);
        }
        let (token, after) = after.split_at(len);
        match SignedOperation::decode(token) {
            Ok(op) => opened.operations.push(op),
            Err(_) => opened.invalid += 1,
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(BundleError::Malformed);
    }
    Ok(opened)
}

fn take_u32(bytes: &[u8]) -> Result<(u32, &[u8]), BundleError> {
    let (head, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(BundleError::Malformed)?;
    Ok((u32::from_be_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Operation};
    use zbase_proto::wire::ResourceId;

    fn op(identity: &Identity, clock: u64) -> SignedOperation {
        Operation {
            resource: ResourceId::from_bytes([7; 32]),
            actor: identity.id(),
            clock,
            deps: vec![],
            payload: b"{}".to_vec(),
        }
        .sign(identity)
        .expect("a small operation signs")
    }

    #[test]
    fn operations_come_back_and_junk_tokens_are_counted_not_fatal() {
        let me = Identity::generate(&mut rand::rngs::OsRng);
        let ops = [op(&me, 1), op(&me, 2)];
        let bytes = encode(&ops);
        let opened = decode(&bytes).expect("a bundle we wrote");
        assert_eq!(opened.operations, ops);
        assert_eq!(opened.invalid, 0);

        // A token with a flipped byte fails its signature; the other still counts.
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let opened = decode(&tampered).expect("the structure still holds");
        assert_eq!(opened.operations, ops[..1]);
        assert_eq!(opened.invalid, 1);
    }

    #[test]
    fn malformed_bundles_are_refused() {
        let me = Identity::generate(&mut rand::rngs::OsRng);
        let bytes = encode(&[op(&me, 1)]);
        assert_eq!(
            decode(b"zbb2\0\0\0\0").err(),
            Some(BundleError::UnknownVersion)
        );
        assert_eq!(decode(b"").err(), Some(BundleError::UnknownVersion));
        for cut in 4..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut]).err(),
                Some(BundleError::Malformed),
                "{cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing).err(), Some(BundleError::Malformed));
        // A hostile count or length claims more than there is; nothing is allocated for it.
        assert_eq!(
            decode(b"zbb1\xff\xff\xff\xff").err(),
            Some(BundleError::Malformed)
        );
        assert_eq!(
            decode(b"zbb1\0\0\0\x01\xff\xff\xff\xffabc").err(),
            Some(BundleError::Malformed)
        );
        assert!(
            decode(b"zbb1\0\0\0\0")
                .expect("empty")
                .operations
                .is_empty()
        );
    }
}
