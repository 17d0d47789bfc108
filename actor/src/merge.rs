//! The deterministic merge: a set of signed operations in, the resource's state out (its
//! access list and its values), the same for any order and any duplication of the same set.
//!
//! The rules, all functions of the set alone (docs/ACTOR-FORMATS.md, "Merge"):
//! - an operation whose dependencies are not all known waits (pending); one whose clock is
//!   not exactly one above its highest dependency's is malformed;
//! - operations are applied in (clock, identifier) order, a linear extension of causality;
//! - a grant counts only if it names the member's sealing key with the member's own signature
//!   of it: keys are sent there at every rotation, so nobody may choose it for another;
//! - first, an operation counts if its signer's role allowed it at its causal point: the access
//!   list made of the counted grants among its ancestors (starting from the owner, the root of
//!   trust). Only grants that count this way may take anything away afterwards;
//! - then a revocation wins over what it did not see: an operation stops counting if a counted
//!   grant concurrent with it gives its signer (or, for a grant, its target) a role under which
//!   it would not be allowed. Without this a revoked actor could go on writing by never
//!   acknowledging its revocation, and a Manager could unmake an Owner by leaving its grant
//!   out of its dependencies. Two owners revoking each other concurrently cancel out;
//! - excluding an operation can take away what another relied on (a grant made by a revoked
//!   manager), so that step repeats until nothing more is excluded; it only excludes, so it
//!   ends, and the result depends on the set only.
//!
//! Values are a last-writer-wins map in (clock, identifier) order, the simplest CRDT that
//! gives the CLI `put`/`get`/`delete`; any CRDT whose operations commute can sit in its place.

use crate::acl::{Acl, Role};
use crate::identity::{ActorId, PublicIdentity};
use crate::operation::{OpId, SignedOperation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use zbase_proto::wire::ResourceId;

/// What one operation does: the payload of an operation, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum Change {
    /// Sets `key` to `value` (base64url).
    Put {
        /// The key.
        key: String,
        /// The value, base64url.
        value: String,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Gives `actor` a role (Revoked to take it back); `sealing` is its X25519 key and
    /// `proof` the actor's own signature of it (base64url).
    Grant {
        /// The member's identifier.
        actor: String,
        /// The role it holds from now on.
        role: Role,
        /// Its X25519 public key, base64url.
        sealing: String,
        /// The member's Ed25519 signature of its sealing key (see
        /// [`crate::identity::sealing_proof_message`]), base64url.
        proof: String,
    },
    /// Says the signer merged these operations; changes nothing.
    Ack {
        /// The operations acknowledged.
        of: Vec<String>,
    },
}

impl Change {
    /// A grant of `role` to `member`.
    pub fn grant(member: &PublicIdentity, role: Role) -> Change {
        Change::Grant {
            actor: member.id.to_string(),
            role,
            sealing: crate::b64(&member.sealing),
            proof: crate::b64(&member.proof),
        }
    }

    /// For a grant: whom it names, verified, and the role; `None` for another change or a
    /// grant whose key its actor did not sign.
    pub fn granted(&self) -> Option<(PublicIdentity, Role)> {
        match self {
            Change::Grant {
                actor,
                role,
                sealing,
                proof,
            } => PublicIdentity::from_parts(actor, sealing, proof).map(|member| (member, *role)),
            _ => None,
        }
    }

    /// The payload bytes of an operation making this change.
    pub fn encode(&self) -> Vec<u8> {
        // A derived Serialize of strings and enums cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("a Change serialises"))
    }

    /// The change an operation's payload describes.
    pub fn decode(payload: &[u8]) -> Option<Change> {
        let change: Change = serde_json::from_slice(payload).ok()?;
        match &change {
            Change::Grant {
                actor,
                sealing,
                proof,
                ..
            } => {
                ActorId::parse(actor)?;
                // A low-order key would make every box sealed to it readable by anyone.
                if !crate::seal::usable_key(&crate::from_b64::<32>(sealing)?) {
                    return None;
                }
                // Whether it is the actor's signature is the merge's question (a rejection
                // of its own); here only whether it is one.
                crate::from_b64::<64>(proof)?;
            }
            Change::Put { value, .. } => {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()?;
            }
            Change::Delete { .. } | Change::Ack { .. } => {}
        }
        Some(change)
    }
}

/// Why an operation is not part of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    /// For another resource.
    OtherResource,
    /// Its payload is not a change this version knows.
    UnknownChange,
    /// Its clock is not above one of its dependencies'.
    Clock,
    /// A grant naming a sealing key its actor did not sign.
    UnprovenKey,
    /// Its signer's role did not allow it at its causal point.
    NotAllowed,
    /// A concurrent change of its signer's role did not allow it.
    RevokedConcurrently,
}

