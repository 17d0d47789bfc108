//! The merge engine: unauthorized operations are excluded and the rest merge, and the result is
//! the same for any order and duplication of the same operations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use proptest::prelude::*;
use std::collections::HashMap;
use zbase_actor::merge::{Change, Rejection, merge};
use zbase_actor::operation::{OpId, Operation, SignedOperation};
use zbase_actor::{Identity, PublicIdentity, Role};
use zbase_proto::wire::ResourceId;

const RESOURCE: [u8; 32] = [7; 32];

/// Actors writing operations with correct clocks.
struct Sim {
    actors: Vec<Identity>,
    clocks: HashMap<OpId, u64>,
}

impl Sim {
    fn new(count: u8) -> Sim {
        Sim {
            actors: (1..=count)
                .map(|n| Identity::from_secrets(&[n; 32], &[n.wrapping_add(100); 32]))
                .collect(),
            clocks: HashMap::new(),
        }
    }

    fn op(&mut self, actor: usize, deps: &[&SignedOperation], change: Change) -> SignedOperation {
        let clock = deps
            .iter()
            .map(|dep| self.clocks[&dep.id()])
            .max()
            .unwrap_or(0)
            + 1;
        let op = Operation {
            resource: ResourceId::from_bytes(RESOURCE),
            actor: self.actors[actor].id(),
            clock,
            deps: deps.iter().map(|dep| dep.id()).collect(),
            payload: change.encode(),
        }
        .sign(&self.actors[actor])
        .unwrap();
        self.clocks.insert(op.id(), clock);
        op
    }

    fn grant(&self, actor: usize, role: Role) -> Change {
        Change::grant(&self.actors[actor].public(), role)
    }

    /// A grant to `actor` naming `by`'s sealing key, with `by`'s proof of it.
    fn grant_under_key_of(&self, by: usize, actor: usize, role: Role) -> Change {
        let theirs = self.actors[by].public();
        Change::Grant {
            actor: self.actors[actor].id().to_string(),
            role,
            sealing: b64(&theirs.sealing),
            proof: b64(&theirs.proof),
        }
    }

