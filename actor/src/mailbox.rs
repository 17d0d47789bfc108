//! Mailboxes: how one member hands another a resource's keys through the station, unseen.
//!
//! For a resource, a sender and a recipient, both sides compute the same mailbox from their
//! X25519 keys alone: HKDF-SHA-256 over the static Diffie-Hellman secret, salted with the
//! resource and the recipient, gives the mailbox's identifier, its access key and its content
//! key. Nobody else can compute any of the three, so only those two can read or write there
//! (the recipient could spoil its own mailbox; a sender keeps the delivery queued and
//! retries). The station sees one more resource with a snapshot: a
//! [`Keyring`] in an envelope.
//!
//! Sharing writes the new member's mailbox; revoking rotates the resource's keys and writes
//! the mailbox of every member that remains. A member cut off by a rotation reads its
//! mailboxes from the resource's owners and managers to find the new keys.

use crate::access::AccessKey;
use crate::envelope::{self, ContentKey, EnvelopeError};
use crate::identity::{ActorId, Identity, PublicIdentity};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zbase_proto::wire::ResourceId;
use zeroize::Zeroizing;

/// Where keys for `recipient` about one resource go, as the two parties derive it.
pub struct Mailbox {
    /// The mailbox's identifier on the station.
    pub id: ResourceId,
    /// Its access key (configured by the first sender, proved by both).
    pub access: AccessKey,
    key: ContentKey,
}

/// Why a mailbox cannot be used or read.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The other party's X25519 key is one of the few whose shared secret anyone knows.
    #[error("the other actor's sealing key is degenerate (low order); refusing to use it")]
    DegenerateKey,
    /// The snapshot is not a keyring sealed for this mailbox.
    #[error("mailbox snapshot does not open: {0}")]
    Envelope(#[from] EnvelopeError),
    /// It opened but is not a keyring for the expected resource.
    #[error("mailbox holds no keyring for this resource: {0}")]
    NotAKeyring(String),
}

/// One content key of a resource, by epoch.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub struct EpochKey {
    /// The key epoch.
    pub epoch: u32,
    /// The AES key, 32 bytes base64url.
    pub key: String,
}

/// The keyring format this version writes and reads. Version 1 had no owner proof.
pub const KEYRING_VERSION: u32 = 2;

/// Everything a member needs to use a resource, as one member sends it to another.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Keyring {
    /// Format version, [`KEYRING_VERSION`].
    pub version: u32,
    /// The resource.
    pub resource: String,
    /// Where the resource lives (a station URL).
    pub station: String,
    /// The resource's owner: whose grants the merge starts from.
    pub owner: String,
    /// The owner's X25519 key, base64url.
    pub owner_sealing: String,
    /// The owner's signature of that key, base64url.
    pub owner_proof: String,
    /// The current access key's secret.
    pub access: String,
    /// Every content key the recipient may read, oldest first.
    pub keys: Vec<EpochKey>,
}

impl Keyring {
    /// The content keys, parsed; a malformed one is an error.
    pub fn content_keys(&self) -> Result<Vec<ContentKey>, MailboxError> {
        self.keys
            .iter()
            .map(|k| {
                crate::from_b64::<32>(&k.key)
                    .map(|key| ContentKey::from_bytes(k.epoch, key))
                    .ok_or_else(|| {
                        MailboxError::NotAKeyring(format!("bad key of epoch {}", k.epoch))
                    })
            })
            .collect()
    }

    /// The owner's public identity, its sealing key proved.
    pub fn owner(&self) -> Result<PublicIdentity, MailboxError> {
        PublicIdentity::from_parts(&self.owner, &self.owner_sealing, &self.owner_proof)
            .ok_or_else(|| MailboxError::NotAKeyring("an owner whose key it did not sign".into()))
    }

    /// The access key.
    pub fn access_key(&self) -> Result<AccessKey, MailboxError> {
        AccessKey::from_text(&self.access)
            .ok_or_else(|| MailboxError::NotAKeyring("bad access key".into()))
    }
}

impl Mailbox {
    /// The mailbox `me` writes for `to` about `resource`.
    pub fn outgoing(
        me: &Identity,
        to: &PublicIdentity,
        resource: &ResourceId,
    ) -> Result<Mailbox, MailboxError> {
        Mailbox::derive(me, to, resource, &to.id)
    }

    /// The mailbox `from` writes for `me` about `resource`.
    pub fn incoming(
        me: &Identity,
        from: &PublicIdentity,
        resource: &ResourceId,
    ) -> Result<Mailbox, MailboxError> {
        Mailbox::derive(me, from, resource, &me.id())
    }

    fn derive(
        me: &Identity,
        other: &PublicIdentity,
        resource: &ResourceId,
        recipient: &ActorId,
    ) -> Result<Mailbox, MailboxError> {
        if !crate::seal::usable_key(&other.sealing) {
            return Err(MailboxError::DegenerateKey);
        }
        let shared = Zeroizing::new(
            me.sealing_secret()
                .diffie_hellman(&x25519_dalek::PublicKey::from(other.sealing))
                .to_bytes(),
        );
        let salt = [resource.as_bytes().as_slice(), recipient.as_bytes()].concat();
        let derive = |info: &[u8]| crate::derive_key(shared.as_ref(), &salt, info);
        Ok(Mailbox {
            id: ResourceId::from_bytes(*derive(b"zbase/v1/mailbox/id")),
            access: AccessKey::from_seed(&derive(b"zbase/v1/mailbox/access")),
            key: ContentKey::from_bytes(0, *derive(b"zbase/v1/mailbox/key")),
        })
    }

