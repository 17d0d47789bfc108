//! Roles and who may change them: the static role model of the specification, as pure rules.
//!
//! A resource's access list starts with its owner (the actor every member was told of when the
//! resource was shared with them: the root of trust) as Owner, and changes only by signed
//! grant operations, each valid if its signer could make it at its causal point.

use crate::identity::{ActorId, PublicIdentity};
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

/// A member as the access list knows it: role and the identity its content keys go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// Its identity, with the sealing key it proved.
    pub public: PublicIdentity,
}

/// Who holds which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    members: BTreeMap<ActorId, Member>,
}

impl Acl {
    /// The list of a new resource: its owner alone.
    pub fn new(owner: PublicIdentity) -> Acl {
        let mut members = BTreeMap::new();
        members.insert(
            owner.id,
            Member {
                role: Role::Owner,
                public: owner,
            },
        );
        Acl { members }
    }

    /// `actor`'s role, if it was ever a member.
    pub fn role(&self, actor: &ActorId) -> Option<Role> {
        self.members.get(actor).map(|member| member.role)
    }

    /// Sets `member`'s role if `by` may; returns whether it did.
    pub fn set(&mut self, by: &ActorId, member: PublicIdentity, role: Role) -> bool {
        let Some(signer) = self.role(by) else {
            return false;
        };
        if !signer.may_set(self.role(&member.id), role) {
            return false;
        }
        self.force(member, role);
        true
    }

    /// Sets `member`'s role whoever asks: for a grant already judged allowed.
    ///
    /// A member keeps the sealing key it was first granted with. Every key is proved by its
    /// actor's signature, so no one can name a key of their own for another; an actor with
    /// two proved keys (two devices sharing one identity file, or a new key) still has the
    /// first one used, so the list never depends on which grant a device saw last.
    pub(crate) fn force(&mut self, member: PublicIdentity, role: Role) {
        let public = self
            .members
            .get(&member.id)
            .map_or(member, |known| known.public);
        self.members.insert(member.id, Member { role, public });
    }

    /// `actor`'s public identity, if it was ever a member.
    pub fn public(&self, actor: &ActorId) -> Option<PublicIdentity> {
        self.members.get(actor).map(|member| member.public)
    }

    /// Every member, in identifier order.
    pub fn members(&self) -> impl Iterator<Item = (&ActorId, &Member)> {
        self.members.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::identity::Identity;

    #[test]
    fn a_member_keeps_the_sealing_key_it_was_first_granted_with() {
        let (owner, manager, editor) = (actor(1), actor(2), actor(3));
        // The same actor with a second sealing key, also proved.
        let editor_again = Identity::from_secrets(&[3; 32], &[99; 32]).public();
        let mut acl = Acl::new(owner);
        assert!(acl.set(&owner.id, manager, Role::Manager));
        assert!(acl.set(&owner.id, editor, Role::Editor));
        assert!(acl.set(&manager.id, editor_again, Role::Viewer));
        assert_eq!(acl.role(&editor.id), Some(Role::Viewer));
        assert_eq!(acl.public(&editor.id), Some(editor));
    }

    /// Actor `n`'s public identity, its proof made by its own key.
    fn actor(n: u8) -> PublicIdentity {
        Identity::from_secrets(&[n; 32], &[n.wrapping_add(100); 32]).public()
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
        let mut acl = Acl::new(actor(1));
        assert!(!acl.set(&actor(9).id, actor(9), Role::Owner), "a stranger");
        assert!(acl.set(&actor(1).id, actor(2), Role::Manager));
        assert!(acl.set(&actor(2).id, actor(3), Role::Editor));
        assert!(!acl.set(&actor(3).id, actor(4), Role::Viewer), "an Editor");
        assert!(
            !acl.set(&actor(2).id, actor(1), Role::Revoked),
            "a Manager on the Owner"
        );
        assert_eq!(acl.role(&actor(3).id), Some(Role::Editor));
        assert_eq!(acl.members().count(), 3);
    }
}