    fn merge(&self, ops: &[SignedOperation]) -> zbase_actor::Merged {
        merge(
            &ResourceId::from_bytes(RESOURCE),
            self.actors[0].public(),
            ops,
        )
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn put(key: &str, value: &str) -> Change {
    Change::Put {
        key: key.into(),
        value: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
    }
}

fn rejected(merged: &zbase_actor::Merged, op: &SignedOperation) -> Option<Rejection> {
    merged
        .rejected
        .iter()
        .find(|(id, _)| *id == op.id())
        .map(|(_, why)| *why)
}

const OWNER: usize = 0;
const MANAGER: usize = 1;
const EDITOR: usize = 2;
const VIEWER: usize = 3;
const STRANGER: usize = 4;

#[test]
fn each_role_does_what_the_model_allows_and_nothing_more() {
    let mut sim = Sim::new(5);
    let m = sim.op(OWNER, &[], sim.grant(MANAGER, Role::Manager));
    let e = sim.op(MANAGER, &[&m], sim.grant(EDITOR, Role::Editor));
    let v = sim.op(MANAGER, &[&e], sim.grant(VIEWER, Role::Viewer));
    let written = sim.op(EDITOR, &[&v], put("a", "1"));
    let by_viewer = sim.op(VIEWER, &[&v], put("b", "2"));
    let owner_by_manager = sim.op(MANAGER, &[&v], sim.grant(STRANGER, Role::Owner));
    let by_stranger = sim.op(STRANGER, &[&v], put("c", "3"));
    let manager_revokes_owner = sim.op(MANAGER, &[&v], sim.grant(OWNER, Role::Revoked));
    let ops = vec![
        m,
        e,
        v,
        written.clone(),
        by_viewer.clone(),
        owner_by_manager.clone(),
        by_stranger.clone(),
        manager_revokes_owner.clone(),
    ];
    let merged = sim.merge(&ops);
    assert_eq!(merged.values.get("a").map(Vec::as_slice), Some(&b"1"[..]));
    assert_eq!(merged.values.len(), 1, "{:?}", merged.values);
    for op in [
        &by_viewer,
        &owner_by_manager,
        &by_stranger,
        &manager_revokes_owner,
    ] {
        assert_eq!(rejected(&merged, op), Some(Rejection::NotAllowed));
    }
    assert_eq!(merged.acl.role(&sim.actors[OWNER].id()), Some(Role::Owner));
    assert_eq!(
        merged.acl.role(&sim.actors[VIEWER].id()),
        Some(Role::Viewer)
    );
    assert_eq!(merged.acl.role(&sim.actors[STRANGER].id()), None);
    assert_eq!(merged.heads, vec![written.id()]);
}

#[test]
fn a_revoked_actor_keeps_what_it_wrote_before_but_nothing_concurrent_or_after() {
    let mut sim = Sim::new(3);
    let e = sim.op(OWNER, &[], sim.grant(EDITOR, Role::Editor));
    let before = sim.op(EDITOR, &[&e], put("a", "before"));
    let revoke = sim.op(OWNER, &[&before], sim.grant(EDITOR, Role::Revoked));
    // Written without acknowledging the revocation (it never saw it, or pretends so).
    let concurrent = sim.op(EDITOR, &[&before], put("b", "concurrent"));
    let after = sim.op(EDITOR, &[&revoke], put("c", "after"));
    let merged = sim.merge(&[e, before, revoke, concurrent.clone(), after.clone()]);
    assert_eq!(
        merged.values.get("a").map(Vec::as_slice),
        Some(&b"before"[..])
    );
    assert_eq!(
        rejected(&merged, &concurrent),
        Some(Rejection::RevokedConcurrently)
    );
    assert_eq!(rejected(&merged, &after), Some(Rejection::NotAllowed));
    assert_eq!(
        merged.acl.role(&sim.actors[EDITOR].id()),
        Some(Role::Revoked)
    );
}

#[test]
fn what_a_concurrently_revoked_manager_granted_does_not_count() {
    let mut sim = Sim::new(4);
    let m = sim.op(OWNER, &[], sim.grant(MANAGER, Role::Manager));
    let revoke = sim.op(OWNER, &[&m], sim.grant(MANAGER, Role::Revoked));
    let granted = sim.op(MANAGER, &[&m], sim.grant(EDITOR, Role::Editor));
    let written = sim.op(EDITOR, &[&granted], put("x", "1"));
    let merged = sim.merge(&[m, revoke, granted.clone(), written.clone()]);
    assert_eq!(
        rejected(&merged, &granted),
        Some(Rejection::RevokedConcurrently)
    );
    assert_eq!(rejected(&merged, &written), Some(Rejection::NotAllowed));
    assert!(merged.values.is_empty());
}

#[test]
fn two_owners_revoking_each_other_concurrently_cancel_out() {
    let mut sim = Sim::new(2);
    let second = sim.op(OWNER, &[], sim.grant(1, Role::Owner));
    let first_revokes = sim.op(OWNER, &[&second], sim.grant(1, Role::Revoked));
    let second_revokes = sim.op(1, &[&second], sim.grant(OWNER, Role::Revoked));
    let merged = sim.merge(&[second, first_revokes.clone(), second_revokes.clone()]);
    assert_eq!(
        rejected(&merged, &first_revokes),
        Some(Rejection::RevokedConcurrently)
    );
    assert_eq!(
        rejected(&merged, &second_revokes),
        Some(Rejection::RevokedConcurrently)
    );
    assert_eq!(merged.acl.role(&sim.actors[0].id()), Some(Role::Owner));
    assert_eq!(merged.acl.role(&sim.actors[1].id()), Some(Role::Owner));
}

#[test]
fn missing_dependencies_wait_and_bad_clocks_or_payloads_are_refused() {
    let mut sim = Sim::new(2);
    let e = sim.op(OWNER, &[], sim.grant(EDITOR - 1, Role::Editor));
    let waits = sim.op(OWNER, &[&e], put("k", "v"));
    let merged = sim.merge(std::slice::from_ref(&waits));
    assert_eq!(merged.pending, vec![waits.id()]);
    assert!(merged.values.is_empty());
    let merged = sim.merge(&[waits.clone(), e.clone()]);
    assert!(merged.pending.is_empty());
    assert_eq!(merged.values.get("k").map(Vec::as_slice), Some(&b"v"[..]));

    let owner = &sim.actors[OWNER];
    let backdated = Operation {
        resource: ResourceId::from_bytes(RESOURCE),
        actor: owner.id(),
        clock: 1,
        deps: vec![e.id()],
        payload: put("z", "z").encode(),
    }
    .sign(owner)
    .unwrap();
    let junk = Operation {
        resource: ResourceId::from_bytes(RESOURCE),
        actor: owner.id(),
        clock: 1,
        deps: vec![],
        payload: b"{\"op\":\"format\",\"disk\":\"c\"}".to_vec(),
    }
    .sign(owner)
    .unwrap();
    let elsewhere = Operation {
        resource: ResourceId::from_bytes([8; 32]),
        actor: owner.id(),
        clock: 1,
        deps: vec![],
        payload: put("w", "w").encode(),
    }
    .sign(owner)
    .unwrap();
    let merged = sim.merge(&[e, backdated.clone(), junk.clone(), elsewhere.clone()]);
    assert_eq!(rejected(&merged, &backdated), Some(Rejection::Clock));
    assert_eq!(rejected(&merged, &junk), Some(Rejection::UnknownChange));
    assert_eq!(
        rejected(&merged, &elsewhere),
        Some(Rejection::OtherResource)
    );
}

#[test]
fn an_unauthorised_revocation_takes_nothing_away() {
    let mut sim = Sim::new(4);
    let v = sim.op(OWNER, &[], sim.grant(VIEWER, Role::Viewer));
    // A viewer (or anyone) "revokes" the owner, seeing nothing: concurrent with all of it.
    let forged = sim.op(VIEWER, &[], sim.grant(OWNER, Role::Revoked));
    let written = sim.op(OWNER, &[&v], put("a", "still mine"));
    let later = sim.op(OWNER, &[&written], put("b", "and this"));
    let merged = sim.merge(&[v, forged.clone(), written, later]);
    assert_eq!(rejected(&merged, &forged), Some(Rejection::NotAllowed));
    assert_eq!(merged.values.len(), 2, "{:?}", merged.rejected);
    assert_eq!(merged.acl.role(&sim.actors[OWNER].id()), Some(Role::Owner));
}

#[test]
fn a_manager_cannot_unmake_an_owner_by_leaving_its_grant_out() {
    let mut sim = Sim::new(4);
    let m = sim.op(OWNER, &[], sim.grant(MANAGER, Role::Manager));
    let second_owner = sim.op(OWNER, &[&m], sim.grant(EDITOR, Role::Owner));
    // The manager depends on its own grant only, as if the second owner did not exist yet,
    // and makes a long chain so its revocation sorts last.
    let mut chain = sim.op(MANAGER, &[&m], put("x", "1"));
    let mut ops = vec![m, second_owner.clone()];
    for n in 0..5 {
        ops.push(chain.clone());
        chain = sim.op(MANAGER, &[&chain], put("x", &n.to_string()));
    }
    ops.push(chain.clone());
    let demote = sim.op(MANAGER, &[&chain], sim.grant(EDITOR, Role::Revoked));
    ops.push(demote.clone());
    let merged = sim.merge(&ops);
    assert_eq!(
        rejected(&merged, &demote),
        Some(Rejection::RevokedConcurrently)
    );
    assert_eq!(merged.acl.role(&sim.actors[EDITOR].id()), Some(Role::Owner));
}

#[test]
fn a_clock_must_be_one_above_the_dependencies() {
    let sim = Sim::new(2);
    let owner = &sim.actors[OWNER];
    let pinned = Operation {
        resource: ResourceId::from_bytes(RESOURCE),
        actor: owner.id(),
        clock: u64::MAX,
        deps: vec![],
        payload: put("k", "forever").encode(),
    }
    .sign(owner)
    .unwrap();
    let merged = sim.merge(std::slice::from_ref(&pinned));
    assert_eq!(rejected(&merged, &pinned), Some(Rejection::Clock));
}

#[test]
fn a_grant_to_a_degenerate_sealing_key_is_not_a_change() {
    let sim = Sim::new(2);
    let change = Change::Grant {
        actor: sim.actors[1].id().to_string(),
        role: Role::Viewer,
        sealing: b64(&[0u8; 32]),
        proof: b64(&sim.actors[1].public().proof),
    };
    assert_eq!(Change::decode(&change.encode()), None);
}

#[test]
fn a_grant_naming_a_key_its_actor_did_not_sign_counts_for_nothing() {
    let mut sim = Sim::new(4);
    let m = sim.op(OWNER, &[], sim.grant(MANAGER, Role::Manager));
    // The manager brings in a new member under a key of its own: were it counted, every key
    // rotated to that member after the manager's revocation would reach the manager.
    let planted = sim.op(
        MANAGER,
        &[&m],
        sim.grant_under_key_of(MANAGER, EDITOR, Role::Editor),
    );
    let written = sim.op(EDITOR, &[&planted], put("x", "1"));
    // A proof that is no signature of the key at all.
    let mut forged = sim.grant(VIEWER, Role::Viewer);
    if let Change::Grant { proof, .. } = &mut forged {
        *proof = b64(&[7; 64]);
    }
    let forged = sim.op(OWNER, &[&m], forged);
    let merged = sim.merge(&[m.clone(), planted.clone(), written.clone(), forged.clone()]);
    assert_eq!(rejected(&merged, &planted), Some(Rejection::UnprovenKey));
    assert_eq!(rejected(&merged, &forged), Some(Rejection::UnprovenKey));
    assert_eq!(rejected(&merged, &written), Some(Rejection::NotAllowed));
    assert_eq!(merged.acl.role(&sim.actors[EDITOR].id()), None);
    assert_eq!(merged.acl.role(&sim.actors[VIEWER].id()), None);

    // An unproven revocation of the editor, concurrent with its write, takes nothing away.
    let granted = sim.op(OWNER, &[&m], sim.grant(EDITOR, Role::Editor));
    let wrote = sim.op(EDITOR, &[&granted], put("y", "2"));
    let unproven_revoke = sim.op(
        OWNER,
        &[&granted],
        sim.grant_under_key_of(OWNER, EDITOR, Role::Revoked),
    );
    let merged = sim.merge(&[
        m.clone(),
        granted.clone(),
        wrote.clone(),
        unproven_revoke.clone(),
    ]);
    assert_eq!(
        rejected(&merged, &unproven_revoke),
        Some(Rejection::UnprovenKey)
    );
    assert!(merged.accepted.contains(&wrote.id()));
    assert_eq!(merged.values.get("y").map(Vec::as_slice), Some(&b"2"[..]));

    // The same member granted with its own proved key counts.
    let granted = sim.op(MANAGER, &[&m], sim.grant(EDITOR, Role::Editor));
    let merged = sim.merge(&[m, granted]);
    assert_eq!(
        merged.acl.public(&sim.actors[EDITOR].id()),
        Some(sim.actors[EDITOR].public())
    );
}

/// A random history: each step, a random actor makes a random change on top of a random
/// subset of what exists (so there is plenty of concurrency), grants and revocations included.
fn history(steps: &[(usize, u8, Vec<usize>)]) -> (Sim, Vec<SignedOperation>) {
    let mut sim = Sim::new(4);
    let mut ops: Vec<SignedOperation> = Vec::new();
    for (actor, kind, picks) in steps {
        let deps: Vec<&SignedOperation> = {
            let mut chosen: Vec<usize> = picks
                .iter()
                .filter(|_| !ops.is_empty())
                .map(|p| p % ops.len())
                .collect();
            chosen.sort_unstable();
            chosen.dedup();
            chosen.into_iter().map(|index| &ops[index]).collect()
        };
        let deps: Vec<SignedOperation> = deps.into_iter().cloned().collect();
        let refs: Vec<&SignedOperation> = deps.iter().collect();
        let target = usize::from(*kind) % 4;
        let change = match kind % 7 {
            0 => sim.grant(target, Role::Manager),
            1 => sim.grant(target, Role::Editor),
            2 => sim.grant(target, Role::Revoked),
            // A grant under the signer's key: never counted unless the signer grants itself,
            // and never a reason for anything else to stop counting.
            6 => sim.grant_under_key_of(*actor % 4, target, Role::Editor),
            3 => Change::Delete {
                key: format!("k{}", kind % 3),
            },
            _ => put(&format!("k{}", kind % 3), &format!("{actor}:{kind}")),
        };
        let op = sim.op(*actor % 4, &refs, change);
        ops.push(op);
    }
    (sim, ops)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_order_and_any_duplication_merge_to_the_same_state(
        steps in proptest::collection::vec((0usize..4, any::<u8>(), proptest::collection::vec(any::<usize>(), 0..3)), 1..40),
        seed in any::<u64>(),
    ) {
        let (sim, ops) = history(&steps);
        let expected = sim.merge(&ops);
        use rand::{SeedableRng as _, seq::SliceRandom as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut shuffled: Vec<SignedOperation> = ops.clone();
        let extra: Vec<SignedOperation> = ops.choose_multiple(&mut rng, ops.len() / 2 + 1).cloned().collect();
        shuffled.extend(extra);
        shuffled.shuffle(&mut rng);
        prop_assert_eq!(sim.merge(&shuffled), expected.clone());
        // Every operation is accounted for exactly once.
        // Every distinct operation is accounted for exactly once (two steps making the same
        // change on the same dependencies make the same operation).
        let distinct: std::collections::HashSet<OpId> = ops.iter().map(SignedOperation::id).collect();
        // No grant without its actor's proof counts, and every member's key is its own.
        for op in &ops {
            let change = Change::decode(&op.operation().payload);
            if matches!(change, Some(Change::Grant { .. })) && change.and_then(|c| c.granted()).is_none() {
                prop_assert!(!expected.accepted.contains(&op.id()));
            }
        }
        for (actor, member) in expected.acl.members() {
            prop_assert_eq!(
                PublicIdentity::verified(*actor, member.public.sealing, member.public.proof),
                Some(member.public)
            );
        }
        prop_assert_eq!(
            expected.accepted.len() + expected.rejected.len() + expected.pending.len(),
            distinct.len()
        );
    }
}