    /// The content key its snapshot is sealed with (epoch 0).
    pub fn key(&self) -> &ContentKey {
        &self.key
    }

    /// The mailbox snapshot carrying `keyring`.
    pub fn seal(&self, keyring: &Keyring, rng: &mut (impl RngCore + CryptoRng)) -> Vec<u8> {
        // A derived Serialize of strings and numbers cannot fail.
        let json = Zeroizing::new(
            serde_json::to_vec(keyring).unwrap_or_else(|_| unreachable!("a Keyring serialises")),
        );
        envelope::encrypt(&self.key, &self.id, &json, rng)
    }

    /// The keyring in a mailbox snapshot, which must be about `resource`.
    pub fn open(&self, snapshot: &[u8], resource: &ResourceId) -> Result<Keyring, MailboxError> {
        let json = Zeroizing::new(envelope::decrypt(
            std::slice::from_ref(&self.key),
            &self.id,
            snapshot,
        )?);
        // The version first, so a keyring of another version is named as such rather than
        // as a field missing or unknown.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let bad = |e: serde_json::Error| MailboxError::NotAKeyring(e.to_string());
        let version = serde_json::from_slice::<Versioned>(&json)
            .map_err(bad)?
            .version;
        if version != KEYRING_VERSION {
            return Err(MailboxError::NotAKeyring(format!(
                "it is of version {version}, and this zbase reads version {KEYRING_VERSION}: \
                 the sharer's zbase is of another release; share again once both match"
            )));
        }
        let keyring: Keyring = serde_json::from_slice(&json).map_err(bad)?;
        if keyring.resource != resource.as_str() {
            return Err(MailboxError::NotAKeyring(
                "it is about another resource".into(),
            ));
        }
        Ok(keyring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn keyring(resource: &ResourceId) -> Keyring {
        Keyring {
            version: KEYRING_VERSION,
            resource: resource.as_str().to_owned(),
            station: "ws://127.0.0.1:1".into(),
            owner: "o".into(),
            owner_sealing: "s".into(),
            owner_proof: "p".into(),
            access: AccessKey::from_seed(&[5; 32]).to_text().to_string(),
            keys: vec![EpochKey {
                epoch: 3,
                key: crate::b64(&[9; 32]),
            }],
        }
    }

    #[test]
    fn both_sides_derive_one_mailbox_per_direction_and_only_they_read_it() {
        let (a, b, c) = (
            Identity::generate(&mut OsRng),
            Identity::generate(&mut OsRng),
            Identity::generate(&mut OsRng),
        );
        let resource = ResourceId::from_bytes([1; 32]);
        let sent = Mailbox::outgoing(&a, &b.public(), &resource).expect("usable keys");
        let read = Mailbox::incoming(&b, &a.public(), &resource).expect("usable keys");
        assert_eq!(sent.id, read.id);
        assert_eq!(sent.access, read.access);
        let snapshot = sent.seal(&keyring(&resource), &mut OsRng);
        assert_eq!(
            read.open(&snapshot, &resource).expect("opens"),
            keyring(&resource)
        );
        assert!(
            read.open(&snapshot, &ResourceId::from_bytes([2; 32]))
                .is_err()
        );

        // The other direction, another resource and a third party each get another mailbox.
        let back = Mailbox::outgoing(&b, &a.public(), &resource).expect("usable keys");
        let other = Mailbox::outgoing(&a, &b.public(), &ResourceId::from_bytes([2; 32]))
            .expect("usable keys");
        let third = Mailbox::incoming(&c, &a.public(), &resource).expect("usable keys");
        for mailbox in [&back, &other, &third] {
            assert_ne!(mailbox.id, sent.id);
            assert_ne!(mailbox.access, sent.access);
        }
        assert!(third.open(&snapshot, &resource).is_err());
    }

    #[test]
    fn a_keyring_of_another_version_is_named_as_such() {
        let (a, b) = (
            Identity::generate(&mut OsRng),
            Identity::generate(&mut OsRng),
        );
        let resource = ResourceId::from_bytes([1; 32]);
        let sent = Mailbox::outgoing(&a, &b.public(), &resource).expect("usable keys");
        let read = Mailbox::incoming(&b, &a.public(), &resource).expect("usable keys");
        let old = br#"{"version":1,"resource":"r","station":"s","owner":"o","ownerSealing":"k","access":"a","keys":[]}"#;
        let snapshot = envelope::encrypt(&sent.key, &sent.id, old, &mut OsRng);
        let error = read.open(&snapshot, &resource).expect_err("version 1");
        assert!(error.to_string().contains("version 1"), "{error}");
        let junk = envelope::encrypt(&sent.key, &sent.id, b"{}", &mut OsRng);
        assert!(read.open(&junk, &resource).is_err());
    }

    #[test]
    fn a_degenerate_sealing_key_is_refused() {
        let a = Identity::generate(&mut OsRng);
        let mut bad = a.public();
        bad.sealing = [0; 32];
        assert!(matches!(
            Mailbox::outgoing(&a, &bad, &ResourceId::from_bytes([1; 32])),
            Err(MailboxError::DegenerateKey)
        ));
    }
}
