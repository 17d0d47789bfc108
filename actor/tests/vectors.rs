//! The test vectors in `vectors/v1.json`: made here from fixed secrets and nonces, and checked
//! byte for byte, so a change to any format fails this test before it breaks another
//! implementation (the browser test reproduces the same file with WebCrypto alone).
//! `ZBASE_WRITE_VECTORS=1 cargo test -p zbase-actor --test vectors` writes the file anew.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use serde_json::json;
use zbase_actor::access::AccessKey;
use zbase_actor::envelope::{self, ContentKey};
use zbase_actor::mailbox::{EpochKey, Keyring, Mailbox};
use zbase_actor::merge::Change;
use zbase_actor::operation::{OpId, Operation, SignedOperation};
use zbase_actor::{Identity, Role, bundle, seal};
use zbase_proto::wire::ResourceId;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn vectors() -> serde_json::Value {
    let owner_secrets = ([0x11u8; 32], [0x22u8; 32]);
    let member_secrets = ([0x33u8; 32], [0x44u8; 32]);
    let owner = Identity::from_secrets(&owner_secrets.0, &owner_secrets.1);
    let member = Identity::from_secrets(&member_secrets.0, &member_secrets.1);
    let resource = ResourceId::from_bytes([0x55; 32]);
    let key = ContentKey::from_bytes(1, [0x66; 32]);
    let snapshot = b"{\"todo\":\"buy milk\"}".to_vec();
    let nonce = [0x77; 12];
    let sealed_envelope = envelope::encrypt_with_nonce(&key, &resource, &snapshot, nonce);
    assert_eq!(
        envelope::decrypt(std::slice::from_ref(&key), &resource, &sealed_envelope).unwrap(),
        snapshot
    );
    let ephemeral = [0x88; 32];
    let seal_nonce = [0x99; 12];
    let sealed_key = seal::seal_with(
        &key,
        &resource,
        &member.public().sealing,
        &ephemeral,
        seal_nonce,
    )
    .unwrap();
    assert_eq!(
        seal::open(&member, &resource, 1, &sealed_key)
            .unwrap()
            .bytes(),
        key.bytes()
    );
    let operation = Operation {
        resource,
        actor: owner.id(),
        clock: 3,
        deps: vec![OpId([0xaa; 32])],
        payload: b"set todo".to_vec(),
    }
    .sign(&owner)
    .unwrap();
    assert_eq!(
        SignedOperation::decode(operation.token()).unwrap(),
        operation
    );
    // The owner grants the member a role after that operation; both in one bundle.
    let grant = Operation {
        resource,
        actor: owner.id(),
        clock: 4,
        deps: vec![operation.id()],
        payload: Change::grant(&member.public(), Role::Editor).encode(),
    }
    .sign(&owner)
    .unwrap();
    let bundled = bundle::encode([&operation, &grant]);
    assert_eq!(bundle::decode(&bundled).unwrap().operations.len(), 2);

    // The owner hands the member the keys through their mailbox.
    let mailbox = Mailbox::outgoing(&owner, &member.public(), &resource).unwrap();
    let access = AccessKey::from_seed(&[0xbb; 32]);
    let keyring = Keyring {
        version: zbase_actor::mailbox::KEYRING_VERSION,
        resource: resource.as_str().to_owned(),
        station: "wss://station.example:8443".into(),
        owner: owner.id().to_string(),
        owner_sealing: b64(&owner.public().sealing),
        owner_proof: b64(&owner.public().proof),
        access: access.to_text().to_string(),
        keys: vec![EpochKey {
            epoch: 1,
            key: b64(key.bytes()),
        }],
    };
    let keyring_json = serde_json::to_vec(&keyring).unwrap();
    let mailbox_nonce = [0xcc; 12];
    let mailbox_snapshot =
        envelope::encrypt_with_nonce(mailbox.key(), &mailbox.id, &keyring_json, mailbox_nonce);
    let read = Mailbox::incoming(&member, &owner.public(), &resource).unwrap();
    assert_eq!(read.open(&mailbox_snapshot, &resource).unwrap(), keyring);

    // A revocation replaces that access key at the station (docs/KEY-ROTATION.md).
    let next = AccessKey::from_seed(&[0xdd; 32]);
    let challenge = [0xee; 32];
    let rotation = access.rotation_payload(&next, &challenge, &resource);
    let public_x = |key: &AccessKey| key.jwk()["x"].as_str().unwrap().to_owned();

    let identity = |identity: &Identity, secrets: &([u8; 32], [u8; 32])| {
        json!({
            "signingSecret": b64(&secrets.0),
            "sealingSecret": b64(&secrets.1),
            "actorId": identity.id().to_string(),
            "sealingPublic": b64(&identity.public().sealing),
            "sealingProof": b64(&identity.public().proof),
            "publicIdentity": identity.public().to_text(),
        })
    };
    json!({
        "version": 1,
        "about": "zbase actor formats v1 (docs/ACTOR-FORMATS.md); all byte strings base64url without padding",
        "owner": identity(&owner, &owner_secrets),
        "member": identity(&member, &member_secrets),
        "resource": resource.as_str(),
        "contentKey": { "epoch": 1, "key": b64(key.bytes()) },
        "envelope": {
            "snapshot": b64(&snapshot),
            "nonce": b64(&nonce),
            "envelope": b64(&sealed_envelope),
        },
        "sealedKey": {
            "recipient": "member",
            "ephemeralSecret": b64(&ephemeral),
            "nonce": b64(&seal_nonce),
            "sealed": b64(&sealed_key),
        },
        "operation": {
            "actor": "owner",
            "clock": 3,
            "deps": [b64(&[0xaa; 32])],
            "payload": b64(b"set todo"),
            "token": b64(operation.token()),
            "id": operation.id().to_string(),
        },
        "grant": {
            "actor": "owner",
            "clock": 4,
            "payload": b64(grant.operation().payload.as_slice()),
            "token": b64(grant.token()),
        },
        "bundle": {
            "tokens": [b64(operation.token()), b64(grant.token())],
            "bundle": b64(&bundled),
        },
        "mailbox": {
            "from": "owner",
            "to": "member",
            "id": mailbox.id.as_str(),
            "access": mailbox.access.to_text().to_string(),
            "accessPublic": public_x(&mailbox.access),
            "key": b64(mailbox.key().bytes()),
            "keyring": b64(&keyring_json),
            "nonce": b64(&mailbox_nonce),
            "snapshot": b64(&mailbox_snapshot),
        },
        "rotation": {
            "current": access.to_text().to_string(),
            "currentPublic": public_x(&access),
            "next": next.to_text().to_string(),
            "nextPublic": public_x(&next),
            "nextThumbprint": b64(&next.thumbprint()),
            "challenge": b64(&challenge),
            "payload": b64(&rotation),
        },
    })
}

#[test]
fn the_checked_in_vectors_are_what_this_crate_produces() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/v1.json");
    let made = serde_json::to_string_pretty(&vectors()).unwrap() + "\n";
    if std::env::var_os("ZBASE_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let kept = std::fs::read_to_string(&path).expect("actor/vectors/v1.json exists");
    assert_eq!(
        kept, made,
        "the formats changed: if on purpose, bump the version and regenerate with ZBASE_WRITE_VECTORS=1"
    );
}