/// The state a set of operations merges into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Who holds which role.
    pub acl: Acl,
    /// The values.
    pub values: BTreeMap<String, Vec<u8>>,
    /// The operations that count, in the order applied.
    pub accepted: Vec<OpId>,
    /// The operations excluded, and why, in identifier order.
    pub rejected: Vec<(OpId, Rejection)>,
    /// Operations waiting for dependencies not seen yet, in identifier order.
    pub pending: Vec<OpId>,
    /// The accepted operations nothing accepted follows: the dependencies of the next one.
    pub heads: Vec<OpId>,
    /// The highest clock among accepted operations.
    pub clock: u64,
}

/// An operation placed in the order, with its change and its ancestors.
struct Node<'a> {
    op: &'a SignedOperation,
    /// `None` for a change this version does not know: it never counts, but it stays in
    /// the history so what follows it is not stranded.
    change: Option<Change>,
    /// For a grant: whom it names (its key proved) and the role, checked once.
    grant: Option<(PublicIdentity, Role)>,
    deps: Vec<usize>,
    /// Every ancestor, as a bit set over positions in the order.
    ancestors: Vec<u64>,
}

impl Node<'_> {
    fn descends_from(&self, index: usize) -> bool {
        self.ancestors
            .get(index / 64)
            .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }
}

/// Merges `ops` of `resource`, whose owner is `owner`.
pub fn merge<'a>(
    resource: &ResourceId,
    owner: PublicIdentity,
    ops: impl IntoIterator<Item = &'a SignedOperation>,
) -> Merged {
    let mut unique: BTreeMap<OpId, &SignedOperation> = BTreeMap::new();
    for op in ops {
        unique.entry(op.id()).or_insert(op);
    }
    let mut rejected = Vec::new();
    let mut candidates: Vec<(OpId, &SignedOperation)> = Vec::new();
    for (id, op) in &unique {
        if op.operation().resource != *resource {
            rejected.push((*id, Rejection::OtherResource));
        } else {
            candidates.push((*id, op));
        }
    }
    // Keep only operations whose whole ancestry is known and whose clock is exactly one above
    // their highest dependency's (1 without any): a clock chosen freely would let an actor
    // order itself last for good. Repeated, since leaving one out strands its descendants.
    let clock_of: HashMap<OpId, u64> = candidates
        .iter()
        .map(|(id, op)| (*id, op.operation().clock))
        .collect();
    let mut pending = Vec::new();
    loop {
        let known: std::collections::HashSet<OpId> = candidates.iter().map(|(id, _)| *id).collect();
        let before = candidates.len();
        candidates.retain(|(id, op)| {
            let operation = op.operation();
            if operation.deps.iter().any(|dep| !known.contains(dep)) {
                pending.push(*id);
                return false;
            }
            let expected = operation
                .deps
                .iter()
                .map(|dep| clock_of[dep])
                .max()
                .unwrap_or(0)
                .checked_add(1);
            if expected != Some(operation.clock) {
                rejected.push((*id, Rejection::Clock));
                return false;
            }
            true
        });
        if candidates.len() == before {
            break;
        }
    }
    candidates.sort_by_key(|(id, op)| (op.operation().clock, *id));
    let position: HashMap<OpId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(index, (id, _))| (*id, index))
        .collect();
    let words = candidates.len().div_ceil(64);
    let mut nodes: Vec<Node> = Vec::with_capacity(candidates.len());
    for (_, op) in candidates {
        let deps: Vec<usize> = op
            .operation()
            .deps
            .iter()
            .map(|dep| position[dep])
            .collect();
        let mut ancestors = vec![0u64; words];
        for &dep in &deps {
            ancestors[dep / 64] |= 1u64 << (dep % 64);
            for (word, theirs) in ancestors.iter_mut().zip(&nodes[dep].ancestors) {
                *word |= theirs;
            }
        }
        let change = Change::decode(&op.operation().payload);
        let grant = change.as_ref().and_then(Change::granted);
        nodes.push(Node {
            op,
            change,
            grant,
            deps,
            ancestors,
        });
    }

    // Grants are few beside data: the checks walk them only.
    let grants = Grants::of(&nodes);
    // First what each operation's causal point allows, in order (an ancestor is judged
    // before its descendants); only those grants may then act as concurrent revocations, so
    // an unauthorised grant can never take anything away.
    let mut why: Vec<Option<Rejection>> = vec![None; nodes.len()];
    let mut accepted = vec![false; nodes.len()];
    for index in 0..nodes.len() {
        why[index] = judge(&nodes, &grants, &accepted, index, owner, false);
        accepted[index] = why[index].is_none();
    }
    // Then concurrent changes of roles, until nothing more is rejected. Only rejections
    // happen, so this ends; each round judges against the previous round's verdicts.
    loop {
        let verdicts: Vec<Option<Rejection>> = (0..nodes.len())
            .map(|index| {
                if !accepted[index] {
                    return why[index];
                }
                judge(&nodes, &grants, &accepted, index, owner, true)
            })
            .collect();
        let mut changed = false;
        for (index, verdict) in verdicts.into_iter().enumerate() {
            if accepted[index] && verdict.is_some() {
                accepted[index] = false;
                why[index] = verdict;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    let mut acl = Acl::new(owner);
    let mut values = BTreeMap::new();
    let mut applied = Vec::new();
    let mut followed = vec![false; nodes.len()];
    let mut clock = 0;
    for (index, node) in nodes.iter().enumerate() {
        let id = node.op.id();
        if !accepted[index] {
            if let Some(reason) = why[index] {
                rejected.push((id, reason));
            }
            continue;
        }
        for &dep in &node.deps {
            followed[dep] = true;
        }
        clock = clock.max(node.op.operation().clock);
        applied.push(id);
        match &node.change {
            Some(Change::Put { key, value }) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value)
                    .unwrap_or_default();
                values.insert(key.clone(), bytes);
            }
            Some(Change::Delete { key }) => {
                values.remove(key);
            }
            Some(Change::Grant { .. }) => apply_grant(&mut acl, node),
            Some(Change::Ack { .. }) | None => {}
        }
    }
    let heads = nodes
        .iter()
        .enumerate()
        .filter(|(index, _)| accepted[*index] && !followed[*index])
        .map(|(_, node)| node.op.id())
        .collect();
    rejected.sort();
    pending.sort();
    Merged {
        acl,
        values,
        accepted: applied,
        rejected,
        pending,
        heads,
        clock,
    }
}

