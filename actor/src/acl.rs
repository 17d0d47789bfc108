//! Roles and who may change them: the static role model of the specification, as pure rules.
//!
//! A resource's access list starts with its owner (the actor every member was told of when the
//! resource was shared with them: the root of trust) as Owner, and changes only by signed
//! grant operations, each valid if its signer could make it at its causal point.

use crate::identity::ActorId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an actor may do to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including granting and revoking any role, Owner too.
    Owner,
    /// Grants and revokes Editor and Viewer; writes data.
    Manager,
    /// Writes data.
    Editor,
    /// Reads only.
    Viewer,
    /// Neither reads (no key after the revocation) nor writes.
    Revoked,
}

impl Role {
    /// Whether this role may change data.
    pub fn writes(self) -> bool {
        matches!(self, Role::Owner | Role::Manager | Role::Editor)
    }

    /// Whether this role may read (holds the current content key).
    pub fn reads(self) -> bool {
        self != Role::Revoked
    }

    /// Whether an actor of this role may move another from `from` (its role now, if any) to
    /// `to`. A Manager handles Editors and Viewers only: it can neither make nor unmake an
    /// Owner or a Manager.
    pub fn may_set(self, from: Option<Role>, to: Role) -> bool {
        let manageable = |role: Role| matches!(role, Role::Editor | Role::Viewer | Role::Revoked);
        match self {
            Role::Owner => true,
            Role::Manager => from.is_none_or(manageable) && manageable(to),
            Role::Editor | Role::Viewer | Role::Revoked => false,
        }
    }

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Manager => "manager",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Revoked => "revoked",
        }
    }
}

/// A member as the access list knows it: role and the key its content keys are sealed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// Its X25519 public key.
    pub sealing: [u8; 32],
}

/// Who holds which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    members: BTreeMap<ActorId, Member>,
}

impl Acl {
    /// The list of a new resource: its owner alone.
    pub fn new(owner: ActorId, sealing: [u8; 32]) -> Acl {
        let mut members = BTreeMap::new();
        members.insert(
            owner,
            Member {
                role: Role::Owner,
                sealing,
            },
        );
        Acl { members }
    }

    /// `actor`'s role, if it was ever a member.
    pub fn role(&self, actor: &ActorId) -> Option<Role> {
        self.members.get(actor).map(|member| member.role)
    }

    /// Sets `actor`'s role if `by` may; returns whether it did.
    pub fn set(&mut self, by: &ActorId, actor: ActorId, role: Role, sealing: [u8; 32]) -> bool {
        let Some(signer) = self.role(by) else {
            return false;
        };
        if !signer.may_set(self.role(&actor), role) {
            return false;
        }
        self.force(actor, role, sealing);
        true
    }

    /// Sets `actor`'s role whoever asks: for a grant already judged allowed.
    ///
    /// A member keeps the sealing key it was first granted with: keys are sent to that key
    /// after every rotation, so a later grant naming another key (a manager re-granting an
    /// editor with a key of its own) would hand the manager the keys once it is revoked.
    pub(crate) fn force(&mut self, actor: ActorId, role: Role, sealing: [u8; 32]) {
        let sealing = self
            .members
            .get(&actor)
            .map_or(sealing, |member| member.sealing);
        self.members.insert(actor, Member { role, sealing });
    }

    /// Every member, in identifier order.
    pub fn members(&self) -> impl Iterator<Item = (&ActorId, &Member)> {
        self.members.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_keeps_the_sealing_key_it_was_first_granted_with() {
        let (owner, manager, editor) = (actor(1), actor(2), actor(3));
        let mut acl = Acl::new(owner, [1; 32]);
        assert!(acl.set(&owner, manager, Role::Manager, [2; 32]));
        assert!(acl.set(&owner, editor, Role::Editor, [3; 32]));
        // The manager re-grants the editor, naming a key of its own: the role holds, the key
        // does not change.
        assert!(acl.set(&manager, editor, Role::Viewer, [2; 32]));
        let member = acl.members().find(|(a, _)| **a == editor).map(|(_, m)| *m);
        assert_eq!(
            member,
            Some(Member {
                role: Role::Viewer,
                sealing: [3; 32]
            })
        );
    }

    fn actor(n: u8) -> ActorId {
        ActorId::from_bytes([n; 32])
    }

    #[test]
    fn the_role_model_of_the_specification() {
        assert!(Role::Owner.may_set(Some(Role::Owner), Role::Revoked));
        assert!(Role::Owner.may_set(None, Role::Manager));
        assert!(Role::Manager.may_set(None, Role::Editor));
        assert!(Role::Manager.may_set(Some(Role::Editor), Role::Revoked));
        assert!(
            !Role::Manager.may_set(None, Role::Owner),
            "a Manager grants no Owner"
        );
        assert!(
            !Role::Manager.may_set(Some(Role::Owner), Role::Revoked),
            "nor revokes one"
        );
        assert!(!Role::Manager.may_set(Some(Role::Manager), Role::Viewer));
        for role in [Role::Editor, Role::Viewer, Role::Revoked] {
            assert!(!role.may_set(None, Role::Viewer), "{role:?} grants nothing");
        }
        assert!(Role::Editor.writes() && !Role::Viewer.writes() && !Role::Revoked.writes());
        assert!(Role::Viewer.reads() && !Role::Revoked.reads());
    }

    #[test]
    fn only_a_member_with_the_right_role_changes_the_list() {
        let mut acl = Acl::new(actor(1), [1; 32]);
        assert!(
            !acl.set(&actor(9), actor(9), Role::Owner, [9; 32]),
            "a stranger"
        );
        assert!(acl.set(&actor(1), actor(2), Role::Manager, [2; 32]));
        assert!(acl.set(&actor(2), actor(3), Role::Editor, [3; 32]));
        assert!(
            !acl.set(&actor(3), actor(4), Role::Viewer, [4; 32]),
            "an Editor"
        );
        assert!(
            !acl.set(&actor(2), actor(1), Role::Revoked, [1; 32]),
            "a Manager on the Owner"
        );
        assert_eq!(acl.role(&actor(3)), Some(Role::Editor));
        assert_eq!(acl.members().count(), 3);
    }
}
