//! The deterministic merge: a set of signed operations in, the resource's state out (its
//! access list and its values), the same for any order and any duplication of the same set.
//!
//! The rules, all functions of the set alone:
//! - an operation whose dependencies are not all known waits (pending), and one whose clock is
//!   not above every dependency's is malformed;
//! - operations are applied in (clock, identifier) order, a linear extension of causality
//!   because a clock is above its dependencies';
//! - an operation counts only if its signer's role allowed it at its causal point: the access
//!   list made of the grants among its ancestors (starting from the owner, the root of trust);
//! - a revocation wins over what it did not see: an operation by an actor whose role a
//!   concurrent grant lowered must be allowed under that role too. Without this, a revoked
//!   actor could go on writing by never acknowledging its revocation. Two owners revoking each
//!   other concurrently therefore cancel each other out;
//! - rejecting an operation can take away what another relied on (a grant made by a revoked
//!   manager), so the checks repeat until nothing more is rejected; only rejections happen, so
//!   this ends, and the result depends on the set only.
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
    /// Gives `actor` a role (Revoked to take it back); `sealing` is its X25519 key (base64url).
    Grant {
        /// The member's identifier.
        actor: String,
        /// The role it holds from now on.
        role: Role,
        /// Its X25519 public key, base64url.
        sealing: String,
    },
    /// Says the signer merged these operations; changes nothing.
    Ack {
        /// The operations acknowledged.
        of: Vec<String>,
    },
}

impl Change {
    /// The payload bytes of an operation making this change.
    pub fn encode(&self) -> Vec<u8> {
        // A derived Serialize of strings and enums cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("a Change serialises"))
    }

    /// The change an operation's payload describes.
    pub fn decode(payload: &[u8]) -> Option<Change> {
        let change: Change = serde_json::from_slice(payload).ok()?;
        match &change {
            Change::Grant { actor, sealing, .. } => {
                ActorId::parse(actor)?;
                crate::from_b64::<32>(sealing)?;
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
    change: Change,
    deps: Vec<usize>,
    /// Every ancestor, as a bit set over positions in the order.
    ancestors: Vec<u64>,
}

impl Node<'_> {
    fn descends_from(&self, index: usize) -> bool {
        self.ancestors
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
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
    let mut candidates: Vec<(OpId, &SignedOperation, Change)> = Vec::new();
    for (id, op) in &unique {
        if op.operation().resource != *resource {
            rejected.push((*id, Rejection::OtherResource));
        } else if let Some(change) = Change::decode(&op.operation().payload) {
            candidates.push((*id, op, change));
        } else {
            rejected.push((*id, Rejection::UnknownChange));
        }
    }
    // Keep only operations whose whole ancestry is known and well-clocked; the rest wait or
    // are malformed. Repeated, since leaving one out strands its descendants.
    let clock_of: HashMap<OpId, u64> = candidates
        .iter()
        .map(|(id, op, _)| (*id, op.operation().clock))
        .collect();
    let mut pending = Vec::new();
    loop {
        let known: std::collections::HashSet<OpId> =
            candidates.iter().map(|(id, _, _)| *id).collect();
        let before = candidates.len();
        candidates.retain(|(id, op, _)| {
            let operation = op.operation();
            if operation.deps.iter().any(|dep| !known.contains(dep)) {
                pending.push(*id);
                return false;
            }
            if operation
                .deps
                .iter()
                .any(|dep| clock_of[dep] >= operation.clock)
            {
                rejected.push((*id, Rejection::Clock));
                return false;
            }
            true
        });
        if candidates.len() == before {
            break;
        }
    }
    candidates.sort_by_key(|(id, op, _)| (op.operation().clock, *id));
    let position: HashMap<OpId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(index, (id, _, _))| (*id, index))
        .collect();
    let words = candidates.len().div_ceil(64);
    let mut nodes: Vec<Node> = Vec::with_capacity(candidates.len());
    for (_, op, change) in candidates {
        let deps: Vec<usize> = op
            .operation()
            .deps
            .iter()
            .map(|dep| position[dep])
            .collect();
        let mut ancestors = vec![0u64; words];
        for &dep in &deps {
            ancestors[dep / 64] |= 1 << (dep % 64);
            for (word, theirs) in ancestors.iter_mut().zip(&nodes[dep].ancestors) {
                *word |= theirs;
            }
        }
        nodes.push(Node {
            op,
            change,
            deps,
            ancestors,
        });
    }

    // Grants are few beside data: the checks walk them only.
    let grants = Grants::of(&nodes);
    let mut accepted = vec![true; nodes.len()];
    let mut why: Vec<Option<Rejection>> = vec![None; nodes.len()];
    loop {
        let verdicts: Vec<Option<Rejection>> = (0..nodes.len())
            .map(|index| {
                if !accepted[index] {
                    return why[index];
                }
                judge(&nodes, &grants, &accepted, index, owner)
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

    let mut acl = Acl::new(owner.id, owner.sealing);
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
            Change::Put { key, value } => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value)
                    .unwrap_or_default();
                values.insert(key.clone(), bytes);
            }
            Change::Delete { key } => {
                values.remove(key);
            }
            Change::Grant { .. } => grant(&mut acl, &node.change),
            Change::Ack { .. } => {}
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
fn grant(acl: &mut Acl, change: &Change) {
    if let Change::Grant {
        actor,
        role,
        sealing,
    } = change
        && let (Some(actor), Some(sealing)) =
            (ActorId::parse(actor), crate::from_b64::<32>(sealing))
    {
        acl.force(actor, *role, sealing);
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
            if let Change::Grant { actor, .. } = &node.change {
                grants.all.push(index);
                if let Some(actor) = ActorId::parse(actor) {
                    grants.to.entry(actor).or_default().push(index);
                }
            }
        }
        grants
    }
}

/// Whether node `index` counts, given which others count now.
fn judge(
    nodes: &[Node],
    grants: &Grants,
    accepted: &[bool],
    index: usize,
    owner: PublicIdentity,
) -> Option<Rejection> {
    let node = &nodes[index];
    let signer = node.op.operation().actor;
    // The access list at its causal point: the accepted grants among its ancestors, in order.
    let mut acl = Acl::new(owner.id, owner.sealing);
    for &other in grants.all.iter().take_while(|&&other| other < index) {
        if accepted[other] && node.descends_from(other) {
            grant(&mut acl, &nodes[other].change);
        }
    }
    let Some(role) = acl.role(&signer) else {
        return Some(Rejection::NotAllowed);
    };
    if !allowed(role, &node.change, &acl) {
        return Some(Rejection::NotAllowed);
    }
    // Every accepted grant to the signer that this operation did not see, and that did not
    // see it, must allow it too.
    for &other in grants.to.get(&signer).map_or(&[][..], Vec::as_slice) {
        let concurrent = &nodes[other];
        if other == index
            || !accepted[other]
            || node.descends_from(other)
            || concurrent.descends_from(index)
        {
            continue;
        }
        if let Change::Grant { role, .. } = &concurrent.change
            && !allowed(*role, &node.change, &acl)
        {
            return Some(Rejection::RevokedConcurrently);
        }
    }
    None
}

/// Whether a signer of `role` may make `change` given the access list `acl`.
fn allowed(role: Role, change: &Change, acl: &Acl) -> bool {
    match change {
        Change::Put { .. } | Change::Delete { .. } => role.writes(),
        Change::Grant {
            actor, role: to, ..
        } => ActorId::parse(actor).is_some_and(|actor| role.may_set(acl.role(&actor), *to)),
        Change::Ack { .. } => role.reads(),
    }
}
