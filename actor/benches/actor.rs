//! `make bench`, the actor's figures (issue 9), each beside the raw primitive it is built on,
//! measured in the same run:
//!
//! - merge: operations a second, from signed tokens to merged state (every token's signature
//!   checked, then the merge), beside Ed25519 verifications a second of the same tokens alone;
//! - envelopes: encryption and decryption MB/s of 64 KiB snapshots, beside AES-256-GCM on the
//!   same bytes with a fixed key (no key derivation, no header).
//!
//! Bounded: a fixed number of operations and bytes per round, three rounds, medians reported.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use std::time::Instant;
use zbase_actor::envelope::{self, ContentKey};
use zbase_actor::merge::{Change, merge};
use zbase_actor::operation::{Operation, SignedOperation};
use zbase_actor::{ActorId, Identity, Role};
use zbase_proto::wire::ResourceId;

const OPERATIONS: usize = 5_000;
const SNAPSHOT: usize = 64 << 10;
const SNAPSHOTS: usize = 400;
const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A history of `OPERATIONS` operations: the owner grants three editors, who write in turns,
/// each on top of the latest operation it knows (every few steps, of the others' too).
fn history(resource: ResourceId) -> (Identity, Vec<Vec<u8>>) {
    let owner = Identity::from_secrets(&[1; 32], &[2; 32]);
    let editors: Vec<Identity> = (3..6u8)
        .map(|n| Identity::from_secrets(&[n; 32], &[n + 10; 32]))
        .collect();
    let mut tokens = Vec::with_capacity(OPERATIONS);
    let mut last: Option<(zbase_actor::operation::OpId, u64)> = None;
    let sign = |identity: &Identity,
                change: Change,
                last: &Option<(zbase_actor::operation::OpId, u64)>| {
        Operation {
            resource,
            actor: identity.id(),
            clock: last.map_or(1, |(_, clock)| clock + 1),
            deps: last.iter().map(|(id, _)| *id).collect(),
            payload: change.encode(),
        }
        .sign(identity)
        .unwrap()
    };
    for editor in &editors {
        let op = sign(&owner, Change::grant(&editor.public(), Role::Editor), &last);
        last = Some((op.id(), op.operation().clock));
        tokens.push(op.token().to_vec());
    }
    let mut n = 0usize;
    while tokens.len() < OPERATIONS {
        let editor = &editors[n % editors.len()];
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("value {n}"));
        let op = sign(
            editor,
            Change::Put {
                key: format!("key{}", n % 100),
                value,
            },
            &last,
        );
        last = Some((op.id(), op.operation().clock));
        tokens.push(op.token().to_vec());
        n += 1;
    }
    (owner, tokens)
}

fn main() {
    let resource = ResourceId::from_bytes([9; 32]);
    let (owner, tokens) = history(resource);
    let mut merged_rates = Vec::new();
    let mut verify_rates = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let ops: Vec<SignedOperation> = tokens
            .iter()
            .map(|t| SignedOperation::decode(t).unwrap())
            .collect();
        let merged = merge(&resource, owner.public(), &ops);
        assert_eq!(merged.accepted.len(), OPERATIONS);
        merged_rates.push(OPERATIONS as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        for token in &tokens {
            let (signed, signature) = token.split_at(token.len() - 64);
            let actor = ActorId::from_bytes(signed[47..79].try_into().unwrap());
            assert!(actor.verify(signed, signature.try_into().unwrap()));
        }
        verify_rates.push(OPERATIONS as f64 / start.elapsed().as_secs_f64());
    }

    let key = ContentKey::from_bytes(1, [7; 32]);
    let snapshot = vec![0x5au8; SNAPSHOT];
    let raw = Aes256Gcm::new(&[7u8; 32].into());
    let megabytes = (SNAPSHOT * SNAPSHOTS) as f64 / 1e6;
    let (mut seal, mut open, mut raw_seal, mut raw_open) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let sealed: Vec<Vec<u8>> = (0..SNAPSHOTS)
            .map(|_| envelope::encrypt(&key, &resource, &snapshot, &mut rand::rngs::OsRng))
            .collect();
        seal.push(megabytes / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for one in &sealed {
            envelope::decrypt(std::slice::from_ref(&key), &resource, one).unwrap();
        }
        open.push(megabytes / start.elapsed().as_secs_f64());

        let nonce = Nonce::from([3u8; 12]);
        let start = Instant::now();
        let sealed: Vec<Vec<u8>> = (0..SNAPSHOTS)
            .map(|_| {
                raw.encrypt(
                    &nonce,
                    Payload {
                        msg: &snapshot,
                        aad: b"",
                    },
                )
                .unwrap()
            })
            .collect();
        raw_seal.push(megabytes / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for one in &sealed {
            raw.decrypt(&nonce, Payload { msg: one, aad: b"" }).unwrap();
        }
        raw_open.push(megabytes / start.elapsed().as_secs_f64());
    }
    println!("zbase-actor, {ROUNDS} rounds, medians");
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        "figure", "actor", "baseline", "ratio"
    );
    let row = |name: &str, actor: f64, baseline: f64, unit: &str| {
        println!(
            "{:<44} {:>10.0} {unit:<3} {:>10.0} {unit:<3} {:>6.2}x",
            name,
            actor,
            baseline,
            actor / baseline
        );
    };
    row(
        &format!("merge {OPERATIONS} ops (verify + merge) vs Ed25519 verify"),
        median(merged_rates),
        median(verify_rates),
        "/s",
    );
    row(
        "envelope encrypt 64 KiB vs raw AES-256-GCM",
        median(seal),
        median(raw_seal),
        "MB/s",
    );
    row(
        "envelope decrypt 64 KiB vs raw AES-256-GCM",
        median(open),
        median(raw_open),
        "MB/s",
    );
}