/// Applies an accepted grant (its signer's authority was checked when it was judged).
fn apply_grant(acl: &mut Acl, node: &Node) {
    if let Some((member, role)) = node.grant {
        acl.force(member, role);
    }
}

/// Where the grants are among the nodes: all of them in order, and by the actor they name.
struct Grants {
    all: Vec<usize>,
    to: HashMap<ActorId, Vec<usize>>,
}

impl Grants {
    fn of(nodes: &[Node]) -> Grants {
        let mut grants = Grants {
            all: Vec::new(),
            to: HashMap::new(),
        };
        for (index, node) in nodes.iter().enumerate() {
            if let Some((member, _)) = node.grant {
                grants.all.push(index);
                grants.to.entry(member.id).or_default().push(index);
            }
        }
        grants
    }

    /// The accepted grants to `actor` concurrent with node `index` (neither saw the other).
    fn concurrent<'n>(
        &'n self,
        nodes: &'n [Node],
        accepted: &'n [bool],
        index: usize,
        actor: &ActorId,
    ) -> impl Iterator<Item = Role> + 'n {
        let node = &nodes[index];
        self.to
            .get(actor)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(move |&&other| {
                other != index
                    && accepted[other]
                    && !node.descends_from(other)
                    && !nodes[other].descends_from(index)
            })
            .filter_map(|&other| nodes[other].grant.map(|(_, role)| role))
    }
}

/// Whether node `index` counts, given which others count now: by its causal point alone, or
/// (`concurrent`) also under every concurrent change of its signer's role, and for a grant,
/// of its target's.
fn judge(
    nodes: &[Node],
    grants: &Grants,
    accepted: &[bool],
    index: usize,
    owner: PublicIdentity,
    concurrent: bool,
) -> Option<Rejection> {
    let node = &nodes[index];
    let Some(change) = &node.change else {
        return Some(Rejection::UnknownChange);
    };
    if matches!(change, Change::Grant { .. }) && node.grant.is_none() {
        return Some(Rejection::UnprovenKey);
    }
    let signer = node.op.operation().actor;
    // The access list at its causal point: the accepted grants among its ancestors, in order.
    let mut acl = Acl::new(owner);
    for &other in grants.all.iter().take_while(|&&other| other < index) {
        if accepted[other] && node.descends_from(other) {
            apply_grant(&mut acl, &nodes[other]);
        }
    }
    let Some(role) = acl.role(&signer) else {
        return Some(Rejection::NotAllowed);
    };
    let target = node.grant.map(|(member, _)| member.id);
    let target_role = target.and_then(|actor| acl.role(&actor));
    if !allowed(role, change, target_role) {
        return Some(Rejection::NotAllowed);
    }
    if !concurrent {
        return None;
    }
    // Every accepted grant to the signer that this operation did not see, and that did not
    // see it, must allow it too.
    if grants
        .concurrent(nodes, accepted, index, &signer)
        .any(|role| !allowed(role, change, target_role))
    {
        return Some(Rejection::RevokedConcurrently);
    }
    // A grant must be allowed whatever role a concurrent grant gave its target: otherwise a
    // Manager could unmake an Owner by leaving the grant that made it out of its dependencies.
    if let Some(target) = target
        && grants
            .concurrent(nodes, accepted, index, &target)
            .any(|target_role| !allowed(role, change, Some(target_role)))
    {
        return Some(Rejection::RevokedConcurrently);
    }
    None
}

/// Whether a signer of `role` may make `change`, its target (for a grant) holding
/// `target_role`.
fn allowed(role: Role, change: &Change, target_role: Option<Role>) -> bool {
    match change {
        Change::Put { .. } | Change::Delete { .. } => role.writes(),
        Change::Grant { role: to, .. } => role.may_set(target_role, *to),
        Change::Ack { .. } => role.reads(),
    }
}
